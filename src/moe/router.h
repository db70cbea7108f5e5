// The router turns router logits into (expert ids, weights) per token, following the layer's MoeSpec:
// score (softmax | sigmoid) -> + selection bias -> group mask -> top-k -> gather unbiased scores ->
// optional renormalization -> route_scale. With Gating::SoftmaxWeight (gpt-oss) the scores are the
// logits themselves and the selected experts' weights are a softmax over their logits alone. The
// steps are separate functions (namespace gate) so that
// the run-time routing policy (moe/routing_policy.h) composes its own steps around the very same gate
// math; route_tokens runs them in the model's order.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "moe/moe_spec.h"

namespace moe {

// The routing of a batch: k slots per token. A slot may be empty (id -1, weight 0): no expert, as
// run-time routing policies that choose a variable number of experts per token leave it (top-p,
// thresholds, masks, null experts). Everyone who reads a Routing skips empty slots; the non-empty
// slots of a token keep selection order (best first).
struct Routing {
  static constexpr int32_t kEmpty = -1;
  int64_t n_tokens = 0;
  int k = 0;
  std::vector<int32_t> ids;    // [n_tokens][k], in selection order (best first); kEmpty = no expert
  std::vector<float> weights;  // [n_tokens][k]; 0 for empty slots

  int32_t id(int64_t t, int j) const { return ids[static_cast<size_t>(t * k + j)]; }
  float weight(int64_t t, int j) const { return weights[static_cast<size_t>(t * k + j)]; }
};

// logits: [n_tokens][n_expert] (overwritten with the scores; SoftmaxWeight leaves the logits).
// selection_bias: [n_expert] or null.
void route_tokens(const MoeSpec& spec, float* logits, const float* selection_bias, int64_t n_tokens, Routing& out);

// The gate's steps for one token. `off` (null = none) marks experts removed from the layer: each step
// then behaves exactly as if their router rows (and selection-bias entries) were not in the model.
namespace gate {

// In place: the logits row becomes the gate's scores (softmax over the experts left, elementwise
// sigmoid, or for SoftmaxWeight the logits unchanged); removed experts get score 0 (SoftmaxWeight: -inf). scratch: reused between calls.
void scores(const MoeSpec& spec, float* row, const uint8_t* off, std::vector<float>& scratch);

// Selection keys: score + selection bias, then the group mask (groups keep their members by index;
// a group's score is the sum of its two best keys among the experts left, its best alone when one is
// left, and -inf when none is). Removed experts and experts of dropped groups get -inf.
void selection_keys(const MoeSpec& spec, const float* scores, const float* bias, const uint8_t* off, float* keys,
                    std::vector<float>& scratch, std::vector<int32_t>& iscratch);

// The n best candidates by key, best first; ties keep the lower index first. candidates: expert ids.
void top_n(const float* keys, const int32_t* candidates, int n_candidates, int n, int32_t* out,
           std::vector<int32_t>& scratch);

// Weights of the selected experts: their (unbiased) scores (SoftmaxWeight: a softmax over the selected
// logits), renormalized to sum 1 when `renorm`
// (with llama.cpp's clamp of the sum), times route_scale.
void weights(const MoeSpec& spec, const float* scores, const int32_t* ids, int n, bool renorm, float* w);

}  // namespace gate

}  // namespace moe
