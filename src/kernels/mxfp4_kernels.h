// MXFP4 SIMD kernels for the dtype trait table (design.md seam 5). MXFP4 weights pair with Q8_0
// activations, as in llama.cpp's CPU backend; every kernel computes each block's integer dot product
// exactly and scales it by fp16(d_act) * 2^(e - 128), as the scalar reference vec_dot_mxfp4_ref does.
#pragma once
#include "kernels/quant_tile.h"
#include "tensor/dtype.h"

namespace moe::quant {

// AVX2 + FMA + F16C (mxfp4_avx2.cpp); only call when cpu_features().has_avx2_kernels().
float vec_dot_mxfp4_avx2(int64_t n, const void* w, const void* act);

// AVX-512 VNNI tile kernels and their one-pair instance (mxfp4_avx512.cpp); only call when
// cpu_features().has_avx512_kernels(). `dot` is bit-identical to every output of `tile`.
TileKernels tile_kernels_mxfp4_avx512();

}  // namespace moe::quant
