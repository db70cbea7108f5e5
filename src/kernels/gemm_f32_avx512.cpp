// AVX-512 bodies of kernels/gemm_f32.h. Compiled with the AVX-512 flags (file name ends in _avx512.cpp)
// and reached only through run-time dispatch.
// GCC 12 warns about the intentionally undefined upper halves in its own cast intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>

#include "kernels/gemm_f32.h"
#include "kernels/transpose16_avx512.h"

namespace moe::kernels {

namespace {

// Register tile: kRows rows of a by two vectors (32 columns) of b, 24 accumulators; per k, two loads of
// b and kRows broadcasts of a feed 2 kRows fused multiply-adds. bench/attention_bench.cpp
// BM_AttnGemmF32: 165-190 GFLOP/s on one core of this machine against OpenBLAS's 100.
constexpr int kRows = 12;
constexpr int kVecs = 2;
constexpr int64_t kCols = 16 * kVecs;
// k is cut in blocks so that the b panel of a column tile (kBlock x 32 floats, 32 KB) stays in L1 while
// every row tile passes over it; partial sums go through c, exactly (fp32 to fp32), so the bits are
// those of one chain.
constexpr int64_t kBlock = 256;

inline __mmask16 lanes(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : left <= 0 ? static_cast<__mmask16>(0) : static_cast<__mmask16>((1u << left) - 1u);
}

// Rows i0 .. i0 + MR - 1, columns j0 .. j0 + 31 (under masks), k from k0 to k1. fresh: the chain starts
// at 0 (else at c); finish: c = scale * chain (else c = chain).
template <int MR>
void tile(const GemmF32& g, int64_t i0, int64_t j0, int64_t k0, int64_t k1, const __mmask16* mk, bool fresh,
          bool finish) {
  __m512 acc[MR][kVecs];
  #pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
    #pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v)
      acc[r][v] = fresh ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mk[v], g.c + (i0 + r) * g.ldc + j0 + 16 * v);
  const float* a = g.a + i0 * g.lda;
  const float* b = g.b + j0;
  for (int64_t kk = k0; kk < k1; ++kk) {
    __m512 bv[kVecs];
    #pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v) bv[v] = _mm512_maskz_loadu_ps(mk[v], b + kk * g.ldb + 16 * v);
    #pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * g.lda + kk]);
      #pragma GCC unroll 4
      for (int v = 0; v < kVecs; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
  const __m512 s = _mm512_set1_ps(g.scale);
  #pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
    #pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v)
      _mm512_mask_storeu_ps(g.c + (i0 + r) * g.ldc + j0 + 16 * v, mk[v], finish ? _mm512_mul_ps(acc[r][v], s) : acc[r][v]);
}

template <int MR>
void tail_tile(int mr, const GemmF32& g, int64_t i0, int64_t j0, int64_t k0, int64_t k1, const __mmask16* mk, bool fresh,
               bool finish) {
  if constexpr (MR > 0) {
    if (mr == MR) return tile<MR>(g, i0, j0, k0, k1, mk, fresh, finish);
    tail_tile<MR - 1>(mr, g, i0, j0, k0, k1, mk, fresh, finish);
  }
}

}  // namespace

void gemm_f32_avx512(const GemmF32& g) {
  if (g.m <= 0 || g.n <= 0) return;
  if (g.k <= 0) {  // empty chains: 0 (or c unchanged)
    if (!g.accumulate)
      for (int64_t i = 0; i < g.m; ++i) std::fill(g.c + i * g.ldc, g.c + i * g.ldc + g.n, 0.0f * g.scale);
    return;
  }
  for (int64_t k0 = 0; k0 < g.k; k0 += kBlock) {
    const int64_t k1 = std::min(g.k, k0 + kBlock);
    const bool fresh = k0 == 0 && !g.accumulate, finish = k1 == g.k && !g.accumulate;
    for (int64_t j0 = 0; j0 < g.n; j0 += kCols) {
      __mmask16 mk[kVecs];
      for (int v = 0; v < kVecs; ++v) mk[v] = lanes(g.n - j0 - 16 * v);
      int64_t i0 = 0;
      for (; i0 + kRows <= g.m; i0 += kRows) tile<kRows>(g, i0, j0, k0, k1, mk, fresh, finish);
      if (i0 < g.m) tail_tile<kRows - 1>(static_cast<int>(g.m - i0), g, i0, j0, k0, k1, mk, fresh, finish);
    }
  }
}

void transpose_f32_avx512(int64_t rows, int64_t cols, const float* src, int64_t lds, float* dst, int64_t ldd) {
  for (int64_t r0 = 0; r0 < rows; r0 += 16) {
    const int64_t nr = std::min<int64_t>(16, rows - r0);
    for (int64_t c0 = 0; c0 < cols; c0 += 16) {
      const int64_t nc = std::min<int64_t>(16, cols - c0);
      __m512i t[16];
      for (int64_t r = 0; r < 16; ++r)
        t[r] = r < nr ? _mm512_maskz_loadu_epi32(lanes(nc), src + (r0 + r) * lds + c0) : _mm512_setzero_si512();
      transpose16(t);
      for (int64_t c = 0; c < nc; ++c) _mm512_mask_storeu_epi32(dst + (c0 + c) * ldd + r0, lanes(nr), t[c]);
    }
  }
}

}  // namespace moe::kernels
