// `--mem` is a hard ceiling: every command that takes it runs inside a memory cgroup of exactly that size
// (page cache included, no swap) on a model larger than the budget, and must exit 0 without the OOM
// killer, having streamed its experts from disk. Commands that read whole models without taking --mem run
// in a cgroup smaller than the model: they must stream it tensor by tensor.
//
// Adding a command: append one row to kCases below, e.g.
//   {"serve", "112M", {"serve", "-m", "{model}", "--mem", "{mem}", ...}, "stdin text", "phrase on stderr"},
// (the last two are optional). Placeholders: {model} the synthetic model (165 MB: 4 layers of 48 experts
// of 816 KiB, vocab 8000), {mem} the row's budget (also the cgroup's limit), {tokens} 48 prompt ids,
// {long_tokens} 2000 ids, {text} about 3 KB of text (one token per byte with this model's vocabulary),
// {out} an output path, {json} a path for --stats-json, {stats} calibration statistics of the model (moe
// calibrate). The row's command must end on its own (the test waits for it). What each row must show:
//   - exit 0, no signal, the cgroup's oom_kill counter unchanged, its peak at most its limit (reported);
//   - with {mem}: that experts streamed: `--stats-json {json}` (checked: "mode" is "offload" and the
//     process's peak RSS is at most the budget), or a JSON object on stdout with "mode" (bench --json);
//   - without {mem}: nothing more; the cgroup (smaller than the model) is the proof that it streams.
// Skipped, saying why, where no memory cgroup can be made (not root, no writable controller).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli_runner.h"
#include "memory_cgroup.h"
#include "runtime/engine.h"

namespace {

namespace fs = std::filesystem;
using moe::test::CgroupRun;
using moe::test::MemoryCgroup;

struct MemCase {
  std::string name;
  std::string cgroup;  // the cgroup's limit, and what {mem} stands for
  std::vector<std::string> args;
  std::string stdin_text = "";
  std::string expect_stderr = "";  // a phrase stderr must contain ("" = none)
};

const std::vector<MemCase> kCases = {
    {"run", "112M",
     {"run", "-m", "{model}", "--tokens", "{tokens}", "-n", "48", "-c", "256", "-t", "2", "--temp", "0", "--mem", "{mem}",
      "--stats-json", "{json}"}},
    {"chat", "112M",
     {"chat", "-m", "{model}", "-n", "24", "-c", "256", "-t", "2", "--temp", "0", "--mem", "{mem}", "--stats-json",
      "{json}"},
     "hello there\nand once more\n"},
    // The default --bw-gib 1 probe must shrink or be skipped: before, it took 1 GiB outside the budget.
    {"bench", "112M", {"bench", "-m", "{model}", "-t", "2", "-p", "64", "-n", "16", "-r", "1", "--json", "--mem", "{mem}"},
     "", "bandwidth probe skipped"},
    // A probe the budget can hold runs before the model loads, when the pool does not exist yet.
    {"bench_probe", "112M",
     {"bench", "-m", "{model}", "-t", "2", "-p", "0", "-n", "16", "-r", "2", "--json", "--bw-gib", "0.0625", "--mem",
      "{mem}"},
     "", "once before loading"},
    // 2000 x 8000 logits are 64 MB: written batch by batch, never held whole.
    {"logits", "112M",
     {"logits", "-m", "{model}", "--tokens", "{long_tokens}", "-o", "{out}", "-b", "256", "-t", "2", "--mem", "{mem}",
      "--stats-json", "{json}"}},
    {"perplexity", "112M",
     {"perplexity", "-m", "{model}", "-f", "{text}", "-c", "256", "--max-windows", "4", "-t", "2", "--mem", "{mem}",
      "--stats-json", "{json}"}},
    {"route_stats", "112M",
     {"route-stats", "-m", "{model}", "-f", "{text}", "-o", "{out}", "-c", "128", "--max-windows", "8", "-t", "2",
      "--mem", "{mem}", "--stats-json", "{json}"}},
    // No --mem: holds one output tensor at a time, in a cgroup of 30% of the model.
    {"quantize_experts", "48M", {"quantize-experts", "-m", "{model}", "--type", "q4_0", "-o", "{out}", "-t", "2"}},
    // No --mem: merges one output expert at a time (two experts' f32 matrices for the alignment).
    {"merge", "48M", {"merge", "-m", "{model}", "--stats", "{stats}", "--keep", "0.5", "--align", "-q", "-o", "{out}"}},
    // The same model in the per-expert layout (one tensor per expert): the experts stream from their own tensors.
    {"run_per_expert", "112M",
     {"run", "-m", "{pe_model}", "--tokens", "{tokens}", "-n", "48", "-c", "256", "-t", "2", "--temp", "0", "--mem",
      "{mem}", "--stats-json", "{json}"}},
};

const char* cli_path() {
  // MOE_TEST_CLI runs the table against another build of the CLI (e.g. main's, to see what it fails on).
  const char* env = std::getenv("MOE_TEST_CLI");
  return env && *env ? env : MOE_CLI_PATH;
}

struct Inputs {
  std::string model, tokens, long_tokens, text, stats;
  std::string pe_model;  // the model in the per-expert layout (same types, so the tensors are copied)
  uint64_t model_bytes = 0;
};

// The synthetic model and inputs, made once (outside any cgroup).
const Inputs& inputs() {
  static const Inputs in = [] {
    Inputs i;
    const fs::path dir = moe::test::cli_temp_dir() / "mem_ceiling";
    fs::create_directories(dir);
    i.model = (dir / "synth-165mb.gguf").string();
    const auto r = moe::test::run_cli({"synth", "--layers", "4", "--embd", "512", "--experts", "48", "--top-k", "4", "--ff",
                                       "512", "--heads", "8", "--kv-heads", "4", "--vocab", "8000", "--type", "Q8_0",
                                       "--unique-rows", "64", "-t", "2", "-q", "-o", i.model});
    if (r.status != 0) throw std::runtime_error("moe synth failed: " + r.err);
    i.model_bytes = fs::file_size(i.model);
    auto ids = [&](const std::string& name, int n) {
      std::string body;
      for (int t = 0; t < n; ++t) body += std::to_string((t * 7919 + 13) % 8000) + "\n";
      const std::string p = (dir / name).string();
      moe::test::write_text(p, body);
      return p;
    };
    i.tokens = ids("prompt48.tok", 48);
    i.long_tokens = ids("long2000.tok", 2000);
    std::string text;
    for (int line = 0; text.size() < 3000; ++line)
      text += "Line " + std::to_string(line) + ": the experts stream from disk when the model does not fit.\n";
    i.text = (dir / "text.txt").string();
    moe::test::write_text(i.text, text);
    i.stats = (dir / "calib.stats.gguf").string();
    const auto c = moe::test::run_cli({"calibrate", "-q", "-m", i.model, "-f", i.text, "--recon-types", "", "-c", "128",
                                       "--max-windows", "2", "-o", i.stats});
    if (c.status != 0) throw std::runtime_error("moe calibrate failed: " + c.err);
    const std::string pe_stats = (dir / "calib-q8.stats.gguf").string();
    const auto pc = moe::test::run_cli({"calibrate", "-q", "-m", i.model, "-f", i.text, "--recon-types", "q8_0", "-c",
                                        "64", "--max-windows", "1", "-o", pe_stats});
    if (pc.status != 0) throw std::runtime_error("moe calibrate failed: " + pc.err);
    i.pe_model = (dir / "synth-165mb-per-expert.gguf").string();
    const auto q = moe::test::run_cli({"quantize", "-q", "-m", i.model, "--type", "Q8_0", "--mixed", "--layout",
                                       "per-expert", "--candidates", "q8_0", "--budget", "9", "--stats", pe_stats,
                                       "-o", i.pe_model});
    if (q.status != 0) throw std::runtime_error("moe quantize --layout per-expert failed: " + q.err);
    return i;
  }();
  return in;
}

void PrintTo(const MemCase& c, std::ostream* os) { *os << c.name; }

class MemCeiling : public ::testing::TestWithParam<MemCase> {};

TEST_P(MemCeiling, StaysUnderTheCgroupLimit) {
  const MemCase& c = GetParam();
  const uint64_t limit = moe::parse_size(c.cgroup, "cgroup size");
  static int serial = 0;
  const std::string name = "moe_test_mem_" + std::to_string(::getpid()) + "_" + std::to_string(serial++);
  std::string why_not;
  auto cg = MemoryCgroup::create(name, limit, &why_not);
  if (!cg) GTEST_SKIP() << "no memory cgroup for this test: " << why_not;

  const Inputs& in = inputs();
  const fs::path scratch = moe::test::cli_temp_dir() / "mem_ceiling" / c.name;
  const std::string out = scratch.string() + ".output", json = scratch.string() + ".stats.json";
  fs::remove(out);
  fs::remove(json);
  const std::map<std::string, std::string> subst = {{"{model}", in.model}, {"{mem}", c.cgroup},
                                                    {"{tokens}", in.tokens}, {"{long_tokens}", in.long_tokens},
                                                    {"{text}", in.text},   {"{out}", out},
                                                    {"{json}", json},      {"{stats}", in.stats},
                                                    {"{pe_model}", in.pe_model}};
  std::vector<std::string> argv = {cli_path()};
  bool budgeted = false, stats_json = false;
  for (const std::string& a : c.args) {
    auto it = subst.find(a);
    argv.push_back(it == subst.end() ? a : it->second);
    budgeted |= a == "{mem}";
    stats_json |= a == "{json}";
  }
  // Larger than the budget, so that a command which held the whole model could not pass.
  ASSERT_GT(in.model_bytes, limit) << "the synthetic model must be larger than the " << c.cgroup << " budget";

  const CgroupRun r = cg->run(argv, scratch.string(), c.stdin_text, {in.model, in.pe_model});
  std::printf("[ %s ] cgroup %s: limit %llu, peak %llu (%.1f%%), exit %d%s\n", c.name.c_str(), cg->version(),
              static_cast<unsigned long long>(r.limit), static_cast<unsigned long long>(r.peak),
              r.limit ? 100.0 * static_cast<double>(r.peak) / static_cast<double>(r.limit) : 0.0, r.status,
              r.signal ? (" signal " + std::to_string(r.signal)).c_str() : "");
  RecordProperty("cgroup_peak_bytes", std::to_string(r.peak));
  EXPECT_FALSE(r.oom_killed) << c.name << " was OOM-killed in a " << c.cgroup << " cgroup\n" << r.err;
  EXPECT_EQ(r.signal, 0) << c.name << " ended by signal " << r.signal << "\n" << r.err;
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_LE(r.peak, limit);
  EXPECT_LE(r.limit, limit);
  if (!c.expect_stderr.empty()) {
    EXPECT_NE(r.err.find(c.expect_stderr), std::string::npos) << r.err;
  }
  if (!budgeted) return;
  nlohmann::json j;
  if (stats_json) {
    ASSERT_TRUE(fs::exists(json)) << "no --stats-json written\n" << r.err;
    j = nlohmann::json::parse(moe::test::slurp(json));
    EXPECT_LE(j.at("peak_rss_bytes").get<uint64_t>(), limit) << j.dump(1);
    EXPECT_LE(j.at("plan_bytes").at("total").get<uint64_t>(), limit) << j.dump(1);
  } else {
    j = nlohmann::json::parse(r.out);
  }
  EXPECT_EQ(j.at("mode").get<std::string>(), "offload") << "the experts did not stream: " << j.dump(1);
}

std::string case_name(const ::testing::TestParamInfo<MemCase>& info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(Commands, MemCeiling, ::testing::ValuesIn(kCases), case_name);

}  // namespace
