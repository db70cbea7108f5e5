// ExpertExecutor: groups the tokens of a batch by expert, acquires each needed expert from the store,
// and computes its gated FFN (SwiGLU or the clamped variant, with the expert's biases if it has them)
// on just those tokens (a small GEMM per expert in prefill, a matvec in
// decode). Results are combined per token in selection order, as llama.cpp sums them.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "base/thread_pool.h"
#include "kernels/matmul.h"
#include "moe/moe_spec.h"
#include "moe/expert_store.h"
#include "moe/router.h"

namespace moe {

// A SwiGLU FFN on n_tokens rows: out = down(silu(gate x) * up x). Shared by dense layers, shared
// experts and routed experts. Scratch buffers are reused between calls.
struct FfnScratch {
  std::vector<float> gate, up;
  kernels::ActBuffer act_in, act_up, act_down;
};
void swiglu_ffn(const kernels::MatrixRef& gate, const kernels::MatrixRef& up, const kernels::MatrixRef& down,
                const float* x, int64_t n_tokens, float* out, ThreadPool& pool, FfnScratch& scratch);


// Precision tiers at run time (techniques.md section 5, HOBBIT / EdgeMoE). Thresholds compare with the
// final routing weight of a (token, expert) pair, as it multiplies the expert's output.
struct ExpertPrecision {
  // An expert whose tokens in the batch all weigh less than this may be served from its low-bit copy
  // (the store decides: see ExpertStore::acquire). 0 = never; any token at or above it = full precision.
  float low_bit_below = 0.0f;
  // (Skipping pairs below a weight, --skip-below, is the routing policy's minimum weight: see
  // moe/routing_policy.h. A skipped pair leaves an empty slot, so it is neither computed nor loaded.)
  bool active() const { return low_bit_below > 0.0f; }
};

// How routed (token, expert) pairs were evaluated. Shared by the sessions of one engine (atomics).
struct ExpertUseCounters {
  std::atomic<uint64_t> full_evals{0};    // pairs computed with the full-precision copy
  std::atomic<uint64_t> low_bit_evals{0}; // pairs computed with the low-bit copy
  std::atomic<uint64_t> skipped_evals{0}; // pairs the routing policy's minimum weight dropped (--skip-below)
  std::atomic<uint64_t> full_acquires{0}, low_bit_acquires{0};  // per expert and batch
  void reset() {
    for (auto* c : {&full_evals, &low_bit_evals, &skipped_evals, &full_acquires, &low_bit_acquires}) c->store(0);
  }
};

// Receives each computed expert's unweighted outputs E_e(x), before they are weighted and summed
// (observers of the forward pass subscribe through this; design.md seam 4). members[i] is the
// (token, slot) pair of row i.
class ExpertOutputSink {
 public:
  virtual ~ExpertOutputSink() = default;
  virtual void on_expert_output(int layer, int expert, const std::pair<int32_t, int32_t>* members, int64_t n_rows,
                                const float* rows, int64_t n_embd) = 0;
};

class ExpertExecutor {
 public:
  // Thresholds, and where to count (null = nowhere). Defaults: everything at full precision.
  void configure(const ExpertPrecision& precision, ExpertUseCounters* counters) {
    precision_ = precision;
    counters_ = counters;
  }

  // x: [n_tokens][n_embd] (the normalized MoE input). out: [n_tokens][n_embd], overwritten with
  // sum_j w_j * E_j(x) over the token's non-empty slots (id >= 0). sink (optional) sees every computed
  // expert's unweighted outputs.
  void run(int layer, const MoeSpec& spec, const float* x, int64_t n_tokens, int64_t n_embd, const Routing& routing,
           ExpertStore& store, ThreadPool& pool, float* out, ExpertOutputSink* sink = nullptr);

 private:
  // Computes needed_ experts' outputs into down_ (rows in needed_ order, each expert's tokens in
  // by_expert_ order), in batches of the experts the store has ready.
  void compute_ready_first(int layer, int64_t n_embd, ExpertStore& store, ThreadPool& pool);
  // One batch: the batch_ experts in shared parallel regions.
  void compute_fused(int layer, int64_t n_embd, ExpertStore& store, ThreadPool& pool);
  template <class Activate>
  void compute_decode_dataflow(size_t nb, int64_t n_embd, ThreadPool& pool, Activate& activate);

  std::vector<std::vector<std::pair<int32_t, int32_t>>> by_expert_;  // expert -> (token, slot)
  std::vector<float> down_, zeros_;
  const float* x_ = nullptr;         // run()'s input rows
  std::vector<int32_t> row_token_;   // per row of down_: its token (the row of x it multiplies)
  std::vector<int64_t> slot_row_;    // per (token, slot): its row of down_, -1 for an empty slot
  std::vector<int32_t> needed_;
  std::vector<int32_t> pending_, batch_;  // compute_ready_first: positions in needed_
  std::vector<uint8_t> low_bit_ok_;  // per needed_ entry
  // compute_fused: per needed expert its weights, first row in down_, and activation buffers.
  std::vector<ExpertWeights> weights_;
  std::vector<int64_t> row0_, chunk_scratch_;
  std::vector<kernels::ActBuffer> act_in_, act_up_, act_down_;
  std::vector<kernels::MatmulJob> jobs_;
  std::vector<float> gate_, up_;
  std::unique_ptr<std::atomic<int>[]> pair_state_;  // compute_decode_dataflow: per expert of the batch
  size_t pair_state_capacity_ = 0;
  uint64_t evals_[2] = {0, 0}, acquires_[2] = {0, 0};
  ExpertPrecision precision_;
  ExpertUseCounters* counters_ = nullptr;
  const MoeSpec* spec_ = nullptr;  // the layer being run (activation)
};

}  // namespace moe
