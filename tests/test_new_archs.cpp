// deepseek2 / gpt-oss / glm4moe beyond the fixtures: the per-layer KV cache (a sliding-window ring that
// wraps, the MLA latent cache and its size against the expanded form, cutting a context back), NextN
// layers that are in the file but never run, the gate predictor running the next layer's real gate,
// and clear errors for metadata these archs cannot have.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <numeric>
#include <random>

#include "base/error.h"
#include "cli_runner.h"
#include "fixture_util.h"
#include "format/gguf.h"
#include "kernels/matmul.h"
#include "model/kv_cache.h"
#include "model/reference_forward.h"
#include "model/synth.h"
#include "model/weights.h"
#include "moe/expert_store.h"
#include "runtime/session.h"

namespace moe {
namespace {

std::string temp_path(const std::string& name) { return (test::cli_temp_dir() / name).string(); }

std::vector<int32_t> random_ids(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  return ids;
}

std::vector<float> eval_logits(const Model& m, const std::vector<int32_t>& ids, int64_t n_batch, bool invariant,
                               int64_t n_ctx = 0) {
  ThreadPool pool(2);
  ResidentExpertStore store(m);
  ForwardOptions o;
  o.batch_invariant = invariant;
  Session s(m, store, n_ctx > 0 ? n_ctx : static_cast<int64_t>(ids.size()), o);
  return s.eval(ids, pool, true, n_batch);
}

// A small gpt-oss model: every other layer has a window of `window` keys, so a long context wraps
// the window layers' rings many times.
std::string write_gptoss(const std::string& name, int64_t window, DType experts = DType::F16) {
  SynthConfig c;
  c.arch = "gpt-oss";
  c.spec = make_moe_shape(4, 128, 4, 2, 32, 6, 2, 64, 280);
  for (int il = 0; il < 4; ++il) c.spec.layers[il].n_swa = il % 2 == 0 ? window : 0;
  set_yarn(c.spec, 4.0f, 64);
  c.expert_type = experts;
  c.seed = 77;
  const std::string path = temp_path(name);
  write_synth_model(path, c);
  return path;
}

TEST(NewArchs, SlidingWindowRingWrapsAndMatchesReference) {
  const std::string path = write_gptoss("ring.gguf", 4);
  auto model = Model::load(path);
  const auto ids = random_ids(150, 280, 5);
  // 150 positions: the window layers keep rings of 4 + 63 slots, overwritten about twice.
  const auto kv = KvCache::layout(model->spec(), 150);
  EXPECT_EQ(kv[0].capacity, 4 + KvCache::kWindowBlock - 1);
  EXPECT_EQ(kv[1].capacity, 150);
  const auto batched = eval_logits(*model, ids, 512, false);
  const auto ref = reference_forward(*model, ids);
  EXPECT_LE(test::nmse(batched, ref), 2e-5);
  EXPECT_LE(test::nmse(eval_logits(*model, ids, 1, false), batched), 1e-4);
  EXPECT_LE(test::nmse(eval_logits(*model, ids, 37, false), batched), 1e-4);
  // With --batch-invariant the batching (and so the ring's block boundaries) changes no bit.
  const auto inv = eval_logits(*model, ids, 512, true);
  EXPECT_EQ(inv, eval_logits(*model, ids, 1, true));
  EXPECT_EQ(inv, eval_logits(*model, ids, 23, true));
  std::filesystem::remove(path);
}

TEST(NewArchs, CuttingBackARingedContext) {
  const std::string path = write_gptoss("cut.gguf", 4);
  auto model = Model::load(path);
  const auto ids = random_ids(160, 280, 6);
  ThreadPool pool(2);
  ResidentExpertStore store(*model);
  ForwardOptions o;
  o.batch_invariant = true;
  Session s(*model, store, 200, o);
  s.eval(std::vector<int32_t>(ids.begin(), ids.begin() + 150), pool);
  // The rings hold positions [150 - 66, 150): continuing at 140 needs (136, 140), still there.
  EXPECT_EQ(s.truncate(140), 140);
  const std::vector<int32_t> tail(ids.begin() + 140, ids.end());
  const std::vector<float> cont = s.eval(tail, pool, true);
  Session fresh(*model, store, 200, o);
  const std::vector<float> all = fresh.eval(ids, pool, true);
  EXPECT_TRUE(std::equal(cont.begin(), cont.end(), all.end() - static_cast<std::ptrdiff_t>(cont.size())));
  // Continuing at 20 would need keys the rings have overwritten: the session starts over.
  EXPECT_EQ(s.truncate(20), 0);
  EXPECT_EQ(s.n_past(), 0);
  std::filesystem::remove(path);
}

TEST(NewArchs, LatentCacheIsSmallerThanTheExpandedForm) {
  SynthConfig c;
  c.arch = "deepseek2";
  c.spec = make_moe_shape(3, 256, 8, 1, 0, 8, 2, 64, 280, 1, 256, 1, 64);
  set_mla(c.spec, 0, 64, 32, 16, 32);
  const std::string path = temp_path("mla.gguf");
  write_synth_model(path, c);
  auto model = Model::load(path);
  const ModelSpec& s = model->spec();
  ASSERT_TRUE(s.is_mla());
  // Per position and layer: one row of 64 latent + 16 rope values, against 8 heads x (48 keys + 32 values).
  EXPECT_EQ(KvCache::bytes_for(s, 1000), 3u * 1000 * (64 + 16) * 2);
  EXPECT_EQ(KvCache::expanded_bytes_for(s, 1000), 3u * 1000 * 8 * (32 + 16 + 32) * 2);
  ThreadPool pool(2);
  ResidentExpertStore store(*model);
  Session sess(*model, store, 1000);
  EXPECT_EQ(sess.kv_bytes(), KvCache::bytes_for(s, 1000));
  const auto ids = random_ids(40, 280, 7);
  EXPECT_LE(test::nmse(eval_logits(*model, ids, 512, false), reference_forward(*model, ids)), 2e-5);
  std::filesystem::remove(path);
}

TEST(NewArchs, NextNLayersAreInTheFileButNotRun) {
  auto write = [](const std::string& name, int nextn) {
    SynthConfig c;
    c.arch = "glm4moe";
    c.spec = make_moe_shape(3, 128, 4, 2, 32, 8, 2, 64, 280, 1, 256, 1, 64);
    c.spec.n_rot = 16;
    c.spec.n_layer_nextn = nextn;
    for (auto& L : c.spec.layers) L.moe.gating = Gating::Sigmoid, L.moe.norm_topk = true;
    c.seed = 9;
    const std::string path = temp_path(name);
    write_synth_model(path, c);
    return path;
  };
  const std::string with = write("nextn1.gguf", 1), without = write("nextn0.gguf", 0);
  auto a = Model::load(with);
  auto b = Model::load(without);
  EXPECT_EQ(a->spec().n_layer, 3);
  EXPECT_EQ(a->spec().n_layer_nextn, 1);
  EXPECT_TRUE(a->file().find_tensor("blk.3.nextn.eh_proj.weight"));
  EXPECT_TRUE(a->file().find_tensor("blk.3.ffn_gate_exps.weight"));
  EXPECT_GT(a->byte_report().unused, 0u);
  EXPECT_EQ(b->byte_report().unused, 0u);
  EXPECT_EQ(a->byte_report().total, b->byte_report().total);
  const auto ids = random_ids(30, 280, 8);
  EXPECT_EQ(eval_logits(*a, ids, 512, false), eval_logits(*b, ids, 512, false));
  const test::CliResult r = test::run_cli({"info", "--json", "-m", with});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("\"n_layer_nextn\": 1"), std::string::npos);
  EXPECT_NE(r.out.find("\"bytes_unused\""), std::string::npos);
  std::filesystem::remove(with);
  std::filesystem::remove(without);
}

// Forwards to a resident store and records the speculative prefetch hints (the predictor's output).
class HintRecorder final : public ExpertStore {
 public:
  explicit HintRecorder(const Model& m) : inner_(m) {}
  using ExpertStore::acquire;
  using ExpertStore::prefetch;
  using ExpertStore::release;
  ExpertWeights acquire(int layer, int expert, bool low_bit_ok) override { return inner_.acquire(layer, expert, low_bit_ok); }
  void release(int layer, int expert, ExpertTier tier) override { inner_.release(layer, expert, tier); }
  bool is_ready(int layer, int expert, bool low_bit_ok) override { return true; }
  void prefetch(int layer, const int32_t* experts, int n, bool speculative, const uint8_t*) override {
    if (speculative) hints.push_back({layer, std::vector<int32_t>(experts, experts + n)});
  }
  std::vector<std::pair<int, std::vector<int32_t>>> hints;

 private:
  ResidentExpertStore inner_;
};

// What the next layer's gate picks, computed here from its own pieces: router product (with the router's
// bias), the layer's scoring, selection bias and group limit, top-(k + margin) of those.
std::vector<int32_t> expected_hint(const Model& m, int next, const float* x, int margin) {
  const ModelSpec& s = m.spec();
  const LayerWeights& lw = m.layer(next);
  MoeSpec ms = s.layers[static_cast<size_t>(next)].moe;
  const WeightView& router = lw[Role::Router];
  kernels::ActBuffer act;
  act.convert(dtype_traits(router.type).vec_dot_type, x, 1, router.cols, router.cols);
  std::vector<float> z(static_cast<size_t>(ms.n_expert));
  ThreadPool pool(1);
  kernels::matmul(to_matrix(router), act, z.data(), ms.n_expert, pool);
  if (const WeightView& b = lw[Role::RouterLogitBias])
    for (int e = 0; e < ms.n_expert; ++e) z[e] += reinterpret_cast<const float*>(b.data)[e];
  ms.n_expert_used = std::min(ms.n_expert, ms.n_expert_used + margin);
  if (ms.n_group > 1) ms.n_expert_used = std::min(ms.n_expert_used, ms.topk_group * (ms.n_expert / ms.n_group));
  const WeightView& sb = lw[Role::RouterBias];
  Routing r;
  route_tokens(ms, z.data(), sb ? reinterpret_cast<const float*>(sb.data) : nullptr, 1, r);
  return std::vector<int32_t>(r.ids.begin(), r.ids.end());
}

TEST(NewArchs, GatePredictorRunsTheNextLayersRealGate) {
  // Sigmoid scores plus a selection bias, in groups (tiny-deepseek2-v3), and softmax over the selected
  // logits of a router with a bias (tiny-gptoss): ranking raw logits predicts other experts.
  for (const std::string name : {"tiny-deepseek2-v3", "tiny-glm4moe", "tiny-gptoss"}) {
    auto model = Model::load(test::model_path(name));
    const auto ids = test::read_ids(test::ref_path(name, "t1.tok"));
    struct Inputs : ForwardObserver {
      std::map<int, std::vector<float>> x;
      void on_routing(const MoeLayerRouting& r) override {
        x[r.layer].assign(r.input, r.input + r.n_embd);
      }
    };
    HintRecorder store(*model);
    ForwardOptions o;
    o.lookahead_margin = 1;
    Session s(*model, store, 64, o);
    Inputs in;
    s.forward().set_observer(&in);
    ThreadPool pool(2);
    int checked = 0, differs_from_raw_ranking = 0;
    for (size_t t = 0; t < ids.size(); ++t) {  // one token per step: each hint is one token's prediction
      store.hints.clear();
      in.x.clear();
      s.eval({ids[t]}, pool);
      for (const auto& [layer, hint] : store.hints) {
        int prev = layer - 1;
        while (prev >= 0 && !model->spec().layers[static_cast<size_t>(prev)].is_moe) --prev;
        ASSERT_GE(prev, 0);
        const auto want = expected_hint(*model, layer, in.x.at(prev).data(), 1);
        EXPECT_EQ(hint, want) << name << " token " << t << " layer " << layer;
        ++checked;
        // The raw-logit ranking the predictor used before.
        std::vector<int32_t> raw = want;
        const MoeSpec& ms = model->spec().layers[static_cast<size_t>(layer)].moe;
        if (ms.gating != Gating::SoftmaxWeight || ms.has_selection_bias) {
          const WeightView& router = model->layer(layer)[Role::Router];
          kernels::ActBuffer act;
          act.convert(dtype_traits(router.type).vec_dot_type, in.x.at(prev).data(), 1, router.cols, router.cols);
          std::vector<float> z(static_cast<size_t>(ms.n_expert));
          ThreadPool p1(1);
          kernels::matmul(to_matrix(router), act, z.data(), ms.n_expert, p1);
          const WeightView& sb = model->layer(layer)[Role::RouterBias];
          std::vector<int32_t> order(static_cast<size_t>(ms.n_expert));
          std::iota(order.begin(), order.end(), 0);
          auto key = [&](int32_t e) { return z[e] + (sb ? reinterpret_cast<const float*>(sb.data)[e] : 0.0f); };
          std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return key(a) > key(b); });
          raw.assign(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(want.size()));
        }
        std::vector<int32_t> a = want, b = raw;
        std::sort(a.begin(), a.end());
        std::sort(b.begin(), b.end());
        differs_from_raw_ranking += a != b;
      }
    }
    EXPECT_GT(checked, 0) << name;
    if (name != "tiny-gptoss") {
      EXPECT_GT(differs_from_raw_ranking, 0) << name << ": the case does not test the gate";
    }
  }
}

// A copy of a fixture with metadata edited.
std::string edited_copy(const std::string& fixture, const std::string& out,
                        const std::function<void(gguf::Writer&)>& edit) {
  auto f = gguf::File::open(test::model_path(fixture));
  gguf::Writer w;
  w.copy_from(*f);
  edit(w);
  const std::string path = temp_path(out);
  w.write(path);
  return path;
}

void expect_load_error(const std::string& path, const std::string& needle) {
  try {
    Model::load(path);
    ADD_FAILURE() << path << ": loaded, expected an error mentioning " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "one line: " << e.what();
  }
  std::filesystem::remove(path);
}

TEST(NewArchs, BadMetadataGetsClearErrors) {
  using gguf::Value;
  // The old unsplit attn_kv_b layout (no key_length_mla): say so, and how to fix it.
  expect_load_error(edited_copy("tiny-deepseek2-lite", "legacy.gguf",
                                [](gguf::Writer& w) { w.remove("deepseek2.attention.key_length_mla"); }),
                    "attn_kv_b");
  expect_load_error(edited_copy("tiny-deepseek2-lite", "kvheads.gguf",
                                [](gguf::Writer& w) { w.set("deepseek2.attention.head_count_kv", Value::make_u32(4)); }),
                    "deepseek2.attention.key_length");
  expect_load_error(edited_copy("tiny-deepseek2-lite", "gating.gguf",
                                [](gguf::Writer& w) { w.set("deepseek2.expert_gating_func", Value::make_u32(9)); }),
                    "deepseek2.expert_gating_func");
  expect_load_error(edited_copy("tiny-deepseek2-v3", "groups.gguf",
                                [](gguf::Writer& w) { w.set("deepseek2.expert_group_count", Value::make_u32(3)); }),
                    "deepseek2.expert_group_count");
  expect_load_error(edited_copy("tiny-deepseek2-v3", "nextn.gguf",
                                [](gguf::Writer& w) { w.set("deepseek2.nextn_predict_layers", Value::make_u32(3)); }),
                    "deepseek2.nextn_predict_layers");
  expect_load_error(edited_copy("tiny-gptoss", "swa.gguf",
                                [](gguf::Writer& w) { w.remove("gpt-oss.attention.sliding_window"); }),
                    "gpt-oss.attention.sliding_window");
  expect_load_error(edited_copy("tiny-gptoss", "pattern.gguf",
                                [](gguf::Writer& w) {
                                  w.set("gpt-oss.attention.sliding_window_pattern", Value::make_i32_array({1, 0}));
                                }),
                    "gpt-oss.attention.sliding_window_pattern");
  expect_load_error(edited_copy("tiny-gptoss", "rope.gguf",
                                [](gguf::Writer& w) { w.set("gpt-oss.rope.scaling.type", Value::make_string("longrope")); }),
                    "gpt-oss.rope.scaling.type");
  expect_load_error(edited_copy("tiny-glm4moe", "mrope.gguf",
                                [](gguf::Writer& w) {
                                  w.set("glm4moe.rope.dimension_sections", Value::make_i32_array({8, 12, 12, 0}));
                                }),
                    "glm4moe.rope.dimension_sections");
}

}  // namespace
}  // namespace moe
