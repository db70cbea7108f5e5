// The router turns router logits into (expert ids, weights) per token, following the layer's MoeSpec:
// score (softmax | sigmoid) -> + selection bias -> group mask -> top-k -> gather unbiased scores ->
// optional renormalization -> route_scale. Run-time strategies will compose around this step.
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

// logits: [n_tokens][n_expert] (overwritten with the scores). selection_bias: [n_expert] or null.
void route_tokens(const MoeSpec& spec, float* logits, const float* selection_bias, int64_t n_tokens, Routing& out);

}  // namespace moe
