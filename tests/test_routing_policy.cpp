// The routing policy's steps (moe/routing_policy.h) on hand-computed cases: top-k override, top-p,
// ratio threshold, minimum weight, masks (exactly a model without those router rows), steering, forced
// experts, one expert by rank, Sinkhorn balancing, random drop; the JSON form; the text forms; and the
// checks against a model's shape.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "base/error.h"
#include "moe/routing_policy.h"

namespace moe {
namespace {

MoeSpec spec(int e, int k, bool renorm, Gating g = Gating::Softmax) {
  MoeSpec m;
  m.n_expert = e;
  m.n_expert_used = k;
  m.norm_topk = renorm;
  m.gating = g;
  return m;
}

std::vector<double> softmax_of(const std::vector<float>& z) {
  const double mx = *std::max_element(z.begin(), z.end());
  std::vector<double> p(z.size());
  double s = 0;
  for (size_t i = 0; i < z.size(); ++i) s += (p[i] = std::exp(z[i] - mx));
  for (double& v : p) v /= s;
  return p;
}

RoutingShape shape_of(int n_layer, int e, int k) {
  RoutingShape s;
  s.n_expert.assign(static_cast<size_t>(n_layer), e);
  s.n_expert_used.assign(static_cast<size_t>(n_layer), k);
  return s;
}

// Routes one batch of one layer (layer 0 of a one-layer model) under `policy`.
Routing route(const MoeSpec& m, const RoutingPolicy& policy, std::vector<float> logits, const float* bias = nullptr,
              RouteCounts* counts = nullptr) {
  const RoutingPlan plan(policy, shape_of(1, m.n_expert, m.n_expert_used));
  const int64_t n = static_cast<int64_t>(logits.size()) / m.n_expert;
  Routing r;
  reset_routing(r, n, plan.slots(0, m.n_expert_used));
  RouteScratch s;
  const RouteCounts c = route_range(m, 0, plan.layer(0), logits.data(), bias, nullptr, 0, n, r, s);
  if (counts) *counts = c;
  return r;
}

std::vector<int32_t> ids_of(const Routing& r, int64_t t) {
  std::vector<int32_t> v;
  for (int j = 0; j < r.k; ++j)
    if (r.id(t, j) >= 0) v.push_back(r.id(t, j));
  return v;
}

const std::vector<float> kZ = {0.1f, 2.0f, -1.0f, 1.5f, 0.3f, 0.2f};  // order: 1, 3, 4, 5, 0, 2

TEST(RoutingPolicyTopK, DefaultPolicyIsTheModelsGateBitForBit) {
  for (bool renorm : {false, true}) {
    const MoeSpec m = spec(6, 2, renorm);
    std::vector<float> z = kZ;
    Routing want;
    route_tokens(m, z.data(), nullptr, 1, want);
    const Routing got = route(m, RoutingPolicy{}, kZ);
    EXPECT_EQ(got.ids, want.ids);
    EXPECT_EQ(got.weights, want.weights);
  }
}

TEST(RoutingPolicyTopK, OverrideKeepsTheGateWithAnotherK) {
  const auto p = softmax_of(kZ);
  RoutingPolicy pol;
  pol.experts = 3;
  const Routing nr = route(spec(6, 2, false), pol, kZ);
  ASSERT_EQ(nr.k, 3);
  EXPECT_EQ(ids_of(nr, 0), (std::vector<int32_t>{1, 3, 4}));
  for (int j = 0; j < 3; ++j) EXPECT_NEAR(nr.weight(0, j), p[static_cast<size_t>(nr.id(0, j))], 1e-7);
  const Routing rn = route(spec(6, 2, true), pol, kZ);
  const double sum = p[1] + p[3] + p[4];
  EXPECT_NEAR(rn.weight(0, 0), p[1] / sum, 1e-6);
  EXPECT_NEAR(rn.weight(0, 2), p[4] / sum, 1e-6);
  // k = E: every expert, best first.
  pol.experts = 6;
  EXPECT_EQ(ids_of(route(spec(6, 2, false), pol, kZ), 0), (std::vector<int32_t>{1, 3, 4, 5, 0, 2}));
  // k = 1 with renorm: weight 1.
  pol.experts = 1;
  const Routing one = route(spec(6, 2, true), pol, kZ);
  EXPECT_EQ(ids_of(one, 0), (std::vector<int32_t>{1}));
  EXPECT_FLOAT_EQ(one.weight(0, 0), 1.0f);
}

TEST(RoutingPolicyTopK, PerLayerOverridesGlobal) {
  RoutingPolicy pol;
  pol.experts = 3;
  pol.experts_per_layer = {{1, 1}};
  const RoutingPlan plan(pol, shape_of(3, 6, 2));
  EXPECT_EQ(plan.slots(0, 2), 3);
  EXPECT_EQ(plan.slots(1, 2), 1);
  EXPECT_EQ(plan.slots(2, 2), 3);
  RoutingPolicy only;
  only.experts_per_layer = {{2, 4}};
  const RoutingPlan p2(only, shape_of(3, 6, 2));
  EXPECT_EQ(p2.layer(0), nullptr);  // untouched layers route as the model does
  EXPECT_EQ(p2.slots(2, 2), 4);
}

TEST(RoutingPolicyTopP, PrefixWhoseMassExceedsP) {
  const auto p = softmax_of(kZ);  // p[1] ~ 0.42, p[3] ~ 0.26, p[4] ~ 0.08
  RoutingPolicy pol;
  pol.top_p_weights = TopPWeights::Raw;
  pol.top_p = 0.0;  // one expert: its mass alone exceeds 0
  EXPECT_EQ(ids_of(route(spec(6, 2, false), pol, kZ), 0), (std::vector<int32_t>{1}));
  pol.top_p = p[1] - 1e-4;  // still one
  EXPECT_EQ(ids_of(route(spec(6, 2, false), pol, kZ), 0), (std::vector<int32_t>{1}));
  pol.top_p = p[1] + 1e-4;  // two
  EXPECT_EQ(ids_of(route(spec(6, 2, false), pol, kZ), 0), (std::vector<int32_t>{1, 3}));
  pol.top_p = 1.0;  // every expert
  const Routing all = route(spec(6, 2, false), pol, kZ);
  EXPECT_EQ(ids_of(all, 0), (std::vector<int32_t>{1, 3, 4, 5, 0, 2}));
  for (int j = 0; j < 6; ++j) EXPECT_NEAR(all.weight(0, j), p[static_cast<size_t>(all.id(0, j))], 1e-7);  // raw
  pol.top_p_max_k = 4;  // capped
  EXPECT_EQ(ids_of(route(spec(6, 2, false), pol, kZ), 0), (std::vector<int32_t>{1, 3, 4, 5}));
  // Renormalized weights sum 1; "model" follows the model's rule.
  pol.top_p_weights = TopPWeights::Renorm;
  const Routing rn = route(spec(6, 2, false), pol, kZ);
  double s = 0;
  for (int j = 0; j < rn.k; ++j) s += rn.weight(0, j);
  EXPECT_NEAR(s, 1.0, 1e-6);
  pol.top_p_weights = TopPWeights::Model;
  EXPECT_EQ(route(spec(6, 2, true), pol, kZ).weights, rn.weights);
}

TEST(RoutingPolicyTopP, VariableExpertsPerTokenLeaveEmptySlots) {
  // Token 0 is peaked (one expert carries 0.9), token 1 flat: p = 0.5 gives 1 and 3 experts.
  std::vector<float> z = {5.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.1f, 0.0f, 0.2f};
  RoutingPolicy pol;
  pol.top_p = 0.5;
  RouteCounts c;
  const Routing r = route(spec(6, 2, false), pol, z, nullptr, &c);
  EXPECT_EQ(ids_of(r, 0), (std::vector<int32_t>{0}));
  EXPECT_EQ(ids_of(r, 1), (std::vector<int32_t>{5, 3, 0}));
  EXPECT_EQ(r.id(0, 1), Routing::kEmpty);
  EXPECT_EQ(r.weight(0, 1), 0.0f);
  EXPECT_EQ(c.selected, 4u);
  EXPECT_EQ(c.tokens, 2u);
}

TEST(RoutingPolicyTopP, SigmoidScoresAreNormalizedToAMass) {
  const std::vector<float> z = {2.0f, 1.0f, 0.0f, -1.0f};
  std::vector<double> s;
  for (float v : z) s.push_back(1.0 / (1.0 + std::exp(-v)));
  const double total = s[0] + s[1] + s[2] + s[3];
  RoutingPolicy pol;
  pol.top_p = (s[0] + s[1]) / total - 1e-4;  // two experts
  EXPECT_EQ(ids_of(route(spec(4, 1, false, Gating::Sigmoid), pol, z), 0), (std::vector<int32_t>{0, 1}));
  pol.top_p = (s[0] + s[1]) / total + 1e-4;  // three
  EXPECT_EQ(ids_of(route(spec(4, 1, false, Gating::Sigmoid), pol, z), 0), (std::vector<int32_t>{0, 1, 2}));
}

TEST(RoutingPolicyTopP, SoftmaxOverSelectedGateTakesItsMassFromASoftmaxOfTheLogits) {
  // gpt-oss's gate keeps raw logits as scores; top-p must measure a softmax of them, not the logits.
  const std::vector<float> z = {2.0f, 1.5f, 0.0f, -1.0f};
  const auto q = softmax_of(z);
  RoutingPolicy pol;
  pol.top_p_weights = TopPWeights::Raw;
  pol.top_p = q[0] + q[1] - 1e-4;  // two experts
  const Routing two = route(spec(4, 1, false, Gating::SoftmaxWeight), pol, z);
  EXPECT_EQ(ids_of(two, 0), (std::vector<int32_t>{0, 1}));
  // Weights: the gate's own softmax over the selected logits.
  const double w0 = 1.0 / (1.0 + std::exp(1.5 - 2.0));
  EXPECT_NEAR(two.weight(0, 0), w0, 1e-6);
  EXPECT_NEAR(two.weight(0, 1), 1.0 - w0, 1e-6);
  pol.top_p = q[0] + q[1] + 1e-4;  // three
  EXPECT_EQ(ids_of(route(spec(4, 1, false, Gating::SoftmaxWeight), pol, z), 0), (std::vector<int32_t>{0, 1, 2}));
}

TEST(RoutingPolicyRatio, DropsBelowBetaTimesTheLargestAndRescales) {
  const auto p = softmax_of(kZ);
  RoutingPolicy pol;
  pol.experts = 3;  // 1, 3, 4: p[3]/p[1] ~ 0.61, p[4]/p[1] ~ 0.18
  pol.ratio_beta = 0.5;
  const Routing r = route(spec(6, 2, false), pol, kZ);
  EXPECT_EQ(ids_of(r, 0), (std::vector<int32_t>{1, 3}));
  const double before = p[1] + p[3] + p[4];
  EXPECT_NEAR(r.weight(0, 0), p[1] * before / (p[1] + p[3]), 1e-6);
  EXPECT_NEAR(r.weight(0, 0) + r.weight(0, 1), before, 1e-6);
  pol.ratio_beta = 0.7;
  EXPECT_EQ(ids_of(route(spec(6, 2, false), pol, kZ), 0), (std::vector<int32_t>{1}));
  // Only on chosen layers.
  pol.ratio_layers = {1};
  const RoutingPlan plan(pol, shape_of(2, 6, 2));
  EXPECT_EQ(plan.layer(0)->ratio_beta, 0.0);
  EXPECT_EQ(plan.layer(1)->ratio_beta, 0.7);
}

TEST(RoutingPolicyMinWeight, DropsPairsBelowWithoutOrWithRenorm) {
  const auto p = softmax_of(kZ);
  RoutingPolicy pol;
  pol.experts = 3;
  pol.min_weight = 0.1;  // drops expert 4 (p ~ 0.08)
  RouteCounts c;
  const Routing r = route(spec(6, 2, false), pol, kZ, nullptr, &c);
  EXPECT_EQ(ids_of(r, 0), (std::vector<int32_t>{1, 3}));
  EXPECT_NEAR(r.weight(0, 0), p[1], 1e-7);  // not renormalized: a dropped pair adds nothing
  EXPECT_EQ(c.min_weight_dropped, 1u);
  pol.min_weight_renorm = true;
  const Routing rr = route(spec(6, 2, false), pol, kZ);
  EXPECT_NEAR(rr.weight(0, 0) + rr.weight(0, 1), p[1] + p[3] + p[4], 1e-6);
  // Above every weight: no expert at all (the layer adds nothing), as AdaMoE's all-null case.
  pol.min_weight = 2.0;
  pol.min_weight_renorm = false;
  const Routing none = route(spec(6, 2, false), pol, kZ);
  EXPECT_TRUE(ids_of(none, 0).empty());
}

TEST(RoutingPolicyMask, SoftmaxIsOverTheExpertsLeftExactlyAsWithoutTheirRows) {
  // Masking experts 1 and 4 must give what a 4-expert model without those router rows gives.
  for (bool renorm : {false, true}) {
    const MoeSpec full = spec(6, 2, renorm), pruned = spec(4, 2, renorm);
    RoutingPolicy pol;
    pol.mask_experts = {{0, 1}, {0, 4}};
    const Routing got = route(full, pol, kZ);
    std::vector<float> z = {kZ[0], kZ[2], kZ[3], kZ[5]};
    const int32_t back[] = {0, 2, 3, 5};
    Routing want;
    route_tokens(pruned, z.data(), nullptr, 1, want);
    ASSERT_EQ(got.k, want.k);
    for (int j = 0; j < want.k; ++j) {
      EXPECT_EQ(got.id(0, j), back[want.id(0, j)]);
      EXPECT_EQ(got.weight(0, j), want.weight(0, j)) << "bit-identical weights";
    }
  }
}

TEST(RoutingPolicyMask, GroupScoresCountOnlyTheExpertsLeft) {
  // 4 groups of 3, sigmoid + selection bias, keep 2 groups, k 2; mask one expert per group, which
  // must equal a model of 4 groups of 2 without those rows and bias entries.
  MoeSpec full = spec(12, 2, true, Gating::Sigmoid);
  full.n_group = 4;
  full.topk_group = 2;
  full.has_selection_bias = true;
  full.route_scale = 2.5f;
  MoeSpec pruned = full;
  pruned.n_expert = 8;
  const std::vector<float> z = {0.3f, 2.0f, -1.0f, 1.2f, 1.1f, 0.0f, -2.0f, 0.5f, 0.4f, 1.9f, -0.3f, 0.2f};
  const std::vector<float> bias = {0.1f, -0.2f, 0.0f, 0.05f, 0.0f, 0.3f, 0.0f, 0.1f, -0.1f, 0.0f, 0.2f, 0.0f};
  const std::vector<int> masked = {1, 4, 6, 9};  // one per group, including each group's best
  RoutingPolicy pol;
  for (int e : masked) pol.mask_experts.push_back({0, e});
  const Routing got = route(full, pol, z, bias.data());
  std::vector<float> zp, bp;
  std::vector<int32_t> back;
  for (int e = 0; e < 12; ++e)
    if (std::find(masked.begin(), masked.end(), e) == masked.end()) {
      zp.push_back(z[static_cast<size_t>(e)]);
      bp.push_back(bias[static_cast<size_t>(e)]);
      back.push_back(e);
    }
  Routing want;
  route_tokens(pruned, zp.data(), bp.data(), 1, want);
  ASSERT_EQ(got.k, want.k);
  for (int j = 0; j < want.k; ++j) {
    EXPECT_EQ(got.id(0, j), back[static_cast<size_t>(want.id(0, j))]);
    EXPECT_EQ(got.weight(0, j), want.weight(0, j));
  }
}

TEST(RoutingPolicyMask, EveryExpertOfALayerMaskedLeavesNoExpert) {
  RoutingPolicy pol;
  pol.mask_experts = parse_layer_experts("0:0-5", "test");
  RouteCounts c;
  const Routing r = route(spec(6, 2, true), pol, kZ, nullptr, &c);
  EXPECT_TRUE(ids_of(r, 0).empty());
  EXPECT_EQ(c.selected, 0u);
  // k above the experts left selects those left.
  pol.mask_experts = parse_layer_experts("0:0-3", "test");
  pol.experts = 4;
  EXPECT_EQ(ids_of(route(spec(6, 2, true), pol, kZ), 0), (std::vector<int32_t>{4, 5}));
}

TEST(RoutingPolicySteer, ChangesExactlyTheChosenPairs) {
  RoutingPolicy base;
  base.experts = 4;  // 1, 3, 4, 5
  const Routing ref = route(spec(6, 2, false), base, kZ);
  RoutingPolicy pol = base;
  pol.steer = {{0, 3, 3.0, false}, {0, 2, 5.0, false}};  // expert 2 is not selected: no effect
  const Routing got = route(spec(6, 2, false), pol, kZ);
  ASSERT_EQ(got.ids, ref.ids);
  for (int j = 0; j < 4; ++j) {
    if (got.id(0, j) == 3) EXPECT_EQ(got.weight(0, j), ref.weight(0, j) * 3.0f);
    else EXPECT_EQ(got.weight(0, j), ref.weight(0, j));
  }
}

TEST(RoutingPolicySteer, ForceSelectsAndKeepsTheBudget) {
  const auto p = softmax_of(kZ);
  RoutingPolicy pol;
  pol.steer = {{0, 2, 2.0, true}};  // the worst expert, forced in; k stays 2
  const Routing r = route(spec(6, 2, false), pol, kZ);
  EXPECT_EQ(ids_of(r, 0), (std::vector<int32_t>{1, 2}));
  EXPECT_NEAR(r.weight(0, 1), 2.0 * p[2], 1e-7);
  // Forced experts survive thresholds.
  pol.min_weight = 0.2;
  EXPECT_EQ(ids_of(route(spec(6, 2, false), pol, kZ), 0), (std::vector<int32_t>{1, 2}));
  // force_experts does the same without changing weights.
  RoutingPolicy on;
  on.force_experts = {{0, 0}};
  const Routing f = route(spec(6, 2, false), on, kZ);
  EXPECT_EQ(ids_of(f, 0), (std::vector<int32_t>{1, 0}));
  EXPECT_NEAR(f.weight(0, 1), p[0], 1e-7);
}

TEST(RoutingPolicyOnlyRank, OneExpertByRankWithWeightOne) {
  RoutingPolicy pol;
  pol.only_rank = 2;  // ranks count from 1: the second-best expert
  const Routing r = route(spec(6, 2, true), pol, kZ);
  ASSERT_EQ(r.k, 1);
  EXPECT_EQ(r.id(0, 0), 3);
  EXPECT_EQ(r.weight(0, 0), 1.0f);
  pol.only_rank = 1;
  EXPECT_EQ(route(spec(6, 2, true), pol, kZ).id(0, 0), 1);
}

TEST(RoutingPolicySinkhorn, BalancesExpertLoadOverTheBatch) {
  // 64 tokens that all prefer expert 0, with random second preferences: plain top-1 sends every token
  // to expert 0; the balanced plan spreads them.
  const int E = 4, T = 64;
  std::vector<float> z(static_cast<size_t>(T * E));
  uint64_t x = 12345;
  for (auto& v : z) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    v = static_cast<float>((x >> 40) % 1000) / 1000.0f;
  }
  for (int t = 0; t < T; ++t) z[static_cast<size_t>(t * E)] += 3.0f;
  RoutingPolicy pol;
  pol.experts = 1;
  const Routing plain = route(spec(E, 1, true), pol, z);
  pol.sinkhorn = true;
  pol.sinkhorn_eps = 0.05;
  pol.sinkhorn_iters = 200;
  const Routing bal = route(spec(E, 1, true), pol, z);
  std::vector<int> load_plain(E), load_bal(E);
  for (int t = 0; t < T; ++t) {
    ++load_plain[static_cast<size_t>(plain.id(t, 0))];
    ++load_bal[static_cast<size_t>(bal.id(t, 0))];
  }
  EXPECT_EQ(load_plain[0], T);
  // The plan's mass is balanced; its top-1 per token is close to it (a row's argmax is not its mass).
  for (int e = 0; e < E; ++e) {
    EXPECT_GE(load_bal[static_cast<size_t>(e)], T / E / 2) << "expert " << e;
    EXPECT_LE(load_bal[static_cast<size_t>(e)], 2 * T / E) << "expert " << e;
  }
  // Weights are the gate's (renormalized top-1: 1).
  EXPECT_EQ(bal.weight(0, 0), 1.0f);
}

TEST(RoutingPolicyRandomDrop, IsDeterministicAndNeverDropsTheHeaviest) {
  const int E = 8, T = 400;
  std::vector<float> z(static_cast<size_t>(T * E));
  for (size_t i = 0; i < z.size(); ++i) z[i] = std::sin(static_cast<float>(i) * 0.37f);
  RoutingPolicy pol;
  pol.experts = 2;
  pol.random_drop = 0.25;
  pol.random_seed = 7;
  RouteCounts c;
  const Routing a = route(spec(E, 2, true), pol, z, nullptr, &c), b = route(spec(E, 2, true), pol, z);
  EXPECT_EQ(a.ids, b.ids);
  const double dropped = 2.0 * T - static_cast<double>(c.selected);
  EXPECT_NEAR(dropped / T, 0.25, 0.07);
  for (int t = 0; t < T; ++t) EXPECT_GE(a.id(t, 0), 0);
}

TEST(RoutingPolicyRanges, TwoPoliciesInOneBatchEqualSeparateBatches) {
  const MoeSpec m = spec(6, 2, true);
  std::vector<float> z;
  for (int t = 0; t < 5; ++t)
    for (int e = 0; e < 6; ++e) z.push_back(std::cos(static_cast<float>(t * 6 + e)));
  RoutingPolicy a, b;
  a.experts = 3;
  b.top_p = 0.6;
  const RoutingPlan pa(a, shape_of(1, 6, 2)), pb(b, shape_of(1, 6, 2));
  Routing both;
  reset_routing(both, 5, 6);
  RouteScratch s;
  std::vector<float> zz = z;
  route_range(m, 0, pa.layer(0), zz.data(), nullptr, nullptr, 0, 2, both, s);
  route_range(m, 0, pb.layer(0), zz.data(), nullptr, nullptr, 2, 5, both, s);
  const Routing ra = route(m, a, std::vector<float>(z.begin(), z.begin() + 12));
  const Routing rb = route(m, b, std::vector<float>(z.begin() + 12, z.end()));
  for (int t = 0; t < 5; ++t) {
    const Routing& want = t < 2 ? ra : rb;
    const int64_t wt = t < 2 ? t : t - 2;
    EXPECT_EQ(ids_of(both, t), ids_of(want, wt)) << "token " << t;
    for (int j = 0; j < want.k; ++j) EXPECT_EQ(both.weight(t, j), want.weight(wt, j));
  }
  compact_routing(both);
  EXPECT_LE(both.k, 6);
  EXPECT_EQ(ids_of(both, 0), ids_of(ra, 0));
}

TEST(RoutingPolicyJson, RoundTripsAndDefaultIsEmpty) {
  EXPECT_EQ(RoutingPolicy{}.to_json().dump(), "{}");
  RoutingPolicy p;
  p.experts = 3;
  p.experts_per_layer = {{1, 2}};
  p.ratio_beta = 0.4;
  p.ratio_layers = {0, 2};
  p.min_weight = 0.05;
  p.mask_experts = {{0, 3}, {1, 7}};
  p.force_experts = {{2, 1}};
  p.steer = {{1, 2, 1.5, true}};
  p.random_drop = 0.1;
  p.random_seed = 9;
  p.sinkhorn = true;
  p.sinkhorn_eps = 0.1;
  const nlohmann::ordered_json j = p.to_json();
  const RoutingPolicy q = RoutingPolicy::from_json(nlohmann::json::parse(j.dump()));
  EXPECT_EQ(q.to_json().dump(), j.dump());
  RoutingPolicy tp;
  tp.top_p = 0.4;
  tp.top_p_max_k = 4;
  tp.top_p_weights = TopPWeights::Raw;
  EXPECT_EQ(RoutingPolicy::from_json(nlohmann::json::parse(tp.to_json().dump())).to_json(), tp.to_json());
}

void expect_json_error(const std::string& text, const std::string& needle) {
  try {
    RoutingPolicy::from_json(nlohmann::json::parse(text));
    ADD_FAILURE() << text << " was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << text << ": " << e.what();
  }
}

TEST(RoutingPolicyJson, StrictValidationNamesTheKey) {
  expect_json_error(R"({"expert": 2})", "'expert'");
  expect_json_error(R"({"experts": 0})", "'experts'");
  expect_json_error(R"({"experts": 2.5})", "'experts'");
  expect_json_error(R"({"top_p": 1.5})", "'top_p'");
  expect_json_error(R"({"top_p": "0.5"})", "'top_p'");
  expect_json_error(R"({"top_p": 0.5, "experts": 2})", "top_p");
  expect_json_error(R"({"top_p_weights": "sum", "top_p": 0.5})", "'top_p_weights'");
  expect_json_error(R"({"ratio_threshold": 0})", "'ratio_threshold'");
  expect_json_error(R"({"mask_experts": [[0]]})", "'mask_experts'");
  expect_json_error(R"({"mask_experts": [[0, 1]], "force_experts": [[0, 1]]})", "0:1");
  expect_json_error(R"({"steer": [{"layer": 0, "expert": 1}]})", "'factor'");
  expect_json_error(R"({"steer": [{"layer": 0, "expert": 1, "factor": 2, "boost": 1}]})", "'steer.boost'");
  expect_json_error(R"({"sinkhorn": {"eps": -1}})", "'sinkhorn.eps'");
  expect_json_error(R"({"random_drop": {"prob": 2}})", "'random_drop.prob'");
  expect_json_error(R"({"only_rank": 2, "experts": 3})", "only_rank");
  expect_json_error(R"({"remix": {"refs": "x"}})", "'remix.layers'");
  expect_json_error(R"([1, 2])", "object");
}

TEST(RoutingPolicyText, ListsRangesAndFileForms) {
  const auto pairs = parse_layer_experts("0:1, 2:3-5\n# comment 9:9\n1-2:0", "--mask-experts");
  const std::vector<LayerExpert> want = {{0, 1}, {2, 3}, {2, 4}, {2, 5}, {1, 0}, {2, 0}};
  EXPECT_EQ(pairs, want);
  EXPECT_EQ(parse_layer_values("0:2,3:1", "--experts-per-layer"), (std::vector<std::pair<int, int>>{{0, 2}, {3, 1}}));
  const auto st = parse_steer_rules("1:2:3.5,0:4", "--steer", 2.0, false);
  ASSERT_EQ(st.size(), 2u);
  EXPECT_EQ(st[0].factor, 3.5);
  EXPECT_EQ(st[1].factor, 2.0);
  EXPECT_EQ(parse_int_list("1,3-5", "x"), (std::vector<int>{1, 3, 4, 5}));
  for (const char* bad : {"1", "a:2", "1:2:3", "1:-2", "3-1:0", ""}) EXPECT_THROW(parse_layer_experts(bad, "m"), Error) << bad;
  EXPECT_THROW(parse_steer_rules("1:2:x", "s", 2, false), Error);
}

void expect_plan_error(const RoutingPolicy& p, const std::string& needle) {
  RoutingShape s = shape_of(3, 8, 2);
  s.n_expert[0] = s.n_expert_used[0] = 0;  // a dense first layer
  try {
    RoutingPlan plan(p, s);
    ADD_FAILURE() << p.to_json().dump() << " was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(RoutingPolicyPlan, ErrorsNameTheLayerExpertAndSetting) {
  RoutingPolicy p;
  p.experts = 9;
  expect_plan_error(p, "--experts");
  p = {};
  p.experts_per_layer = {{5, 2}};
  expect_plan_error(p, "layer 5 is out of range");
  p = {};
  p.experts_per_layer = {{0, 2}};
  expect_plan_error(p, "not a MoE layer");
  p = {};
  p.experts_per_layer = {{1, 0}};
  expect_plan_error(p, "at least 1");
  p = {};
  p.mask_experts = {{1, 8}};
  expect_plan_error(p, "expert 8 of layer 1 is out of range");
  p = {};
  p.force_experts = {{1, 0}, {1, 1}, {1, 2}};
  expect_plan_error(p, "forced on");
  p = {};
  p.top_p = 0.5;
  p.top_p_max_k = 12;
  expect_plan_error(p, "top_p_max_k");
  p = {};
  p.steer = {{2, 1, 0.0, false}};
  expect_plan_error(p, "factor");
  p = {};
  p.experts = -2;
  expect_plan_error(p, "at least 1");
}

TEST(RoutingPolicyPlan, MaxExpertsForPlanning) {
  RoutingPolicy p;
  EXPECT_EQ(policy_max_experts(p), 0);
  p.experts = 3;
  p.experts_per_layer = {{1, 5}};
  EXPECT_EQ(policy_max_experts(p), 5);
  RoutingPolicy tp;
  tp.top_p = 0.5;
  EXPECT_EQ(policy_max_experts(tp), -1);
  tp.top_p_max_k = 4;
  EXPECT_EQ(policy_max_experts(tp), 4);
}

}  // namespace
}  // namespace moe
