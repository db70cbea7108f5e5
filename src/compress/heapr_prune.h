// HEAPr neuron pruning: which neurons of which expert to keep, from the HEAPr scores of the calibration
// statistics, and the matrices of the pruned experts.
//
// GGUF gives all experts of a model one width (expert_feed_forward_length is a single value), so uneven
// neuron counts need a rule. Two layouts:
//   pad      (default) the paper's global ranking across layers: each expert keeps its neurons above the
//            global threshold; the file's width is the largest count any expert keeps, and experts that
//            keep fewer are padded with zero neurons (a zero row of gate and up and a zero column of down
//            add exactly nothing: silu(0) * 0 = 0). The file shrinks only by the widest expert's cut.
//   uniform  every expert keeps the same number (the ratio of its width), its own highest-scoring
//            neurons: the file shrinks by the ratio; the ranking is per expert, not global.
// Neurons keep their original order. Super experts keep all their neurons unless protection is off.
#pragma once
#include <cstdint>
#include <vector>

#include "compress/calib_stats.h"
#include "compress/expert_edit.h"

namespace moe::compress {

enum class NeuronLayout { Pad, Uniform };

struct NeuronPlan {
  int64_t width = 0;                                // the output width
  std::vector<std::vector<std::vector<int>>> kept;  // [model layer][expert] -> kept neuron indices, ascending
  uint64_t kept_total = 0, total = 0;               // neurons over all routed experts
};

NeuronPlan plan_neurons(const CalibStats& stats, int n_layer, double keep_ratio, NeuronLayout layout, bool protect);

// The edit that writes the plan: every expert rebuilt (kept neurons, then zeros to the width) from the source
// model's matrices (read with pread from `src`).
ExpertEdit neuron_edit(const gguf::File& src, const NeuronPlan& plan, int n_layer);

}  // namespace moe::compress
