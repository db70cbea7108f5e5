// Calibration statistics and expert pruning (issue 17 parts 2 and 3):
//  - CalibrationObserver on a fixture: counts, routing weights and scores add up to what the forward pass routed,
//    and the reconstruction errors fall as the candidate type gets more bits;
//  - the statistics file round-trips and every malformed field is rejected with its name;
//  - the criteria on hand-made statistics (frequency, REAP, random, super experts protected, groups kept even);
//  - the pruned writer: shapes and counts, k clamped, shared experts and attention byte for byte, group-limited
//    routers, and the logits of pruned fixtures against llama.cpp's on the same files (tests/data/llamacpp,
//    bench/llamacpp/compressed_refs.sh prune);
//  - the CLI: calibrate, prune, --mask-only, --eval's quality report and the errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

#include "base/error.h"
#include "cli_runner.h"
#include "compress_test_util.h"
#include "compress/calib_stats.h"
#include "compress/calibrate.h"
#include "compress/criteria.h"
#include "compress/expert_edit.h"
#include "fixture_util.h"
#include "format/gguf.h"
#include "model/synth.h"
#include "model/weights.h"
#include "moe/executor.h"
#include "runtime/session.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using test::run_cli;

const std::string kLlamaRefs = std::string(MOE_SOURCE_DIR) + "/tests/data/llamacpp/";

std::unique_ptr<Model> load_fixture(const std::string& name) {
  const std::string p = test::model_path(name);
  if (!fs::exists(p)) return nullptr;
  return Model::load(p);
}

using test::eval_logits;

compress::CalibStats calibrate(const Model& model, const std::vector<int32_t>& ids, std::vector<DType> types,
                               std::vector<float>* logits = nullptr) {
  compress::CalibrateOptions o;
  o.recon_types = std::move(types);
  o.recon_tokens = 32;
  compress::CalibrationObserver obs(model, {"t"}, o);
  auto l = eval_logits(model, ids, &obs);
  if (logits) *logits = std::move(l);
  ThreadPool pool(2);
  compress::add_reconstruction_errors(obs, model, pool);
  return obs.stats();
}

TEST(Calibrate, CountsWeightsAndScoresAddUp) {
  auto model = load_fixture("tiny-qwen3moe");
  if (!model) GTEST_SKIP() << "fixture missing";
  const auto ids = test::read_ids(test::ref_path("tiny-qwen3moe", "seq.tok"));
  std::vector<float> observed;
  const compress::CalibStats st = calibrate(*model, ids, {DType::Q2_K, DType::Q8_0}, &observed);
  // Observing changes nothing.
  EXPECT_EQ(observed, eval_logits(*model, ids));
  const int64_t T = static_cast<int64_t>(ids.size());
  EXPECT_EQ(st.tokens, static_cast<uint64_t>(T));
  ASSERT_EQ(st.layers.size(), 2u);
  for (const compress::LayerStats& l : st.layers) {
    const int k = model->spec().layers[l.layer].moe.n_expert_used;
    EXPECT_DOUBLE_EQ(std::accumulate(l.count.begin(), l.count.end(), 0.0), static_cast<double>(T * k));
    // qwen3moe renormalizes the top-k weights: they sum to one per token.
    EXPECT_NEAR(std::accumulate(l.weight_sum.begin(), l.weight_sum.end(), 0.0), static_cast<double>(T), 1e-3);
    // TCESS with k' = 1: each token adds its largest logit to one expert.
    double tc = 0;
    for (double v : l.tcess) tc += v != 0;
    EXPECT_GT(tc, 0);
    for (int e = 0; e < l.n_expert; ++e) {
      if (l.count[e] == 0) continue;
      EXPECT_GT(l.reap[e], 0) << e;
      EXPECT_LE(l.reap[e], l.out_norm[e] + 1e-9) << e;  // g <= 1
      EXPECT_GT(l.max_out[e], 0) << e;
      // The Gram matrix of router logits is symmetric with a positive diagonal.
      EXPECT_GT(l.logit_gram[e * l.n_expert + e], 0);
      EXPECT_DOUBLE_EQ(l.logit_gram[e * l.n_expert + 0], l.logit_gram[0 * l.n_expert + e]);
      if (l.recon_n[e] == 0) continue;
      // Q2_K loses more than Q8_0, for each part and all together.
      for (int part = 0; part < compress::kReconParts; ++part) {
        EXPECT_GT(l.recon_at(0, part, e), l.recon_at(1, part, e)) << "expert " << e << " part " << part;
        EXPECT_GT(l.recon_at(1, part, e), 0);
      }
      EXPECT_LT(l.recon_at(1, 3, e), 0.01 * l.recon_ref[e]);  // Q8_0 is within 1% of the output's energy
    }
  }
}

TEST(CalibStats, RoundTripsAndRejectsMalformedFields) {
  auto model = load_fixture("tiny-qwen3moe");
  if (!model) GTEST_SKIP() << "fixture missing";
  const auto ids = test::read_ids(test::ref_path("tiny-qwen3moe", "seq.tok"));
  const compress::CalibStats st = calibrate(*model, ids, {DType::Q4_K});
  const std::string path = (test::cli_temp_dir() / "calib_roundtrip.gguf").string();
  compress::save_stats(st, path);
  const compress::CalibStats back = compress::load_stats(path);
  EXPECT_EQ(back.arch, st.arch);
  EXPECT_EQ(back.tokens, st.tokens);
  EXPECT_EQ(back.labels, st.labels);
  EXPECT_EQ(back.recon_types, st.recon_types);
  ASSERT_EQ(back.layers.size(), st.layers.size());
  for (size_t i = 0; i < st.layers.size(); ++i) {
    EXPECT_EQ(back.layers[i].count, st.layers[i].count);
    for (size_t e = 0; e < st.layers[i].reap.size(); ++e)
      EXPECT_NEAR(back.layers[i].reap[e], st.layers[i].reap[e], 1e-6 * std::abs(st.layers[i].reap[e]));
  }
  EXPECT_TRUE(compress::check_stats_match(back, *model, path));

  // Rewrites the file with one tensor or key changed and expects an error naming it.
  auto corrupt = [&](const std::string& tensor, auto&& change_bytes, const std::string& want) {
    auto f = gguf::File::open(path, gguf::DataAccess::Pread);
    gguf::Writer w;
    for (const auto& [key, v] : f->metadata()) w.set(key, v);
    for (const gguf::TensorInfo& t : f->tensors()) {
      std::vector<uint8_t> bytes(t.nbytes);
      f->read_tensor_bytes(t, 0, t.nbytes, bytes.data());
      std::vector<int64_t> dims = t.dims;
      if (t.name == tensor) change_bytes(bytes, dims);
      w.add_tensor(t.name, t.type, dims, std::move(bytes));
    }
    const std::string bad = (test::cli_temp_dir() / "calib_bad.gguf").string();
    w.write(bad);
    try {
      compress::load_stats(bad);
      ADD_FAILURE() << "accepted a file with " << want;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  };
  const std::string count0 = "calib." + std::to_string(st.layers[0].layer) + ".count";
  corrupt(count0, [](std::vector<uint8_t>& b, std::vector<int64_t>&) {
    const float nan = std::nanf("");
    std::memcpy(b.data(), &nan, 4);
  }, count0);
  corrupt(count0, [](std::vector<uint8_t>& b, std::vector<int64_t>&) {
    const float neg = -1.0f;
    std::memcpy(b.data() + 4, &neg, 4);
  }, "non-negative");
  corrupt(count0, [](std::vector<uint8_t>& b, std::vector<int64_t>& d) {
    b.resize(b.size() - 4);
    d[0] -= 1;
  }, "shape");
  // Stats of another model are refused.
  auto other = load_fixture("tiny-olmoe");
  if (other) {
    EXPECT_THROW(compress::check_stats_match(back, *other, path), Error);
  }
  fs::remove(path);
  fs::remove(test::cli_temp_dir() / "calib_bad.gguf");
}

// Hand-made statistics: one layer of 8 experts.
compress::CalibStats hand_stats(int n_expert, int n_layer = 1) {
  compress::CalibStats s;
  s.arch = "qwen3moe";
  s.n_layer = n_layer;
  s.labels = {"a", "b"};
  s.label_tokens = {10, 10};
  for (int il = 0; il < n_layer; ++il) {
    compress::LayerStats l;
    l.init(il, n_expert, 16, 2, 0);
    s.layers.push_back(l);
  }
  return s;
}

ModelSpec hand_spec(int n_expert, int k, int groups = 1, int n_layer = 1) {
  ModelSpec s = make_moe_shape(n_layer, 64, 2, 2, 32, n_expert, k, 16, 300);
  for (LayerSpec& L : s.layers) L.moe.n_group = groups;
  return s;
}

TEST(Criteria, EachCriterionKeepsItsBestExperts) {
  compress::CalibStats s = hand_stats(8);
  compress::LayerStats& l = s.layers[0];
  // Frequency favours 0..3; REAP (mean g*||E||) favours 4..7; EASY-EP favours the even ones.
  for (int e = 0; e < 8; ++e) {
    l.count[e] = e < 4 ? 100 - e : 10 - e;
    l.reap[e] = l.count[e] * (e < 4 ? 0.1 : 1.0 + e);
    l.easy_ep[e] = e % 2 == 0 ? 50 - e : 1;
    l.max_out[e] = 1;
    l.tcess[0 * 8 + e] = e == 6 || e == 7 ? 5 : 0;  // label a: 6 and 7
    l.tcess[1 * 8 + e] = e == 1 || e == 2 ? 5 : 0;  // label b: 1 and 2
  }
  const ModelSpec spec = hand_spec(8, 2);
  auto keep = [&](compress::Criterion c, int n, size_t label = 0) {
    compress::ExpertChoice ch;
    ch.criterion = c;
    ch.keep = n;
    ch.label = label;
    return compress::choose_experts(s, spec, ch)[0];
  };
  EXPECT_EQ(keep(compress::Criterion::Frequency, 4), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(keep(compress::Criterion::Reap, 4), (std::vector<int>{4, 5, 6, 7}));
  EXPECT_EQ(keep(compress::Criterion::EasyEp, 4), (std::vector<int>{0, 2, 4, 6}));
  EXPECT_EQ(keep(compress::Criterion::Tcess, 2, 0), (std::vector<int>{6, 7}));
  EXPECT_EQ(keep(compress::Criterion::Tcess, 2, 1), (std::vector<int>{1, 2}));
  // Random: independent of the statistics, reproducible, different for another seed.
  compress::ExpertChoice r;
  r.criterion = compress::Criterion::Random;
  r.keep = 4;
  r.seed = 7;
  const auto a = compress::choose_experts(s, spec, r)[0];
  compress::CalibStats s2 = hand_stats(8);
  EXPECT_EQ(compress::choose_experts(s2, spec, r)[0], a);
  bool differs = false;
  for (uint64_t seed = 8; seed < 12; ++seed) {
    r.seed = seed;
    differs |= compress::choose_experts(s, spec, r)[0] != a;
  }
  EXPECT_TRUE(differs);
  EXPECT_THROW(keep(compress::Criterion::Frequency, 9), Error);
  EXPECT_THROW(keep(compress::Criterion::Frequency, 0), Error);
  EXPECT_THROW(compress::parse_criterion("largest"), Error);
}

TEST(Criteria, SuperExpertsAreKeptUnlessProtectionIsOff) {
  // 4 layers x 64 experts, so the 99.5th percentile sits below the one outlier.
  compress::CalibStats s = hand_stats(64, 4);
  for (auto& l : s.layers)
    for (int e = 0; e < 64; ++e) {
      l.count[e] = 100 + e;
      l.max_out[e] = 1.0 + 0.01 * e;
    }
  s.layers[1].max_out[3] = 500;  // a super expert with few selections
  s.layers[1].count[3] = 1;
  s.layers[3].max_out[5] = 900;  // in the last quarter of the layers: not a super expert by the rule
  const auto supers = compress::super_experts(s);
  int n = 0;
  for (const auto& l : supers) n += static_cast<int>(std::count(l.begin(), l.end(), true));
  EXPECT_EQ(n, 1);
  EXPECT_TRUE(supers[1][3]);
  const ModelSpec spec = hand_spec(64, 4, 1, 4);
  compress::ExpertChoice c;
  c.criterion = compress::Criterion::Frequency;
  c.keep = 8;
  auto kept = compress::choose_experts(s, spec, c);
  EXPECT_TRUE(std::count(kept[1].begin(), kept[1].end(), 3));
  EXPECT_EQ(kept[1].size(), 8u);
  c.protect = false;
  kept = compress::choose_experts(s, spec, c);
  EXPECT_FALSE(std::count(kept[1].begin(), kept[1].end(), 3));
}

TEST(Criteria, GroupLimitedRoutersKeepTheSameNumberPerGroup) {
  compress::CalibStats s = hand_stats(8);
  // Frequency favours group 0 (experts 0..3) entirely.
  for (int e = 0; e < 8; ++e) s.layers[0].count[e] = e < 4 ? 100 + e : e;
  const ModelSpec spec = hand_spec(8, 2, /*groups=*/2);
  compress::ExpertChoice c;
  c.criterion = compress::Criterion::Frequency;
  c.keep = 4;
  EXPECT_EQ(compress::choose_experts(s, spec, c)[0], (std::vector<int>{2, 3, 6, 7}));
  c.keep = 3;  // not a multiple of the group count
  try {
    compress::choose_experts(s, spec, c);
    ADD_FAILURE() << "accepted 3 experts in 2 groups";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("groups"), std::string::npos) << e.what();
  }
  EXPECT_EQ(compress::experts_for_ratio(spec, 0.5), 4);
  EXPECT_EQ(compress::experts_for_ratio(spec, 0.3), 2);
  EXPECT_THROW(compress::experts_for_ratio(spec, 0), Error);
  EXPECT_THROW(compress::experts_for_ratio(spec, 1.5), Error);
}

// Prunes a model to the given experts per layer (dense layers empty).
std::string prune_to(const Model& m, const std::vector<std::vector<int>>& keep, const std::string& name) {
  const std::string out = (test::cli_temp_dir() / (name + ".pruned.gguf")).string();
  compress::ExpertEdit edit;
  edit.copy_from = keep;
  edit.router_from = keep;
  auto src = gguf::File::open(m.file().path(), gguf::DataAccess::Pread);
  compress::write_expert_edit(*src, edit, out);
  return out;
}

std::vector<std::vector<int>> keep_all_but(const ModelSpec& s, std::initializer_list<int> drop) {
  std::vector<std::vector<int>> keep(static_cast<size_t>(s.n_layer));
  for (int il = 0; il < s.n_layer; ++il)
    if (s.layers[il].is_moe)
      for (int e = 0; e < s.layers[il].moe.n_expert; ++e)
        if (std::find(drop.begin(), drop.end(), e) == drop.end()) keep[il].push_back(e);
  return keep;
}

TEST(Prune, ShapesCountsAndUntouchedTensors) {
  auto model = load_fixture("tiny-deepseekmoe");  // a dense first layer and 2 shared experts per MoE layer
  if (!model) GTEST_SKIP() << "fixture missing";
  const ModelSpec& s = model->spec();
  const std::string out = prune_to(*model, keep_all_but(s, {1, 6}), "deepseekmoe");
  auto small = Model::load(out);
  auto src = gguf::File::open(model->file().path(), gguf::DataAccess::Pread);
  auto dst = gguf::File::open(out, gguf::DataAccess::Pread);
  for (int il = 0; il < s.n_layer; ++il) {
    EXPECT_EQ(small->spec().layers[il].is_moe, s.layers[il].is_moe);
    if (s.layers[il].is_moe) {
      EXPECT_EQ(small->spec().layers[il].moe.n_expert, s.layers[il].moe.n_expert - 2);
      EXPECT_EQ(small->spec().layers[il].moe.n_shared, s.layers[il].moe.n_shared);
    }
  }
  for (const gguf::TensorInfo& t : src->tensors()) {
    const gguf::TensorInfo* o = dst->find_tensor(t.name);
    ASSERT_NE(o, nullptr) << t.name;
    std::vector<uint8_t> a(t.nbytes), b(o->nbytes);
    src->read_tensor_bytes(t, 0, t.nbytes, a.data());
    dst->read_tensor_bytes(*o, 0, o->nbytes, b.data());
    const bool per_expert = t.name.find("_exps") != std::string::npos || t.name.find("ffn_gate_inp.") != std::string::npos;
    if (!per_expert) {
      EXPECT_EQ(a, b) << t.name << " changed";
      continue;
    }
    // Expert slices 0, 2..5, 7 of the source, in order.
    const int64_t E = t.dims.back();
    ASSERT_EQ(o->dims.back(), E - 2) << t.name;
    const size_t slice = t.nbytes / static_cast<size_t>(E);
    std::vector<uint8_t> want;
    for (int e = 0; e < E; ++e)
      if (e != 1 && e != 6) want.insert(want.end(), a.begin() + e * slice, a.begin() + (e + 1) * slice);
    EXPECT_EQ(b, want) << t.name;
  }
  fs::remove(out);
}

TEST(Prune, KIsClampedAndEditsAreChecked) {
  auto model = load_fixture("tiny-qwen2moe");  // top-4 of 8, a gated shared expert
  if (!model) GTEST_SKIP() << "fixture missing";
  const ModelSpec& s = model->spec();
  std::vector<std::vector<int>> keep(static_cast<size_t>(s.n_layer));
  for (int il = 0; il < s.n_layer; ++il)
    if (s.layers[il].is_moe) keep[il] = {2, 5, 7};
  const std::string out = prune_to(*model, keep, "qwen2moe-k");
  auto small = Model::load(out);
  for (const LayerSpec& L : small->spec().layers) {
    EXPECT_EQ(L.moe.n_expert, 3);
    EXPECT_EQ(L.moe.n_expert_used, 3);
  }
  // It runs, and the logits are finite.
  const auto ids = test::read_ids(test::ref_path("tiny-qwen2moe", "seq.tok"));
  for (float v : eval_logits(*small, std::vector<int32_t>(ids.begin(), ids.begin() + 8))) ASSERT_TRUE(std::isfinite(v));
  fs::remove(out);
  auto src = gguf::File::open(model->file().path(), gguf::DataAccess::Pread);
  compress::ExpertEdit bad;
  bad.copy_from = keep;
  bad.router_from = keep;
  bad.copy_from[0] = {2, 5};  // layers differ
  EXPECT_THROW(compress::write_expert_edit(*src, bad, out), Error);
  bad.copy_from = keep;
  bad.copy_from[0][0] = 8;  // out of range
  EXPECT_THROW(compress::write_expert_edit(*src, bad, out), Error);
  bad.copy_from[0][0] = -1;  // new matrices without a callback
  EXPECT_THROW(compress::write_expert_edit(*src, bad, out), Error);
  EXPECT_FALSE(fs::exists(out));
}

TEST(Prune, GroupLimitedRouterLoadsAndRuns) {
  // A DeepSeek-V3-like model: sigmoid gate with selection bias, 4 groups of 4 experts, top-2 groups.
  const SynthConfig cfg = test::group_limited_synth();
  const std::string path = (test::cli_temp_dir() / "ds3-groups.gguf").string();
  try {
    write_synth_model(path, cfg);
  } catch (const Error& e) {
    GTEST_SKIP() << "cannot write the shape: " << e.what();
  }
  auto model = Model::load(path);
  compress::CalibStats st = hand_stats(16, 3);
  for (auto& l : st.layers) l.layer += 0;
  st.layers.erase(st.layers.begin());  // layer 0 is dense
  st.layers[0].layer = 1;
  st.layers[1].layer = 2;
  st.n_layer = 3;
  for (auto& l : st.layers)
    for (int e = 0; e < 16; ++e) l.count[e] = 16 - e;  // favours group 0
  compress::ExpertChoice c;
  c.criterion = compress::Criterion::Frequency;
  c.keep = 8;
  const auto keep = compress::choose_experts(st, model->spec(), c);
  EXPECT_EQ(keep[1], (std::vector<int>{0, 1, 4, 5, 8, 9, 12, 13}));
  const std::string out = prune_to(*model, keep, "ds3-groups");
  auto small = Model::load(out);
  EXPECT_EQ(small->spec().layers[1].moe.n_expert, 8);
  EXPECT_EQ(small->spec().layers[1].moe.n_group, 4);
  // Selection-bias entries follow their experts.
  auto src = gguf::File::open(path, gguf::DataAccess::Pread);
  auto dst = gguf::File::open(out, gguf::DataAccess::Pread);
  const gguf::TensorInfo* bs = src->find_tensor("blk.1.exp_probs_b.bias");
  const gguf::TensorInfo* bd = dst->find_tensor("blk.1.exp_probs_b.bias");
  ASSERT_TRUE(bs && bd);
  std::vector<float> a(16), b(8);
  src->read_tensor_bytes(*bs, 0, 64, a.data());
  dst->read_tensor_bytes(*bd, 0, 32, b.data());
  for (int j = 0; j < 8; ++j) EXPECT_EQ(b[j], a[keep[1][j]]);
  for (float v : eval_logits(*small, {1, 2, 3, 4, 5})) ASSERT_TRUE(std::isfinite(v));
  fs::remove(out);
  fs::remove(path);
}

// The pruned F16 fixtures against llama.cpp's logits on the same files (bench/llamacpp/compressed_refs.sh prune makes them
// with the CLI; this test runs the same CLI commands).
class PrunedFixtureVsLlama : public ::testing::TestWithParam<std::string> {};

TEST_P(PrunedFixtureVsLlama, LogitsMatchLlamaCpp) {
  const std::string name = GetParam();
  test::expect_compressed_fixture_matches_llama(name, kLlamaRefs + "pruned_" + name + ".logits.f32", "prune",
                                                {"--criterion", "random", "--seed", "7", "--no-protect", "--keep", "0.75"});
}

INSTANTIATE_TEST_SUITE_P(Fixtures, PrunedFixtureVsLlama, ::testing::ValuesIn(test::f16_fixture_names()), test::FixtureParamName());

TEST(PruneCli, MaskOnlyEvalAndErrors) {
  const std::string model = test::model_path("tiny-qwen3moe");
  if (!fs::exists(model)) GTEST_SKIP() << "fixture missing";
  const fs::path dir = test::cli_temp_dir();
  const std::string stats = (dir / "cli.stats.gguf").string(), out = (dir / "cli.pr.gguf").string();
  const std::string text = test::fixtures_dir() + "/text/t2.txt";
  auto r = run_cli({"calibrate", "-q", "-m", model, "-f", text, "--label", "code", "--recon-types", "q4_K,q8_0", "-c",
                    "64", "-o", stats});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("super experts"), std::string::npos) << r.out;

  r = run_cli({"prune", "-m", model, "--stats", stats, "--criterion", "frequency", "--keep-experts", "6", "--mask-only"});
  ASSERT_EQ(r.status, 0) << r.err;
  // Two entries per MoE layer, as layer:expert.
  size_t masked = 0;
  for (size_t p = r.out.find('\n'); p != std::string::npos; p = r.out.find('\n', p + 1))
    if (p + 1 < r.out.size() && r.out[p + 1] != '#') masked += 1 + std::count(r.out.begin() + p + 1,
                                                                     r.out.begin() + r.out.find('\n', p + 1), ',');
  EXPECT_EQ(masked, 4u) << r.out;
  EXPECT_FALSE(fs::exists(out));

  r = run_cli({"prune", "-q", "-m", model, "--stats", stats, "--criterion", "reap", "--keep", "0.5", "-o", out,
               "--eval", text, "--eval-ctx", "64", "--eval-windows", "2"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("ppl before"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("file size"), std::string::npos) << r.out;
  EXPECT_EQ(Model::load(out)->spec().layers[0].moe.n_expert, 4);
  r = run_cli({"prune", "-q", "-m", model, "--stats", stats, "--criterion", "tcess", "--label", "code",
               "--keep-experts", "4", "-o", out});
  EXPECT_EQ(r.status, 0) << r.err;

  struct Bad {
    std::vector<std::string> args;
    std::string want;
  };
  const std::vector<Bad> bad = {
      {{"--criterion", "largest", "--keep", "0.5", "-o", out}, "--criterion"},
      {{"--criterion", "reap", "-o", out}, "--keep"},
      {{"--criterion", "reap", "--keep", "0.5", "--keep-experts", "2", "-o", out}, "--keep"},
      {{"--criterion", "reap", "--keep", "1.5", "-o", out}, "--keep"},
      {{"--criterion", "reap", "--keep-experts", "9", "-o", out}, "--keep-experts"},
      {{"--criterion", "tcess", "--label", "poetry", "--keep", "0.5", "-o", out}, "poetry"},
      {{"--criterion", "reap", "--keep", "0.5"}, "-o"},
  };
  for (const Bad& b : bad) {
    std::vector<std::string> args = {"prune", "-q", "-m", model, "--stats", stats};
    args.insert(args.end(), b.args.begin(), b.args.end());
    r = run_cli(args);
    EXPECT_NE(r.status, 0) << b.want;
    EXPECT_NE(r.err.find(b.want), std::string::npos) << r.err;
  }
  // Stats of another model.
  const std::string olmoe = test::model_path("tiny-olmoe");
  if (fs::exists(olmoe)) {
    r = run_cli({"prune", "-q", "-m", olmoe, "--stats", stats, "--criterion", "reap", "--keep", "0.5", "-o", out});
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.err.find(stats), std::string::npos) << r.err;
  }
  // A stats file that is not one.
  r = run_cli({"prune", "-q", "-m", model, "--stats", model, "--criterion", "reap", "--keep", "0.5", "-o", out});
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find(model), std::string::npos) << r.err;
  r = run_cli({"calibrate", "-q", "-m", model, "-f", text, "--recon-types", "q9_K", "-o", stats});
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("--recon-types"), std::string::npos) << r.err;
  fs::remove(stats);
  fs::remove(out);
}

}  // namespace
}  // namespace moe

namespace moe {
namespace {

// HEAPr: scores from the trainer's backward pass, neurons removed in both layouts.
TEST(Heapr, NeuronPruningInBothLayouts) {
  const std::string model = test::model_path("tiny-qwen3moe");
  if (!fs::exists(model)) GTEST_SKIP() << "fixture missing";
  const fs::path dir = test::cli_temp_dir();
  const std::string stats = (dir / "heapr.stats.gguf").string(), out = (dir / "heapr.gguf").string();
  const std::string text = test::fixtures_dir() + "/text/t1.txt";
  auto r = run_cli({"calibrate", "-q", "-m", model, "-f", text, "-c", "64", "--heapr", "--recon-types", "", "-o", stats});
  ASSERT_EQ(r.status, 0) << r.err;
  const compress::CalibStats st = compress::load_stats(stats);
  ASSERT_GT(st.heapr_tokens, 0u);
  for (const compress::LayerStats& l : st.layers) {
    ASSERT_EQ(l.heapr.size(), static_cast<size_t>(l.n_expert * l.n_ff));
    double s = 0;
    for (double v : l.heapr) s += v;
    EXPECT_GT(s, 0);
  }
  auto src_model = Model::load(model);
  auto src = gguf::File::open(model, gguf::DataAccess::Pread);
  // uniform: every expert keeps half its neurons; the file's width halves.
  r = run_cli({"prune", "-q", "-m", model, "--stats", stats, "--criterion", "heapr", "--keep", "0.5", "--neuron-layout",
               "uniform", "--no-protect", "-o", out});
  ASSERT_EQ(r.status, 0) << r.err;
  {
    auto m = Model::load(out);
    EXPECT_EQ(m->spec().layers[0].moe.n_ff_exp, 128);
    EXPECT_EQ(m->spec().layers[0].moe.n_expert, 8);
    for (float v : eval_logits(*m, {1, 2, 3, 4})) ASSERT_TRUE(std::isfinite(v));
  }
  // pad: the paper's global ranking; kept neurons are source rows, the rest zero rows up to the widest expert.
  r = run_cli({"prune", "-q", "-m", model, "--stats", stats, "--criterion", "heapr", "--keep", "0.5", "--no-protect",
               "-o", out});
  ASSERT_EQ(r.status, 0) << r.err;
  auto dst = gguf::File::open(out, gguf::DataAccess::Pread);
  size_t zero_rows = 0, matched_rows = 0, total = 0, rows = 0;
  for (int il = 0; il < 2; ++il) {
    const std::string name = "blk." + std::to_string(il) + ".ffn_gate_exps.weight";
    const gguf::TensorInfo* gs = src->find_tensor(name);
    const gguf::TensorInfo* gd = dst->find_tensor(name);
    ASSERT_TRUE(gs && gd);
    const int64_t d = gs->dims[0], ff = gs->dims[1], width = gd->dims[1];
    EXPECT_LE(width, ff);
    total += static_cast<size_t>(8 * ff);
    std::vector<uint16_t> a(static_cast<size_t>(d * ff * 8)), b(static_cast<size_t>(d * width * 8));
    ASSERT_EQ(gs->type, DType::F16);
    src->read_tensor_bytes(*gs, 0, a.size() * 2, a.data());
    dst->read_tensor_bytes(*gd, 0, b.size() * 2, b.data());
    for (int e = 0; e < 8; ++e)
      for (int64_t j = 0; j < width; ++j) {
        const uint16_t* row = b.data() + (e * width + j) * d;
        bool zero = true;
        for (int64_t c = 0; c < d; ++c) zero &= (row[c] & 0x7fff) == 0;
        if (zero) {
          ++zero_rows;
          continue;
        }
        // A kept neuron: a row of the same expert in the source.
        for (int64_t i = 0; i < ff; ++i)
          if (std::equal(row, row + d, a.data() + (e * ff + i) * d)) {
            ++matched_rows;
            break;
          }
      }
    rows += static_cast<size_t>(8 * width);
  }
  EXPECT_EQ(matched_rows + zero_rows, rows);
  // Half of all neurons survive, ranked across layers: kept = rows that are not padding.
  EXPECT_EQ(matched_rows, total / 2);
  // Families the trainer's backward pass does not cover are refused by name.
  const std::string olmoe = test::model_path("tiny-olmoe");
  if (fs::exists(olmoe)) {
    r = run_cli({"calibrate", "-q", "-m", olmoe, "-f", text, "-c", "64", "--heapr", "--recon-types", "", "-o", stats});
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.err.find("HEAPr"), std::string::npos) << r.err;
  }
  fs::remove(stats);
  fs::remove(out);
}

}  // namespace
}  // namespace moe

#include "moe/routing_policy.h"

namespace moe {
namespace {

// `moe prune --mask-only` prints the mask of the experts `moe prune` removes; a run of the original with that mask
// equals the pruned file, bit for bit (the routing lab's contract: a masked expert is as if its router row were gone).
class PrunedEqualsMasked : public ::testing::TestWithParam<std::string> {};

TEST_P(PrunedEqualsMasked, MaskOnlyRunEqualsThePrunedFile) {
  const std::string name = GetParam();
  const std::string model = test::model_path(name);
  if (!fs::exists(model)) GTEST_SKIP() << "fixture missing";
  const fs::path dir = test::cli_temp_dir();
  const std::string stats = (dir / (name + ".m.stats.gguf")).string(), out = (dir / (name + ".m.gguf")).string();
  auto r = run_cli({"calibrate", "-q", "-m", model, "-f", test::fixtures_dir() + "/text/t4.txt", "--recon-types", "",
                    "-c", "64", "-o", stats});
  ASSERT_EQ(r.status, 0) << r.err;
  const std::vector<std::string> args = {"prune", "-q", "-m", model, "--stats", stats, "--criterion", "reap",
                                         "--keep", "0.75"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = args;
    a.insert(a.end(), extra.begin(), extra.end());
    return run_cli(a);
  };
  r = with({"--mask-only"});
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string mask = r.out;
  r = with({"-o", out});
  ASSERT_EQ(r.status, 0) << r.err;
  auto original = Model::load(model);
  auto pruned = Model::load(out);
  ForwardOptions fo;
  fo.routing.mask_experts = parse_layer_experts(mask, "--mask-only output");
  auto ids = test::read_ids(test::ref_path(name, "seq.tok"));
  ResidentExpertStore so(*original), sp(*pruned);
  ThreadPool pool(2);
  Session a(*original, so, static_cast<int64_t>(ids.size()), fo), b(*pruned, sp, static_cast<int64_t>(ids.size()));
  EXPECT_EQ(a.eval(ids, pool, true, 512), b.eval(ids, pool, true, 512));
  fs::remove(stats);
  fs::remove(out);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, PrunedEqualsMasked,
                         ::testing::Values("tiny-qwen3moe", "tiny-deepseekmoe", "tiny-deepseek2-v3", "tiny-gptoss"),
                         test::FixtureParamName());

}  // namespace
}  // namespace moe
