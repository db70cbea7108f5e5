// What `moe analyze` computes from one or more traces of the same model, in one streaming pass
// (techniques.md section 4): expert load per layer (and per input label), specialisation (expert-by-label
// shares, nPMI of labels, tokens and token classes with experts, each expert's top tokens), co-activation
// within a layer, transitions between consecutive MoE layers, local routing consistency (SRP and SCH,
// each also on a token-shuffled copy), and super experts (when the trace has expert statistics).
//
// Memory: counts (per layer E x E matrices, sparse token-expert pairs) and the routing of the sequences
// still running (a run is flushed when its sequence ends, jumps in position, or sits idle for
// kIdleSteps steps), never the whole trace.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "analysis/lrc.h"
#include "analysis/trace_format.h"

namespace moe {

// nPMI(x, e) (analysis/expert_npmi.h's npmi_value, the one the routing lab uses), counted over token
// positions ("e active" = e among the token's selected experts); NaN when x or e never occurs.
double npmi(uint64_t n_xe, uint64_t n_x, uint64_t n_e, uint64_t n);

struct TokenClass {
  std::string name;
  std::string pattern;  // ECMAScript regex over the token's text (its bytes)
};
// digits, whitespace, newline, punctuation, identifier, keyword, capitalized, lowercase word.
std::vector<TokenClass> builtin_token_classes();

struct AnalyzeOptions {
  std::vector<int> segment_lengths = {4, 16, 64, 256};  // SRP windows and SCH look-aheads
  int min_token_count = 5;  // tokens rarer than this get no nPMI ranking
  int top_tokens = 8;       // per expert
  uint64_t shuffle_seed = 1;
  std::vector<TokenClass> classes = builtin_token_classes();
  // The text a token id prints as (from the model's tokenizer); empty = ids only, no token classes.
  std::function<std::string(int32_t)> token_text;
};

class RouteAnalysis {
 public:
  static constexpr uint64_t kIdleSteps = 1024;

  RouteAnalysis(const TraceHeader& first, AnalyzeOptions options);
  // Traces are added one after another; each must describe the same model (arch, MoE layers, experts).
  void begin_trace(const TraceHeader& header, const std::string& path);
  // Inputs declared after the header (INPT records): call with the reader's header before add_step.
  void sync_inputs(const TraceHeader& header);
  void add_step(const TraceStep& step);
  void end_trace(uint64_t steps, uint64_t tokens);
  // Everything, as the JSON `moe analyze --json` writes and the HTML report draws.
  nlohmann::ordered_json finish();

 private:
  struct Run {
    int trace = 0;
    int32_t seq = 0;
    int32_t last_pos = -1;
    uint64_t last_step = 0;
    int label = 0;
    std::vector<LayerRun> layers;  // by MoE layer
  };
  struct LayerCounts {
    std::vector<uint64_t> expert;                   // selections per expert (= positions with e active)
    std::vector<uint64_t> coact;                    // [E][E]: positions with both
    std::vector<uint64_t> trans;                    // [E][E_next]: positions with e here and e' at the next MoE layer
    std::unordered_map<uint64_t, uint64_t> token_expert;  // (token << 20 | expert) -> positions
    std::vector<std::vector<uint64_t>> label_expert;      // [label][E]
    std::vector<std::vector<uint64_t>> class_expert;      // [class][E]
    std::vector<SrpCounts> srp, srp_shuffled;             // per segment length
    std::vector<SchCounts> sch, sch_shuffled;
    std::vector<double> out_max;                          // [E]: max |E_e(x)| seen (expert statistics)
    std::vector<double> out_norm_sum;                     // [E]
    std::vector<uint64_t> out_n;                          // [E]
  };
  int label_index(const std::string& label);
  void flush_run(Run& run);
  void flush_idle();
  std::vector<uint8_t> classes_of(int32_t token);

  AnalyzeOptions opt_;
  TraceHeader model_;  // the first trace's header (the model all traces must share)
  std::vector<LayerCounts> layers_;
  std::vector<std::string> labels_;
  std::map<std::string, int> label_ids_;
  std::vector<int> input_label_;  // current trace: input id -> label index
  std::vector<uint64_t> label_tokens_;
  std::vector<std::vector<SrpCounts>> label_srp_;  // [label][segment]: summed over layers
  std::unordered_map<int32_t, uint64_t> token_count_;
  std::vector<uint64_t> class_count_;
  std::unordered_map<int32_t, std::vector<uint8_t>> class_cache_;
  struct CompiledClass;
  std::vector<std::shared_ptr<CompiledClass>> compiled_;
  std::map<std::pair<int, int32_t>, Run> runs_;
  nlohmann::ordered_json traces_ = nlohmann::ordered_json::array();
  int trace_index_ = -1;
  uint64_t step_index_ = 0, n_tokens_ = 0, n_generated_ = 0, n_runs_ = 0;
  bool has_stats_ = true;
  std::mt19937_64 rng_;
};

}  // namespace moe
