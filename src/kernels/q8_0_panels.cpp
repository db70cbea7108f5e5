// Q8_0_P packing (q8_0_panels.h): once per matrix at load, or once per expert read by the expert store,
// off the compute path. A 16-row panel is staged in a per-thread buffer so packing in place never
// overwrites bytes it still has to read.
#include "kernels/q8_0_panels.h"

#include <cstring>
#include <vector>

#include "base/error.h"
#include "kernels/cpu_features.h"
#include "kernels/quant_blocks.h"
#include "kernels/quant_tile.h"
#include "tensor/fp16.h"

namespace moe::quant {

namespace {

constexpr size_t kBlock = sizeof(BlockQ8_0);
static_assert(kQ8PanelBlockBytes == kQ8PanelRows * kBlock);

std::vector<uint8_t>& staging(size_t bytes) {
  thread_local std::vector<uint8_t> buf;
  if (buf.size() < bytes) buf.resize(bytes);
  return buf;
}

// One panel: rows (16 consecutive file rows, nb blocks each) -> packed.
void pack_one(const uint8_t* rows, uint8_t* out, int64_t nb) {
  const size_t rb = static_cast<size_t>(nb) * kBlock;
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* o = out + static_cast<size_t>(b) * kQ8PanelBlockBytes;
    for (int r = 0; r < kQ8PanelRows; ++r) {
      const uint8_t* blk = rows + r * rb + static_cast<size_t>(b) * kBlock;
      for (int k = 0; k < 8; ++k)
        for (int j = 0; j < 4; ++j) o[64 * k + 4 * r + j] = static_cast<uint8_t>(blk[offsetof(BlockQ8_0, qs) + 4 * k + j] ^ 0x80u);
      std::memcpy(o + 512 + 2 * r, blk + offsetof(BlockQ8_0, d), 2);
    }
  }
}

void unpack_one(const uint8_t* in, uint8_t* rows, int64_t nb) {
  const size_t rb = static_cast<size_t>(nb) * kBlock;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* p = in + static_cast<size_t>(b) * kQ8PanelBlockBytes;
    for (int r = 0; r < kQ8PanelRows; ++r) {
      uint8_t* blk = rows + r * rb + static_cast<size_t>(b) * kBlock;
      std::memcpy(blk + offsetof(BlockQ8_0, d), p + 512 + 2 * r, 2);
      for (int k = 0; k < 8; ++k)
        for (int j = 0; j < 4; ++j) blk[offsetof(BlockQ8_0, qs) + 4 * k + j] = static_cast<uint8_t>(p[64 * k + 4 * r + j] ^ 0x80u);
    }
  }
}

template <class F>
void each_panel(const void* src, void* dst, int64_t n_panels, int64_t cols, F&& convert) {
  if (cols <= 0 || cols % 32 != 0) fail("q8_0 panels: {} columns is not a positive multiple of 32", cols);
  const int64_t nb = cols / 32;
  const size_t panel = static_cast<size_t>(nb) * kQ8PanelBlockBytes;
  std::vector<uint8_t>& buf = staging(panel);
  for (int64_t p = 0; p < n_panels; ++p) {
    const auto* s = static_cast<const uint8_t*>(src) + static_cast<size_t>(p) * panel;
    auto* d = static_cast<uint8_t*>(dst) + static_cast<size_t>(p) * panel;
    convert(s, buf.data(), nb);
    std::memcpy(d, buf.data(), panel);
  }
}

}  // namespace

void pack_q8_0_panels(const void* src, void* dst, int64_t n_panels, int64_t cols) {
  // The AVX-512 packing where the kernels run (load time: the scalar one took 8 s for an 8 GB model).
  if (q8_0_panel_kernels_available())
    each_panel(src, dst, n_panels, cols, [](const uint8_t* in, uint8_t* out, int64_t nb) { pack_q8_0_panel_avx512(in, out, nb); });
  else
    each_panel(src, dst, n_panels, cols, pack_one);
}

void pack_q8_0_panels_ref(const void* src, void* dst, int64_t n_panels, int64_t cols) {
  each_panel(src, dst, n_panels, cols, pack_one);
}

void unpack_q8_0_panels(const void* src, void* dst, int64_t n_panels, int64_t cols) {
  each_panel(src, dst, n_panels, cols, unpack_one);
}

void dequantize_q8_0_panel_row(const void* matrix, int64_t r, int64_t cols, float* dst) {
  const int64_t nb = cols / 32;
  const auto* panel = static_cast<const uint8_t*>(matrix) + static_cast<size_t>(r / kQ8PanelRows) * nb * kQ8PanelBlockBytes;
  const int lane = static_cast<int>(r % kQ8PanelRows);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* p = panel + static_cast<size_t>(b) * kQ8PanelBlockBytes;
    uint16_t h;
    std::memcpy(&h, p + 512 + 2 * lane, 2);
    const float d = fp16_to_fp32(h);
    for (int k = 0; k < 8; ++k)
      for (int j = 0; j < 4; ++j)
        dst[32 * b + 4 * k + j] = static_cast<float>(static_cast<int8_t>(p[64 * k + 4 * lane + j] ^ 0x80u)) * d;
  }
}

bool q8_0_panel_kernels_available() { return best_isa() == Isa::Avx512; }

void dequantize_q8_0_p(const void*, float*, int64_t) {
  fail("q8_0_p: rows are interleaved in 16-row panels; read a row with dequantize_q8_0_panel_row");
}

float vec_dot_q8_0_p(int64_t, const void*, const void*) {
  fail("q8_0_p: rows are interleaved in 16-row panels; multiply the matrix with kernels::matmul_rows");
}

}  // namespace moe::quant
