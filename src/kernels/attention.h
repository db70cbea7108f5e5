// Causal softmax attention for a block of queries of one head against fp32 keys and values, as two
// single-threaded sgemm calls (scores = scale * Q K^T, then out = softmax(scores) V). Used for prompt
// batches, where a block of queries shares every key and value it reads; the caller spreads (head,
// query block) items over its pool, so the blocking, and hence the result, is independent of the
// thread count.
#pragma once
#include <cstdint>
#include <vector>

namespace moe::kernels {

struct CausalBlock {
  const float* q = nullptr;  // m query rows, q_stride floats apart
  int64_t q_stride = 0;
  const float* k = nullptr;  // key rows 0 .. n_past + m - 1, kv_stride floats apart
  const float* v = nullptr;  // value rows, same layout
  int64_t kv_stride = 0;
  int64_t m = 0;       // queries in the block
  int64_t n_past = 0;  // query i sees keys 0 .. n_past + i
  int64_t head_dim = 0;
  float scale = 1.0f;  // applied to q . k before the softmax
  float* out = nullptr;  // m rows of head_dim, out_stride floats apart
  int64_t out_stride = 0;
};

// scratch grows to m * (n_past + m + 1) floats and is reused across calls.
void causal_attention_block(const CausalBlock& b, std::vector<float>& scratch);

}  // namespace moe::kernels
