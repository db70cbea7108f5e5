// Run-time routing policy (design.md seam 3, techniques.md section 2): one value that says how a session
// routes, applied by the router as composable steps around the model's own gate (moe/router.h). The
// default policy is the identity: the model's gate, bit for bit. A Session carries its policy (two
// sessions in one process may differ); a batched step may route different token ranges under
// different policies (route_range). docs/routing-lab.md describes each step's semantics.
//
// The steps, in the order they run for each token of a MoE layer:
//   1. mask (mask_experts): masked experts are removed, exactly as if their router rows (and
//      selection-bias entries) were not in the model: a softmax gate normalizes over the experts left,
//      group scores count only the experts left. A masked expert is never selected, so never loaded.
//   2. the gate's scores (softmax | sigmoid), or, with C3PO re-mixing on this layer, the re-mixed
//      score vector in their place.
//   3. selection keys: score + selection bias, group mask (the model's rules); Sinkhorn balancing
//      (over the token range) replaces them by the balanced transport plan's.
//   4. selection: forced experts (force_experts, steer with force) first, then by key: top-k (the
//      model's k, `experts`, or `experts_per_layer`), top-p (the shortest prefix whose probability mass
//      exceeds p, at most top_p_max_k), or one expert alone by rank (only_rank, SCMoE's weak pass).
//   5. weights: the unbiased scores of the selected experts, renormalized as the model does (top-p:
//      as top_p_weights says), times route_scale; only_rank gives its expert weight 1.
//   6. ratio threshold: drop expert j if w_j < beta * max_i w_i; the survivors are rescaled to the
//      token's weight before dropping.
//   7. random drop (a baseline for 6): drop each selected expert but the heaviest with probability q.
//   8. minimum weight (null experts; --skip-below): drop pairs with w < min_weight; the survivors are
//      rescaled as in 6 only with min_weight_renorm.
//   9. steering: multiply the weight of chosen (layer, expert) pairs by their factor.
// Forced experts are never dropped by 6-8. Dropped pairs leave empty slots (Routing::kEmpty).
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "moe/moe_spec.h"
#include "moe/router.h"

namespace moe {

struct LayerExpert {
  int layer = 0;
  int expert = 0;
  bool operator==(const LayerExpert& o) const { return layer == o.layer && expert == o.expert; }
};

struct SteerRule {
  int layer = 0;
  int expert = 0;
  double factor = 1.0;
  bool force = false;  // also force-select the expert
};

enum class TopPWeights { Model, Raw, Renorm };

// C3PO re-mixing: per layer, the gate score vector that replaces the router's (empty = not re-mixed).
// Computed by the runtime from reference routing (runtime/remix.h); shared, read-only.
struct RemixScores {
  std::vector<std::vector<float>> per_layer;
};

struct RoutingPolicy {
  int experts = 0;                                     // top-k in every MoE layer; 0 = the model's k
  std::vector<std::pair<int, int>> experts_per_layer;  // (layer, k), overriding `experts` there
  double top_p = -1;                                   // top-p threshold in [0, 1]; < 0 = off
  int top_p_max_k = 0;                                 // at most this many experts (0 = no limit)
  TopPWeights top_p_weights = TopPWeights::Model;      // renormalize as the model does, never, or always
  double ratio_beta = 0;                               // ratio threshold; 0 = off
  std::vector<int> ratio_layers;                       // layers it applies to (empty = every MoE layer)
  double random_drop = 0;                              // probability; 0 = off
  uint64_t random_seed = 0;
  double min_weight = 0;                               // 0 = off
  bool min_weight_renorm = false;
  std::vector<LayerExpert> mask_experts;               // forced off
  std::vector<LayerExpert> force_experts;              // forced on
  std::vector<SteerRule> steer;
  bool sinkhorn = false;
  double sinkhorn_eps = 0.05;
  int sinkhorn_iters = 20;
  int only_rank = 0;                                   // 1-based router rank; 0 = off
  // C3PO re-mixing settings (what the JSON form carries) and, once the runtime computed them from a
  // prompt, the re-mixed scores (not serialized). Without scores the layers route as the model does.
  std::string remix_refs;
  int remix_layers = 0;
  int remix_neighbors = 3;
  std::shared_ptr<const RemixScores> remix;

  bool is_default() const;
  // Checks what needs no model: ranges and contradictory settings. Errors name the JSON key and flag.
  void check() const;
  // The JSON form: only settings that differ from the default ({} for the default policy).
  nlohmann::ordered_json to_json() const;
  // Strict: an unknown key, a wrong type or an out-of-range value is an error naming the key.
  static RoutingPolicy from_json(const nlohmann::json& j);
};

// Text forms shared by the CLI flags and their file forms (whitespace, commas and newlines separate
// entries; '#' starts a comment). `what` names the flag or file in errors.
// "L:E,L:E" with E a number, a range "A-B" or "*" (every expert: needs n_expert, -1 = not allowed).
std::vector<LayerExpert> parse_layer_experts(const std::string& text, const std::string& what, int n_expert = -1);
// "L:K,L:K"
std::vector<std::pair<int, int>> parse_layer_values(const std::string& text, const std::string& what);
// "L:E[:F]" (F defaults to default_factor)
std::vector<SteerRule> parse_steer_rules(const std::string& text, const std::string& what, double default_factor,
                                         bool force);
// "1,2,3" or ranges "0-3"
std::vector<int> parse_int_list(const std::string& text, const std::string& what);

// The experts per layer of a model (0 for dense layers), what a policy is checked against.
struct RoutingShape {
  std::vector<int> n_expert;
  std::vector<int> n_expert_used;
  int n_layer() const { return static_cast<int>(n_expert.size()); }
};

// One MoE layer of a compiled policy.
struct LayerRoutingPlan {
  bool identity = true;  // the model's gate with the model's k
  int n_expert = 0;
  int k = 0;             // top-k (resolved)
  int slots = 0;         // most experts a token can get here
  double top_p = -1;
  int top_p_cap = 0;
  TopPWeights top_p_weights = TopPWeights::Model;
  double ratio_beta = 0;
  double random_drop = 0;
  uint64_t random_seed = 0;
  double min_weight = 0;
  bool min_weight_renorm = false;
  bool sinkhorn = false;
  double sinkhorn_eps = 0;
  int sinkhorn_iters = 0;
  int only_rank = 0;
  std::vector<uint8_t> off;      // [n_expert] or empty (nothing masked)
  int n_off = 0;
  std::vector<int32_t> forced;   // forced-on experts, ascending
  std::vector<float> steer;      // [n_expert] factors or empty (no steering)
  const std::vector<float>* remix = nullptr;  // re-mixed scores, or null
};

// A policy resolved against one model's layers: validated (errors name the layer, expert and setting)
// and laid out per layer for the router. Default-constructed = the identity for any model.
class RoutingPlan {
 public:
  RoutingPlan() = default;
  RoutingPlan(const RoutingPolicy& policy, const RoutingShape& shape);

  const RoutingPolicy& policy() const { return policy_; }
  bool identity() const { return identity_; }
  // Null for an identity layer (and for every layer of an identity plan).
  const LayerRoutingPlan* layer(int il) const {
    return identity_ || il < 0 || il >= static_cast<int>(layers_.size()) || layers_[il].identity ? nullptr
                                                                                                  : &layers_[il];
  }
  bool masked(int il, int expert) const {
    const LayerRoutingPlan* lp = layer(il);
    return lp && !lp->off.empty() && lp->off[static_cast<size_t>(expert)];
  }
  // Routing slots a token can need in layer il (model_k for an identity layer).
  int slots(int il, int model_k) const {
    const LayerRoutingPlan* lp = layer(il);
    return lp ? lp->slots : model_k;
  }
  // Every (layer, expert) the policy masks (for a preload that must not read them).
  std::vector<LayerExpert> masked_experts() const;

 private:
  RoutingPolicy policy_;
  bool identity_ = true;
  std::vector<LayerRoutingPlan> layers_;
};

// The most experts a token can get in any layer under `policy`, without the model: 0 = the model's
// k, -1 = every expert (top-p without a cap). For sizing buffers and the expert pool before loading.
int policy_max_experts(const RoutingPolicy& policy);

// What the policy steps did to a token range: pairs selected (non-empty slots left) and pairs dropped
// by the minimum weight.
struct RouteCounts {
  uint64_t tokens = 0;
  uint64_t selected = 0;
  uint64_t min_weight_dropped = 0;
};

// Scratch buffers reused between route_range calls.
struct RouteScratch {
  std::vector<float> keys, f, row;
  std::vector<double> logu, logv, d;
  std::vector<int32_t> cand, order, scratch, sel;
  std::vector<float> w;
};

// Routes rows [t0, t1) of a batch under one layer's plan (null = the model's gate). logits:
// [n_tokens][n_expert] of the whole batch, rows in the range overwritten with the scores. positions:
// each row's absolute position (the random-drop step's seed; null = row index). `out` must already be
// sized for the batch with out.k >= the plan's slots; the range's rows are overwritten, empty slots
// last.
RouteCounts route_range(const MoeSpec& spec, int layer, const LayerRoutingPlan* plan, float* logits,
                        const float* selection_bias, const int64_t* positions, int64_t t0, int64_t t1, Routing& out,
                        RouteScratch& scratch);

// Prepares `out` for a batch of n_tokens with k slots, every slot empty.
void reset_routing(Routing& out, int64_t n_tokens, int k);
// Shrinks k to the most non-empty slots any token has (at least 1), keeping each token's order.
void compact_routing(Routing& r);

// Per MoE layer: tokens routed and experts selected, against the model's k (engine-wide; atomics, so
// sessions on several threads may add).
class RoutingUseCounters {
 public:
  RoutingUseCounters() = default;
  explicit RoutingUseCounters(std::vector<int> model_k);
  void add(int layer, uint64_t tokens, uint64_t selected);
  void reset();
  int n_layer() const { return static_cast<int>(model_k_.size()); }
  int model_k(int layer) const { return model_k_[static_cast<size_t>(layer)]; }
  uint64_t tokens(int layer) const { return tokens_[static_cast<size_t>(layer)].load(); }
  uint64_t selected(int layer) const { return selected_[static_cast<size_t>(layer)].load(); }
  // {"experts_per_token", "experts_per_token_per_layer" (null for dense layers), "model_experts_per_token",
  //  "expert_evals", "expert_evals_model_k", "expert_evals_saved", "expert_evals_saved_frac"}
  nlohmann::ordered_json to_json() const;

 private:
  std::vector<int> model_k_;
  std::unique_ptr<std::atomic<uint64_t>[]> tokens_, selected_;
};

}  // namespace moe
