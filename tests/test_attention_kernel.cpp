// The batched causal attention kernel (two sgemm per block) against a plain double-precision
// reference: every query sees exactly keys 0 .. n_past + i, with its own softmax.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "test_data.h"
#include "kernels/attention.h"
#include "kernels/cpu_features.h"
#include "tensor/fp16.h"

using namespace moe;

namespace {

using test::gaussian;

}  // namespace

TEST(AttentionKernel, CausalBlockMatchesReference) {
  const int64_t hd = 64, heads = 3;  // rows interleave 3 heads, as in the model's q / kv layout
  for (const auto& [m, n_past] : std::vector<std::pair<int64_t, int64_t>>{{1, 0}, {5, 0}, {64, 0}, {17, 40}, {64, 100}}) {
    const int64_t nk = n_past + m, stride = heads * hd;
    const auto q = gaussian(static_cast<size_t>(m * stride), 1, 1.0f);
    const auto k = gaussian(static_cast<size_t>(nk * stride), 2, 1.0f);
    const auto v = gaussian(static_cast<size_t>(nk * stride), 3, 1.0f);
    const int h = 1;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    std::vector<float> out(static_cast<size_t>(m * stride), -7.0f), scratch;
    kernels::CausalBlock b;
    b.q = q.data() + h * hd;
    b.q_stride = stride;
    b.k = k.data() + h * hd;
    b.v = v.data() + h * hd;
    b.kv_stride = stride;
    b.m = m;
    b.n_past = n_past;
    b.head_dim = hd;
    b.scale = scale;
    b.out = out.data() + h * hd;
    b.out_stride = stride;
    kernels::causal_attention_block(b, scratch);
    for (int64_t i = 0; i < m; ++i) {
      const int64_t n_keys = n_past + i + 1;
      std::vector<double> p(static_cast<size_t>(n_keys));
      double mx = -INFINITY, sum = 0;
      for (int64_t j = 0; j < n_keys; ++j) {
        double d = 0;
        for (int64_t c = 0; c < hd; ++c) d += static_cast<double>(q[i * stride + h * hd + c]) * k[j * stride + h * hd + c];
        p[static_cast<size_t>(j)] = d * scale;
        mx = std::max(mx, p[static_cast<size_t>(j)]);
      }
      for (auto& x : p) sum += (x = std::exp(x - mx));
      for (int64_t c = 0; c < hd; ++c) {
        double o = 0;
        for (int64_t j = 0; j < n_keys; ++j) o += p[static_cast<size_t>(j)] * v[j * stride + h * hd + c];
        EXPECT_NEAR(out[i * stride + h * hd + c], o / sum, 2e-5) << "m=" << m << " n_past=" << n_past << " i=" << i;
      }
      // Other heads' columns are untouched.
      EXPECT_EQ(out[i * stride], -7.0f);
      EXPECT_EQ(out[i * stride + 2 * hd], -7.0f);
    }
  }
}

// Grouped-query heads stacked into one block (token-major rows, one pass over each chunk of keys) give
// what attending head by head gives, up to sgemm's blocking (1e-5 here, with outputs of order 1), with
// sliding windows, sinks per head, key0 > 0, and key chunks cut to fit the stacked rows; columns of heads
// outside the stack are untouched.
TEST(AttentionKernel, StackedHeadsMatchOneHeadAtATime) {
  const int64_t hd = 64, n_head = 6, stride = n_head * hd;  // heads 1..5 share one kv head in this test
  const int stack = 5, h0 = 1;  // 64 queries: 320 rows, key chunks of 192
  const float sinks[n_head] = {0.0f, 0.5f, -1.0f, 2.0f, 0.25f, 0.0f};
  struct Case {
    int64_t m, n_past, window, key0;
    bool sink;
  };
  for (const Case& c : std::vector<Case>{{1, 0, 0, 0, false}, {5, 0, 0, 0, true}, {64, 0, 0, 0, false},
                                         {17, 40, 0, 0, true}, {64, 300, 0, 0, false}, {64, 300, 50, 251, true},
                                         {33, 700, 128, 573, false}}) {
    const int64_t nk = c.n_past + c.m - c.key0;
    const auto q = gaussian(static_cast<size_t>(c.m * stride), 11, 1.0f);
    const auto k = gaussian(static_cast<size_t>(nk * hd), 12, 1.0f);
    const auto v = gaussian(static_cast<size_t>(nk * hd), 13, 1.0f);
    std::vector<float> stacked(static_cast<size_t>(c.m * stride), -7.0f), single(stacked), scratch;
    kernels::CausalBlock b;
    b.k = k.data();
    b.v = v.data();
    b.kv_stride = hd;
    b.m = c.m;
    b.n_past = c.n_past;
    b.key0 = c.key0;
    b.window = c.window;
    b.head_dim = hd;
    b.scale = 0.125f;
    b.has_sink = c.sink;
    b.q_stride = stride;
    b.out_stride = stride;
    for (int h = h0; h < h0 + stack; ++h) {
      kernels::CausalBlock one = b;
      one.q = q.data() + h * hd;
      one.out = single.data() + h * hd;
      one.sink = sinks[h];
      kernels::causal_attention_block(one, scratch);
    }
    b.q = q.data() + h0 * hd;
    b.out = stacked.data() + h0 * hd;
    b.heads = stack;
    b.q_head_stride = hd;
    b.out_head_stride = hd;
    b.head_sinks = sinks + h0;
    kernels::causal_attention_block(b, scratch);
    for (size_t i = 0; i < stacked.size(); ++i) {
      const int64_t h = static_cast<int64_t>(i % static_cast<size_t>(stride)) / hd;
      if (h < h0 || h >= h0 + stack) {
        ASSERT_EQ(stacked[i], -7.0f) << "wrote outside the stack, m=" << c.m;
        continue;
      }
      ASSERT_NEAR(stacked[i], single[i], 1e-5f) << "m=" << c.m << " n_past=" << c.n_past << " window=" << c.window
                                                << " element " << i;
    }
  }
}

TEST(AttentionKernel, HeadsPerBlockKeepTheStackInL2) {
  EXPECT_EQ(kernels::attention_heads_per_block(8, 64, 128, 128), 4);   // Qwen3-30B-A3B: 256 rows, 128 KB
  EXPECT_EQ(kernels::attention_heads_per_block(1, 64, 128, 128), 1);   // no grouping
  EXPECT_EQ(kernels::attention_heads_per_block(6, 64, 64, 64), 3);     // a divisor of the group
  EXPECT_EQ(kernels::attention_heads_per_block(16, 64, 576, 512), 1);  // MLA's latent rows are too wide
  EXPECT_EQ(kernels::attention_heads_per_block(8, 40, 128, 128), 4);   // 160 rows; 8 would be 320
  EXPECT_EQ(kernels::attention_heads_per_block(8, 7, 128, 128), 1);    // a short prompt: head by head
}

// Decode attention from the fp16 cache: the AVX-512 kernels give the scalar references' results bit for
// bit (same lanes, same pairwise reduction, one FMA per value element), and both agree with a double
// precision evaluation of scale * q.k and sum_j p_j v_j.
TEST(AttentionKernel, F16DecodeKernelsMatchReferences) {
  const int64_t hd = 128, n = 301, kv_stride = 2 * hd;  // two kv heads interleaved: the kernel reads one
  const int nh = 3;
  const auto q = gaussian(static_cast<size_t>(nh * hd), 4, 1.0f);
  const auto kf = gaussian(static_cast<size_t>(n * kv_stride), 5, 1.0f);
  const auto vf = gaussian(static_cast<size_t>(n * kv_stride), 6, 1.0f);
  std::vector<uint16_t> k(kf.size()), v(vf.size());
  for (size_t i = 0; i < kf.size(); ++i) k[i] = fp32_to_fp16(kf[i]), v[i] = fp32_to_fp16(vf[i]);
  const auto p = gaussian(static_cast<size_t>(nh * n), 7, 0.1f);
  const float scale = 0.0883883f;
  kernels::F16AttnRun r;
  r.q = q.data();
  r.q_stride = hd;
  r.nh = nh;
  r.k = k.data() + hd;  // the second kv head
  r.v = v.data() + hd;
  r.kv_stride = kv_stride;
  r.n = n;
  r.head_dim = hd;
  r.scores_stride = n + 5;
  std::vector<float> s_ref(static_cast<size_t>(nh * r.scores_stride)), s_simd(s_ref.size());
  r.scores = s_ref.data();
  kernels::attn_scores_f16_ref(r, scale);
  for (int g = 0; g < nh; ++g)
    for (int64_t j = 0; j < n; ++j) {
      double want = 0;
      for (int64_t d = 0; d < hd; ++d)
        want += static_cast<double>(q[g * hd + d]) * fp16_to_fp32(k[static_cast<size_t>(j * kv_stride + hd + d)]);
      EXPECT_NEAR(s_ref[static_cast<size_t>(g * r.scores_stride + j)], want * scale, 1e-5 * (1 + std::fabs(want)));
    }
  // Values: the scores buffer now holds the weights p.
  for (int g = 0; g < nh; ++g)
    for (int64_t j = 0; j < n; ++j) s_ref[static_cast<size_t>(g * r.scores_stride + j)] = p[static_cast<size_t>(g * n + j)];
  std::vector<float> acc_ref(static_cast<size_t>(nh * hd), 0.5f), acc_simd(acc_ref);
  kernels::attn_values_f16_ref(r, acc_ref.data());
  for (int g = 0; g < nh; ++g)
    for (int64_t d = 0; d < hd; ++d) {
      double want = 0.5;
      for (int64_t j = 0; j < n; ++j)
        want += static_cast<double>(p[static_cast<size_t>(g * n + j)]) * fp16_to_fp32(v[static_cast<size_t>(j * kv_stride + hd + d)]);
      EXPECT_NEAR(acc_ref[static_cast<size_t>(g * hd + d)], want, 1e-4);
    }
  if (!cpu_features().has_avx512_kernels()) GTEST_SKIP() << "no AVX-512 on this CPU";
  std::vector<float> p_scores = s_ref;
  r.scores = s_simd.data();
  kernels::attn_scores_f16_avx512(r, scale);
  r.scores = s_ref.data();
  kernels::attn_scores_f16_ref(r, scale);
  EXPECT_EQ(s_simd, s_ref);
  r.scores = p_scores.data();
  kernels::attn_values_f16_avx512(r, acc_simd.data());
  EXPECT_EQ(acc_simd, acc_ref);
}

// The softmax exponential: the AVX2 and AVX-512 bodies give the scalar reference's bits (every length, so every
// tail mask), both within 2 ulp of exp in double, underflow to zero far below the maximum, and the
// returned sum is the sum of what was written.
TEST(AttentionKernel, ExpShiftedSumMatchesReferenceAndExp) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> wide(-120.0f, 0.0f), narrow(-8.0f, 0.0f);
  for (int64_t n : {1, 2, 15, 16, 17, 31, 64, 255, 256, 257, 40000}) {
    std::vector<float> x(static_cast<size_t>(n));
    for (size_t j = 0; j < x.size(); ++j) x[j] = (j % 3 == 0 ? wide(rng) : narrow(rng)) + 3.0f;
    const float mx = 3.0f;
    std::vector<float> ref = x;
    const float sum_ref = kernels::exp_shifted_sum_ref(ref.data(), n, mx);
    double sum = 0;
    for (size_t j = 0; j < x.size(); ++j) {
      const double want = std::exp(static_cast<double>(x[j] - mx));
      sum += ref[j];
      if (want < 1e-37) {
        EXPECT_LE(ref[j], 1e-37f) << x[j];
        continue;
      }
      EXPECT_LE(std::fabs(ref[j] - want), 2.0 * std::nextafter(static_cast<float>(want), INFINITY) - 2.0 * static_cast<float>(want) + 1e-45)
          << "x - mx = " << x[j] - mx;
    }
    EXPECT_NEAR(sum_ref, sum, 1e-6 * sum) << n;
    if (cpu_features().has_avx2_kernels()) {
      std::vector<float> simd = x;
      const float sum_simd = kernels::exp_shifted_sum_avx2(simd.data(), n, mx);
      EXPECT_EQ(simd, ref) << n;
      EXPECT_EQ(sum_simd, sum_ref) << n;
    }
    if (cpu_features().has_avx512_kernels()) {
      std::vector<float> simd = x;
      const float sum_simd = kernels::exp_shifted_sum_avx512(simd.data(), n, mx);
      EXPECT_EQ(simd, ref) << n;
      EXPECT_EQ(sum_simd, sum_ref) << n;
    }
  }
  // Above the maximum (clamped at 88) and at the clamps: still the same bits everywhere.
  std::vector<float> big = {0.5f, 10.0f, 87.9f, 88.0f, 200.0f, -103.9f, -104.0f, -300.0f, -87.0f, -100.0f};
  std::vector<float> big_ref = big;
  const float big_sum = kernels::exp_shifted_sum_ref(big_ref.data(), static_cast<int64_t>(big.size()), 0.0f);
  EXPECT_NEAR(big_ref[1], std::exp(10.0), 2e-7 * std::exp(10.0));
  EXPECT_EQ(big_ref[4], big_ref[3]);
  EXPECT_EQ(big_ref[7], 0.0f);
  for (auto body : {&kernels::exp_shifted_sum_avx2, &kernels::exp_shifted_sum_avx512}) {
    if (body == &kernels::exp_shifted_sum_avx2 ? !cpu_features().has_avx2_kernels() : !cpu_features().has_avx512_kernels())
      continue;
    std::vector<float> b2 = big;
    EXPECT_EQ(body(b2.data(), static_cast<int64_t>(b2.size()), 0.0f), big_sum);
    EXPECT_EQ(b2, big_ref);
  }
  std::vector<float> y = {-1.0f, 4.0f, 2.5f, 4.0f, -9.0f, 3.0f, 0.0f, 1.0f, 3.5f};
  EXPECT_EQ(kernels::max_f32(y.data(), static_cast<int64_t>(y.size())), 4.0f);
  EXPECT_EQ(kernels::max_f32(y.data() + 4, 1), -9.0f);
}
