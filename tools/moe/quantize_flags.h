// The flags of `moe quantize` (cmd_quantize.cpp) and what turns them into the planner's options.
#pragma once
#include <string>
#include <vector>

#include "compress/quant_mix.h"
#include "compress_quality.h"

namespace moe::cli {

struct QuantizeFlags {
  std::string model, out, type;
  std::string expert_type, shared_type, dense_type, attn_type, output_type, embd_type;
  std::vector<std::string> tensor_types;
  bool pure = false, leave_output = false, allow_requantize = false, dry_run = false, verbose = false;
  int threads = 0;
  bool quiet = false;
  EvalFlags eval;
  // --mixed (compress/mixed_precision.h): per-(layer, projection) expert types by the bit-allocation ILP.
  bool mixed = false;
  std::string budget, stats, candidates;
  double alpha = 1.0, beta = 1.5;
  bool no_protect = false;
  std::string layout = "per-tensor";  // per-tensor (standard GGUF) or per-expert (model/expert_split.h)
  std::string expert_unit = "matrix"; // per-expert: one type per expert matrix, or per expert ("expert")
};

// Throws naming the flag for an unknown file type or weight type, or a malformed PATTERN=TYPE.
compress::MixOptions mix_options(const QuantizeFlags& a);
// Throws when OUT would replace IN.
void check_output_path(const std::string& in, const std::string& out);

}  // namespace moe::cli
