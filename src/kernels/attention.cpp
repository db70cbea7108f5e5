#include "kernels/attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>

#include "kernels/blas.h"
#include "kernels/cpu_features.h"
#include "tensor/fp16.h"

namespace moe::kernels {

void causal_attention_block(const CausalBlock& b, std::vector<float>& scratch) {
  use_single_threaded_blas();
  const int64_t nk = b.n_past + b.m - b.key0;  // key rows up to the last query of the block
  const int64_t vd = b.v_dim ? b.v_dim : b.head_dim;
  const int64_t vs = b.v_stride ? b.v_stride : b.kv_stride;
  const size_t need = static_cast<size_t>(b.m * nk + b.m);
  if (scratch.size() < need) scratch.resize(need);
  float* s = scratch.data();
  float* inv = s + b.m * nk;
  const auto i32 = [](int64_t v) { return static_cast<int>(v); };
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, i32(b.m), i32(nk), i32(b.head_dim), b.scale, b.q,
              i32(b.q_stride), b.k, i32(b.kv_stride), 0.0f, s, i32(nk));
  // Row-wise softmax over the visible keys; the masked parts are zeroed so the second product can run
  // over all nk keys for every row. The normalisation is applied after it, as 1 / sum in double.
  for (int64_t i = 0; i < b.m; ++i) {
    float* row = s + i * nk;
    const int64_t p = b.n_past + i;
    const int64_t lo = b.window > 0 ? std::max(b.key0, p - b.window + 1) - b.key0 : 0;
    const int64_t hi = p - b.key0 + 1;
    float mx = *std::max_element(row + lo, row + hi);
    if (b.has_sink) mx = std::max(mx, b.sink);
    double sum = b.has_sink ? std::exp(b.sink - mx) : 0.0;
    for (int64_t j = lo; j < hi; ++j) {
      row[j] = std::exp(row[j] - mx);
      sum += row[j];
    }
    std::fill(row, row + lo, 0.0f);
    std::fill(row + hi, row + nk, 0.0f);
    inv[i] = static_cast<float>(1.0 / sum);
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, i32(b.m), i32(vd), i32(nk), 1.0f, s, i32(nk), b.v, i32(vs),
              0.0f, b.out, i32(b.out_stride));
  for (int64_t i = 0; i < b.m; ++i) {
    float* o = b.out + i * b.out_stride;
    const float r = inv[i];
    for (int64_t d = 0; d < vd; ++d) o[d] *= r;
  }
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
bool avx512_attention(const F16AttnRun& r) {
  return best_isa() == Isa::Avx512 && r.head_dim % 16 == 0 && r.vdim() % 16 == 0;
}
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
