#include "tensor/fp16.h"

#include "kernels/cpu_features.h"
#include "kernels/quant_dispatch.h"

namespace moe {
namespace {
bool use_f16c() {
  static const bool ok = best_isa() != Isa::Scalar;  // the AVX2 kernel file is also built with F16C
  return ok;
}
}  // namespace

void fp16_to_fp32_row(const uint16_t* src, float* dst, int64_t n) {
  if (use_f16c()) return quant::fp16_to_fp32_row_f16c(src, dst, n);
  for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
}

void fp32_to_fp16_row(const float* src, uint16_t* dst, int64_t n) {
  if (use_f16c()) return quant::fp32_to_fp16_row_f16c(src, dst, n);
  for (int64_t i = 0; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}

void bf16_to_fp32_row(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(src[i]);
}

void fp32_to_bf16_row(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = fp32_to_bf16(src[i]);
}

}  // namespace moe
