// Row ops against plain references: the dispatched dot/axpy against their scalar versions, and norm,
// rope and softmax against double-precision formulas.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "kernels/ops.h"

namespace moe::kernels {
namespace {

std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

TEST(KernelOps, DotAndAxpyMatchScalarReference) {
  for (int64_t n : {1, 7, 16, 31, 64, 100, 128, 1000}) {
    auto a = randn(n, 1), b = randn(n, 2);
    double mag = 0;
    for (int64_t i = 0; i < n; ++i) mag += std::fabs(a[i] * b[i]);
    // Only the summation order (and FMA contraction) differs.
    EXPECT_NEAR(dot_f32(a.data(), b.data(), n), dot_f32_ref(a.data(), b.data(), n), 1e-5 * mag + 1e-7) << n;
    auto y1 = randn(n + 3, 3), y2 = y1;
    axpy(y1.data(), 0.37f, a.data(), n);
    axpy_ref(y2.data(), 0.37f, a.data(), n);
    for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(y1[i], y2[i], 1e-6 * (1 + std::fabs(y2[i]))) << n;
    for (int64_t i = n; i < n + 3; ++i) EXPECT_EQ(y1[i], y2[i]) << "wrote past the end, n=" << n;
  }
}

TEST(KernelOps, RowOpsMatchScalarReference) {
  for (int64_t n : {1, 5, 16, 33, 100, 2048, 2051}) {
    auto x = randn(n + 3, 11), w = randn(n, 12);
    // rms_norm: the double sum of squares is added in another order, so the float mean may move by one
    // rounding; the rest is the same float arithmetic.
    for (const float* wp : {static_cast<const float*>(nullptr), static_cast<const float*>(w.data())}) {
      auto y1 = x, y2 = x;
      rms_norm(x.data(), wp, y1.data(), n, 1e-6f);
      rms_norm_ref(x.data(), wp, y2.data(), n, 1e-6f);
      for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(y1[i], y2[i], 4e-7f * std::fabs(y2[i])) << n;
      for (int64_t i = n; i < n + 3; ++i) EXPECT_EQ(y1[i], x[i]) << "wrote past the end, n=" << n;
    }
    // add and scale: elementwise, so bit for bit.
    auto a1 = randn(n + 3, 13), a2 = a1;
    add(a1.data(), x.data(), n);
    add_ref(a2.data(), x.data(), n);
    scale(a1.data(), -0.73f, n);
    scale_ref(a2.data(), -0.73f, n);
    for (int64_t i = 0; i < n + 3; ++i) EXPECT_EQ(a1[i], a2[i]) << n << " " << i;
  }
}

// SwiGLU: the dispatched body gives the scalar reference's bits (same exp, same operations), for every
// tail length, in place (out == gate, as the executor calls it), and at the exponential's clamps; both
// are within a few ulp of a double-precision silu(g) * u.
TEST(KernelOps, SwigluMatchesReferenceBitwiseAndFormula) {
  for (int64_t n : {1, 5, 16, 17, 100, 768}) {
    auto g = randn(static_cast<size_t>(n), 11), u = randn(static_cast<size_t>(n), 12);
    for (int64_t i = 0; i < n; i += 7) g[static_cast<size_t>(i)] *= 20.0f;  // past the polynomial's core range
    std::vector<float> ref(static_cast<size_t>(n)), got = g;
    swiglu_ref(g.data(), u.data(), ref.data(), n);
    swiglu(got.data(), u.data(), got.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const size_t k = static_cast<size_t>(i);
      ASSERT_EQ(std::memcmp(&got[k], &ref[k], sizeof(float)), 0) << "n=" << n << " i=" << i << " g=" << g[k];
      const double x = g[k], want = x / (1.0 + std::exp(-x)) * u[k];
      EXPECT_NEAR(ref[k], want, 4e-7 * std::fabs(want) + 1e-30) << "g=" << x;
    }
  }
  const std::vector<float> edge = {0.0f, -0.0f, 88.0f, -88.0f, 104.0f, -104.0f, 300.0f, -300.0f, 1e-30f, -1e-30f};
  const std::vector<float> ones(edge.size(), 1.0f);
  std::vector<float> a(edge.size()), b(edge.size());
  swiglu_ref(edge.data(), ones.data(), a.data(), static_cast<int64_t>(edge.size()));
  swiglu(edge.data(), ones.data(), b.data(), static_cast<int64_t>(edge.size()));
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
  EXPECT_EQ(a[6], 300.0f);                        // silu(x) = x for large x
  EXPECT_LE(std::fabs(a[7]), 1e-30f);             // and -> 0 for very negative x
  EXPECT_EQ(a[0], 0.0f);
}

TEST(KernelOps, RmsNormMatchesFormula) {
  const int64_t n = 300;
  auto x = randn(n, 4), w = randn(n, 5), y(x);
  rms_norm(x.data(), w.data(), y.data(), n, 1e-6f);
  double ss = 0;
  for (float v : x) ss += double(v) * v;
  const double inv = 1.0 / std::sqrt(ss / n + 1e-6);
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(y[i], x[i] * inv * w[i], 1e-5 * (1 + std::fabs(y[i])));
}

TEST(KernelOps, RopeMatchesFormulaForBothPairings) {
  const int64_t hd = 64, pos = 37;
  for (bool neox : {false, true}) {
    auto x = randn(hd, 6), y = x;
    rope(y.data(), hd, pos, 10000.0f, 1.0f, neox);
    for (int64_t i = 0; i < hd / 2; ++i) {
      const double ang = pos * std::pow(10000.0, -2.0 * i / hd);
      const int64_t a = neox ? i : 2 * i, b = neox ? i + hd / 2 : 2 * i + 1;
      EXPECT_NEAR(y[a], x[a] * std::cos(ang) - x[b] * std::sin(ang), 2e-4);
      EXPECT_NEAR(y[b], x[a] * std::sin(ang) + x[b] * std::cos(ang), 2e-4);
    }
  }
}

TEST(KernelOps, SoftmaxIsNormalizedAndStable) {
  std::vector<float> z = {1000.0f, 999.0f, -1000.0f, 0.0f};
  softmax(z.data(), 4);
  EXPECT_NEAR(z[0] + z[1] + z[2] + z[3], 1.0f, 1e-6);
  EXPECT_NEAR(z[0] / z[1], std::exp(1.0f), 1e-4);
  EXPECT_EQ(z[2], 0.0f);
}

}  // namespace
}  // namespace moe::kernels
