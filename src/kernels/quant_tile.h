// Multi-row x multi-token dot-product kernels ("tiles") for the dtype trait table. A tile kernel
// computes out[t * out_stride + r] = dot(weight row r, activation row t) for nr rows and nt tokens,
// decoding each weight block once for all tokens and preparing each activation block once for all rows.
// Types without a SIMD tile kernel have vec_dot_tile == nullptr; matmul then calls vec_dot per pair.
#pragma once
#include <cstddef>
#include <cstdint>

#include "tensor/dtype.h"

namespace moe::quant {

// Register-tile shape the SIMD kernels are instantiated for; larger nr / nt are looped over inside.
inline constexpr int kTileRows = 4;
inline constexpr int kTileTokens = 2;

// Fewer tokens than this take the row kernels (Q8_0 and Q4_0, which have no few-token kernels: each
// token through the one-token kernels, from L1 after the first) instead of the panel GEMM. Since the
// conversion prefetches its rows and gathers its scales, and the GEMM sums in two chains,
// bench/gemm_bench.cpp BM_FewTokens (OLMoE expert shapes, weights from DRAM) has the panel 1.1-1.5x
// slower at 2-3 tokens and 1.05-1.1x faster at 4, 1.25-1.4x at 6 (it was 8 before: 1.8-3.7x slower at
// 2-4 tokens).
inline constexpr int kPanelMinTokens = 4;
// The same for the types whose few-token kernels decode each block once for four tokens (Q4_K, Q4_K_R,
// Q5_K, Q6_K): four tokens cost about a third of the panel GEMM's conversion, so they break even near 16.
inline constexpr int kPanelMinTokensShared = 16;

// The fewest tokens for which kernels::matmul takes the panel GEMM for weights of type t.
inline int panel_min_tokens(DType t) {
  switch (t) {
    case DType::Q4_K:
    case DType::Q4_K_R:
    case DType::Q5_K:
    case DType::Q6_K: return kPanelMinTokensShared;
    default: return kPanelMinTokens;
  }
}

struct TileKernels {
  VecDotTileFn tile = nullptr;  // nullptr: the ISA has no tile kernel for the type
  VecDotFn dot = nullptr;       // the same arithmetic for one (row, token): bit-identical to tile
  bool one_token = false;       // DTypeTraits::tile_one_token
};

// AVX-512 VNNI tile kernels (vec_dot_tile_avx512.cpp); only call when has_avx512_kernels().
TileKernels tile_kernels_avx512(DType t);
// F32 (vec_dot_avx512.cpp): tiles of rows x tokens with vec_dot_f32_512's arithmetic per pair.
TileKernels tile_kernels_f32_avx512();

// What the Q8_0 / Q4_0 panel GEMM needs of each (token, block) of Q8_0 activations for every panel it
// multiplies: the sum of the block's 32 quants and its scale as a float, each [nt][n / 32]. Both null:
// the GEMM derives them itself, once per call (a prefill calls it once per chunk of rows, so the caller
// that holds the activations derives them once for all chunks: kernels::ActBuffer).
struct Q8_0BlockFacts {
  const int32_t* sums = nullptr;
  const float* scales = nullptr;
};
// Derives them for nt tokens of nb Q8_0 blocks each (rows `as` bytes apart) into sums and scales,
// [nt][nb] each (quant_legacy.cpp).
void derive_q8_0_block_facts(const uint8_t* act, size_t as, int64_t nt, int64_t nb, int32_t* sums, float* scales);

// AVX-512 VNNI panel GEMM (gemm_panel_avx512.cpp) for Q4_0, Q8_0, Q4_K, Q4_K_R, Q5_K and Q6_K: the tile
// contract (out[t * os + r] = vec_dot(row r, token t), bit for bit) for nt tokens, converting each panel
// of 16 rows once for all of them. facts: for Q8_0 activations (above); ignored for Q8_K activations.
// Only call when has_avx512_kernels() and has_panel_gemm(t).
bool has_panel_gemm(DType t);
void panel_gemm_avx512(DType t, int64_t n, const void* w, size_t ws, int nr, const void* act, size_t as,
                       Q8_0BlockFacts facts, int nt, float* out, int64_t os);

// The same contract over a Q8_0_P matrix (q8_0_panels.h; `matrix` at its row 0) for rows r0 .. r1 and
// any nt >= 1: out[t * os + r] = vec_dot_q8_0(row r, token t), bit for bit, for r0 <= r < r1; nothing
// else of out is written. Only call when q8_0_panel_kernels_available().
void q8_0_panels_gemm_avx512(int64_t n, const void* matrix, int64_t r0, int64_t r1, const void* act, size_t as,
                             Q8_0BlockFacts facts, int nt, float* out, int64_t os);

// One panel of 16 file rows (nb blocks each, contiguous) into Q8_0_P bytes at out (not overlapping):
// the same bytes as q8_0_panels.cpp's scalar packing, for the load-time repack.
void pack_q8_0_panel_avx512(const void* rows, void* out, int64_t nb);

// AVX-512 activation quantizers (quant_act_avx512.cpp), bit-exact with quantize_q8_0 / q8_1 / q8_K.
void quantize_q8_0_avx512(const float* src, void* dst, int64_t n);
void quantize_q8_1_avx512(const float* src, void* dst, int64_t n);
void quantize_q8_K_avx512(const float* src, void* dst, int64_t n);

}  // namespace moe::quant
