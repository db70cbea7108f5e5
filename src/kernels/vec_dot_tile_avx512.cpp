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
// so a weight block is decoded once per eight tokens. The remaining cost is the vpmaddubsw + vpdpwssd
// pair per 64 weights and token.
//
// Tricks used (all exact in integer arithmetic):
//  * K-quants: u8 quants x s8 activations via vpmaddubsw, times the 6/8-bit sub-block scale and
//    accumulated in one vpdpwssd; mins / offsets come from the activation's bsums (one vpmaddwd).
//  * Q4_K/Q5_K scales unpacked with two pshufb + masks instead of a scalar loop.
//  * Legacy types: the weight is made unsigned (Q8_0: x ^ 0x80 = x + 128; Q4_0: raw nibble = x + 8),
//    and the accumulator starts at -offset * sum(y) per lane, computed once per token and block pair
//    and shared across rows; one vpdpbusd then gives the exact signed dot product.
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

template <int NR>
void q6_rows(int64_t n, const uint8_t* w, size_t ws, const uint8_t* act, float* out, size_t pf) {
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
      prefetch_block(reinterpret_cast<const uint8_t*>(&x) + pf, sizeof(BlockQ6_K));
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

const KQuantKernels kQ4K = MOE_K4_KERNELS(K4Decoder<false>);
const KQuantKernels kQ5K = MOE_K4_KERNELS(K4Decoder<true>);
const KQuantKernels kQ6K = {{q6_rows<1>, q6_rows<2>, q6_rows<3>, q6_rows<4>},
                            {q6_gemm<1>, q6_gemm<2>, q6_gemm<3>, q6_gemm<4>, q6_gemm<5>, q6_gemm<6>, q6_gemm<7>,
                             q6_gemm<8>},
                            true};

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
    case DType::Q4_K: return {drive_k<kQ4K>, single_k<kQ4K>};
    case DType::Q5_K: return {drive_k<kQ5K>, single_k<kQ5K>};
    case DType::Q6_K: return {drive_k<kQ6K>, single_k<kQ6K>};
    case DType::Q4_K_R:
      return cpu_features().has_avx512vbmi_kernels() ? tile_kernels_q4k_repacked_avx512vbmi() : TileKernels{};
    case DType::Q8_0: return {drive_legacy<kQ80, kQ80Gemm, 128>, single<kQ80>};
    case DType::Q4_0: return {drive_legacy<kQ40, kQ40Gemm, 8>, single<kQ40>};
    case DType::MXFP4: return tile_kernels_mxfp4_avx512();
    default: return {nullptr, nullptr};
  }
}

}  // namespace moe::quant
