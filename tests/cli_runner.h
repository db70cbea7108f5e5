// Runs the built `moe` CLI (MOE_CLI_PATH) as a child process with given stdin, capturing its exit
// status, stdout and stderr. Shared by the end-to-end CLI tests.
#pragma once
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace moe::test {

struct CliResult {
  int status = -1;  // exit code, or -1 when the process did not exit normally (e.g. a crash)
  std::string out, err;
};

// A per-process scratch directory (tests may write their inputs here too).
inline std::filesystem::path cli_temp_dir() {
  static const std::filesystem::path dir = [] {
    std::filesystem::path d = std::filesystem::temp_directory_path() / ("moe_test_cli_" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void write_text(const std::filesystem::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary);
  out << s;
}

// Single-quotes a word for /bin/sh.
inline std::string sh_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

inline CliResult run_cli(const std::vector<std::string>& args, const std::string& stdin_text = "") {
  static int counter = 0;
  const std::filesystem::path base = cli_temp_dir() / ("call" + std::to_string(counter++));
  write_text(base.string() + ".in", stdin_text);
  std::string cmd = sh_quote(MOE_CLI_PATH);
  for (const auto& a : args) cmd += " " + sh_quote(a);
  cmd += " <" + sh_quote(base.string() + ".in") + " >" + sh_quote(base.string() + ".out") + " 2>" +
         sh_quote(base.string() + ".err");
  const int rc = std::system(cmd.c_str());
  CliResult r;
  r.status = (rc != -1 && WIFEXITED(rc)) ? WEXITSTATUS(rc) : -1;
  r.out = slurp(base.string() + ".out");
  r.err = slurp(base.string() + ".err");
  return r;
}

}  // namespace moe::test
