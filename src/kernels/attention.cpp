#include "kernels/attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>

#include "kernels/blas.h"
#include "kernels/cpu_features.h"
#include "kernels/exp_poly.h"
#include "kernels/gemm_f32.h"
#include "tensor/fp16.h"

namespace moe::kernels {

namespace {
bool avx512_here() { return best_isa() == Isa::Avx512; }
}  // namespace

int attention_heads_per_block(int group, int64_t m, int64_t head_dim, int64_t v_dim) {
  constexpr int64_t kMaxRows = 256, kMaxBytes = 128 << 10;
  if (m < kAttnMinStackQueries) return 1;
  const int64_t width = std::max(head_dim, v_dim) * static_cast<int64_t>(sizeof(float));
  int best = 1;
  for (int h = 1; h <= group; ++h)
    if (group % h == 0 && h * m <= kMaxRows && h * m * width <= kMaxBytes) best = h;
  return best;
}

void causal_attention_block(const CausalBlock& b, std::vector<float>& scratch) {
  use_single_threaded_blas();
  const int64_t nk = b.n_past + b.m - b.key0;  // key rows up to the last query of the block
  const int64_t vd = b.v_dim ? b.v_dim : b.head_dim;
  const int64_t vs = b.v_stride ? b.v_stride : b.kv_stride;
  const int64_t g = std::max(1, b.heads);
  const int64_t rows = b.m * g;  // row r: query r / g of head r % g
  // A chunk's scores for all rows stay within 64K floats (256 KB).
  const int64_t chunk = std::max<int64_t>(64, std::min<int64_t>(kAttnKeyChunk, (65536 / rows) & ~int64_t{15}));
  const int64_t kc_max = std::min(nk, chunk);
  const bool stacked = g > 1;
  // Our fp32 GEMM (gemm_f32.h) where it runs AVX-512, on the chunk's keys transposed into scratch (the
  // products need a row of k^T per step); OpenBLAS's sgemm elsewhere.
  const bool own_gemm = gemm_f32_fast_here();
  const int64_t ldkt = (kc_max + 15) & ~int64_t{15};
  const size_t need = static_cast<size_t>(rows * kc_max + 2 * rows + (stacked ? rows * (b.head_dim + vd) : 0) +
                                          (own_gemm ? b.head_dim * ldkt : 0));
  if (scratch.size() < need) scratch.resize(need);
  float* s = scratch.data();
  float* row_max = s + rows * kc_max;
  float* row_sum = row_max + rows;  // of exp(score - row_max) over the keys so far (and the sink)
  // The query and output matrices: the block's own rows for one head, packed copies for a stack.
  const float* qa = b.q;
  int64_t lda = b.q_stride;
  float* oa = b.out;
  int64_t ldo = b.out_stride;
  float* kt = row_sum + rows + (stacked ? rows * (b.head_dim + vd) : 0);  // head_dim x kc, ldkt apart
  if (stacked) {
    float* qp = row_sum + rows;
    oa = qp + rows * b.head_dim;
    for (int64_t i = 0; i < b.m; ++i)
      for (int64_t h = 0; h < g; ++h)
        std::copy_n(b.q + i * b.q_stride + h * b.q_head_stride, b.head_dim, qp + (i * g + h) * b.head_dim);
    qa = qp;
    lda = b.head_dim;
    ldo = vd;
  }
  const auto i32 = [](int64_t v) { return static_cast<int>(v); };
  // Query i (position n_past + i) sees key rows [lo(i), hi(i)) relative to key0; both grow with i.
  const auto hi = [&](int64_t i) { return b.n_past + i - b.key0 + 1; };
  const auto lo = [&](int64_t i) { return b.window > 0 ? std::max(b.key0, b.n_past + i - b.window + 1) - b.key0 : 0; };
  for (int64_t r = 0; r < rows; ++r) {
    const float sink = b.head_sinks ? b.head_sinks[r % g] : b.sink;
    row_max[r] = b.has_sink ? sink : -INFINITY;
    row_sum[r] = b.has_sink ? 1.0f : 0.0f;  // the sink's exp(sink - max) with max = sink
    std::fill(oa + r * ldo, oa + r * ldo + vd, 0.0f);
  }
  for (int64_t c0 = 0; c0 < nk; c0 += chunk) {
    const int64_t kc = std::min(chunk, nk - c0);
    // The queries that see a key of this chunk: hi(i) > c0 and lo(i) < c0 + kc; their rows are
    // contiguous (token-major stacking).
    int64_t ia = 0, ib = b.m;
    while (ia < b.m && hi(ia) <= c0) ++ia;
    while (ib > ia && lo(ib - 1) >= c0 + kc) --ib;
    if (ia >= ib) continue;
    const int64_t ra = ia * g, rb = ib * g;
    if (own_gemm) {
      transpose_f32(kc, b.head_dim, b.k + c0 * b.kv_stride, b.kv_stride, kt, ldkt);
      gemm_f32({.m = rb - ra, .n = kc, .k = b.head_dim, .a = qa + ra * lda, .lda = lda, .b = kt, .ldb = ldkt, .c = s,
                .ldc = kc, .accumulate = false, .scale = b.scale});
    } else {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, i32(rb - ra), i32(kc), i32(b.head_dim), b.scale,
                  qa + ra * lda, i32(lda), b.k + c0 * b.kv_stride, i32(b.kv_stride), 0.0f, s, i32(kc));
    }
    for (int64_t r = ra; r < rb; ++r) {
      const int64_t i = r / g;
      float* row = s + (r - ra) * kc;
      const int64_t a = std::max(lo(i), c0) - c0, e = std::min(hi(i), c0 + kc) - c0;  // a < e
      const float cmax = max_f32(row + a, e - a);
      if (cmax > row_max[r]) {
        // The running maximum rises: what was summed (and accumulated in out) so far shrinks by alpha.
        if (row_max[r] != -INFINITY) {
          const float alpha = std::exp(row_max[r] - cmax);
          row_sum[r] *= alpha;
          float* o = oa + r * ldo;
          for (int64_t d = 0; d < vd; ++d) o[d] *= alpha;
        }
        row_max[r] = cmax;
      }
      row_sum[r] += exp_shifted_sum(row + a, e - a, row_max[r]);
      std::fill(row, row + a, 0.0f);  // masked keys weigh nothing in the product below
      std::fill(row + e, row + kc, 0.0f);
    }
    if (own_gemm)
      gemm_f32({.m = rb - ra, .n = vd, .k = kc, .a = s, .lda = kc, .b = b.v + c0 * vs, .ldb = vs, .c = oa + ra * ldo,
                .ldc = ldo, .accumulate = true});
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, i32(rb - ra), i32(vd), i32(kc), 1.0f, s, i32(kc),
                  b.v + c0 * vs, i32(vs), 1.0f, oa + ra * ldo, i32(ldo));
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* o = oa + r * ldo;
    float* dst = stacked ? b.out + (r / g) * b.out_stride + (r % g) * b.out_head_stride : oa + r * ldo;
    const float inv = static_cast<float>(1.0 / row_sum[r]);
    for (int64_t d = 0; d < vd; ++d) dst[d] = o[d] * inv;
  }
}

float exp_shifted_sum_ref(float* x, int64_t n, float mx) {
  float lane[16] = {};
  for (int64_t j = 0; j < n; ++j) {
    x[j] = exp_poly(x[j] - mx);
    lane[j % 16] += x[j];
  }
  for (int w = 8; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) lane[i] += lane[i + w];
  return lane[0];
}

float exp_shifted_sum(float* x, int64_t n, float mx) {
  switch (best_isa()) {
    case Isa::Avx512: return exp_shifted_sum_avx512(x, n, mx);
    case Isa::Avx2: return exp_shifted_sum_avx2(x, n, mx);
    default: return exp_shifted_sum_ref(x, n, mx);
  }
}

float max_f32(const float* x, int64_t n) {
  // Eight independent maxima (the compiler keeps them in registers); the maximum is the same in any order.
  float m[8];
  for (int i = 0; i < 8; ++i) m[i] = x[0];
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int i = 0; i < 8; ++i) m[i] = m[i] < x[j + i] ? x[j + i] : m[i];
  for (; j < n; ++j) m[0] = m[0] < x[j] ? x[j] : m[0];
  for (int i = 1; i < 8; ++i) m[0] = m[0] < m[i] ? m[i] : m[0];
  return m[0];
}

void attn_scores_f16_ref(const F16AttnRun& r, float scale) {
  for (int g = 0; g < r.nh; ++g) {
    const float* q = r.q + g * r.q_stride;
    for (int64_t j = 0; j < r.n; ++j) {
      const uint16_t* k = r.k + j * r.kv_stride;
      float lane[16] = {};
      for (int64_t d = 0; d < r.head_dim; ++d) lane[d % 16] = std::fma(q[d], fp16_to_fp32(k[d]), lane[d % 16]);
      // Pairwise: lanes i and i + 8, then i + 4, i + 2, i + 1 (the AVX-512 reduction's order).
      for (int w = 8; w >= 1; w /= 2)
        for (int i = 0; i < w; ++i) lane[i] += lane[i + w];
      r.scores[g * r.scores_stride + j] = lane[0] * scale;
    }
  }
}

void attn_values_f16_ref(const F16AttnRun& r, float* acc) {
  const int64_t vd = r.vdim();
  for (int64_t j = 0; j < r.n; ++j) {
    const uint16_t* v = r.v + j * r.vstride();
    for (int g = 0; g < r.nh; ++g) {
      const float p = r.scores[g * r.scores_stride + j];
      float* a = acc + g * vd;
      for (int64_t d = 0; d < vd; ++d) a[d] = std::fma(p, fp16_to_fp32(v[d]), a[d]);
    }
  }
}

namespace {
bool avx512_attention(const F16AttnRun& r) { return avx512_here() && r.head_dim % 16 == 0 && r.vdim() % 16 == 0; }
}  // namespace

void attn_scores_f16(const F16AttnRun& r, float scale) {
  if (avx512_attention(r))
    attn_scores_f16_avx512(r, scale);
  else
    attn_scores_f16_ref(r, scale);
}

void attn_values_f16(const F16AttnRun& r, float* acc) {
  if (avx512_attention(r))
    attn_values_f16_avx512(r, acc);
  else
    attn_values_f16_ref(r, acc);
}

}  // namespace moe::kernels
