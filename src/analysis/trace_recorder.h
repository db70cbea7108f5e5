// TraceRecorder: a forward observer (design.md seam 4) that writes every step's routing to a trace
// (analysis/trace_format.h). It records what the executor ran: the routing after any run-time policy,
// empty slots left out, non-empty slots in selection order. Observing never changes the logits, and
// what the trace's fields do not ask for (probabilities, expert output statistics, the gate
// predictor's ranking) is neither requested from the forward pass nor computed.
//
// Usable as a library: a server recording several requests attaches one recorder to a forward pass
// and tells it, per sequence id, which input the sequence's tokens belong to and whether they are
// generated; steps may mix sequences.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "analysis/trace_format.h"
#include "model/forward_observer.h"
#include "model/weights.h"

namespace moe {

// A header describing `model`: arch, name, MoE layers (block indices), experts, k, the routers'
// fingerprint (the one transition tables carry), and the fields to record. Callers add the routing
// settings, inputs and anything else to header.json before opening the writer.
TraceHeader make_trace_header(const Model& model, const TraceFields& fields);

class TraceRecorder final : public ForwardObserver {
 public:
  // The writer must outlive the recorder; its header's fields say what is recorded.
  explicit TraceRecorder(TraceWriter& writer);

  // Which input the tokens of sequence `seq` belong to, and whether they are generated (sampled by
  // the model) or come from the input. Sequences without an entry use the default.
  void set_source(int32_t seq, int input, bool generated);
  void set_default_source(int input, bool generated);
  void clear_sources() { sources_.clear(); }

  ObserverNeeds needs() const override;
  void on_step_begin(const StepTokens& tokens) override;
  void on_routing(const MoeLayerRouting& r) override;
  void on_lookahead(const MoeLayerLookahead& l) override;
  void on_expert_output(const ExpertOutputs& out) override;
  void on_step_end(const StepTokens& tokens) override;

  TraceWriter& writer() { return writer_; }

 private:
  struct Source {
    uint16_t input = 0;
    bool generated = false;
  };
  // One MoE layer's data for the step being run, by routing slot ([n_tokens][k]).
  struct LayerBuf {
    int k = 0;
    std::vector<int32_t> ids;
    std::vector<float> weights, norm, max, probs;
    std::vector<int32_t> look;     // [n_tokens][n_look]
    std::vector<uint8_t> look_n;   // per token: how many of its n_look are ranked
    int n_look = 0;
    bool routed = false;
  };
  TraceWriter& writer_;
  const TraceHeader& header_;
  std::unordered_map<int32_t, Source> sources_;
  Source default_;
  std::vector<LayerBuf> layers_;  // by MoE layer index
  std::vector<int> moe_index_;    // block index -> MoE layer index or -1
  std::vector<int32_t> order_;
  TraceStep step_;
  int64_t n_tokens_ = 0;
};

}  // namespace moe
