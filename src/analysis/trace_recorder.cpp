#include "analysis/trace_recorder.h"

#include <algorithm>
#include <cmath>

#include "base/error.h"
#include "model/transitions.h"

namespace moe {

TraceHeader make_trace_header(const Model& model, const TraceFields& fields) {
  const ModelSpec& s = model.spec();
  TraceHeader h;
  h.arch = s.arch;
  h.model_name = s.name;
  h.model_file = model.file().path();
  h.n_layer = s.n_layer;
  h.n_vocab = s.n_vocab;
  for (int il = 0; il < s.n_layer; ++il) {
    const LayerSpec& L = s.layers[static_cast<size_t>(il)];
    if (!L.is_moe) continue;
    h.moe_layers.push_back(il);
    h.n_expert.push_back(L.moe.n_expert);
    h.n_expert_used.push_back(L.moe.n_expert_used);
  }
  if (h.moe_layers.empty()) fail("{}: the model has no MoE layers to trace", h.model_file);
  h.router_fingerprint = transition_shape(model).router_fingerprint;
  h.fields = fields;
  return h;
}

TraceRecorder::TraceRecorder(TraceWriter& writer) : writer_(writer), header_(writer.header()) {
  layers_.resize(static_cast<size_t>(header_.n_moe()));
  moe_index_.assign(static_cast<size_t>(header_.n_layer), -1);
  for (int m = 0; m < header_.n_moe(); ++m) moe_index_[static_cast<size_t>(header_.moe_layers[m])] = m;
}

void TraceRecorder::set_source(int32_t seq, int input, bool generated) {
  if (input < 0 || input >= static_cast<int>(header_.inputs.size()))
    fail("trace {}: input {} was not declared", writer_.path(), input);
  sources_[seq] = {static_cast<uint16_t>(input), generated};
}

void TraceRecorder::set_default_source(int input, bool generated) {
  if (input < 0 || input >= static_cast<int>(header_.inputs.size()))
    fail("trace {}: input {} was not declared", writer_.path(), input);
  default_ = {static_cast<uint16_t>(input), generated};
}

ObserverNeeds TraceRecorder::needs() const {
  ObserverNeeds n;
  n.expert_outputs = header_.fields.expert_stats;
  n.lookahead = header_.fields.lookahead > 0;
  return n;
}

void TraceRecorder::on_step_begin(const StepTokens& tokens) {
  n_tokens_ = tokens.n_tokens;
  for (LayerBuf& L : layers_) L.routed = false;
}

void TraceRecorder::on_routing(const MoeLayerRouting& r) {
  if (r.layer < 0 || r.layer >= static_cast<int>(moe_index_.size()) || moe_index_[static_cast<size_t>(r.layer)] < 0)
    fail("trace {}: routing for layer {}, which the header does not list as a MoE layer", writer_.path(), r.layer);
  const int m = moe_index_[static_cast<size_t>(r.layer)];
  LayerBuf& L = layers_[static_cast<size_t>(m)];
  const Routing& routing = *r.routing;
  if (routing.n_tokens != n_tokens_) fail("trace {}: layer {} routed {} tokens of {}", writer_.path(), r.layer, routing.n_tokens, n_tokens_);
  if (r.n_expert != header_.n_expert[m])
    fail("trace {}: layer {} has {} experts, the header says {}", writer_.path(), r.layer, r.n_expert, header_.n_expert[m]);
  L.k = routing.k;
  L.ids.assign(routing.ids.begin(), routing.ids.begin() + static_cast<size_t>(n_tokens_ * routing.k));
  L.weights.assign(routing.weights.begin(), routing.weights.begin() + static_cast<size_t>(n_tokens_ * routing.k));
  if (header_.fields.expert_stats) {
    L.norm.assign(L.ids.size(), NAN);
    L.max.assign(L.ids.size(), NAN);
  }
  if (header_.fields.probs) L.probs.assign(r.scores, r.scores + static_cast<size_t>(n_tokens_ * r.n_expert));
  L.n_look = 0;
  L.routed = true;
}

void TraceRecorder::on_lookahead(const MoeLayerLookahead& l) {
  if (header_.fields.lookahead <= 0 || l.layer < 0 || l.layer >= static_cast<int>(moe_index_.size())) return;
  const int m = moe_index_[static_cast<size_t>(l.layer)];
  if (m < 0 || m + 1 >= header_.n_moe() || header_.moe_layers[m + 1] != l.next_layer) return;
  LayerBuf& L = layers_[static_cast<size_t>(m)];
  const int n = std::min(header_.fields.lookahead, l.n_expert);
  L.n_look = n;
  L.look.resize(static_cast<size_t>(n_tokens_ * n));
  L.look_n.resize(static_cast<size_t>(n_tokens_));
  for (int64_t t = 0; t < n_tokens_; ++t) {
    // Best key first, ties to the lower id; experts the gate can never select (-inf) are not ranked.
    const float* keys = l.keys + t * l.n_expert;
    order_.clear();
    for (int e = 0; e < l.n_expert; ++e)
      if (keys[e] != -INFINITY) order_.push_back(e);
    const size_t r = std::min(order_.size(), static_cast<size_t>(n));
    std::partial_sort(order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(r), order_.end(),
                      [&](int32_t a, int32_t b) { return keys[a] > keys[b] || (keys[a] == keys[b] && a < b); });
    std::copy(order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(r), L.look.begin() + t * n);
    L.look_n[static_cast<size_t>(t)] = static_cast<uint8_t>(r);
  }
}

void TraceRecorder::on_expert_output(const ExpertOutputs& out) {
  if (!header_.fields.expert_stats || out.layer < 0 || out.layer >= static_cast<int>(moe_index_.size())) return;
  const int m = moe_index_[static_cast<size_t>(out.layer)];
  if (m < 0) return;
  LayerBuf& L = layers_[static_cast<size_t>(m)];
  for (int64_t i = 0; i < out.n_rows; ++i) {
    const float* row = out.rows + i * out.n_embd;
    double ss = 0;
    float mx = 0;
    for (int64_t c = 0; c < out.n_embd; ++c) {
      ss += static_cast<double>(row[c]) * row[c];
      mx = std::max(mx, std::fabs(row[c]));
    }
    const size_t at = static_cast<size_t>(out.token[i]) * static_cast<size_t>(L.k) + static_cast<size_t>(out.slot[i]);
    if (at >= L.norm.size()) continue;
    L.norm[at] = static_cast<float>(std::sqrt(ss));
    L.max[at] = mx;
  }
}

void TraceRecorder::on_step_end(const StepTokens& tokens) {
  const int M = header_.n_moe();
  for (int m = 0; m < M; ++m)
    if (!layers_[static_cast<size_t>(m)].routed)
      fail("trace {}: MoE layer {} reported no routing in this step", writer_.path(), header_.moe_layers[m]);
  TraceStep& s = step_;
  s.clear(M);
  s.tokens.resize(static_cast<size_t>(tokens.n_tokens));
  for (int64_t t = 0; t < tokens.n_tokens; ++t) {
    TraceToken& k = s.tokens[static_cast<size_t>(t)];
    k.id = tokens.ids[t];
    k.pos = static_cast<int32_t>(tokens.positions[t]);
    k.seq = tokens.seq_ids[t];
    const auto it = sources_.find(k.seq);
    const Source& src = it == sources_.end() ? default_ : it->second;
    k.input = src.input;
    k.flags = src.generated ? TraceToken::kGenerated : 0;
  }
  const bool stats = header_.fields.expert_stats, probs = header_.fields.probs, look = header_.fields.lookahead > 0;
  for (int64_t t = 0; t < tokens.n_tokens; ++t) {
    for (int m = 0; m < M; ++m) {
      const LayerBuf& L = layers_[static_cast<size_t>(m)];
      for (int j = 0; j < L.k; ++j) {
        const size_t at = static_cast<size_t>(t * L.k + j);
        if (L.ids[at] < 0) continue;  // an empty slot: no expert
        s.experts.push_back(L.ids[at]);
        s.weights.push_back(L.weights[at]);
        if (stats) {
          s.out_norm.push_back(L.norm[at]);
          s.out_max.push_back(L.max[at]);
        }
      }
      s.offsets.push_back(static_cast<uint32_t>(s.experts.size()));
      if (probs) {
        const int E = header_.n_expert[m];
        s.probs.insert(s.probs.end(), L.probs.begin() + t * E, L.probs.begin() + (t + 1) * E);
        s.probs_offsets.push_back(static_cast<uint32_t>(s.probs.size()));
      }
      if (look) {
        if (m + 1 < M && L.n_look > 0)
          s.lookahead.insert(s.lookahead.end(), L.look.begin() + t * L.n_look,
                             L.look.begin() + t * L.n_look + L.look_n[static_cast<size_t>(t)]);
        s.lookahead_offsets.push_back(static_cast<uint32_t>(s.lookahead.size()));
      }
    }
  }
  writer_.write_step(s);
}

}  // namespace moe
