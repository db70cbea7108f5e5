// AVX-512 K-quant kernel templates shared by the tile translation units (vec_dot_tile_avx512.cpp and
// q4k_repacked_avx512vbmi.cpp). Include only from files compiled with the AVX-512 flag set.
//
// Everything here sits in an anonymous namespace on purpose: the two including files are compiled with
// different instruction sets (the second adds VBMI and GFNI), so each must keep its own copy of these
// inline functions and templates instead of the linker merging them into one.
#pragma once
// GCC 12 warns about the intentionally undefined upper halves in its own cast intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstring>

#include "kernels/quant_blocks.h"
#include "kernels/quant_tile.h"

namespace moe::quant::avx512t {
namespace {

inline float h2f(uint16_t h) { return _cvtsh_ss(h); }
inline __m512i ld512(const void* p) { return _mm512_loadu_si512(p); }
inline __m256i ld256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m128i ld128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

// Software prefetch of the same block NR rows further on (the next row group): a row group is read as NR
// interleaved streams a row apart, which the hardware stream prefetchers track poorly; without this the
// decode matvec from DRAM runs at about a third of the bandwidth that a single sequential row stream gets.
inline void prefetch_block(const uint8_t* p, size_t bytes) {
  for (size_t off = 0; off < bytes; off += 64) _mm_prefetch(reinterpret_cast<const char*>(p + off), _MM_HINT_T0);
}

// (a & b) | c
inline __m512i and_or(__m512i a, __m512i b, __m512i c) { return _mm512_ternarylogic_epi32(a, b, c, 0xEA); }

// ---- Q4_K / Q5_K --------------------------------------------------------------------------------

// Bytes [sc0..sc7, m0..m7] of a Q4_K/Q5_K 12-byte scale field. Reads 16 bytes from `s`: the 4 bytes
// past the field are the block's own quants, so the read stays inside the block.
inline __m128i k4_unpack_scales(const uint8_t* s) {
  const __m128i v = ld128(s);
  const __m128i a = _mm_shuffle_epi8(v, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
  const __m128i b = _mm_shuffle_epi8(v, _mm_setr_epi8(-128, -128, -128, -128, 0, 1, 2, 3, -128, -128, -128, -128, 4, 5, 6, 7));
  const __m128i lo = _mm_or_si128(
      _mm_and_si128(a, _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0)),
      _mm_and_si128(_mm_srli_epi16(a, 4), _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15)));
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 2),
                                   _mm_setr_epi8(0, 0, 0, 0, 48, 48, 48, 48, 0, 0, 0, 0, 48, 48, 48, 48));
  return _mm_or_si128(lo, hi);
}

// int16 scale vector for one zmm of u8 quants: 256-bit half 0 gets scale byte i0, half 1 byte i1.
inline __m512i k4_scale_vec(__m512i sc_bcast, char i0, char i1) {
  const char z = -128;
  const __m512i idx = _mm512_set_epi8(z, i1, z, i1, z, i1, z, i1, z, i1, z, i1, z, i1, z, i1,  //
                                      z, i1, z, i1, z, i1, z, i1, z, i1, z, i1, z, i1, z, i1,  //
                                      z, i0, z, i0, z, i0, z, i0, z, i0, z, i0, z, i0, z, i0,  //
                                      z, i0, z, i0, z, i0, z, i0, z, i0, z, i0, z, i0, z, i0);
  return _mm512_shuffle_epi8(sc_bcast, idx);
}

// Q5_K: byte mask of the fifth bits for one zmm of quants (chunk h, low or high nibbles).
inline __m512i q5_bit_mask(int h, int hi_nibble) {
  const int b0 = 4 * h + hi_nibble, b1 = 4 * h + 2 + hi_nibble;
  return _mm512_inserti64x4(_mm512_set1_epi8(static_cast<char>(1 << b0)), _mm256_set1_epi8(static_cast<char>(1 << b1)), 1);
}

// One Q4_K / Q5_K super-block decoded for the integer dot products, in the activations' natural order:
// v[2h + i] holds sub-blocks 4h + 2i and 4h + 2i + 1 (elements 128h + 64i .. +63) as u8, s[2h + i] their
// int16 scales, mins16 the eight 6-bit mins. Every kernel uses exactly this lane layout, so the integer
// sum in each lane (and hence every float operation after it) is the same whatever the tile shape.
struct K4Weights {
  __m512i v[4], s[4];
  __m128i mins16;
  float dx, dmx;
};

// Decoder for the GGUF Q4_K (kQ5 = false) and Q5_K block layouts. A decoder type provides kBlockBytes
// and decode(); the repacked in-memory Q4_K layout has its own (q4k_repacked_avx512vbmi.cpp).
template <bool kQ5>
struct K4Decoder {
  static constexpr size_t kBlockBytes = kQ5 ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
  static void decode(const uint8_t* blk, K4Weights& k) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), sixteen = _mm512_set1_epi8(16);
    const __m128i min_idx = _mm_setr_epi8(8, -128, 9, -128, 10, -128, 11, -128, 12, -128, 13, -128, 14, -128, 15, -128);
    uint16_t dh, dmh;
    std::memcpy(&dh, blk, 2);
    std::memcpy(&dmh, blk + 2, 2);
    const uint8_t* qh = kQ5 ? blk + 16 : nullptr;
    const uint8_t* qs = kQ5 ? blk + 48 : blk + 16;
    const __m128i sc = k4_unpack_scales(blk + 4);
    const __m512i scb = _mm512_broadcast_i32x4(sc);
    k.mins16 = _mm_shuffle_epi8(sc, min_idx);
    __m512i hb;
    if constexpr (kQ5) hb = _mm512_broadcast_i64x4(ld256(qh));
    #pragma GCC unroll 8
    for (int h = 0; h < 2; ++h) {
      // lo nibbles of qs[64h..64h+63] are sub-blocks [4h | 4h+2], hi nibbles [4h+1 | 4h+3].
      const __m512i q = ld512(qs + 64 * h);
      __m512i lo = _mm512_and_si512(q, m4);
      __m512i hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
      if constexpr (kQ5) {
        lo = _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(hb, q5_bit_mask(h, 0)), lo, sixteen);
        hi = _mm512_mask_add_epi8(hi, _mm512_test_epi8_mask(hb, q5_bit_mask(h, 1)), hi, sixteen);
      }
      k.v[2 * h] = _mm512_shuffle_i64x2(lo, hi, 0x44);
      k.v[2 * h + 1] = _mm512_shuffle_i64x2(lo, hi, 0xEE);
      k.s[2 * h] = k4_scale_vec(scb, static_cast<char>(4 * h), static_cast<char>(4 * h + 1));
      k.s[2 * h + 1] = k4_scale_vec(scb, static_cast<char>(4 * h + 2), static_cast<char>(4 * h + 3));
    }
    k.dx = h2f(dh);
    k.dmx = h2f(dmh);
  }
};

// The eight 32-element sums of a Q8_K block (pairs of its 16-element bsums).
inline __m128i q8k_pair_sums(const BlockQ8_K& y) { return _mm_hadd_epi16(ld128(y.bsums), ld128(y.bsums + 8)); }

// Sum of the four partial min corrections of one (row, token), in a fixed order shared by all kernels.
inline float sum4(const float* m) { return (m[0] + m[1]) + (m[2] + m[3]); }

// NR rows x one token. acc: scaled integer sums; accmin: the min corrections, kept apart so a multi-token
// kernel can compute four tokens' corrections in one zmm (see k4_gemm) with the same per-lane operations.
// The block's (d, dmin) pair is widened and multiplied by the token's scale in one xmm: lane for lane the
// same IEEE products as the scalar d * dy of the other kernels. pf: software-prefetch distance in bytes.
template <int NR, class Dec>
void k4_rows(int64_t n, const uint8_t* w, size_t ws, const uint8_t* act, float* out, size_t pf) {
  __m512 acc[NR];
  __m128 accmin[NR];
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) {
    acc[r] = _mm512_setzero_ps();
    accmin[r] = _mm_setzero_ps();
  }
  const int64_t nb = n / kQKK;
  constexpr size_t xb = Dec::kBlockBytes;
  for (int64_t b = 0; b < nb; ++b) {
    const BlockQ8_K& y = reinterpret_cast<const BlockQ8_K*>(act)[b];
    __m512i ys[4];
    #pragma GCC unroll 8
    for (int i = 0; i < 4; ++i) ys[i] = ld512(y.qs + 64 * i);
    const __m128i pairs = q8k_pair_sums(y);
    const __m128 dy = _mm_set1_ps(y.d);
    #pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const uint8_t* blk = w + r * ws + b * xb;
      prefetch_block(blk + pf, xb);
      K4Weights k;
      Dec::decode(blk, k);
      __m512i isum = _mm512_setzero_si512();
      #pragma GCC unroll 8
      for (int i = 0; i < 4; ++i) isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(k.v[i], ys[i]), k.s[i]);
      int32_t d_dmin;
      std::memcpy(&d_dmin, blk, 4);
      const __m128 dd = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(d_dmin)), dy);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_broadcastss_ps(dd), acc[r]);
      const __m128i msum = _mm_madd_epi16(k.mins16, pairs);
      accmin[r] = _mm_fmadd_ps(_mm_cvtepi32_ps(msum), _mm_permute_ps(dd, 0x55), accmin[r]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) {
    alignas(16) float m[4];
    _mm_store_ps(m, accmin[r]);
    out[r] = _mm512_reduce_add_ps(acc[r]) - sum4(m);
  }
}

// Per-block activation data shared by all rows of a multi-token (prefill) kernel, built once per group
// of up to eight tokens: scales, the 32-element sums (Q4_K/Q5_K mins) and negated 16-element sums (Q6_K
// offset), laid out so that four tokens' values fill one zmm. Unused token slots are zero.
inline constexpr int kGemmTokens = 8;
inline constexpr int64_t kGemmMaxBlocks = 64;  // K <= 16384 per row; longer rows take the per-token path
struct alignas(64) KGemmExtras {
  int16_t pairs[kGemmTokens][8];
  float dy4[kGemmTokens][4];  // each token's scale repeated for its four min lanes
  float dy[kGemmTokens];
  int16_t negb[kGemmTokens][16];
};

template <bool kQ6>
void build_extras(const uint8_t* act, size_t as, int nt, int64_t nb, KGemmExtras* ex) {
  for (int64_t b = 0; b < nb; ++b) {
    KGemmExtras& e = ex[b];
    std::memset(&e, 0, sizeof(e));
    for (int t = 0; t < nt; ++t) {
      const BlockQ8_K& y = reinterpret_cast<const BlockQ8_K*>(act + t * as)[b];
      e.dy[t] = y.d;
      if constexpr (kQ6) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(e.negb[t]), _mm256_sub_epi16(_mm256_setzero_si256(), ld256(y.bsums)));
      } else {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(e.pairs[t]), q8k_pair_sums(y));
        #pragma GCC unroll 8
        for (int i = 0; i < 4; ++i) e.dy4[t][i] = y.d;
      }
    }
  }
}

// isum[t] += sum over the block's four 64-weight groups of (u8 weights . token t's s8 quants) x the
// groups' int16 scales. yb: token 0's Q8_K block, tokens `as` bytes apart (quants as memory operands).
template <int NT>
inline void k_quant_mac(const __m512i* w, const __m512i* scale, const uint8_t* yb, size_t as, __m512i* isum) {
#pragma GCC unroll 8
  for (int i = 0; i < 4; ++i)
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const __m512i y = ld512(reinterpret_cast<const BlockQ8_K*>(yb + t * as)->qs + 64 * i);
      isum[t] = _mm512_dpwssd_epi32(isum[t], _mm512_maddubs_epi16(w[i], y), scale[i]);
    }
}

// One row x NT tokens: each weight block is decoded once for all NT tokens, whose quants are read
// straight from the activation rows (memory operands), so the decode cost is spread over NT.
template <int NT, class Dec>
void k4_gemm(int64_t nb, const uint8_t* w, const uint8_t* act, size_t as, const KGemmExtras* ex, float* out, int64_t os) {
  constexpr int NG = (NT + 3) / 4;
  constexpr size_t xb = Dec::kBlockBytes;
  __m512 acc[NT], accmin[NG];
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  #pragma GCC unroll 8
  for (int g = 0; g < NG; ++g) accmin[g] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    K4Weights k;
    Dec::decode(w + b * xb, k);
    const uint8_t* yb = act + b * sizeof(BlockQ8_K);
    __m512i isum[NT];
    #pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) isum[t] = _mm512_setzero_si512();
    k_quant_mac<NT>(k.v, k.s, yb, as, isum);
    const KGemmExtras& e = ex[b];
    const __m512 dxv = _mm512_set1_ps(k.dx), dmv = _mm512_set1_ps(k.dmx);
    #pragma GCC unroll 8
    for (int t = 0; t < NT; ++t)
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(dxv, _mm512_set1_ps(e.dy[t])), acc[t]);
    const __m512i mins = _mm512_broadcast_i32x4(k.mins16);
    #pragma GCC unroll 8
    for (int g = 0; g < NG; ++g) {
      const __m512i msum = _mm512_madd_epi16(mins, ld512(e.pairs[4 * g]));
      accmin[g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(msum), _mm512_mul_ps(dmv, _mm512_load_ps(e.dy4[4 * g])), accmin[g]);
    }
  }
  alignas(64) float m[NG * 16];
  #pragma GCC unroll 8
  for (int g = 0; g < NG; ++g) _mm512_store_ps(m + 16 * g, accmin[g]);
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) out[t * os] = _mm512_reduce_add_ps(acc[t]) - sum4(m + 4 * t);
}

// K-quants: one-token kernels over up to four rows, and one-row kernels over up to eight tokens.
using RowsImpl = void (*)(int64_t, const uint8_t*, size_t, const uint8_t*, float*, size_t);
using GemmImpl = void (*)(int64_t, const uint8_t*, const uint8_t*, size_t, const KGemmExtras*, float*, int64_t);
struct KQuantKernels {
  RowsImpl rows[kTileRows];
  GemmImpl gemm[kGemmTokens];
  bool q6;
};

#define MOE_K4_KERNELS(DEC)                                                                            \
  {{k4_rows<1, DEC>, k4_rows<2, DEC>, k4_rows<3, DEC>, k4_rows<4, DEC>},                                 \
   {k4_gemm<1, DEC>, k4_gemm<2, DEC>, k4_gemm<3, DEC>, k4_gemm<4, DEC>, k4_gemm<5, DEC>, k4_gemm<6, DEC>, \
    k4_gemm<7, DEC>, k4_gemm<8, DEC>},                                                                    \
   false}

// One row streamed from DRAM (decode, one token): prefetch this far ahead of the block being decoded.
// The hardware prefetcher alone left the single-thread Q4_K matvec about 10% slower.
inline constexpr size_t kSingleRowPrefetch = 4096;

template <const KQuantKernels& K>
void drive_k(int64_t n, const void* w, size_t ws, int nr, const void* act, size_t as, int nt, float* out, int64_t os) {
  const auto* wp = static_cast<const uint8_t*>(w);
  const auto* ap = static_cast<const uint8_t*>(act);
  const int64_t nb = n / kQKK;
  if (nt == 1 || nb > kGemmMaxBlocks) {
    for (int t = 0; t < nt; ++t)
      for (int r0 = 0; r0 < nr; r0 += kTileRows) {
        const int mr = nr - r0 < kTileRows ? nr - r0 : kTileRows;
        K.rows[mr - 1](n, wp + r0 * ws, ws, ap + t * as, out + t * os + r0, 2 * static_cast<size_t>(mr) * ws);
      }
    return;
  }
  // Token groups outer, rows inner: the group's activations (8 x 292 bytes per block) and the caller's
  // row group stay in L1/L2 while every row meets every token of the group.
  KGemmExtras ex[kGemmMaxBlocks];
  for (int t0 = 0; t0 < nt; t0 += kGemmTokens) {
    const int mt = nt - t0 < kGemmTokens ? nt - t0 : kGemmTokens;
    const uint8_t* a0 = ap + t0 * as;
    if (K.q6)
      build_extras<true>(a0, as, mt, nb, ex);
    else
      build_extras<false>(a0, as, mt, nb, ex);
    for (int r = 0; r < nr; ++r) K.gemm[mt - 1](nb, wp + r * ws, a0, as, ex, out + t0 * os + r, os);
  }
}

template <const KQuantKernels& K>
float single_k(int64_t n, const void* w, const void* act) {
  float r;
  K.rows[0](n, static_cast<const uint8_t*>(w), 0, static_cast<const uint8_t*>(act), &r, kSingleRowPrefetch);
  return r;
}

}  // namespace
}  // namespace moe::quant::avx512t
