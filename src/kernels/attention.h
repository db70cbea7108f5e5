// Causal softmax attention for a block of queries of one head against fp32 keys and values. Used for
// prompt batches, where a block of queries shares every key and value it reads; the caller spreads
// (head, query block) items over its pool, so the blocking, and hence the result, is independent of the
// thread count. Keys are taken in chunks of kAttnKeyChunk with an online softmax (flash attention's
// recurrence: a running row maximum and sum, the output rescaled when the maximum rises), each chunk two
// single-threaded matrix products (S = scale * Q K^T, then out += exp(S - max) V): the scores of a chunk
// stay in L2 however long the prompt, where one m x n_keys score matrix (1 MiB per block at 4096 keys)
// made the softmax passes run from DRAM. The products are kernels/gemm_f32.h's (the chunk's keys
// transposed first) where the CPU has AVX-512, else OpenBLAS's sgemm: bench/attention_bench.cpp
// BM_CausalBlock/2048/64/4 on this machine, 89-93 GFLOP/s with sgemm, 137-160 with gemm_f32.
#pragma once
#include <cstdint>
#include <vector>

namespace moe::kernels {

struct CausalBlock {
  const float* q = nullptr;  // m query rows, q_stride floats apart
  int64_t q_stride = 0;
  const float* k = nullptr;  // key rows for positions key0 .. n_past + m - 1, kv_stride floats apart
  const float* v = nullptr;  // value rows, same positions, v_stride floats apart (0 = kv_stride)
  int64_t kv_stride = 0;
  int64_t v_stride = 0;
  int64_t m = 0;       // queries in the block: query i is at position n_past + i
  int64_t n_past = 0;
  int64_t key0 = 0;    // position of key row 0 (<= the first key any query of the block sees)
  int64_t window = 0;  // sliding window: query at p sees keys (p - window, p]; 0 = all keys from 0
  int64_t head_dim = 0;  // query/key length
  int64_t v_dim = 0;     // value and output length (0 = head_dim)
  float scale = 1.0f;  // applied to q . k before the softmax
  bool has_sink = false;  // an attention sink: exp(sink - max) joins every row's denominator
  float sink = 0.0f;
  float* out = nullptr;  // m rows of v_dim, out_stride floats apart
  int64_t out_stride = 0;
  // Query heads that share these keys and values (grouped-query attention), attended together: head g's
  // query row i is at q + i * q_stride + g * q_head_stride, its output at out + i * out_stride +
  // g * out_head_stride, its sink head_sinks[g] (when has_sink; null: `sink` for every head).
  int heads = 1;
  int64_t q_head_stride = 0;
  int64_t out_head_stride = 0;
  const float* head_sinks = nullptr;
};

inline constexpr int64_t kAttnKeyChunk = 256;

// scratch grows to about m * heads * (kAttnKeyChunk + head_dim + v_dim + 2) floats and is reused across
// calls (plus head_dim x 256 for the transposed keys). With heads > 1 the queries of all heads are
// stacked (token-major: row i * heads + g) into one matrix, so each chunk of keys and values is packed
// (transposed) once for the group instead of once per head, and the two products run on heads * m rows
// (sgemm on 256 rows: 101 GFLOP/s on this machine's cores against 89 on 64). A row's products do not
// depend on the stack with gemm_f32 (only the chunking of keys, which follows the stacked row count,
// can); with sgemm they do, through its own blocking.
void causal_attention_block(const CausalBlock& b, std::vector<float>& scratch);

// How many of a group of `group` query heads one CausalBlock of m queries should stack: 1 below
// kAttnMinStackQueries queries (a short prompt has one chunk of keys, so stacking saves little, and the
// one-head path needs no copies), else the largest divisor of group keeping the stacked rows at most 256
// and their queries and outputs at most 128 KB each, so that they, a chunk's scores and its keys and
// values stay in a core's L2.
inline constexpr int64_t kAttnMinStackQueries = 32;
int attention_heads_per_block(int group, int64_t m, int64_t head_dim, int64_t v_dim);

// The softmax of a score row, vectorised: x[j] = exp(x[j] - mx) for j < n, returning the sum of the new
// x. The exponential is our own (range reduction by ln 2 in two parts, a degree-7 polynomial, then an
// exact scaling by 2^k; within 2 ulp of exp, x - mx clamped to [-104, 88]), and the sum runs in 16
// lanes (element j in lane j % 16) added pairwise at the end, so the scalar reference and the AVX2 and
// AVX-512 bodies give the same bits. max_f32: the largest of x[0 .. n - 1] (n >= 1).
float exp_shifted_sum(float* x, int64_t n, float mx);
float exp_shifted_sum_ref(float* x, int64_t n, float mx);
float exp_shifted_sum_avx2(float* x, int64_t n, float mx);
float exp_shifted_sum_avx512(float* x, int64_t n, float mx);
float max_f32(const float* x, int64_t n);

// Decode attention straight from the fp16 KV cache: nh query heads that share one kv head, n keys.
// Each key and value row is widened on the fly (exactly: every fp16 value is an fp32 value), so the
// cache is read once per run of heads, with no separate conversion pass.
struct F16AttnRun {
  const float* q = nullptr;       // nh query rows, q_stride floats apart
  int64_t q_stride = 0;
  int nh = 0;
  const uint16_t* k = nullptr;    // key rows 0 .. n - 1, kv_stride halves apart
  const uint16_t* v = nullptr;    // value rows, v_stride halves apart (0 = kv_stride)
  int64_t kv_stride = 0;
  int64_t v_stride = 0;
  int64_t n = 0;
  int64_t head_dim = 0;           // query/key length
  int64_t v_dim = 0;              // value length (0 = head_dim); acc rows are v_dim floats apart
  float* scores = nullptr;        // nh rows of n, scores_stride floats apart
  int64_t scores_stride = 0;
  int64_t vdim() const { return v_dim ? v_dim : head_dim; }
  int64_t vstride() const { return v_stride ? v_stride : kv_stride; }
};
// scores[g][j] = scale * (q_g . k_j), the dot summed in 16 lanes (element d in lane d % 16, in order
// of d) and the lanes then added pairwise, in the same order on every ISA.
void attn_scores_f16(const F16AttnRun& r, float scale);
// acc[g][d] += scores[g][j] * v_j[d] for j = 0 .. n - 1 in order, one fused multiply-add each; acc
// rows are v_dim floats apart.
void attn_values_f16(const F16AttnRun& r, float* acc);
// Plain scalar references with the same arithmetic, and the AVX-512 bodies (call only where the CPU
// has AVX-512F; head_dim and v_dim must be multiples of 16).
void attn_scores_f16_ref(const F16AttnRun& r, float scale);
void attn_values_f16_ref(const F16AttnRun& r, float* acc);
void attn_scores_f16_avx512(const F16AttnRun& r, float scale);
void attn_values_f16_avx512(const F16AttnRun& r, float* acc);

}  // namespace moe::kernels
