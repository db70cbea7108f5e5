// Q8_0_P: Q8_0 expert matrices laid out in memory as the AVX-512 VNNI panel GEMM reads them. Never read
// from or written to a file (file_dtype(Q8_0_P) == Q8_0); the engine packs routed experts' Q8_0 matrices
// at load (Model::repack, the expert store after each read) where the panel kernels run.
//
// Why: the panel GEMM multiplies 16 rows at once, one row per 32-bit lane, so every call used to
// transpose each 16-row panel of the file's rows (and add 128 to every quant) before multiplying: a
// fifth of a Q8_0 prefill's time, since a prompt gives each expert only ~32 tokens to spread it over.
// Packed once at load, the kernel reads its registers straight from memory, and one panel is one
// contiguous stream for the hardware prefetcher instead of 16.
//
// Layout. A matrix of R rows (a multiple of 16) and n columns (nb = n / 32 blocks a row) is R / 16
// panels of nb * 544 bytes, panel p holding rows 16p .. 16p+15; block b of a panel is 544 bytes at
// 544 * b: first 512 bytes of quants, byte 64k + 4r + j = (quant 4k + j of row 16p + r, block b) + 128
// (k < 8, j < 4, as an unsigned byte), then the 16 rows' fp16 scales, 2 bytes each, in row order. The
// same bytes as the Q8_0 rows (16 * 34 = 544 per panel and block), so tensor sizes, expert slots and
// memory plans do not change. Rows are no longer contiguous: the trait table's row functions cannot
// take a Q8_0_P row; dequantize_q8_0_panel_row reads one.
#pragma once
#include <cstddef>
#include <cstdint>

namespace moe::quant {

inline constexpr int kQ8PanelRows = 16;
inline constexpr size_t kQ8PanelBlockBytes = 544;  // 16 rows x sizeof(BlockQ8_0)

// Whether a Q8_0 matrix of this shape can be held as Q8_0_P.
inline bool q8_0_panels_fit(int64_t rows, int64_t cols) { return rows > 0 && rows % kQ8PanelRows == 0 && cols > 0 && cols % 32 == 0; }

// n_panels panels of 16 Q8_0 rows of `cols` elements, file layout <-> Q8_0_P. In place allowed
// (src == dst); other overlaps are not.
// pack_q8_0_panels uses the AVX-512 packing where the panel kernels run; pack_q8_0_panels_ref is the
// plain scalar one (the same bytes).
void pack_q8_0_panels(const void* src, void* dst, int64_t n_panels, int64_t cols);
void pack_q8_0_panels_ref(const void* src, void* dst, int64_t n_panels, int64_t cols);
void unpack_q8_0_panels(const void* src, void* dst, int64_t n_panels, int64_t cols);

// Row r of a Q8_0_P matrix (its first byte at `matrix`) as floats: dequantize_q8_0's values for the row.
void dequantize_q8_0_panel_row(const void* matrix, int64_t r, int64_t cols, float* dst);

// True where the panel GEMM runs (this process uses the AVX-512 kernels): only then is packing done.
bool q8_0_panel_kernels_available();

// Trait-table entries for Q8_0_P: a row is not contiguous, so they throw, naming the type (every
// engine path that multiplies a Q8_0_P matrix goes through kernels::matmul_rows).
void dequantize_q8_0_p(const void* src, float* dst, int64_t n);
float vec_dot_q8_0_p(int64_t n, const void* x, const void* y);

}  // namespace moe::quant
