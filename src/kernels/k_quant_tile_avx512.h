// AVX-512 K-quant kernel templates shared by the tile translation units (vec_dot_tile_avx512.cpp and
// q4k_repacked_avx512vbmi.cpp). Include only from files compiled with the AVX-512 flag set.
//
// The includers compile with `#pragma GCC optimize("fp-contract=off")` before any include: these kernels
// follow the scalar reference's float operations exactly, and GCC would otherwise fuse a multiply and
// an add (even written as intrinsics) into one fma.
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

// v with 32-bit lane `lane` (a compile-time constant after unrolling) loaded from p.
inline __m128i insert_epi32_from(__m128i v, const void* p, int lane) {
  int32_t x;
  std::memcpy(&x, p, 4);
  switch (lane) {
    case 0: return _mm_insert_epi32(v, x, 0);
    case 1: return _mm_insert_epi32(v, x, 1);
    case 2: return _mm_insert_epi32(v, x, 2);
    default: return _mm_insert_epi32(v, x, 3);
  }
}
// The same for a 16-bit lane 0..7.
inline __m128i insert_epi16_from(__m128i v, const void* p, int lane) {
  uint16_t x;
  std::memcpy(&x, p, 2);
  switch (lane) {
    case 0: return _mm_insert_epi16(v, x, 0);
    case 1: return _mm_insert_epi16(v, x, 1);
    case 2: return _mm_insert_epi16(v, x, 2);
    case 3: return _mm_insert_epi16(v, x, 3);
    case 4: return _mm_insert_epi16(v, x, 4);
    case 5: return _mm_insert_epi16(v, x, 5);
    case 6: return _mm_insert_epi16(v, x, 6);
    default: return _mm_insert_epi16(v, x, 7);
  }
}

// Lane sums of four int32 vectors: lane i of the result is the sum of all 16 lanes of x[i] (exact).
inline __m128i hsum4_epi32(__m512i x0, __m512i x1, __m512i x2, __m512i x3) {
  const __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(x0, x1), _mm512_unpackhi_epi32(x0, x1));
  const __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(x2, x3), _mm512_unpackhi_epi32(x2, x3));
  // Each 128-bit lane: [x0, x1, x2, x3] summed over that lane.
  const __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
  const __m256i v = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
  return _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
}

// Float part of the block-exact dot product for up to four rows at once (lane r = row r): the scalar
// reference's sum += (d * dy) * I - (dmin * dy) * M, operation for operation (this file's includers
// compile with fp-contract=off, so nothing is fused).
inline __m128 k_quant_block_sum(__m128 sum, __m128 d, __m128 dmin, __m128 dy, __m128i I, __m128i M) {
  const __m128 a = _mm_mul_ps(_mm_mul_ps(d, dy), _mm_cvtepi32_ps(I));
  const __m128 m = _mm_mul_ps(_mm_mul_ps(dmin, dy), _mm_cvtepi32_ps(M));
  return _mm_add_ps(sum, _mm_sub_ps(a, m));
}

// NR rows x one token, the arithmetic of vec_dot_q4_K_ref / vec_dot_q5_K_ref: per block each row's exact
// integer sums (its 16 lanes and its 4 min lanes reduced), then the float part per row in block order.
// pf: software-prefetch distance in bytes.
template <int NR, class Dec>
void k4_rows(int64_t n, const uint8_t* w, size_t ws, const uint8_t* act, float* out, size_t pf) {
  __m128 sum = _mm_setzero_ps();
  const int64_t nb = n / kQKK;
  constexpr size_t xb = Dec::kBlockBytes;
  const __m256i deinterleave = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  for (int64_t b = 0; b < nb; ++b) {
    const BlockQ8_K& y = reinterpret_cast<const BlockQ8_K*>(act)[b];
    __m512i ys[4];
    #pragma GCC unroll 8
    for (int i = 0; i < 4; ++i) ys[i] = ld512(y.qs + 64 * i);
    const __m128i pairs = q8k_pair_sums(y);
    __m512i isum[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    __m128i msum[4] = {_mm_setzero_si128(), _mm_setzero_si128(), _mm_setzero_si128(), _mm_setzero_si128()};
    __m128i dd = _mm_setzero_si128();  // d | dmin << 16 per row (inserted from memory: no store forwarding)
    #pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const uint8_t* blk = w + r * ws + b * xb;
      prefetch_block(blk + pf, xb);
      K4Weights k;
      Dec::decode(blk, k);
      #pragma GCC unroll 8
      for (int i = 0; i < 4; ++i) isum[r] = _mm512_dpwssd_epi32(isum[r], _mm512_maddubs_epi16(k.v[i], ys[i]), k.s[i]);
      msum[r] = _mm_madd_epi16(k.mins16, pairs);
      dd = insert_epi32_from(dd, blk, r);
    }
    const __m128i I = hsum4_epi32(isum[0], isum[1], isum[2], isum[3]);
    const __m128i M = _mm_hadd_epi32(_mm_hadd_epi32(msum[0], msum[1]), _mm_hadd_epi32(msum[2], msum[3]));
    const __m256 dm = _mm256_permutevar8x32_ps(_mm256_cvtph_ps(dd), deinterleave);
    sum = k_quant_block_sum(sum, _mm256_castps256_ps128(dm), _mm256_extractf128_ps(dm, 1), _mm_set1_ps(y.d), I, M);
  }
  alignas(16) float s[4];
  _mm_store_ps(s, sum);
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) out[r] = s[r];
}

// Adds lanes 0 .. m-1 of v to the scalar in lane 0 of sum, one after the other (block order).
inline __m128 add_lanes_in_order(__m128 sum, __m128 v, int m) {
  sum = _mm_add_ss(sum, v);
  if (m > 1) sum = _mm_add_ss(sum, _mm_shuffle_ps(v, v, 1));
  if (m > 2) sum = _mm_add_ss(sum, _mm_shuffle_ps(v, v, 2));
  if (m > 3) sum = _mm_add_ss(sum, _mm_shuffle_ps(v, v, 3));
  return sum;
}

// One row x one token (the trait table's vec_dot, and decode's matvec): the arithmetic of k4_rows<1>,
// with four consecutive blocks' integer sums reduced together and their float parts computed in one
// register, then added to the running sum in block order.
template <class Dec>
void k4_row1(int64_t n, const uint8_t* w, size_t, const uint8_t* act, float* out, size_t pf) {
  __m128 sum = _mm_setzero_ps();
  const int64_t nb = n / kQKK;
  constexpr size_t xb = Dec::kBlockBytes;
  const __m256i deinterleave = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  for (int64_t b0 = 0; b0 < nb; b0 += 4) {
    const int m = nb - b0 < 4 ? static_cast<int>(nb - b0) : 4;
    __m512i isum[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    __m128i msum[4] = {_mm_setzero_si128(), _mm_setzero_si128(), _mm_setzero_si128(), _mm_setzero_si128()};
    __m128i dd = _mm_setzero_si128(), dy = _mm_setzero_si128();
    #pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      if (i >= m) break;
      const BlockQ8_K& y = reinterpret_cast<const BlockQ8_K*>(act)[b0 + i];
      const uint8_t* blk = w + (b0 + i) * xb;
      prefetch_block(blk + pf, xb);
      K4Weights k;
      Dec::decode(blk, k);
      #pragma GCC unroll 8
      for (int j = 0; j < 4; ++j) isum[i] = _mm512_dpwssd_epi32(isum[i], _mm512_maddubs_epi16(k.v[j], ld512(y.qs + 64 * j)), k.s[j]);
      msum[i] = _mm_madd_epi16(k.mins16, q8k_pair_sums(y));
      dd = insert_epi32_from(dd, blk, i);
      dy = insert_epi32_from(dy, &y.d, i);
    }
    const __m128i I = hsum4_epi32(isum[0], isum[1], isum[2], isum[3]);
    const __m128i M = _mm_hadd_epi32(_mm_hadd_epi32(msum[0], msum[1]), _mm_hadd_epi32(msum[2], msum[3]));
    const __m256 dm = _mm256_permutevar8x32_ps(_mm256_cvtph_ps(dd), deinterleave);
    const __m128 dyf = _mm_castsi128_ps(dy);
    const __m128 a = _mm_mul_ps(_mm_mul_ps(_mm256_castps256_ps128(dm), dyf), _mm_cvtepi32_ps(I));
    const __m128 mm = _mm_mul_ps(_mm_mul_ps(_mm256_extractf128_ps(dm, 1), dyf), _mm_cvtepi32_ps(M));
    sum = add_lanes_in_order(sum, _mm_sub_ps(a, mm), m);
  }
  *out = _mm_cvtss_f32(sum);
}

// One row x NT tokens (NT <= 4; an expert's few tokens in a batched decode step): each block is decoded
// once for all the tokens, and lane t carries token t through exactly k4_rows's arithmetic for one row
// (the same integer sums, then sum += (d * dy) * I - (dmin * dy) * M per block in block order), so every
// (row, token) has the bits of the one-token kernels. The row streams from DRAM: prefetched as k4_row1.
template <int NT, class Dec>
void k4_tokens(int64_t n, const uint8_t* w, const uint8_t* act, size_t as, float* out, int64_t os) {
  static_assert(NT >= 1 && NT <= 4, "k4_tokens: one to four tokens");
  __m128 sum = _mm_setzero_ps();
  const int64_t nb = n / kQKK;
  constexpr size_t xb = Dec::kBlockBytes;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = w + b * xb;
    prefetch_block(blk + 4096, xb);
    K4Weights k;
    Dec::decode(blk, k);
    __m512i isum[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    __m128i msum[4] = {_mm_setzero_si128(), _mm_setzero_si128(), _mm_setzero_si128(), _mm_setzero_si128()};
    __m128i dy = _mm_setzero_si128();
    #pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) {
      const BlockQ8_K& y = reinterpret_cast<const BlockQ8_K*>(act + t * as)[b];
      #pragma GCC unroll 8
      for (int i = 0; i < 4; ++i) isum[t] = _mm512_dpwssd_epi32(isum[t], _mm512_maddubs_epi16(k.v[i], ld512(y.qs + 64 * i)), k.s[i]);
      msum[t] = _mm_madd_epi16(k.mins16, q8k_pair_sums(y));
      dy = insert_epi32_from(dy, &y.d, t);
    }
    const __m128i I = hsum4_epi32(isum[0], isum[1], isum[2], isum[3]);
    const __m128i M = _mm_hadd_epi32(_mm_hadd_epi32(msum[0], msum[1]), _mm_hadd_epi32(msum[2], msum[3]));
    sum = k_quant_block_sum(sum, _mm_set1_ps(k.dx), _mm_set1_ps(k.dmx), _mm_castsi128_ps(dy), I, M);
  }
  alignas(16) float s[4];
  _mm_store_ps(s, sum);
  #pragma GCC unroll 4
  for (int t = 0; t < NT; ++t) out[t * os] = s[t];
}

// K-quant row kernels for one token over up to four rows, the few-token kernels (where the type has
// them), and the panel GEMM for kPanelMinTokens tokens or more.
using RowsImpl = void (*)(int64_t, const uint8_t*, size_t, const uint8_t*, float*, size_t);
using TokensImpl = void (*)(int64_t, const uint8_t*, const uint8_t*, size_t, float*, int64_t);
struct KQuantKernels {
  DType type;  // for the panel GEMM
  RowsImpl rows[kTileRows];  // rows[0] is the single-row kernel
  TokensImpl tokens[4];      // tokens[m - 1]: one row x m tokens; null: the row kernels once per token
};

#define MOE_K4_KERNELS(TYPE, DEC)                                                  \
  {TYPE,                                                                           \
   {k4_row1<DEC>, k4_rows<2, DEC>, k4_rows<3, DEC>, k4_rows<4, DEC>},              \
   {k4_tokens<1, DEC>, k4_tokens<2, DEC>, k4_tokens<3, DEC>, k4_tokens<4, DEC>}}

// One row streamed from DRAM (decode, one token): prefetch this far ahead of the block being decoded.
// The hardware prefetcher alone left the single-thread Q4_K matvec about 10% slower.
inline constexpr size_t kSingleRowPrefetch = 4096;

// One token: the row kernels. A few (under kPanelMinTokensShared): each row through the few-token kernels,
// or where the type has none (under kPanelMinTokens), each group of rows through the row kernels once per
// token (from L1 after the first). More: the panel GEMM (gemm_panel_avx512.cpp), which converts each weight block once for all
// tokens. The same bits per (row, token) on every path.
template <const KQuantKernels& K>
void drive_k(int64_t n, const void* w, size_t ws, int nr, const void* act, size_t as, int nt, float* out, int64_t os) {
  if (nt >= (K.tokens[0] ? kPanelMinTokensShared : kPanelMinTokens)) {
    panel_gemm_avx512(K.type, n, w, ws, nr, act, as, {}, nt, out, os);
    return;
  }
  const auto* wp = static_cast<const uint8_t*>(w);
  const auto* ap = static_cast<const uint8_t*>(act);
  if (nt >= 2 && K.tokens[0]) {
    for (int r = 0; r < nr; ++r)
      for (int t0 = 0; t0 < nt; t0 += 4) {
        const int m = nt - t0 < 4 ? nt - t0 : 4;
        K.tokens[m - 1](n, wp + r * ws, ap + t0 * as, as, out + t0 * os + r, os);
      }
    return;
  }
  if (nt >= 2) {
    for (int r0 = 0; r0 < nr; r0 += kTileRows) {
      const int mr = nr - r0 < kTileRows ? nr - r0 : kTileRows;
      for (int t = 0; t < nt; ++t)
        K.rows[mr - 1](n, wp + r0 * ws, ws, ap + t * as, out + t * os + r0, 2 * static_cast<size_t>(mr) * ws);
    }
    return;
  }
  for (int r0 = 0; r0 < nr; r0 += kTileRows) {
    const int mr = nr - r0 < kTileRows ? nr - r0 : kTileRows;
    K.rows[mr - 1](n, wp + r0 * ws, ws, ap, out + r0, 2 * static_cast<size_t>(mr) * ws);
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
