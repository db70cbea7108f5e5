// Observers at named points of the forward pass (design.md seam 4). Traces, calibration for pruning
// and quantization, routing statistics and the server's live view subscribe here, without touching
// model code. Observing never changes the numbers: an observer receives read-only views that are valid
// only during the call, and everything it asks for is copied or computed on the side.
//
// The forward pass calls, on the thread that called ForwardPass::run (never from a worker), in order:
//   on_step_begin   once per forward call (one batch of tokens, possibly of several sequences)
//   for each MoE layer, in layer order:
//     on_routing        the layer's routing (after any run-time routing policy), always
//     on_expert_output  per expert that ran: its unweighted outputs E_e(x) for its tokens (needs.expert_outputs)
//     on_moe_output     the routed sum and the block output (needs.moe_io)
//   on_final_hidden  the residual stream after the last layer, before the output norm (needs.final_hidden)
//   on_step_end
// Dense layers are not reported. Views index tokens 0..n_tokens-1 of the step (StepTokens).
#pragma once
#include <cstdint>

#include "moe/router.h"

namespace moe {

// The tokens of one forward call: ids, absolute positions and sequence ids (one per token). A session
// runs one sequence (seq_ids all equal); a batched server step may mix several.
struct StepTokens {
  const int32_t* ids = nullptr;
  const int64_t* positions = nullptr;
  const int32_t* seq_ids = nullptr;
  int64_t n_tokens = 0;
};

// What an observer needs beyond the routing itself, so the forward pass does extra work only when asked.
struct ObserverNeeds {
  bool router_logits = false;   // MoeLayerRouting::logits (raw router outputs, copied before the gate)
  bool expert_outputs = false;  // on_expert_output
  bool moe_io = false;          // MoeLayerRouting::residual, on_moe_output
  bool final_hidden = false;    // on_final_hidden
  ObserverNeeds& operator|=(const ObserverNeeds& o) {
    router_logits |= o.router_logits;
    expert_outputs |= o.expert_outputs;
    moe_io |= o.moe_io;
    final_hidden |= o.final_hidden;
    return *this;
  }
};

// A MoE layer's routing step. Rows are [n_tokens][width].
struct MoeLayerRouting {
  int layer = 0;
  const StepTokens* tokens = nullptr;
  int64_t n_embd = 0;
  int n_expert = 0;
  const float* input = nullptr;     // x: the normalized MoE-block input, [n_tokens][n_embd]
  const float* residual = nullptr;  // h: the residual stream entering the FFN block (needs.moe_io), else null
  const float* logits = nullptr;    // z = W_g x, [n_tokens][n_expert] (needs.router_logits), else null
  const float* scores = nullptr;    // the gate's scores (softmax or sigmoid of z, unbiased), [n_tokens][n_expert]
  // Selected experts and final weights, as the executor uses them: after the model's gate and any
  // run-time routing policy. Empty slots have id -1 (see moe/router.h).
  const Routing* routing = nullptr;
};

// One expert's unweighted outputs E_e(x_t) for the tokens routed to it in this step.
struct ExpertOutputs {
  int layer = 0;
  int expert = 0;
  int64_t n_rows = 0;
  const int32_t* token = nullptr;  // [n_rows]: the step's token index of each row
  const int32_t* slot = nullptr;   // [n_rows]: the routing slot (rank) of that token that chose this expert
  const float* rows = nullptr;     // [n_rows][n_embd]
  int64_t n_embd = 0;
};

// A MoE block's outputs, [n_tokens][n_embd] each.
struct MoeLayerOutput {
  int layer = 0;
  const StepTokens* tokens = nullptr;
  int64_t n_embd = 0;
  const float* routed = nullptr;  // r: sum_j w_j E_j(x), the routed experts only
  const float* block = nullptr;   // what the block adds to the residual stream (routed + shared experts)
};

class ForwardObserver {
 public:
  virtual ~ForwardObserver() = default;
  virtual ObserverNeeds needs() const { return {}; }
  virtual void on_step_begin(const StepTokens& tokens) {}
  virtual void on_routing(const MoeLayerRouting& r) {}
  virtual void on_expert_output(const ExpertOutputs& out) {}
  virtual void on_moe_output(const MoeLayerOutput& out) {}
  // [n_tokens][n_embd]: the residual stream after the last layer (before the output norm).
  virtual void on_final_hidden(const StepTokens& tokens, const float* hidden, int64_t n_embd) {}
  virtual void on_step_end(const StepTokens& tokens) {}
};

}  // namespace moe
