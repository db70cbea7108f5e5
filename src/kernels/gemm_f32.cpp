#include "kernels/gemm_f32.h"

#include <cmath>

#include "kernels/cpu_features.h"

namespace moe::kernels {

void gemm_f32_ref(const GemmF32& g) {
  for (int64_t i = 0; i < g.m; ++i)
    for (int64_t j = 0; j < g.n; ++j) {
      float* c = g.c + i * g.ldc + j;
      float s = g.accumulate ? *c : 0.0f;
      for (int64_t kk = 0; kk < g.k; ++kk) s = std::fma(g.a[i * g.lda + kk], g.b[kk * g.ldb + j], s);
      *c = g.accumulate ? s : s * g.scale;
    }
}

bool gemm_f32_fast_here() { return best_isa() == Isa::Avx512; }

void gemm_f32(const GemmF32& g) {
  if (g.m <= 0 || g.n <= 0) return;
  if (gemm_f32_fast_here()) return gemm_f32_avx512(g);
  gemm_f32_ref(g);
}

void transpose_f32_ref(int64_t rows, int64_t cols, const float* src, int64_t lds, float* dst, int64_t ldd) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}

void transpose_f32(int64_t rows, int64_t cols, const float* src, int64_t lds, float* dst, int64_t ldd) {
  if (gemm_f32_fast_here()) return transpose_f32_avx512(rows, cols, src, lds, dst, ldd);
  transpose_f32_ref(rows, cols, src, lds, dst, ldd);
}

}  // namespace moe::kernels
