// The gate pipeline per MoeSpec (techniques.md section 1), checked on hand-computed cases.
#include <gtest/gtest.h>

#include <cmath>

#include "moe/router.h"

namespace moe {
namespace {

MoeSpec spec(int e, int k, bool renorm) {
  MoeSpec m;
  m.n_expert = e;
  m.n_expert_used = k;
  m.norm_topk = renorm;
  return m;
}

std::vector<float> softmax_of(std::vector<float> z) {
  float mx = *std::max_element(z.begin(), z.end());
  double s = 0;
  for (float& v : z) s += (v = std::exp(v - mx));
  for (float& v : z) v = static_cast<float>(v / s);
  return z;
}

TEST(RouterGate, SoftmaxTopKWithoutRenorm) {
  std::vector<float> z = {0.1f, 2.0f, -1.0f, 1.5f};
  const auto p = softmax_of(z);
  Routing r;
  route_tokens(spec(4, 2, false), z.data(), nullptr, 1, r);
  ASSERT_EQ(r.ids, (std::vector<int32_t>{1, 3}));
  EXPECT_NEAR(r.weights[0], p[1], 1e-6);
  EXPECT_NEAR(r.weights[1], p[3], 1e-6);
}

TEST(RouterGate, RenormalizedWeightsSumToOne) {
  std::vector<float> z = {0.1f, 2.0f, -1.0f, 1.5f, 0.3f, 0.2f};
  Routing r;
  route_tokens(spec(6, 3, true), z.data(), nullptr, 1, r);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{1, 3, 4}));
  EXPECT_NEAR(r.weights[0] + r.weights[1] + r.weights[2], 1.0f, 1e-6);
  EXPECT_GT(r.weights[0], r.weights[1]);
}

TEST(RouterGate, RouteScaleMultipliesWeights) {
  std::vector<float> z1 = {1.0f, 0.0f, 3.0f}, z2 = z1;
  MoeSpec a = spec(3, 2, true), b = a;
  b.route_scale = 2.5f;
  Routing ra, rb;
  route_tokens(a, z1.data(), nullptr, 1, ra);
  route_tokens(b, z2.data(), nullptr, 1, rb);
  EXPECT_EQ(ra.ids, rb.ids);
  for (int j = 0; j < 2; ++j) EXPECT_NEAR(rb.weights[j], 2.5f * ra.weights[j], 1e-6);
}

TEST(RouterGate, SelectionBiasChangesChoiceButNotWeights) {
  std::vector<float> z = {2.0f, 1.0f, 0.0f, -1.0f}, z2 = z;
  const auto p = softmax_of(z);
  const std::vector<float> bias = {0.0f, 0.0f, 0.0f, 5.0f};  // forces expert 3 in
  Routing r;
  route_tokens(spec(4, 2, false), z2.data(), bias.data(), 1, r);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{3, 0}));
  EXPECT_NEAR(r.weights[0], p[3], 1e-6);  // the unbiased score
  EXPECT_NEAR(r.weights[1], p[0], 1e-6);
}

TEST(RouterGate, SigmoidGating) {
  MoeSpec m = spec(3, 1, false);
  m.gating = Gating::Sigmoid;
  std::vector<float> z = {0.5f, -0.2f, 0.1f};
  Routing r;
  route_tokens(m, z.data(), nullptr, 1, r);
  EXPECT_EQ(r.ids[0], 0);
  EXPECT_NEAR(r.weights[0], 1.0f / (1.0f + std::exp(-0.5f)), 1e-6);
}

TEST(RouterGate, GroupLimitedSelection) {
  // 4 groups of 2; group score = sum of its top-2; keep 2 groups. Expert 6 has the single best
  // score, but its group (6, 7) sums lower than groups (0, 1) and (2, 3).
  MoeSpec m = spec(8, 2, false);
  m.gating = Gating::Sigmoid;
  m.n_group = 4;
  m.topk_group = 2;
  std::vector<float> z = {1.0f, 1.0f, 0.9f, 0.9f, -3.0f, -3.0f, 2.0f, -4.0f};
  Routing r;
  route_tokens(m, z.data(), nullptr, 1, r);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 1}));
}

TEST(RouterGate, ManyTokensAreIndependent) {
  std::vector<float> z = {0.0f, 1.0f, 2.0f, 2.0f, 1.0f, 0.0f};
  Routing r;
  route_tokens(spec(3, 1, true), z.data(), nullptr, 2, r);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{2, 0}));
  EXPECT_NEAR(r.weights[0], 1.0f, 1e-6);
  EXPECT_NEAR(r.weights[1], 1.0f, 1e-6);
}

}  // namespace
}  // namespace moe
