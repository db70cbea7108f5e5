// AVX-512 (F/BW/VL/DQ/VNNI/BF16) dot-product kernels. The hottest formats (Q4_0, Q8_0, Q4_K, Q6_K and
// the float types) get 512-bit kernels; the rest reuse the shared 256-bit kernels, which in this file
// compile to vpdpbusd (AVX512-VNNI on ymm registers) where they use the plain byte dot product.
// GCC 12 warns about the intentionally undefined upper halves in its own cast intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define MOE_SIMD_NS avx512
#include "kernels/quant_x86_kernels.h"
#include "kernels/quant_dispatch.h"

namespace moe::quant {
namespace avx512 {
namespace {

float vec_dot_f32_512(int64_t n, const void* xv, const void* yv) {
  const float* x = static_cast<const float*>(xv);
  const float* y = static_cast<const float*>(yv);
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(y + i + 16), a1);
    a2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 32), _mm512_loadu_ps(y + i + 32), a2);
    a3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 48), _mm512_loadu_ps(y + i + 48), a3);
  }
  for (; i + 16 <= n; i += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), a0);
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1u);
    a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i), a1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

inline __m512 load_f16x16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline __m512 load_f16x16_masked(const uint16_t* p, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)); }

float vec_dot_f16_512(int64_t n, const void* xv, const void* yv) {
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  const uint16_t* y = static_cast<const uint16_t*>(yv);
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_fmadd_ps(load_f16x16(x + i), load_f16x16(y + i), a0);
    a1 = _mm512_fmadd_ps(load_f16x16(x + i + 16), load_f16x16(y + i + 16), a1);
    a2 = _mm512_fmadd_ps(load_f16x16(x + i + 32), load_f16x16(y + i + 32), a2);
    a3 = _mm512_fmadd_ps(load_f16x16(x + i + 48), load_f16x16(y + i + 48), a3);
  }
  for (; i + 16 <= n; i += 16) a0 = _mm512_fmadd_ps(load_f16x16(x + i), load_f16x16(y + i), a0);
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1u);
    a1 = _mm512_fmadd_ps(load_f16x16_masked(x + i, m), load_f16x16_masked(y + i, m), a1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// bf16 pairs via vdpbf16ps: each bf16 x bf16 product is exact in fp32; pairs are accumulated in fp32.
float vec_dot_bf16_512(int64_t n, const void* xv, const void* yv) {
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  const uint16_t* y = static_cast<const uint16_t*>(yv);
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(x + i), (__m512bh)_mm512_loadu_si512(y + i));
    a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(x + i + 32), (__m512bh)_mm512_loadu_si512(y + i + 32));
  }
  for (; i + 32 <= n; i += 32) {
    a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(x + i), (__m512bh)_mm512_loadu_si512(y + i));
  }
  if (i < n) {
    const __mmask32 m = static_cast<__mmask32>((1ull << (n - i)) - 1ull);
    a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_maskz_loadu_epi16(m, x + i), (__m512bh)_mm512_maskz_loadu_epi16(m, y + i));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

inline __m512i join256(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }

// Signed x signed byte dot product on zmm: vpdpbusd needs an unsigned left operand, so use |x| and move
// x's sign onto y.
inline __m512i dot_s8s8_512(__m512i x, __m512i y) {
  const __mmask64 neg = _mm512_movepi8_mask(x);
  const __m512i ys = _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y);
  return _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(x), ys);
}

// Two legacy blocks per zmm: lanes 0..7 belong to block b, 8..15 to block b+1.
inline __m512 pair_scale(float d0, float d1) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(d0)), _mm256_set1_ps(d1), 1);
}

float vec_dot_q8_0_512(int64_t n, const void* xv, const void* yv) {
  const auto* x = static_cast<const BlockQ8_0*>(xv);
  const auto* y = static_cast<const BlockQ8_0*>(yv);
  const int64_t nb = n / kQK;
  __m512 acc = _mm512_setzero_ps();
  int64_t b = 0;
  for (; b + 1 < nb; b += 2) {
    const __m512i qx = join256(load256(x[b].qs), load256(x[b + 1].qs));
    const __m512i qy = join256(load256(y[b].qs), load256(y[b + 1].qs));
    const __m512 d = pair_scale(half_to_float(x[b].d) * half_to_float(y[b].d), half_to_float(x[b + 1].d) * half_to_float(y[b + 1].d));
    acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(dot_s8s8_512(qx, qy)), acc);
  }
  float s = _mm512_reduce_add_ps(acc);
  if (b < nb) s += vec_dot_q8_0(kQK, x + b, y + b);
  return s;
}

float vec_dot_q4_0_512(int64_t n, const void* xv, const void* yv) {
  const auto* x = static_cast<const BlockQ4_0*>(xv);
  const auto* y = static_cast<const BlockQ8_0*>(yv);
  const int64_t nb = n / kQK;
  const __m512i eight = _mm512_set1_epi8(8);
  __m512 acc = _mm512_setzero_ps();
  int64_t b = 0;
  for (; b + 1 < nb; b += 2) {
    const __m512i qx = _mm512_sub_epi8(join256(nibbles_32(x[b].qs), nibbles_32(x[b + 1].qs)), eight);
    const __m512i qy = join256(load256(y[b].qs), load256(y[b + 1].qs));
    const __m512 d = pair_scale(half_to_float(x[b].d) * half_to_float(y[b].d), half_to_float(x[b + 1].d) * half_to_float(y[b + 1].d));
    acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(dot_s8s8_512(qx, qy)), acc);
  }
  float s = _mm512_reduce_add_ps(acc);
  if (b < nb) s += vec_dot_q4_0(kQK, x + b, y + b);
  return s;
}

inline __m256i fold512(__m512i v) { return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1)); }

float vec_dot_q4_K_512(int64_t n, const void* xv, const void* yv) {
  const auto* xs = static_cast<const BlockQ4_K*>(xv);
  const auto* ys = static_cast<const BlockQ8_K*>(yv);
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  __m256 acc = _mm256_setzero_ps();
  float mins = 0;
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const BlockQ4_K& x = xs[b];
    const BlockQ8_K& y = ys[b];
    uint8_t sc[8], mn[8];
    k4_scales(x.scales, sc, mn);
    __m512i isum = _mm512_setzero_si512();
    for (int c = 0; c < 4; ++c) {
      // One zmm covers 64 elements: sub-block 2c (low nibbles) then 2c+1 (high nibbles).
      const __m256i q = load256(x.qs + 32 * c);
      const __m512i u = join256(_mm256_and_si256(q, m4), _mm256_and_si256(_mm256_srli_epi16(q, 4), m4));
      const __m512i scale = join256(_mm256_set1_epi16(sc[2 * c]), _mm256_set1_epi16(sc[2 * c + 1]));
      const __m512i p = _mm512_maddubs_epi16(u, _mm512_loadu_si512(y.qs + 64 * c));
      isum = _mm512_add_epi32(isum, _mm512_madd_epi16(p, scale));
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(x.d) * y.d), _mm256_cvtepi32_ps(fold512(isum)), acc);
    mins += (half_to_float(x.dmin) * y.d) * static_cast<float>(k4_min_sum(mn, y.bsums));
  }
  return hsum_ps(acc) - mins;
}

float vec_dot_q6_K_512(int64_t n, const void* xv, const void* yv) {
  const auto* xs = static_cast<const BlockQ6_K*>(xv);
  const auto* ys = static_cast<const BlockQ8_K*>(yv);
  const __m512i m4 = _mm512_set1_epi8(0x0F), three = _mm512_set1_epi8(3);
  // Scale index per int16 lane: each 128-bit lane (16 elements) of a zmm uses one 16-element scale.
  alignas(64) static const int16_t kIdx[4][32] = {
      {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
      {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
      {8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9, 10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
      {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13, 14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15},
  };
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const BlockQ6_K& x = xs[b];
    const BlockQ8_K& y = ys[b];
    const __m256i scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x.scales)));
    const __m512i sc512 = _mm512_castsi256_si512(scales16);
    const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(load256(y.bsums), scales16), 5);
    __m512i isum = _mm512_setzero_si512();
    for (int g = 0; g < 2; ++g) {
      const __m512i L = _mm512_loadu_si512(x.ql + 64 * g);  // [ql 0..31 | ql 32..63]
      const __m256i h = load256(x.qh + 32 * g);
      const __m512i h01 = join256(h, _mm256_srli_epi16(h, 2));
      const __m512i h23 = join256(_mm256_srli_epi16(h, 4), _mm256_srli_epi16(h, 6));
      const __m512i u01 = _mm512_or_si512(_mm512_and_si512(L, m4), _mm512_slli_epi16(_mm512_and_si512(h01, three), 4));
      const __m512i u23 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(L, 4), m4),
                                          _mm512_slli_epi16(_mm512_and_si512(h23, three), 4));
      const __m512i s01 = _mm512_permutexvar_epi16(_mm512_load_si512(kIdx[2 * g]), sc512);
      const __m512i s23 = _mm512_permutexvar_epi16(_mm512_load_si512(kIdx[2 * g + 1]), sc512);
      isum = _mm512_add_epi32(isum, _mm512_madd_epi16(_mm512_maddubs_epi16(u01, _mm512_loadu_si512(y.qs + 128 * g)), s01));
      isum = _mm512_add_epi32(isum, _mm512_madd_epi16(_mm512_maddubs_epi16(u23, _mm512_loadu_si512(y.qs + 128 * g + 64)), s23));
    }
    const __m256i total = _mm256_sub_epi32(fold512(isum), offset);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(x.d) * y.d), _mm256_cvtepi32_ps(total), acc);
  }
  return hsum_ps(acc);
}

}  // namespace
}  // namespace avx512

VecDotFn vec_dot_avx512_for(DType t) {
  switch (t) {
    case DType::F32: return avx512::vec_dot_f32_512;
    case DType::F16: return avx512::vec_dot_f16_512;
    case DType::BF16: return avx512::vec_dot_bf16_512;
    case DType::Q4_0: return avx512::vec_dot_q4_0_512;
    case DType::Q4_1: return avx512::vec_dot_q4_1;
    case DType::Q5_0: return avx512::vec_dot_q5_0;
    case DType::Q5_1: return avx512::vec_dot_q5_1;
    case DType::Q8_0: return avx512::vec_dot_q8_0_512;
    case DType::Q2_K: return avx512::vec_dot_q2_K;
    case DType::Q3_K: return avx512::vec_dot_q3_K;
    case DType::Q4_K: return avx512::vec_dot_q4_K_512;
    case DType::Q5_K: return avx512::vec_dot_q5_K;
    case DType::Q6_K: return avx512::vec_dot_q6_K_512;
    default: return nullptr;
  }
}

}  // namespace moe::quant
