// Which experts to keep (techniques.md sections 4 and 6), from calibration statistics: REAP, EASY-EP,
// frequency, PreMoe's TCESS task patterns, random (the baseline), and the super-expert rule that protects
// the few experts whose outputs are outliers. Per layer, the same number of experts is kept everywhere
// (GGUF stores one expert count), and group-limited routers keep the same number in every group.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "compress/calib_stats.h"
#include "model/spec.h"

namespace moe::compress {

enum class Criterion { Reap, EasyEp, Frequency, Tcess, Random, Heapr };
Criterion parse_criterion(const std::string& name);  // throws naming --criterion and the known names
const char* criterion_name(Criterion c);

// Per expert of one MoE layer: its importance (higher = keep). REAP: mean over its tokens of
// g * ||E(x)||; EASY-EP: its summed score; frequency: its selections; TCESS: the label's task pattern
// (mean top-k' logit mass per token); random: a seeded draw. `label` is an index into stats.labels (TCESS).
std::vector<double> expert_scores(const CalibStats& stats, const LayerStats& layer, Criterion c, size_t label,
                                  uint64_t seed);

// Per MoE layer of the stats, per expert: a super expert (max |down output| above the 99.5th percentile of
// all experts' maxima in the first 75% of layers, and above a tenth of the largest).
std::vector<std::vector<bool>> super_experts(const CalibStats& stats);

struct ExpertChoice {
  Criterion criterion = Criterion::Reap;
  int keep = 0;           // experts kept per layer
  bool protect = true;    // keep super experts whatever the criterion says
  size_t label = 0;       // TCESS
  uint64_t seed = 1;      // random
};

// Kept experts (ascending) per model layer; empty for dense layers. Throws when `keep` is out of range,
// does not divide into the layer's groups, or the super experts alone exceed it.
std::vector<std::vector<int>> choose_experts(const CalibStats& stats, const ModelSpec& spec, const ExpertChoice& c);

// The experts per layer a keep ratio gives: round(ratio * E), at least 1 (and a multiple of the group count).
int experts_for_ratio(const ModelSpec& spec, double ratio);

}  // namespace moe::compress
