// The analysis metrics against hand-computed examples: SRP, SCH, nPMI, Belady's policy, and the
// streaming analysis (load, co-activation, transitions, labels, super experts) on a small trace.
#include <gtest/gtest.h>

#include <cmath>

#include "analysis/cache_sim.h"
#include "analysis/lrc.h"
#include "analysis/route_analysis.h"

namespace moe {
namespace {

LayerRun run_of(const std::vector<std::vector<int32_t>>& tokens) {
  LayerRun r;
  for (const auto& t : tokens) {
    r.ids.insert(r.ids.end(), t.begin(), t.end());
    r.offsets.push_back(static_cast<uint32_t>(r.ids.size()));
  }
  return r;
}

// Tokens routed to experts 0, 0, 1, 0 (k = 1, E = 3), windows of 2: [0,0] [0,1] [1,0].
// Counts per (window, expert): (2,0,0) (1,1,0) (1,1,0); A = 6.
//   c = 0: M = 6, P = 2 * 9 = 18 -> F1 = 12 / 24 = 0.5
//   c = 1: M = 4 * 1 + 1 * 2 = 6, P = 2 * 5 = 10 -> 12 / 16 = 0.75
//   c = 2: M = 2, P = 2 -> 4 / 8 = 0.5
TEST(LocalRoutingConsistency, SrpHandExample) {
  SrpCounts c(2);
  srp_accumulate(run_of({{0}, {0}, {1}, {0}}), 3, c);
  EXPECT_EQ(c.windows, 3u);
  EXPECT_EQ(c.actual, 6u);
  EXPECT_EQ(c.matched, (std::vector<uint64_t>{6, 6, 2}));
  EXPECT_EQ(c.predicted, (std::vector<uint64_t>{18, 10, 2}));
  EXPECT_DOUBLE_EQ(c.value(), 0.75);
  EXPECT_EQ(c.best_threshold(), 1);
  // A run shorter than the window adds nothing; counts from runs add up before the ratio.
  SrpCounts d(2);
  srp_accumulate(run_of({{2}}), 3, d);
  EXPECT_EQ(d.windows, 0u);
  EXPECT_TRUE(std::isnan(d.value()));
  // Two tokens, both experts {0, 1} (k = 2), E = 4: one window, both experts counted twice: SRP 1 at c = 1
  // (M = 4, P = 4, A = 4) and at c = 2; c = 0 predicts all four (8 / 12). The smallest c reaching it is reported.
  SrpCounts e(2);
  srp_accumulate(run_of({{0, 1}, {1, 0}}), 4, e);
  EXPECT_DOUBLE_EQ(e.value(), 1.0);
  EXPECT_EQ(e.best_threshold(), 1);
}

// Experts 0, 1, 2, 0, 2 (k = 1, E = 3), look-ahead m = 3.
//   t0: 0 unseen -> rank 0.   t1: 1 unseen -> rank 1.   t2: 2 unseen -> rank 2.
//   t3: 0; next 3 tokens use e0 once (t3), e2 once (t4), e1 never; e2 ties e0 on uses and was used more
//       recently (t2 after t0) -> e0 ranks 1.
//   t4: 2; only e2 is used in [t4, t7) -> rank 0.
// rank_hist = [2, 2, 1]: hit rate 0.4 with one slot, 0.8 with two, 1 with three.
TEST(LocalRoutingConsistency, SchHandExampleWithRecencyTieBreak) {
  SchCounts c(3, 3);
  sch_accumulate(run_of({{0}, {1}, {2}, {0}, {2}}), c);
  EXPECT_EQ(c.rank_hist, (std::vector<uint64_t>{2, 2, 1}));
  EXPECT_EQ(c.uses, 5u);
  EXPECT_DOUBLE_EQ(c.hit_rate(1), 0.4);
  EXPECT_DOUBLE_EQ(c.hit_rate(2), 0.8);
  EXPECT_DOUBLE_EQ(c.hit_rate(3), 1.0);
  // Look-ahead 2 on 0, 1, 0, 2, 0: ranks 0 (first use), 1 (first use), 0, 2 (first use), 0.
  SchCounts d(2, 3);
  sch_accumulate(run_of({{0}, {1}, {0}, {2}, {0}}), d);
  EXPECT_EQ(d.rank_hist, (std::vector<uint64_t>{3, 1, 1}));
}

TEST(Npmi, HandValues) {
  EXPECT_DOUBLE_EQ(npmi(2, 2, 2, 4), 1.0);               // always together
  EXPECT_NEAR(npmi(1, 2, 2, 4), 0.0, 1e-12);             // independent
  EXPECT_NEAR(npmi(1, 1, 2, 8), 2.0 / 3.0, 1e-12);       // PMI 2 bits, -log2 p(x,e) = 3
  EXPECT_DOUBLE_EQ(npmi(0, 3, 3, 10), -1.0);             // never together
  EXPECT_TRUE(std::isnan(npmi(0, 0, 3, 10)));
}

TraceHeader one_layer_header(int n_expert, int k, int n_layer = 1) {
  TraceHeader h;
  h.arch = "qwen3moe";
  h.model_file = "hand";
  h.n_layer = n_layer;
  h.n_vocab = 50;
  for (int l = 0; l < n_layer; ++l) {
    h.moe_layers.push_back(l);
    h.n_expert.push_back(n_expert);
    h.n_expert_used.push_back(k);
  }
  h.inputs = {{0, "", "a"}, {1, "", "b"}};
  return h;
}

// One token per step, each selecting the given experts at every MoE layer.
TraceStep step_of(const TraceHeader& h, int32_t token, int32_t pos, const std::vector<std::vector<int32_t>>& per_layer,
                  uint16_t input = 0, bool generated = false) {
  TraceStep s;
  s.clear(h.n_moe());
  TraceToken t;
  t.id = token;
  t.pos = pos;
  t.input = input;
  t.flags = generated ? TraceToken::kGenerated : 0;
  s.tokens.push_back(t);
  for (int m = 0; m < h.n_moe(); ++m) {
    for (int32_t e : per_layer[static_cast<size_t>(m)]) {
      s.experts.push_back(e);
      s.weights.push_back(1.0f / static_cast<float>(per_layer[static_cast<size_t>(m)].size()));
    }
    s.offsets.push_back(static_cast<uint32_t>(s.experts.size()));
  }
  return s;
}

// Belady on 0,1,2,0,1,2 with 2 slots: misses 0, 1, 2 (evicting 1, used last), hits 0, misses 1 (evicting
// 0, never used again), hits 2: 2 hits. LRU on the same sequence never hits.
TEST(CacheSimulator, BeladyAndLruHandExample) {
  const TraceHeader h = one_layer_header(4, 1);
  CacheSimulator sim(h, {{"belady", 2, SimPredictor::None, 0}, {"lru", 2, SimPredictor::None, 0}, {"lru", 3, SimPredictor::None, 0}},
                     {1000});
  int pos = 0;
  for (int32_t e : {0, 1, 2, 0, 1, 2}) sim.add_step(step_of(h, 1, pos++, {{e}}));
  const auto r = sim.finish();
  ASSERT_EQ(r.size(), 3u);
  const CacheSimResult* belady = nullptr;
  const CacheSimResult* lru2 = nullptr;
  const CacheSimResult* lru3 = nullptr;
  for (const auto& x : r) {
    if (x.config.policy == "belady") belady = &x;
    if (x.config.policy == "lru" && x.config.slots == 2) lru2 = &x;
    if (x.config.policy == "lru" && x.config.slots == 3) lru3 = &x;
  }
  ASSERT_TRUE(belady && lru2 && lru3);
  EXPECT_EQ(belady->total_hits(), 2u);
  EXPECT_EQ(belady->total_misses(), 4u);
  EXPECT_EQ(belady->bytes_read, 4000u);
  EXPECT_EQ(lru2->total_hits(), 0u);
  EXPECT_EQ(lru3->total_hits(), 3u);  // 3 slots hold the whole working set
  EXPECT_EQ(lru3->total_misses(), 3u);
}

// Belady is the ceiling of every store policy on random traces of several layers and batched steps.
TEST(CacheSimulator, BeladyIsTheCeiling) {
  const TraceHeader h = one_layer_header(8, 2, 3);
  std::vector<CacheSimConfig> configs;
  for (size_t slots : {2, 4, 6, 10, 16})
    for (const char* p : {"belady", "distance", "lru", "lfu", "arc", "layer"}) configs.push_back({p, slots, SimPredictor::None, 0});
  CacheSimulator sim(h, configs, {1, 1, 1});
  uint64_t x = 12345;
  auto rnd = [&] { return (x = x * 6364136223846793005ull + 1442695040888963407ull) >> 33; };
  for (int step = 0; step < 300; ++step) {
    const int n_tok = step % 10 == 0 ? 5 : 1;  // now and then a batched step
    TraceStep s;
    s.clear(3);
    for (int t = 0; t < n_tok; ++t) {
      TraceToken tok;
      tok.pos = step * 5 + t;
      s.tokens.push_back(tok);
      for (int m = 0; m < 3; ++m) {
        // Skewed, with locality: experts drift slowly.
        const int32_t a = static_cast<int32_t>((step / 7 + rnd() % 3) % 8);
        int32_t b = static_cast<int32_t>(rnd() % 8);
        if (b == a) b = (a + 1) % 8;
        s.experts.push_back(a);
        s.experts.push_back(b);
        s.weights.push_back(0.6f);
        s.weights.push_back(0.4f);
        s.offsets.push_back(static_cast<uint32_t>(s.experts.size()));
      }
    }
    sim.add_step(s);
  }
  const auto r = sim.finish();
  for (size_t slots : {2, 4, 6, 10, 16}) {
    uint64_t best = 0, belady = 0, total = 0;
    for (const auto& c : r) {
      if (c.config.slots != slots) continue;
      total = c.total_hits() + c.total_misses();
      if (c.config.policy == "belady") belady = c.total_hits();
      else best = std::max(best, c.total_hits());
    }
    EXPECT_GE(belady, best) << slots << " slots";
    EXPECT_GT(total, 0u);
  }
}

TEST(RouteAnalysis, SmallTraceHandCounts) {
  TraceHeader h = one_layer_header(4, 2, 2);
  h.fields.expert_stats = true;
  AnalyzeOptions o;
  o.segment_lengths = {2};
  o.min_token_count = 1;
  RouteAnalysis a(h, o);
  a.begin_trace(h, "hand.trace");
  // Four tokens of label a (input 0) then two of label b; layer 0 then layer 1 experts.
  const std::vector<std::vector<std::vector<int32_t>>> route = {
      {{0, 1}, {2, 3}}, {{0, 1}, {2, 3}}, {{0, 2}, {2, 0}}, {{0, 1}, {3, 2}}, {{3, 2}, {1, 0}}, {{3, 2}, {1, 0}}};
  for (size_t t = 0; t < route.size(); ++t) {
    TraceStep s = step_of(h, static_cast<int32_t>(t % 2), static_cast<int32_t>(t), route[t], t < 4 ? 0 : 1);
    for (size_t i = 0; i < s.experts.size(); ++i) {
      s.out_norm.push_back(1.0f);
      // Layer 0 expert 3 has one huge output.
      const bool layer0 = i < 2;
      s.out_max.push_back(layer0 && s.experts[i] == 3 && t == 5 ? 50.0f : 1.0f + 0.01f * static_cast<float>(s.experts[i]));
    }
    a.add_step(s);
  }
  a.end_trace(6, 6);
  const auto j = a.finish();
  EXPECT_EQ(j["tokens"], 6);
  EXPECT_EQ(j["sequences"], 1);
  EXPECT_EQ(j["labels"], (std::vector<std::string>{"a", "b"}));
  // Layer 0 counts: e0 4, e1 3, e2 3, e3 2; mean 3, population std sqrt(0.5) -> CV 0.2357.
  EXPECT_EQ(j["load"][0]["counts"], (std::vector<uint64_t>{4, 3, 3, 2}));
  EXPECT_NEAR(j["load"][0]["cv"].get<double>(), std::sqrt(0.5) / 3, 1e-12);
  EXPECT_NEAR(j["load"][0]["max_over_mean"].get<double>(), 4.0 / 3.0, 1e-12);
  // Co-activation counts: e0 with e1 three times.
  EXPECT_EQ(j["coactivation"][0]["counts"][0 * 4 + 1], 3);
  EXPECT_EQ(j["coactivation"][0]["counts"][1 * 4 + 0], 3);
  // Lift of (e0, e1): p = 3/6 over p(e0) p(e1) = (4/6)(3/6) -> 1.5.
  EXPECT_NEAR(j["coactivation"][0]["lift"][0][1].get<double>(), 1.5, 1e-12);
  // Transitions layer 0 -> 1: e0's four tokens go on to e2 four times and to e3 three times (8 pairs).
  EXPECT_NEAR(j["transitions"][0]["conditional"][0][2].get<double>(), 4.0 / 8.0, 1e-12);
  EXPECT_NEAR(j["transitions"][0]["conditional"][0][3].get<double>(), 3.0 / 8.0, 1e-12);
  // Label b (2 positions) always has e3 at layer 0: e3 is active 2 times in 6 -> nPMI 1.
  EXPECT_NEAR(j["specialisation"][0]["label_npmi"][1][3].get<double>(), 1.0, 1e-12);
  // and never e0: -1.
  EXPECT_NEAR(j["specialisation"][0]["label_npmi"][1][0].get<double>(), -1.0, 1e-12);
  // SRP at m = 2 on layer 0 by hand: windows (t0,t1) (t1,t2) ... (t4,t5): 5 windows, A = 20.
  EXPECT_EQ(j["lrc"]["srp"][0]["windows"], 10);  // 5 per layer, 2 layers
  // Super experts: only layers < 1.5 (layer 0 and 1 of 2) are considered; layer 0 expert 3 stands out.
  ASSERT_EQ(j["super_experts"]["super"].size(), 1u);
  EXPECT_EQ(j["super_experts"]["super"][0]["layer"], 0);
  EXPECT_EQ(j["super_experts"]["super"][0]["expert"], 3);
}

// The super-expert rule by hand: 8 considered maxima of 1..7 and 100; p99.5 = 7 + 0.965 * 93.
TEST(RouteAnalysis, SuperExpertRuleThresholds) {
  TraceHeader h = one_layer_header(8, 1, 4);  // 4 MoE layers; layers 0-2 are considered (< 3)
  h.fields.expert_stats = true;
  AnalyzeOptions o;
  o.segment_lengths = {4};
  RouteAnalysis a(h, o);
  a.begin_trace(h, "super.trace");
  for (int e = 0; e < 8; ++e) {
    TraceStep s = step_of(h, 1, e, {{e}, {e}, {e}, {e}});
    for (int m = 0; m < 4; ++m) {
      s.out_norm.push_back(1.0f);
      // Layer 0: maxima 1..7 and 100 (expert 7); layers 1 and 2: 1; layer 3 (not considered): 1000.
      s.out_max.push_back(m == 0 ? (e == 7 ? 100.0f : static_cast<float>(e + 1)) : m == 3 ? 1000.0f : 1.0f);
    }
    a.add_step(s);
  }
  const auto j = a.finish();
  const auto& sup = j["super_experts"];
  EXPECT_NEAR(sup["largest"].get<double>(), 100.0, 1e-9);
  // 24 considered maxima: sixteen 1s, then 1 (layer 0 e0), 2, ..., 7, 100: p99.5 at position 22.885.
  EXPECT_NEAR(sup["p99_5"].get<double>(), 7.0 + 0.885 * 93.0, 1e-6);
  ASSERT_EQ(sup["super"].size(), 1u);
  EXPECT_EQ(sup["super"][0]["expert"], 7);
}

}  // namespace
}  // namespace moe
