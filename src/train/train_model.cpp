#include "base/rng.h"
#include "train/train_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "base/error.h"
#include "kernels/ops.h"
#include "train/train_ops.h"

namespace moe::train {

// ---------------------------------------------------------------------------------------------
// Parameter layout from the role table

ParamLayout::ParamLayout(const ModelSpec& spec, const ArchDescriptor& arch) {
  const int n_roles = static_cast<int>(Role::Count);
  index_.assign(static_cast<size_t>((spec.n_layer + 1) * n_roles), -1);
  for (const TensorRoleDesc& d : arch.roles) {
    const int n_iter = d.per_layer ? spec.n_layer : 1;
    for (int il = 0; il < n_iter; ++il) {
      std::vector<int64_t> dims = d.shape(spec, il);
      if (dims.empty()) continue;
      if (d.role == Role::Output && spec.tied_output) continue;
      // Optional rows other than the output (e.g. attn_output.bias) are features we do not train.
      if (d.optional && d.role != Role::Output) continue;
      if (d.role == Role::RouterBias) continue;  // not a gradient-trained parameter
      switch (d.role) {
        case Role::AttnQBias: case Role::AttnKBias: case Role::AttnVBias: case Role::AttnOutBias:
        case Role::ShexpRouter:
          fail("train: architecture '{}' needs tensor role '{}', which the trainer does not implement", arch.name,
               role_name(d.role));
        default: break;
      }
      ParamTensor t;
      char name[256];
      std::snprintf(name, sizeof name, d.gguf_name, il);
      t.name = d.per_layer ? std::string(name) : std::string(d.gguf_name);
      t.role = d.role;
      t.layer = d.per_layer ? il : -1;
      t.dims = dims;
      t.placement = d.placement;
      t.offset = total_;
      t.size = 1;
      for (int64_t x : dims) t.size *= static_cast<size_t>(x);
      total_ += t.size;
      index_[static_cast<size_t>((t.layer + 1) * n_roles + static_cast<int>(d.role))] = static_cast<int>(tensors_.size());
      tensors_.push_back(std::move(t));
    }
  }
}

const ParamTensor* ParamLayout::find(Role role, int layer) const {
  const size_t i = static_cast<size_t>((layer + 1) * static_cast<int>(Role::Count) + static_cast<int>(role));
  if (i >= index_.size() || index_[i] < 0) return nullptr;
  return &tensors_[static_cast<size_t>(index_[i])];
}

const ParamTensor& ParamLayout::get(Role role, int layer) const {
  const ParamTensor* t = find(role, layer);
  if (!t) fail("train: tensor role '{}' is absent in layer {}", role_name(role), layer);
  return *t;
}

// ---------------------------------------------------------------------------------------------
// Activations kept for the backward pass

namespace {

template <typename Real>
struct LayerAct {
  std::vector<Real> h_in, xn1, rstd1, q_pre, k_pre, rstd_q, rstd_k, q, k, v, P, att, h_mid, xn2, rstd2;
  // Dense FFN (dense layers) or shared experts (MoE layers): gate, up, activation, [N][ff].
  std::vector<Real> fa, fu, fh;
  // MoE routing: probabilities [N][E], logsumexp [N], selected ids and final weights [N][k], the
  // renormalization sum [N], the load fraction f_e [E].
  std::vector<Real> probs, lse, w, renorm_sum, load_frac;
  std::vector<int32_t> ids;
  // Assignments grouped by expert: rows [expert_begin[e], expert_begin[e+1]) belong to expert e, in
  // ascending token order. slot_row[t*k + j] is the row of token t's j-th choice.
  std::vector<int64_t> expert_begin;
  std::vector<int32_t> assign_token;
  std::vector<int64_t> slot_row;
  std::vector<Real> ex, ea, eu, eh, ey;  // per assignment row: input [d], gate/up/act [ff], output [d]
};

// Initial weights come from the portable generator so they are identical everywhere.
using InitRng = SplitMix64;

uint64_t hash_name(const std::string& s, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ (seed * 0x9E3779B97F4A7C15ull);
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// The SwiGLU MLP y = down(silu(gate x) * up x) over N rows.
template <typename Real>
void mlp_forward(ThreadPool* pool, const Real* X, int64_t N, int64_t d, const Real* Wg, const Real* Wu, const Real* Wd,
                 int64_t ff, Real* A, Real* U, Real* H, Real* Y) {
  linear_forward(pool, X, N, d, Wg, ff, A);
  linear_forward(pool, X, N, d, Wu, ff, U);
  swiglu_forward(A, U, H, N * ff);
  linear_forward(pool, H, N, ff, Wd, d, Y);
}

template <typename Real>
void mlp_backward(ThreadPool* pool, const Real* X, int64_t N, int64_t d, const Real* Wg, const Real* Wu,
                  const Real* Wd, int64_t ff, const Real* A, const Real* U, const Real* H, const Real* dY, Real* dX,
                  Real* dWg, Real* dWu, Real* dWd) {
  std::vector<Real> dH(static_cast<size_t>(N * ff), Real(0)), dA(dH.size(), Real(0)), dU(dH.size(), Real(0));
  linear_backward(pool, H, N, ff, Wd, d, dY, dH.data(), dWd);
  swiglu_backward(A, U, dH.data(), dA.data(), dU.data(), N * ff);
  linear_backward(pool, X, N, d, Wg, ff, dA.data(), dX, dWg);
  linear_backward(pool, X, N, d, Wu, ff, dU.data(), dX, dWu);
}

// Indices of the k largest values, largest first; ties keep the lower index first (as the
// inference router does, so both pick the same experts).
void top_k_indices(const double* v, int n, int k, int32_t* out, std::vector<int32_t>& idx) {
  idx.resize(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
  std::copy(idx.begin(), idx.begin() + k, out);
}

}  // namespace

template <typename Real>
struct MoeTransformer<Real>::State {
  int64_t B = 0, T = 0, N = 0;
  bool has_targets = false;
  RouterLossOptions opts;
  std::vector<int32_t> inputs;
  std::vector<Real> rope_cs;  // [T][n_rot]: (cos, sin) pairs per position
  std::vector<LayerAct<Real>> layers;
  std::vector<Real> h_final, xnf, rstdf, logits;
  std::vector<std::vector<int64_t>> load;
};

template <typename Real>
MoeTransformer<Real>::MoeTransformer(const ModelSpec& spec, const ArchDescriptor& arch)
    : spec_(spec), arch_(arch), layout_(spec, arch), state_(new State) {
  const ModelSpec& s = spec_;
  // Features of the inference engine that the trainer does not implement: refuse rather than train
  // a model that inference would run differently.
  if (s.embedding_scale != 0.0f || s.residual_scale != 0.0f || s.logit_scale != 0.0f)
    fail("train: embedding/residual/logit scales are not supported by the trainer");
  if (s.qk_norm == QkNorm::Full) fail("train: full-projection q/k norm is not supported by the trainer");
  if (s.n_rot != s.head_dim) fail("train: partial rotary embeddings are not supported by the trainer");
  for (const LayerSpec& L : s.layers) {
    if (!L.is_moe) continue;
    if (L.moe.gating != Gating::Softmax) fail("train: only softmax gating is supported by the trainer");
    if (L.moe.n_group > 1) fail("train: group-limited routing is not supported by the trainer");
    if (L.moe.n_expert_used > 64) fail("train: top-k above 64 is not supported by the trainer");
    if (L.moe.n_shared > 0 && L.moe.shared_gate != SharedGate::None)
      fail("train: gated shared experts are not supported by the trainer");
  }
  params_.assign(layout_.total(), Real(0));
  grads_.assign(layout_.total(), Real(0));
  selection_bias_.resize(static_cast<size_t>(s.n_layer));
  for (int il = 0; il < s.n_layer; ++il)
    if (s.layers[il].is_moe) selection_bias_[il].assign(static_cast<size_t>(s.layers[il].moe.n_expert), Real(0));
}

template <typename Real>
MoeTransformer<Real>::~MoeTransformer() {
  delete state_;
}

template <typename Real>
const std::vector<Real>& MoeTransformer<Real>::logits() const {
  return state_->logits;
}

template <typename Real>
const std::vector<std::vector<int64_t>>& MoeTransformer<Real>::expert_load() const {
  return state_->load;
}

template <typename Real>
void MoeTransformer<Real>::init_params(uint64_t seed) {
  // Input projections get 1/sqrt(fan_in); projections that write into the residual stream are
  // further scaled by 1/sqrt(2 * n_layer) (GPT-2) so the stream's variance does not grow with depth.
  // The router starts small so early routing is near uniform and every expert receives tokens.
  const double depth_scale = 1.0 / std::sqrt(2.0 * spec_.n_layer);
  for (const ParamTensor& t : layout_.tensors()) {
    Real* p = params_.data() + t.offset;
    if (t.placement == Placement::Norm) {
      std::fill(p, p + t.size, Real(1));
      continue;
    }
    double sd = 1.0 / std::sqrt(static_cast<double>(t.dims[0]));
    switch (t.role) {
      case Role::TokenEmbd: sd = spec_.tied_output ? 1.0 / std::sqrt(static_cast<double>(spec_.n_embd)) : 0.02; break;
      case Role::AttnOut: case Role::FfnDown: case Role::ExpDown: case Role::ShexpDown: sd *= depth_scale; break;
      case Role::Router: sd = 0.02; break;
      default: break;
    }
    InitRng rng{hash_name(t.name, seed)};
    for (size_t i = 0; i < t.size; ++i) p[i] = static_cast<Real>(sd * rng.normal());
  }
}

template <typename Real>
LossBreakdown MoeTransformer<Real>::forward(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t T,
                                            const RouterLossOptions& opts, ThreadPool* pool) {
  State& S = *state_;
  const ModelSpec& s = spec_;
  const int64_t N = B * T, d = s.n_embd, hd = s.head_dim, qd = s.q_dim(), kvd = s.kv_dim(), V = s.n_vocab;
  const bool neox = s.rope_style == RopeStyle::Neox;
  S.B = B;
  S.T = T;
  S.N = N;
  S.has_targets = targets != nullptr;
  S.opts = opts;
  S.inputs.assign(inputs, inputs + N);
  S.layers.resize(static_cast<size_t>(s.n_layer));
  S.load.assign(static_cast<size_t>(s.n_layer), {});
  LossBreakdown loss;

  // Rope angles from the inference kernel itself, so positions match it bit for bit.
  S.rope_cs.resize(static_cast<size_t>(T * s.n_rot));
  std::vector<float> cs(static_cast<size_t>(s.n_rot));
  for (int64_t t = 0; t < T; ++t) {
    kernels::rope_angles(cs.data(), s.n_rot, t, s.rope_base, s.rope_freq_scale);
    for (int64_t i = 0; i < s.n_rot; ++i) S.rope_cs[t * s.n_rot + i] = static_cast<Real>(cs[i]);
  }

  std::vector<Real> x(static_cast<size_t>(N * d));
  const Real* emb = param(Role::TokenEmbd, -1);
  for (int64_t n = 0; n < N; ++n) {
    const int32_t id = inputs[n];
    if (id < 0 || id >= V) fail("train: token id {} is outside the vocabulary [0, {})", id, V);
    std::copy(emb + id * d, emb + (id + 1) * d, x.begin() + n * d);
  }

  std::vector<Real> tmp(static_cast<size_t>(N * d));
  for (int il = 0; il < s.n_layer; ++il) {
    LayerAct<Real>& L = S.layers[il];
    const LayerSpec& LS = s.layers[il];
    auto W = [&](Role r) { return param(r, il); };

    // ---- attention ----
    L.h_in = x;
    L.xn1.resize(x.size());
    L.rstd1.resize(static_cast<size_t>(N));
    rmsnorm_forward(x.data(), W(Role::AttnNorm), L.xn1.data(), L.rstd1.data(), N, d, s.rms_eps);
    L.q_pre.resize(static_cast<size_t>(N * qd));
    L.k_pre.resize(static_cast<size_t>(N * kvd));
    L.v.resize(static_cast<size_t>(N * kvd));
    linear_forward(pool, L.xn1.data(), N, d, W(Role::AttnQ), qd, L.q_pre.data());
    linear_forward(pool, L.xn1.data(), N, d, W(Role::AttnK), kvd, L.k_pre.data());
    linear_forward(pool, L.xn1.data(), N, d, W(Role::AttnV), kvd, L.v.data());
    L.q = L.q_pre;
    L.k = L.k_pre;
    if (s.qk_norm == QkNorm::PerHead) {
      L.rstd_q.resize(static_cast<size_t>(N * s.n_head));
      L.rstd_k.resize(static_cast<size_t>(N * s.n_head_kv));
      rmsnorm_forward(L.q_pre.data(), W(Role::AttnQNorm), L.q.data(), L.rstd_q.data(), N * s.n_head, hd, s.rms_eps);
      rmsnorm_forward(L.k_pre.data(), W(Role::AttnKNorm), L.k.data(), L.rstd_k.data(), N * s.n_head_kv, hd, s.rms_eps);
    }
    for (int64_t n = 0; n < N; ++n) {
      const Real* c = S.rope_cs.data() + (n % T) * s.n_rot;
      for (int h = 0; h < s.n_head; ++h) rope_forward(L.q.data() + n * qd + h * hd, c, s.n_rot, neox);
      for (int h = 0; h < s.n_head_kv; ++h) rope_forward(L.k.data() + n * kvd + h * hd, c, s.n_rot, neox);
    }
    const AttnShape as{B, T, s.n_head, s.n_head_kv, hd, static_cast<double>(s.kq_scale())};
    L.P.resize(static_cast<size_t>(B * s.n_head * T * T));
    L.att.resize(static_cast<size_t>(N * qd));
    attention_forward(pool, as, L.q.data(), L.k.data(), L.v.data(), L.P.data(), L.att.data());
    linear_forward(pool, L.att.data(), N, qd, W(Role::AttnOut), d, tmp.data());
    for (size_t i = 0; i < x.size(); ++i) x[i] += tmp[i];

    // ---- feed-forward ----
    L.h_mid = x;
    L.xn2.resize(x.size());
    L.rstd2.resize(static_cast<size_t>(N));
    rmsnorm_forward(x.data(), W(Role::FfnNorm), L.xn2.data(), L.rstd2.data(), N, d, s.rms_eps);
    if (!LS.is_moe) {
      const int64_t ff = LS.n_ff_dense;
      L.fa.resize(static_cast<size_t>(N * ff));
      L.fu.resize(L.fa.size());
      L.fh.resize(L.fa.size());
      mlp_forward(pool, L.xn2.data(), N, d, W(Role::FfnGate), W(Role::FfnUp), W(Role::FfnDown), ff, L.fa.data(),
                  L.fu.data(), L.fh.data(), tmp.data());
      for (size_t i = 0; i < x.size(); ++i) x[i] += tmp[i];
      continue;
    }
    const MoeSpec& ms = LS.moe;
    const int E = ms.n_expert, k = ms.n_expert_used;
    const int64_t ff = ms.n_ff_exp;
    L.probs.resize(static_cast<size_t>(N * E));
    L.lse.resize(static_cast<size_t>(N));
    L.ids.resize(static_cast<size_t>(N * k));
    L.w.resize(static_cast<size_t>(N * k));
    L.renorm_sum.assign(static_cast<size_t>(N), Real(1));
    linear_forward(pool, L.xn2.data(), N, d, W(Role::Router), E, L.probs.data());
    const std::vector<Real>& bias = selection_bias_[il];
    std::vector<double> sel(static_cast<size_t>(E));
    std::vector<int32_t> scratch;
    std::vector<int64_t>& load = S.load[il];
    load.assign(static_cast<size_t>(E), 0);
    for (int64_t n = 0; n < N; ++n) {
      Real* p = L.probs.data() + n * E;
      L.lse[n] = softmax_row(p, E);
      // The inference router adds the bias to the float probabilities; do the same in Real.
      for (int e = 0; e < E; ++e) sel[e] = static_cast<double>(p[e] + bias[e]);
      int32_t* ids = L.ids.data() + n * k;
      Real* w = L.w.data() + n * k;
      top_k_indices(sel.data(), E, k, ids, scratch);
      for (int j = 0; j < k; ++j) {
        w[j] = p[ids[j]];
        ++load[ids[j]];
      }
      if (ms.norm_topk) {
        // The sum of the k largest of E probabilities is >= k/E, far above the inference clamp
        // (6.1e-5), so the clamp never binds and needs no gradient.
        Real sum = 0;
        for (int j = 0; j < k; ++j) sum += w[j];
        sum = std::max(sum, static_cast<Real>(6.103515625e-5));
        L.renorm_sum[n] = sum;
        for (int j = 0; j < k; ++j) w[j] /= sum;
      }
      if (ms.route_scale != 1.0f)
        for (int j = 0; j < k; ++j) w[j] *= static_cast<Real>(ms.route_scale);
    }
    // Group assignments by expert (counting sort keeps ascending token order within an expert).
    L.expert_begin.assign(static_cast<size_t>(E + 1), 0);
    for (int e = 0; e < E; ++e) L.expert_begin[e + 1] = L.expert_begin[e] + load[e];
    const int64_t A = N * k;
    L.assign_token.resize(static_cast<size_t>(A));
    L.slot_row.resize(static_cast<size_t>(A));
    L.ex.resize(static_cast<size_t>(A * d));
    {
      std::vector<int64_t> cursor(L.expert_begin.begin(), L.expert_begin.end() - 1);
      for (int64_t n = 0; n < N; ++n)
        for (int j = 0; j < k; ++j) {
          const int64_t row = cursor[L.ids[n * k + j]]++;
          L.assign_token[row] = static_cast<int32_t>(n);
          L.slot_row[n * k + j] = row;
          std::copy(L.xn2.begin() + n * d, L.xn2.begin() + (n + 1) * d, L.ex.begin() + row * d);
        }
    }
    L.ea.resize(static_cast<size_t>(A * ff));
    L.eu.resize(L.ea.size());
    L.eh.resize(L.ea.size());
    L.ey.resize(static_cast<size_t>(A * d));
    const Real* Wg = W(Role::ExpGate);
    const Real* Wu = W(Role::ExpUp);
    const Real* Wd = W(Role::ExpDown);
    // Experts are independent: one expert per work item, each computed single-threaded.
    parallel_chunks(pool, E, 1, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) {
        const int64_t r0 = L.expert_begin[e], ne = L.expert_begin[e + 1] - r0;
        if (ne == 0) continue;
        mlp_forward<Real>(nullptr, L.ex.data() + r0 * d, ne, d, Wg + e * ff * d, Wu + e * ff * d, Wd + e * d * ff, ff,
                          L.ea.data() + r0 * ff, L.eu.data() + r0 * ff, L.eh.data() + r0 * ff, L.ey.data() + r0 * d);
      }
    });
    for (int64_t n = 0; n < N; ++n) {
      Real* o = tmp.data() + n * d;
      std::fill(o, o + d, Real(0));
      for (int j = 0; j < k; ++j) axpy(o, L.w[n * k + j], L.ey.data() + L.slot_row[n * k + j] * d, d);
    }
    if (ms.n_shared > 0) {
      const int64_t fs = ms.n_ff_shexp;
      L.fa.resize(static_cast<size_t>(N * fs));
      L.fu.resize(L.fa.size());
      L.fh.resize(L.fa.size());
      std::vector<Real> sh(static_cast<size_t>(N * d));
      mlp_forward(pool, L.xn2.data(), N, d, W(Role::ShexpGate), W(Role::ShexpUp), W(Role::ShexpDown), fs, L.fa.data(),
                  L.fu.data(), L.fh.data(), sh.data());
      for (size_t i = 0; i < sh.size(); ++i) tmp[i] += sh[i];
    }
    for (size_t i = 0; i < x.size(); ++i) x[i] += tmp[i];

    // Router losses (values; their gradients are formed in backward()).
    L.load_frac.assign(static_cast<size_t>(E), Real(0));
    for (int e = 0; e < E; ++e) L.load_frac[e] = static_cast<Real>(static_cast<double>(load[e]) / static_cast<double>(A));
    if (opts.load_balance_coef != 0.0) {
      double acc = 0;
      for (int e = 0; e < E; ++e) {
        double pe = 0;
        for (int64_t n = 0; n < N; ++n) pe += L.probs[n * E + e];
        acc += static_cast<double>(L.load_frac[e]) * pe / static_cast<double>(N);
      }
      loss.balance += opts.load_balance_coef * E * acc;
    }
    if (opts.z_loss_coef != 0.0) {
      double acc = 0;
      for (int64_t n = 0; n < N; ++n) acc += static_cast<double>(L.lse[n]) * L.lse[n];
      loss.z += opts.z_loss_coef * acc / static_cast<double>(N);
    }
  }

  S.h_final = x;
  S.xnf.resize(x.size());
  S.rstdf.resize(static_cast<size_t>(N));
  rmsnorm_forward(x.data(), param(Role::OutputNorm, -1), S.xnf.data(), S.rstdf.data(), N, d, s.rms_eps);
  S.logits.resize(static_cast<size_t>(N * V));
  const Real* w_out = s.tied_output ? param(Role::TokenEmbd, -1) : param(Role::Output, -1);
  linear_forward(pool, S.xnf.data(), N, d, w_out, V, S.logits.data());
  if (targets) loss.ce = cross_entropy_inplace(pool, S.logits.data(), targets, N, V);
  return loss;
}

template <typename Real>
void MoeTransformer<Real>::backward(ThreadPool* pool) {
  State& S = *state_;
  if (!S.has_targets) fail("train: backward() needs a forward pass with targets");
  const ModelSpec& s = spec_;
  const int64_t B = S.B, T = S.T, N = S.N, d = s.n_embd, hd = s.head_dim, qd = s.q_dim(), kvd = s.kv_dim(),
                V = s.n_vocab;
  const bool neox = s.rope_style == RopeStyle::Neox;
  auto G = [&](Role r, int il) { return grads_.data() + layout_.get(r, il).offset; };

  // Output projection and final norm. S.logits already holds d(loss)/d(logits).
  std::vector<Real> dxnf(static_cast<size_t>(N * d), Real(0));
  const Role out_role = s.tied_output ? Role::TokenEmbd : Role::Output;
  linear_backward(pool, S.xnf.data(), N, d, param(out_role, -1), V, S.logits.data(), dxnf.data(), G(out_role, -1));
  std::vector<Real> dx(static_cast<size_t>(N * d), Real(0));  // gradient w.r.t. the residual stream
  rmsnorm_backward(S.h_final.data(), param(Role::OutputNorm, -1), S.rstdf.data(), dxnf.data(), dx.data(),
                   G(Role::OutputNorm, -1), N, d);

  std::vector<Real> dxn(static_cast<size_t>(N * d));
  for (int il = s.n_layer - 1; il >= 0; --il) {
    LayerAct<Real>& L = S.layers[il];
    const LayerSpec& LS = s.layers[il];
    auto W = [&](Role r) { return param(r, il); };
    auto GW = [&](Role r) { return G(r, il); };

    // ---- feed-forward: x_out = h_mid + ffn(norm(h_mid)); dx is d/dx_out ----
    std::fill(dxn.begin(), dxn.end(), Real(0));
    if (!LS.is_moe) {
      mlp_backward(pool, L.xn2.data(), N, d, W(Role::FfnGate), W(Role::FfnUp), W(Role::FfnDown), LS.n_ff_dense,
                   L.fa.data(), L.fu.data(), L.fh.data(), dx.data(), dxn.data(), GW(Role::FfnGate), GW(Role::FfnUp),
                   GW(Role::FfnDown));
    } else {
      const MoeSpec& ms = LS.moe;
      const int E = ms.n_expert, k = ms.n_expert_used;
      const int64_t ff = ms.n_ff_exp, A = N * k;
      if (ms.n_shared > 0)
        mlp_backward(pool, L.xn2.data(), N, d, W(Role::ShexpGate), W(Role::ShexpUp), W(Role::ShexpDown), ms.n_ff_shexp,
                     L.fa.data(), L.fu.data(), L.fh.data(), dx.data(), dxn.data(), GW(Role::ShexpGate),
                     GW(Role::ShexpUp), GW(Role::ShexpDown));
      // out[t] = sum_j w_tj * y_row(t,j): gradients for the weights and for each expert output.
      std::vector<Real> dw(static_cast<size_t>(A)), dey(static_cast<size_t>(A * d));
      parallel_chunks(pool, N, 16, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n)
          for (int j = 0; j < k; ++j) {
            const int64_t row = L.slot_row[n * k + j];
            dw[n * k + j] = dot(dx.data() + n * d, L.ey.data() + row * d, d);
            const Real wj = L.w[n * k + j];
            for (int64_t i = 0; i < d; ++i) dey[row * d + i] = wj * dx[n * d + i];
          }
      });
      if (expert_grad_hook_)
        for (int e = 0; e < E; ++e) {
          const int64_t r0 = L.expert_begin[e], ne = L.expert_begin[e + 1] - r0;
          if (ne > 0) expert_grad_hook_(il, e, ne, L.eh.data() + r0 * ff, dey.data() + r0 * d);
        }
      std::vector<Real> dex(static_cast<size_t>(A * d), Real(0));
      const Real* Wg = W(Role::ExpGate);
      const Real* Wu = W(Role::ExpUp);
      const Real* Wd = W(Role::ExpDown);
      Real* dWg = GW(Role::ExpGate);
      Real* dWu = GW(Role::ExpUp);
      Real* dWd = GW(Role::ExpDown);
      parallel_chunks(pool, E, 1, [&](int64_t e0, int64_t e1) {
        for (int64_t e = e0; e < e1; ++e) {
          const int64_t r0 = L.expert_begin[e], ne = L.expert_begin[e + 1] - r0;
          if (ne == 0) continue;
          mlp_backward<Real>(nullptr, L.ex.data() + r0 * d, ne, d, Wg + e * ff * d, Wu + e * ff * d, Wd + e * d * ff,
                             ff, L.ea.data() + r0 * ff, L.eu.data() + r0 * ff, L.eh.data() + r0 * ff,
                             dey.data() + r0 * d, dex.data() + r0 * d, dWg + e * ff * d, dWu + e * ff * d,
                             dWd + e * d * ff);
        }
      });
      for (int64_t n = 0; n < N; ++n)
        for (int j = 0; j < k; ++j) axpy(dxn.data() + n * d, Real(1), dex.data() + L.slot_row[n * k + j] * d, d);

      // Router: weights -> selected probabilities -> softmax -> logits, plus the router losses.
      std::vector<Real> dz(static_cast<size_t>(N * E), Real(0));
      const double lb = S.opts.load_balance_coef, zc = S.opts.z_loss_coef;
      parallel_chunks(pool, N, 16, [&](int64_t n0, int64_t n1) {
        std::vector<Real> dp(static_cast<size_t>(E));
        for (int64_t n = n0; n < n1; ++n) {
          const Real* p = L.probs.data() + n * E;
          std::fill(dp.begin(), dp.end(), Real(0));
          const int32_t* ids = L.ids.data() + n * k;
          Real g[64];
          for (int j = 0; j < k; ++j) g[j] = dw[n * k + j] * static_cast<Real>(ms.route_scale);
          if (ms.norm_topk) {
            // w_j = u_j / S with S = sum_i u_i: du_i = g_i / S - sum_j g_j u_j / S^2.
            const Real Ssum = L.renorm_sum[n];
            Real gu = 0;
            for (int j = 0; j < k; ++j) gu += g[j] * p[ids[j]];
            for (int j = 0; j < k; ++j) dp[ids[j]] += g[j] / Ssum - gu / (Ssum * Ssum);
          } else {
            for (int j = 0; j < k; ++j) dp[ids[j]] += g[j];
          }
          if (lb != 0.0)  // d/dp_te of coef * E * sum_e f_e * mean_t p_te (f_e is piecewise constant)
            for (int e = 0; e < E; ++e) dp[e] += static_cast<Real>(lb * E / static_cast<double>(N)) * L.load_frac[e];
          Real* dzn = dz.data() + n * E;
          softmax_backward_row(p, dp.data(), dzn, E);
          if (zc != 0.0) {
            const Real c = static_cast<Real>(2.0 * zc / static_cast<double>(N)) * L.lse[n];
            for (int e = 0; e < E; ++e) dzn[e] += c * p[e];
          }
        }
      });
      linear_backward(pool, L.xn2.data(), N, d, W(Role::Router), E, dz.data(), dxn.data(), GW(Role::Router));
    }
    rmsnorm_backward(L.h_mid.data(), W(Role::FfnNorm), L.rstd2.data(), dxn.data(), dx.data(), GW(Role::FfnNorm), N, d);

    // ---- attention: h_mid = h_in + Wo * attn(norm(h_in)) ----
    std::vector<Real> datt(static_cast<size_t>(N * qd), Real(0));
    linear_backward(pool, L.att.data(), N, qd, W(Role::AttnOut), d, dx.data(), datt.data(), GW(Role::AttnOut));
    std::vector<Real> dq(static_cast<size_t>(N * qd), Real(0)), dk(static_cast<size_t>(N * kvd), Real(0)),
        dv(static_cast<size_t>(N * kvd), Real(0));
    const AttnShape as{B, T, s.n_head, s.n_head_kv, hd, static_cast<double>(s.kq_scale())};
    attention_backward(pool, as, L.q.data(), L.k.data(), L.v.data(), L.P.data(), L.att.data(), datt.data(), dq.data(),
                       dk.data(), dv.data());
    for (int64_t n = 0; n < N; ++n) {
      const Real* c = S.rope_cs.data() + (n % T) * s.n_rot;
      for (int h = 0; h < s.n_head; ++h) rope_backward(dq.data() + n * qd + h * hd, c, s.n_rot, neox);
      for (int h = 0; h < s.n_head_kv; ++h) rope_backward(dk.data() + n * kvd + h * hd, c, s.n_rot, neox);
    }
    if (s.qk_norm == QkNorm::PerHead) {
      std::vector<Real> dq_pre(dq.size(), Real(0)), dk_pre(dk.size(), Real(0));
      rmsnorm_backward(L.q_pre.data(), W(Role::AttnQNorm), L.rstd_q.data(), dq.data(), dq_pre.data(),
                       GW(Role::AttnQNorm), N * s.n_head, hd);
      rmsnorm_backward(L.k_pre.data(), W(Role::AttnKNorm), L.rstd_k.data(), dk.data(), dk_pre.data(),
                       GW(Role::AttnKNorm), N * s.n_head_kv, hd);
      dq.swap(dq_pre);
      dk.swap(dk_pre);
    }
    std::fill(dxn.begin(), dxn.end(), Real(0));
    linear_backward(pool, L.xn1.data(), N, d, W(Role::AttnQ), qd, dq.data(), dxn.data(), GW(Role::AttnQ));
    linear_backward(pool, L.xn1.data(), N, d, W(Role::AttnK), kvd, dk.data(), dxn.data(), GW(Role::AttnK));
    linear_backward(pool, L.xn1.data(), N, d, W(Role::AttnV), kvd, dv.data(), dxn.data(), GW(Role::AttnV));
    rmsnorm_backward(L.h_in.data(), W(Role::AttnNorm), L.rstd1.data(), dxn.data(), dx.data(), GW(Role::AttnNorm), N, d);
  }

  // Embedding rows, in token order (a fixed order: deterministic).
  Real* demb = G(Role::TokenEmbd, -1);
  for (int64_t n = 0; n < N; ++n) axpy(demb + static_cast<int64_t>(S.inputs[n]) * d, Real(1), dx.data() + n * d, d);
}

template class MoeTransformer<float>;
template class MoeTransformer<double>;

}  // namespace moe::train
