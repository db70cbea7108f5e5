// Prefill GEMM over weight panels: the many-token kernels of Q4_0, Q8_0, Q4_K, Q4_K_R, Q5_K and Q6_K
// (quant_tile.h). A panel is 16 weight rows converted, once per call, into registers' worth of unsigned
// bytes where lane r of every 512-bit register belongs to row r: register g of a block holds the quants
// of elements 4g .. 4g+3 of all 16 rows. One vpdpbusd then multiplies them with four activation bytes of
// one token, broadcast from memory, and accumulates 16 rows' partial dot products at once: the inner
// loop is one instruction per 64 multiply-adds, with no lane shuffles and no horizontal sums. Each
// lane accumulates a whole (sub-)block of its row, so the integer scales of the K-quants are applied
// once per sub-block and row (vpmulld), and the float work is a few instructions per block and token.
//
// Numerics: per (row, token) exactly the scalar reference kernel's arithmetic (quant_blocks.h): the
// exact integer block sums, then per block the same float products and sums in block order. The
// compiler must not fuse those multiplies and adds, hence fp-contract=off for this file.
//
// The conversion (a 16 x 16 transpose of 32-bit words per 64 weights of each row, and the scales laid
// out lane-wise) costs about as much as four tokens' products for K-quants, so it pays from two tokens
// on; the decode row kernels take single tokens. Q8_0 matrices packed at load (Q8_0_P, q8_0_panels.h)
// skip it: the Q8_0 kernel reads their panels where they lie, for any number of tokens.
#pragma GCC optimize("fp-contract=off")
// GCC 12 warns about the intentionally undefined upper halves in its own cast intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/q8_0_panels.h"
#include "kernels/quant_blocks.h"
#include "kernels/quant_tile.h"
#include "kernels/transpose16_avx512.h"

namespace moe::quant {
namespace {

using kernels::transpose16;

constexpr int kPanel = 16;

inline __m512i ld512(const void* p) { return _mm512_loadu_si512(p); }
inline int32_t ld32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

alignas(64) const uint8_t kZeros[64] = {};

// A panel's 16 rows come from DRAM (a prefill reads each expert's weights once): 16 streams the hardware
// prefetchers did not keep up with. perf on 512-token prefills: two thirds of convert_q8_0's and of
// convert_k4's time was the wait for the first load of each row's block. So each conversion fetches the
// block about kAheadBytes ahead in every row itself, and the driver fetches the next panel's first
// kAheadBytes (prefetch_panel_head). bench/gemm_bench.cpp BM_PrefillExpert (an expert matrix of a
// prefill, 32 tokens, weights from DRAM): Q8_0 +30-40%, Q4_K_R +15-30%, Q6_K +20-25%. 32 blocks ahead
// was no better than 16 (Q8_0); fetching the whole next panel into L2 while the current one is
// multiplied was slower than this.
constexpr size_t kAheadBytes = 544;
// GCC 12 at -O2 deletes a loop nest whose only statements are _mm_prefetch (it counts them as free
// of side effects), hence the volatile asm.
inline void prefetch_line(const uint8_t* a) { asm volatile("prefetcht0 %0" : : "m"(*a)); }
inline void prefetch_line_l2(const uint8_t* a) { asm volatile("prefetcht1 %0" : : "m"(*a)); }
inline void prefetch_rows(const uint8_t* const* p, int nr, size_t off, size_t bytes) {
  for (int r = 0; r < nr; ++r) {
    const uint8_t* a = p[r] + off;
    for (size_t o = 0; o < bytes; o += 64) prefetch_line(a + o);
    prefetch_line(a + bytes - 1);
  }
}

// Four 16-byte pieces in one register, a in the lowest 128 bits.
inline __m512i load4x16(const uint8_t* a, const uint8_t* b, const uint8_t* c, const uint8_t* d) {
  const auto x = [](const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); };
  const __m512i lo = _mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(x(a)), x(b), 1));
  return _mm512_inserti64x4(lo, _mm256_inserti128_si256(_mm256_castsi128_si256(x(c)), x(d), 1), 1);
}

// The 16 bytes at p[r] + off of each row (rows >= nr read as zeros), transposed: out[k] lane r = bytes
// 4k .. 4k+3 of row r.
inline void gather_16x16(const uint8_t* const* p, int nr, size_t off, __m512i out[4]) {
  __m512i z[4];
  const auto at = [&](int r) { return r < nr ? p[r] + off : kZeros; };
  for (int q = 0; q < 4; ++q) z[q] = load4x16(at(4 * q), at(4 * q + 1), at(4 * q + 2), at(4 * q + 3));
  for (int k = 0; k < 4; ++k) {
    const __m512i idx = _mm512_setr_epi32(k, 4 + k, 8 + k, 12 + k, 16 + k, 20 + k, 24 + k, 28 + k, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i lo = _mm512_permutex2var_epi32(z[0], idx, z[1]), hi = _mm512_permutex2var_epi32(z[2], idx, z[3]);
    out[k] = _mm512_shuffle_i32x4(lo, hi, 0x44);
  }
}

// 64 bytes at p[r] + off of each row (zeros past nr), transposed into t[16].
inline void load_transpose64(const uint8_t* const* p, int nr, size_t off, __m512i t[16]) {
  for (int r = 0; r < kPanel; ++r) t[r] = r < nr ? ld512(p[r] + off) : _mm512_setzero_si512();
  transpose16(t);
}

// fp16 at p[r] + off of each row (rows >= nr: 0) as floats. Reads the 2 bytes before it too, which
// every caller guarantees to be inside the row.
inline __m512 gather_f16_hi(const uint8_t* const* p, int nr, size_t off) {
  alignas(64) int32_t v[16];
  for (int r = 0; r < kPanel; ++r) v[r] = r < nr ? ld32(p[r] + off - 2) : 0;
  return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_load_si512(v), 16)));
}

// acc += w . (the 4 bytes at p, broadcast to every lane), with the broadcast folded into the
// instruction's memory operand: GCC 12 emits a separate vpbroadcastd for _mm512_set1_epi32 of a load
// (one more instruction per vpdpbusd; a few percent of the many-token kernels).
inline __m512i dpbusd_bcst(__m512i acc, __m512i w, const uint8_t* p) {
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*reinterpret_cast<const int32_t*>(p)));
  return acc;
}

inline __m512i dpwssd_bcst(__m512i acc, __m512i w, const uint8_t* p) {
  asm("vpdpwssd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*reinterpret_cast<const int32_t*>(p)));
  return acc;
}

// Row offsets for the gathers below: lane r = r * ws for r < nr, else (nr - 1) * ws (a lane past nr is
// computed from a copy of the last row and never stored).
inline __m512i row_offsets(size_t ws, int nr) {
  const __m512i r = _mm512_min_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                     _mm512_set1_epi32(nr - 1));
  return _mm512_mullo_epi32(r, _mm512_set1_epi32(static_cast<int32_t>(ws)));
}
// The fp16 at base + rows[r] of each row as floats, in one gather (reads the 2 bytes after it too, which
// every caller guarantees to be inside the row). The 16 scalar loads and the store-forwarding stall of
// assembling them through memory were a quarter of convert_q8_0's time.
inline __m512 gather_f16_rows(const uint8_t* base, __m512i rows) {
  return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_i32gather_epi32(rows, base, 1)));
}

inline __m512i byte_of(__m512i v, int k) { return _mm512_and_si512(_mm512_srli_epi32(v, 8 * k), _mm512_set1_epi32(0xFF)); }
// The first kAheadBytes of each of a panel's rows, which its conversion's own prefetching does not
// cover: fetched for the next panel while the tiles multiply this one.
inline void prefetch_panel_head(const uint8_t* w, size_t ws, int nr) {
  const size_t bytes = std::min(kAheadBytes, ws);
  for (int r = 0; r < nr; ++r) {
    const uint8_t* a = w + static_cast<size_t>(r) * ws;
    for (size_t o = 0; o < bytes; o += 64) prefetch_line(a + o);
  }
}

// ---- K-quants with 8 sub-blocks of 32: Q4_K, Q4_K_R, Q5_K ------------------------------------------

struct alignas(64) K4Panel {
  __m512i q[64];     // u8 quants, register g: elements 4g .. 4g+3
  __m512i sc[8];     // int32 scale of sub-block j
  __m512i mins[8];   // int16 pair (m_j, m_j): multiplies the pair (bsum_2j, bsum_2j+1)
  __m512 d, dmin;
};

enum class K4Layout { Q4K, Q4KR, Q5K };

template <K4Layout L>
void convert_k4(const uint8_t* w, size_t ws, int nr, int64_t nb, K4Panel* out) {
  constexpr size_t bb = L == K4Layout::Q5K ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
  constexpr size_t qoff = L == K4Layout::Q5K ? 48 : 16;
  const __m512i m4 = _mm512_set1_epi8(0x0F), m63 = _mm512_set1_epi32(63);
  const uint8_t* p[kPanel];
  for (int64_t b = 0; b < nb; ++b) {
    for (int r = 0; r < kPanel; ++r) p[r] = w + static_cast<size_t>(r < nr ? r : 0) * ws + b * bb;
    constexpr int64_t ahead = (kAheadBytes + bb - 1) / bb;
    if (b + ahead < nb) prefetch_rows(p, nr, ahead * bb, bb);
    K4Panel& o = out[b];
    // Header: d | dmin << 16, then the 12 scale bytes.
    __m512i h[4];
    gather_16x16(p, nr, 0, h);
    o.d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h[0]));
    o.dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(h[0], 16)));
    __m512i sc[8], mn[8];
    if constexpr (L == K4Layout::Q4KR) {
      // Sixteen 6-bit values, value f at bits 6f .. 6f+5 of the 96 bits in h[1..3].
      for (int f = 0; f < 16; ++f) {
        const int bit = 6 * f, wd = bit / 32, s = bit % 32;
        __m512i v = _mm512_srli_epi32(h[1 + wd], s);
        if (s > 26) v = _mm512_or_si512(v, _mm512_slli_epi32(h[2 + wd], 32 - s));
        (f < 8 ? sc[f] : mn[f - 8]) = _mm512_and_si512(v, m63);
      }
    } else {
      __m512i S[12];
      for (int k = 0; k < 12; ++k) S[k] = byte_of(h[1 + k / 4], k % 4);
      for (int j = 0; j < 4; ++j) {
        sc[j] = _mm512_and_si512(S[j], m63);
        mn[j] = _mm512_and_si512(S[j + 4], m63);
        sc[j + 4] = _mm512_or_si512(_mm512_and_si512(S[j + 8], _mm512_set1_epi32(15)),
                                    _mm512_slli_epi32(_mm512_srli_epi32(S[j], 6), 4));
        mn[j + 4] = _mm512_or_si512(_mm512_srli_epi32(S[j + 8], 4), _mm512_slli_epi32(_mm512_srli_epi32(S[j + 4], 6), 4));
      }
    }
    for (int j = 0; j < 8; ++j) {
      o.sc[j] = sc[j];
      o.mins[j] = _mm512_or_si512(mn[j], _mm512_slli_epi32(mn[j], 16));
    }
    // Quants: two 64-byte halves of 128 nibble bytes, each transposed; then low and high nibbles.
    for (int half = 0; half < 2; ++half) {
      __m512i t[16];
      load_transpose64(p, nr, qoff + 64 * half, t);
      for (int g = 0; g < 16; ++g) {
        int glo, ghi;
        if constexpr (L == K4Layout::Q4KR) {
          // Byte 64h + k: element 128h + k (low nibble), 128h + 64 + k (high nibble).
          glo = 32 * half + g;
          ghi = 32 * half + 16 + g;
        } else {
          // 32-byte chunk c: byte l holds element 64c + l (low), 64c + 32 + l (high).
          const int c = 2 * half + g / 8;
          glo = 16 * c + g % 8;
          ghi = 16 * c + 8 + g % 8;
        }
        o.q[glo] = _mm512_and_si512(t[g], m4);
        o.q[ghi] = _mm512_and_si512(_mm512_srli_epi16(t[g], 4), m4);
      }
    }
    if constexpr (L == K4Layout::Q5K) {
      // qh[l] bit 2c: element 64c + l; bit 2c + 1: element 64c + 32 + l.
      __m512i t[16];
      for (int r = 0; r < kPanel; ++r)
        t[r] = r < nr ? _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p[r] + 16)))
                      : _mm512_setzero_si512();
      transpose16(t);
      const __m512i one = _mm512_set1_epi8(1);
      for (int c = 0; c < 4; ++c)
        for (int k = 0; k < 8; ++k) {
          const __m512i lo = _mm512_and_si512(_mm512_srli_epi32(t[k], 2 * c), one);
          const __m512i hi = _mm512_and_si512(_mm512_srli_epi32(t[k], 2 * c + 1), one);
          o.q[16 * c + k] = _mm512_or_si512(o.q[16 * c + k], _mm512_slli_epi32(lo, 4));
          o.q[16 * c + 8 + k] = _mm512_or_si512(o.q[16 * c + 8 + k], _mm512_slli_epi32(hi, 4));
        }
    }
  }
}

// NT tokens (rows `as` bytes apart, Q8_K) against one panel, all blocks. Per block and token: the
// exact integer sums I = sum_j sc_j * (q . y)_j and M = sum_j m_j * (bsum_2j + bsum_2j+1), then
// acc += (d * dy) * I - (dmin * dy) * M, as vec_dot_q4_K_ref.
template <int NT>
void gemm_k4(const K4Panel* P, int64_t nb, const uint8_t* act, size_t as, float* out, int64_t os, __mmask16 keep) {
  __m512 acc[NT];
  #pragma GCC unroll 16
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const K4Panel& p = P[b];
    const uint8_t* y = act + b * sizeof(BlockQ8_K);
    __m512i I[NT], D[NT];
    #pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) I[t] = _mm512_setzero_si512();
    // Each sum as two chains of four (even and odd words), as in gemm_legacy: latency-bound otherwise.
    __m512i E[NT];
    #pragma GCC unroll 1
    for (int j = 0; j < 8; ++j) {
      #pragma GCC unroll 16
      for (int t = 0; t < NT; ++t) D[t] = E[t] = _mm512_setzero_si512();
      #pragma GCC unroll 16
      for (int k = 0; k < 8; k += 2) {
        const __m512i w0 = p.q[8 * j + k], w1 = p.q[8 * j + k + 1];
        #pragma GCC unroll 16
        for (int t = 0; t < NT; ++t) {
          const uint8_t* yq = y + t * as + offsetof(BlockQ8_K, qs) + 32 * j + 4 * k;
          D[t] = dpbusd_bcst(D[t], w0, yq);
          E[t] = dpbusd_bcst(E[t], w1, yq + 4);
        }
      }
      #pragma GCC unroll 16
      for (int t = 0; t < NT; ++t) I[t] = _mm512_add_epi32(I[t], _mm512_mullo_epi32(_mm512_add_epi32(D[t], E[t]), p.sc[j]));
    }
    #pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) D[t] = E[t] = _mm512_setzero_si512();
    #pragma GCC unroll 16
    for (int i = 0; i < 8; i += 2)
      #pragma GCC unroll 16
      for (int t = 0; t < NT; ++t) {
        const uint8_t* ys = y + t * as + offsetof(BlockQ8_K, bsums) + 4 * i;
        D[t] = dpwssd_bcst(D[t], p.mins[i], ys);
        E[t] = dpwssd_bcst(E[t], p.mins[i + 1], ys + 4);
      }
    #pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) D[t] = _mm512_add_epi32(D[t], E[t]);
    #pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) {
      float dyf;
      std::memcpy(&dyf, y + t * as, 4);
      const __m512 dy = _mm512_set1_ps(dyf);
      const __m512 a = _mm512_mul_ps(_mm512_mul_ps(p.d, dy), _mm512_cvtepi32_ps(I[t]));
      const __m512 m = _mm512_mul_ps(_mm512_mul_ps(p.dmin, dy), _mm512_cvtepi32_ps(D[t]));
      acc[t] = _mm512_add_ps(acc[t], _mm512_sub_ps(a, m));
    }
  }
  #pragma GCC unroll 16
  for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(out + t * os, keep, acc[t]);
}

// ---- Q6_K ---------------------------------------------------------------------------------------

struct alignas(64) Q6Panel {
  __m512i q[64];    // u8 quants (value + 32), register g: elements 4g .. 4g+3
  __m512i sc[16];   // int32 scale of sub-block j (16 elements)
  __m512i off[8];   // int16 pair (-32 sc_2i, -32 sc_2i+1): multiplies (bsum_2i, bsum_2i+1)
  __m512 d;
};

void convert_q6(const uint8_t* w, size_t ws, int nr, int64_t nb, Q6Panel* out) {
  const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
  const uint8_t* p[kPanel];
  for (int64_t b = 0; b < nb; ++b) {
    for (int r = 0; r < kPanel; ++r) p[r] = w + static_cast<size_t>(r < nr ? r : 0) * ws + b * sizeof(BlockQ6_K);
    constexpr int64_t ahead = (kAheadBytes + sizeof(BlockQ6_K) - 1) / sizeof(BlockQ6_K);
    if (b + ahead < nb) prefetch_rows(p, nr, ahead * sizeof(BlockQ6_K), sizeof(BlockQ6_K));
    Q6Panel& o = out[b];
    __m512i s4[4];
    gather_16x16(p, nr, offsetof(BlockQ6_K, scales), s4);
    for (int j = 0; j < 16; ++j)
      o.sc[j] = _mm512_srai_epi32(_mm512_slli_epi32(s4[j / 4], 24 - 8 * (j % 4)), 24);
    for (int i = 0; i < 8; ++i) {
      const __m512i lo = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(o.sc[2 * i], 5));
      const __m512i hi = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(o.sc[2 * i + 1], 5));
      o.off[i] = _mm512_or_si512(_mm512_and_si512(lo, _mm512_set1_epi32(0xFFFF)), _mm512_slli_epi32(hi, 16));
    }
    o.d = gather_f16_hi(p, nr, offsetof(BlockQ6_K, d));
    __m512i qh[16];
    load_transpose64(p, nr, offsetof(BlockQ6_K, qh), qh);  // qh[k]: bytes 4k .. 4k+3 (half k / 8)
    for (int half = 0; half < 2; ++half) {
      __m512i ql[16];
      load_transpose64(p, nr, 64 * half, ql);
      // Element 128h + e: e = l (l < 32): ql[l] low | qh[l] bits 0-1; 32 + l: ql[32 + l] low | bits 2-3;
      // 64 + l: ql[l] high | bits 4-5; 96 + l: ql[32 + l] high | bits 6-7.
      for (int k = 0; k < 8; ++k) {
        const __m512i h = qh[8 * half + k];
        const int g = 32 * half + k;
        o.q[g] = _mm512_or_si512(_mm512_and_si512(ql[k], m4), _mm512_and_si512(_mm512_slli_epi32(h, 4), m30));
        o.q[g + 8] = _mm512_or_si512(_mm512_and_si512(ql[8 + k], m4), _mm512_and_si512(_mm512_slli_epi32(h, 2), m30));
        o.q[g + 16] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(ql[k], 4), m4), _mm512_and_si512(h, m30));
        o.q[g + 24] =
            _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(ql[8 + k], 4), m4), _mm512_and_si512(_mm512_srli_epi32(h, 2), m30));
      }
    }
  }
}

// acc += (d * dy) * I with I = sum_j sc_j * sum (q - 32) y, as vec_dot_q6_K_ref.
template <int NT>
void gemm_q6(const Q6Panel* P, int64_t nb, const uint8_t* act, size_t as, float* out, int64_t os, __mmask16 keep) {
  __m512 acc[NT];
  #pragma GCC unroll 16
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const Q6Panel& p = P[b];
    const uint8_t* y = act + b * sizeof(BlockQ8_K);
    __m512i I[NT], D[NT];
    #pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) I[t] = _mm512_setzero_si512();
    #pragma GCC unroll 16
    for (int i = 0; i < 8; ++i)
      #pragma GCC unroll 16
      for (int t = 0; t < NT; ++t)
        I[t] = _mm512_dpwssd_epi32(I[t], p.off[i], _mm512_set1_epi32(ld32(y + t * as + offsetof(BlockQ8_K, bsums) + 4 * i)));
    #pragma GCC unroll 1
    for (int j = 0; j < 16; ++j) {
      #pragma GCC unroll 16
      for (int t = 0; t < NT; ++t) D[t] = _mm512_setzero_si512();
      #pragma GCC unroll 16
      for (int k = 0; k < 4; ++k) {
        const __m512i wq = p.q[4 * j + k];
        #pragma GCC unroll 16
        for (int t = 0; t < NT; ++t)
          D[t] = _mm512_dpbusd_epi32(D[t], wq, _mm512_set1_epi32(ld32(y + t * as + offsetof(BlockQ8_K, qs) + 16 * j + 4 * k)));
      }
      #pragma GCC unroll 16
      for (int t = 0; t < NT; ++t) I[t] = _mm512_add_epi32(I[t], _mm512_mullo_epi32(D[t], p.sc[j]));
    }
    #pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) {
      float dyf;
      std::memcpy(&dyf, y + t * as, 4);
      acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(_mm512_mul_ps(p.d, _mm512_set1_ps(dyf)), _mm512_cvtepi32_ps(I[t])));
    }
  }
  #pragma GCC unroll 16
  for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(out + t * os, keep, acc[t]);
}

// ---- Q8_0 / Q4_0 (32-element blocks, Q8_0 activations) ----------------------------------------------

struct alignas(64) LegacyPanel {
  __m512i q[8];  // u8 quants with the offset added (Q8_0: x + 128, Q4_0: the nibble = x + 8)
  __m512 d;
};

// The quants of Q8_0 blocks b and b + 1 (only b unless two) of each row p[r] (rows >= nr: zeros) in
// register order: t[k] lane r = quants 4k .. 4k+3 of row r, block b; t[8 + k] the same of block b + 1.
inline void q8_0_pair_lanes(const uint8_t* const* p, int nr, int64_t b, bool two, __m512i t[16]) {
  for (int r = 0; r < kPanel; ++r) {
    if (r >= nr) {
      t[r] = _mm512_setzero_si512();
      continue;
    }
    const uint8_t* x = p[r] + b * sizeof(BlockQ8_0) + offsetof(BlockQ8_0, qs);
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
    t[r] = two ? _mm512_inserti64x4(_mm512_castsi256_si512(lo),
                                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + sizeof(BlockQ8_0))), 1)
               : _mm512_zextsi256_si512(lo);
  }
  transpose16(t);
}

void convert_q8_0(const uint8_t* w, size_t ws, int nr, int64_t nb, LegacyPanel* out) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80)), rows = row_offsets(ws, nr);
  const uint8_t* p[kPanel];
  for (int r = 0; r < kPanel; ++r) p[r] = w + static_cast<size_t>(r < nr ? r : 0) * ws;
  for (int64_t b = 0; b < nb; b += 2) {
    const bool two = b + 1 < nb;
    __m512i t[16];
    constexpr int64_t ahead = kAheadBytes / sizeof(BlockQ8_0);
    if (b + ahead < nb) prefetch_rows(p, nr, (b + ahead) * sizeof(BlockQ8_0), (b + ahead + 1 < nb ? 2 : 1) * sizeof(BlockQ8_0));
    q8_0_pair_lanes(p, nr, b, two, t);
    for (int k = 0; k < 8; ++k) {
      out[b].q[k] = _mm512_xor_si512(t[k], flip);
      if (two) out[b + 1].q[k] = _mm512_xor_si512(t[8 + k], flip);
    }
    out[b].d = gather_f16_rows(w + b * sizeof(BlockQ8_0), rows);
    if (two) out[b + 1].d = gather_f16_rows(w + (b + 1) * sizeof(BlockQ8_0), rows);
  }
}

void convert_q4_0(const uint8_t* w, size_t ws, int nr, int64_t nb, LegacyPanel* out) {
  const __m512i m4 = _mm512_set1_epi8(0x0F), rows = row_offsets(ws, nr);
  const uint8_t* p[kPanel];
  for (int r = 0; r < kPanel; ++r) p[r] = w + static_cast<size_t>(r < nr ? r : 0) * ws;
  for (int64_t b = 0; b < nb; b += 4) {
    const int nq = static_cast<int>(std::min<int64_t>(4, nb - b));
    constexpr int64_t ahead = kAheadBytes / sizeof(BlockQ4_0);
    if (b + ahead + 3 < nb) prefetch_rows(p, nr, (b + ahead) * sizeof(BlockQ4_0), 4 * sizeof(BlockQ4_0));
    __m512i t[16];
    for (int r = 0; r < kPanel; ++r) {
      const auto at = [&](int q) {
        return r < nr && q < nq ? p[r] + (b + q) * sizeof(BlockQ4_0) + offsetof(BlockQ4_0, qs) : kZeros;
      };
      t[r] = load4x16(at(0), at(1), at(2), at(3));
    }
    transpose16(t);
    // Block b + q, word k: low nibbles are elements 4k .. 4k+3, high nibbles 16 + 4k ...
    for (int q = 0; q < nq; ++q) {
      for (int k = 0; k < 4; ++k) {
        out[b + q].q[k] = _mm512_and_si512(t[4 * q + k], m4);
        out[b + q].q[4 + k] = _mm512_and_si512(_mm512_srli_epi16(t[4 * q + k], 4), m4);
      }
      out[b + q].d = gather_f16_rows(w + (b + q) * sizeof(BlockQ4_0), rows);
    }
  }
}

// The weights of one block of a panel, as gemm_legacy reads them: from a panel converted per call, or
// straight from a Q8_0_P matrix in memory (q8_0_panels.h: 512 bytes of quants, then 16 fp16 scales).
struct ConvertedBlocks {
  const LegacyPanel* P;
  __m512i q(int64_t b, int k) const { return P[b].q[k]; }
  __m512 d(int64_t b) const { return P[b].d; }
  void prefetch(int64_t) const {}
};
// Q8_0_P blocks fetched ahead by the first token tile: bench/gemm_bench.cpp BM_PrefillExpert q8_0_p, 32
// tokens, weights from DRAM: 340-375 GFLOP/s without, 415-435 at 4 blocks, 440-460 at 8, 440-470 at 16.
// Not for a decoded token: there two threads stream weights at once, and end to end (Qwen3-30B-A3B's
// layer at Q8_0, `moe bench -p 0 -n 64`, 7 alternating rounds) decode ran faster without it in 6 of 7
// (ahead 4-13%, behind 8% once), though one thread alone on BM_PrefillExpert/264/0/1 gains from it.
inline constexpr int64_t kPackedAhead = 16;
struct PackedBlocks {
  const uint8_t* base;
  bool fetch;  // the first token tile over this panel fetches ahead (the panel is still in DRAM)
  const uint8_t* at(int64_t b) const { return base + static_cast<size_t>(b) * kQ8PanelBlockBytes; }
  __m512i q(int64_t b, int k) const { return ld512(at(b) + 64 * k); }
  __m512 d(int64_t b) const { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(at(b) + 512))); }
  // Block b + kPackedAhead (reading past the panel's end only prefetches: never faults).
  void prefetch(int64_t b) const {
    if (!fetch) return;
    const uint8_t* a = at(b + kPackedAhead);
    for (size_t o = 0; o < kQ8PanelBlockBytes; o += 64) prefetch_line(a + o);
    prefetch_line(a + kQ8PanelBlockBytes - 1);
  }
};

// acc += float(I) * (dx * dy), I = sum x y, as vec_dot_q8_0_ref / vec_dot_q4_0_ref. The weights carry
// +kOffset, so I starts at -kOffset * sum(y) (sums: sum(y) per token and block).
template <int NT, int32_t kOffset, class Blocks>
void gemm_legacy(const Blocks& W, int64_t nb, const uint8_t* act, size_t as, const int32_t* sums,
                 const float* dy, int64_t nbx, float* out, int64_t os, __mmask16 keep) {
  __m512 acc[NT];
  #pragma GCC unroll 16
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    W.prefetch(b);
    const uint8_t* y = act + b * sizeof(BlockQ8_0) + offsetof(BlockQ8_0, qs);
    // Two chains of four vpdpbusd per token (even and odd words) instead of one of eight: the chain's
    // latency, not the instruction's throughput, bounded the block (integer sums: the same result).
    __m512i I[NT], J[NT];
    #pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) {
      I[t] = _mm512_set1_epi32(-kOffset * sums[t * nbx + b]);
      J[t] = _mm512_setzero_si512();
    }
    #pragma GCC unroll 16
    for (int k = 0; k < 8; k += 2) {
      const __m512i w0 = W.q(b, k), w1 = W.q(b, k + 1);
      #pragma GCC unroll 16
      for (int t = 0; t < NT; ++t) {
        I[t] = dpbusd_bcst(I[t], w0, y + t * as + 4 * k);
        J[t] = dpbusd_bcst(J[t], w1, y + t * as + 4 * k + 4);
      }
    }
    const __m512 d = W.d(b);
    #pragma GCC unroll 16
    for (int t = 0; t < NT; ++t)
      acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(I[t], J[t])),
                                                   _mm512_mul_ps(d, _mm512_set1_ps(dy[t * nbx + b]))));
  }
  #pragma GCC unroll 16
  for (int t = 0; t < NT; ++t) _mm512_mask_storeu_ps(out + t * os, keep, acc[t]);
}

// Lines of the next pair of panels that one pair tile fetches into L2 while it computes.
struct AheadSlice {
  const uint8_t* from = nullptr;
  int64_t lines = 0;
};

// Two Q8_0_P panels (32 rows) against NT tokens: each token's broadcast activation word feeds both
// panels, halving the broadcasts per vpdpbusd, which with one panel bounded the kernel before the
// multiply-adds did (bench/gemm_bench.cpp BM_PrefillExpert q8_0_p, 128 tokens, alternating: 457-498
// GFLOP/s with one panel of 8 tokens, 534-581 with pairs of 5; from cache, 510-560 against 660-700).
// One chain per (panel, token): at 5 tokens ten chains, enough to cover vpdpbusd's latency. The same
// integer sums and the same float epilogue as gemm_legacy, so the same bits. Also fetches `ahead` into
// L2, a few lines per block.
template <int NT, int32_t kOffset>
void gemm_legacy_pair(const PackedBlocks& W0, const PackedBlocks& W1, int64_t nb, const uint8_t* act, size_t as,
                      const int32_t* sums, const float* dy, int64_t nbx, float* out, int64_t os, __mmask16 keep0,
                      __mmask16 keep1, AheadSlice ahead) {
  __m512 acc0[NT], acc1[NT];
  #pragma GCC unroll 16
  for (int t = 0; t < NT; ++t) acc0[t] = acc1[t] = _mm512_setzero_ps();
  const int64_t ahead_per_block = (ahead.lines + nb - 1) / nb;
  for (int64_t b = 0; b < nb; ++b) {
    W0.prefetch(b);
    W1.prefetch(b);
    for (int64_t l = b * ahead_per_block, e = std::min(ahead.lines, l + ahead_per_block); l < e; ++l)
      prefetch_line_l2(ahead.from + 64 * l);
    const uint8_t* y = act + b * sizeof(BlockQ8_0) + offsetof(BlockQ8_0, qs);
    __m512i I[NT], J[NT];  // panel 0's and panel 1's sums
    #pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) I[t] = J[t] = _mm512_set1_epi32(-kOffset * sums[t * nbx + b]);
    #pragma GCC unroll 16
    for (int k = 0; k < 8; ++k) {
      const __m512i w0 = W0.q(b, k), w1 = W1.q(b, k);
      #pragma GCC unroll 16
      for (int t = 0; t < NT; ++t) {
        const __m512i yk = _mm512_set1_epi32(ld32(y + t * as + 4 * k));
        I[t] = _mm512_dpbusd_epi32(I[t], w0, yk);
        J[t] = _mm512_dpbusd_epi32(J[t], w1, yk);
      }
    }
    const __m512 d0 = W0.d(b), d1 = W1.d(b);
    #pragma GCC unroll 16
    for (int t = 0; t < NT; ++t) {
      const __m512 s = _mm512_set1_ps(dy[t * nbx + b]);
      acc0[t] = _mm512_add_ps(acc0[t], _mm512_mul_ps(_mm512_cvtepi32_ps(I[t]), _mm512_mul_ps(d0, s)));
      acc1[t] = _mm512_add_ps(acc1[t], _mm512_mul_ps(_mm512_cvtepi32_ps(J[t]), _mm512_mul_ps(d1, s)));
    }
  }
  #pragma GCC unroll 16
  for (int t = 0; t < NT; ++t) {
    _mm512_mask_storeu_ps(out + t * os, keep0, acc0[t]);
    _mm512_mask_storeu_ps(out + t * os + kPanel, keep1, acc1[t]);
  }
}

// ---- drivers ------------------------------------------------------------------------------------

// Tokens per register tile: 8 keeps each token's block sum, its sub-block sum and its float accumulator
// in registers next to the weights (26 of 32); measured within a few percent of 10 and 12.
constexpr int kTileTokens8 = 8;
// Tokens per tile of a panel pair: two float and two integer accumulators per token; 5 measured a few
// percent ahead of 4 and 6.
constexpr int kPairTileTokens = 5;

// Per-thread scratch: the converted panel and, for Q8_0 activations, per (token, block) values.
struct alignas(64) CacheLine {
  uint8_t bytes[64];
};
struct Scratch {
  std::vector<CacheLine> panel;  // 64-byte aligned by the type
  std::vector<int32_t> sums;
  std::vector<float> dy;
  template <class T>
  T* panels(size_t n) {
    const size_t lines = (n * sizeof(T) + sizeof(CacheLine) - 1) / sizeof(CacheLine);
    if (panel.size() < lines) panel.resize(lines);
    return reinterpret_cast<T*>(panel.data());
  }
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

template <class Panel, class Convert, class Tile>
void drive_panels(int64_t nb, const uint8_t* w, size_t ws, int nr, int nt, float* out, int64_t os, Convert&& convert,
                  Tile&& tile) {
  Panel* P = scratch().panels<Panel>(static_cast<size_t>(nb));
  for (int r0 = 0; r0 < nr; r0 += kPanel) {
    const int mr = std::min(kPanel, nr - r0);
    if (r0 == 0) prefetch_panel_head(w, ws, mr);
    convert(w + static_cast<size_t>(r0) * ws, mr, P);
    if (r0 + kPanel < nr) prefetch_panel_head(w + static_cast<size_t>(r0 + kPanel) * ws, ws, std::min(kPanel, nr - r0 - kPanel));
    const __mmask16 keep = static_cast<__mmask16>((1u << mr) - 1u);
    for (int t0 = 0; t0 < nt; t0 += kTileTokens8) tile(P, t0, std::min(kTileTokens8, nt - t0), out + r0, keep);
  }
}

template <template <int> class K, class... A>
void tile_dispatch(int mt, A... a) {
  switch (mt) {
    case 1: K<1>::run(a...); break;
    case 2: K<2>::run(a...); break;
    case 3: K<3>::run(a...); break;
    case 4: K<4>::run(a...); break;
    case 5: K<5>::run(a...); break;
    case 6: K<6>::run(a...); break;
    case 7: K<7>::run(a...); break;
    default: K<8>::run(a...); break;
  }
}
template <int NT>
struct K4Tile {
  static void run(const K4Panel* P, int64_t nb, const uint8_t* a, size_t as, float* o, int64_t os, __mmask16 k) {
    gemm_k4<NT>(P, nb, a, as, o, os, k);
  }
};
template <int NT>
struct Q6Tile {
  static void run(const Q6Panel* P, int64_t nb, const uint8_t* a, size_t as, float* o, int64_t os, __mmask16 k) {
    gemm_q6<NT>(P, nb, a, as, o, os, k);
  }
};
template <int32_t kOffset>
struct LegacyTile {
  template <int NT>
  struct Of {
    template <class Blocks>
    static void run(const Blocks& W, int64_t nb, const uint8_t* a, size_t as, const int32_t* sums, const float* dy,
                    int64_t nbx, float* o, int64_t os, __mmask16 k) {
      gemm_legacy<NT, kOffset>(W, nb, a, as, sums, dy, nbx, o, os, k);
    }
  };
};

template <K4Layout L>
void gemm_k4_drive(int64_t n, const uint8_t* w, size_t ws, int nr, const uint8_t* act, size_t as, int nt, float* out,
                   int64_t os) {
  const int64_t nb = n / kQKK;
  drive_panels<K4Panel>(
      nb, w, ws, nr, nt, out, os, [&](const uint8_t* pw, int mr, K4Panel* P) { convert_k4<L>(pw, ws, mr, nb, P); },
      [&](const K4Panel* P, int t0, int mt, float* o, __mmask16 keep) {
        tile_dispatch<K4Tile>(mt, P, nb, act + t0 * as, as, o + t0 * os, os, keep);
      });
}

void gemm_q6_drive(int64_t n, const uint8_t* w, size_t ws, int nr, const uint8_t* act, size_t as, int nt, float* out,
                   int64_t os) {
  const int64_t nb = n / kQKK;
  drive_panels<Q6Panel>(
      nb, w, ws, nr, nt, out, os, [&](const uint8_t* pw, int mr, Q6Panel* P) { convert_q6(pw, ws, mr, nb, P); },
      [&](const Q6Panel* P, int t0, int mt, float* o, __mmask16 keep) {
        tile_dispatch<Q6Tile>(mt, P, nb, act + t0 * as, as, o + t0 * os, os, keep);
      });
}

// Per token and block: sum(y) and the activation scale as a float, shared by every panel; derived here
// (once per call) when the caller has not.
Q8_0BlockFacts with_block_facts(Q8_0BlockFacts facts, const uint8_t* act, size_t as, int nt, int64_t nb) {
  if (facts.sums && facts.scales) return facts;
  Scratch& s = scratch();
  const size_t need = static_cast<size_t>(nt) * static_cast<size_t>(nb);
  if (s.sums.size() < need) {
    s.sums.resize(need);
    s.dy.resize(need);
  }
  derive_q8_0_block_facts(act, as, nt, nb, s.sums.data(), s.dy.data());
  return {s.sums.data(), s.dy.data()};
}

template <bool kQ4>
void gemm_legacy_drive(int64_t n, const uint8_t* w, size_t ws, int nr, const uint8_t* act, size_t as,
                       Q8_0BlockFacts facts, int nt, float* out, int64_t os) {
  const int64_t nb = n / kQK;
  facts = with_block_facts(facts, act, as, nt, nb);
  drive_panels<LegacyPanel>(
      nb, w, ws, nr, nt, out, os,
      [&](const uint8_t* pw, int mr, LegacyPanel* P) {
        if constexpr (kQ4)
          convert_q4_0(pw, ws, mr, nb, P);
        else
          convert_q8_0(pw, ws, mr, nb, P);
      },
      [&](const LegacyPanel* P, int t0, int mt, float* o, __mmask16 keep) {
        tile_dispatch<LegacyTile<kQ4 ? 8 : 128>::template Of>(mt, ConvertedBlocks{P}, nb, act + t0 * as, as, facts.sums + t0 * nb,
                                                              facts.scales + t0 * nb, nb, o + t0 * os, os, keep);
      });
}

// Q8_0_P: no conversion; each panel is read where it lies. Rows r0 .. r1 need not follow panels: a
// panel cut by the range computes all 16 lanes and stores those inside it.
void q8_0_panels_drive(int64_t n, const uint8_t* m, int64_t r0, int64_t r1, const uint8_t* act, size_t as,
                       Q8_0BlockFacts facts, int nt, float* out, int64_t os) {
  const int64_t nb = n / kQK;
  facts = with_block_facts(facts, act, as, nt, nb);
  const size_t panel_bytes = static_cast<size_t>(nb) * kQ8PanelBlockBytes;
  // The rows of panel p within [r0, r1), as a lane mask.
  const auto keep = [&](int64_t p) {
    const int64_t first = p * kPanel;
    const int lo = static_cast<int>(std::max(r0, first) - first), hi = static_cast<int>(std::min(r1, first + kPanel) - first);
    return static_cast<__mmask16>(((1u << hi) - 1u) & ~((1u << lo) - 1u));
  };
  const int64_t p_end = (r1 + kPanel - 1) / kPanel;
  int64_t p = r0 / kPanel;
  // Up to kTileTokens8 tokens, one pass of one-panel tiles over the weights: such calls stream their
  // weights from DRAM at about the rate the tile computes, and a pair's second pass would read them again.
  for (; nt > kTileTokens8 && p + 1 < p_end; p += 2) {  // pairs of panels
    const uint8_t* base = m + static_cast<size_t>(p) * panel_bytes;
    // The next pair (or odd panel) comes into L2 while this pair computes, each token tile fetching its
    // share, so that the first tile over it does not wait on DRAM: BM_PrefillExpert q8_0_p, alternating
    // three times, 32 tokens 452-479 GFLOP/s with it against 393-460 without, 128 tokens 539-581 against
    // 463-554 (ahead in all twelve pairs of readings).
    const int64_t next_panels = std::min<int64_t>(2, p_end - p - 2);  // 0, 1 or 2: p + 1 < p_end here
    const int64_t next_lines = next_panels * static_cast<int64_t>(panel_bytes) / 64;
    // Tiles as even as ceil(nt / 5) tiles allow (32 tokens: 5 5 5 5 4 4 4, not 5 x 6 and a 2): a tile
    // of fewer tokens has fewer chains and runs slower per token (from cache: 5 tokens 660-700 GFLOP/s,
    // 4 about 636, 3 about 569, 2 about 440).
    const int n_tiles = (nt + kPairTileTokens - 1) / kPairTileTokens, even = nt / n_tiles, more = nt % n_tiles;
    const __mmask16 k0 = keep(p), k1 = keep(p + 1);
    for (int tile = 0; tile < n_tiles; ++tile) {
      const int t0 = tile * even + std::min(tile, more), mt = even + (tile < more ? 1 : 0);
      const int64_t l0 = next_lines * tile / n_tiles, l1 = next_lines * (tile + 1) / n_tiles;
      const AheadSlice ahead{base + 2 * panel_bytes + 64 * l0, l1 - l0};
      const PackedBlocks w0{base, t0 == 0}, w1{base + panel_bytes, t0 == 0};
      const auto* a = act + t0 * as;
      float* o = out + t0 * os + p * kPanel;
      const int32_t* sm = facts.sums + t0 * nb;
      const float* dy = facts.scales + t0 * nb;
      switch (mt) {
        case 1: gemm_legacy_pair<1, 128>(w0, w1, nb, a, as, sm, dy, nb, o, os, k0, k1, ahead); break;
        case 2: gemm_legacy_pair<2, 128>(w0, w1, nb, a, as, sm, dy, nb, o, os, k0, k1, ahead); break;
        case 3: gemm_legacy_pair<3, 128>(w0, w1, nb, a, as, sm, dy, nb, o, os, k0, k1, ahead); break;
        case 4: gemm_legacy_pair<4, 128>(w0, w1, nb, a, as, sm, dy, nb, o, os, k0, k1, ahead); break;
        default: gemm_legacy_pair<5, 128>(w0, w1, nb, a, as, sm, dy, nb, o, os, k0, k1, ahead); break;
      }
    }
  }
  for (; p < p_end; ++p) {  // an odd panel left, or every panel of a few tokens
    const uint8_t* base = m + static_cast<size_t>(p) * panel_bytes;
    for (int t0 = 0; t0 < nt; t0 += kTileTokens8)
      tile_dispatch<LegacyTile<128>::template Of>(std::min(kTileTokens8, nt - t0), PackedBlocks{base, t0 == 0 && nt > 1}, nb,
                                                   act + t0 * as, as, facts.sums + t0 * nb, facts.scales + t0 * nb, nb,
                                                   out + t0 * os + p * kPanel, os, keep(p));
  }
}

}  // namespace

void pack_q8_0_panel_avx512(const void* rows, void* out, int64_t nb) {
  const auto* w = static_cast<const uint8_t*>(rows);
  auto* o = static_cast<uint8_t*>(out);
  const size_t ws = static_cast<size_t>(nb) * sizeof(BlockQ8_0);
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const uint8_t* p[kPanel];
  for (int r = 0; r < kPanel; ++r) p[r] = w + r * ws;
  for (int64_t b = 0; b < nb; b += 2) {
    const bool two = b + 1 < nb;
    __m512i t[16];
    q8_0_pair_lanes(p, kPanel, b, two, t);
    for (int q = 0; q < (two ? 2 : 1); ++q) {
      uint8_t* blk = o + static_cast<size_t>(b + q) * kQ8PanelBlockBytes;
      for (int k = 0; k < 8; ++k) _mm512_storeu_si512(blk + 64 * k, _mm512_xor_si512(t[8 * q + k], flip));
      for (int r = 0; r < kPanel; ++r) std::memcpy(blk + 512 + 2 * r, w + r * ws + (b + q) * sizeof(BlockQ8_0), 2);
    }
  }
}

void q8_0_panels_gemm_avx512(int64_t n, const void* matrix, int64_t r0, int64_t r1, const void* act, size_t as,
                             Q8_0BlockFacts facts, int nt, float* out, int64_t os) {
  q8_0_panels_drive(n, static_cast<const uint8_t*>(matrix), r0, r1, static_cast<const uint8_t*>(act), as, facts, nt,
                    out, os);
}

void panel_gemm_avx512(DType t, int64_t n, const void* w, size_t ws, int nr, const void* act, size_t as,
                       Q8_0BlockFacts facts, int nt, float* out, int64_t os) {
  const auto* wp = static_cast<const uint8_t*>(w);
  const auto* ap = static_cast<const uint8_t*>(act);
  switch (t) {
    case DType::Q4_K: return gemm_k4_drive<K4Layout::Q4K>(n, wp, ws, nr, ap, as, nt, out, os);
    case DType::Q4_K_R: return gemm_k4_drive<K4Layout::Q4KR>(n, wp, ws, nr, ap, as, nt, out, os);
    case DType::Q5_K: return gemm_k4_drive<K4Layout::Q5K>(n, wp, ws, nr, ap, as, nt, out, os);
    case DType::Q6_K: return gemm_q6_drive(n, wp, ws, nr, ap, as, nt, out, os);
    case DType::Q8_0: return gemm_legacy_drive<false>(n, wp, ws, nr, ap, as, facts, nt, out, os);
    case DType::Q4_0: return gemm_legacy_drive<true>(n, wp, ws, nr, ap, as, facts, nt, out, os);
    default: return;
  }
}

bool has_panel_gemm(DType t) {
  switch (t) {
    case DType::Q4_K:
    case DType::Q4_K_R:
    case DType::Q5_K:
    case DType::Q6_K:
    case DType::Q8_0:
    case DType::Q4_0: return true;
    default: return false;
  }
}

}  // namespace moe::quant
