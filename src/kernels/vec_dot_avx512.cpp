// AVX-512 (F/BW/VL/DQ/VNNI/BF16) dot-product kernels. The float types get 512-bit kernels here; Q4_0,
// Q8_0, Q4_K, Q5_K and Q6_K come from the tile kernels (vec_dot_tile_avx512.cpp); the rest reuse the
// shared 256-bit kernels, which in this file compile to vpdpbusd (AVX512-VNNI on ymm registers) where
// they use the plain byte dot product.
// GCC 12 warns about the intentionally undefined upper halves in its own cast intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define MOE_SIMD_NS avx512
#include "kernels/quant_x86_kernels.h"
#include "kernels/quant_dispatch.h"
#include "kernels/quant_tile.h"
#include "tensor/fp16.h"

namespace moe::quant {
namespace avx512 {
namespace {

float vec_dot_f32_512(int64_t n, const void* xv, const void* yv) {
  const float* x = static_cast<const float*>(xv);
  const float* y = static_cast<const float*>(yv);
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(y + i + 16), a1);
    a2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 32), _mm512_loadu_ps(y + i + 32), a2);
    a3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 48), _mm512_loadu_ps(y + i + 48), a3);
  }
  for (; i + 16 <= n; i += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), a0);
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1u);
    a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i), a1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// vec_dot_f32_512's arithmetic for R rows x T tokens at once. That kernel keeps four accumulators per
// pair, accumulator j taking the pieces at 64k + 16j, then the 16-wide tail into the first and the masked
// tail into the second, and adds them as (a0 + a1) + (a2 + a3) before the final reduction. Here each
// accumulator is one pass over the row (its own pieces, in the same order), so a pass keeps one
// accumulator per pair and a tile of 4 x 4 pairs shares each loaded piece of a row or token 4 times; the
// four results per pair are then added as vec_dot_f32_512 adds them. Bit-identical to it per pair. The
// per-pair kernel was bound by its two loads per multiply-add (the F32 routers of a prefill: 4% of a
// Qwen3-30B-A3B-shaped 2048-token prompt).
template <int R, int T>
void f32_tile_block(int64_t n, const float* w, size_t ws, const float* x, size_t xs, float* out, int64_t os) {
  __m512 part[4][R][T];
  const int64_t n64 = n / 64 * 64, n16 = n / 16 * 16;
  #pragma GCC unroll 1
  for (int j = 0; j < 4; ++j) {
    __m512 a[R][T];
    #pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
      #pragma GCC unroll 4
      for (int t = 0; t < T; ++t) a[r][t] = _mm512_setzero_ps();
    const auto step = [&](int64_t i, __mmask16 m) {
      __m512 xv[T];
      #pragma GCC unroll 4
      for (int t = 0; t < T; ++t) xv[t] = _mm512_maskz_loadu_ps(m, x + t * xs + i);
      #pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const __m512 wv = _mm512_maskz_loadu_ps(m, w + r * ws + i);
        #pragma GCC unroll 4
        for (int t = 0; t < T; ++t) a[r][t] = _mm512_fmadd_ps(wv, xv[t], a[r][t]);
      }
    };
    for (int64_t i = 16 * j; i < n64; i += 64) step(i, 0xFFFF);
    if (j == 0)
      for (int64_t i = n64; i < n16; i += 16) step(i, 0xFFFF);
    if (j == 1 && n16 < n) step(n16, static_cast<__mmask16>((1u << (n - n16)) - 1u));
    #pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
      #pragma GCC unroll 4
      for (int t = 0; t < T; ++t) part[j][r][t] = a[r][t];
  }
  #pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 4
    for (int t = 0; t < T; ++t)
      out[t * os + r] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(part[0][r][t], part[1][r][t]),
                                                           _mm512_add_ps(part[2][r][t], part[3][r][t])));
}

template <int R>
void f32_tile_rows(int64_t n, const float* w, size_t ws, const float* x, size_t xs, int nt, float* out, int64_t os) {
  int t = 0;
  for (; t + 4 <= nt; t += 4) f32_tile_block<R, 4>(n, w, ws, x + t * xs, xs, out + t * os, os);
  switch (nt - t) {
    case 3: f32_tile_block<R, 3>(n, w, ws, x + t * xs, xs, out + t * os, os); break;
    case 2: f32_tile_block<R, 2>(n, w, ws, x + t * xs, xs, out + t * os, os); break;
    case 1: f32_tile_block<R, 1>(n, w, ws, x + t * xs, xs, out + t * os, os); break;
    default: break;
  }
}

void vec_dot_tile_f32_512(int64_t n, const void* wv, size_t w_stride, int nr, const void* act, size_t act_stride,
                          int nt, float* out, int64_t os) {
  const auto* w = static_cast<const float*>(wv);
  const auto* x = static_cast<const float*>(act);
  const size_t ws = w_stride / sizeof(float), xs = act_stride / sizeof(float);
  int r = 0;
  for (; r + 4 <= nr; r += 4) f32_tile_rows<4>(n, w + r * ws, ws, x, xs, nt, out + r, os);
  switch (nr - r) {
    case 3: f32_tile_rows<3>(n, w + r * ws, ws, x, xs, nt, out + r, os); break;
    case 2: f32_tile_rows<2>(n, w + r * ws, ws, x, xs, nt, out + r, os); break;
    case 1: f32_tile_rows<1>(n, w + r * ws, ws, x, xs, nt, out + r, os); break;
    default: break;
  }
}

inline __m512 load_f16x16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline __m512 load_f16x16_masked(const uint16_t* p, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)); }

// llama.cpp's own summation orders, so that F16 matrices give its bits: when n is a multiple of 16 its
// F16 matmuls go through llamafile's tinyBLAS, which keeps one 16-lane accumulator per output and adds
// the lanes pairwise at the end; otherwise ggml_vec_dot_f16 runs four accumulators over blocks of 64,
// folds them as (a0 + a2) + (a1 + a3), and adds the tail one product at a time in double. (Four
// independent accumulators would be faster on matrices that fit in cache; these F16 matrices are
// read from memory, where the single chain keeps up.)
float vec_dot_f16_512(int64_t n, const void* xv, const void* yv) {
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  const uint16_t* y = static_cast<const uint16_t*>(yv);
  if (n % 16 == 0) {
    __m512 a = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) a = _mm512_fmadd_ps(load_f16x16(x + i), load_f16x16(y + i), a);
    return _mm512_reduce_add_ps(a);
  }
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  const int64_t np = n & ~int64_t{63};
  for (int64_t i = 0; i < np; i += 64) {
    a0 = _mm512_fmadd_ps(load_f16x16(x + i), load_f16x16(y + i), a0);
    a1 = _mm512_fmadd_ps(load_f16x16(x + i + 16), load_f16x16(y + i + 16), a1);
    a2 = _mm512_fmadd_ps(load_f16x16(x + i + 32), load_f16x16(y + i + 32), a2);
    a3 = _mm512_fmadd_ps(load_f16x16(x + i + 48), load_f16x16(y + i + 48), a3);
  }
  double sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a2), _mm512_add_ps(a1, a3)));
  for (int64_t i = np; i < n; ++i) sum += static_cast<double>(fp16_to_fp32(x[i]) * fp16_to_fp32(y[i]));
  return static_cast<float>(sum);
}

// bf16 pairs via vdpbf16ps: each bf16 x bf16 product is exact in fp32; pairs are accumulated in fp32.
float vec_dot_bf16_512(int64_t n, const void* xv, const void* yv) {
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  const uint16_t* y = static_cast<const uint16_t*>(yv);
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(x + i), (__m512bh)_mm512_loadu_si512(y + i));
    a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(x + i + 32), (__m512bh)_mm512_loadu_si512(y + i + 32));
  }
  for (; i + 32 <= n; i += 32) {
    a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(x + i), (__m512bh)_mm512_loadu_si512(y + i));
  }
  if (i < n) {
    const __mmask32 m = static_cast<__mmask32>((1ull << (n - i)) - 1ull);
    a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_maskz_loadu_epi16(m, x + i), (__m512bh)_mm512_maskz_loadu_epi16(m, y + i));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

}  // namespace
}  // namespace avx512

TileKernels tile_kernels_f32_avx512() { return {avx512::vec_dot_tile_f32_512, avx512::vec_dot_f32_512}; }

VecDotFn vec_dot_avx512_for(DType t) {
  // Q4_0 / Q8_0 / Q4_K / Q5_K / Q6_K: the single-pair instance of the tile kernels, so that vec_dot and
  // vec_dot_tile agree bit for bit.
  if (VecDotFn f = tile_kernels_avx512(t).dot) return f;
  switch (t) {
    case DType::F32: return avx512::vec_dot_f32_512;
    case DType::F16: return avx512::vec_dot_f16_512;
    case DType::BF16: return avx512::vec_dot_bf16_512;
    case DType::Q4_1: return avx512::vec_dot_q4_1;
    case DType::Q5_0: return avx512::vec_dot_q5_0;
    case DType::Q5_1: return avx512::vec_dot_q5_1;
    case DType::Q2_K: return avx512::vec_dot_q2_K;
    case DType::Q3_K: return avx512::vec_dot_q3_K;
    default: return nullptr;
  }
}

}  // namespace moe::quant
