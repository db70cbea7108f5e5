// Matrix-times-activations driver over the dtype trait table. Activations are converted once per
// call into the weight type's vec_dot format (as llama.cpp does: F16 for F16 weights, Q8_0 / Q8_1 /
// Q8_K for quantized ones). Where the type has a tile kernel (DTypeTraits::vec_dot_tile), a decoded token
// takes rows four at a time (the activation block is shared by four rows), and a batch goes to the panel
// GEMM where the type has one (Q4_0, Q8_0, Q4_K(_R), Q5_K, Q6_K on AVX-512: 16 rows converted once per
// chunk and token block; Q8_0_P, packed at load, for every token count, nothing converted) or to the
// tile kernel; otherwise each output is one vec_dot. Either way every
// output equals vec_dot(row, token) bit for bit, whatever the thread count or chunking. Rows are split
// across the pool in dynamic chunks.
#pragma once
#include <cstdint>
#include <vector>

#include "base/thread_pool.h"
#include "kernels/quant_tile.h"
#include "tensor/dtype.h"

namespace moe::kernels {

// A row-major matrix in ggml order: `rows` rows of `cols` elements, each row `row_bytes` long.
struct MatrixRef {
  const uint8_t* data = nullptr;
  DType type = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_bytes = 0;
};

// Activations converted to one vec_dot format. Reused across calls so decode does not allocate, but never
// holding more than twice what the last call needed plus kActSlackBytes (the --mem plan relies on it).
inline constexpr size_t kActSlackBytes = 64u << 10;

class ActBuffer {
 public:
  // Converts n_tokens rows of n floats (stride x_stride floats) to `type`; with rows, row t is
  // x + rows[t] * x_stride (a gather, e.g. an expert's tokens).
  void convert(DType type, const float* x, int64_t n_tokens, int64_t n, int64_t x_stride,
               const int32_t* rows = nullptr);
  DType type() const { return type_; }
  int64_t n_tokens() const { return n_tokens_; }
  int64_t n() const { return n_; }
  const uint8_t* row(int64_t t) const { return data_.data() + static_cast<size_t>(t) * row_bytes_; }
  size_t row_bytes() const { return row_bytes_; }
  // Q8_0 activations (any number of tokens): each block's quant sum and float scale, [n_tokens][n / 32],
  // from token t on; nulls otherwise. The panel GEMM of Q8_0 / Q8_0_P / Q4_0 weights uses them.
  quant::Q8_0BlockFacts block_facts(int64_t t) const {
    if (block_sums_.empty()) return {};
    const size_t at = static_cast<size_t>(t * (n_ / 32));
    return {block_sums_.data() + at, block_scales_.data() + at};
  }
  // What the buffer holds, used or not (the quantized rows and, for Q8_0 batches, the block facts).
  size_t held_bytes() const {
    return data_.capacity() + block_sums_.capacity() * sizeof(int32_t) + block_scales_.capacity() * sizeof(float);
  }

 private:
  std::vector<uint8_t> data_;
  std::vector<int32_t> block_sums_;
  std::vector<float> block_scales_;
  DType type_ = DType::F32;
  int64_t n_tokens_ = 0;
  int64_t n_ = 0;
  size_t row_bytes_ = 0;
};

// y[t * y_stride + r] = dot(W[r], act[t]) for all rows r and tokens t. act must be in W's vec_dot_type.
void matmul(const MatrixRef& w, const ActBuffer& act, float* y, int64_t y_stride, ThreadPool& pool);

// Several independent matmuls in one parallel region (e.g. a layer's Q, K and V projections): rows of
// every job are chunked as matmul() would chunk them (for a decoded token, the jobs' rows are laid end to
// end and cut by guided claims) and all chunks are handed out dynamically, so threads do not wait at
// the end of each small matrix. Bit-identical to calling matmul() on each job.
struct MatmulJob {
  MatrixRef w;
  const ActBuffer* act = nullptr;
  float* y = nullptr;
  int64_t y_stride = 0;
};
void matmul_batch(const MatmulJob* jobs, size_t n_jobs, ThreadPool& pool, std::vector<int64_t>& chunk_scratch);

// The shortest chunk of rows a decoded token's matmuls hand out (guided claims start longer): a
// multiple of `quantum` rows (row_quantum), about 64 KB of weights.
int64_t decode_min_rows(size_t row_bytes, int64_t quantum = 4);
// The multiple of rows a decoded token's chunks should start at for weights of type t: 16 for Q8_0_P
// (whole panels; a cut one is computed whole and stored in part), else 4.
int64_t row_quantum(DType t);


// Throws unless act fits w (length, and w's vec_dot_type). matmul and matmul_batch check every job; a
// fused region that calls matmul_rows checks its jobs first, since its workers must not throw.
void check_operands(const MatrixRef& w, const ActBuffer& act);

// Same, single-threaded, over rows [r0, r1) (building block for fused parallel regions).
void matmul_rows(const MatrixRef& w, const ActBuffer& act, float* y, int64_t y_stride, int64_t r0, int64_t r1);
// The rows of w that matmul gives one call of matmul_rows at a time (the parallel chunk) for a batch of
// tokens.
int64_t matmul_row_grain(const MatrixRef& w);

}  // namespace moe::kernels
