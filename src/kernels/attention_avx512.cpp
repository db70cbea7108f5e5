// AVX-512 bodies of the fp16-cache decode attention kernels (attention.h). Compiled with the AVX-512
// flags (file name ends in _avx512.cpp) and reached only through run-time dispatch.
// GCC 12 warns about the intentionally undefined upper halves in its own cast intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "kernels/attention.h"

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

void attn_scores_f16_avx512(const F16AttnRun& r, float scale) {
  const int64_t hd = r.head_dim;
  for (int64_t j = 0; j < r.n; ++j) {
    const uint16_t* k = r.k + j * r.kv_stride;
    for (int g = 0; g < r.nh; ++g) {
      const float* q = r.q + g * r.q_stride;
      __m512 acc = _mm512_setzero_ps();
      for (int64_t d = 0; d < hd; d += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), widen16(k + d), acc);
      r.scores[g * r.scores_stride + j] = reduce_pairwise(acc) * scale;
    }
  }
}

void attn_values_f16_avx512(const F16AttnRun& r, float* acc) {
  const int64_t hd = r.vdim();
  const int64_t vs = r.vstride();
  for (int64_t j = 0; j < r.n; ++j) {
    const uint16_t* v = r.v + j * vs;
    for (int g = 0; g < r.nh; ++g) {
      const __m512 p = _mm512_set1_ps(r.scores[g * r.scores_stride + j]);
      float* a = acc + g * hd;
      for (int64_t d = 0; d < hd; d += 16)
        _mm512_storeu_ps(a + d, _mm512_fmadd_ps(p, widen16(v + d), _mm512_loadu_ps(a + d)));
    }
  }
}

}  // namespace moe::kernels
