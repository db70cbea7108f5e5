// The model side of the transition-table predictor (moe/transition_table.h): a table's shape from a
// Model, loading a side file checked against the model, and a forward observer that hands each forward
// call's routing (every MoE layer, same tokens) to whoever builds or scores a table.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/forward.h"
#include "model/weights.h"
#include "moe/transition_table.h"

namespace moe {

// Arch, experts per layer, and (with_fingerprint: one pass over the routers' bytes) their hash.
TransitionShape transition_shape(const Model& model, bool with_fingerprint = true);

// Where a model's table lives by default: next to it, MODEL.gguf.transitions.gguf.
std::string default_transition_path(const std::string& model_path);

// Throws, naming the table file and the model file, unless the table was built for a model of this
// arch with the same experts per layer.
void check_transition_table(const TransitionTable& table, const std::string& table_path, const Model& model);

struct LoadedTransitions {
  std::shared_ptr<const TransitionTable> table;
  // False when the table comes from another checkpoint of the same shape (different router bytes):
  // still usable, since prediction only affects what is read ahead, but it will predict worse.
  bool same_weights = true;
};
// Loads and checks a side file for `model`.
LoadedTransitions load_transition_table(const std::string& path, const Model& model);

// Gathers the routing of one forward call (the forward pass reports layers in order, all over the
// batch's tokens) and passes it, complete, to `sink` after the last MoE layer. Dense layers' entries
// have n_tokens 0.
class RoutingCallRecorder final : public ForwardObserver {
 public:
  using Sink = std::function<void(const std::vector<Routing>& per_layer)>;
  RoutingCallRecorder(const ModelSpec& spec, Sink sink);
  void on_routing(const MoeLayerRouting& r) override;

 private:
  int last_moe_layer_ = -1;
  std::vector<Routing> call_;
  Sink sink_;
};

}  // namespace moe
