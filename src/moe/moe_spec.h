// MoeSpec: how one MoE layer routes and combines its experts, as named fields filled from metadata
// (design.md seam 2). Lives below model/ so routers, executors and stores can use it.
#pragma once
#include <cstdint>

namespace moe {

// Softmax / Sigmoid: the score of every expert, top-k on the (biased) scores, weights = the unbiased
// scores of the selected. SoftmaxWeight (gpt-oss): top-k on the raw logits, weights = softmax over the
// k selected logits only.
enum class Gating { Softmax, Sigmoid, SoftmaxWeight };
enum class SharedGate { None, Sigmoid };  // how the shared-expert output is scaled
// The routed experts' activation. SwiGLU: silu(g) * u. SwiGLUOai (gpt-oss): g' = min(g, limit),
// u' = clamp(u, -limit, limit), g' * sigmoid(alpha g') * (u' + 1).
enum class Activation { SwiGLU, SwiGLUOai };

struct MoeSpec {
  int n_expert = 0;
  int n_expert_used = 0;  // k
  int64_t n_ff_exp = 0;
  Gating gating = Gating::Softmax;
  bool norm_topk = false;     // renormalize the k selected weights to sum 1
  float route_scale = 1.0f;   // multiplies the final weights (1 = none)
  bool has_selection_bias = false;
  int n_group = 1;            // group-limited routing (1 = off)
  int topk_group = 1;
  int n_shared = 0;           // shared experts, computed as one FFN of width n_ff_shexp
  int64_t n_ff_shexp = 0;
  SharedGate shared_gate = SharedGate::None;
  Activation activation = Activation::SwiGLU;
  float act_alpha = 1.702f;   // SwiGLUOai
  float act_limit = 7.0f;     // SwiGLUOai
};

}  // namespace moe
