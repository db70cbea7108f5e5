// SCMoE self-contrast decoding (techniques.md section 3): a strong pass (the session's routing) and a
// weak pass (one expert alone per MoE layer, chosen by its router rank, weight 1), each with its own
// KV cache. Tokens the strong pass finds implausible (log p_s < max log p_s + log alpha) are excluded;
// the others score (1 + beta) log p_s - beta log p_w, and decoding takes the argmax (or samples).
//
// Ranks count from 1: rank 1 is the router's best expert, rank 2 (the default, the paper's "r = 2")
// the second-best. The paper's code counts from 0, so its rank 2 is our rank 3.
#pragma once
#include <cstdint>

#include "moe/routing_policy.h"

namespace moe {

struct ScmoeParams {
  double alpha = 0.1;  // plausibility: keep tokens within a factor alpha of the strong pass's best
  double beta = 0.5;   // contrast strength
  int rank = 2;        // the weak pass's expert, by router rank (1 = best)
  void check() const;  // errors name the flag
};

// The weak pass's policy: the strong policy's masks, then the expert of rank `rank` alone, weight 1.
RoutingPolicy scmoe_weak_policy(const RoutingPolicy& strong, int rank);

// out[v] = (1 + beta) * log p_s[v] - beta * log p_w[v] for plausible v, -inf for the others (out may
// alias neither input). Always leaves the strong pass's argmax finite.
void scmoe_scores(const float* strong_logits, const float* weak_logits, int64_t n_vocab, const ScmoeParams& p,
                  float* out);

}  // namespace moe
