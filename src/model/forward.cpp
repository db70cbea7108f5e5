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

void ForwardPass::attention(int il, int64_t n_tokens, int64_t pos0, KvCache& kv, ThreadPool& pool) {
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
  for (int64_t t = 0; t < n_tokens; ++t) {
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
    kernels::rope_angles(rope_cs_.data(), s.n_rot, pos0 + t, s.rope_base, s.rope_freq_scale);
    for (int h = 0; h < s.n_head; ++h) kernels::rope_apply(q + h * hd, rope_cs_.data(), s.n_rot, neox);
    for (int h = 0; h < s.n_head_kv; ++h) kernels::rope_apply(k + h * hd, rope_cs_.data(), s.n_rot, neox);
    kv.store(il, pos0 + t, k, v_.data() + t * kvd);
  }

  // Causal attention over the fp16 cache, one (token, head) pair per work item.
  att_.resize(static_cast<size_t>(n_tokens * qd));
  const int group = s.n_head / s.n_head_kv;
  const float scale = s.kq_scale();
  const int64_t n_ctx_used = pos0 + n_tokens;
  // llama.cpp's CPU flash attention has two paths; in compat mode we keep both, so decoding gives its
  // exact tokens: batches of fewer than 64 queries round Q to fp16 and accumulate V in fp16 with an
  // online softmax; larger batches work in fp32 throughout (our default everywhere).
  const bool fp16_path = options_.llama_compat_attention && n_tokens < kAttnTileQ;
  if (attn_scratch_.size() < static_cast<size_t>(pool.size())) attn_scratch_.resize(static_cast<size_t>(pool.size()));
  for (auto& sc : attn_scratch_) {
    if (sc.scores.size() < static_cast<size_t>(n_ctx_used)) sc.scores.resize(static_cast<size_t>(n_ctx_used));
    sc.kf.resize(static_cast<size_t>(hd));
    sc.acc.resize(static_cast<size_t>(hd));
    sc.qr.resize(static_cast<size_t>(hd));
  }
  // A batch (unless batch invariance is asked for) widens the layer's fp16 cache to fp32 once (exact)
  // and attends in blocks of queries per head, each block two sgemm calls that read the keys and values
  // once. A decoded token (and a batch-invariant batch, so that it matches decoding bit for bit) reads
  // the fp16 cache directly, once per run of query heads that share a kv head.
  const bool blocked = n_tokens > 1 && !fp16_path && !options_.batch_invariant;
  if (blocked) {
    k32_.resize(static_cast<size_t>(n_ctx_used * kvd));
    v32_.resize(static_cast<size_t>(n_ctx_used * kvd));
    pool.parallel_for(n_ctx_used, 64,
                      [&](int64_t j0, int64_t j1, int) { kv.widen(il, j0, j1, k32_.data(), v32_.data()); });
    const int64_t n_blocks = (n_tokens + kAttnQueryBlock - 1) / kAttnQueryBlock;
    pool.parallel_for(n_blocks * s.n_head, 1, [&](int64_t item0, int64_t item1, int ti) {
      for (int64_t item = item0; item < item1; ++item) {
        const int h = static_cast<int>(item % s.n_head);
        const int64_t t0 = (item / s.n_head) * kAttnQueryBlock;
        kernels::CausalBlock b;
        b.q = q_.data() + t0 * qd + h * hd;
        b.q_stride = qd;
        b.k = k32_.data() + (h / group) * hd;
        b.v = v32_.data() + (h / group) * hd;
        b.kv_stride = kvd;
        b.m = std::min(kAttnQueryBlock, n_tokens - t0);
        b.n_past = pos0 + t0;
        b.head_dim = hd;
        b.scale = scale;
        b.out = att_.data() + t0 * qd + h * hd;
        b.out_stride = qd;
        kernels::causal_attention_block(b, attn_scratch_[static_cast<size_t>(ti)].scores);
      }
    });
  } else {
    // Work items are (token, kv head, run of that kv head's query heads): each key and value is widened
    // from fp16 once for the whole run instead of once per query head (8 times per key on Qwen3-30B-A3B).
    // The arithmetic of every head is unchanged, so results do not depend on how heads are grouped.
    const int64_t min_items = 2 * static_cast<int64_t>(pool.size());
    const int64_t per_head_items = n_tokens * s.n_head_kv;
    const int runs = static_cast<int>(std::min<int64_t>(group, (min_items + per_head_items - 1) / per_head_items));
    const int run_len = (group + runs - 1) / runs;
    // Checked here: a worker thread must not throw.
    if (run_len > kMaxRun) fail("attention: {} query heads per kv head exceed {}", run_len, kMaxRun);
    for (auto& sc : attn_scratch_) {
      if (sc.scores.size() < static_cast<size_t>(run_len * n_ctx_used)) sc.scores.resize(static_cast<size_t>(run_len * n_ctx_used));
      sc.acc.resize(static_cast<size_t>(run_len * hd));
    }
    pool.parallel_for(per_head_items * runs, 1, [&](int64_t item0, int64_t item1, int ti) {
      AttnScratch& sc = attn_scratch_[static_cast<size_t>(ti)];
      std::vector<float>& kf = sc.kf;
      std::vector<float>& qr = sc.qr;
      for (int64_t item = item0; item < item1; ++item) {
        const int64_t t = item / (s.n_head_kv * runs);
        const int hk = static_cast<int>(item / runs % s.n_head_kv);
        const int h0 = hk * group + static_cast<int>(item % runs) * run_len;
        const int nh = std::min(run_len, (hk + 1) * group - h0);
        if (nh <= 0) continue;
        const int64_t n_keys = pos0 + t + 1;
        const float* q0 = q_.data() + t * qd + static_cast<int64_t>(h0) * hd;
        float* o0 = att_.data() + t * qd + static_cast<int64_t>(h0) * hd;
        if (fp16_path) {
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
        run.scores_stride = n_ctx_used;
        kernels::attn_scores_f16(run, scale);
        double sum[kMaxRun];
        for (int g = 0; g < nh; ++g) {
          float* scores = sc.scores.data() + g * n_ctx_used;
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
  tmp_.resize(static_cast<size_t>(n_tokens * s.n_embd));
  project(lw[Role::AttnOut], att_.data(), n_tokens, tmp_.data(), pool);
  add_bias(tmp_.data(), lw[Role::AttnOutBias], n_tokens, s.n_embd);
}

void ForwardPass::ffn(int il, int64_t n_tokens, int64_t pos0, ThreadPool& pool) {
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
  const ModelSpec& s = model_.spec();
  if (n_tokens <= 0) return;
  if (pos0 < 0 || pos0 + n_tokens > kv.n_ctx())
    fail("context full: positions [{}, {}) exceed the context size {}", pos0, pos0 + n_tokens, kv.n_ctx());
  const int64_t d = s.n_embd;
  x_.resize(static_cast<size_t>(n_tokens * d));
  xn_.resize(static_cast<size_t>(n_tokens * d));

  step_positions_.resize(static_cast<size_t>(n_tokens));
  step_seq_ids_.assign(static_cast<size_t>(n_tokens), seq_id_);
  for (int64_t t = 0; t < n_tokens; ++t) step_positions_[static_cast<size_t>(t)] = pos0 + t;
  step_ = {tokens, step_positions_.data(), step_seq_ids_.data(), n_tokens};

  const WeightView& emb = model_.global(Role::TokenEmbd);
  const DTypeTraits& emb_tr = dtype_traits(emb.type);
  for (int64_t t = 0; t < n_tokens; ++t) {
    const int32_t id = tokens[t];
    if (id < 0 || id >= s.n_vocab) fail("token id {} at position {} is outside the vocabulary [0, {})", id, pos0 + t, s.n_vocab);
    emb_tr.dequantize(emb.row(id), x_.data() + t * d, d);
    if (s.embedding_scale != 0.0f) kernels::scale(x_.data() + t * d, s.embedding_scale, d);
  }
  for (ForwardObserver* o : observers_) o->on_step_begin(step_);

  for (int il = 0; il < s.n_layer; ++il) {
    const LayerWeights& lw = model_.layer(il);
    for (int64_t t = 0; t < n_tokens; ++t)
      kernels::rms_norm(x_.data() + t * d, f32(lw[Role::AttnNorm]), xn_.data() + t * d, d, s.rms_eps);
    attention(il, n_tokens, pos0, kv, pool);
    if (s.residual_scale != 0.0f) kernels::scale(tmp_.data(), s.residual_scale, n_tokens * d);
    kernels::add(x_.data(), tmp_.data(), n_tokens * d);

    for (int64_t t = 0; t < n_tokens; ++t)
      kernels::rms_norm(x_.data() + t * d, f32(lw[Role::FfnNorm]), xn_.data() + t * d, d, s.rms_eps);
    ffn(il, n_tokens, pos0, pool);
    if (s.residual_scale != 0.0f) kernels::scale(tmp_.data(), s.residual_scale, n_tokens * d);
    kernels::add(x_.data(), tmp_.data(), n_tokens * d);
  }

  if (needs_.final_hidden)
    for (ForwardObserver* o : observers_) o->on_final_hidden(step_, x_.data(), d);

  const int64_t first = all_logits ? 0 : n_tokens - 1;
  const int64_t n_out = n_tokens - first;
  for (int64_t t = first; t < n_tokens; ++t)
    kernels::rms_norm(x_.data() + t * d, f32(model_.global(Role::OutputNorm)), xn_.data() + (t - first) * d, d,
                      s.rms_eps);
  project(model_.global(Role::Output), xn_.data(), n_out, logits, pool);
  if (s.logit_scale != 0.0f) kernels::scale(logits, 1.0f / s.logit_scale, n_out * s.n_vocab);
  for (ForwardObserver* o : observers_) o->on_step_end(step_);
}

}  // namespace moe
