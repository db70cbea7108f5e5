// 256-bit x86 dot-product kernels shared by vec_dot_avx2.cpp and vec_dot_avx512.cpp. Include this only
// from those files, after defining MOE_SIMD_NS (the namespace the kernels are placed in, so the two
// builds do not collide). When the including file is compiled with AVX512-VNNI + VL, the unsigned x
// signed byte dot product uses vpdpbusd instead of the vpmaddubsw / vpmaddwd pair.
//
// Arithmetic contract (what the tests check against the scalar reference): every block's (or
// super-block's) integer dot product is computed exactly; it is then multiplied by the combined float
// scale, as llama.cpp does. Only the order in which the per-block float terms are summed differs from
// the reference, which is why SIMD-vs-reference tolerances are relative ~1e-5, not zero.
#pragma once
#ifndef MOE_SIMD_NS
#error "define MOE_SIMD_NS before including quant_x86_kernels.h"
#endif
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/quant_blocks.h"

namespace moe::quant::MOE_SIMD_NS {

inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

inline float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline int hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// acc + sum of u[4i..4i+3] * s[4i..4i+3] per 32-bit lane; u unsigned bytes, s signed bytes. With the
// pmaddubsw route each pair sum must fit int16, which holds for all our operands (|u| <= 128 and
// |s| <= 127 give at most 32512).
inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(acc, u, s);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}
// Signed x signed via |x| and y with x's sign applied.
inline __m256i dot_s8s8(__m256i acc, __m256i x, __m256i y) {
  return dot_u8s8(acc, _mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}
// sum over pairs of (u*s) * scale16, per 32-bit lane: scale16 holds one int16 per 16-bit lane.
inline __m256i dot_u8s8_scaled(__m256i u, __m256i s, __m256i scale16) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scale16);
}

// 32 nibbles of a legacy block as bytes: low nibbles (elements 0..15) in the low 128 bits, high
// nibbles (elements 16..31) in the high 128 bits.
inline __m256i nibbles_32(const uint8_t* qs) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i m = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m), _mm_and_si128(raw, m));
}
// 0xFF in byte j where bit j of the 32-bit little-endian mask is set.
inline __m256i bits_to_bytes(const uint8_t* bits4) {
  uint32_t b;
  std::memcpy(&b, bits4, 4);
  const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2,
                                        3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i sel = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ULL));
  const __m256i v = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(b)), shuf), sel);
  return _mm256_cmpeq_epi8(v, sel);
}
inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// ---- legacy blocks ------------------------------------------------------------------------------

inline float vec_dot_q8_0(int64_t n, const void* xv, const void* yv) {
  const auto* x = static_cast<const BlockQ8_0*>(xv);
  const auto* y = static_cast<const BlockQ8_0*>(yv);
  const int64_t nb = n / kQK;
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 1 < nb; b += 2) {
    const __m256i s0 = dot_s8s8(_mm256_setzero_si256(), load256(x[b].qs), load256(y[b].qs));
    const __m256i s1 = dot_s8s8(_mm256_setzero_si256(), load256(x[b + 1].qs), load256(y[b + 1].qs));
    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(x[b].d) * half_to_float(y[b].d)), _mm256_cvtepi32_ps(s0), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(x[b + 1].d) * half_to_float(y[b + 1].d)),
                           _mm256_cvtepi32_ps(s1), acc1);
  }
  for (; b < nb; ++b) {
    const __m256i s0 = dot_s8s8(_mm256_setzero_si256(), load256(x[b].qs), load256(y[b].qs));
    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(x[b].d) * half_to_float(y[b].d)), _mm256_cvtepi32_ps(s0), acc0);
  }
  return hsum_ps(_mm256_add_ps(acc0, acc1));
}

inline float vec_dot_q4_0(int64_t n, const void* xv, const void* yv) {
  const auto* x = static_cast<const BlockQ4_0*>(xv);
  const auto* y = static_cast<const BlockQ8_0*>(yv);
  const int64_t nb = n / kQK;
  const __m256i eight = _mm256_set1_epi8(8);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 1 < nb; b += 2) {
    const __m256i q0 = _mm256_sub_epi8(nibbles_32(x[b].qs), eight);
    const __m256i q1 = _mm256_sub_epi8(nibbles_32(x[b + 1].qs), eight);
    const __m256i s0 = dot_s8s8(_mm256_setzero_si256(), q0, load256(y[b].qs));
    const __m256i s1 = dot_s8s8(_mm256_setzero_si256(), q1, load256(y[b + 1].qs));
    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(x[b].d) * half_to_float(y[b].d)), _mm256_cvtepi32_ps(s0), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(x[b + 1].d) * half_to_float(y[b + 1].d)),
                           _mm256_cvtepi32_ps(s1), acc1);
  }
  for (; b < nb; ++b) {
    const __m256i q0 = _mm256_sub_epi8(nibbles_32(x[b].qs), eight);
    const __m256i s0 = dot_s8s8(_mm256_setzero_si256(), q0, load256(y[b].qs));
    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(x[b].d) * half_to_float(y[b].d)), _mm256_cvtepi32_ps(s0), acc0);
  }
  return hsum_ps(_mm256_add_ps(acc0, acc1));
}

inline float vec_dot_q4_1(int64_t n, const void* xv, const void* yv) {
  const auto* x = static_cast<const BlockQ4_1*>(xv);
  const auto* y = static_cast<const BlockQ8_1*>(yv);
  const int64_t nb = n / kQK;
  __m256 acc = _mm256_setzero_ps();
  float offsets = 0;
  for (int64_t b = 0; b < nb; ++b) {
    const __m256i s = dot_u8s8(_mm256_setzero_si256(), nibbles_32(x[b].qs), load256(y[b].qs));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(x[b].d) * half_to_float(y[b].d)), _mm256_cvtepi32_ps(s), acc);
    offsets += half_to_float(x[b].m) * half_to_float(y[b].s);
  }
  return hsum_ps(acc) + offsets;
}

inline float vec_dot_q5_0(int64_t n, const void* xv, const void* yv) {
  const auto* x = static_cast<const BlockQ5_0*>(xv);
  const auto* y = static_cast<const BlockQ8_0*>(yv);
  const int64_t nb = n / kQK;
  const __m256i sixteen = _mm256_set1_epi8(16);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const __m256i hi = _mm256_and_si256(bits_to_bytes(x[b].qh), sixteen);
    const __m256i q = _mm256_sub_epi8(_mm256_or_si256(nibbles_32(x[b].qs), hi), sixteen);
    const __m256i s = dot_s8s8(_mm256_setzero_si256(), q, load256(y[b].qs));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(x[b].d) * half_to_float(y[b].d)), _mm256_cvtepi32_ps(s), acc);
  }
  return hsum_ps(acc);
}

inline float vec_dot_q5_1(int64_t n, const void* xv, const void* yv) {
  const auto* x = static_cast<const BlockQ5_1*>(xv);
  const auto* y = static_cast<const BlockQ8_1*>(yv);
  const int64_t nb = n / kQK;
  const __m256i sixteen = _mm256_set1_epi8(16);
  __m256 acc = _mm256_setzero_ps();
  float offsets = 0;
  for (int64_t b = 0; b < nb; ++b) {
    const __m256i hi = _mm256_and_si256(bits_to_bytes(x[b].qh), sixteen);
    const __m256i q = _mm256_or_si256(nibbles_32(x[b].qs), hi);
    const __m256i s = dot_u8s8(_mm256_setzero_si256(), q, load256(y[b].qs));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(x[b].d) * half_to_float(y[b].d)), _mm256_cvtepi32_ps(s), acc);
    offsets += half_to_float(x[b].m) * half_to_float(y[b].s);
  }
  return hsum_ps(acc) + offsets;
}

// ---- K-quants -----------------------------------------------------------------------------------

// For 16-element sub-blocks: given the 8 int16 scales of one 128-element group (broadcast to both
// 128-bit lanes), returns scale[2k] in the low lane and scale[2k+1] in the high lane, i.e. the scales
// of elements 32k..32k+15 and 32k+16..32k+31 of the group.
inline __m256i scale_pair16(__m256i group_scales, int k) {
  const char a = static_cast<char>(4 * k), b = static_cast<char>(4 * k + 1);
  const char c = static_cast<char>(4 * k + 2), d = static_cast<char>(4 * k + 3);
  const __m256i pattern = _mm256_setr_epi8(a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b,
                                           c, d, c, d, c, d, c, d, c, d, c, d, c, d, c, d);
  return _mm256_shuffle_epi8(group_scales, pattern);
}
inline __m256i bcast128(__m128i v) { return _mm256_broadcastsi128_si256(v); }

inline float vec_dot_q2_K(int64_t n, const void* xv, const void* yv) {
  const auto* xs = static_cast<const BlockQ2_K*>(xv);
  const auto* ys = static_cast<const BlockQ8_K*>(yv);
  const __m256i three = _mm256_set1_epi8(3);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const BlockQ2_K& x = xs[b];
    const BlockQ8_K& y = ys[b];
    const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x.scales));
    const __m256i mins16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc8, 4), _mm_set1_epi8(0x0F)));
    const __m256i scales16 = _mm256_cvtepu8_epi16(_mm_and_si128(sc8, _mm_set1_epi8(0x0F)));
    const __m256i summ = _mm256_madd_epi16(load256(y.bsums), mins16);
    __m256i isum = _mm256_setzero_si256();
    for (int g = 0; g < 2; ++g) {
      const __m256i q = load256(x.qs + 32 * g);
      const __m256i gsc = bcast128(g == 0 ? _mm256_castsi256_si128(scales16) : _mm256_extracti128_si256(scales16, 1));
      for (int k = 0; k < 4; ++k) {
        const __m256i u = _mm256_and_si256(_mm256_srli_epi16(q, 2 * k), three);
        isum = _mm256_add_epi32(isum, dot_u8s8_scaled(u, load256(y.qs + 128 * g + 32 * k), scale_pair16(gsc, k)));
      }
    }
    const float dall = y.d * half_to_float(x.d);
    const float dmin = y.d * half_to_float(x.dmin);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(dall), _mm256_cvtepi32_ps(isum), acc);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(-dmin), _mm256_cvtepi32_ps(summ), acc);
  }
  return hsum_ps(acc);
}

inline float vec_dot_q3_K(int64_t n, const void* xv, const void* yv) {
  const auto* xs = static_cast<const BlockQ3_K*>(xv);
  const auto* ys = static_cast<const BlockQ8_K*>(yv);
  const __m256i three = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const BlockQ3_K& x = xs[b];
    const BlockQ8_K& y = ys[b];
    alignas(16) int8_t sc[16];
    unpack_scales_q3k(x.scales, sc);
    const __m256i scales16 = _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(sc)));
    // Quants are stored as u = value + 4 (0..7); subtract 4 * sum(y) per sub-block afterwards.
    const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(load256(y.bsums), scales16), 2);
    const __m256i hm = load256(x.hmask);
    __m256i isum = _mm256_setzero_si256();
    for (int g = 0; g < 2; ++g) {
      const __m256i q = load256(x.qs + 32 * g);
      const __m256i gsc = bcast128(g == 0 ? _mm256_castsi256_si128(scales16) : _mm256_extracti128_si256(scales16, 1));
      for (int k = 0; k < 4; ++k) {
        const __m256i low = _mm256_and_si256(_mm256_srli_epi16(q, 2 * k), three);
        const __m256i high = _mm256_and_si256(_mm256_srli_epi16(hm, 4 * g + k), one);
        const __m256i u = _mm256_or_si256(low, _mm256_slli_epi16(high, 2));
        isum = _mm256_add_epi32(isum, dot_u8s8_scaled(u, load256(y.qs + 128 * g + 32 * k), scale_pair16(gsc, k)));
      }
    }
    isum = _mm256_sub_epi32(isum, offset);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(x.d) * y.d), _mm256_cvtepi32_ps(isum), acc);
  }
  return hsum_ps(acc);
}

// Decodes the eight 6-bit scales and mins of a Q4_K / Q5_K block.
inline void k4_scales(const uint8_t* packed, uint8_t sc[8], uint8_t mn[8]) {
  for (int j = 0; j < 8; ++j) unpack_scale_min_k4(j, packed, &sc[j], &mn[j]);
}
inline int k4_min_sum(const uint8_t mn[8], const int16_t* bsums) {
  int s = 0;
  for (int j = 0; j < 8; ++j) s += mn[j] * (bsums[2 * j] + bsums[2 * j + 1]);
  return s;
}

inline float vec_dot_q4_K(int64_t n, const void* xv, const void* yv) {
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
    __m256i isum = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
      const __m256i q = load256(x.qs + 32 * c);
      const __m256i lo = _mm256_and_si256(q, m4);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
      isum = _mm256_add_epi32(isum, dot_u8s8_scaled(lo, load256(y.qs + 64 * c), _mm256_set1_epi16(sc[2 * c])));
      isum = _mm256_add_epi32(isum, dot_u8s8_scaled(hi, load256(y.qs + 64 * c + 32), _mm256_set1_epi16(sc[2 * c + 1])));
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(x.d) * y.d), _mm256_cvtepi32_ps(isum), acc);
    mins += (half_to_float(x.dmin) * y.d) * static_cast<float>(k4_min_sum(mn, y.bsums));
  }
  return hsum_ps(acc) - mins;
}

inline float vec_dot_q5_K(int64_t n, const void* xv, const void* yv) {
  const auto* xs = static_cast<const BlockQ5_K*>(xv);
  const auto* ys = static_cast<const BlockQ8_K*>(yv);
  const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
  __m256 acc = _mm256_setzero_ps();
  float mins = 0;
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const BlockQ5_K& x = xs[b];
    const BlockQ8_K& y = ys[b];
    uint8_t sc[8], mn[8];
    k4_scales(x.scales, sc, mn);
    const __m256i hb = load256(x.qh);
    __m256i isum = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
      const __m256i q = load256(x.qs + 32 * c);
      const __m256i hlo = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * c), one), 4);
      const __m256i hhi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * c + 1), one), 4);
      const __m256i lo = _mm256_or_si256(_mm256_and_si256(q, m4), hlo);
      const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), hhi);
      isum = _mm256_add_epi32(isum, dot_u8s8_scaled(lo, load256(y.qs + 64 * c), _mm256_set1_epi16(sc[2 * c])));
      isum = _mm256_add_epi32(isum, dot_u8s8_scaled(hi, load256(y.qs + 64 * c + 32), _mm256_set1_epi16(sc[2 * c + 1])));
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(x.d) * y.d), _mm256_cvtepi32_ps(isum), acc);
    mins += (half_to_float(x.dmin) * y.d) * static_cast<float>(k4_min_sum(mn, y.bsums));
  }
  return hsum_ps(acc) - mins;
}

inline float vec_dot_q6_K(int64_t n, const void* xv, const void* yv) {
  const auto* xs = static_cast<const BlockQ6_K*>(xv);
  const auto* ys = static_cast<const BlockQ8_K*>(yv);
  const __m256i m4 = _mm256_set1_epi8(0x0F), three = _mm256_set1_epi8(3);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const BlockQ6_K& x = xs[b];
    const BlockQ8_K& y = ys[b];
    const __m256i scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x.scales)));
    // Quants are stored as u = value + 32 (0..63); subtract 32 * scale * sum(y) per sub-block afterwards.
    const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(load256(y.bsums), scales16), 5);
    __m256i isum = _mm256_setzero_si256();
    for (int g = 0; g < 2; ++g) {
      const __m256i l0 = load256(x.ql + 64 * g);
      const __m256i l1 = load256(x.ql + 64 * g + 32);
      const __m256i h = load256(x.qh + 32 * g);
      const __m256i gsc = bcast128(g == 0 ? _mm256_castsi256_si128(scales16) : _mm256_extracti128_si256(scales16, 1));
      const __m256i u[4] = {
          _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(h, three), 4)),
          _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), three), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), three), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), three), 4)),
      };
      for (int k = 0; k < 4; ++k) {
        isum = _mm256_add_epi32(isum, dot_u8s8_scaled(u[k], load256(y.qs + 128 * g + 32 * k), scale_pair16(gsc, k)));
      }
    }
    isum = _mm256_sub_epi32(isum, offset);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(x.d) * y.d), _mm256_cvtepi32_ps(isum), acc);
  }
  return hsum_ps(acc);
}

}  // namespace moe::quant::MOE_SIMD_NS
