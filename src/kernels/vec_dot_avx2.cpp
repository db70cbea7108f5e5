// AVX2 + FMA + F16C dot-product kernels (this file is compiled with -mavx2 -mfma -mf16c -mbmi2 and is
// only entered after cpu_features() confirmed those extensions).
#define MOE_SIMD_NS avx2
#include "kernels/quant_x86_kernels.h"
#include "kernels/mxfp4_kernels.h"
#include "kernels/quant_dispatch.h"

namespace moe::quant {
namespace avx2 {
namespace {

float vec_dot_f32(int64_t n, const void* xv, const void* yv) {
  const float* x = static_cast<const float*>(xv);
  const float* y = static_cast<const float*>(yv);
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), _mm256_loadu_ps(y + i + 16), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), _mm256_loadu_ps(y + i + 24), a3);
  }
  for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
  float s = hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; i < n; ++i) s += x[i] * y[i];
  return s;
}

inline __m256 load_f16x8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline __m256 load_bf16x8(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}

template <__m256 (*Load)(const uint16_t*), float (*Scalar)(uint16_t)>
float vec_dot_half(int64_t n, const void* xv, const void* yv) {
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  const uint16_t* y = static_cast<const uint16_t*>(yv);
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_fmadd_ps(Load(x + i), Load(y + i), a0);
    a1 = _mm256_fmadd_ps(Load(x + i + 8), Load(y + i + 8), a1);
    a2 = _mm256_fmadd_ps(Load(x + i + 16), Load(y + i + 16), a2);
    a3 = _mm256_fmadd_ps(Load(x + i + 24), Load(y + i + 24), a3);
  }
  for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(Load(x + i), Load(y + i), a0);
  float s = hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; i < n; ++i) s += Scalar(x[i]) * Scalar(y[i]);
  return s;
}
float f16_scalar(uint16_t h) { return _cvtsh_ss(h); }

// F16 in llama.cpp's summation order on AVX-512 (see vec_dot_f16_512), each 16-lane accumulator held as
// two 8-lane halves: the same products added in the same order, so AVX2 gives the AVX-512 kernel's bits.
float vec_dot_f16_llama(int64_t n, const void* xv, const void* yv) {
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  const uint16_t* y = static_cast<const uint16_t*>(yv);
  if (n % 16 == 0) {
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
      lo = _mm256_fmadd_ps(load_f16x8(x + i), load_f16x8(y + i), lo);
      hi = _mm256_fmadd_ps(load_f16x8(x + i + 8), load_f16x8(y + i + 8), hi);
    }
    return hsum_ps(_mm256_add_ps(hi, lo));  // lanes i + i + 8, then + 4, + 2, + 1
  }
  __m256 a[4][2] = {};
  const int64_t np = n & ~int64_t{63};
  for (int64_t i = 0; i < np; i += 64)
    for (int j = 0; j < 4; ++j)
      for (int h = 0; h < 2; ++h) {
        const int64_t o = i + 16 * j + 8 * h;
        a[j][h] = _mm256_fmadd_ps(load_f16x8(x + o), load_f16x8(y + o), a[j][h]);
      }
  const __m256 f_lo = _mm256_add_ps(_mm256_add_ps(a[0][0], a[2][0]), _mm256_add_ps(a[1][0], a[3][0]));
  const __m256 f_hi = _mm256_add_ps(_mm256_add_ps(a[0][1], a[2][1]), _mm256_add_ps(a[1][1], a[3][1]));
  double sum = hsum_ps(_mm256_add_ps(f_hi, f_lo));
  for (int64_t i = np; i < n; ++i) sum += static_cast<double>(f16_scalar(x[i]) * f16_scalar(y[i]));
  return static_cast<float>(sum);
}
float bf16_scalar(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace
}  // namespace avx2

VecDotFn vec_dot_avx2_for(DType t) {
  switch (t) {
    case DType::F32: return avx2::vec_dot_f32;
    case DType::F16: return avx2::vec_dot_f16_llama;
    case DType::BF16: return avx2::vec_dot_half<avx2::load_bf16x8, avx2::bf16_scalar>;
    case DType::Q4_0: return avx2::vec_dot_q4_0;
    case DType::Q4_1: return avx2::vec_dot_q4_1;
    case DType::Q5_0: return avx2::vec_dot_q5_0;
    case DType::Q5_1: return avx2::vec_dot_q5_1;
    case DType::Q8_0: return avx2::vec_dot_q8_0;
    case DType::Q2_K: return avx2::vec_dot_q2_K;
    case DType::Q3_K: return avx2::vec_dot_q3_K;
    case DType::Q4_K: return avx2::vec_dot_q4_K;
    case DType::Q5_K: return avx2::vec_dot_q5_K;
    case DType::Q6_K: return avx2::vec_dot_q6_K;
    case DType::MXFP4: return vec_dot_mxfp4_avx2;
    default: return nullptr;
  }
}

void fp16_to_fp32_row_f16c(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i]);
}

void fp32_to_fp16_row_f16c(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}

}  // namespace moe::quant
