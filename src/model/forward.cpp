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

KvCache::KvCache(const ModelSpec& spec, int64_t n_ctx)
    : n_ctx_(n_ctx), head_dim_(spec.head_dim), n_head_kv_(spec.n_head_kv) {
  if (n_ctx <= 0) fail("KV cache: context size {} must be positive", n_ctx);
  const size_t bytes = static_cast<size_t>(spec.n_layer) * static_cast<size_t>(n_ctx) *
                       static_cast<size_t>(spec.kv_dim()) * sizeof(uint16_t);
  k_ = AlignedBuffer(bytes, 64);
  v_ = AlignedBuffer(bytes, 64);
  std::memset(k_.data(), 0, bytes);
  std::memset(v_.data(), 0, bytes);
}

void KvCache::store(int layer, int64_t pos, const float* k_row, const float* v_row) {
  for (int h = 0; h < n_head_kv_; ++h) {
    fp32_to_fp16_row(k_row + h * head_dim_, k(layer, h) + pos * head_dim_, head_dim_);
    fp32_to_fp16_row(v_row + h * head_dim_, v(layer, h) + pos * head_dim_, head_dim_);
  }
}

void KvCache::widen(int layer, int64_t p0, int64_t p1, float* k_rows, float* v_rows) {
  const int64_t kvd = head_dim_ * n_head_kv_;
  for (int h = 0; h < n_head_kv_; ++h)
    for (int64_t p = p0; p < p1; ++p) {
      fp16_to_fp32_row(k(layer, h) + p * head_dim_, k_rows + p * kvd + h * head_dim_, head_dim_);
      fp16_to_fp32_row(v(layer, h) + p * head_dim_, v_rows + p * kvd + h * head_dim_, head_dim_);
    }
}

ForwardPass::ForwardPass(const Model& model, ExpertStore& store, ForwardOptions options)
    : model_(model), store_(store), options_(std::move(options)) {
  executor_.configure(options_.precision, options_.expert_use);
  if (options_.lookahead_margin < 0 || options_.predictor != PrefetchPredictor::Transition) return;
  if (!options_.transitions) fail("transition prefetch predictor: no transition table was given");
  // Predictions index the table by layer and expert, so a table for another layout must never be used.
  const TransitionShape model_shape = transition_shape(model_, /*with_fingerprint=*/false);
  if (!options_.transitions->shape().same_layout(model_shape))
    fail("transition prefetch predictor: the table is for {}, but the model is {}",
         options_.transitions->shape().describe(), model_shape.describe());
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

// Query-batch size at which llama.cpp's CPU flash attention switches to its fp32 tiled kernel.
constexpr int64_t kAttnTileQ = 64;
// Queries per sgemm block in the batched fp32 path: the keys and values of a head are read once per block.
constexpr int64_t kAttnQueryBlock = 64;
// Most query heads one work item of decode attention serves (its kv head's run; GQA groups are <= 16
// in the architectures we load).
constexpr int kMaxRun = 64;

void add_bias(float* y, const WeightView& b, int64_t n_tokens, int64_t n) {
  if (!b) return;
  const float* bias = reinterpret_cast<const float*>(b.data);
  for (int64_t t = 0; t < n_tokens; ++t) kernels::add(y + t * n, bias, n);
}

const float* f32(const WeightView& v) { return reinterpret_cast<const float*>(v.data); }

}  // namespace

void ForwardPass::attention(int il, int64_t n_tokens, ThreadPool& pool) {
  const ModelSpec& s = model_.spec();
  const LayerWeights& lw = model_.layer(il);
  const int64_t hd = s.head_dim, qd = s.q_dim(), kvd = s.kv_dim();
  q_.resize(static_cast<size_t>(n_tokens * qd));
  k_.resize(static_cast<size_t>(n_tokens * kvd));
  v_.resize(static_cast<size_t>(n_tokens * kvd));
  const Projection qkv[3] = {{&lw[Role::AttnQ], q_.data()}, {&lw[Role::AttnK], k_.data()}, {&lw[Role::AttnV], v_.data()}};
  project_batch(qkv, 3, xn_.data(), n_tokens, pool);
  add_bias(q_.data(), lw[Role::AttnQBias], n_tokens, qd);
  add_bias(k_.data(), lw[Role::AttnKBias], n_tokens, kvd);
  add_bias(v_.data(), lw[Role::AttnVBias], n_tokens, kvd);

  const bool neox = s.rope_style == RopeStyle::Neox;
  rope_cs_.resize(static_cast<size_t>(s.n_rot));
  for (const StepSpan& sp : spans_)
    for (int64_t i = 0; i < sp.in.n_tokens; ++i) {
      const int64_t t = sp.row0 + i, pos = sp.in.pos0 + i;
      float* q = q_.data() + t * qd;
      float* k = k_.data() + t * kvd;
      if (s.qk_norm == QkNorm::PerHead) {
        for (int h = 0; h < s.n_head; ++h) kernels::rms_norm(q + h * hd, f32(lw[Role::AttnQNorm]), q + h * hd, hd, s.rms_eps);
        for (int h = 0; h < s.n_head_kv; ++h)
          kernels::rms_norm(k + h * hd, f32(lw[Role::AttnKNorm]), k + h * hd, hd, s.rms_eps);
      } else if (s.qk_norm == QkNorm::Full) {
        kernels::rms_norm(q, f32(lw[Role::AttnQNorm]), q, qd, s.rms_eps);
        kernels::rms_norm(k, f32(lw[Role::AttnKNorm]), k, kvd, s.rms_eps);
      }
      kernels::rope_angles(rope_cs_.data(), s.n_rot, pos, s.rope_base, s.rope_freq_scale);
      for (int h = 0; h < s.n_head; ++h) kernels::rope_apply(q + h * hd, rope_cs_.data(), s.n_rot, neox);
      for (int h = 0; h < s.n_head_kv; ++h) kernels::rope_apply(k + h * hd, rope_cs_.data(), s.n_rot, neox);
      sp.in.kv->store(il, pos, k, v_.data() + t * kvd);
    }

  att_.resize(static_cast<size_t>(n_tokens * qd));
  if (attn_scratch_.size() < static_cast<size_t>(pool.size())) attn_scratch_.resize(static_cast<size_t>(pool.size()));
  for (auto& sc : attn_scratch_) {
    sc.kf.resize(static_cast<size_t>(hd));
    sc.acc.resize(static_cast<size_t>(hd));
    sc.qr.resize(static_cast<size_t>(hd));
  }
  bool any_rows = false;
  for (size_t i = 0; i < spans_.size(); ++i) {
    if (spans_[i].blocked) attend_blocked(il, i, pool);
    else any_rows = true;
  }
  if (any_rows) attend_rows(il, pool);
  tmp_.resize(static_cast<size_t>(n_tokens * s.n_embd));
  project(lw[Role::AttnOut], att_.data(), n_tokens, tmp_.data(), pool);
  add_bias(tmp_.data(), lw[Role::AttnOutBias], n_tokens, s.n_embd);
}

// A batch (unless batch invariance is asked for) widens the layer's fp16 cache to fp32 once (exact) and
// attends in blocks of queries per head, each block two sgemm calls that read the keys and values once.
// Blocks start at the span's first row, so a prompt evaluated in chunks whose starts are multiples of
// kAttnQueryBlock attends in the same blocks, with the same bits, as in one batch.
void ForwardPass::attend_blocked(int il, size_t span, ThreadPool& pool) {
  const ModelSpec& s = model_.spec();
  const StepSpan& sp = spans_[span];
  KvCache& kv = *sp.in.kv;
  const int64_t hd = s.head_dim, qd = s.q_dim(), kvd = s.kv_dim();
  const int64_t n_tokens = sp.in.n_tokens, pos0 = sp.in.pos0, row0 = sp.row0;
  const int group = s.n_head / s.n_head_kv;
  const float scale = s.kq_scale();
  const int64_t n_ctx_used = pos0 + n_tokens;
  for (auto& sc : attn_scratch_)
    if (sc.scores.size() < static_cast<size_t>(n_ctx_used)) sc.scores.resize(static_cast<size_t>(n_ctx_used));
  k32_.resize(static_cast<size_t>(n_ctx_used * kvd));
  v32_.resize(static_cast<size_t>(n_ctx_used * kvd));
  pool.parallel_for(n_ctx_used, 64, [&](int64_t j0, int64_t j1, int) { kv.widen(il, j0, j1, k32_.data(), v32_.data()); });
  const int64_t n_blocks = (n_tokens + kAttnQueryBlock - 1) / kAttnQueryBlock;
  pool.parallel_for(n_blocks * s.n_head, 1, [&](int64_t item0, int64_t item1, int ti) {
    for (int64_t item = item0; item < item1; ++item) {
      const int h = static_cast<int>(item % s.n_head);
      const int64_t t0 = (item / s.n_head) * kAttnQueryBlock;
      kernels::CausalBlock b;
      b.q = q_.data() + (row0 + t0) * qd + h * hd;
      b.q_stride = qd;
      b.k = k32_.data() + (h / group) * hd;
      b.v = v32_.data() + (h / group) * hd;
      b.kv_stride = kvd;
      b.m = std::min(kAttnQueryBlock, n_tokens - t0);
      b.n_past = pos0 + t0;
      b.head_dim = hd;
      b.scale = scale;
      b.out = att_.data() + (row0 + t0) * qd + h * hd;
      b.out_stride = qd;
      kernels::causal_attention_block(b, attn_scratch_[static_cast<size_t>(ti)].scores);
    }
  });
}

// Rows that attend one by one: decoded tokens (and batch-invariant batches, so that they match decoding
// bit for bit) read their fp16 cache directly, once per run of query heads sharing a kv head. The rows of
// every such span of the step, each with its own cache and position, share one parallel region.
void ForwardPass::attend_rows(int il, ThreadPool& pool) {
  const ModelSpec& s = model_.spec();
  const int64_t hd = s.head_dim, qd = s.q_dim();
  const int group = s.n_head / s.n_head_kv;
  const float scale = s.kq_scale();
  row_list_.clear();
  row_kv_.clear();
  row_keys_.clear();
  std::vector<uint8_t> row_fp16;
  int64_t max_keys = 0;
  bool any_fp16 = false;
  for (const StepSpan& sp : spans_) {
    if (sp.blocked) continue;
    for (int64_t i = 0; i < sp.in.n_tokens; ++i) {
      row_list_.push_back(static_cast<int32_t>(sp.row0 + i));
      row_kv_.push_back(sp.in.kv);
      row_keys_.push_back(sp.in.pos0 + i + 1);
      max_keys = std::max(max_keys, sp.in.pos0 + i + 1);
      any_fp16 = any_fp16 || sp.fp16;
    }
  }
  if (any_fp16) {
    for (const StepSpan& sp : spans_)
      if (!sp.blocked) row_fp16.insert(row_fp16.end(), static_cast<size_t>(sp.in.n_tokens), sp.fp16 ? 1 : 0);
  }
  const int64_t n_rows = static_cast<int64_t>(row_list_.size());
  // Work items are (row, kv head, run of that kv head's query heads): each key and value is widened
  // from fp16 once for the whole run instead of once per query head (8 times per key on Qwen3-30B-A3B).
  // The arithmetic of every head is unchanged, so results do not depend on how heads are grouped.
  const int64_t min_items = 2 * static_cast<int64_t>(pool.size());
  const int64_t per_head_items = n_rows * s.n_head_kv;
  const int runs = static_cast<int>(std::min<int64_t>(group, (min_items + per_head_items - 1) / per_head_items));
  const int run_len = (group + runs - 1) / runs;
  // Checked here: a worker thread must not throw.
  if (run_len > kMaxRun) fail("attention: {} query heads per kv head exceed {}", run_len, kMaxRun);
  for (auto& sc : attn_scratch_) {
    if (sc.scores.size() < static_cast<size_t>(run_len * max_keys)) sc.scores.resize(static_cast<size_t>(run_len * max_keys));
    sc.acc.resize(static_cast<size_t>(run_len * hd));
  }
  pool.parallel_for(per_head_items * runs, 1, [&](int64_t item0, int64_t item1, int ti) {
    AttnScratch& sc = attn_scratch_[static_cast<size_t>(ti)];
    std::vector<float>& kf = sc.kf;
    std::vector<float>& qr = sc.qr;
    for (int64_t item = item0; item < item1; ++item) {
      const int64_t r = item / (s.n_head_kv * runs);
      const int64_t t = row_list_[static_cast<size_t>(r)];
      KvCache& kv = *row_kv_[static_cast<size_t>(r)];
      const int hk = static_cast<int>(item / runs % s.n_head_kv);
      const int h0 = hk * group + static_cast<int>(item % runs) * run_len;
      const int nh = std::min(run_len, (hk + 1) * group - h0);
      if (nh <= 0) continue;
      const int64_t n_keys = row_keys_[static_cast<size_t>(r)];
      const float* q0 = q_.data() + t * qd + static_cast<int64_t>(h0) * hd;
      float* o0 = att_.data() + t * qd + static_cast<int64_t>(h0) * hd;
      if (!row_fp16.empty() && row_fp16[static_cast<size_t>(r)]) {
        // llama.cpp's CPU flash attention for batches of fewer than 64 queries: Q rounded to fp16, V
        // accumulated in fp16 with an online softmax.
        for (int g = 0; g < nh; ++g) {
          const float* q = q0 + g * hd;
          float* o = o0 + g * hd;
          float* acc = sc.acc.data();
          for (int64_t d = 0; d < hd; ++d) qr[d] = fp16_to_fp32(fp32_to_fp16(q[d]));
          float M = -INFINITY, S = 0.0f;
          std::fill_n(acc, hd, 0.0f);
          for (int64_t j = 0; j < n_keys; ++j) {
            fp16_to_fp32_row(kv.k(il, hk) + j * hd, kf.data(), hd);
            const float sc_j = kernels::dot_f32(qr.data(), kf.data(), hd) * scale;
            float ms = 1.0f, vs = 1.0f;
            if (sc_j > M) {
              const float m_old = M;
              M = sc_j;
              ms = std::exp(m_old - M);
              for (int64_t d = 0; d < hd; ++d) acc[d] = fp16_to_fp32(fp32_to_fp16(acc[d] * ms));
            } else {
              vs = std::exp(sc_j - M);
            }
            fp16_to_fp32_row(kv.v(il, hk) + j * hd, kf.data(), hd);
            for (int64_t d = 0; d < hd; ++d) acc[d] = fp16_to_fp32(fp32_to_fp16(std::fma(kf[d], vs, acc[d])));
            S = S * ms + vs;
          }
          const float inv = S == 0.0f ? 0.0f : 1.0f / S;
          for (int64_t d = 0; d < hd; ++d) o[d] = acc[d] * inv;
        }
        continue;
      }
      kernels::F16AttnRun run;
      run.q = q0;
      run.q_stride = hd;
      run.nh = nh;
      run.k = kv.k(il, hk);
      run.v = kv.v(il, hk);
      run.kv_stride = hd;
      run.n = n_keys;
      run.head_dim = hd;
      run.scores = sc.scores.data();
      run.scores_stride = max_keys;
      kernels::attn_scores_f16(run, scale);
      double sum[kMaxRun];
      for (int g = 0; g < nh; ++g) {
        float* scores = sc.scores.data() + g * max_keys;
        const float mx = *std::max_element(scores, scores + n_keys);
        sum[g] = 0.0;
        for (int64_t j = 0; j < n_keys; ++j) {
          scores[j] = std::exp(scores[j] - mx);
          sum[g] += scores[j];
        }
      }
      std::fill_n(sc.acc.data(), nh * hd, 0.0f);
      kernels::attn_values_f16(run, sc.acc.data());
      for (int g = 0; g < nh; ++g) {
        const float inv = static_cast<float>(1.0 / sum[g]);
        for (int64_t d = 0; d < hd; ++d) o0[g * hd + d] = sc.acc[static_cast<size_t>(g * hd + d)] * inv;
      }
    }
  });
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
  project(lw[Role::Router], xn_.data(), n_tokens, router_logits_.data(), pool);
  const float* bias = lw[Role::RouterBias] ? f32(lw[Role::RouterBias]) : nullptr;
  if (needs_.router_logits) obs_logits_.assign(router_logits_.begin(), router_logits_.end());
  route_tokens(ms, router_logits_.data(), bias, n_tokens, routing_);
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
  const WeightView& router = model_.layer(next)[Role::Router];
  lookahead_logits_.resize(static_cast<size_t>(n_tokens * nm.n_expert));
  project(router, xn_.data(), n_tokens, lookahead_logits_.data(), pool);
  const float* bias = model_.layer(next)[Role::RouterBias] ? f32(model_.layer(next)[Role::RouterBias]) : nullptr;
  const int want = std::min(nm.n_expert, nm.n_expert_used + options_.lookahead_margin);
  predicted_.assign(static_cast<size_t>(n_tokens), {});
  hint_.clear();
  std::vector<int32_t> order(nm.n_expert);
  for (int64_t t = 0; t < n_tokens; ++t) {
    // Softmax and sigmoid are monotonic, so ranking the (biased) logits ranks the scores.
    const float* z = lookahead_logits_.data() + t * nm.n_expert;
    std::iota(order.begin(), order.end(), 0);
    auto key = [&](int32_t e) { return z[e] + (bias ? bias[e] : 0.0f); };
    std::partial_sort(order.begin(), order.begin() + want, order.end(),
                      [&](int32_t a, int32_t b) { return key(a) > key(b) || (key(a) == key(b) && a < b); });
    predicted_[t].assign(order.begin(), order.begin() + want);
    for (int j = 0; j < want; ++j)
      if (std::find(hint_.begin(), hint_.end(), order[j]) == hint_.end()) hint_.push_back(order[j]);
  }
  predicted_layer_ = next;
  const ExpertPrecision& pr = options_.precision;
  const bool tiers = pr.low_bit_below > 0.0f && store_.has_low_bit();
  if (!tiers && pr.skip_below <= 0.0f) {
    store_.prefetch(next, hint_.data(), static_cast<int>(hint_.size()), /*speculative=*/true);
    return;
  }
  // Predict the weights too (the next layer's gate pipeline on the same logits), and decide as the
  // executor will once the real routing is known: an expert predicted only below skip_below is not
  // hinted, and one predicted below low_bit_below for every token is hinted as its low-bit copy.
  // Margin experts (in no token's predicted top-k) are hinted, low-bit when there are tiers.
  route_tokens(nm, lookahead_logits_.data(), bias, n_tokens, predicted_routing_);
  hint_max_weight_.assign(hint_.size(), -1.0f);
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int j = 0; j < predicted_routing_.k; ++j) {
      const auto at = std::find(hint_.begin(), hint_.end(), predicted_routing_.id(t, j));
      if (at == hint_.end()) continue;
      float& m = hint_max_weight_[static_cast<size_t>(at - hint_.begin())];
      m = std::max(m, predicted_routing_.weight(t, j));
    }
  size_t kept = 0;
  hint_low_bit_ok_.clear();
  for (size_t i = 0; i < hint_.size(); ++i) {
    const float m = hint_max_weight_[i];
    if (m >= 0.0f && m < pr.skip_below) continue;
    hint_[kept++] = hint_[i];
    hint_low_bit_ok_.push_back(tiers && m < pr.low_bit_below ? 1 : 0);
  }
  hint_.resize(kept);
  store_.prefetch(next, hint_.data(), static_cast<int>(hint_.size()), /*speculative=*/true, hint_low_bit_ok_.data());
}

void ForwardPass::predict_next_layer_transition(int il, int64_t n_tokens) {
  const TransitionTable& table = *options_.transitions;
  predicted_layer_ = -1;
  const int next = table.next_moe_layer(il);
  if (next < 0) return;
  const MoeSpec& nm = model_.spec().layers[next].moe;
  const int want = std::min(nm.n_expert, nm.n_expert_used + options_.lookahead_margin);
  predicted_.assign(static_cast<size_t>(n_tokens), {});
  hint_.clear();
  std::vector<int32_t> top(static_cast<size_t>(want));
  for (int64_t t = 0; t < n_tokens; ++t) {
    const size_t at = static_cast<size_t>(t * routing_.k);
    const int n = table.predict(il, routing_.ids.data() + at,
                                options_.transition_weighted ? routing_.weights.data() + at : nullptr, routing_.k, want,
                                top.data(), transition_scores_);
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
  // Check everything before any cache is written: a rejected step leaves every sequence as it was.
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
    StepSpan sp;
    sp.in = in;
    sp.row0 = n_tokens;
    // llama.cpp's CPU flash attention has two paths; in compat mode we keep both, so decoding gives its
    // exact tokens: batches of fewer than 64 queries round Q to fp16 and accumulate V in fp16 with an
    // online softmax; larger batches work in fp32 throughout (our default everywhere).
    sp.fp16 = options_.llama_compat_attention && in.n_tokens < kAttnTileQ;
    sp.blocked = in.n_tokens > 1 && !sp.fp16 && !options_.batch_invariant;
    spans_.push_back(sp);
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
