// A small fp32 matrix product for prompt attention's two products per chunk of keys (scores = Q K^T,
// then out += P V), where OpenBLAS (Debian's 0.3.21 picks its 256-bit Haswell kernels on this CPU)
// reached about half of the cores' 512-bit FMA rate. Each output element is one chain of fused
// multiply-adds in order of k, so the result does not depend on the tiling, the row count or the ISA:
// the AVX-512 body gives gemm_f32_ref's bits.
#pragma once
#include <cstdint>

namespace moe::kernels {

struct GemmF32 {
  int64_t m = 0, n = 0, k = 0;
  const float* a = nullptr;  // m x k, row-major, lda floats apart
  int64_t lda = 0;
  const float* b = nullptr;  // k x n, row-major, ldb floats apart
  int64_t ldb = 0;
  float* c = nullptr;  // m x n, row-major, ldc floats apart
  int64_t ldc = 0;
  // true: c[i][j] = fma chain over k of a[i][k] * b[k][j] starting from c[i][j] (scale unused);
  // false: the chain starts from 0 and c[i][j] = scale * chain.
  bool accumulate = false;
  float scale = 1.0f;
};

void gemm_f32(const GemmF32& g);  // the AVX-512 body where the CPU has it, else the reference
void gemm_f32_ref(const GemmF32& g);
void gemm_f32_avx512(const GemmF32& g);
bool gemm_f32_fast_here();  // whether gemm_f32 runs the AVX-512 body

// dst[c][r] = src[r][c] for r < rows, c < cols (a plain copy, so every ISA gives the same bits).
void transpose_f32(int64_t rows, int64_t cols, const float* src, int64_t lds, float* dst, int64_t ldd);
void transpose_f32_ref(int64_t rows, int64_t cols, const float* src, int64_t lds, float* dst, int64_t ldd);
void transpose_f32_avx512(int64_t rows, int64_t cols, const float* src, int64_t lds, float* dst, int64_t ldd);

}  // namespace moe::kernels
