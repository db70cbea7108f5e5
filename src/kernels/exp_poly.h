// Our exponential, shared by the softmax of prompt attention (attention.h: exp_shifted_sum) and SwiGLU
// (ops.h): range reduction by ln 2 in two parts, a degree-7 polynomial (Cephes expf's minimax
// coefficients on [-ln2 / 2, ln2 / 2]), then an exact scaling by 2^k; within 2 ulp of exp on the
// clamped range [-104, 88]. The scalar form and the AVX-512 form (for files compiled with AVX-512)
// perform the same operations in the same order, so they give the same bits.
#pragma once
#include <algorithm>
#include <cmath>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace moe::kernels {

inline constexpr float kExpLog2e = 1.44269504088896341f;
inline constexpr float kExpLn2Hi = 0.693359375f;  // ln 2 = kExpLn2Hi + kExpLn2Lo; kExpLn2Hi has 9 significant bits
inline constexpr float kExpLn2Lo = -2.12194440e-4f;
inline constexpr float kExpC[8] = {1.0f, 1.0f, 5.0000001201e-1f, 1.6666665459e-1f, 4.1665795894e-2f, 8.3334519073e-3f,
                                   1.3981999507e-3f, 1.9875691500e-4f};
inline constexpr float kExpFloor = -104.0f, kExpCeil = 88.0f;

inline float exp_poly(float x) {
  x = std::min(std::max(x, kExpFloor), kExpCeil);
  const float k = std::nearbyint(x * kExpLog2e);
  float r = std::fma(k, -kExpLn2Hi, x);
  r = std::fma(k, -kExpLn2Lo, r);
  float p = kExpC[7];
  for (int c = 6; c >= 0; --c) p = std::fma(p, r, kExpC[c]);
  return std::ldexp(p, static_cast<int>(k));
}

#ifdef __AVX512F__
// exp_poly on 16 lanes (lanes outside m: 0).
inline __m512 exp_poly_avx512(__m512 x, __mmask16 m = 0xFFFF) {
  const __m512 t = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(kExpFloor)), _mm512_set1_ps(kExpCeil));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(t, _mm512_set1_ps(kExpLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fmadd_ps(k, _mm512_set1_ps(-kExpLn2Lo), _mm512_fmadd_ps(k, _mm512_set1_ps(-kExpLn2Hi), t));
  __m512 p = _mm512_set1_ps(kExpC[7]);
  for (int c = 6; c >= 0; --c) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpC[c]));
  return _mm512_maskz_scalef_ps(m, p, k);
}
#endif

}  // namespace moe::kernels
