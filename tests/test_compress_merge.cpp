// M-SMoE expert merging (issue 17 part 4, compress/merge.h, `moe merge`):
//  - the linear assignment against brute force, and a permuted copy of an expert aligned back exactly;
//  - the plan on hand-made statistics: frequency centres, router-logit cosine groups, frequency weights, routing
//    groups respected, malformed options and Gram matrices rejected;
//  - the written experts on a tiny synthetic F32 model: the weighted average computed by hand, centres alone copied
//    byte for byte, the centres' router rows kept; members that are neuron permutations of their centre merge (with
//    --align) into the centre's function;
//  - a group-limited (DeepSeek-V3-like) model merges within groups and runs;
//  - the CLI on a fixture with a dense layer and shared experts: shapes, counts, untouched tensors, --eval, errors;
//  - every F16 fixture merged by the CLI and read by llama.cpp (tests/data/llamacpp/merged_*, made by
//    bench/llamacpp/compressed_refs.sh merge): the same logits as moe.cpp on the same file, NMSE <= 1e-5.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <numeric>

#include "base/error.h"
#include "base/rng.h"
#include "cli_runner.h"
#include "compress/calib_stats.h"
#include "compress/calibrate.h"
#include "compress/merge.h"
#include "compress_test_util.h"
#include "fixture_util.h"
#include "format/gguf.h"
#include "model/synth.h"
#include "model/weights.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using test::eval_logits;
using test::run_cli;

const std::string kLlamaRefs = std::string(MOE_SOURCE_DIR) + "/tests/data/llamacpp/";

// One MoE layer per model layer with the given selections, and a router-logit Gram matrix G = Z^T Z from explicit
// logit columns (columns[e] = expert e's logits over a few tokens).
compress::CalibStats stats_with(const std::vector<double>& counts, const std::vector<std::vector<double>>& columns,
                                int n_layer = 1, int64_t n_ff = 16) {
  compress::CalibStats s;
  s.arch = "qwen3moe";
  s.n_layer = n_layer;
  const int E = static_cast<int>(counts.size());
  for (int il = 0; il < n_layer; ++il) {
    compress::LayerStats l;
    l.init(il, E, n_ff, 0, 0);
    l.count = counts;
    for (int a = 0; a < E; ++a) {
      l.max_out[a] = 1;
      for (int b = 0; b < E; ++b)
        for (size_t t = 0; t < columns[a].size(); ++t) l.logit_gram[a * E + b] += columns[a][t] * columns[b][t];
    }
    s.layers.push_back(l);
  }
  return s;
}

TEST(MergeAssignment, MatchesBruteForceAndRejectsNaN) {
  // Hand case: the diagonal is not optimal; rows 0 and 1 swap.
  const std::vector<double> s3 = {1, 5, 0,  //
                                  4, 1, 0,  //
                                  0, 0, 2};
  EXPECT_EQ(compress::max_weight_assignment(s3, 3), (std::vector<int>{1, 0, 2}));
  // Random 6 x 6 scores (with negatives) against all 720 permutations.
  SplitMix64 rng{42};
  for (int trial = 0; trial < 20; ++trial) {
    const int n = 6;
    std::vector<double> s(n * n);
    for (double& v : s) v = static_cast<double>(rng.next() % 2001) / 100.0 - 10.0;
    std::vector<int> p(n);
    std::iota(p.begin(), p.end(), 0);
    double best = -1e300;
    do {
      double t = 0;
      for (int i = 0; i < n; ++i) t += s[i * n + p[i]];
      best = std::max(best, t);
    } while (std::next_permutation(p.begin(), p.end()));
    const std::vector<int> got = compress::max_weight_assignment(s, n);
    std::vector<int> sorted = got;
    std::sort(sorted.begin(), sorted.end());
    for (int i = 0; i < n; ++i) ASSERT_EQ(sorted[i], i) << "not a permutation";
    double t = 0;
    for (int i = 0; i < n; ++i) t += s[i * n + got[i]];
    EXPECT_NEAR(t, best, 1e-9) << "trial " << trial;
  }
  EXPECT_EQ(compress::max_weight_assignment({}, 0), std::vector<int>{});
  EXPECT_THROW(compress::max_weight_assignment({1, 2, 3}, 2), Error);
  EXPECT_THROW(compress::max_weight_assignment({1, std::nan(""), 3, 4}, 2), Error);
}

compress::ExpertF32 random_expert(int64_t d, int64_t ff, uint64_t seed) {
  SplitMix64 rng{seed};
  auto draw = [&] { return static_cast<float>(static_cast<double>(rng.next() % 20001) / 10000.0 - 1.0); };
  compress::ExpertF32 e;
  for (auto* m : {&e.gate, &e.up, &e.down}) {
    m->resize(static_cast<size_t>(d * ff));
    for (float& v : *m) v = draw();
  }
  return e;
}

std::vector<int> shuffled(int n, uint64_t seed) {
  std::vector<int> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  SplitMix64 rng{seed};
  for (size_t i = p.size(); i > 1; --i) std::swap(p[i - 1], p[rng.next() % i]);
  return p;
}

TEST(MergeAlign, APermutedCopyAlignsBackExactly) {
  const int64_t d = 24, ff = 40;
  const compress::ExpertF32 a = random_expert(d, ff, 3);
  const std::vector<int> p = shuffled(static_cast<int>(ff), 9);
  compress::ExpertF32 b;
  b.gate = compress::permute_neurons(a.gate, 0, p, d, ff);
  b.up = compress::permute_neurons(a.up, 1, p, d, ff);
  b.down = compress::permute_neurons(a.down, 2, p, d, ff);
  ASSERT_NE(b.gate, a.gate);
  const std::vector<int> back = compress::align_neurons(a, b, d, ff);
  EXPECT_EQ(compress::permute_neurons(b.gate, 0, back, d, ff), a.gate);
  EXPECT_EQ(compress::permute_neurons(b.up, 1, back, d, ff), a.up);
  EXPECT_EQ(compress::permute_neurons(b.down, 2, back, d, ff), a.down);
  // Biases follow their neurons (gate/up), the down bias does not move.
  std::vector<float> bias(static_cast<size_t>(ff));
  std::iota(bias.begin(), bias.end(), 0.0f);
  const std::vector<float> pb = compress::permute_neurons(bias, 3, p, d, ff);
  EXPECT_EQ(compress::permute_neurons(pb, 4, back, d, ff), bias);
  EXPECT_EQ(compress::permute_neurons(bias, 5, p, d, ff), bias);
  // The permuted expert computes the same function.
  std::vector<float> x(static_cast<size_t>(3 * d)), ya(static_cast<size_t>(3 * d)), yb(ya.size()),
      scratch(static_cast<size_t>(6 * ff));
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * static_cast<float>(i));
  compress::expert_ffn_f32(x.data(), 3, d, ff, a.gate.data(), a.up.data(), a.down.data(), ya.data(), scratch.data());
  compress::expert_ffn_f32(x.data(), 3, d, ff, b.gate.data(), b.up.data(), b.down.data(), yb.data(), scratch.data());
  for (size_t i = 0; i < ya.size(); ++i) EXPECT_NEAR(ya[i], yb[i], 1e-4f * (1 + std::abs(ya[i])));
}

TEST(MergePlan, FrequencyCentresCosineGroupsAndWeights) {
  // Selections: 0 and 2 are the most frequent; by router logits 1 resembles 2, 3 resembles 0, 4 resembles 2, and 5
  // has a zero column (cosine 0 with every centre: it joins the lower centre).
  const compress::CalibStats s = stats_with({9, 1, 6, 3, 2, 0}, {{1, 0, 0},
                                                                {0.1, 1, 0},
                                                                {0, 1, 0.1},
                                                                {1, 0.2, 0},
                                                                {0, 1, 0.3},
                                                                {0, 0, 0}});
  const ModelSpec spec = make_moe_shape(1, 64, 2, 2, 32, 6, 2, 16, 300);
  compress::MergeOptions o;
  o.keep = 2;
  const compress::MergePlan p = compress::plan_merge(s, spec, o);
  EXPECT_EQ(p.centres[0], (std::vector<int>{0, 2}));
  EXPECT_EQ(p.group_of[0], (std::vector<int>{0, 1, 1, 0, 1, 0}));
  // Weights f_i / sum f over the group: group 0 = {0: 9, 3: 3, 5: 0} of 12; group 1 = {1: 1, 2: 6, 4: 2} of 9.
  const std::vector<double> want = {9.0 / 12, 1.0 / 9, 6.0 / 9, 3.0 / 12, 2.0 / 9, 0.0};
  for (int e = 0; e < 6; ++e) EXPECT_DOUBLE_EQ(p.weight[0][e], want[e]) << e;
  // Uniform weighting (the naive baseline).
  o.frequency_weights = false;
  const compress::MergePlan u = compress::plan_merge(s, spec, o);
  for (int e = 0; e < 6; ++e) EXPECT_DOUBLE_EQ(u.weight[0][e], 1.0 / 3) << e;
  // keep = E merges nothing; keep = 1 puts everything in one group.
  o.keep = 6;
  EXPECT_EQ(compress::plan_merge(s, spec, o).group_of[0], (std::vector<int>{0, 1, 2, 3, 4, 5}));
  o.keep = 1;
  EXPECT_EQ(compress::plan_merge(s, spec, o).group_of[0], std::vector<int>(6, 0));
  o.keep = 7;
  EXPECT_THROW(compress::plan_merge(s, spec, o), Error);
  o.keep = 0;
  EXPECT_THROW(compress::plan_merge(s, spec, o), Error);
  // A Gram matrix with a negative diagonal is not one.
  compress::CalibStats bad = s;
  bad.layers[0].logit_gram[3 * 6 + 3] = -1;
  o.keep = 2;
  try {
    compress::plan_merge(bad, spec, o);
    ADD_FAILURE() << "accepted a negative Gram diagonal";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("logit_gram"), std::string::npos) << e.what();
  }
}

TEST(MergePlan, GroupLimitedRoutersMergeWithinTheirGroup) {
  // Two routing groups of 4. Expert 1 (group 0) resembles centre 5 (group 1) most, but must join a centre of its
  // own group; every group keeps the same number of centres.
  const compress::CalibStats s = stats_with({9, 1, 8, 1, 1, 9, 1, 7}, {{1, 0, 0, 0},
                                                                      {0, 0, 1, 0.1},
                                                                      {0, 1, 0, 0},
                                                                      {0.1, 1, 0, 0},
                                                                      {0, 0, 1, 0},
                                                                      {0, 0, 1, 0},
                                                                      {0, 0, 0.2, 1},
                                                                      {0, 0, 0, 1}});
  ModelSpec spec = make_moe_shape(1, 64, 2, 2, 32, 8, 2, 16, 300);
  spec.layers[0].moe.n_group = 2;
  compress::MergeOptions o;
  o.keep = 4;
  const compress::MergePlan p = compress::plan_merge(s, spec, o);
  EXPECT_EQ(p.centres[0], (std::vector<int>{0, 2, 5, 7}));
  for (int e = 0; e < 8; ++e) EXPECT_EQ(p.centres[0][p.group_of[0][e]] / 4, e / 4) << "expert " << e << " left its group";
  EXPECT_EQ(p.group_of[0], (std::vector<int>{0, 0, 1, 1, 2, 2, 3, 3}));
  o.keep = 3;
  try {
    compress::plan_merge(s, spec, o);
    ADD_FAILURE() << "accepted 3 centres in 2 groups";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("groups"), std::string::npos) << e.what();
  }
}

// A tiny qwen3moe (1 layer, 4 experts of width 16, F32 experts), with `edit` applied to the expert tensors' floats.
std::string tiny_f32_model(const std::string& name,
                           const std::function<void(const std::string&, std::vector<float>&)>& edit = nullptr) {
  SynthConfig cfg;
  cfg.spec = make_moe_shape(1, 64, 2, 2, 32, 4, 2, 16, 300);
  cfg.expert_type = DType::F32;
  const std::string raw = (test::cli_temp_dir() / (name + ".raw.gguf")).string();
  write_synth_model(raw, cfg);
  if (!edit) return raw;
  auto f = gguf::File::open(raw, gguf::DataAccess::Pread);
  gguf::Writer w;
  for (const auto& [key, v] : f->metadata()) w.set(key, v);
  for (const gguf::TensorInfo& t : f->tensors()) {
    std::vector<uint8_t> bytes(t.nbytes);
    f->read_tensor_bytes(t, 0, t.nbytes, bytes.data());
    if (t.name.find("_exps") != std::string::npos) {
      std::vector<float> v(t.nbytes / 4);
      std::memcpy(v.data(), bytes.data(), t.nbytes);
      edit(t.name, v);
      std::memcpy(bytes.data(), v.data(), t.nbytes);
    }
    w.add_tensor(t.name, t.type, t.dims, std::move(bytes));
  }
  const std::string out = (test::cli_temp_dir() / (name + ".gguf")).string();
  w.write(out);
  fs::remove(raw);
  return out;
}

std::string merge_file(const std::string& model, const compress::MergePlan& plan, bool align, const std::string& name) {
  const std::string out = (test::cli_temp_dir() / (name + ".merged.gguf")).string();
  auto src = gguf::File::open(model, gguf::DataAccess::Pread);
  compress::write_expert_edit(*src, compress::merge_edit(*src, plan, align), out);
  return out;
}

// Centres 0 and 2 (2 and 3 tie on selections: the lower wins); 1 joins 0 (weights 3:1), 3 joins 2 (weights 2:2).
compress::CalibStats four_expert_stats() {
  return stats_with({3, 1, 2, 2}, {{1, 0}, {1, 0.1}, {0, 1}, {0.1, 1}});
}

TEST(MergeWrite, TheWeightedAverageByHand) {
  const std::string model = tiny_f32_model("merge-hand");
  auto src_model = Model::load(model);
  const compress::MergePlan plan =
      compress::plan_merge(four_expert_stats(), src_model->spec(), compress::MergeOptions{2, true, true});
  ASSERT_EQ(plan.group_of[0], (std::vector<int>{0, 0, 1, 1}));
  const std::string out = merge_file(model, plan, false, "merge-hand");
  auto merged = Model::load(out);
  EXPECT_EQ(merged->spec().layers[0].moe.n_expert, 2);
  EXPECT_EQ(merged->spec().layers[0].moe.n_expert_used, 2);
  auto sf = gguf::File::open(model, gguf::DataAccess::Pread);
  auto of = gguf::File::open(out, gguf::DataAccess::Pread);
  const compress::ExpertF32 e0 = compress::read_expert_f32(*sf, *src_model, 0, 0),
                            e1 = compress::read_expert_f32(*sf, *src_model, 0, 1),
                            e2 = compress::read_expert_f32(*sf, *src_model, 0, 2),
                            e3 = compress::read_expert_f32(*sf, *src_model, 0, 3);
  const compress::ExpertF32 m0 = compress::read_expert_f32(*of, *merged, 0, 0),
                            m1 = compress::read_expert_f32(*of, *merged, 0, 1);
  auto check = [](const std::vector<float>& got, const std::vector<float>& a, float wa, const std::vector<float>& b,
                  float wb) {
    ASSERT_EQ(got.size(), a.size());
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], wa * a[i] + wb * b[i], 1e-6f) << i;
  };
  check(m0.gate, e0.gate, 0.75f, e1.gate, 0.25f);
  check(m0.up, e0.up, 0.75f, e1.up, 0.25f);
  check(m0.down, e0.down, 0.75f, e1.down, 0.25f);
  check(m1.gate, e2.gate, 0.5f, e3.gate, 0.5f);
  check(m1.down, e2.down, 0.5f, e3.down, 0.5f);
  // The router keeps the centres' rows (experts 0 and 2).
  const gguf::TensorInfo* rs = sf->find_tensor("blk.0.ffn_gate_inp.weight");
  const gguf::TensorInfo* ro = of->find_tensor("blk.0.ffn_gate_inp.weight");
  ASSERT_TRUE(rs && ro);
  ASSERT_EQ(rs->type, DType::F32);
  std::vector<float> a(rs->nbytes / 4), b(ro->nbytes / 4);
  sf->read_tensor_bytes(*rs, 0, rs->nbytes, a.data());
  of->read_tensor_bytes(*ro, 0, ro->nbytes, b.data());
  const size_t d = 64;
  ASSERT_EQ(b.size(), 2 * d);
  EXPECT_TRUE(std::equal(b.begin(), b.begin() + d, a.begin()));
  EXPECT_TRUE(std::equal(b.begin() + d, b.end(), a.begin() + 2 * d));
  // A centre alone in its group is copied byte for byte: with these selections, keep 3 makes 0, 2 and 3 centres and
  // 1 joins 0, so 2 and 3 are alone.
  const compress::MergePlan p3 =
      compress::plan_merge(stats_with({3, 1, 4, 4}, {{1, 0}, {1, 0.1}, {0, 1}, {0, 1}}), src_model->spec(),
                           compress::MergeOptions{3, true, true});
  ASSERT_EQ(p3.centres[0], (std::vector<int>{0, 2, 3}));
  const std::string out3 = merge_file(model, p3, true, "merge-hand3");
  auto m3 = Model::load(out3);
  auto f3 = gguf::File::open(out3, gguf::DataAccess::Pread);
  EXPECT_EQ(compress::read_expert_f32(*f3, *m3, 0, 1).gate, e2.gate);
  EXPECT_EQ(compress::read_expert_f32(*f3, *m3, 0, 2).down, e3.down);
  for (const auto& p : {model, out, out3}) fs::remove(p);
}

TEST(MergeWrite, AlignedPermutationsOfTheCentreMergeIntoTheCentre) {
  // Expert 1 is expert 0 with its neurons shuffled, expert 3 is expert 2 shuffled another way: the same functions.
  const int64_t d = 64, ff = 16;
  const std::vector<int> p1 = shuffled(static_cast<int>(ff), 5), p3 = shuffled(static_cast<int>(ff), 6);
  const std::string model = tiny_f32_model("merge-perm", [&](const std::string& name, std::vector<float>& v) {
    const int proj = name.find("gate") != std::string::npos ? 0 : name.find("up") != std::string::npos ? 1 : 2;
    const size_t slice = static_cast<size_t>(d * ff);
    for (auto [dst, from, perm] : {std::tuple{1, 0, &p1}, std::tuple{3, 2, &p3}}) {
      std::vector<float> m(v.begin() + from * slice, v.begin() + (from + 1) * slice);
      m = compress::permute_neurons(m, proj, *perm, d, ff);
      std::copy(m.begin(), m.end(), v.begin() + dst * slice);
    }
  });
  auto src_model = Model::load(model);
  auto sf = gguf::File::open(model, gguf::DataAccess::Pread);
  const compress::MergePlan plan =
      compress::plan_merge(four_expert_stats(), src_model->spec(), compress::MergeOptions{2, true, true});
  std::vector<float> x(static_cast<size_t>(4 * d)), scratch(static_cast<size_t>(8 * ff));
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::cos(0.21f * static_cast<float>(i));
  auto ffn = [&](const compress::ExpertF32& e) {
    std::vector<float> y(x.size());
    compress::expert_ffn_f32(x.data(), 4, d, ff, e.gate.data(), e.up.data(), e.down.data(), y.data(), scratch.data());
    return y;
  };
  for (bool align : {true, false}) {
    const std::string out = merge_file(model, plan, align, align ? "merge-perm-a" : "merge-perm-n");
    auto merged = Model::load(out);
    auto of = gguf::File::open(out, gguf::DataAccess::Pread);
    for (int j = 0; j < 2; ++j) {
      const std::vector<float> want = ffn(compress::read_expert_f32(*sf, *src_model, 0, plan.centres[0][j]));
      const std::vector<float> got = ffn(compress::read_expert_f32(*of, *merged, 0, j));
      double err = 0, ref = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        err += (got[i] - want[i]) * (got[i] - want[i]);
        ref += want[i] * want[i];
      }
      if (align) {
        EXPECT_LT(err / ref, 1e-10) << "output expert " << j;
      } else {
        EXPECT_GT(err / ref, 1e-2) << "output expert " << j << ": unaligned averaging should change the function";
      }
    }
    fs::remove(out);
  }
  fs::remove(model);
}

TEST(MergeWrite, GroupLimitedRouterMergesAndRuns) {
  // A DeepSeek-V3-like model: sigmoid gate with selection bias, 4 groups of 4 experts, top-2 groups.
  const SynthConfig cfg = test::group_limited_synth();
  const std::string path = (test::cli_temp_dir() / "ds3-merge.gguf").string();
  write_synth_model(path, cfg);
  auto model = Model::load(path);
  std::vector<double> counts(16);
  std::vector<std::vector<double>> cols(16, std::vector<double>(16, 0.0));
  for (int e = 0; e < 16; ++e) {
    counts[e] = 16 - e;         // favours group 0 and the first experts of each group
    cols[e][(e * 7) % 16] = 1;  // logit columns that point across groups
    cols[e][e] = 0.5;
  }
  compress::CalibStats st = stats_with(counts, cols, 3, 32);
  st.layers.erase(st.layers.begin());  // layer 0 is dense
  st.layers[0].layer = 1;
  st.layers[1].layer = 2;
  const compress::MergePlan plan = compress::plan_merge(st, model->spec(), compress::MergeOptions{8, true, true});
  EXPECT_EQ(plan.centres[1], (std::vector<int>{0, 1, 4, 5, 8, 9, 12, 13}));
  for (int e = 0; e < 16; ++e) EXPECT_EQ(plan.centres[1][plan.group_of[1][e]] / 4, e / 4) << e;
  const std::string out = merge_file(path, plan, true, "ds3-merge");
  auto small = Model::load(out);
  EXPECT_EQ(small->spec().layers[1].moe.n_expert, 8);
  EXPECT_EQ(small->spec().layers[1].moe.n_group, 4);
  // Selection-bias entries follow the centres.
  auto src = gguf::File::open(path, gguf::DataAccess::Pread);
  auto dst = gguf::File::open(out, gguf::DataAccess::Pread);
  std::vector<float> a(16), b(8);
  src->read_tensor_bytes(*src->find_tensor("blk.1.exp_probs_b.bias"), 0, 64, a.data());
  dst->read_tensor_bytes(*dst->find_tensor("blk.1.exp_probs_b.bias"), 0, 32, b.data());
  for (int j = 0; j < 8; ++j) EXPECT_EQ(b[j], a[plan.centres[1][j]]);
  for (float v : eval_logits(*small, {1, 2, 3, 4, 5})) ASSERT_TRUE(std::isfinite(v));
  fs::remove(out);
  fs::remove(path);
}

TEST(MergeCli, FixtureLoadsBackWithItsShapesAndErrorsAreClear) {
  const std::string model = test::model_path("tiny-deepseekmoe");  // a dense first layer, 2 shared experts
  if (!fs::exists(model)) GTEST_SKIP() << "fixture missing";
  const fs::path dir = test::cli_temp_dir();
  const std::string stats = (dir / "merge-cli.stats.gguf").string(), out = (dir / "merge-cli.gguf").string();
  const std::string text = test::fixtures_dir() + "/text/t2.txt";
  auto r = run_cli({"calibrate", "-q", "-m", model, "-f", text, "--recon-types", "", "-c", "64", "-o", stats});
  ASSERT_EQ(r.status, 0) << r.err;
  r = run_cli({"merge", "-q", "-m", model, "--stats", stats, "--method", "msmoe", "--keep", "0.5", "--align", "-o", out,
               "--eval", text, "--eval-ctx", "64", "--eval-windows", "2"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("groups"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("ppl before"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("file size"), std::string::npos) << r.out;
  auto src_model = Model::load(model);
  auto merged = Model::load(out);
  const ModelSpec& s = src_model->spec();
  auto src = gguf::File::open(model, gguf::DataAccess::Pread);
  auto dst = gguf::File::open(out, gguf::DataAccess::Pread);
  for (int il = 0; il < s.n_layer; ++il) {
    const LayerSpec& L = merged->spec().layers[il];
    EXPECT_EQ(L.is_moe, s.layers[il].is_moe);
    if (!L.is_moe) continue;
    EXPECT_EQ(L.moe.n_expert, s.layers[il].moe.n_expert / 2);
    EXPECT_EQ(L.moe.n_shared, s.layers[il].moe.n_shared);
    EXPECT_EQ(L.moe.n_ff_exp, s.layers[il].moe.n_ff_exp);
    // Provenance: the output expert of every source expert.
    const gguf::Value* g = dst->find("moe.merge.group_of." + std::to_string(il));
    ASSERT_NE(g, nullptr);
  }
  // Everything but the routed experts and the router is byte for byte the source's.
  for (const gguf::TensorInfo& t : src->tensors()) {
    const gguf::TensorInfo* o = dst->find_tensor(t.name);
    ASSERT_NE(o, nullptr) << t.name;
    if (t.name.find("_exps") != std::string::npos || t.name.find("ffn_gate_inp.") != std::string::npos) {
      EXPECT_EQ(o->dims.back(), t.dims.back() / 2) << t.name;
      continue;
    }
    std::vector<uint8_t> a(t.nbytes), b(o->nbytes);
    src->read_tensor_bytes(t, 0, t.nbytes, a.data());
    dst->read_tensor_bytes(*o, 0, o->nbytes, b.data());
    EXPECT_EQ(a, b) << t.name << " changed";
  }
  for (float v : eval_logits(*merged, {1, 2, 3, 4})) ASSERT_TRUE(std::isfinite(v));

  struct Bad {
    std::vector<std::string> args;
    std::string want;
  };
  const std::vector<Bad> bad = {
      {{"--method", "average", "--keep", "0.5", "-o", out}, "--method"},
      {{"--keep", "0.5", "--weighting", "median", "-o", out}, "--weighting"},
      {{"-o", out}, "--keep"},
      {{"--keep", "0.5", "--keep-experts", "2", "-o", out}, "--keep"},
      {{"--keep", "1.5", "-o", out}, "--keep"},
      {{"--keep-experts", "9", "-o", out}, "--keep-experts"},
      {{"--keep", "0.5"}, "-o"},
  };
  for (const Bad& b : bad) {
    std::vector<std::string> args = {"merge", "-q", "-m", model, "--stats", stats};
    args.insert(args.end(), b.args.begin(), b.args.end());
    r = run_cli(args);
    EXPECT_NE(r.status, 0) << b.want;
    EXPECT_NE(r.err.find(b.want), std::string::npos) << b.want << ": " << r.err;
  }
  // Stats of another model, and a file that is not statistics.
  const std::string olmoe = test::model_path("tiny-olmoe");
  if (fs::exists(olmoe)) {
    r = run_cli({"merge", "-q", "-m", olmoe, "--stats", stats, "--keep", "0.5", "-o", out});
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.err.find(stats), std::string::npos) << r.err;
  }
  r = run_cli({"merge", "-q", "-m", model, "--stats", model, "--keep", "0.5", "-o", out});
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find(model), std::string::npos) << r.err;
  fs::remove(stats);
  fs::remove(out);
}

// Merged F16 fixtures against llama.cpp's logits on the same files (bench/llamacpp/compressed_refs.sh merge makes them with the
// CLI; this test runs the same CLI commands).
class MergedFixtureVsLlama : public ::testing::TestWithParam<std::string> {};

TEST_P(MergedFixtureVsLlama, LogitsMatchLlamaCpp) {
  const std::string name = GetParam();
  test::expect_compressed_fixture_matches_llama(name, kLlamaRefs + "merged_" + name + ".logits.f32", "merge",
                                                {"--method", "msmoe", "--keep", "0.5", "--align"});
}

INSTANTIATE_TEST_SUITE_P(Fixtures, MergedFixtureVsLlama, ::testing::ValuesIn(test::f16_fixture_names()), test::FixtureParamName());

}  // namespace
}  // namespace moe
