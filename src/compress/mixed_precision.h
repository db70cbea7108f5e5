// Mixed-precision expert quantization (`moe quantize --mixed`, MC-MoE's PMQ, techniques.md section 6): the
// routed experts' tensors get types chosen from a candidate set by the bit-allocation ILP (compress/bit_alloc.h)
// under a size budget; everything else keeps the type the base mix (--type) gives it.
//
// The allocation unit is one (MoE layer, projection) tensor — gate, up or down of all the layer's experts —
// because a standard GGUF stores a layer's experts as one 3-D tensor of one type, which is what llama.cpp loads.
// The cost of candidate c for the tensor of projection p in layer l is PMQ's importance-weighted error,
//   sum over experts e of  f_e^alpha * w_e^beta * err(l, e, p, c)   (PMQ's defaults: alpha 1, beta 1.5),
// with f_e the expert's share of the layer's selections, w_e its mean routing weight (calibration) and err the
// mean squared error of the expert's output with that one projection quantized to c on calibration tokens
// (calib_stats.h's recon).
// Layers holding a super expert keep the highest-precision candidate for all three projections.
//
// With `per_expert` the unit is one expert's matrix instead (layer, expert, projection): the cost of candidate c
// is f_e^alpha * w_e^beta * err(l, e, p, c), and super experts alone (not their layers) are forced to the
// highest candidate. With `whole_expert` the unit is one (layer, expert): its gate, up and down take one type at
// the cost f_e^alpha * w_e^beta * err(l, e, all three quantized to c). Such a file stores every expert matrix as
// its own tensor (model/expert_split.h): moe.cpp loads and streams it, llama.cpp does not.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "compress/bit_alloc.h"
#include "compress/calib_stats.h"
#include "compress/quantize_model.h"

namespace moe::compress {

struct MixedBudget {
  double bits_per_weight = 0;  // average over the routed experts' weights, or
  uint64_t total_bytes = 0;    // the whole file's tensor data (the experts get what the other tensors leave)
};

// "4.5" (bits per expert weight) or a size "300M", "1.5G", "2000000" bytes ("MiB"/"GiB" also accepted).
MixedBudget parse_budget(const std::string& s);

struct MixedOptions {
  std::vector<DType> candidates;  // empty: the statistics' reconstruction types
  MixedBudget budget;
  double alpha = 1.0;             // frequency exponent of the importance
  double beta = 1.5;              // mean-routing-weight exponent (0: frequency only)
  bool protect = true;            // super experts' layers at the highest precision
  bool per_expert = false;        // one item per expert matrix, written in the per-expert layout
  bool whole_expert = false;      // per_expert: one item per expert (its gate, up and down at one type)
};

struct MixedResult {
  // Per (layer, projection): the plan index of each allocated tensor and its chosen type. Per expert: the plan
  // index (before the split) of each layer's gate, up and down tensors, and split_types[j] its experts' types.
  std::vector<size_t> tensor;
  // Per (layer, projection): each tensor's type. Per expert: each item's, in order layer, expert, then (unless
  // whole_expert) the layer's projections in plan order.
  std::vector<DType> type;
  std::vector<std::vector<DType>> split_types;  // per expert only: [j][expert]
  AllocResult alloc;
  uint64_t expert_budget = 0;      // bytes the experts were allowed
  uint64_t expert_elements = 0;
  double cost_uniform_at_size = 0; // for the report: the cost of the best uniform type that fits, if any
  std::string uniform_type;
};

// Re-types the routed-expert tensors of `plan` (from plan_quantize with the base mix) in place; per expert, it
// splits them into one tensor per expert (split_experts in quantize_model.h). Throws naming
// the budget when nothing fits, and the stats when they lack reconstruction errors or do not match the plan.
MixedResult allocate_mixed(const CalibStats& stats, QuantizePlan& plan, const MixedOptions& o);

}  // namespace moe::compress
