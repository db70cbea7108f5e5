// The batched causal attention kernel (two sgemm per block) against a plain double-precision
// reference: every query sees exactly keys 0 .. n_past + i, with its own softmax.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "test_data.h"
#include "kernels/attention.h"

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
