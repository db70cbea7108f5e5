// AVX2 dot product of MXFP4 weights with Q8_0 activations (compiled with -mavx2 -mfma -mf16c -mbmi2;
// reached only after cpu_features() confirmed them). Each 4-bit code is looked up (pshufb) as its
// doubled e2m1 value, a signed byte in -12..12, so the block's integer dot product with the 8-bit
// activations is exact; it is then scaled as the reference does.
#define MOE_SIMD_NS avx2
#include "kernels/mxfp4_kernels.h"
#include "kernels/quant_x86_kernels.h"

namespace moe::quant {

float vec_dot_mxfp4_avx2(int64_t n, const void* xv, const void* yv) {
  using namespace avx2;
  const auto* x = static_cast<const BlockMXFP4*>(xv);
  const auto* y = static_cast<const BlockQ8_0*>(yv);
  const int64_t nb = n / kQK;
  const __m256i values = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kMxfp4Values)));
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 1 < nb; b += 2) {
    const __m256i w0 = _mm256_shuffle_epi8(values, nibbles_32(x[b].qs));
    const __m256i w1 = _mm256_shuffle_epi8(values, nibbles_32(x[b + 1].qs));
    const __m256i s0 = dot_s8s8(_mm256_setzero_si256(), w0, load256(y[b].qs));
    const __m256i s1 = dot_s8s8(_mm256_setzero_si256(), w1, load256(y[b + 1].qs));
    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(y[b].d) * kE8m0Half.v[x[b].e]), _mm256_cvtepi32_ps(s0), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(y[b + 1].d) * kE8m0Half.v[x[b + 1].e]), _mm256_cvtepi32_ps(s1),
                           acc1);
  }
  for (; b < nb; ++b) {
    const __m256i w0 = _mm256_shuffle_epi8(values, nibbles_32(x[b].qs));
    const __m256i s0 = dot_s8s8(_mm256_setzero_si256(), w0, load256(y[b].qs));
    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(y[b].d) * kE8m0Half.v[x[b].e]), _mm256_cvtepi32_ps(s0), acc0);
  }
  return hsum_ps(_mm256_add_ps(acc0, acc1));
}

}  // namespace moe::quant
