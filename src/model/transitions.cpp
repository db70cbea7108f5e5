#include "model/transitions.h"

#include <filesystem>

#include "base/error.h"

namespace moe {

TransitionShape transition_shape(const Model& model, bool with_fingerprint) {
  const ModelSpec& s = model.spec();
  TransitionShape shape;
  shape.arch = s.arch;
  // FNV-1a over every MoE layer's router matrix: routers are small (E x n_embd) and always resident,
  // and they are what decides routing, so equal bytes mean the table's statistics apply.
  uint64_t h = 1469598103934665603ull;
  for (int il = 0; il < s.n_layer; ++il) {
    const LayerSpec& L = s.layers[static_cast<size_t>(il)];
    shape.n_expert.push_back(L.is_moe ? L.moe.n_expert : 0);
    if (!L.is_moe || !with_fingerprint) continue;
    const WeightView& r = model.layer(il)[Role::Router];
    if (!r || !r.data) continue;
    const size_t n = r.matrix_bytes() * static_cast<size_t>(r.n_mat);
    for (size_t i = 0; i < n; ++i) {
      h ^= r.data[i];
      h *= 1099511628211ull;
    }
  }
  shape.router_fingerprint = with_fingerprint ? h : 0;
  return shape;
}

std::string default_transition_path(const std::string& model_path) { return model_path + ".transitions.gguf"; }

void check_transition_table(const TransitionTable& table, const std::string& table_path, const Model& model) {
  const TransitionShape want = transition_shape(model, /*with_fingerprint=*/false);
  if (!table.shape().same_layout(want))
    fail("{}: transition table was built for a different model ({}), but {} is {}; rebuild it with `moe "
         "route-stats -m {} -f TEXT -o {}`",
         table_path, table.shape().describe(), model.file().path(), want.describe(), model.file().path(), table_path);
}

LoadedTransitions load_transition_table(const std::string& path, const Model& model) {
  if (!std::filesystem::exists(path))
    fail("{}: no transition table there; build one with `moe route-stats -m {} -f TEXT -o {}`", path,
         model.file().path(), path);
  auto table = std::make_shared<TransitionTable>(TransitionTable::load(path));
  check_transition_table(*table, path, model);
  LoadedTransitions out;
  out.same_weights = table->shape().router_fingerprint == transition_shape(model).router_fingerprint;
  out.table = std::move(table);
  return out;
}

RoutingCallRecorder::RoutingCallRecorder(const ModelSpec& spec, Sink sink)
    : call_(static_cast<size_t>(spec.n_layer)), sink_(std::move(sink)) {
  for (int il = 0; il < spec.n_layer; ++il)
    if (spec.layers[static_cast<size_t>(il)].is_moe) last_moe_layer_ = il;
}

void RoutingCallRecorder::on_routing(const MoeLayerRouting& r) {
  const int layer = r.layer;
  const Routing& routing = *r.routing;
  if (layer < 0 || layer >= static_cast<int>(call_.size())) return;
  call_[static_cast<size_t>(layer)] = routing;
  if (layer != last_moe_layer_) return;
  sink_(call_);
  // Keep the buffers' capacity for the next call; only the token counts mark them empty.
  for (Routing& r : call_) r.n_tokens = 0;
}

}  // namespace moe
