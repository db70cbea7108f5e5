#include "model/forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "base/error.h"
#include "kernels/attention.h"
#include "kernels/ops.h"
#include "model/transitions.h"
#include "tensor/fp16.h"

namespace moe {

RoutingShape routing_shape(const ModelSpec& spec) {
  RoutingShape shape;
  for (const LayerSpec& L : spec.layers) {
    shape.n_expert.push_back(L.is_moe ? L.moe.n_expert : 0);
    shape.n_expert_used.push_back(L.is_moe ? L.moe.n_expert_used : 0);
  }
  return shape;
}

ForwardPass::ForwardPass(const Model& model, ExpertStore& store, ForwardOptions options)
    : model_(model), store_(store), options_(std::move(options)) {
  set_routing_policy(options_.routing);
  executor_.configure(options_.precision, options_.expert_use);
  if (options_.lookahead_margin < 0 || options_.predictor != PrefetchPredictor::Transition) return;
  if (!options_.transitions) fail("transition prefetch predictor: no transition table was given");
  // Predictions index the table by layer and expert, so a table for another layout must never be used.
  const TransitionShape model_shape = transition_shape(model_, /*with_fingerprint=*/false);
  if (!options_.transitions->shape().same_layout(model_shape))
    fail("transition prefetch predictor: the table is for {}, but the model is {}",
         options_.transitions->shape().describe(), model_shape.describe());
}

void ForwardPass::set_routing_policy(const RoutingPolicy& policy) {
  plan_ = std::make_shared<const RoutingPlan>(policy, routing_shape(model_.spec()));
  options_.routing = policy;
}

void ForwardPass::route_layer(int il, int64_t n_tokens, float* logits, const float* bias, Routing& out, bool count) {
  const MoeSpec& ms = model_.spec().layers[il].moe;
  const bool identity = row_policies_.empty() ? plan_->layer(il) == nullptr
                                              : std::all_of(row_policies_.begin(), row_policies_.end(),
                                                            [&](const RowPolicy& r) { return r.plan->layer(il) == nullptr; });
  if (identity) {
    route_tokens(ms, logits, bias, n_tokens, out);
    if (count && options_.routing_use)
      options_.routing_use->add(il, static_cast<uint64_t>(n_tokens), static_cast<uint64_t>(n_tokens * out.k));
    return;
  }
  RowPolicy whole{0, n_tokens, plan_};
  const RowPolicy* rows = row_policies_.empty() ? &whole : row_policies_.data();
  const size_t n_rows = row_policies_.empty() ? 1 : row_policies_.size();
  int slots = 1;
  int64_t next = 0;
  for (size_t i = 0; i < n_rows; ++i) {
    if (rows[i].t0 != next || rows[i].t1 < rows[i].t0 || !rows[i].plan)
      fail("row policies: range {} [{}, {}) does not continue the ranges before it at token {}", i, rows[i].t0,
           rows[i].t1, next);
    next = rows[i].t1;
    slots = std::max(slots, rows[i].plan->slots(il, ms.n_expert_used));
  }
  if (next != n_tokens) fail("row policies cover tokens [0, {}) of a step of {}", next, n_tokens);
  reset_routing(out, n_tokens, slots);
  uint64_t selected = 0, dropped = 0;
  for (size_t i = 0; i < n_rows; ++i) {
    const RouteCounts c = route_range(ms, il, rows[i].plan->layer(il), logits, bias, step_positions_.data(),
                                      rows[i].t0, rows[i].t1, out, route_scratch_);
    selected += c.selected;
    dropped += c.min_weight_dropped;
  }
  compact_routing(out);
  if (!count) return;
  if (options_.routing_use) options_.routing_use->add(il, static_cast<uint64_t>(n_tokens), selected);
  if (options_.expert_use && dropped) options_.expert_use->skipped_evals += dropped;
}

bool ForwardPass::masked_everywhere(int layer, int expert) const {
  if (row_policies_.empty()) return plan_->masked(layer, expert);
  for (const RowPolicy& r : row_policies_)
    if (!r.plan->masked(layer, expert)) return false;
  return true;
}

void ForwardPass::add_observer(ForwardObserver* obs) {
  if (!obs) return;
  observers_.push_back(obs);
  needs_ |= obs->needs();
}

void ForwardPass::remove_observer(ForwardObserver* obs) {
  observers_.erase(std::remove(observers_.begin(), observers_.end(), obs), observers_.end());
  needs_ = {};
  for (ForwardObserver* o : observers_) needs_ |= o->needs();
}

void ForwardPass::set_observer(ForwardObserver* obs) {
  observers_.clear();
  needs_ = {};
  add_observer(obs);
}

void ForwardPass::on_expert_output(int layer, int expert, const std::pair<int32_t, int32_t>* members, int64_t n_rows,
                                   const float* rows, int64_t n_embd) {
  obs_token_.resize(static_cast<size_t>(n_rows));
  obs_slot_.resize(static_cast<size_t>(n_rows));
  for (int64_t i = 0; i < n_rows; ++i) {
    obs_token_[static_cast<size_t>(i)] = members[i].first;
    obs_slot_[static_cast<size_t>(i)] = members[i].second;
  }
  ExpertOutputs out;
  out.layer = layer;
  out.expert = expert;
  out.n_rows = n_rows;
  out.token = obs_token_.data();
  out.slot = obs_slot_.data();
  out.rows = rows;
  out.n_embd = n_embd;
  for (ForwardObserver* o : observers_) o->on_expert_output(out);
}

void ForwardPass::project(const WeightView& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool) {
  act_.convert(dtype_traits(w.type).vec_dot_type, x, n_tokens, w.cols, w.cols);
  kernels::matmul(to_matrix(w), act_, y, w.rows, pool);
}

void ForwardPass::project_batch(const Projection* p, size_t n, const float* x, int64_t n_tokens, ThreadPool& pool) {
  constexpr size_t kMaxTypes = sizeof(batch_act_) / sizeof(batch_act_[0]);
  DType types[kMaxTypes];
  size_t n_types = 0;
  batch_jobs_.clear();
  for (size_t i = 0; i < n; ++i) {
    const WeightView& w = *p[i].w;
    const DType t = dtype_traits(w.type).vec_dot_type;
    size_t a = 0;
    while (a < n_types && (types[a] != t || batch_act_[a].n() != w.cols)) ++a;
    if (a == n_types) {
      if (n_types == kMaxTypes) fail("project_batch: more than {} activation types in one batch", kMaxTypes);
      batch_act_[a].convert(t, x, n_tokens, w.cols, w.cols);
      types[n_types++] = t;
    }
    batch_jobs_.push_back({to_matrix(w), &batch_act_[a], p[i].y, w.rows});
  }
  kernels::matmul_batch(batch_jobs_.data(), batch_jobs_.size(), pool, batch_chunks_);
}

namespace {

const float* f32(const WeightView& v) { return reinterpret_cast<const float*>(v.data); }

}  // namespace

void ForwardPass::router_logits(int il, const float* x, int64_t n_tokens, float* out, ThreadPool& pool) {
  const LayerWeights& lw = model_.layer(il);
  project(lw[Role::Router], x, n_tokens, out, pool);
  // gpt-oss's router is an affine layer: its bias is part of the logits (not a selection-only bias).
  if (const WeightView& b = lw[Role::RouterLogitBias]) {
    const int64_t n = lw[Role::Router].rows;
    for (int64_t t = 0; t < n_tokens; ++t) kernels::add(out + t * n, f32(b), n);
  }
}

void ForwardPass::ffn(int il, int64_t n_tokens, ThreadPool& pool) {
  const ModelSpec& s = model_.spec();
  const LayerSpec& L = s.layers[il];
  const LayerWeights& lw = model_.layer(il);
  const int64_t d = s.n_embd;
  tmp_.resize(static_cast<size_t>(n_tokens * d));
  if (!L.is_moe) {
    swiglu_ffn(to_matrix(lw[Role::FfnGate]), to_matrix(lw[Role::FfnUp]), to_matrix(lw[Role::FfnDown]), xn_.data(),
               n_tokens, tmp_.data(), pool, ffn_scratch_);
    return;
  }
  const MoeSpec& ms = L.moe;
  router_logits_.resize(static_cast<size_t>(n_tokens * ms.n_expert));
  router_logits(il, xn_.data(), n_tokens, router_logits_.data(), pool);
  const float* bias = lw[Role::RouterBias] ? f32(lw[Role::RouterBias]) : nullptr;
  if (needs_.router_logits) obs_logits_.assign(router_logits_.begin(), router_logits_.end());
  route_layer(il, n_tokens, router_logits_.data(), bias, routing_, /*count=*/true);
  if (!observers_.empty()) {
    MoeLayerRouting view;
    view.layer = il;
    view.tokens = &step_;
    view.n_embd = d;
    view.n_expert = ms.n_expert;
    view.input = xn_.data();
    view.residual = needs_.moe_io ? x_.data() : nullptr;
    view.logits = needs_.router_logits ? obs_logits_.data() : nullptr;
    view.scores = router_logits_.data();  // route_tokens left the gate's scores there
    view.routing = &routing_;
    for (ForwardObserver* o : observers_) o->on_routing(view);
  }
  if (predicted_layer_ == il && static_cast<int64_t>(predicted_.size()) == n_tokens) {
    for (int64_t t = 0; t < n_tokens; ++t) {
      const auto& pred = predicted_[t];
      pred_stats_.predicted += pred.size();
      pred_stats_.actual += routing_.k;
      for (int j = 0; j < routing_.k; ++j) {
        if (routing_.id(t, j) < 0) {
          --pred_stats_.actual;  // an empty slot is no expert to predict
          continue;
        }
        pred_stats_.correct += std::find(pred.begin(), pred.end(), routing_.id(t, j)) != pred.end();
      }
    }
  }
  if (options_.lookahead_margin >= 0) {
    if (options_.predictor == PrefetchPredictor::Transition) predict_next_layer_transition(il, n_tokens);
    else predict_next_layer(il, n_tokens, pool);
  }
  executor_.run(il, ms, xn_.data(), n_tokens, d, routing_, store_, pool, tmp_.data(),
                needs_.expert_outputs && !observers_.empty() ? this : nullptr);
  if (needs_.moe_io && !observers_.empty()) obs_routed_.assign(tmp_.begin(), tmp_.begin() + n_tokens * d);

  if (ms.n_shared > 0) {
    shexp_out_.resize(static_cast<size_t>(n_tokens * d));
    swiglu_ffn(to_matrix(lw[Role::ShexpGate]), to_matrix(lw[Role::ShexpUp]), to_matrix(lw[Role::ShexpDown]),
               xn_.data(), n_tokens, shexp_out_.data(), pool, ffn_scratch_);
    if (ms.shared_gate == SharedGate::Sigmoid) {
      std::vector<float> g(static_cast<size_t>(n_tokens));
      project(lw[Role::ShexpRouter], xn_.data(), n_tokens, g.data(), pool);
      for (int64_t t = 0; t < n_tokens; ++t) {
        // llama.cpp forms the sigmoid as silu(x) / x; keep its rounding.
        const float gate = kernels::silu(g[t]) / g[t];
        kernels::scale(shexp_out_.data() + t * d, gate, d);
      }
    }
    kernels::add(tmp_.data(), shexp_out_.data(), n_tokens * d);
  }
  if (needs_.moe_io && !observers_.empty()) {
    MoeLayerOutput out;
    out.layer = il;
    out.tokens = &step_;
    out.n_embd = d;
    out.routed = obs_routed_.data();
    out.block = tmp_.data();
    for (ForwardObserver* o : observers_) o->on_moe_output(out);
  }
}

void ForwardPass::predict_next_layer(int il, int64_t n_tokens, ThreadPool& pool) {
  const ModelSpec& s = model_.spec();
  int next = il + 1;
  while (next < s.n_layer && !s.layers[next].is_moe) ++next;
  predicted_layer_ = -1;
  if (next >= s.n_layer) return;
  const MoeSpec& nm = s.layers[next].moe;
  lookahead_logits_.resize(static_cast<size_t>(n_tokens * nm.n_expert));
  router_logits(next, xn_.data(), n_tokens, lookahead_logits_.data(), pool);
  const float* bias = model_.layer(next)[Role::RouterBias] ? f32(model_.layer(next)[Role::RouterBias]) : nullptr;
  const ExpertPrecision& pr = options_.precision;
  const bool tiers = pr.low_bit_below > 0.0f && store_.has_low_bit();
  bool policy = plan_->layer(next) != nullptr;
  for (const RowPolicy& r : row_policies_) policy |= r.plan->layer(next) != nullptr;
  predicted_.assign(static_cast<size_t>(n_tokens), {});
  hint_.clear();
  if (!policy && !tiers) {
    int want = std::min(nm.n_expert, nm.n_expert_used + options_.lookahead_margin);
    // A group-limited gate only ever picks experts of its kept groups: the margin stays inside them.
    if (nm.n_group > 1) want = std::min(want, nm.topk_group * (nm.n_expert / nm.n_group));
    // The next layer's own gate (its scoring, selection bias and group limit) picks the top-(k + margin):
    // ranking raw logits would ignore a selection bias added to sigmoid scores, and the group mask.
    MoeSpec wide = nm;
    wide.n_expert_used = want;
    lookahead_scores_.assign(lookahead_logits_.begin(), lookahead_logits_.end());
    route_tokens(wide, lookahead_scores_.data(), bias, n_tokens, predicted_routing_);
    for (int64_t t = 0; t < n_tokens; ++t)
      for (int j = 0; j < want; ++j) {
        const int32_t e = predicted_routing_.id(t, j);
        if (e < 0) continue;
        predicted_[static_cast<size_t>(t)].push_back(e);
        if (std::find(hint_.begin(), hint_.end(), e) == hint_.end()) hint_.push_back(e);
      }
    predicted_layer_ = next;
    store_.prefetch(next, hint_.data(), static_cast<int>(hint_.size()), /*speculative=*/true);
    return;
  }
  // Predict the next layer's routing as it will be computed (its gate and the policies in force, on
  // the same logits), so that only experts it would select are hinted (never a masked one, nor a pair
  // the policy drops), with their predicted weights for the tiers. Then `margin` more per token: the
  // best-ranked experts by the gate's own selection keys after the last one selected (masked experts
  // and experts of groups the gate drops left out).
  lookahead_scores_.assign(lookahead_logits_.begin(), lookahead_logits_.end());
  route_layer(next, n_tokens, lookahead_scores_.data(), bias, predicted_routing_, /*count=*/false);
  std::vector<int32_t> order;
  std::vector<float> row(static_cast<size_t>(nm.n_expert)), keys(static_cast<size_t>(nm.n_expert)), fscratch;
  std::vector<int32_t> iscratch;
  for (int64_t t = 0; t < n_tokens; ++t) {
    std::copy_n(lookahead_logits_.data() + t * nm.n_expert, nm.n_expert, row.data());
    gate::scores(nm, row.data(), nullptr, fscratch);
    gate::selection_keys(nm, row.data(), bias, nullptr, keys.data(), fscratch, iscratch);
    order.clear();
    for (int e = 0; e < nm.n_expert; ++e)
      if (!masked_everywhere(next, e) && keys[static_cast<size_t>(e)] != -INFINITY) order.push_back(e);
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      return keys[static_cast<size_t>(a)] > keys[static_cast<size_t>(b)] ||
             (keys[static_cast<size_t>(a)] == keys[static_cast<size_t>(b)] && a < b);
    });
    std::vector<int32_t>& pred = predicted_[static_cast<size_t>(t)];
    size_t last = 0;
    for (int j = 0; j < predicted_routing_.k; ++j) {
      const int32_t e = predicted_routing_.id(t, j);
      if (e < 0) continue;
      pred.push_back(e);
      const auto at = std::find(order.begin(), order.end(), e);
      if (at != order.end()) last = std::max(last, static_cast<size_t>(at - order.begin()));
    }
    for (size_t i = pred.empty() ? 0 : last + 1, m = 0;
         i < order.size() && m < static_cast<size_t>(options_.lookahead_margin); ++i)
      if (std::find(pred.begin(), pred.end(), order[i]) == pred.end()) pred.push_back(order[i]), ++m;
    for (int32_t e : pred)
      if (std::find(hint_.begin(), hint_.end(), e) == hint_.end()) hint_.push_back(e);
  }
  predicted_layer_ = next;
  if (!tiers) {
    store_.prefetch(next, hint_.data(), static_cast<int>(hint_.size()), /*speculative=*/true);
    return;
  }
  // An expert predicted below low_bit_below for every token is hinted as its low-bit copy, and so are
  // margin experts (in no token's predicted routing).
  hint_max_weight_.assign(hint_.size(), -1.0f);
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int j = 0; j < predicted_routing_.k; ++j) {
      const auto at = std::find(hint_.begin(), hint_.end(), predicted_routing_.id(t, j));
      if (at == hint_.end()) continue;
      float& m = hint_max_weight_[static_cast<size_t>(at - hint_.begin())];
      m = std::max(m, predicted_routing_.weight(t, j));
    }
  hint_low_bit_ok_.clear();
  for (size_t i = 0; i < hint_.size(); ++i) hint_low_bit_ok_.push_back(hint_max_weight_[i] < pr.low_bit_below ? 1 : 0);
  store_.prefetch(next, hint_.data(), static_cast<int>(hint_.size()), /*speculative=*/true, hint_low_bit_ok_.data());
}

void ForwardPass::predict_next_layer_transition(int il, int64_t n_tokens) {
  const TransitionTable& table = *options_.transitions;
  predicted_layer_ = -1;
  const int next = table.next_moe_layer(il);
  if (next < 0) return;
  const MoeSpec& nm = model_.spec().layers[next].moe;
  int slots = plan_->slots(next, nm.n_expert_used);
  for (const RowPolicy& r : row_policies_) slots = std::max(slots, r.plan->slots(next, nm.n_expert_used));
  const int want = std::min(nm.n_expert, slots + options_.lookahead_margin);
  predicted_.assign(static_cast<size_t>(n_tokens), {});
  hint_.clear();
  std::vector<int32_t> top(static_cast<size_t>(want));
  for (int64_t t = 0; t < n_tokens; ++t) {
    const size_t at = static_cast<size_t>(t * routing_.k);
    int n = table.predict(il, routing_.ids.data() + at,
                          options_.transition_weighted ? routing_.weights.data() + at : nullptr, routing_.k, want,
                          top.data(), transition_scores_);
    // A masked expert is never hinted (the policy never selects it, so reading it would be waste).
    n = static_cast<int>(std::remove_if(top.begin(), top.begin() + n, [&](int32_t e) { return masked_everywhere(next, e); }) -
                         top.begin());
    predicted_[static_cast<size_t>(t)].assign(top.begin(), top.begin() + n);
    for (int j = 0; j < n; ++j)
      if (std::find(hint_.begin(), hint_.end(), top[j]) == hint_.end()) hint_.push_back(top[j]);
  }
  predicted_layer_ = next;
  store_.prefetch(next, hint_.data(), static_cast<int>(hint_.size()), /*speculative=*/true);
}

void ForwardPass::run(const int32_t* tokens, int64_t n_tokens, int64_t pos0, KvCache& kv, ThreadPool& pool,
                      float* logits, bool all_logits) {
  if (n_tokens <= 0) return;
  SeqSpan span;
  span.kv = &kv;
  span.tokens = tokens;
  span.n_tokens = n_tokens;
  span.pos0 = pos0;
  span.seq_id = seq_id_;
  span.logits = logits;
  span.all_logits = all_logits;
  run(&span, 1, pool);
}

void ForwardPass::run(const SeqSpan* spans, size_t n_spans, ThreadPool& pool) {
  const ModelSpec& s = model_.spec();
  // Check everything before any cache is written: a refused step leaves every sequence as it was.
  spans_.clear();
  int64_t n_tokens = 0;
  for (size_t i = 0; i < n_spans; ++i) {
    const SeqSpan& in = spans[i];
    if (in.n_tokens <= 0) continue;
    if (!in.kv || !in.tokens) fail("forward step: span {} has no KV cache or no tokens", i);
    if (in.pos0 < 0 || in.pos0 + in.n_tokens > in.kv->n_ctx())
      fail("context full: positions [{}, {}) exceed the context size {}", in.pos0, in.pos0 + in.n_tokens,
           in.kv->n_ctx());
    for (const StepSpan& o : spans_)
      if (o.in.kv == in.kv) fail("forward step: two spans share one KV cache");
    for (int64_t t = 0; t < in.n_tokens; ++t)
      if (in.tokens[t] < 0 || in.tokens[t] >= s.n_vocab)
        fail("token id {} at position {} is outside the vocabulary [0, {})", in.tokens[t], in.pos0 + t, s.n_vocab);
    spans_.push_back({in, n_tokens});
    n_tokens += in.n_tokens;
  }
  if (n_tokens == 0) return;
  const int64_t d = s.n_embd;
  x_.resize(static_cast<size_t>(n_tokens * d));
  xn_.resize(static_cast<size_t>(n_tokens * d));

  const int32_t* ids = spans_.front().in.tokens;
  if (spans_.size() > 1) {
    step_ids_.resize(static_cast<size_t>(n_tokens));
    for (const StepSpan& sp : spans_) std::copy_n(sp.in.tokens, sp.in.n_tokens, step_ids_.begin() + sp.row0);
    ids = step_ids_.data();
  }
  step_positions_.resize(static_cast<size_t>(n_tokens));
  step_seq_ids_.resize(static_cast<size_t>(n_tokens));
  for (const StepSpan& sp : spans_)
    for (int64_t i = 0; i < sp.in.n_tokens; ++i) {
      step_positions_[static_cast<size_t>(sp.row0 + i)] = sp.in.pos0 + i;
      step_seq_ids_[static_cast<size_t>(sp.row0 + i)] = sp.in.seq_id;
    }
  step_ = {ids, step_positions_.data(), step_seq_ids_.data(), n_tokens};

  const WeightView& emb = model_.global(Role::TokenEmbd);
  const DTypeTraits& emb_tr = dtype_traits(emb.type);
  for (int64_t t = 0; t < n_tokens; ++t) {
    emb_tr.dequantize(emb.row(ids[t]), x_.data() + t * d, d);
    if (s.embedding_scale != 0.0f) kernels::scale(x_.data() + t * d, s.embedding_scale, d);
  }
  for (ForwardObserver* o : observers_) o->on_step_begin(step_);

  for (int il = 0; il < s.n_layer; ++il) {
    const LayerWeights& lw = model_.layer(il);
    for (int64_t t = 0; t < n_tokens; ++t)
      kernels::rms_norm(x_.data() + t * d, f32(lw[Role::AttnNorm]), xn_.data() + t * d, d, s.rms_eps);
    attention(il, n_tokens, pool);
    if (s.residual_scale != 0.0f) kernels::scale(tmp_.data(), s.residual_scale, n_tokens * d);
    kernels::add(x_.data(), tmp_.data(), n_tokens * d);

    for (int64_t t = 0; t < n_tokens; ++t)
      kernels::rms_norm(x_.data() + t * d, f32(lw[Role::FfnNorm]), xn_.data() + t * d, d, s.rms_eps);
    ffn(il, n_tokens, pool);
    if (s.residual_scale != 0.0f) kernels::scale(tmp_.data(), s.residual_scale, n_tokens * d);
    kernels::add(x_.data(), tmp_.data(), n_tokens * d);
  }

  if (needs_.final_hidden)
    for (ForwardObserver* o : observers_) o->on_final_hidden(step_, x_.data(), d);

  // The rows whose logits are wanted, normalized into consecutive rows of xn_ and projected together.
  int64_t n_out = 0;
  for (const StepSpan& sp : spans_) {
    if (!sp.in.logits) continue;
    const int64_t first = sp.in.all_logits ? 0 : sp.in.n_tokens - 1;
    for (int64_t i = first; i < sp.in.n_tokens; ++i, ++n_out)
      kernels::rms_norm(x_.data() + (sp.row0 + i) * d, f32(model_.global(Role::OutputNorm)), xn_.data() + n_out * d, d,
                        s.rms_eps);
  }
  if (n_out > 0) {
    // One span writes straight into its output; several gather theirs first.
    const bool direct = spans_.size() == 1;
    float* out = direct ? spans_.front().in.logits : nullptr;
    if (!direct) {
      out_logits_.resize(static_cast<size_t>(n_out * s.n_vocab));
      out = out_logits_.data();
    }
    project(model_.global(Role::Output), xn_.data(), n_out, out, pool);
    if (s.logit_scale != 0.0f) kernels::scale(out, 1.0f / s.logit_scale, n_out * s.n_vocab);
    if (!direct) {
      const float* src = out;
      for (const StepSpan& sp : spans_) {
        if (!sp.in.logits) continue;
        const int64_t rows = sp.in.all_logits ? sp.in.n_tokens : 1;
        std::copy_n(src, rows * s.n_vocab, sp.in.logits);
        src += rows * s.n_vocab;
      }
    }
  }
  for (ForwardObserver* o : observers_) o->on_step_end(step_);
}

}  // namespace moe
