// Q4_K_R: Q4_K blocks rearranged in memory for the AVX-512 VBMI/GFNI kernels. Never read from or written
// to a file: the engine repacks a loaded model's Q4_K matrices in place (same 144 bytes per block, same
// values), and anything that writes a model sees Q4_K again through unrepack_q4k.
//
// Block layout (144 bytes):
//   bytes 0..3    d, dmin (fp16), as in Q4_K
//   bytes 4..15   the eight 6-bit scales then the eight 6-bit mins, value f at bits 6f .. 6f+5 (LSB first)
//   bytes 16..143 quants: byte 64h + k (h = 0, 1; k = 0..63) holds element 128h + k in its low nibble and
//                 element 128h + 64 + k in its high nibble, so a 64-byte load splits into two runs of 64
//                 consecutive elements, the activations' own order.
#pragma once
#include <cstdint>

#include "kernels/quant_tile.h"

namespace moe::quant {

// In place allowed (src == dst). n_blocks Q4_K blocks <-> Q4_K_R blocks. repack_q4k uses the AVX-512
// version where the repacked kernels exist; repack_q4k_ref is the plain scalar one (same bytes).
void repack_q4k(const void* src, void* dst, int64_t n_blocks);
void repack_q4k_ref(const void* src, void* dst, int64_t n_blocks);
void unrepack_q4k(const void* src, void* dst, int64_t n_blocks);

// Trait-table functions for Q4_K_R (scalar; through unrepacking).
void dequantize_q4_K_r(const void* src, float* dst, int64_t n);
void quantize_q4_K_r(const float* src, void* dst, int64_t n);
float vec_dot_q4_K_r_ref(int64_t n, const void* x, const void* y);  // y: Q8_K

// True when this process runs the AVX-512 kernels and the CPU has VBMI and GFNI: only then is repacking
// worth doing (elsewhere Q4_K_R would fall back to the scalar reference).
bool q4k_repacked_kernels_available();

// q4k_repacked_avx512vbmi.cpp; call only when q4k_repacked_kernels_available().
TileKernels tile_kernels_q4k_repacked_avx512vbmi();
void repack_q4k_avx512vbmi(const void* src, void* dst, int64_t n_blocks);

}  // namespace moe::quant
