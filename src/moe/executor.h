// ExpertExecutor: groups the tokens of a batch by expert, acquires each needed expert from the store,
// and computes its SwiGLU FFN on just those tokens (a small GEMM per expert in prefill, a matvec in
// decode). Results are combined per token in selection order, as llama.cpp sums them.
#pragma once
#include <cstdint>
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


class ExpertExecutor {
 public:
  // x: [n_tokens][n_embd] (the normalized MoE input). out: [n_tokens][n_embd], overwritten with
  // sum_j w_j * E_j(x).
  void run(int layer, const MoeSpec& spec, const float* x, int64_t n_tokens, int64_t n_embd, const Routing& routing,
           ExpertStore& store, ThreadPool& pool, float* out);

 private:
  std::vector<std::vector<std::pair<int32_t, int32_t>>> by_expert_;  // expert -> (token, slot)
  std::vector<float> xg_, down_, slots_;
  std::vector<int32_t> needed_;
  FfnScratch ffn_;
};

}  // namespace moe
