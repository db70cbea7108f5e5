// The attention half of ForwardPass: query/key/value projections (standard, or multi-head latent
// attention in the absorbed form), the sequence's KV cache (full, sliding-window ring or latent), causal
// softmax attention with optional sliding window and attention sinks, and the output projection.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/error.h"
#include "kernels/attention.h"
#include "kernels/ops.h"
#include "model/forward.h"
#include "tensor/fp16.h"

namespace moe {

namespace {

// Query-batch size at which llama.cpp's CPU flash attention switches to its fp32 tiled kernel.
constexpr int64_t kAttnTileQ = 64;
// Queries per sgemm block in the batched fp32 path: the keys and values of a head are read once per block.
constexpr int64_t kAttnQueryBlock = 64;
// Most query heads one work item of decode attention serves (a run of one kv head's heads).
constexpr int kMaxRun = 64;

void add_bias(float* y, const WeightView& b, int64_t n_tokens, int64_t n) {
  if (!b) return;
  const float* bias = reinterpret_cast<const float*>(b.data);
  for (int64_t t = 0; t < n_tokens; ++t) kernels::add(y + t * n, bias, n);
}

const float* f32(const WeightView& v) { return reinterpret_cast<const float*>(v.data); }

}  // namespace

kernels::RopeParams ForwardPass::rope_params(int il) const {
  const ModelSpec& s = model_.spec();
  const float base = s.layers[il].n_swa > 0 && s.rope_base_swa != 0.0f ? s.rope_base_swa : s.rope_base;
  return kernels::rope_params(s.n_rot, base, s.rope_freq_scale, s.yarn.ext_factor, s.yarn.attn_factor,
                              s.yarn.n_ctx_orig, s.yarn.beta_fast, s.yarn.beta_slow);
}

void ForwardPass::attention(int il, int64_t n_tokens, ThreadPool& pool) {
  const ModelSpec& s = model_.spec();
  const LayerWeights& lw = model_.layer(il);
  if (s.is_mla())
    mla_inputs(il, n_tokens, pool);
  else
    attention_inputs(il, n_tokens, pool);
  const KvLayerShape& sh = spans_.front().in.kv->shape(il);
  att_.resize(static_cast<size_t>(n_tokens * s.n_head * sh.v_dim));
  // Spans of several rows attend on their own (a sliding-window layer's ring holds its window plus one
  // block of queries: store and attend in blocks); the single rows of all other spans (decoded tokens)
  // are stored first and then attend together in one parallel region.
  attend_rows_.clear();
  const int64_t kvd = sh.n_head_kv * sh.k_dim, vrow = sh.n_head_kv * sh.v_dim;
  for (const StepSpan& sp : spans_) {
    KvCache& kv = *sp.in.kv;
    if (sp.in.n_tokens == 1) {
      const int64_t t = sp.row0;
      kv.store(il, sp.in.pos0, k_.data() + t * kvd, sh.v_in_k ? nullptr : v_.data() + t * vrow);
      attend_rows_.push_back({t, &kv, sp.in.pos0, options_.llama_compat_attention});
      continue;
    }
    const int64_t block = kv.block_rows(il);
    const int64_t end = sp.row0 + sp.in.n_tokens;
    for (int64_t r0 = sp.row0; r0 < end;) {
      const int64_t r1 = end - r0 <= block ? end : r0 + block;
      attend(il, r0, r1, sp.in.n_tokens, sp.in.pos0 - sp.row0, kv, pool);
      r0 = r1;
    }
  }
  if (!attend_rows_.empty()) attend_rows(il, attend_rows_.data(), attend_rows_.size(), pool);
  const float* heads = att_.data();
  if (s.is_mla()) {
    mla_values(il, n_tokens, pool);
    heads = mla_out_.data();
  }
  tmp_.resize(static_cast<size_t>(n_tokens * s.n_embd));
  project(lw[Role::AttnOut], heads, n_tokens, tmp_.data(), pool);
  add_bias(tmp_.data(), lw[Role::AttnOutBias], n_tokens, s.n_embd);
}

void ForwardPass::attention_inputs(int il, int64_t n_tokens, ThreadPool& pool) {
  const ModelSpec& s = model_.spec();
  const LayerWeights& lw = model_.layer(il);
  const int64_t hd = s.head_dim, qd = s.q_dim(), kvd = s.kv_dim(), vd = s.v_dim();
  q_.resize(static_cast<size_t>(n_tokens * qd));
  k_.resize(static_cast<size_t>(n_tokens * kvd));
  v_.resize(static_cast<size_t>(n_tokens * vd));
  const Projection qkv[3] = {{&lw[Role::AttnQ], q_.data()}, {&lw[Role::AttnK], k_.data()}, {&lw[Role::AttnV], v_.data()}};
  project_batch(qkv, 3, xn_.data(), n_tokens, pool);
  add_bias(q_.data(), lw[Role::AttnQBias], n_tokens, qd);
  add_bias(k_.data(), lw[Role::AttnKBias], n_tokens, kvd);
  add_bias(v_.data(), lw[Role::AttnVBias], n_tokens, vd);

  const bool neox = s.rope_style == RopeStyle::Neox;
  const kernels::RopeParams rp = rope_params(il);
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
    kernels::rope_angles(rope_cs_.data(), s.n_rot, step_positions_[static_cast<size_t>(t)], rp);
    for (int h = 0; h < s.n_head; ++h) kernels::rope_apply(q + h * hd, rope_cs_.data(), s.n_rot, neox);
    for (int h = 0; h < s.n_head_kv; ++h) kernels::rope_apply(k + h * hd, rope_cs_.data(), s.n_rot, neox);
  }
}

void ForwardPass::per_head_matmul(const WeightView& w, const float* x, int64_t x_stride, int64_t x_head_stride,
                                  int64_t n_tokens, float* y, int64_t y_stride, int64_t y_head_stride,
                                  ThreadPool& pool) {
  const int64_t n_heads = w.n_mat;
  if (head_act_.size() < static_cast<size_t>(n_heads)) head_act_.resize(static_cast<size_t>(n_heads));
  const DType act_type = dtype_traits(w.type).vec_dot_type;
  batch_jobs_.clear();
  for (int64_t h = 0; h < n_heads; ++h) {
    kernels::ActBuffer& a = head_act_[static_cast<size_t>(h)];
    a.convert(act_type, x + h * x_head_stride, n_tokens, w.cols, x_stride);
    batch_jobs_.push_back({to_matrix(w, h), &a, y + h * y_head_stride, y_stride});
  }
  kernels::matmul_batch(batch_jobs_.data(), batch_jobs_.size(), pool, batch_chunks_);
}

// Multi-head latent attention, absorbed (llama.cpp's MLA graph): per token the cache gets the normed
// latent c (kv_lora_rank) and the roped shared key k_pe; each head's query becomes
// [attn_k_b[h] q_nope[h], rope(q_pe[h])], so that q . k = q_nope . (W_kb c) + q_pe . k_pe without ever
// expanding the cached latents, and the values are the latents themselves (mla_values maps each head's
// output back through attn_v_b).
void ForwardPass::mla_inputs(int il, int64_t n_tokens, ThreadPool& pool) {
  const ModelSpec& s = model_.spec();
  const LayerWeights& lw = model_.layer(il);
  const MlaSpec& m = s.mla;
  const int64_t qh = m.qk_nope + m.qk_rope, qw = s.n_head * qh, dk = s.head_dim;
  mla_q_.resize(static_cast<size_t>(n_tokens * qw));
  v_.resize(static_cast<size_t>(n_tokens * dk));  // the kv down-projection [latent | rope key], pre-norm
  if (m.q_lora_rank > 0) {
    mla_qa_.resize(static_cast<size_t>(n_tokens * m.q_lora_rank));
    const Projection p[2] = {{&lw[Role::AttnQA], mla_qa_.data()}, {&lw[Role::AttnKvA], v_.data()}};
    project_batch(p, 2, xn_.data(), n_tokens, pool);
    for (int64_t t = 0; t < n_tokens; ++t) {
      float* qa = mla_qa_.data() + t * m.q_lora_rank;
      kernels::rms_norm(qa, f32(lw[Role::AttnQANorm]), qa, m.q_lora_rank, s.rms_eps);
    }
    project(lw[Role::AttnQB], mla_qa_.data(), n_tokens, mla_q_.data(), pool);
  } else {
    const Projection p[2] = {{&lw[Role::AttnQ], mla_q_.data()}, {&lw[Role::AttnKvA], v_.data()}};
    project_batch(p, 2, xn_.data(), n_tokens, pool);
  }
  const bool neox = s.rope_style == RopeStyle::Neox;
  const kernels::RopeParams rp = rope_params(il);
  rope_cs_.resize(static_cast<size_t>(s.n_rot));
  k_.resize(static_cast<size_t>(n_tokens * dk));
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* kva = v_.data() + t * dk;
    float* krow = k_.data() + t * dk;
    kernels::rms_norm(kva, f32(lw[Role::AttnKvANorm]), krow, m.kv_lora_rank, s.rms_eps);
    std::memcpy(krow + m.kv_lora_rank, kva + m.kv_lora_rank, static_cast<size_t>(m.qk_rope) * sizeof(float));
    kernels::rope_angles(rope_cs_.data(), m.qk_rope, step_positions_[static_cast<size_t>(t)], rp);
    kernels::rope_apply(krow + m.kv_lora_rank, rope_cs_.data(), m.qk_rope, neox);
    for (int h = 0; h < s.n_head; ++h)
      kernels::rope_apply(mla_q_.data() + t * qw + h * qh + m.qk_nope, rope_cs_.data(), m.qk_rope, neox);
  }
  const int64_t qd = s.q_dim();  // n_head x (kv_lora_rank + qk_rope)
  q_.resize(static_cast<size_t>(n_tokens * qd));
  per_head_matmul(lw[Role::AttnKB], mla_q_.data(), qw, qh, n_tokens, q_.data(), qd, dk, pool);
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int h = 0; h < s.n_head; ++h)
      std::memcpy(q_.data() + t * qd + h * dk + m.kv_lora_rank, mla_q_.data() + t * qw + h * qh + m.qk_nope,
                  static_cast<size_t>(m.qk_rope) * sizeof(float));
}

void ForwardPass::mla_values(int il, int64_t n_tokens, ThreadPool& pool) {
  const ModelSpec& s = model_.spec();
  const int64_t lat = s.mla.kv_lora_rank, vh = s.mla.v_head;
  mla_out_.resize(static_cast<size_t>(n_tokens * s.n_head * vh));
  per_head_matmul(model_.layer(il)[Role::AttnVB], att_.data(), s.n_head * lat, lat, n_tokens, mla_out_.data(),
                  s.n_head * vh, vh, pool);
}

void ForwardPass::attend(int il, int64_t r0, int64_t r1, int64_t n_tokens, int64_t pos0, KvCache& kv,
                         ThreadPool& pool) {
  const ModelSpec& s = model_.spec();
  const LayerWeights& lw = model_.layer(il);
  const KvLayerShape& sh = kv.shape(il);
  const int n_kv = sh.n_head_kv;
  const int64_t dk = sh.k_dim, dv = sh.v_dim;
  const int64_t qd = s.n_head * dk, kvd = n_kv * dk, vrow = n_kv * dv, od = s.n_head * dv;
  for (int64_t t = r0; t < r1; ++t)
    kv.store(il, pos0 + t, k_.data() + t * kvd, sh.v_in_k ? nullptr : v_.data() + t * vrow);

  const int group = s.n_head / n_kv;
  const float scale = s.kq_scale();
  const float* sinks = s.attn_sinks ? f32(lw[Role::AttnSinks]) : nullptr;
  const int64_t key_lo = kv.first_visible(il, pos0 + r0);  // the first key any query of the block sees
  const int64_t max_keys = pos0 + r1 - key_lo;
  // llama.cpp's CPU flash attention has two paths; in compat mode we keep both, so decoding gives its
  // exact tokens: batches of fewer than 64 queries round Q to fp16 and accumulate V in fp16 with an
  // online softmax; larger batches work in fp32 throughout (our default everywhere).
  const bool fp16_path = options_.llama_compat_attention && n_tokens < kAttnTileQ;
  if (attn_scratch_.size() < static_cast<size_t>(pool.size())) attn_scratch_.resize(static_cast<size_t>(pool.size()));
  for (auto& sc : attn_scratch_) {
    if (sc.scores.size() < static_cast<size_t>(max_keys)) sc.scores.resize(static_cast<size_t>(max_keys));
    sc.kf.resize(static_cast<size_t>(std::max(dk, dv)));
    sc.acc.resize(static_cast<size_t>(dv));
    sc.qr.resize(static_cast<size_t>(dk));
  }
  // A batch (unless batch invariance is asked for) widens the keys it needs to fp32 once (exact) and
  // attends in blocks of queries per head, each block two sgemm calls that read the keys and values
  // once. A decoded token (and a batch-invariant batch, so that it matches decoding bit for bit) reads
  // the fp16 cache directly, once per run of query heads that share a kv head.
  const bool blocked = n_tokens > 1 && !fp16_path && !options_.batch_invariant;
  if (blocked) {
    k32_.resize(static_cast<size_t>(max_keys * kvd));
    if (!sh.v_in_k) v32_.resize(static_cast<size_t>(max_keys * vrow));
    pool.parallel_for(max_keys, 64, [&](int64_t j0, int64_t j1, int) {
      kv.widen(il, key_lo + j0, key_lo + j1, k32_.data() + j0 * kvd, sh.v_in_k ? nullptr : v32_.data() + j0 * vrow);
    });
    // Latent values are the first dv entries of each key row.
    const float* vbase = sh.v_in_k ? k32_.data() : v32_.data();
    const int64_t vstride = sh.v_in_k ? kvd : vrow;
    const int64_t n_blocks = (r1 - r0 + kAttnQueryBlock - 1) / kAttnQueryBlock;
    // Query heads of one kv head attend together, `stack` at a time (kernels/attention.h), in every block
    // of at least kAttnMinStackQueries queries; a shorter block (a short prompt, or the last block of a
    // prompt) attends head by head. Decided per block by its own length, so a prompt evaluated in chunks
    // that start at multiples of kAttnQueryBlock attends in the same blocks and stacks as in one batch.
    const int stack = kernels::attention_heads_per_block(group, kAttnQueryBlock, dk, dv);
    const int runs = s.n_head / stack;
    pool.parallel_for(n_blocks * runs, 1, [&](int64_t item0, int64_t item1, int ti) {
      for (int64_t item = item0; item < item1; ++item) {
        const int64_t t0 = r0 + (item / runs) * kAttnQueryBlock;
        const int64_t m = std::min(kAttnQueryBlock, r1 - t0);
        const int per_block = m >= kernels::kAttnMinStackQueries ? stack : 1;
        for (int h = static_cast<int>(item % runs) * stack, h_end = h + stack; h < h_end; h += per_block) {
          kernels::CausalBlock b;
          b.key0 = kv.first_visible(il, pos0 + t0);
          b.q = q_.data() + t0 * qd + h * dk;
          b.q_stride = qd;
          b.k = k32_.data() + (b.key0 - key_lo) * kvd + (h / group) * dk;
          b.v = vbase + (b.key0 - key_lo) * vstride + (h / group) * dv;
          b.kv_stride = kvd;
          b.v_stride = vstride;
          b.m = m;
          b.n_past = pos0 + t0;
          b.window = sh.window;
          b.head_dim = dk;
          b.v_dim = dv;
          b.scale = scale;
          b.has_sink = sinks != nullptr;
          b.sink = sinks ? sinks[h] : 0.0f;
          b.out = att_.data() + t0 * od + h * dv;
          b.out_stride = od;
          b.heads = per_block;
          b.q_head_stride = dk;
          b.out_head_stride = dv;
          b.head_sinks = sinks ? sinks + h : nullptr;
          kernels::causal_attention_block(b, attn_scratch_[static_cast<size_t>(ti)].scores);
        }
      }
    });
    return;
  }
  std::vector<AttendRow>& rows = attend_row_scratch_;
  rows.clear();
  for (int64_t t = r0; t < r1; ++t) rows.push_back({t, &kv, pos0 + t, fp16_path});
  attend_rows(il, rows.data(), rows.size(), pool);
}

// Rows that attend one by one (decoded tokens, and batch-invariant or llama-compat batches, so that they
// match decoding bit for bit) read their fp16 cache directly, once per run of query heads that share a
// kv head. Rows may belong to different sequences: each has its own cache and position.
void ForwardPass::attend_rows(int il, const AttendRow* rows, size_t n_rows, ThreadPool& pool) {
  const ModelSpec& s = model_.spec();
  const LayerWeights& lw = model_.layer(il);
  KvCache& kv0 = *rows[0].kv;  // every cache of the model has the same per-layer shapes
  const KvLayerShape& sh = kv0.shape(il);
  const int n_kv = sh.n_head_kv;
  const int64_t dk = sh.k_dim, dv = sh.v_dim;
  const int64_t qd = s.n_head * dk, od = s.n_head * dv;
  const int group = s.n_head / n_kv;
  const float scale = s.kq_scale();
  const float* sinks = s.attn_sinks ? f32(lw[Role::AttnSinks]) : nullptr;
  int64_t max_keys = 0;
  for (size_t i = 0; i < n_rows; ++i)
    max_keys = std::max(max_keys, rows[i].pos + 1 - rows[i].kv->first_visible(il, rows[i].pos));
  if (attn_scratch_.size() < static_cast<size_t>(pool.size())) attn_scratch_.resize(static_cast<size_t>(pool.size()));
  for (auto& sc : attn_scratch_) {
    sc.kf.resize(static_cast<size_t>(std::max(dk, dv)));
    sc.qr.resize(static_cast<size_t>(dk));
  }
  // Work items are (token, kv head, run of that kv head's query heads): each key and value is widened
  // from fp16 once for the whole run instead of once per query head (8 times per key on Qwen3-30B-A3B,
  // 16 on DeepSeek-V2-Lite's latent cache). The arithmetic of every head is unchanged, so results do
  // not depend on how heads are grouped.
  const int64_t m = static_cast<int64_t>(n_rows);
  const int64_t min_items = 2 * static_cast<int64_t>(pool.size());
  const int64_t per_head_items = m * n_kv;
  int runs = static_cast<int>(std::min<int64_t>(group, (min_items + per_head_items - 1) / per_head_items));
  runs = std::max(runs, (group + kMaxRun - 1) / kMaxRun);
  const int run_len = (group + runs - 1) / runs;
  for (auto& sc : attn_scratch_) {
    if (sc.scores.size() < static_cast<size_t>(run_len * max_keys))
      sc.scores.resize(static_cast<size_t>(run_len * max_keys));
    sc.acc.resize(static_cast<size_t>(run_len * dv));
  }
  const int64_t ks = kv0.k_stride(il), vs = kv0.v_stride(il);
  pool.parallel_for(per_head_items * runs, 1, [&](int64_t item0, int64_t item1, int ti) {
    AttnScratch& sc = attn_scratch_[static_cast<size_t>(ti)];
    std::vector<float>& kf = sc.kf;
    std::vector<float>& qr = sc.qr;
    for (int64_t item = item0; item < item1; ++item) {
      const AttendRow& row = rows[item / (n_kv * runs)];
      const int64_t t = row.t;
      KvCache& kv = *row.kv;
      const int hk = static_cast<int>(item / runs % n_kv);
      const int h0 = hk * group + static_cast<int>(item % runs) * run_len;
      const int nh = std::min(run_len, (hk + 1) * group - h0);
      if (nh <= 0) continue;
      const int64_t p = row.pos;
      const int64_t lo = kv.first_visible(il, p);
      const int64_t n_keys = p + 1 - lo;
      KvCache::Run seg[2];
      const int n_seg = kv.runs(il, lo, p + 1, seg);
      const float* q0 = q_.data() + t * qd + static_cast<int64_t>(h0) * dk;
      float* o0 = att_.data() + t * od + static_cast<int64_t>(h0) * dv;
      const uint16_t* kbase = kv.k(il, hk);
      const uint16_t* vbase = kv.v(il, hk);
      if (row.fp16) {
        for (int g = 0; g < nh; ++g) {
          const float* q = q0 + g * dk;
          float* o = o0 + g * dv;
          float* acc = sc.acc.data();
          for (int64_t d = 0; d < dk; ++d) qr[d] = fp16_to_fp32(fp32_to_fp16(q[d]));
          float M = -INFINITY, S = 0.0f;
          std::fill_n(acc, dv, 0.0f);
          for (int r = 0; r < n_seg; ++r)
            for (int64_t j = 0; j < seg[r].n; ++j) {
              const int64_t slot = seg[r].slot + j;
              fp16_to_fp32_row(kbase + slot * ks, kf.data(), dk);
              const float sc_j = kernels::dot_f32(qr.data(), kf.data(), dk) * scale;
              float ms = 1.0f, vsc = 1.0f;
              if (sc_j > M) {
                const float m_old = M;
                M = sc_j;
                ms = std::exp(m_old - M);
                for (int64_t d = 0; d < dv; ++d) acc[d] = fp16_to_fp32(fp32_to_fp16(acc[d] * ms));
              } else {
                vsc = std::exp(sc_j - M);
              }
              fp16_to_fp32_row(vbase + slot * vs, kf.data(), dv);
              for (int64_t d = 0; d < dv; ++d) acc[d] = fp16_to_fp32(fp32_to_fp16(std::fma(kf[d], vsc, acc[d])));
              S = S * ms + vsc;
            }
          if (sinks) {
            // As ggml adds the sink after the keys: rescale the (widened) accumulator if it is a new max.
            const float sk = sinks[h0 + g];
            float ms = 1.0f, vsc = 1.0f;
            if (sk > M) {
              ms = std::exp(M - sk);
              M = sk;
              for (int64_t d = 0; d < dv; ++d) acc[d] *= ms;
            } else {
              vsc = std::exp(sk - M);
            }
            S = S * ms + vsc;
          }
          const float inv = S == 0.0f ? 0.0f : 1.0f / S;
          for (int64_t d = 0; d < dv; ++d) o[d] = acc[d] * inv;
        }
        continue;
      }
      kernels::F16AttnRun run;
      run.q = q0;
      run.q_stride = dk;
      run.nh = nh;
      run.kv_stride = ks;
      run.v_stride = vs;
      run.head_dim = dk;
      run.v_dim = dv;
      run.scores_stride = max_keys;
      for (int r = 0; r < n_seg; ++r) {
        run.k = kbase + seg[r].slot * ks;
        run.n = seg[r].n;
        run.scores = sc.scores.data() + (seg[r].pos - lo);
        kernels::attn_scores_f16(run, scale);
      }
      double sum[kMaxRun];
      for (int g = 0; g < nh; ++g) {
        float* scores = sc.scores.data() + g * max_keys;
        float mx = *std::max_element(scores, scores + n_keys);
        if (sinks) mx = std::max(mx, sinks[h0 + g]);
        sum[g] = sinks ? std::exp(sinks[h0 + g] - mx) : 0.0;
        for (int64_t j = 0; j < n_keys; ++j) {
          scores[j] = std::exp(scores[j] - mx);
          sum[g] += scores[j];
        }
      }
      std::fill_n(sc.acc.data(), nh * dv, 0.0f);
      for (int r = 0; r < n_seg; ++r) {
        run.v = vbase + seg[r].slot * vs;
        run.n = seg[r].n;
        run.scores = sc.scores.data() + (seg[r].pos - lo);
        kernels::attn_values_f16(run, sc.acc.data());
      }
      for (int g = 0; g < nh; ++g) {
        const float inv = static_cast<float>(1.0 / sum[g]);
        for (int64_t d = 0; d < dv; ++d) o0[g * dv + d] = sc.acc[static_cast<size_t>(g * dv + d)] * inv;
      }
    }
  });
}

}  // namespace moe
