// Per-ISA kernel lookup for the dtype trait table. The SIMD tables are defined in vec_dot_avx2.cpp and
// vec_dot_avx512.cpp; only call them when cpu_features() says the ISA is usable.
#pragma once
#include <cstdint>

#include "kernels/cpu_features.h"
#include "tensor/dtype.h"

namespace moe::quant {

// nullptr where the ISA has no kernel of its own for the type.
VecDotFn vec_dot_avx2_for(DType t);
VecDotFn vec_dot_avx512_for(DType t);

// The fastest kernel at or below `isa` (the scalar reference when nothing faster exists). Scalar is
// always valid; asking for an ISA the CPU lacks is the caller's bug.
VecDotFn vec_dot_for_isa(DType t, Isa isa);

// F16C row converters (vec_dot_avx2.cpp).
void fp16_to_fp32_row_f16c(const uint16_t* src, float* dst, int64_t n);
void fp32_to_fp16_row_f16c(const float* src, uint16_t* dst, int64_t n);

}  // namespace moe::quant
