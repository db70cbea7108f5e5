// AVX2 body of the softmax exponential (attention.h), for CPUs without AVX-512: the scalar reference's
// operations eight elements at a time, with the reference's sixteen sum lanes kept in two registers.
// Compiled with the AVX2 flags (file name ends in _avx2.cpp) and reached only through run-time dispatch.
#include <immintrin.h>

#include "kernels/attention.h"

namespace moe::kernels {

float exp_shifted_sum_avx2(float* x, int64_t n, float mx) {
  const __m256 vmx = _mm256_set1_ps(mx), floor = _mm256_set1_ps(-104.0f), ceil = _mm256_set1_ps(88.0f);
  const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
  const __m256 ln2hi = _mm256_set1_ps(-0.693359375f), ln2lo = _mm256_set1_ps(2.12194440e-4f);
  const __m256 c7 = _mm256_set1_ps(1.9875691500e-4f), c6 = _mm256_set1_ps(1.3981999507e-3f),
               c5 = _mm256_set1_ps(8.3334519073e-3f), c4 = _mm256_set1_ps(4.1665795894e-2f),
               c3 = _mm256_set1_ps(1.6666665459e-1f), c2 = _mm256_set1_ps(5.0000001201e-1f), one = _mm256_set1_ps(1.0f);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), bias = _mm256_set1_epi32(127);
  __m256 sum[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};  // the reference's lanes 0-7 and 8-15
  for (int64_t j = 0; j < n; j += 8) {
    const int64_t left = n - j;
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(left >= 8 ? 8 : static_cast<int>(left)), lane);
    const __m256 t = _mm256_min_ps(_mm256_max_ps(_mm256_sub_ps(_mm256_maskload_ps(x + j, m), vmx), floor), ceil);
    const __m256 k = _mm256_round_ps(_mm256_mul_ps(t, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 r = _mm256_fmadd_ps(k, ln2lo, _mm256_fmadd_ps(k, ln2hi, t));
    __m256 p = _mm256_fmadd_ps(c7, r, c6);
    p = _mm256_fmadd_ps(p, r, c5);
    p = _mm256_fmadd_ps(p, r, c4);
    p = _mm256_fmadd_ps(p, r, c3);
    p = _mm256_fmadd_ps(p, r, c2);
    p = _mm256_fmadd_ps(p, r, one);
    p = _mm256_fmadd_ps(p, r, one);
    // p * 2^k as p * 2^a * 2^b with a = floor(k / 2): both factors are normal floats for k in [-150, 127]
    // and p * 2^a is exact, so the one rounding is the second product's: ldexp's (and vscalefps's) result.
    const __m256i ki = _mm256_cvtps_epi32(k);
    const __m256i a = _mm256_srai_epi32(ki, 1), b = _mm256_sub_epi32(ki, a);
    const __m256 pa = _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(a, bias), 23)));
    const __m256 e = _mm256_and_ps(_mm256_mul_ps(pa, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(b, bias), 23))),
                                   _mm256_castsi256_ps(m));
    _mm256_maskstore_ps(x + j, m, e);
    sum[(j / 8) % 2] = _mm256_add_ps(sum[(j / 8) % 2], e);
  }
  // Pairwise, as the reference: lanes i and i + 8, then i + 4, i + 2, i + 1.
  const __m256 s8 = _mm256_add_ps(sum[0], sum[1]);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace moe::kernels
