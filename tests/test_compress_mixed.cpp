// Mixed-precision expert quantization (`moe quantize --mixed`, compress/mixed_precision.h): the ILP's choice on
// hand-checkable statistics, budgets never exceeded, super experts' layers at the highest precision, budget
// parsing, and the CLI end to end on a fixture (output loads, expert types from the candidates, size within the
// budget, every malformed option rejected).
#include <gtest/gtest.h>

#include <filesystem>

#include "base/error.h"
#include "cli_runner.h"
#include "compress/calib_stats.h"
#include "compress/mixed_precision.h"
#include "fixture_util.h"
#include "mixed_hand.h"
#include "format/gguf.h"
#include "model/weights.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using test::run_cli;

using Hand = test::HandMix;

// test::hand_mix with layer 1's errors `layer1_scale` times layer 0's; every expert selected 10 times.
Hand hand(double layer1_scale) {
  return test::hand_mix([](int, int) { return 10.0; },
                        [=](double err, int il, int, int) { return err * (il == 1 ? layer1_scale : 1.0); });
}

uint64_t bytes_of(DType t) { return row_bytes(t, 256) * 32 * 4; }

TEST(MixedPrecision, TheLayerThatLosesMoreGetsTheBits) {
  Hand h = hand(/*layer1_scale=*/100.0);
  compress::MixedOptions o;
  // Room for three tensors at Q8_0 and three at Q2_K.
  o.budget.total_bytes = 3 * bytes_of(DType::Q8_0) + 3 * bytes_of(DType::Q2_K) + 1024;
  const compress::MixedResult r = compress::allocate_mixed(h.stats, h.plan, o);
  ASSERT_EQ(r.type.size(), 6u);
  for (size_t j = 0; j < 3; ++j) EXPECT_EQ(r.type[j], DType::Q2_K) << j;
  for (size_t j = 3; j < 6; ++j) EXPECT_EQ(r.type[j], DType::Q8_0) << j;
  EXPECT_LE(r.alloc.bytes, r.expert_budget);
  EXPECT_EQ(r.expert_budget, o.budget.total_bytes - 1024);  // the norm's bytes
  EXPECT_EQ(h.plan.types[3], DType::Q8_0);                  // the plan is re-typed in place
  EXPECT_EQ(r.uniform_type, "q4_K");                       // Q4_K is the best that fits uniformly
}

TEST(MixedPrecision, BudgetsInBitsAreNeverExceeded) {
  for (double bpw : {2.7, 3.0, 4.5, 5.0, 6.0, 8.5, 9.0}) {
    Hand h = hand(3.0);
    compress::MixedOptions o;
    o.budget.bits_per_weight = bpw;
    const compress::MixedResult r = compress::allocate_mixed(h.stats, h.plan, o);
    EXPECT_LE(8.0 * static_cast<double>(r.alloc.bytes) / static_cast<double>(r.expert_elements), bpw) << bpw;
  }
  Hand h = hand(1.0);
  compress::MixedOptions o;
  o.budget.bits_per_weight = 2.0;  // below Q2_K's 2.625
  try {
    compress::allocate_mixed(h.stats, h.plan, o);
    ADD_FAILURE() << "2 bits per weight accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("budget"), std::string::npos) << e.what();
  }
}

TEST(MixedPrecision, SuperExpertLayersKeepTheHighestPrecision) {
  Hand h = hand(100.0);
  // 2 layers x 4 experts: a max far above the others in layer 0 (first 75% of the layers).
  h.stats.layers[0].max_out[2] = 1000;
  compress::MixedOptions o;
  o.budget.total_bytes = 3 * bytes_of(DType::Q8_0) + 3 * bytes_of(DType::Q2_K) + 1024;
  const compress::MixedResult r = compress::allocate_mixed(h.stats, h.plan, o);
  for (size_t j = 0; j < 3; ++j) EXPECT_EQ(r.type[j], DType::Q8_0) << j;
  for (size_t j = 3; j < 6; ++j) EXPECT_EQ(r.type[j], DType::Q2_K) << j;
  Hand h2 = hand(100.0);
  h2.stats.layers[0].max_out[2] = 1000;
  o.protect = false;
  const compress::MixedResult r2 = compress::allocate_mixed(h2.stats, h2.plan, o);
  EXPECT_EQ(r2.type[0], DType::Q2_K);
}

TEST(MixedPrecision, ParsesBudgetsAndRejectsBadOnes) {
  EXPECT_DOUBLE_EQ(compress::parse_budget("4.5").bits_per_weight, 4.5);
  EXPECT_EQ(compress::parse_budget("300M").total_bytes, 300000000u);
  EXPECT_EQ(compress::parse_budget("1.5G").total_bytes, 1500000000u);
  EXPECT_EQ(compress::parse_budget("2MiB").total_bytes, 2u * 1024 * 1024);
  EXPECT_EQ(compress::parse_budget("5000000").total_bytes, 5000000u);
  for (const char* bad : {"", "abc", "-3", "0", "4.5X", "nan"}) EXPECT_THROW(compress::parse_budget(bad), Error) << bad;
  // Candidates the statistics did not measure.
  Hand h = hand(1.0);
  compress::MixedOptions o;
  o.budget.bits_per_weight = 5;
  o.candidates = {DType::Q6_K};
  EXPECT_THROW(compress::allocate_mixed(h.stats, h.plan, o), Error);
  h.stats.recon_types.clear();
  o.candidates.clear();
  EXPECT_THROW(compress::allocate_mixed(h.stats, h.plan, o), Error);
}

TEST(MixedPrecisionCli, QuantizesAFixtureWithinTheBudget) {
  const std::string model = test::model_path("tiny-qwen3moe");
  if (!fs::exists(model)) GTEST_SKIP() << "fixture missing";
  const fs::path dir = test::cli_temp_dir();
  const std::string stats = (dir / "mixed.stats.gguf").string(), out = (dir / "mixed.gguf").string();
  const std::string text = test::fixtures_dir() + "/text/t3.txt";
  auto r = run_cli({"calibrate", "-q", "-m", model, "-f", text, "--recon-types", "q2_K,q4_K,q6_K", "-c", "64",
                    "-o", stats});
  ASSERT_EQ(r.status, 0) << r.err;
  r = run_cli({"quantize", "-q", "-m", model, "-o", out, "--type", "Q4_K_M", "--mixed", "--budget", "5", "--stats",
               stats, "-v", "--eval", text, "--eval-ctx", "64", "--eval-windows", "1"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("mixed: 6 expert tensors"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("ppl before"), std::string::npos) << r.out;
  auto f = gguf::File::open(out, gguf::DataAccess::Pread);
  uint64_t bytes = 0, elements = 0;
  for (const gguf::TensorInfo& t : f->tensors()) {
    if (t.name.find("_exps") == std::string::npos) continue;
    EXPECT_TRUE(t.type == DType::Q2_K || t.type == DType::Q4_K || t.type == DType::Q6_K) << t.name;
    bytes += t.nbytes;
    elements += static_cast<uint64_t>(t.n_elements());
  }
  // 5 bits: a layer with a super expert is forced to q6_K, the other fits the rest.
  EXPECT_LE(8.0 * static_cast<double>(bytes) / static_cast<double>(elements), 5.0);
  EXPECT_GT(8.0 * static_cast<double>(bytes) / static_cast<double>(elements), 2.625);  // not all at the floor
  EXPECT_NO_THROW(Model::load(out));

  struct Bad {
    std::vector<std::string> args;
    std::string want;
  };
  const std::vector<Bad> bad = {
      {{"--mixed", "--stats", stats}, "--budget"},
      {{"--mixed", "--budget", "4"}, "--stats"},
      {{"--budget", "4", "--stats", stats}, "--mixed"},
      {{"--mixed", "--budget", "1.5", "--stats", stats}, "budget"},
      {{"--mixed", "--budget", "four", "--stats", stats}, "--budget"},
      {{"--mixed", "--budget", "4", "--stats", stats, "--candidates", "q8_0"}, "q8_0"},
      {{"--mixed", "--budget", "4", "--stats", stats, "--expert-type", "q4_0"}, "--expert-type"},
      {{"--mixed", "--budget", "4", "--stats", model}, model},
  };
  for (const Bad& b : bad) {
    std::vector<std::string> args = {"quantize", "-q", "-m", model, "-o", out, "--type", "Q4_K_M"};
    args.insert(args.end(), b.args.begin(), b.args.end());
    r = run_cli(args);
    EXPECT_NE(r.status, 0) << b.want;
    EXPECT_NE(r.err.find(b.want), std::string::npos) << b.want << ": " << r.err;
  }
  fs::remove(stats);
  fs::remove(out);
}

}  // namespace
}  // namespace moe
