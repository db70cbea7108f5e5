// The dtype trait table. Kernels are bound once, on first use, to the best ISA the CPU supports
// (see kernels/cpu_features.h); the table is immutable afterwards.
#include "tensor/dtype.h"

#include <array>
#include <cctype>

#include "base/error.h"
#include "kernels/cpu_features.h"
#include "kernels/quant_blocks.h"
#include "kernels/q4k_repack.h"
#include "kernels/q8_0_panels.h"
#include "kernels/quant_dispatch.h"
#include "kernels/quant_tile.h"

namespace moe {
namespace {

using namespace moe::quant;

struct Row {
  DType type;
  const char* name;
  int64_t block_elems;
  size_t block_bytes;
  bool is_quantized;
  DType vec_dot_type;
  DequantizeFn dequantize;
  QuantizeFn quantize;
  VecDotFn vec_dot_ref;  // nullptr for activation-only types
};

// vec_dot_type follows llama.cpp's CPU backend: legacy symmetric types pair with Q8_0, legacy types
// with an offset pair with Q8_1 (which carries the block sum), K-quants pair with Q8_K, MXFP4 with Q8_0.
constexpr Row kRows[] = {
    {DType::F32, "f32", 1, 4, false, DType::F32, dequantize_f32, quantize_f32, vec_dot_f32_ref},
    {DType::F16, "f16", 1, 2, false, DType::F16, dequantize_f16, quantize_f16, vec_dot_f16_ref},
    {DType::BF16, "bf16", 1, 2, false, DType::BF16, dequantize_bf16, quantize_bf16, vec_dot_bf16_ref},
    {DType::Q4_0, "q4_0", 32, sizeof(BlockQ4_0), true, DType::Q8_0, dequantize_q4_0, quantize_q4_0, vec_dot_q4_0_ref},
    {DType::Q4_1, "q4_1", 32, sizeof(BlockQ4_1), true, DType::Q8_1, dequantize_q4_1, quantize_q4_1, vec_dot_q4_1_ref},
    {DType::Q5_0, "q5_0", 32, sizeof(BlockQ5_0), true, DType::Q8_0, dequantize_q5_0, quantize_q5_0, vec_dot_q5_0_ref},
    {DType::Q5_1, "q5_1", 32, sizeof(BlockQ5_1), true, DType::Q8_1, dequantize_q5_1, quantize_q5_1, vec_dot_q5_1_ref},
    {DType::Q8_0, "q8_0", 32, sizeof(BlockQ8_0), true, DType::Q8_0, dequantize_q8_0, quantize_q8_0, vec_dot_q8_0_ref},
    {DType::Q8_1, "q8_1", 32, sizeof(BlockQ8_1), true, DType::Q8_1, dequantize_q8_1, quantize_q8_1, nullptr},
    {DType::Q2_K, "q2_K", 256, sizeof(BlockQ2_K), true, DType::Q8_K, dequantize_q2_K, quantize_q2_K, vec_dot_q2_K_ref},
    {DType::Q3_K, "q3_K", 256, sizeof(BlockQ3_K), true, DType::Q8_K, dequantize_q3_K, quantize_q3_K, vec_dot_q3_K_ref},
    {DType::Q4_K, "q4_K", 256, sizeof(BlockQ4_K), true, DType::Q8_K, dequantize_q4_K, quantize_q4_K, vec_dot_q4_K_ref},
    {DType::Q5_K, "q5_K", 256, sizeof(BlockQ5_K), true, DType::Q8_K, dequantize_q5_K, quantize_q5_K, vec_dot_q5_K_ref},
    {DType::Q6_K, "q6_K", 256, sizeof(BlockQ6_K), true, DType::Q8_K, dequantize_q6_K, quantize_q6_K, vec_dot_q6_K_ref},
    {DType::Q8_K, "q8_K", 256, sizeof(BlockQ8_K), true, DType::Q8_K, dequantize_q8_K, quantize_q8_K, nullptr},
    {DType::MXFP4, "mxfp4", 32, sizeof(BlockMXFP4), true, DType::Q8_0, dequantize_mxfp4, quantize_mxfp4,
     vec_dot_mxfp4_ref},
    {DType::Q4_K_R, "q4_K_r", 256, sizeof(BlockQ4_K), true, DType::Q8_K, dequantize_q4_K_r, quantize_q4_K_r,
     vec_dot_q4_K_r_ref},
    // Its row functions throw: rows interleave in 16-row panels, multiplied only by kernels::matmul_rows.
    {DType::Q8_0_P, "q8_0_p", 32, sizeof(BlockQ8_0), true, DType::Q8_0, dequantize_q8_0_p, nullptr, vec_dot_q8_0_p},
};

// The activation quantizers have bit-exact AVX-512 versions; everything else keeps the scalar one.
QuantizeFn activation_quantizer(const Row& r, Isa isa) {
  if (isa == Isa::Avx512) {
    if (r.type == DType::Q8_0) return quantize_q8_0_avx512;
    if (r.type == DType::Q8_1) return quantize_q8_1_avx512;
    if (r.type == DType::Q8_K) return quantize_q8_K_avx512;
  }
  return r.quantize;
}

constexpr uint32_t kMaxFileRaw = 40;                                    // MXFP4 = 39 is the largest file type we know
constexpr uint32_t kMaxRaw = static_cast<uint32_t>(DType::Q4_K_R) + 1;  // in-memory layouts after them

struct Table {
  std::array<DTypeTraits, kMaxRaw> traits{};
  std::array<bool, kMaxRaw> present{};
  Table() {
    const Isa isa = best_isa();
    for (const Row& r : kRows) {
      const auto i = static_cast<uint32_t>(r.type);
      VecDotFn fast = r.vec_dot_ref ? vec_dot_for_isa(r.type, isa) : nullptr;
      const TileKernels tk = isa == Isa::Avx512 && r.vec_dot_ref ? tile_kernels_avx512(r.type) : TileKernels{};
      traits[i] = DTypeTraits{r.type, r.name, r.block_elems, r.block_bytes, r.is_quantized, r.vec_dot_type,
                              r.dequantize, activation_quantizer(r, isa), fast, r.vec_dot_ref, tk.tile,
                              tk.tile != nullptr && tk.one_token};
      present[i] = true;
    }
  }
};

const Table& table() {
  static const Table t;
  return t;
}

}  // namespace

namespace quant {
VecDotFn vec_dot_for_isa(DType t, Isa isa) {
  if (isa == Isa::Avx512) {
    if (VecDotFn f = vec_dot_avx512_for(t)) return f;
    isa = Isa::Avx2;
  }
  if (isa == Isa::Avx2) {
    if (VecDotFn f = vec_dot_avx2_for(t)) return f;
  }
  for (const Row& r : kRows) {
    if (r.type == t) return r.vec_dot_ref;
  }
  return nullptr;
}
}  // namespace quant

const DTypeTraits* find_dtype(uint32_t raw) {
  if (raw >= kMaxRaw || !table().present[raw]) return nullptr;
  return &table().traits[raw];
}

const DTypeTraits* find_file_dtype(uint32_t raw) { return raw < kMaxFileRaw ? find_dtype(raw) : nullptr; }

DType file_dtype(DType t) {
  if (t == DType::Q4_K_R) return DType::Q4_K;
  if (t == DType::Q8_0_P) return DType::Q8_0;
  return t;
}

const DTypeTraits& dtype_traits(DType t) {
  const DTypeTraits* tr = find_dtype(static_cast<uint32_t>(t));
  if (!tr) fail("unsupported tensor type {}", static_cast<uint32_t>(t));
  return *tr;
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const Row& r : kRows) {
    if (!rows_addressable(r.type)) continue;
    const std::string_view n = r.name;
    if (n.size() != name.size()) continue;
    bool eq = true;
    for (size_t i = 0; i < n.size() && eq; ++i) {
      eq = std::tolower(static_cast<unsigned char>(n[i])) == std::tolower(static_cast<unsigned char>(name[i]));
    }
    if (eq) return r.type;
  }
  return std::nullopt;
}

size_t row_bytes(DType t, int64_t n) {
  const DTypeTraits& tr = dtype_traits(t);
  if (n < 0 || n % tr.block_elems != 0) {
    fail("row of {} elements is not a multiple of the {} block size {}", n, tr.name, tr.block_elems);
  }
  return static_cast<size_t>(n / tr.block_elems) * tr.block_bytes;
}

QuantizeFn storage_quantizer(DType t) {
  if (t == DType::Q8_0) return quantize_q8_0_storage;
  if (t == DType::Q8_1 || t == DType::Q8_K) return nullptr;
  return dtype_traits(t).quantize;
}

void dequantize_row(DType t, const void* src, float* dst, int64_t n) {
  const DTypeTraits& tr = dtype_traits(t);
  if (n % tr.block_elems != 0) fail("dequantize_row: {} elements is not a multiple of {} block size", n, tr.name);
  tr.dequantize(src, dst, n);
}

void quantize_row(DType t, const float* src, void* dst, int64_t n) {
  const DTypeTraits& tr = dtype_traits(t);
  if (n % tr.block_elems != 0) fail("quantize_row: {} elements is not a multiple of {} block size", n, tr.name);
  tr.quantize(src, dst, n);
}

}  // namespace moe
