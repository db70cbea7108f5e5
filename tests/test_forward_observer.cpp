// The forward pass's observers (design.md seam 4): what they see is what ran, and observing never
// changes the numbers. Also the Routing contract that a slot may be empty (id -1).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "base/error.h"
#include "fixture_util.h"
#include "kernels/ops.h"
#include "model/forward_observer.h"
#include "model/weights.h"
#include "moe/executor.h"
#include "runtime/session.h"

namespace moe {
namespace {

// Records everything a forward pass offers, per step.
class RecordingObserver final : public ForwardObserver {
 public:
  explicit RecordingObserver(ObserverNeeds needs) : needs_(needs) {}
  ObserverNeeds needs() const override { return needs_; }

  struct Layer {
    Routing routing;
    std::vector<float> input, residual, logits, scores, routed, block;
    // per (token, slot): the expert's unweighted output row
    std::map<std::pair<int32_t, int32_t>, std::vector<float>> expert_rows;
    std::map<std::pair<int32_t, int32_t>, int> expert_of;
  };
  std::vector<std::string> events;
  std::map<int, Layer> layers;
  std::vector<int32_t> ids, seq_ids;
  std::vector<int64_t> positions;
  std::vector<float> final_hidden;
  int64_t n_embd = 0;

  void on_step_begin(const StepTokens& t) override {
    events.push_back("begin");
    layers.clear();
    ids.assign(t.ids, t.ids + t.n_tokens);
    positions.assign(t.positions, t.positions + t.n_tokens);
    seq_ids.assign(t.seq_ids, t.seq_ids + t.n_tokens);
  }
  void on_routing(const MoeLayerRouting& r) override {
    events.push_back("routing " + std::to_string(r.layer));
    Layer& L = layers[r.layer];
    const size_t n = static_cast<size_t>(r.tokens->n_tokens);
    n_embd = r.n_embd;
    L.routing = *r.routing;
    L.input.assign(r.input, r.input + n * static_cast<size_t>(r.n_embd));
    L.scores.assign(r.scores, r.scores + n * static_cast<size_t>(r.n_expert));
    if (r.residual) L.residual.assign(r.residual, r.residual + n * static_cast<size_t>(r.n_embd));
    if (r.logits) L.logits.assign(r.logits, r.logits + n * static_cast<size_t>(r.n_expert));
  }
  void on_expert_output(const ExpertOutputs& o) override {
    Layer& L = layers[o.layer];
    for (int64_t i = 0; i < o.n_rows; ++i) {
      const auto key = std::make_pair(o.token[i], o.slot[i]);
      L.expert_rows[key].assign(o.rows + i * o.n_embd, o.rows + (i + 1) * o.n_embd);
      L.expert_of[key] = o.expert;
    }
  }
  void on_moe_output(const MoeLayerOutput& o) override {
    events.push_back("output " + std::to_string(o.layer));
    Layer& L = layers[o.layer];
    const size_t n = static_cast<size_t>(o.tokens->n_tokens) * static_cast<size_t>(o.n_embd);
    L.routed.assign(o.routed, o.routed + n);
    L.block.assign(o.block, o.block + n);
  }
  void on_final_hidden(const StepTokens& t, const float* h, int64_t d) override {
    events.push_back("final");
    final_hidden.assign(h, h + static_cast<size_t>(t.n_tokens * d));
  }
  void on_step_end(const StepTokens&) override { events.push_back("end"); }

 private:
  ObserverNeeds needs_;
};

ObserverNeeds everything() {
  ObserverNeeds n;
  n.router_logits = n.expert_outputs = n.moe_io = n.final_hidden = true;
  return n;
}

std::vector<float> eval_logits(const Model& model, const std::vector<int32_t>& ids, ForwardObserver* obs) {
  ResidentExpertStore store(model);
  ThreadPool pool(2);
  Session s(model, store, static_cast<int64_t>(ids.size()) + 4);
  if (obs) s.forward().add_observer(obs);
  return s.eval(ids, pool, /*all_logits=*/true, 512);
}

class ObserverOnFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(ObserverOnFixture, ObservingEverythingLeavesLogitsBitIdentical) {
  const std::string name = GetParam();
  auto model = Model::load(test::model_path(name));
  const auto ids = test::read_ids(test::ref_path(name, "seq.tok"));
  const auto plain = eval_logits(*model, ids, nullptr);
  RecordingObserver rec(everything());
  const auto observed = eval_logits(*model, ids, &rec);
  ASSERT_EQ(plain.size(), observed.size());
  EXPECT_EQ(0, std::memcmp(plain.data(), observed.data(), plain.size() * sizeof(float)));
}

TEST_P(ObserverOnFixture, ExpertOutputsWeightedSumToTheRoutedOutput) {
  const std::string name = GetParam();
  auto model = Model::load(test::model_path(name));
  const auto ids = test::read_ids(test::ref_path(name, "seq.tok"));
  RecordingObserver rec(everything());
  eval_logits(*model, ids, &rec);
  const ModelSpec& spec = model->spec();
  const int64_t d = spec.n_embd;
  int n_moe = 0;
  for (int il = 0; il < spec.n_layer; ++il) {
    if (!spec.layers[il].is_moe) {
      EXPECT_EQ(rec.layers.count(il), 0u) << "dense layer " << il << " was reported";
      continue;
    }
    ++n_moe;
    ASSERT_EQ(rec.layers.count(il), 1u) << "layer " << il;
    const auto& L = rec.layers.at(il);
    const Routing& r = L.routing;
    ASSERT_EQ(r.n_tokens, static_cast<int64_t>(ids.size()));
    for (int64_t t = 0; t < r.n_tokens; ++t) {
      std::vector<float> sum(static_cast<size_t>(d), 0.0f);
      for (int j = 0; j < r.k; ++j) {
        const auto key = std::make_pair(static_cast<int32_t>(t), j);
        ASSERT_EQ(L.expert_rows.count(key), 1u) << "layer " << il << " token " << t << " slot " << j;
        EXPECT_EQ(L.expert_of.at(key), r.id(t, j));
        const auto& row = L.expert_rows.at(key);
        for (int64_t c = 0; c < d; ++c) sum[static_cast<size_t>(c)] += r.weight(t, j) * row[static_cast<size_t>(c)];
      }
      for (int64_t c = 0; c < d; ++c) {
        const float got = L.routed[static_cast<size_t>(t * d + c)];
        ASSERT_NEAR(got, sum[static_cast<size_t>(c)], 1e-5f * (1.0f + std::fabs(got)))
            << "layer " << il << " token " << t << " col " << c;
      }
      // Without shared experts the block output is the routed output.
      if (spec.layers[il].moe.n_shared == 0) {
        for (int64_t c = 0; c < d; ++c)
          ASSERT_EQ(L.block[static_cast<size_t>(t * d + c)], L.routed[static_cast<size_t>(t * d + c)]);
      }
      // The routed experts are the top-k of the scores (no selection bias on these fixtures).
      const float* p = L.scores.data() + t * spec.layers[il].moe.n_expert;
      float kth = INFINITY;
      for (int j = 0; j < r.k; ++j) kth = std::min(kth, p[r.id(t, j)]);
      int above = 0;
      for (int e = 0; e < spec.layers[il].moe.n_expert; ++e) above += p[e] > kth;
      EXPECT_LT(above, r.k) << "layer " << il << " token " << t;
    }
    ASSERT_EQ(L.logits.size(), ids.size() * static_cast<size_t>(spec.layers[il].moe.n_expert));
    ASSERT_EQ(L.residual.size(), ids.size() * static_cast<size_t>(d));
  }
  EXPECT_GT(n_moe, 0);
  EXPECT_EQ(rec.final_hidden.size(), ids.size() * static_cast<size_t>(d));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ObserverOnFixture,
                         ::testing::Values("tiny-qwen3moe", "tiny-qwen2moe", "tiny-deepseekmoe", "tiny-mixtral-Q4_K_M",
                                           "tiny-deepseek2-lite", "tiny-gptoss"),
                         test::FixtureParamName());

TEST(ForwardObserver, EventsComeInOrderWithPositionsAndSequenceIds) {
  auto model = Model::load(test::model_path("tiny-deepseekmoe"));  // layer 0 is dense
  ResidentExpertStore store(*model);
  ThreadPool pool(2);
  Session s(*model, store, 64);
  s.forward().set_seq_id(7);
  ObserverNeeds needs;
  needs.moe_io = needs.final_hidden = true;
  RecordingObserver rec(needs);
  s.forward().add_observer(&rec);
  s.eval({1, 2, 3}, pool, false, 512);
  const std::vector<std::string> want = {"begin",    "routing 1", "output 1", "routing 2",
                                         "output 2", "final",     "end"};
  EXPECT_EQ(rec.events, want);
  EXPECT_EQ(rec.positions, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(rec.seq_ids, (std::vector<int32_t>{7, 7, 7}));
  rec.events.clear();
  s.eval({4, 5}, pool, false, 512);
  EXPECT_EQ(rec.positions, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(rec.ids, (std::vector<int32_t>{4, 5}));
  // What an observer does not ask for, it does not get.
  EXPECT_TRUE(rec.layers.at(1).logits.empty());
  EXPECT_TRUE(rec.layers.at(1).expert_rows.empty());
  s.forward().remove_observer(&rec);
  rec.events.clear();
  s.eval({6}, pool, false, 512);
  EXPECT_TRUE(rec.events.empty());
}

// Routing contract: an empty slot (id -1) contributes nothing and loads nothing.
class CountingStore final : public ExpertStore {
 public:
  explicit CountingStore(const Model& m) : inner_(m) {}
  ExpertWeights acquire(int layer, int expert, bool low) override {
    ++acquires[{layer, expert}];
    return inner_.acquire(layer, expert, low);
  }
  void release(int layer, int expert, ExpertTier tier) override { inner_.release(layer, expert, tier); }
  bool is_ready(int, int, bool) override { return true; }
  std::map<std::pair<int, int>, int> acquires;

 private:
  ResidentExpertStore inner_;
};

TEST(RoutingContract, EmptySlotsAreSkippedByTheExecutor) {
  auto model = Model::load(test::model_path("tiny-qwen3moe"));
  const ModelSpec& spec = model->spec();
  const int il = 0;
  const MoeSpec& ms = spec.layers[il].moe;
  const int64_t d = spec.n_embd, n = 3;
  std::vector<float> x(static_cast<size_t>(n * d));
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * static_cast<float>(i));
  // Two slots per token; slot 1 of token 1 and both slots of token 2 are empty.
  Routing full;
  full.n_tokens = n;
  full.k = 2;
  full.ids = {3, 5, 1, Routing::kEmpty, Routing::kEmpty, Routing::kEmpty};
  full.weights = {0.6f, 0.4f, 0.9f, 0.0f, 0.0f, 0.0f};
  // The same routing with one slot per token, and token 2 routed nowhere.
  Routing one;
  one.n_tokens = n;
  one.k = 1;
  one.ids = {3, 1, Routing::kEmpty};
  one.weights = {0.6f, 0.9f, 0.0f};
  ThreadPool pool(2);
  ExpertExecutor ex;
  CountingStore store(*model);
  std::vector<float> out(static_cast<size_t>(n * d)), out1(static_cast<size_t>(n * d));
  ex.run(il, ms, x.data(), n, d, full, store, pool, out.data());
  const std::map<std::pair<int, int>, int> want = {{{il, 1}, 1}, {{il, 3}, 1}, {{il, 5}, 1}};
  EXPECT_EQ(store.acquires, want);
  // Token 0 slot 1 (expert 5) is real: compare token 1 and 2 with the one-slot routing.
  ex.run(il, ms, x.data(), n, d, one, store, pool, out1.data());
  for (int64_t c = 0; c < d; ++c) {
    EXPECT_EQ(out[static_cast<size_t>(d + c)], out1[static_cast<size_t>(d + c)]);
    EXPECT_EQ(out[static_cast<size_t>(2 * d + c)], 0.0f);
    EXPECT_EQ(out1[static_cast<size_t>(2 * d + c)], 0.0f);
  }
  Routing bad = one;
  bad.ids[0] = ms.n_expert;  // out of range: an error, not a read past the tensor
  EXPECT_THROW(ex.run(il, ms, x.data(), n, d, bad, store, pool, out.data()), Error);
}

}  // namespace
}  // namespace moe
