// M-SMoE expert merging (techniques.md section 6; Li et al., "Merge, Then Compress", the MC-SMoE paper's first
// stage), from calibration statistics:
//   1. centres: per MoE layer, the `keep` most frequently selected experts (super experts first unless protection is
//      off; group-limited routers keep the same number in every group), chosen exactly as `moe prune --criterion
//      frequency` chooses what it keeps;
//   2. grouping: every other expert joins the centre (of its own routing group) whose router-logit column over the
//      calibration tokens is most similar: cosine(z_a, z_b) = G_ab / sqrt(G_aa G_bb) from the stats' Gram matrix
//      G = sum_t z_t z_t^T (weighting a column by its expert's frequency scales it and leaves the cosine unchanged);
//   3. optional neuron alignment: each member's neurons are permuted to match its centre's by a maximum-weight linear
//      assignment (Hungarian algorithm) on the sum of dot products of their gate rows, up rows and down columns
//      (weight matching: it minimizes ||W_centre - P W_member||^2 summed over the three matrices). Permuting gate and
//      up rows (and their biases) and down columns together leaves an expert's function unchanged;
//   4. averaging: W = sum_i f_i W_i / sum_i f_i over the group's (aligned) members, f the selections (uniform when no
//      member was selected, or with uniform weighting: the naive-averaging baseline).
// Routing of the written file: each output expert keeps its centre's router row, router logit bias and selection-bias
// entry; the members' rows are dropped (docs/compression.md says what that loses against the paper).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "compress/calib_stats.h"
#include "compress/calibrate.h"
#include "compress/expert_edit.h"
#include "model/spec.h"

namespace moe::compress {

// The maximum-weight perfect matching of an n x n score matrix (row-major): perm[i] is the column assigned to row i,
// maximizing sum_i score[i][perm[i]]. The Hungarian algorithm with potentials, O(n^3). Throws on a non-finite score.
std::vector<int> max_weight_assignment(const std::vector<double>& score, int n);

// Cosine similarity of two experts' router-logit columns over the calibration tokens (0 when either column is zero).
double router_similarity(const LayerStats& l, int a, int b);

struct MergeOptions {
  int keep = 0;                   // output experts per layer (the centres)
  bool protect = true;            // super experts stay centres
  bool frequency_weights = true;  // false: uniform averaging (the naive baseline)
};

struct MergePlan {
  std::vector<std::vector<int>> centres;    // [model layer] centre experts, ascending: the output experts in order
  std::vector<std::vector<int>> group_of;   // [model layer][source expert] -> output expert
  std::vector<std::vector<double>> weight;  // [model layer][source expert] -> averaging weight (sums to 1 per group)
};

// Throws (naming the option) when keep is out of range or does not divide into the layer's routing groups.
MergePlan plan_merge(const CalibStats& stats, const ModelSpec& spec, const MergeOptions& o);

// The member's neuron permutation onto the centre: the member's neuron perm[i] goes to position i.
// Both experts as read by read_expert_f32 (gate, up [ff][d], down [d][ff]).
std::vector<int> align_neurons(const ExpertF32& centre, const ExpertF32& member, int64_t d, int64_t ff);
// Applies a permutation from align_neurons to one expert matrix or bias: proj 0/1 (gate/up rows) and 3/4 (gate/up
// bias) by row, 2 (down) by column; 5 (down bias) is unchanged.
std::vector<float> permute_neurons(const std::vector<float>& m, int proj, const std::vector<int>& perm, int64_t d,
                                   int64_t ff);

// The edit that writes the plan: a centre alone in its group is copied byte for byte, every other output expert is
// the weighted average (after alignment with `align`) written at the source tensor's type. Reads `src` with pread.
ExpertEdit merge_edit(const gguf::File& src, const MergePlan& plan, bool align);

}  // namespace moe::compress
