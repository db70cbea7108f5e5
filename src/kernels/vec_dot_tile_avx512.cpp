// AVX-512 VNNI "tile" kernels: dot products of NR weight rows with NT activation rows in one pass, so
// that a decoded weight block is reused across NT tokens (prefill) and an activation block (plus its
// per-block sums and shuffles) is reused across NR rows (decode). Built with the AVX-512 flag set
// (file name ends in _avx512.cpp); only reached after cpu_features() confirmed VNNI/BW/VL/DQ.
//
// Numerics: for every (row, token) pair the sequence of floating-point operations is the same whatever
// NR and NT are, so tile<1,1> (which is also the trait table's vec_dot for these types), tile<4,1>
// (decode) and tile<4,2> (prefill) give bit-identical results; tests/test_kernels_tile.cpp checks this.
// Per (super-)block the integer dot product is exact, as in the scalar reference; only the order of the
// float sums across blocks differs from it (relative error ~1e-7 of sum |w*a|, tested at 2e-6).
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

// Per token and super-block, shared by all rows: activations rearranged to match 512-bit quant loads
// (lo nibbles of qs[64h..64h+63] are sub-blocks 4h and 4h+2, hi nibbles 4h+1 and 4h+3), and the eight
// 32-element sums of y.
struct K4Act {
  __m512i a[2], b[2];
  __m128i pairs;
  float d;
};
inline void k4_prepare(const BlockQ8_K& y, K4Act& p) {
  for (int h = 0; h < 2; ++h) {
    const __m512i y0 = ld512(y.qs + 128 * h), y1 = ld512(y.qs + 128 * h + 64);
    p.a[h] = _mm512_shuffle_i64x2(y0, y1, 0x44);
    p.b[h] = _mm512_shuffle_i64x2(y0, y1, 0xEE);
  }
  p.pairs = _mm_hadd_epi16(ld128(y.bsums), ld128(y.bsums + 8));
  p.d = y.d;
}

// Q5_K: byte mask of the fifth bits for one zmm of quants (chunk h, low or high nibbles).
inline __m512i q5_bit_mask(int h, int hi_nibble) {
  const int b0 = 4 * h + hi_nibble, b1 = 4 * h + 2 + hi_nibble;
  return _mm512_inserti64x4(_mm512_set1_epi8(static_cast<char>(1 << b0)), _mm256_set1_epi8(static_cast<char>(1 << b1)), 1);
}

template <int NR, int NT, bool kQ5>
void tile_k4(int64_t n, const uint8_t* w, size_t ws, const uint8_t* act, size_t as, float* out, int64_t os) {
  const __m512i m4 = _mm512_set1_epi8(0x0F), sixteen = _mm512_set1_epi8(16);
  const __m128i min_idx = _mm_setr_epi8(8, -128, 9, -128, 10, -128, 11, -128, 12, -128, 13, -128, 14, -128, 15, -128);
  __m512 acc[NR][NT];
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_setzero_ps();
  const int64_t nb = n / kQKK;
  const size_t xb = kQ5 ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
  for (int64_t b = 0; b < nb; ++b) {
    K4Act ya[NT];
    for (int t = 0; t < NT; ++t) k4_prepare(reinterpret_cast<const BlockQ8_K*>(act + t * as)[b], ya[t]);
    for (int r = 0; r < NR; ++r) {
      const uint8_t* blk = w + r * ws + b * xb;
      prefetch_block(blk + 2 * NR * ws, xb);
      uint16_t dh, dmh;
      std::memcpy(&dh, blk, 2);
      std::memcpy(&dmh, blk + 2, 2);
      const uint8_t* scales = blk + 4;
      const uint8_t* qh = kQ5 ? blk + 16 : nullptr;
      const uint8_t* qs = kQ5 ? blk + 48 : blk + 16;
      const __m128i sc = k4_unpack_scales(scales);
      const __m512i scb = _mm512_broadcast_i32x4(sc);
      const __m128i mins16 = _mm_shuffle_epi8(sc, min_idx);
      __m512i hb;
      if constexpr (kQ5) hb = _mm512_broadcast_i64x4(ld256(qh));
      __m512i isum[NT];
      for (int t = 0; t < NT; ++t) isum[t] = _mm512_setzero_si512();
      for (int h = 0; h < 2; ++h) {
        const __m512i q = ld512(qs + 64 * h);
        __m512i lo = _mm512_and_si512(q, m4);
        __m512i hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
        if constexpr (kQ5) {
          lo = _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(hb, q5_bit_mask(h, 0)), lo, sixteen);
          hi = _mm512_mask_add_epi8(hi, _mm512_test_epi8_mask(hb, q5_bit_mask(h, 1)), hi, sixteen);
        }
        const __m512i sa = k4_scale_vec(scb, static_cast<char>(4 * h), static_cast<char>(4 * h + 2));
        const __m512i sb = k4_scale_vec(scb, static_cast<char>(4 * h + 1), static_cast<char>(4 * h + 3));
        for (int t = 0; t < NT; ++t) {
          isum[t] = _mm512_dpwssd_epi32(isum[t], _mm512_maddubs_epi16(lo, ya[t].a[h]), sa);
          isum[t] = _mm512_dpwssd_epi32(isum[t], _mm512_maddubs_epi16(hi, ya[t].b[h]), sb);
        }
      }
      const float dx = h2f(dh), dmx = h2f(dmh);
      for (int t = 0; t < NT; ++t) {
        const __m512i msum = _mm512_zextsi128_si512(_mm_madd_epi16(mins16, ya[t].pairs));
        acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_set1_ps(dx * ya[t].d), acc[r][t]);
        acc[r][t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum), _mm512_set1_ps(dmx * ya[t].d), acc[r][t]);
      }
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < NT; ++t) out[t * os + r] = _mm512_reduce_add_ps(acc[r][t]);
}
template <int NR, int NT>
void tile_q4_K(int64_t n, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* out, int64_t os) {
  tile_k4<NR, NT, false>(n, w, ws, a, as, out, os);
}
template <int NR, int NT>
void tile_q5_K(int64_t n, const uint8_t* w, size_t ws, const uint8_t* a, size_t as, float* out, int64_t os) {
  tile_k4<NR, NT, true>(n, w, ws, a, as, out, os);
}

// ---- Q6_K ---------------------------------------------------------------------------------------

alignas(64) const int16_t kQ6ScaleIdx[4][32] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
    {8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9, 10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
    {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13, 14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15},
};

template <int NR, int NT>
void tile_q6_K(int64_t n, const uint8_t* w, size_t ws, const uint8_t* act, size_t as, float* out, int64_t os) {
  const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
  const __m512i shl01 = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
  const __m512i shr23 = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);
  __m512 acc[NR][NT];
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_setzero_ps();
  const int64_t nb = n / kQKK;
  for (int64_t b = 0; b < nb; ++b) {
    const BlockQ8_K* ys[NT];
    __m256i negb[NT];
    for (int t = 0; t < NT; ++t) {
      ys[t] = reinterpret_cast<const BlockQ8_K*>(act + t * as) + b;
      negb[t] = _mm256_sub_epi16(_mm256_setzero_si256(), ld256(ys[t]->bsums));
    }
    for (int r = 0; r < NR; ++r) {
      const BlockQ6_K& x = reinterpret_cast<const BlockQ6_K*>(w + r * ws)[b];
      prefetch_block(reinterpret_cast<const uint8_t*>(&x) + 2 * NR * ws, sizeof(BlockQ6_K));
      const __m256i sc16 = _mm256_cvtepi8_epi16(ld128(x.scales));
      const __m512i sc512 = _mm512_castsi256_si512(sc16);
      // Quants are u = value + 32; start each accumulator at -32 * sum(scale * bsum).
      const __m256i sc32 = _mm256_slli_epi16(sc16, 5);
      __m512i isum[NT];
      for (int t = 0; t < NT; ++t) isum[t] = _mm512_zextsi256_si512(_mm256_madd_epi16(negb[t], sc32));
      for (int g = 0; g < 2; ++g) {
        const __m512i L = ld512(x.ql + 64 * g);
        const __m512i hb = _mm512_broadcast_i64x4(ld256(x.qh + 32 * g));
        const __m512i h01 = _mm512_and_si512(_mm512_sllv_epi16(hb, shl01), m30);
        const __m512i h23 = _mm512_and_si512(_mm512_srlv_epi16(hb, shr23), m30);
        const __m512i u01 = and_or(L, m4, h01);
        const __m512i u23 = and_or(_mm512_srli_epi16(L, 4), m4, h23);
        const __m512i s01 = _mm512_permutexvar_epi16(_mm512_load_si512(kQ6ScaleIdx[2 * g]), sc512);
        const __m512i s23 = _mm512_permutexvar_epi16(_mm512_load_si512(kQ6ScaleIdx[2 * g + 1]), sc512);
        for (int t = 0; t < NT; ++t) {
          isum[t] = _mm512_dpwssd_epi32(isum[t], _mm512_maddubs_epi16(u01, ld512(ys[t]->qs + 128 * g)), s01);
          isum[t] = _mm512_dpwssd_epi32(isum[t], _mm512_maddubs_epi16(u23, ld512(ys[t]->qs + 128 * g + 64)), s23);
        }
      }
      const float dx = h2f(x.d);
      for (int t = 0; t < NT; ++t)
        acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_set1_ps(dx * ys[t]->d), acc[r][t]);
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < NT; ++t) out[t * os + r] = _mm512_reduce_add_ps(acc[r][t]);
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

template <int NR, int NT, bool kQ4>
void tile_legacy(int64_t n, const uint8_t* w, size_t ws, const uint8_t* act, size_t as, float* out, int64_t os) {
  constexpr int kOffset = kQ4 ? 8 : 128;
  const __m512i m4 = _mm512_set1_epi8(0x0F), flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i nib_shift = _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0);
  const __m512i dup_lanes = _mm512_set_epi64(3, 2, 3, 2, 1, 0, 1, 0);
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
      prefetch_block(w + r * ws + 2 * NR * ws + b * (kQ4 ? sizeof(BlockQ4_0) : sizeof(BlockQ8_0)),
                     2 * (kQ4 ? sizeof(BlockQ4_0) : sizeof(BlockQ8_0)));
      if constexpr (kQ4) {
        const BlockQ4_0* x = reinterpret_cast<const BlockQ4_0*>(w + r * ws) + b;
        const __m128i q0 = ld128(x[0].qs);
        const __m256i q01 = two ? _mm256_inserti128_si256(_mm256_castsi128_si256(q0), ld128(x[1].qs), 1)
                                : _mm256_zextsi128_si256(q0);
        // [q0 | q0 | q1 | q1], then shift the odd 128-bit lanes right by 4: lo nibbles, hi nibbles.
        const __m512i dup = _mm512_permutexvar_epi64(dup_lanes, _mm512_castsi256_si512(q01));
        u = _mm512_and_si512(_mm512_srlv_epi64(dup, nib_shift), m4);
        dx = pair_scale_f16(x[0].d, two ? x[1].d : 0);
      } else {
        const BlockQ8_0* x = reinterpret_cast<const BlockQ8_0*>(w + r * ws) + b;
        u = _mm512_xor_si512(pair_qs_q8(x, two), flip);
        dx = pair_scale_f16(x[0].d, two ? x[1].d : 0);
      }
      for (int t = 0; t < NT; ++t) {
        const __m512i isum = _mm512_dpbusd_epi32(ya[t].init, u, ya[t].y);
        acc[r][t] = _mm512_fmadd_ps(_mm512_mul_ps(dx, ya[t].d), _mm512_cvtepi32_ps(isum), acc[r][t]);
      }
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < NT; ++t) out[t * os + r] = _mm512_reduce_add_ps(acc[r][t]);
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

const TileImpl kQ4K[kTileRows][kTileTokens] = MOE_TILE_TABLE(tile_q4_K);
const TileImpl kQ5K[kTileRows][kTileTokens] = MOE_TILE_TABLE(tile_q5_K);
const TileImpl kQ6K[kTileRows][kTileTokens] = MOE_TILE_TABLE(tile_q6_K);
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

template <const TileImpl (&Tab)[kTileRows][kTileTokens]>
float single(int64_t n, const void* w, const void* act) {
  float r;
  Tab[0][0](n, static_cast<const uint8_t*>(w), 0, static_cast<const uint8_t*>(act), 0, &r, 0);
  return r;
}

}  // namespace
}  // namespace avx512t

TileKernels tile_kernels_avx512(DType t) {
  using namespace avx512t;
  switch (t) {
    case DType::Q4_K: return {drive<kQ4K>, single<kQ4K>};
    case DType::Q5_K: return {drive<kQ5K>, single<kQ5K>};
    case DType::Q6_K: return {drive<kQ6K>, single<kQ6K>};
    case DType::Q8_0: return {drive<kQ80>, single<kQ80>};
    case DType::Q4_0: return {drive<kQ40>, single<kQ40>};
    default: return {nullptr, nullptr};
  }
}

}  // namespace moe::quant
