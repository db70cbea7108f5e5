// Kernels the deepseek2 / gpt-oss / glm4moe families added: causal attention with a sliding window, an
// attention sink and values shorter than keys (MLA); fp16-cache decode kernels with separate value
// width and stride; llama.cpp's F16 dot-product order; the clamped SwiGLU; YaRN rope; softmax over the
// selected router logits.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/attention.h"
#include "kernels/cpu_features.h"
#include "kernels/ops.h"
#include "moe/router.h"
#include "tensor/dtype.h"
#include "tensor/fp16.h"
#include "test_data.h"

using namespace moe;

namespace {

using test::gaussian;

// Causal attention in double for query i at position n_past + i over key rows for positions key0..,
// with a window (0 = none) and an optional sink.
std::vector<double> naive_attention(const float* q, const float* k, const float* v, int64_t kstride, int64_t vstride,
                                    int64_t dk, int64_t dv, int64_t pos, int64_t key0, int64_t window, float scale,
                                    const float* sink) {
  const int64_t lo = window > 0 ? std::max(key0, pos - window + 1) : key0;
  std::vector<double> p;
  double mx = sink ? *sink : -INFINITY;
  for (int64_t j = lo; j <= pos; ++j) {
    double d = 0;
    for (int64_t c = 0; c < dk; ++c) d += static_cast<double>(q[c]) * k[(j - key0) * kstride + c];
    p.push_back(d * scale);
    mx = std::max(mx, p.back());
  }
  double sum = sink ? std::exp(*sink - mx) : 0.0;
  for (auto& x : p) sum += (x = std::exp(x - mx));
  std::vector<double> out(static_cast<size_t>(dv), 0.0);
  for (int64_t j = lo; j <= pos; ++j)
    for (int64_t c = 0; c < dv; ++c) out[static_cast<size_t>(c)] += p[static_cast<size_t>(j - lo)] / sum * v[(j - key0) * vstride + c];
  return out;
}

}  // namespace

TEST(ArchKernels, CausalBlockWithWindowSinkAndShortValues) {
  // MLA-like: keys 80 wide, values the first 64 of each key row; windows; a sink logit. The long cases
  // span several key chunks (kernels::kAttnKeyChunk) with windows that start and end inside a chunk, and
  // a larger scale so that the running maximum rises between chunks by more than the scores' spread.
  struct Case {
    int64_t m, n_past, window;
    float scale;
  };
  const int64_t dk = 80, dv = 64;
  for (const Case& cs : {Case{21, 30, 7, 0.125f}, Case{64, 700, 0, 0.125f}, Case{64, 900, 300, 0.5f},
                         Case{50, 600, 260, 0.5f}, Case{3, 1000, 0, 1.0f}}) {
    const int64_t m = cs.m, n_past = cs.n_past, window = cs.window;
    const int64_t key0 = window > 0 ? std::max<int64_t>(0, n_past - window + 1) : 0;
    const int64_t nk = n_past + m - key0;
    const auto q = gaussian(static_cast<size_t>(m * dk), 11, 1.0f);
    const auto k = gaussian(static_cast<size_t>(nk * dk), 12, 1.0f);
    for (const bool with_sink : {false, true}) {
      const float sink = 0.7f;
      std::vector<float> out(static_cast<size_t>(m * dv), -7.0f), scratch;
      kernels::CausalBlock b;
      b.q = q.data();
      b.q_stride = dk;
      b.k = k.data();
      b.v = k.data();  // values inside the key rows
      b.kv_stride = dk;
      b.v_stride = dk;
      b.m = m;
      b.n_past = n_past;
      b.key0 = key0;
      b.window = window;
      b.head_dim = dk;
      b.v_dim = dv;
      b.scale = cs.scale;
      b.has_sink = with_sink;
      b.sink = sink;
      b.out = out.data();
      b.out_stride = dv;
      kernels::causal_attention_block(b, scratch);
      for (int64_t i = 0; i < m; ++i) {
        const auto want = naive_attention(q.data() + i * dk, k.data(), k.data(), dk, dk, dk, dv, n_past + i, key0, window,
                                          cs.scale, with_sink ? &sink : nullptr);
        for (int64_t c = 0; c < dv; ++c)
          ASSERT_NEAR(out[i * dv + c], want[static_cast<size_t>(c)], 2e-5)
              << "m=" << m << " n_past=" << n_past << " window=" << window << " sink=" << with_sink << " i=" << i << " c=" << c;
      }
    }
  }
}

TEST(ArchKernels, F16DecodeKernelsWithShortValuesMatchReference) {
  // Keys of dk halves, values the first dv of the same rows (the latent cache), nh heads sharing them:
  // the fast kernels' paths for runs of 4+ heads (rows widened once, values in key blocks with register
  // accumulators of 128 and of 16) must give the scalar reference's bits.
  struct Case {
    int nh;
    int64_t dk, dv, n;
  };
  for (const Case c : {Case{5, 80, 64, 37}, Case{16, 576, 512, 70}, Case{8, 128, 128, 33}, Case{2, 64, 48, 9}}) {
    const auto qf = gaussian(static_cast<size_t>(c.nh * c.dk), 21, 1.0f);
    const auto kf = gaussian(static_cast<size_t>(c.n * c.dk), 22, 1.0f);
    std::vector<uint16_t> kh(kf.size());
    for (size_t i = 0; i < kf.size(); ++i) kh[i] = fp32_to_fp16(kf[i]);
    kernels::F16AttnRun r;
    r.q = qf.data();
    r.q_stride = c.dk;
    r.nh = c.nh;
    r.k = kh.data();
    r.v = kh.data();
    r.kv_stride = c.dk;
    r.v_stride = c.dk;
    r.n = c.n;
    r.head_dim = c.dk;
    r.v_dim = c.dv;
    std::vector<float> s_ref(static_cast<size_t>(c.nh * c.n)), s_fast(s_ref.size());
    r.scores_stride = c.n;
    r.scores = s_ref.data();
    kernels::attn_scores_f16_ref(r, 0.1f);
    r.scores = s_fast.data();
    kernels::attn_scores_f16(r, 0.1f);
    EXPECT_EQ(s_ref, s_fast) << c.nh << " heads of " << c.dk;
    std::vector<float> a_ref(static_cast<size_t>(c.nh * c.dv), 0.25f), a_fast(a_ref.size(), 0.25f);
    r.scores = s_ref.data();
    kernels::attn_values_f16_ref(r, a_ref.data());
    kernels::attn_values_f16(r, a_fast.data());
    EXPECT_EQ(a_ref, a_fast) << c.nh << " heads of " << c.dv;
    // And the values really are the first dv halves of each key row.
    for (int g = 0; g < c.nh; ++g) {
      double want = 0.25;
      for (int64_t j = 0; j < c.n; ++j) want += static_cast<double>(s_ref[g * c.n + j]) * fp16_to_fp32(kh[j * c.dk + 3]);
      EXPECT_NEAR(a_ref[g * c.dv + 3], want, 1e-4);
    }
  }
}

TEST(ArchKernels, F16DotFollowsLlamaCppSummationOrder) {
  // llama.cpp multiplies F16 matrices with tinyBLAS when the row length is a multiple of 16 (one 16-lane
  // accumulator per output, lanes added pairwise at the end) and with ggml_vec_dot_f16 otherwise (four
  // accumulators over blocks of 64 folded (a0 + a2) + (a1 + a3), the tail added in double). The fast
  // kernel must give exactly those bits; a different order differs in the last bit on most of these.
  const DTypeTraits& tr = dtype_traits(DType::F16);
  // The AVX2 kernel keeps each 16-lane accumulator as two halves and gives the same bits.
  if (best_isa() == Isa::Scalar) GTEST_SKIP() << "the scalar reference sums in double";
  int differ_from_plain_order = 0;
  for (const int64_t n : {256, 2880, 80, 100, 200}) {
    for (uint64_t seed = 0; seed < 20; ++seed) {
      const auto xf = gaussian(static_cast<size_t>(n), 100 + seed, 1.0f);
      const auto yf = gaussian(static_cast<size_t>(n), 200 + seed, 1.0f);
      std::vector<uint16_t> x(static_cast<size_t>(n)), y(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) x[i] = fp32_to_fp16(xf[i]), y[i] = fp32_to_fp16(yf[i]);
      auto lanes_pairwise = [](float* l) {
        for (int w = 8; w >= 1; w /= 2)
          for (int i = 0; i < w; ++i) l[i] += l[i + w];
        return l[0];
      };
      float want;
      if (n % 16 == 0) {
        float acc[16] = {};
        for (int64_t i = 0; i < n; ++i) acc[i % 16] = std::fma(fp16_to_fp32(x[i]), fp16_to_fp32(y[i]), acc[i % 16]);
        want = lanes_pairwise(acc);
      } else {
        float a[4][16] = {};
        const int64_t np = n & ~int64_t{63};
        for (int64_t i = 0; i < np; ++i) {
          const int j = static_cast<int>((i % 64) / 16);
          a[j][i % 16] = std::fma(fp16_to_fp32(x[i]), fp16_to_fp32(y[i]), a[j][i % 16]);
        }
        float folded[16];
        for (int l = 0; l < 16; ++l) folded[l] = (a[0][l] + a[2][l]) + (a[1][l] + a[3][l]);
        double sum = lanes_pairwise(folded);
        for (int64_t i = np; i < n; ++i) sum += static_cast<double>(fp16_to_fp32(x[i]) * fp16_to_fp32(y[i]));
        want = static_cast<float>(sum);
      }
      const float got = tr.vec_dot(n, x.data(), y.data());
      EXPECT_EQ(got, want) << "n=" << n << " seed=" << seed;
      float plain = 0;
      for (int64_t i = 0; i < n; ++i) plain += fp16_to_fp32(x[i]) * fp16_to_fp32(y[i]);
      differ_from_plain_order += plain != want;
    }
  }
  EXPECT_GT(differ_from_plain_order, 10);  // the order is what is being tested
}

TEST(ArchKernels, ClampedSwigluMatchesGptOssFormula) {
  const std::vector<float> g = {-9.0f, -1.0f, 0.0f, 0.5f, 6.9f, 7.0f, 12.0f};
  const std::vector<float> u = {-10.0f, -3.0f, 1.0f, 2.0f, 7.5f, -8.0f, 0.25f};
  std::vector<float> out(g.size());
  kernels::swiglu_oai(g.data(), u.data(), out.data(), static_cast<int64_t>(g.size()), 1.702f, 7.0f);
  for (size_t i = 0; i < g.size(); ++i) {
    const double x = std::min(g[i], 7.0f), y = std::clamp(u[i], -7.0f, 7.0f);
    EXPECT_NEAR(out[i], x / (1.0 + std::exp(-1.702 * x)) * (y + 1.0), 1e-5) << i;
  }
  // The clamp acts: a gate of 12 gives what 7 gives, an up of 7.5 what 7 gives.
  float a, b;
  const float g12 = 12.0f, g7 = 7.0f, one = 1.0f;
  kernels::swiglu_oai(&g12, &one, &a, 1, 1.702f, 7.0f);
  kernels::swiglu_oai(&g7, &one, &b, 1, 1.702f, 7.0f);
  EXPECT_EQ(a, b);
}

TEST(ArchKernels, YarnRopeEqualsPlainRopeWhenOffAndFollowsTheRampWhenOn) {
  const int64_t n_rot = 64;
  std::vector<float> plain(static_cast<size_t>(n_rot)), off(plain.size()), yarn(plain.size());
  for (const int64_t pos : {0, 1, 17, 1000, 40000}) {
    kernels::rope_angles(plain.data(), n_rot, pos, 150000.0f, 0.25f);
    kernels::rope_angles(off.data(), n_rot, pos, kernels::rope_params(n_rot, 150000.0f, 0.25f, 0.0f, 1.0f, 0, 32, 1));
    EXPECT_EQ(plain, off) << pos;
  }
  // gpt-oss-like: factor 32 from 4096. ggml_rope_yarn_corr_dims: floor/ceil of
  // n_rot * ln(n_ctx_orig / (beta * 2 pi)) / (2 ln base) for beta 32 and 1.
  const float factor = 32.0f, base = 150000.0f;
  const auto p = kernels::rope_params(n_rot, base, 1.0f / factor, 1.0f, 0.5f, 4096, 32.0f, 1.0f);
  auto corr = [&](double beta) { return n_rot * std::log(4096 / (beta * 2 * M_PI)) / (2 * std::log(base)); };
  EXPECT_EQ(p.corr_low, std::max(0.0, std::floor(corr(32))));
  EXPECT_EQ(p.corr_high, std::min<double>(n_rot - 1, std::ceil(corr(1))));
  const int64_t pos = 777;
  kernels::rope_angles(yarn.data(), n_rot, pos, p);
  const double mscale = 0.5 * (1 + 0.1 * std::log(factor));
  for (int64_t i = 0; i < n_rot / 2; ++i) {
    const double theta = pos * std::pow(static_cast<double>(base), -2.0 * i / n_rot);
    const double ramp = 1 - std::clamp((i - p.corr_low) / std::max(0.001f, p.corr_high - p.corr_low), 0.0f, 1.0f);
    const double t = theta / factor * (1 - ramp) + theta * ramp;  // extrapolated below corr_low, interpolated above
    EXPECT_NEAR(yarn[2 * i], std::cos(t) * mscale, 2e-3) << i;
    EXPECT_NEAR(yarn[2 * i + 1], std::sin(t) * mscale, 2e-3) << i;
  }
}

TEST(ArchKernels, SoftmaxOverSelectedLogits) {
  MoeSpec m;
  m.n_expert = 6;
  m.n_expert_used = 2;
  m.gating = Gating::SoftmaxWeight;
  std::vector<float> logits = {0.5f, 2.0f, -1.0f, 1.5f, 0.0f, 1.9f};
  const std::vector<float> raw = logits;
  Routing r;
  route_tokens(m, logits.data(), nullptr, 1, r);
  EXPECT_EQ(r.id(0, 0), 1);
  EXPECT_EQ(r.id(0, 1), 5);
  EXPECT_NEAR(r.weight(0, 0), 1.0 / (1.0 + std::exp(1.9 - 2.0)), 1e-6);
  EXPECT_NEAR(r.weight(0, 0) + r.weight(0, 1), 1.0, 1e-6);
  EXPECT_EQ(logits, raw);  // the scores a softmax-over-selected gate reports are its logits
  // A selection bias picks on logits + bias; the weights stay the softmax of the selected raw logits.
  const std::vector<float> bias = {0, 0, 0, 0.6f, 0, 0};
  logits = raw;
  route_tokens(m, logits.data(), bias.data(), 1, r);
  EXPECT_EQ(r.id(0, 0), 3);
  EXPECT_EQ(r.id(0, 1), 1);
  EXPECT_NEAR(r.weight(0, 0), 1.0 / (1.0 + std::exp(2.0 - 1.5)), 1e-6);
}
