// AVX-512 activation quantizers (Q8_0, Q8_1, Q8_K), bit-exact with the scalar ones in quant_legacy.cpp /
// quant_kquants.cpp for every input, NaN and infinity included: the same float operations are done
// lane-wise (x * id, then the same add-1.5*2^23 rounding trick read back from the mantissa bits), the
// same NaN-ignoring maximum, the same first-occurrence rule for Q8_K's signed maximum, and the same
// int8 wrap. tests/test_kernels_tile.cpp compares them byte for byte on random data with ties.
// No inline function from a baseline header is called here (their out-of-line copies could otherwise be
// the AVX-512 ones); fp16 narrowing uses F16C, which rounds like fp32_to_fp16.
// GCC 12 warns about the intentionally undefined upper halves in its own reduce intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstring>

#include "kernels/quant_blocks.h"
#include "kernels/quant_tile.h"

namespace moe::quant {
namespace {

// round_half_even_to_int, lane-wise and operation for operation.
inline __m512i round_magic(__m512 v) {
  const __m512 shifted = _mm512_add_ps(v, _mm512_set1_ps(12582912.f));
  return _mm512_sub_epi32(_mm512_and_si512(_mm512_castps_si512(shifted), _mm512_set1_epi32(0x007FFFFF)),
                          _mm512_set1_epi32(0x00400000));
}
// max(acc, |x|) ignoring NaN in x, like `amax = std::max(amax, std::fabs(x))` / `if (a > amax) ...`.
inline __m512 max_abs(__m512 acc, __m512 x) { return _mm512_max_ps(_mm512_abs_ps(x), acc); }
inline uint16_t f32_to_f16(float f) { return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT)); }

// One 32-element block as quantize_block_q8_activation does it; returns d, writes qs and the sum.
inline float q8_block(const float* x, int8_t* qs, int* sum) {
  const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
  const float amax = _mm512_reduce_max_ps(max_abs(max_abs(_mm512_setzero_ps(), x0), x1));
  const float d = amax / 127.f;
  const float id = amax != 0.0f ? 127.f / amax : 0.0f;
  const __m512 vid = _mm512_set1_ps(id);
  const __m512i lo = _mm512_set1_epi32(-128), hi = _mm512_set1_epi32(127);
  const __m512i v0 = _mm512_min_epi32(_mm512_max_epi32(round_magic(_mm512_mul_ps(x0, vid)), lo), hi);
  const __m512i v1 = _mm512_min_epi32(_mm512_max_epi32(round_magic(_mm512_mul_ps(x1, vid)), lo), hi);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(qs), _mm512_cvtepi32_epi8(v0));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(qs + 16), _mm512_cvtepi32_epi8(v1));
  *sum = _mm512_reduce_add_epi32(_mm512_add_epi32(v0, v1));
  return d;
}

}  // namespace

void quantize_q8_0_avx512(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<BlockQ8_0*>(dst);
  for (int64_t b = 0; b < n / kQK; ++b) {
    int sum;
    out[b].d = f32_to_f16(q8_block(src + b * kQK, out[b].qs, &sum));
  }
}

void quantize_q8_1_avx512(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<BlockQ8_1*>(dst);
  for (int64_t b = 0; b < n / kQK; ++b) {
    int sum;
    const float d = q8_block(src + b * kQK, out[b].qs, &sum);
    out[b].d = f32_to_f16(d);
    out[b].s = f32_to_f16(d * static_cast<float>(sum));
  }
}

void quantize_q8_K_avx512(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<BlockQ8_K*>(dst);
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const float* x = src + b * kQKK;
    BlockQ8_K& y = out[b];
    __m512 m = _mm512_setzero_ps();
    for (int k = 0; k < 16; ++k) m = max_abs(m, _mm512_loadu_ps(x + 16 * k));
    const float amax = _mm512_reduce_max_ps(m);
    if (amax == 0.0f) {
      std::memset(&y, 0, sizeof y);
      continue;
    }
    // The scalar loop keeps the first element whose |x| reaches the maximum.
    float vmax = 0;
    const __m512 vamax = _mm512_set1_ps(amax);
    for (int k = 0; k < 16; ++k) {
      const __mmask16 hit = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(x + 16 * k)), vamax, _CMP_EQ_OQ);
      if (hit) {
        vmax = x[16 * k + __builtin_ctz(hit)];
        break;
      }
    }
    const float iscale = -127.f / vmax;
    const __m512 vis = _mm512_set1_ps(iscale);
    const __m512i hi = _mm512_set1_epi32(127);
    for (int k = 0; k < 16; ++k) {
      __m512i v = _mm512_min_epi32(round_magic(_mm512_mul_ps(_mm512_loadu_ps(x + 16 * k), vis)), hi);
      v = _mm512_srai_epi32(_mm512_slli_epi32(v, 24), 24);  // the int8 the scalar code stores
      _mm_storeu_si128(reinterpret_cast<__m128i*>(y.qs + 16 * k), _mm512_cvtepi32_epi8(v));
      y.bsums[k] = static_cast<int16_t>(_mm512_reduce_add_epi32(v));
    }
    y.d = 1 / iscale;
  }
}

}  // namespace moe::quant
