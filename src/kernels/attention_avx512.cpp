// AVX-512 bodies of the fp16-cache decode attention kernels (attention.h). Compiled with the AVX-512
// flags (file name ends in _avx512.cpp) and reached only through run-time dispatch.
// GCC 12 warns about the intentionally undefined upper halves in its own cast intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>

#include "kernels/attention.h"
#include "kernels/exp_poly.h"

namespace moe::kernels {

namespace {
inline __m512 widen16(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
// Lanes i and i + 8, then i + 4, i + 2, i + 1 (attn_scores_f16_ref adds in this order).
inline float reduce_pairwise(__m512 v) {
  __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  b = _mm_add_ps(b, _mm_movehl_ps(b, b));
  b = _mm_add_ss(b, _mm_movehdup_ps(b));
  return _mm_cvtss_f32(b);
}
}  // namespace

// exp_shifted_sum_ref's operations, sixteen elements at a time (the tail under a mask, its other lanes
// adding zero).
float exp_shifted_sum_avx512(float* x, int64_t n, float mx) {
  const __m512 vmx = _mm512_set1_ps(mx);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = n - j >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - j)) - 1);
    const __m512 e = exp_poly_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + j), vmx), m);
    _mm512_mask_storeu_ps(x + j, m, e);
    sum = _mm512_add_ps(sum, e);
  }
  return reduce_pairwise(sum);
}

// Rows up to this many values are widened once into a buffer when several heads share them (an MLA
// latent row serves every head of the layer): the same values and the same order of operations, so the
// same bits, with one conversion per row instead of one per head.
constexpr int64_t kWidenOnce = 1024;

void attn_scores_f16_avx512(const F16AttnRun& r, float scale) {
  const int64_t hd = r.head_dim;
  alignas(64) float kw[kWidenOnce];
  const bool once = r.nh >= 4 && hd <= kWidenOnce;
  for (int64_t j = 0; j < r.n; ++j) {
    const uint16_t* k = r.k + j * r.kv_stride;
    if (once) {
      for (int64_t d = 0; d < hd; d += 16) _mm512_store_ps(kw + d, widen16(k + d));
      for (int g = 0; g < r.nh; ++g) {
        const float* q = r.q + g * r.q_stride;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t d = 0; d < hd; d += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), _mm512_load_ps(kw + d), acc);
        r.scores[g * r.scores_stride + j] = reduce_pairwise(acc) * scale;
      }
      continue;
    }
    for (int g = 0; g < r.nh; ++g) {
      const float* q = r.q + g * r.q_stride;
      __m512 acc = _mm512_setzero_ps();
      for (int64_t d = 0; d < hd; d += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), widen16(k + d), acc);
      r.scores[g * r.scores_stride + j] = reduce_pairwise(acc) * scale;
    }
  }
}

// Several heads over the same values (a GQA group, an MLA layer's heads over the latents): keys in
// blocks of 16 (their rows stay in L1), and per head 128 accumulator values in registers across the
// block, so the accumulators are loaded and stored once per block instead of once per key. Each
// acc[g][d] still adds p_j v_j[d] for j = 0, 1, ... in order: the same bits as the plain loop.
void attn_values_f16_avx512(const F16AttnRun& r, float* acc) {
  const int64_t hd = r.vdim();
  const int64_t vs = r.vstride();
  if (r.nh < 4) {
    for (int64_t j = 0; j < r.n; ++j) {
      const uint16_t* v = r.v + j * vs;
      for (int g = 0; g < r.nh; ++g) {
        const __m512 p = _mm512_set1_ps(r.scores[g * r.scores_stride + j]);
        float* a = acc + g * hd;
        for (int64_t d = 0; d < hd; d += 16)
          _mm512_storeu_ps(a + d, _mm512_fmadd_ps(p, widen16(v + d), _mm512_loadu_ps(a + d)));
      }
    }
    return;
  }
  constexpr int64_t kKeys = 16;
  for (int64_t j0 = 0; j0 < r.n; j0 += kKeys) {
    const int64_t j1 = std::min(r.n, j0 + kKeys);
    for (int g = 0; g < r.nh; ++g) {
      const float* sc = r.scores + g * r.scores_stride;
      float* a = acc + g * hd;
      int64_t d = 0;
      for (; d + 128 <= hd; d += 128) {
        __m512 x0 = _mm512_loadu_ps(a + d), x1 = _mm512_loadu_ps(a + d + 16), x2 = _mm512_loadu_ps(a + d + 32),
               x3 = _mm512_loadu_ps(a + d + 48), x4 = _mm512_loadu_ps(a + d + 64), x5 = _mm512_loadu_ps(a + d + 80),
               x6 = _mm512_loadu_ps(a + d + 96), x7 = _mm512_loadu_ps(a + d + 112);
        for (int64_t j = j0; j < j1; ++j) {
          const __m512 p = _mm512_set1_ps(sc[j]);
          const uint16_t* v = r.v + j * vs + d;
          x0 = _mm512_fmadd_ps(p, widen16(v), x0);
          x1 = _mm512_fmadd_ps(p, widen16(v + 16), x1);
          x2 = _mm512_fmadd_ps(p, widen16(v + 32), x2);
          x3 = _mm512_fmadd_ps(p, widen16(v + 48), x3);
          x4 = _mm512_fmadd_ps(p, widen16(v + 64), x4);
          x5 = _mm512_fmadd_ps(p, widen16(v + 80), x5);
          x6 = _mm512_fmadd_ps(p, widen16(v + 96), x6);
          x7 = _mm512_fmadd_ps(p, widen16(v + 112), x7);
        }
        _mm512_storeu_ps(a + d, x0);
        _mm512_storeu_ps(a + d + 16, x1);
        _mm512_storeu_ps(a + d + 32, x2);
        _mm512_storeu_ps(a + d + 48, x3);
        _mm512_storeu_ps(a + d + 64, x4);
        _mm512_storeu_ps(a + d + 80, x5);
        _mm512_storeu_ps(a + d + 96, x6);
        _mm512_storeu_ps(a + d + 112, x7);
      }
      for (; d < hd; d += 16) {
        __m512 x = _mm512_loadu_ps(a + d);
        for (int64_t j = j0; j < j1; ++j) x = _mm512_fmadd_ps(_mm512_set1_ps(sc[j]), widen16(r.v + j * vs + d), x);
        _mm512_storeu_ps(a + d, x);
      }
    }
  }
}

}  // namespace moe::kernels
