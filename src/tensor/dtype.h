// Tensor element types, numbered exactly as GGUF/ggml number them, and the one trait table that
// describes each (design.md seam 5): block size, bytes per block, conversion functions, and the
// activation format its dot product consumes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace moe {

enum class DType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  BF16 = 30,
  MXFP4 = 39,  // 32 e2m1 codes + one e8m0 exponent (gpt-oss experts)
  // In-memory layouts, never stored in a file (numbers above any GGUF type).
  Q4_K_R = 256 + 12,  // Q4_K repacked for the AVX-512 VBMI kernels (kernels/q4k_repack.h)
  Q8_0_P = 256 + 8,   // Q8_0 in 16-row panels for the AVX-512 panel GEMM (kernels/q8_0_panels.h); not row-addressable
};

// Dequantize n elements (n is a multiple of block_elems).
using DequantizeFn = void (*)(const void* src, float* dst, int64_t n);
// Quantize n elements (n is a multiple of block_elems). Reference-quality quantizer used for writing models.
using QuantizeFn = void (*)(const float* src, void* dst, int64_t n);
// Dot product of one weight row (this dtype) with one activation row already converted to vec_dot_type.
using VecDotFn = float (*)(int64_t n, const void* weight_row, const void* act_row);
// Dot products of nr weight rows (w_stride bytes apart) with nt activation rows (act_stride bytes apart,
// already in vec_dot_type): out[t * out_stride + r] = dot(row r, token t). Each result is bit-identical
// to the same type's vec_dot on that pair; the kernel only shares work between rows and tokens.
using VecDotTileFn = void (*)(int64_t n, const void* w, size_t w_stride, int nr, const void* act, size_t act_stride,
                              int nt, float* out, int64_t out_stride);

struct DTypeTraits {
  DType type;
  std::string_view name;   // ggml's name, e.g. "q4_K"
  int64_t block_elems;     // elements per block (1 for F32/F16/BF16)
  size_t block_bytes;      // bytes per block
  bool is_quantized;
  DType vec_dot_type;      // format activations are converted to before vec_dot (as llama.cpp does)
  DequantizeFn dequantize;
  QuantizeFn quantize;     // nullptr only where no quantizer exists
  VecDotFn vec_dot;        // fastest kernel for this CPU (chosen once at startup); nullptr for activation-only types
  VecDotFn vec_dot_ref;    // plain scalar reference
  VecDotTileFn vec_dot_tile = nullptr;  // multi-row / multi-token kernel matching vec_dot; nullptr: none
  // vec_dot_tile is also the faster path for one token over many rows (it prepares the activation row
  // once for all of them); otherwise one-token products call vec_dot per row.
  bool tile_one_token = false;
};

// Returns nullptr for unknown / unsupported type numbers.
const DTypeTraits* find_dtype(uint32_t raw);
// The same for a type number read from or written to a file: in-memory layouts (Q4_K_R, Q8_0_P) are rejected.
const DTypeTraits* find_file_dtype(uint32_t raw);
// The type a file stores for an in-memory layout (Q4_K_R -> Q4_K, Q8_0_P -> Q8_0); others map to themselves.
DType file_dtype(DType t);
// Throws moe::Error for unsupported types.
const DTypeTraits& dtype_traits(DType t);
// Case-insensitive "q4_k", "f16", ...; not Q8_0_P, whose rows no row function can take.
std::optional<DType> dtype_from_name(std::string_view name);
// Whether rows of the type are contiguous (false: Q8_0_P, whose 16-row panels interleave them).
inline bool rows_addressable(DType t) { return t != DType::Q8_0_P; }

// Bytes for a row of n elements; throws if n is not a multiple of the block size.
size_t row_bytes(DType t, int64_t n);

// Additions by the kernels module (additive; the declarations above are unchanged).
//
// DTypeTraits::quantize is the conversion the forward pass applies to activations, so for Q8_0 it
// mirrors llama.cpp's x86 activation quantizer. Writing a model file needs llama.cpp's reference
// (model-file) quantizer instead; the two differ only for Q8_0 (scale 1/d and round-half-away vs
// 127/amax and round-half-even). storage_quantizer() returns the model-file one for every type
// (nullptr for activation-only types Q8_1 / Q8_K).
QuantizeFn storage_quantizer(DType t);
// Convenience wrappers over the trait table (n must be a multiple of the block size).
void dequantize_row(DType t, const void* src, float* dst, int64_t n);
void quantize_row(DType t, const float* src, void* dst, int64_t n);  // the trait (activation) quantizer

}  // namespace moe
