// AVX-512 VNNI "tile" kernels: dot products of NR weight rows with NT activation rows in one pass, so
// that a decoded weight block is reused across NT tokens (prefill) and an activation block (plus its
// per-block sums and shuffles) is reused across NR rows (decode). Built with the AVX-512 flag set
// (file name ends in _avx512.cpp); only reached after cpu_features() confirmed VNNI/BW/VL/DQ.
//
// Numerics: for every (row, token) pair the sequence of floating-point operations is the same whatever
// the tile shape, so the one-row kernels (also the trait table's vec_dot for these types), the decode
// tiles over several rows and the prefill kernels over several tokens give bit-identical results;
// tests/test_kernels_tile.cpp checks this. Per (super-)block the integer dot product is exact, as in the
// scalar reference; only the order of the float sums across blocks differs from it (relative error
// ~1e-7 of sum |w*a|, tested at 2e-6).
//
// Prefill (K-quants): one row against up to eight tokens, whose quants are read straight from memory,
// so a weight block is decoded once per eight tokens. On this Zen 4 core the remaining cost is the
// vpmaddubsw + vpdpwssd pair per 64 weights and token (both 512-bit, one per cycle each).
//
// Tricks used (all exact in integer arithmetic):
//  * K-quants: u8 quants x s8 activations via vpmaddubsw, times the 6/8-bit sub-block scale and
//    accumulated in one vpdpwssd; mins / offsets come from the activation's bsums (one vpmaddwd).
//  * Q4_K/Q5_K scales unpacked with two pshufb + masks instead of a scalar loop.
//  * Legacy types: the weight is made unsigned (Q8_0: x ^ 0x80 = x + 128; Q4_0: raw nibble = x + 8),
//    and the accumulator starts at -offset * sum(y) per lane, computed once per token and block pair
//    and shared across rows; one vpdpbusd then gives the exact signed dot product.
// GCC 12 warns about the intentionally undefined upper halves in its own cast intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/quant_blocks.h"
#include "kernels/quant_tile.h"

namespace moe::quant {
namespace avx512t {
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

template <bool kQ5>
inline void k4_decode(const uint8_t* blk, K4Weights& k) {
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

// The eight 32-element sums of a Q8_K block (pairs of its 16-element bsums).
inline __m128i q8k_pair_sums(const BlockQ8_K& y) { return _mm_hadd_epi16(ld128(y.bsums), ld128(y.bsums + 8)); }

// Sum of the four partial min corrections of one (row, token), in a fixed order shared by all kernels.
inline float sum4(const float* m) { return (m[0] + m[1]) + (m[2] + m[3]); }

// NR rows x one token. acc: scaled integer sums; accmin: the min corrections, kept apart so a multi-token
// kernel can compute four tokens' corrections in one zmm (see k4_gemm) with the same per-lane operations.
template <int NR, bool kQ5>
void k4_rows(int64_t n, const uint8_t* w, size_t ws, const uint8_t* act, float* out) {
  __m512 acc[NR];
  __m128 accmin[NR];
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) {
    acc[r] = _mm512_setzero_ps();
    accmin[r] = _mm_setzero_ps();
  }
  const int64_t nb = n / kQKK;
  const size_t xb = kQ5 ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
  for (int64_t b = 0; b < nb; ++b) {
    const BlockQ8_K& y = reinterpret_cast<const BlockQ8_K*>(act)[b];
    __m512i ys[4];
    #pragma GCC unroll 8
    for (int i = 0; i < 4; ++i) ys[i] = ld512(y.qs + 64 * i);
    const __m128i pairs = q8k_pair_sums(y);
    #pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const uint8_t* blk = w + r * ws + b * xb;
      prefetch_block(blk + 2 * NR * ws, xb);
      K4Weights k;
      k4_decode<kQ5>(blk, k);
      __m512i isum = _mm512_setzero_si512();
      #pragma GCC unroll 8
      for (int i = 0; i < 4; ++i) isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(k.v[i], ys[i]), k.s[i]);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(k.dx * y.d), acc[r]);
      const __m128i msum = _mm_madd_epi16(k.mins16, pairs);
      accmin[r] = _mm_fmadd_ps(_mm_cvtepi32_ps(msum), _mm_set1_ps(k.dmx * y.d), accmin[r]);
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
template <int NT, bool kQ5>
void k4_gemm(int64_t nb, const uint8_t* w, const uint8_t* act, size_t as, const KGemmExtras* ex, float* out, int64_t os) {
  constexpr int NG = (NT + 3) / 4;
  const size_t xb = kQ5 ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
  __m512 acc[NT], accmin[NG];
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  #pragma GCC unroll 8
  for (int g = 0; g < NG; ++g) accmin[g] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    K4Weights k;
    k4_decode<kQ5>(w + b * xb, k);
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

template <int NR>
void q6_rows(int64_t n, const uint8_t* w, size_t ws, const uint8_t* act, float* out) {
  __m512 acc[NR];
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) acc[r] = _mm512_setzero_ps();
  const int64_t nb = n / kQKK;
  for (int64_t b = 0; b < nb; ++b) {
    const BlockQ8_K& y = reinterpret_cast<const BlockQ8_K*>(act)[b];
    const __m256i negb = _mm256_sub_epi16(_mm256_setzero_si256(), ld256(y.bsums));
    __m512i ys[4];
    #pragma GCC unroll 8
    for (int i = 0; i < 4; ++i) ys[i] = ld512(y.qs + 64 * i);
    #pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const BlockQ6_K& x = reinterpret_cast<const BlockQ6_K*>(w + r * ws)[b];
      prefetch_block(reinterpret_cast<const uint8_t*>(&x) + 2 * NR * ws, sizeof(BlockQ6_K));
      Q6Weights k;
      q6_decode(x, k);
      // Quants are u = value + 32; start the accumulator at -32 * sum(scale * bsum).
      __m512i isum = _mm512_zextsi256_si512(_mm256_madd_epi16(negb, k.sc32));
      #pragma GCC unroll 8
      for (int i = 0; i < 4; ++i) isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(k.u[i], ys[i]), k.s[i]);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(k.dx * y.d), acc[r]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) out[r] = _mm512_reduce_add_ps(acc[r]);
}

template <int NT>
void q6_gemm(int64_t nb, const uint8_t* w, const uint8_t* act, size_t as, const KGemmExtras* ex, float* out, int64_t os) {
  __m512 acc[NT];
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    Q6Weights k;
    q6_decode(reinterpret_cast<const BlockQ6_K*>(w)[b], k);
    const KGemmExtras& e = ex[b];
    const uint8_t* yb = act + b * sizeof(BlockQ8_K);
    __m512i isum[NT];
    #pragma GCC unroll 8
    for (int t = 0; t < NT; ++t)
      isum[t] = _mm512_zextsi256_si512(_mm256_madd_epi16(ld256(e.negb[t]), k.sc32));
    k_quant_mac<NT>(k.u, k.s, yb, as, isum);
    const __m512 dxv = _mm512_set1_ps(k.dx);
    #pragma GCC unroll 8
    for (int t = 0; t < NT; ++t)
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(dxv, _mm512_set1_ps(e.dy[t])), acc[t]);
  }
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) out[t * os] = _mm512_reduce_add_ps(acc[t]);
}

// ---- Q8_0 / Q4_0 --------------------------------------------------------------------------------

// Two consecutive legacy blocks per zmm (lanes 0..7: block b, 8..15: block b+1). For an odd block
// count the last zmm holds one block and zeros (zero quants and zero scales add exactly +0).
inline __m512i pair_qs_q8(const BlockQ8_0* x, bool two) {
  const __m256i lo = ld256(x[0].qs);
  return two ? _mm512_inserti64x4(_mm512_castsi256_si512(lo), ld256(x[1].qs), 1) : _mm512_zextsi256_si512(lo);
}
inline __m512 pair_scale_f16(uint16_t d0, uint16_t d1) {
  const __m256i h = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16(static_cast<short>(d0))),
                                            _mm_set1_epi16(static_cast<short>(d1)), 1);
  return _mm512_cvtph_ps(h);
}

struct LegacyAct {
  __m512i y, init;
  __m512 d;
};

// kOffset: the weight is fed to vpdpbusd as x + kOffset (unsigned); init = -kOffset * sum(y) per lane.
template <int kOffset>
inline void legacy_prepare(const BlockQ8_0* y, bool two, LegacyAct& p) {
  p.y = pair_qs_q8(y, two);
  p.init = _mm512_sub_epi32(_mm512_setzero_si512(),
                            _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(static_cast<char>(kOffset)), p.y));
  p.d = pair_scale_f16(y[0].d, two ? y[1].d : 0);
}

// Blocks b and b+1 (only b when !two) of one weight row as unsigned quants (x + kOffset) and scales.
template <bool kQ4>
inline void legacy_decode(const uint8_t* row, int64_t b, bool two, __m512i& u, __m512& dx) {
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
    u = _mm512_and_si512(_mm512_srlv_epi64(dup, nib_shift), m4);
    dx = pair_scale_f16(x[0].d, two ? x[1].d : 0);
  } else {
    const BlockQ8_0* x = reinterpret_cast<const BlockQ8_0*>(row) + b;
    u = _mm512_xor_si512(pair_qs_q8(x, two), _mm512_set1_epi8(static_cast<char>(0x80)));
    dx = pair_scale_f16(x[0].d, two ? x[1].d : 0);
  }
}

template <int NR, int NT, bool kQ4>
void tile_legacy(int64_t n, const uint8_t* w, size_t ws, const uint8_t* act, size_t as, float* out, int64_t os) {
  constexpr int kOffset = kQ4 ? 8 : 128;
  constexpr size_t kBlockBytes = kQ4 ? sizeof(BlockQ4_0) : sizeof(BlockQ8_0);
  __m512 acc[NR][NT];
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_setzero_ps();
  const int64_t nb = n / kQK;
  for (int64_t b = 0; b < nb; b += 2) {
    const bool two = b + 1 < nb;
    LegacyAct ya[NT];
    for (int t = 0; t < NT; ++t) legacy_prepare<kOffset>(reinterpret_cast<const BlockQ8_0*>(act + t * as) + b, two, ya[t]);
    for (int r = 0; r < NR; ++r) {
      __m512i u;
      __m512 dx;
      prefetch_block(w + r * ws + 2 * NR * ws + b * kBlockBytes, 2 * kBlockBytes);
      legacy_decode<kQ4>(w + r * ws, b, two, u, dx);
      for (int t = 0; t < NT; ++t) {
        const __m512i isum = _mm512_dpbusd_epi32(ya[t].init, u, ya[t].y);
        acc[r][t] = _mm512_fmadd_ps(_mm512_mul_ps(dx, ya[t].d), _mm512_cvtepi32_ps(isum), acc[r][t]);
      }
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < NT; ++t) out[t * os + r] = _mm512_reduce_add_ps(acc[r][t]);
}

// Prefill for Q8_0 / Q4_0: one row against up to eight tokens over a chunk of block pairs, with the
// tokens' prepared activations (LegacyAct, built once per chunk for all rows) read from memory. The
// accumulators live in `acc` between chunks; per (row, token) the operations are those of tile_legacy.
inline constexpr int64_t kLegacyChunkPairs = 16;
template <int NT, bool kQ4>
void legacy_gemm(int64_t b0, int64_t b1, int64_t nb, const uint8_t* row, const LegacyAct* ya, __m512* acc) {
  __m512 a[NT];
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) a[t] = acc[t];
  for (int64_t b = b0; b < b1; b += 2, ya += kGemmTokens) {
    __m512i u;
    __m512 dx;
    legacy_decode<kQ4>(row, b, b + 1 < nb, u, dx);
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const __m512i isum = _mm512_dpbusd_epi32(ya[t].init, u, ya[t].y);
      a[t] = _mm512_fmadd_ps(_mm512_mul_ps(dx, ya[t].d), _mm512_cvtepi32_ps(isum), a[t]);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) acc[t] = a[t];
}

template <int NR, int NT>
void tile_q8_0(int64_t n, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* out, int64_t os) {
  tile_legacy<NR, NT, false>(n, w, ws, a, as, out, os);
}
template <int NR, int NT>
void tile_q4_0(int64_t n, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* out, int64_t os) {
  tile_legacy<NR, NT, true>(n, w, ws, a, as, out, os);
}

// ---- drivers ------------------------------------------------------------------------------------

using TileImpl = void (*)(int64_t, const uint8_t*, size_t, const uint8_t*, size_t, float*, int64_t);

#define MOE_TILE_TABLE(K)                                                                                  \
  {                                                                                                        \
    {K<1, 1>, K<1, 2>}, {K<2, 1>, K<2, 2>}, {K<3, 1>, K<3, 2>}, { K<4, 1>, K<4, 2> }                       \
  }

const TileImpl kQ80[kTileRows][kTileTokens] = MOE_TILE_TABLE(tile_q8_0);
const TileImpl kQ40[kTileRows][kTileTokens] = MOE_TILE_TABLE(tile_q4_0);

template <const TileImpl (&Tab)[kTileRows][kTileTokens]>
void drive(int64_t n, const void* w, size_t ws, int nr, const void* act, size_t as, int nt, float* out, int64_t os) {
  const auto* wp = static_cast<const uint8_t*>(w);
  const auto* ap = static_cast<const uint8_t*>(act);
  for (int r0 = 0; r0 < nr; r0 += kTileRows) {
    const int mr = nr - r0 < kTileRows ? nr - r0 : kTileRows;
    for (int t0 = 0; t0 < nt; t0 += kTileTokens) {
      const int mt = nt - t0 < kTileTokens ? nt - t0 : kTileTokens;
      Tab[mr - 1][mt - 1](n, wp + r0 * ws, ws, ap + t0 * as, as, out + t0 * os + r0, os);
    }
  }
}

using LegacyGemmImpl = void (*)(int64_t, int64_t, int64_t, const uint8_t*, const LegacyAct*, __m512*);
#define MOE_LEGACY_GEMMS(Q4)                                                                            \
  {legacy_gemm<1, Q4>, legacy_gemm<2, Q4>, legacy_gemm<3, Q4>, legacy_gemm<4, Q4>, legacy_gemm<5, Q4>,  \
   legacy_gemm<6, Q4>, legacy_gemm<7, Q4>, legacy_gemm<8, Q4>}
const LegacyGemmImpl kQ80Gemm[kGemmTokens] = MOE_LEGACY_GEMMS(false);
const LegacyGemmImpl kQ40Gemm[kGemmTokens] = MOE_LEGACY_GEMMS(true);

// Q8_0 / Q4_0: the row tiles for one token; for several, token groups of eight x chunks of block
// pairs, each chunk's activations prepared once for all (up to 16) rows of the call.
template <const TileImpl (&Tab)[kTileRows][kTileTokens], const LegacyGemmImpl (&Gemm)[kGemmTokens], int kOffset>
void drive_legacy(int64_t n, const void* w, size_t ws, int nr, const void* act, size_t as, int nt, float* out,
                  int64_t os) {
  constexpr int kMaxRows = 16;
  if (nt == 1 || nr > kMaxRows) {
    drive<Tab>(n, w, ws, nr, act, as, nt, out, os);
    return;
  }
  const auto* wp = static_cast<const uint8_t*>(w);
  const auto* ap = static_cast<const uint8_t*>(act);
  const int64_t nb = n / kQK;
  LegacyAct ya[kLegacyChunkPairs * kGemmTokens];
  __m512 acc[kMaxRows][kGemmTokens];
  for (int t0 = 0; t0 < nt; t0 += kGemmTokens) {
    const int mt = nt - t0 < kGemmTokens ? nt - t0 : kGemmTokens;
    for (int r = 0; r < nr; ++r)
      for (int t = 0; t < mt; ++t) acc[r][t] = _mm512_setzero_ps();
    for (int64_t c0 = 0; c0 < nb; c0 += 2 * kLegacyChunkPairs) {
      const int64_t c1 = std::min(nb, c0 + 2 * kLegacyChunkPairs);
      for (int64_t b = c0; b < c1; b += 2)
        for (int t = 0; t < mt; ++t)
          legacy_prepare<kOffset>(reinterpret_cast<const BlockQ8_0*>(ap + (t0 + t) * as) + b, b + 1 < nb,
                                  ya[(b - c0) / 2 * kGemmTokens + t]);
      for (int r = 0; r < nr; ++r) Gemm[mt - 1](c0, c1, nb, wp + r * ws, ya, acc[r]);
    }
    for (int r = 0; r < nr; ++r)
      for (int t = 0; t < mt; ++t) out[(t0 + t) * os + r] = _mm512_reduce_add_ps(acc[r][t]);
  }
}

template <const TileImpl (&Tab)[kTileRows][kTileTokens]>
float single(int64_t n, const void* w, const void* act) {
  float r;
  Tab[0][0](n, static_cast<const uint8_t*>(w), 0, static_cast<const uint8_t*>(act), 0, &r, 0);
  return r;
}

// K-quants: one-token kernels over up to four rows, and one-row kernels over up to eight tokens.
using RowsImpl = void (*)(int64_t, const uint8_t*, size_t, const uint8_t*, float*);
using GemmImpl = void (*)(int64_t, const uint8_t*, const uint8_t*, size_t, const KGemmExtras*, float*, int64_t);
struct KQuantKernels {
  RowsImpl rows[kTileRows];
  GemmImpl gemm[kGemmTokens];
  bool q6;
};

#define MOE_K4_KERNELS(Q5)                                                                              \
  {{k4_rows<1, Q5>, k4_rows<2, Q5>, k4_rows<3, Q5>, k4_rows<4, Q5>},                                     \
   {k4_gemm<1, Q5>, k4_gemm<2, Q5>, k4_gemm<3, Q5>, k4_gemm<4, Q5>, k4_gemm<5, Q5>, k4_gemm<6, Q5>,     \
    k4_gemm<7, Q5>, k4_gemm<8, Q5>},                                                                      \
   false}
const KQuantKernels kQ4K = MOE_K4_KERNELS(false);
const KQuantKernels kQ5K = MOE_K4_KERNELS(true);
const KQuantKernels kQ6K = {{q6_rows<1>, q6_rows<2>, q6_rows<3>, q6_rows<4>},
                            {q6_gemm<1>, q6_gemm<2>, q6_gemm<3>, q6_gemm<4>, q6_gemm<5>, q6_gemm<6>, q6_gemm<7>,
                             q6_gemm<8>},
                            true};

template <const KQuantKernels& K>
void drive_k(int64_t n, const void* w, size_t ws, int nr, const void* act, size_t as, int nt, float* out, int64_t os) {
  const auto* wp = static_cast<const uint8_t*>(w);
  const auto* ap = static_cast<const uint8_t*>(act);
  const int64_t nb = n / kQKK;
  if (nt == 1 || nb > kGemmMaxBlocks) {
    for (int t = 0; t < nt; ++t)
      for (int r0 = 0; r0 < nr; r0 += kTileRows) {
        const int mr = nr - r0 < kTileRows ? nr - r0 : kTileRows;
        K.rows[mr - 1](n, wp + r0 * ws, ws, ap + t * as, out + t * os + r0);
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
  K.rows[0](n, static_cast<const uint8_t*>(w), 0, static_cast<const uint8_t*>(act), &r);
  return r;
}

}  // namespace
}  // namespace avx512t

TileKernels tile_kernels_avx512(DType t) {
  using namespace avx512t;
  switch (t) {
    case DType::Q4_K: return {drive_k<kQ4K>, single_k<kQ4K>};
    case DType::Q5_K: return {drive_k<kQ5K>, single_k<kQ5K>};
    case DType::Q6_K: return {drive_k<kQ6K>, single_k<kQ6K>};
    case DType::Q8_0: return {drive_legacy<kQ80, kQ80Gemm, 128>, single<kQ80>};
    case DType::Q4_0: return {drive_legacy<kQ40, kQ40Gemm, 8>, single<kQ40>};
    default: return {nullptr, nullptr};
  }
}

}  // namespace moe::quant
