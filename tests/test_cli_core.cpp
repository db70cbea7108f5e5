// The CLI forms external checks drive: `moe info --json`, `moe logits`, and clean one-line errors.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "fixture_util.h"

namespace moe {
namespace {

struct CmdResult {
  int status;
  std::string out;  // stdout + stderr
};

CmdResult run_cli(const std::string& args) {
  const std::string cmd = std::string(MOE_CLI_PATH) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  CmdResult r{-1, ""};
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

std::string tmp(const std::string& n) {
  return (std::filesystem::temp_directory_path() / ("moe_cli_" + std::to_string(getpid()) + n)).string();
}

TEST(CliCore, InfoJson) {
  auto r = run_cli("info --json -m " + test::model_path("tiny-deepseekmoe"));
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["arch"], "deepseek");
  EXPECT_EQ(j["n_layer"], 3);
  EXPECT_EQ(j["n_moe_layers"], 2);
  EXPECT_EQ(j["n_expert"], 8);
  EXPECT_EQ(j["n_shared_experts"], 2);
  EXPECT_EQ(j["n_tensors"], 38);
  uint64_t sum = 0;
  for (auto& [k, v] : j["bytes_by_role"].items()) sum += v.get<uint64_t>();
  EXPECT_EQ(sum, j["bytes_total"].get<uint64_t>());
  // Active bytes: everything but 6 of 8 experts per MoE layer and all but one embedding row.
  EXPECT_LT(j["active_bytes_per_token"].get<uint64_t>(), j["bytes_total"].get<uint64_t>());
  EXPECT_EQ(j["bytes_per_expert"].get<uint64_t>(), 3u * 256 * 256 * 2);
}

TEST(CliCore, LogitsFileMatchesReference) {
  const std::string name = "tiny-olmoe", out = tmp("logits.f32");
  auto r = run_cli("logits -m " + test::model_path(name) + " --tokens " + test::ref_path(name, "seq.tok") + " -o " +
                   out + " -t 2");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto ours = test::read_f32(out), ref = test::read_f32(test::ref_path(name, "seq.logits.f32"));
  ASSERT_EQ(ours.size(), ref.size());
  EXPECT_LE(test::nmse(ours, ref), 1e-5);
  std::filesystem::remove(out);
}

TEST(CliCore, ErrorsAreOneLineAndNameTheProblem) {
  struct Case {
    std::string args, must_contain;
  };
  const std::string model = test::model_path("tiny-qwen3moe");
  const std::string bad_tokens = tmp("bad.tok");
  { FILE* f = fopen(bad_tokens.c_str(), "w"); fputs("1 2 three 4", f); fclose(f); }
  const std::string big_tokens = tmp("big.tok");
  { FILE* f = fopen(big_tokens.c_str(), "w"); fputs("1 2 100000", f); fclose(f); }
  const std::vector<Case> cases = {
      {"info -m /nonexistent/model.gguf", "/nonexistent/model.gguf"},
      {"info -m " + test::fixtures_dir() + "/ref/tiny-qwen3moe.seq.tok", "magic"},
      {"logits -m " + model + " --tokens " + bad_tokens + " -o " + tmp("x.f32"), "three"},
      {"logits -m " + model + " --tokens " + big_tokens + " -o " + tmp("x.f32"), "100000"},
      {"logits -m " + model + " --tokens /nonexistent.tok -o " + tmp("x.f32"), "/nonexistent.tok"},
      {"run -m " + model + " --tokens " + test::ref_path("tiny-qwen3moe", "t1.tok") + " -t -3", "-t"},
      {"run -m " + model + " --bogus-flag", "bogus-flag"},
  };
  for (const auto& c : cases) {
    auto r = run_cli(c.args);
    EXPECT_NE(r.status, 0) << c.args;
    EXPECT_NE(r.out.find(c.must_contain), std::string::npos) << c.args << "\n" << r.out;
    EXPECT_EQ(r.out.find("Segmentation"), std::string::npos) << r.out;
  }
  std::filesystem::remove(bad_tokens);
  std::filesystem::remove(big_tokens);
}


TEST(CliCore, MemBudgetStreamsExpertsWithIdenticalResults) {
  const std::string name = "tiny-qwen3moe", model = test::model_path(name);
  const std::string resident = tmp("res.f32"), streamed = tmp("str.f32"), stats = tmp("stats.json"), ids = tmp("ids.txt");
  const std::string toks = " --tokens " + test::ref_path(name, "seq.tok");
  ASSERT_EQ(run_cli("logits -m " + model + toks + " -o " + resident).status, 0);
  auto r = run_cli("logits -m " + model + toks + " -o " + streamed + " --offload-all --cache-policy arc --stats-json " + stats);
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(test::read_f32(resident), test::read_f32(streamed));  // bit-identical
  std::ifstream in(stats);
  auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j["mode"], "offload");
  EXPECT_EQ(j["policy"], "arc");
  for (const char* key : {"hit_rate", "bytes_read_per_token", "stall_frac", "read_gbps", "prediction_recall"})
    EXPECT_TRUE(j.contains(key)) << key;

  // Streaming through a small pool still decodes llama.cpp's greedy tokens. --offload-all makes it stream
  // whatever the process held before loading (its RSS, which --mem counts, grows with the binary); the
  // budget leaves a pool of about ten of the model's experts.
  r = run_cli("run -m " + model + " --tokens " + test::ref_path(name, "t1.tok") +
              " -n 24 --temp 0 --offload-all --mem 56M --stats --ids-out " + ids);
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("hit rate"), std::string::npos) << r.out;
  EXPECT_EQ(test::read_ids(ids), test::read_ids(test::ref_path(name, "t1.greedy24.tok")));

  r = run_cli("run -m " + model + " --tokens " + test::ref_path(name, "t1.tok") + " -n 4 --mem 20M");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("--mem"), std::string::npos) << r.out;
  r = run_cli("run -m " + model + " --tokens " + test::ref_path(name, "t1.tok") + " -n 4 --mem 12Q");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("12Q"), std::string::npos) << r.out;
  for (const auto& f : {resident, streamed, stats, ids}) std::filesystem::remove(f);
}

// The keys external checks read from `moe bench --json`, resident and with experts streamed. The
// bandwidth probe's buffer (here 256 MiB, far more than a tiny model and its scratch) must not show in
// the peak RSS, and each decode run gets its own probe.
TEST(CliCore, BenchJsonKeys) {
  const std::string model = test::model_path("tiny-qwen3moe");
  auto r = run_cli("bench -m " + model + " -t 2 -p 8 -n 4 -r 2 --bw-gib 0.25 --json 2>/dev/null");
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  for (const char* key : {"pp_tok_s", "tg_tok_s", "decode_gbps", "roofline_frac", "peak_rss_bytes", "ttft_ms",
                          "active_bytes_per_token", "mem_bw_gbps"})
    ASSERT_TRUE(j.contains(key)) << key;
  EXPECT_GT(j["pp_tok_s"].get<double>(), 0.0);
  EXPECT_GT(j["tg_tok_s"].get<double>(), 0.0);
  EXPECT_GT(j["mem_bw_gbps"].get<double>(), 0.0);
  EXPECT_LE(j["mem_bw_gbps_min"].get<double>(), j["mem_bw_gbps"].get<double>());
  EXPECT_GT(j["roofline_frac"].get<double>(), 0.0);
  EXPECT_LE(j["roofline_frac_min"].get<double>(), j["roofline_frac_max"].get<double>());
  EXPECT_GT(j["peak_rss_bytes"].get<uint64_t>(), 0u);
  EXPECT_LT(j["peak_rss_bytes"].get<uint64_t>(), 200ull << 20);
  EXPECT_EQ(j["mode"], "resident");

  r = run_cli("bench -m " + model + " -t 2 -p 8 -n 4 -r 1 --bw-gib 0 --offload-all --preload --json 2>/dev/null");
  ASSERT_EQ(r.status, 0) << r.out;
  j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["mode"], "offload");
  for (const char* key : {"hit_rate", "bytes_read_per_token", "stall_frac"}) ASSERT_TRUE(j.contains(key)) << key;
  EXPECT_GE(j["hit_rate"].get<double>(), 0.0);
  EXPECT_LE(j["hit_rate"].get<double>(), 1.0);
  EXPECT_EQ(j["mem_bw_probe"], "none");
  // Without --mem the pool holds every expert, and the preload filled it before anything was timed.
  ASSERT_TRUE(j.contains("preload_s"));
  EXPECT_GE(j["preload_s"].get<double>(), 0.0);
  EXPECT_EQ(j["hit_rate"].get<double>(), 1.0);
  EXPECT_EQ(j["bytes_read_per_token"].get<double>(), 0.0);

  r = run_cli("bench -m " + model + " -t 2 -p 0 -n 4 -r 1 --bw-gib 0 --offload-all --json 2>/dev/null");
  ASSERT_EQ(r.status, 0) << r.out;
  j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["preload_s"].get<double>(), 0.0) << "no --preload, nothing waited for";
}

}  // namespace
}  // namespace moe
