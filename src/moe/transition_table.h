// Transition-table expert predictor (EdgeMoE, techniques.md section 5). For each pair of consecutive
// MoE layers (l, next) it counts how often a token routed to expert i in layer l was then routed to
// expert j in `next`, over all top-k pairs, plus how often each expert was chosen at all. A token's
// experts at layer l then rank the next layer's experts by sum_i w_i * P(j | i), so an expert store
// can start reading them while layer l computes. Unlike the cross-layer gate (Fate) it costs no
// matrix product at run time, but it only knows which experts tend to follow which, not the token.
//
// Tables are saved as a small GGUF side file (by default MODEL.gguf.transitions.gguf) whose keys name
// the model's arch, layer count and experts per layer, so a table never silently serves another model.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "moe/router.h"

namespace moe {

// The model a table describes. The table layer knows nothing about models (design.md: moe/ sits
// below model/), so the model side fills this in (see model/transitions.h).
struct TransitionShape {
  std::string arch;
  std::vector<int> n_expert;         // per layer; 0 for dense layers
  uint64_t router_fingerprint = 0;   // hash of the routers' bytes: tells same-shape models apart

  int n_layer() const { return static_cast<int>(n_expert.size()); }
  // "olmoe, 16 layers, 16 MoE layers x 64 experts" (one line, for errors and reports).
  std::string describe() const;
  // Same arch and experts per layer (the fingerprint is compared separately: a table from another
  // checkpoint of the same shape still works, it just predicts worse).
  bool same_layout(const TransitionShape& o) const { return arch == o.arch && n_expert == o.n_expert; }
};

// How well a table predicts one layer pair, accumulated over tokens. "Popular" is the baseline that
// ignores the token's current experts and always predicts the next layer's most used experts.
struct TransitionAccuracy {
  uint64_t tokens = 0;
  uint64_t top1_hits = 0;             // the best-scored expert was among the token's next-layer experts
  uint64_t top1_hits_unweighted = 0;  // the same, with every current expert weighted 1
  uint64_t topk_hits = 0;             // |top-k_next predicted ∩ actual|, summed over tokens
  uint64_t topk_total = 0;            // k_next * tokens
  uint64_t popular_top1_hits = 0;
  uint64_t popular_topk_hits = 0;
  void add(const TransitionAccuracy& o);
  static double frac(uint64_t a, uint64_t b) { return b ? static_cast<double>(a) / static_cast<double>(b) : 0.0; }
};

class TransitionTable {
 public:
  // Pseudo-count of the smoothing towards the next layer's usage: an expert never seen at layer l
  // (or seen rarely) predicts the next layer's popular experts instead of nothing.
  static constexpr double kSmoothing = 1.0;

  explicit TransitionTable(TransitionShape shape);

  const TransitionShape& shape() const { return shape_; }
  // The first MoE layer after `layer`, or -1 when none follows.
  int next_moe_layer(int layer) const;

  // Counts one forward call's routing: `per_layer[l]` is layer l's Routing (n_tokens 0 for dense
  // layers), all layers over the same tokens. Adds each MoE layer's expert usage and, for each
  // consecutive MoE pair, every (chosen at l, chosen at next) pair of each token.
  void add(const std::vector<Routing>& per_layer);
  // One token's pairs between `layer` and its next MoE layer (and nothing else): for hand-built tables.
  void add_transition(int layer, const int32_t* ids, int k, const int32_t* next_ids, int k_next);
  // One token's experts at `layer` (usage counts only).
  void add_usage(int layer, const int32_t* ids, int k);

  uint64_t count(int layer, int from, int to) const;
  uint64_t usage(int layer, int expert) const;
  // Coefficient of variation of layer's expert usage (0 = balanced); NaN for dense or unseen layers.
  double load_cv(int layer) const;

  // Ranks the next MoE layer's experts for a token routed to ids[0..k) (with routing weights, or
  // null for weight 1 each) at `layer`: score_j = sum_s w_s * P(j | ids[s]), with P smoothed towards
  // the next layer's usage by kSmoothing pseudo-counts. Writes at most n ids, best first (ties: lower
  // id), skipping experts with score 0, and returns how many it wrote. `scores` is scratch.
  int predict(int layer, const int32_t* ids, const float* weights, int k, int n, int32_t* out,
              std::vector<double>& scores) const;
  // The next MoE layer's n most used experts (best first, ties: lower id); the context-free baseline.
  int predict_popular(int layer, int n, int32_t* out) const;

  // Scores one forward call's routing against the table: per layer, prediction from that layer's
  // experts to the next MoE layer's (indexed by the source layer; dense and last layers stay empty).
  void evaluate(const std::vector<Routing>& per_layer, std::vector<TransitionAccuracy>& acc) const;

  // Writes the GGUF side file atomically (temporary file + rename).
  void save(const std::string& path, const std::string& source_note = {}) const;
  // Reads and validates a side file (any model's); errors name the file and the key.
  static TransitionTable load(const std::string& path);

 private:
  size_t pair_index(int layer, int from, int to) const;

  TransitionShape shape_;
  std::vector<int> next_;                       // per layer: next MoE layer or -1
  std::vector<std::vector<uint64_t>> counts_;   // per layer with a next MoE layer: [E_l][E_next]
  std::vector<std::vector<uint64_t>> usage_;    // per MoE layer: [E_l]
};

}  // namespace moe
