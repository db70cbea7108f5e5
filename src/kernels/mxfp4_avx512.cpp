// AVX-512 VNNI kernels for MXFP4 weights x Q8_0 activations: the one-pair dot product (the trait
// table's vec_dot), the one-token path that prepares the activation row once and streams the rows (decode),
// and the multi-row x multi-token tile (prefill). Built with the AVX-512 flag set (file name ends in
// _avx512.cpp); only reached after cpu_features() confirmed VNNI/BW/VL/DQ.
//
// Two blocks share a zmm: lanes 0..7 hold block b (elements 0..15 from the low nibbles, 16..31 from the
// high ones, as the activations are laid out), lanes 8..15 block b + 1. Each 4-bit code is looked up
// (pshufb) as its doubled e2m1 value plus 12, an unsigned byte 0..24, so one vpdpbusd against the signed
// activations gives the exact dot product once the accumulator starts at -12 * sum(y) per lane; that
// start is computed once per token and block pair and shared by all rows. Per (row, token) every kernel
// runs the same float operations in the same order, so the tile's outputs equal the one-pair kernel's
// bit for bit (tests/test_mxfp4.cpp). Against the scalar reference only the order of the float sums
// across blocks differs.
//
// Tried and dropped: a VBMI + GFNI decoder (one masked load and vpermb for [q0|q0|q1|q1], vgf2p8affineqb
// for the nibbles) and a GFNI-only one; neither was measurably faster on this machine (0.7-1.0x).
#include <algorithm>
#include <vector>

#include "kernels/k_quant_tile_avx512.h"
#include "kernels/mxfp4_kernels.h"

namespace moe::quant {
namespace avx512mx {
namespace {

using avx512t::h2f;
using avx512t::ld128;
using avx512t::ld256;
using avx512t::prefetch_block;

constexpr int kOffset = 12;  // added to the doubled e2m1 values to make them unsigned

// Unsigned code values (kMxfp4Values + 12) in every 128-bit lane, for vpshufb.
struct CodeLut {
  alignas(16) uint8_t v[16];
  constexpr CodeLut() : v() {
    for (int c = 0; c < 16; ++c) v[c] = static_cast<uint8_t>(kMxfp4Values[c] + kOffset);
  }
};
constexpr CodeLut kCodeLut{};
inline __m512i code_lut() { return _mm512_broadcast_i32x4(ld128(kCodeLut.v)); }

// One token's Q8_0 blocks b and b + 1 (only b when !two): quants, -12 * sum(y) per lane, and scales.
struct MxAct {
  __m512i y, init;
  __m512 d;
};

inline __m512 pair_scale_f16(uint16_t d0, uint16_t d1) {
  const __m256i h = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16(static_cast<short>(d0))),
                                            _mm_set1_epi16(static_cast<short>(d1)), 1);
  return _mm512_cvtph_ps(h);
}

inline void act_prepare(const BlockQ8_0* y, bool two, MxAct& p) {
  const __m256i lo = ld256(y[0].qs);
  p.y = two ? _mm512_inserti64x4(_mm512_castsi256_si512(lo), ld256(y[1].qs), 1) : _mm512_zextsi256_si512(lo);
  p.init = _mm512_sub_epi32(_mm512_setzero_si512(),
                            _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(kOffset), p.y));
  p.d = pair_scale_f16(y[0].d, two ? y[1].d : 0);
}

// Weight blocks b and b + 1 of a row as unsigned code values and half scales: [q0 | q0 | q1 | q1] from
// two loads, odd 128-bit lanes shifted right by 4, masked, looked up. Without a second block the upper
// lanes hold code 0 (value 12) against zero activations and a zero scale: they add exactly 0.
inline void weight_decode(const BlockMXFP4* x, bool two, __m512i& u, __m512& dx) {
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  const __m512i nib_shift = _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0);
  const __m512i dup_lanes = _mm512_set_epi64(3, 2, 3, 2, 1, 0, 1, 0);
  const __m128i q0 = ld128(x[0].qs);
  const __m256i q01 =
      two ? _mm256_inserti128_si256(_mm256_castsi128_si256(q0), ld128(x[1].qs), 1) : _mm256_zextsi128_si256(q0);
  const __m512i dup = _mm512_permutexvar_epi64(dup_lanes, _mm512_castsi256_si512(q01));
  u = _mm512_shuffle_epi8(code_lut(), _mm512_and_si512(_mm512_srlv_epi64(dup, nib_shift), m4));
  dx = _mm512_insertf32x8(_mm512_set1_ps(kE8m0Half.v[x[0].e]), _mm256_set1_ps(two ? kE8m0Half.v[x[1].e] : 0.0f), 1);
}

// The one multiply-accumulate every kernel performs per (row, token, block pair).
inline __m512 mac(__m512 acc, __m512i u, __m512 dx, const MxAct& a) {
  const __m512i isum = _mm512_dpbusd_epi32(a.init, u, a.y);
  return _mm512_fmadd_ps(_mm512_mul_ps(dx, a.d), _mm512_cvtepi32_ps(isum), acc);
}

// Decode streams one row from DRAM: prefetch this far ahead (as the K-quant single-row kernels do).
constexpr size_t kSingleRowPrefetch = 4096;

// One row x one token, preparing each activation pair as it goes (the trait table's vec_dot).
float single(int64_t n, const void* w, const void* act) {
  const auto* x = static_cast<const BlockMXFP4*>(w);
  const auto* y = static_cast<const BlockQ8_0*>(act);
  const int64_t nb = n / kQK;
  __m512 acc = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; b += 2) {
    const bool two = b + 1 < nb;
    MxAct a;
    act_prepare(y + b, two, a);
    prefetch_block(reinterpret_cast<const uint8_t*>(x + b) + kSingleRowPrefetch, 2 * sizeof(BlockMXFP4));
    __m512i u;
    __m512 dx;
    weight_decode(x + b, two, u, dx);
    acc = mac(acc, u, dx, a);
  }
  return _mm512_reduce_add_ps(acc);
}

// Prefill: one row against up to eight tokens over a chunk of block pairs [b0, b1), the tokens'
// prepared activations read from `ya` (kTokens per pair). Accumulators persist in `acc` across chunks.
constexpr int kTokens = 8;
constexpr int64_t kChunkPairs = 16;

template <int NT>
void row_tokens(int64_t b0, int64_t b1, int64_t nb, const uint8_t* row, const MxAct* ya, __m512* acc) {
  __m512 a[NT];
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) a[t] = acc[t];
  const BlockMXFP4* x = reinterpret_cast<const BlockMXFP4*>(row);
  for (int64_t b = b0; b < b1; b += 2, ya += kTokens) {
    __m512i u;
    __m512 dx;
    weight_decode(x + b, b + 1 < nb, u, dx);
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) a[t] = mac(a[t], u, dx, ya[t]);
  }
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) acc[t] = a[t];
}

using RowTokensImpl = void (*)(int64_t, int64_t, int64_t, const uint8_t*, const MxAct*, __m512*);
const RowTokensImpl kRowTokens[kTokens] = {row_tokens<1>, row_tokens<2>, row_tokens<3>, row_tokens<4>,
                                           row_tokens<5>, row_tokens<6>, row_tokens<7>, row_tokens<8>};

// One token against nr rows: the token's activation pairs are prepared once (3 zmm per pair, in L1 for
// rows up to ~16k elements) and each row then streams on its own, with the one-pair kernel's arithmetic.
void rows_prepared(int64_t n, const uint8_t* w, size_t ws, int nr, const uint8_t* act, float* out, int64_t os) {
  const int64_t nb = n / kQK, np = (nb + 1) / 2;
  thread_local std::vector<MxAct> prepared;
  if (prepared.size() < static_cast<size_t>(np)) prepared.resize(static_cast<size_t>(np));
  MxAct* ya = prepared.data();
  for (int64_t p = 0; p < np; ++p) act_prepare(reinterpret_cast<const BlockQ8_0*>(act) + 2 * p, 2 * p + 1 < nb, ya[p]);
  for (int r = 0; r < nr; ++r) {
    const BlockMXFP4* x = reinterpret_cast<const BlockMXFP4*>(w + r * ws);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t p = 0; p < np; ++p) {
      prefetch_block(reinterpret_cast<const uint8_t*>(x + 2 * p) + kSingleRowPrefetch, 2 * sizeof(BlockMXFP4));
      __m512i u;
      __m512 dx;
      weight_decode(x + 2 * p, 2 * p + 1 < nb, u, dx);
      acc = mac(acc, u, dx, ya[p]);
    }
    out[r * os] = _mm512_reduce_add_ps(acc);
  }
}

void tile(int64_t n, const void* w, size_t ws, int nr, const void* act, size_t as, int nt, float* out, int64_t os) {
  const auto* wp = static_cast<const uint8_t*>(w);
  const auto* ap = static_cast<const uint8_t*>(act);
  constexpr int kMaxRows = 16;
  if (nt == 1) {
    rows_prepared(n, wp, ws, nr, ap, out, 1);
    return;
  }
  if (nr > kMaxRows) {
    for (int t = 0; t < nt; ++t) rows_prepared(n, wp, ws, nr, ap + t * as, out + t * os, 1);
    return;
  }
  // Token groups of eight, chunks of block pairs: each chunk's activations are prepared once for all
  // rows of the call, and each row's blocks are decoded once per group of eight tokens.
  const int64_t nb = n / kQK;
  MxAct ya[kChunkPairs * kTokens];
  __m512 acc[kMaxRows][kTokens];
  for (int t0 = 0; t0 < nt; t0 += kTokens) {
    const int mt = std::min(kTokens, nt - t0);
    for (int r = 0; r < nr; ++r)
      for (int t = 0; t < mt; ++t) acc[r][t] = _mm512_setzero_ps();
    for (int64_t c0 = 0; c0 < nb; c0 += 2 * kChunkPairs) {
      const int64_t c1 = std::min(nb, c0 + 2 * kChunkPairs);
      for (int64_t b = c0; b < c1; b += 2)
        for (int t = 0; t < mt; ++t)
          act_prepare(reinterpret_cast<const BlockQ8_0*>(ap + (t0 + t) * as) + b, b + 1 < nb,
                      ya[(b - c0) / 2 * kTokens + t]);
      for (int r = 0; r < nr; ++r) kRowTokens[mt - 1](c0, c1, nb, wp + r * ws, ya, acc[r]);
    }
    for (int r = 0; r < nr; ++r)
      for (int t = 0; t < mt; ++t) out[(t0 + t) * os + r] = _mm512_reduce_add_ps(acc[r][t]);
  }
}

}  // namespace
}  // namespace avx512mx

TileKernels tile_kernels_mxfp4_avx512() {
  using namespace avx512mx;
  return {tile, single, /*one_token=*/true};
}

}  // namespace moe::quant
