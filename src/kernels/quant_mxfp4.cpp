// Scalar reference kernels for MXFP4 (ggml type 39): dequantize, the model-file quantizer and the dot
// product with Q8_0 activations (llama.cpp's vec_dot_type for MXFP4).
//
// The quantizer reproduces llama.cpp's quantize_row_mxfp4_ref operation for operation, so that files we
// write are byte-identical to llama-quantize's: the shared exponent is floor(log2(amax)) - 2 (the largest
// e2m1 magnitude, 6, is 1.5 * 2^2), and each element takes the first code, in code order, whose doubled
// value times the half scale is nearest to it.
#include <immintrin.h>

#include <cmath>

#include "kernels/quant_blocks.h"
#include "tensor/fp16.h"

namespace moe::quant {

namespace {

// The exponent byte for a block whose largest magnitude is amax. llama.cpp converts the float
// floor(log2(amax)) - 2 + 127 to uint8_t; on x86 that is a truncating conversion to int32 whose low byte
// is kept (values below 2^-125 wrap, and amax = inf gives the int32 "indefinite" value, low byte 0).
// cvttss2si does exactly that, with no undefined behaviour in our code.
uint8_t mxfp4_exponent(float amax) {
  if (!(amax > 0.0f)) return 0;
  const float e = std::floor(std::log2(amax)) - 2 + 127;
  return static_cast<uint8_t>(_mm_cvtt_ss2si(_mm_set_ss(e)));
}

// The first code (in code order 0..15) whose value is nearest to x; ties go to the lower code, so
// 0 beats -0 and a value halfway between two magnitudes takes the smaller one's code.
uint8_t mxfp4_best_code(float x, float d) {
  int best = 0;
  float best_err = std::fabs(kMxfp4Values[0] * d - x);
  for (int i = 1; i < 16; ++i) {
    const float err = std::fabs(kMxfp4Values[i] * d - x);
    if (err < best_err) {
      best = i;
      best_err = err;
    }
  }
  return static_cast<uint8_t>(best);
}

}  // namespace

void quantize_mxfp4(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<BlockMXFP4*>(dst);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float* x = src + b * kQK;
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) {
      if (amax < std::fabs(x[j])) amax = std::fabs(x[j]);
    }
    const uint8_t e = mxfp4_exponent(amax);
    const float d = e8m0_to_fp32_half(e);
    out[b].e = e;
    for (int j = 0; j < kQK / 2; ++j) {
      out[b].qs[j] = static_cast<uint8_t>(mxfp4_best_code(x[j], d) | (mxfp4_best_code(x[j + kQK / 2], d) << 4));
    }
  }
}

void dequantize_mxfp4(const void* src, float* dst, int64_t n) {
  const auto* in = static_cast<const BlockMXFP4*>(src);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float d = e8m0_to_fp32_half(in[b].e);
    for (int j = 0; j < kQK / 2; ++j) {
      dst[b * kQK + j] = kMxfp4Values[in[b].qs[j] & 0x0F] * d;
      dst[b * kQK + j + kQK / 2] = kMxfp4Values[in[b].qs[j] >> 4] * d;
    }
  }
}

float vec_dot_mxfp4_ref(int64_t n, const void* xv, const void* yv) {
  const auto* x = static_cast<const BlockMXFP4*>(xv);
  const auto* y = static_cast<const BlockQ8_0*>(yv);
  float sum = 0;
  for (int64_t b = 0; b < n / kQK; ++b) {
    int sumi = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      sumi += kMxfp4Values[x[b].qs[j] & 0x0F] * y[b].qs[j];
      sumi += kMxfp4Values[x[b].qs[j] >> 4] * y[b].qs[j + kQK / 2];
    }
    sum += (fp16_to_fp32(y[b].d) * e8m0_to_fp32_half(x[b].e)) * static_cast<float>(sumi);
  }
  return sum;
}

}  // namespace moe::quant
