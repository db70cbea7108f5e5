// AVX-512 VNNI kernels for one token against a few weight rows (decode), and the entry points of the
// tile table (quant_tile.h) for Q4_0, Q8_0, Q4_K, Q5_K and Q6_K: one token goes to the row kernels here,
// a few (below kPanelMinTokens) to the few-token kernels here, more to the panel GEMM (gemm_panel_avx512.cpp). Built with the AVX-512 flag set (file name ends
// in _avx512.cpp); only reached after cpu_features() confirmed VNNI/BW/VL/DQ.
//
// Numerics: every kernel computes, per (row, token), exactly what the scalar reference kernel in
// quant_blocks.h computes: the integer dot product of each block is exact (in any lane order), and the
// float operations per block (scale products, the multiply by the block sum, the running sum) are the
// reference's, in block order. So vec_dot, the row tiles and the panel GEMM agree bit for bit with each
// other and with vec_dot_ref (tests/test_kernels_tile.cpp). fp-contract=off keeps GCC from fusing them.
//
// Tricks used (all exact in integer arithmetic):
//  * K-quants: u8 quants x s8 activations via vpmaddubsw, times the 6/8-bit sub-block scale and
//    accumulated in one vpdpwssd; mins / offsets come from the activation's bsums (one vpmaddwd). Four
//    rows' lane sums are reduced together, so the float part runs on four rows at once.
//  * Q4_K/Q5_K scales unpacked with two pshufb + masks instead of a scalar loop.
//  * Legacy types: the weight is made unsigned (Q8_0: x ^ 0x80 = x + 128; Q4_0: raw nibble = x + 8),
//    and the accumulator starts at -offset * sum(y) per lane; one vpdpbusd then gives the exact signed
//    dot product of two blocks (one per 256-bit half).
#pragma GCC optimize("fp-contract=off")
#include "kernels/k_quant_tile_avx512.h"

#include <algorithm>

#include "kernels/cpu_features.h"
#include "kernels/mxfp4_kernels.h"
#include "kernels/q4k_repack.h"

namespace moe::quant {
namespace avx512t {
namespace {

// ---- Q6_K ---------------------------------------------------------------------------------------

alignas(64) const int16_t kQ6ScaleIdx[4][32] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
    {8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9, 10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
    {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13, 14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15},
};

// One Q6_K super-block decoded: u[i] the unsigned quants (value + 32) of elements 64i .. 64i+63, s[i]
// their int16 scales, sc32 = 32 * scales (the offset correction). Shared by all Q6_K kernels.
struct Q6Weights {
  __m512i u[4], s[4];
  __m256i sc32;
  float dx;
};

inline void q6_decode(const BlockQ6_K& x, Q6Weights& k) {
  const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
  const __m512i shl01 = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
  const __m512i shr23 = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);
  const __m256i sc16 = _mm256_cvtepi8_epi16(ld128(x.scales));
  const __m512i sc512 = _mm512_castsi256_si512(sc16);
  k.sc32 = _mm256_slli_epi16(sc16, 5);
  #pragma GCC unroll 8
  for (int g = 0; g < 2; ++g) {
    const __m512i L = ld512(x.ql + 64 * g);
    const __m512i hb = _mm512_broadcast_i64x4(ld256(x.qh + 32 * g));
    const __m512i h01 = _mm512_and_si512(_mm512_sllv_epi16(hb, shl01), m30);
    const __m512i h23 = _mm512_and_si512(_mm512_srlv_epi16(hb, shr23), m30);
    k.u[2 * g] = and_or(L, m4, h01);
    k.u[2 * g + 1] = and_or(_mm512_srli_epi16(L, 4), m4, h23);
    k.s[2 * g] = _mm512_permutexvar_epi16(_mm512_load_si512(kQ6ScaleIdx[2 * g]), sc512);
    k.s[2 * g + 1] = _mm512_permutexvar_epi16(_mm512_load_si512(kQ6ScaleIdx[2 * g + 1]), sc512);
  }
  k.dx = h2f(x.d);
}

// NR rows x one token, the arithmetic of vec_dot_q6_K_ref: per block each row's exact integer sum, then
// sum += (d * dy) * I per row in block order.
template <int NR>
void q6_rows(int64_t n, const uint8_t* w, size_t ws, const uint8_t* act, float* out, size_t pf) {
  __m128 sum = _mm_setzero_ps();
  const int64_t nb = n / kQKK;
  for (int64_t b = 0; b < nb; ++b) {
    const BlockQ8_K& y = reinterpret_cast<const BlockQ8_K*>(act)[b];
    const __m256i negb = _mm256_sub_epi16(_mm256_setzero_si256(), ld256(y.bsums));
    __m512i ys[4];
    #pragma GCC unroll 8
    for (int i = 0; i < 4; ++i) ys[i] = ld512(y.qs + 64 * i);
    __m512i isum[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    __m128i dh = _mm_setzero_si128();
    #pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const BlockQ6_K& x = reinterpret_cast<const BlockQ6_K*>(w + r * ws)[b];
      prefetch_block(reinterpret_cast<const uint8_t*>(&x) + pf, sizeof(BlockQ6_K));
      Q6Weights k;
      q6_decode(x, k);
      // Quants are u = value + 32; start the accumulator at -32 * sum(scale * bsum).
      isum[r] = _mm512_zextsi256_si512(_mm256_madd_epi16(negb, k.sc32));
      #pragma GCC unroll 8
      for (int i = 0; i < 4; ++i) isum[r] = _mm512_dpwssd_epi32(isum[r], _mm512_maddubs_epi16(k.u[i], ys[i]), k.s[i]);
      dh = insert_epi16_from(dh, &x.d, r);
    }
    const __m128i I = hsum4_epi32(isum[0], isum[1], isum[2], isum[3]);
    const __m128 d = _mm_cvtph_ps(dh);
    sum = _mm_add_ps(sum, _mm_mul_ps(_mm_mul_ps(d, _mm_set1_ps(y.d)), _mm_cvtepi32_ps(I)));
  }
  alignas(16) float s[4];
  _mm_store_ps(s, sum);
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) out[r] = s[r];
}

// One row x one token: q6_rows<1>'s arithmetic, four blocks' integer sums reduced together and their
// float parts computed in one register, then added in block order.
void q6_row1(int64_t n, const uint8_t* w, size_t, const uint8_t* act, float* out, size_t pf) {
  __m128 sum = _mm_setzero_ps();
  const int64_t nb = n / kQKK;
  for (int64_t b0 = 0; b0 < nb; b0 += 4) {
    const int m = nb - b0 < 4 ? static_cast<int>(nb - b0) : 4;
    __m512i isum[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    __m128i dh = _mm_setzero_si128(), dy = _mm_setzero_si128();
    #pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      if (i >= m) break;
      const BlockQ8_K& y = reinterpret_cast<const BlockQ8_K*>(act)[b0 + i];
      const BlockQ6_K& x = reinterpret_cast<const BlockQ6_K*>(w)[b0 + i];
      prefetch_block(reinterpret_cast<const uint8_t*>(&x) + pf, sizeof(BlockQ6_K));
      Q6Weights k;
      q6_decode(x, k);
      const __m256i negb = _mm256_sub_epi16(_mm256_setzero_si256(), ld256(y.bsums));
      isum[i] = _mm512_zextsi256_si512(_mm256_madd_epi16(negb, k.sc32));
      #pragma GCC unroll 8
      for (int j = 0; j < 4; ++j) isum[i] = _mm512_dpwssd_epi32(isum[i], _mm512_maddubs_epi16(k.u[j], ld512(y.qs + 64 * j)), k.s[j]);
      dh = insert_epi16_from(dh, &x.d, i);
      dy = insert_epi32_from(dy, &y.d, i);
    }
    const __m128i I = hsum4_epi32(isum[0], isum[1], isum[2], isum[3]);
    const __m128 a = _mm_mul_ps(_mm_mul_ps(_mm_cvtph_ps(dh), _mm_castsi128_ps(dy)), _mm_cvtepi32_ps(I));
    sum = add_lanes_in_order(sum, a, m);
  }
  *out = _mm_cvtss_f32(sum);
}

// One row x NT tokens (NT <= 4; an expert's down projection in a batched decode step): each block is
// decoded once for all the tokens, and lane t carries token t through q6_rows's arithmetic for one row (the
// same exact integer sum, then sum += (d * dy) * I per block in block order), so every (row, token) has
// the bits of the one-token kernels. Prefetched as q6_row1: the row streams from DRAM.
template <int NT>
void q6_tokens(int64_t n, const uint8_t* w, const uint8_t* act, size_t as, float* out, int64_t os) {
  static_assert(NT >= 1 && NT <= 4, "q6_tokens: one to four tokens");
  __m128 sum = _mm_setzero_ps();
  const int64_t nb = n / kQKK;
  for (int64_t b = 0; b < nb; ++b) {
    const BlockQ6_K& x = reinterpret_cast<const BlockQ6_K*>(w)[b];
    prefetch_block(reinterpret_cast<const uint8_t*>(&x) + kSingleRowPrefetch, sizeof(BlockQ6_K));
    Q6Weights k;
    q6_decode(x, k);
    __m512i isum[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    __m128i dy = _mm_setzero_si128();
    #pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) {
      const BlockQ8_K& y = reinterpret_cast<const BlockQ8_K*>(act + t * as)[b];
      const __m256i negb = _mm256_sub_epi16(_mm256_setzero_si256(), ld256(y.bsums));
      isum[t] = _mm512_zextsi256_si512(_mm256_madd_epi16(negb, k.sc32));
      #pragma GCC unroll 8
      for (int i = 0; i < 4; ++i) isum[t] = _mm512_dpwssd_epi32(isum[t], _mm512_maddubs_epi16(k.u[i], ld512(y.qs + 64 * i)), k.s[i]);
      dy = insert_epi32_from(dy, &y.d, t);
    }
    const __m128i I = hsum4_epi32(isum[0], isum[1], isum[2], isum[3]);
    sum = _mm_add_ps(sum, _mm_mul_ps(_mm_mul_ps(_mm_set1_ps(k.dx), _mm_castsi128_ps(dy)), _mm_cvtepi32_ps(I)));
  }
  alignas(16) float s[4];
  _mm_store_ps(s, sum);
  #pragma GCC unroll 4
  for (int t = 0; t < NT; ++t) out[t * os] = s[t];
}

// ---- Q8_0 / Q4_0 --------------------------------------------------------------------------------

// Two consecutive legacy blocks per zmm (lanes 0..7: block b, 8..15: block b+1). For an odd block
// count the last zmm holds one block and zeros (zero quants and zero scales add exactly +0).
inline __m512i pair_qs_q8(const BlockQ8_0* x, bool two) {
  const __m256i lo = ld256(x[0].qs);
  return two ? _mm512_inserti64x4(_mm512_castsi256_si512(lo), ld256(x[1].qs), 1) : _mm512_zextsi256_si512(lo);
}

// kOffset: the weight is fed to vpdpbusd as x + kOffset (unsigned); init = -kOffset * sum(y) per lane.
template <int kOffset>
inline __m512i legacy_init(__m512i y) {
  return _mm512_sub_epi32(_mm512_setzero_si512(),
                          _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(static_cast<char>(kOffset)), y));
}

// Blocks b and b+1 (only b when !two) of one weight row as unsigned quants (x + kOffset).
template <bool kQ4>
inline __m512i legacy_decode(const uint8_t* row, int64_t b, bool two) {
  if constexpr (kQ4) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i nib_shift = _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0);
    const __m512i dup_lanes = _mm512_set_epi64(3, 2, 3, 2, 1, 0, 1, 0);
    const BlockQ4_0* x = reinterpret_cast<const BlockQ4_0*>(row) + b;
    const __m128i q0 = ld128(x[0].qs);
    const __m256i q01 =
        two ? _mm256_inserti128_si256(_mm256_castsi128_si256(q0), ld128(x[1].qs), 1) : _mm256_zextsi128_si256(q0);
    // [q0 | q0 | q1 | q1], then shift the odd 128-bit lanes right by 4: lo nibbles, hi nibbles.
    const __m512i dup = _mm512_permutexvar_epi64(dup_lanes, _mm512_castsi256_si512(q01));
    return _mm512_and_si512(_mm512_srlv_epi64(dup, nib_shift), m4);
  } else {
    const BlockQ8_0* x = reinterpret_cast<const BlockQ8_0*>(row) + b;
    return _mm512_xor_si512(pair_qs_q8(x, two), _mm512_set1_epi8(static_cast<char>(0x80)));
  }
}

// Four rows' fp16 block scales (row r at rows + r * ws + off) as floats; rows >= nr give 0.
template <int NR>
inline __m128 legacy_scales(const uint8_t* rows, size_t ws, size_t off) {
  __m128i h = _mm_setzero_si128();
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) h = insert_epi16_from(h, rows + r * ws + off, r);
  return _mm_cvtph_ps(h);
}

// NR rows x one token, the arithmetic of vec_dot_q8_0_ref / vec_dot_q4_0_ref: per block each row's exact
// integer sum, then sum += float(I) * (dx * dy) per row in block order. Two blocks per register: the
// four rows' lane sums of each half are reduced together.
template <int NR, bool kQ4>
void legacy_rows(int64_t n, const uint8_t* w, size_t ws, const uint8_t* act, float* out) {
  constexpr int kOffset = kQ4 ? 8 : 128;
  constexpr size_t kBlockBytes = kQ4 ? sizeof(BlockQ4_0) : sizeof(BlockQ8_0);
  __m128 sum = _mm_setzero_ps();
  const int64_t nb = n / kQK;
  const BlockQ8_0* y = reinterpret_cast<const BlockQ8_0*>(act);
  for (int64_t b = 0; b < nb; b += 2) {
    const bool two = b + 1 < nb;
    const __m512i ya = pair_qs_q8(y + b, two);
    const __m512i init = legacy_init<kOffset>(ya);
    __m512i isum[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    #pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      prefetch_block(w + r * ws + 2 * NR * ws + b * kBlockBytes, 2 * kBlockBytes);
      isum[r] = _mm512_dpbusd_epi32(init, legacy_decode<kQ4>(w + r * ws, b, two), ya);
    }
    // Per 128-bit lane: the four rows' sums over that lane; lanes 0-1 are block b, 2-3 block b+1.
    const __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(isum[0], isum[1]), _mm512_unpackhi_epi32(isum[0], isum[1]));
    const __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(isum[2], isum[3]), _mm512_unpackhi_epi32(isum[2], isum[3]));
    const __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
    const __m128i i0 = _mm_add_epi32(_mm512_extracti32x4_epi32(u, 0), _mm512_extracti32x4_epi32(u, 1));
    const __m128 dy0 = _mm_set1_ps(_cvtsh_ss(y[b].d));
    sum = _mm_add_ps(sum, _mm_mul_ps(_mm_cvtepi32_ps(i0), _mm_mul_ps(legacy_scales<NR>(w, ws, b * kBlockBytes), dy0)));
    if (two) {
      const __m128i i1 = _mm_add_epi32(_mm512_extracti32x4_epi32(u, 2), _mm512_extracti32x4_epi32(u, 3));
      const __m128 dy1 = _mm_set1_ps(_cvtsh_ss(y[b + 1].d));
      sum = _mm_add_ps(sum, _mm_mul_ps(_mm_cvtepi32_ps(i1), _mm_mul_ps(legacy_scales<NR>(w, ws, (b + 1) * kBlockBytes), dy1)));
    }
  }
  alignas(16) float s[4];
  _mm_store_ps(s, sum);
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) out[r] = s[r];
}

// One row x one token: legacy_rows<1>'s arithmetic, eight blocks (four registers) at a time: their
// integer sums reduced together, the float parts in one register, added in block order.
template <bool kQ4>
void legacy_row1(int64_t n, const uint8_t* w, size_t, const uint8_t* act, float* out) {
  constexpr int kOffset = kQ4 ? 8 : 128;
  constexpr size_t kBlockBytes = kQ4 ? sizeof(BlockQ4_0) : sizeof(BlockQ8_0);
  __m128 sum = _mm_setzero_ps();
  const int64_t nb = n / kQK;
  const BlockQ8_0* y = reinterpret_cast<const BlockQ8_0*>(act);
  for (int64_t b0 = 0; b0 < nb; b0 += 8) {
    const int m = nb - b0 < 8 ? static_cast<int>(nb - b0) : 8;
    __m512i isum[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    __m128i dx = _mm_setzero_si128(), dy = _mm_setzero_si128();
    #pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      if (2 * k >= m) break;
      const int64_t b = b0 + 2 * k;
      const bool two = 2 * k + 1 < m;
      const __m512i ya = pair_qs_q8(y + b, two);
      prefetch_block(w + 2 * kBlockBytes * 64 + b * kBlockBytes, 2 * kBlockBytes);
      isum[k] = _mm512_dpbusd_epi32(legacy_init<kOffset>(ya), legacy_decode<kQ4>(w, b, two), ya);
      dx = insert_epi16_from(dx, w + b * kBlockBytes, 2 * k);
      dy = insert_epi16_from(dy, &y[b].d, 2 * k);
      if (two) {
        dx = insert_epi16_from(dx, w + (b + 1) * kBlockBytes, 2 * k + 1);
        dy = insert_epi16_from(dy, &y[b + 1].d, 2 * k + 1);
      }
    }
    // Per 128-bit lane L: the four registers' sums over L; register k holds blocks 2k (lanes 0-1) and 2k+1.
    const __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(isum[0], isum[1]), _mm512_unpackhi_epi32(isum[0], isum[1]));
    const __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(isum[2], isum[3]), _mm512_unpackhi_epi32(isum[2], isum[3]));
    const __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
    const __m128i even = _mm_add_epi32(_mm512_extracti32x4_epi32(u, 0), _mm512_extracti32x4_epi32(u, 1));
    const __m128i odd = _mm_add_epi32(_mm512_extracti32x4_epi32(u, 2), _mm512_extracti32x4_epi32(u, 3));
    const __m256i I = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_unpacklo_epi32(even, odd)), _mm_unpackhi_epi32(even, odd), 1);
    const __m256 p = _mm256_mul_ps(_mm256_cvtepi32_ps(I), _mm256_mul_ps(_mm256_cvtph_ps(dx), _mm256_cvtph_ps(dy)));
    sum = add_lanes_in_order(sum, _mm256_castps256_ps128(p), m);
    if (m > 4) sum = add_lanes_in_order(sum, _mm256_extractf128_ps(p, 1), m - 4);
  }
  *out = _mm_cvtss_f32(sum);
}

// ---- drivers ------------------------------------------------------------------------------------

using LegacyRowsImpl = void (*)(int64_t, const uint8_t*, size_t, const uint8_t*, float*);
template <bool kQ4>
struct LegacyKernels {
  static constexpr LegacyRowsImpl rows[kTileRows] = {legacy_row1<kQ4>, legacy_rows<2, kQ4>, legacy_rows<3, kQ4>,
                                                     legacy_rows<4, kQ4>};
};

// Q8_0 / Q4_0: the row kernels, once per token (from L1 after the first) below kPanelMinTokens tokens;
// the panel GEMM from there on.
template <bool kQ4>
void drive_legacy(int64_t n, const void* w, size_t ws, int nr, const void* act, size_t as, int nt, float* out,
                  int64_t os) {
  if (nt >= kPanelMinTokens) {
    panel_gemm_avx512(kQ4 ? DType::Q4_0 : DType::Q8_0, n, w, ws, nr, act, as, {}, nt, out, os);
    return;
  }
  const auto* wp = static_cast<const uint8_t*>(w);
  for (int r0 = 0; r0 < nr; r0 += kTileRows) {
    const int mr = nr - r0 < kTileRows ? nr - r0 : kTileRows;
    for (int t = 0; t < nt; ++t)
      LegacyKernels<kQ4>::rows[mr - 1](n, wp + r0 * ws, ws, static_cast<const uint8_t*>(act) + t * as,
                                       out + t * os + r0);
  }
}

template <bool kQ4>
float single_legacy(int64_t n, const void* w, const void* act) {
  float r;
  legacy_row1<kQ4>(n, static_cast<const uint8_t*>(w), 0, static_cast<const uint8_t*>(act), &r);
  return r;
}

const KQuantKernels kQ4K = MOE_K4_KERNELS(DType::Q4_K, K4Decoder<false>);
const KQuantKernels kQ5K = MOE_K4_KERNELS(DType::Q5_K, K4Decoder<true>);
const KQuantKernels kQ6K = {DType::Q6_K,
                            {q6_row1, q6_rows<2>, q6_rows<3>, q6_rows<4>},
                            {q6_tokens<1>, q6_tokens<2>, q6_tokens<3>, q6_tokens<4>}};

}  // namespace
}  // namespace avx512t

TileKernels tile_kernels_avx512(DType t) {
  using namespace avx512t;
  switch (t) {
    case DType::Q4_K: return {drive_k<kQ4K>, single_k<kQ4K>};
    case DType::Q5_K: return {drive_k<kQ5K>, single_k<kQ5K>};
    case DType::Q6_K: return {drive_k<kQ6K>, single_k<kQ6K>};
    case DType::Q4_K_R:
      return cpu_features().has_avx512vbmi_kernels() ? tile_kernels_q4k_repacked_avx512vbmi() : TileKernels{};
    case DType::Q8_0: return {drive_legacy<false>, single_legacy<false>};
    case DType::Q4_0: return {drive_legacy<true>, single_legacy<true>};
    case DType::MXFP4: return tile_kernels_mxfp4_avx512();
    case DType::F32: return tile_kernels_f32_avx512();
    default: return {nullptr, nullptr};
  }
}

}  // namespace moe::quant
