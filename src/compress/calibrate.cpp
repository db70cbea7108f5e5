#include "compress/calibrate.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "base/error.h"
#include "compress/quant_mix.h"
#include "format/gguf.h"
#include "model/lowbit_experts.h"

namespace moe::compress {

namespace {

double norm2(const float* v, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(v[i]) * v[i];
  return s;
}

}  // namespace

CalibrationObserver::CalibrationObserver(const Model& model, const std::vector<std::string>& labels,
                                         const CalibrateOptions& o)
    : model_(model), opts_(o), rng_(o.seed) {
  const ModelSpec& s = model.spec();
  stats_.arch = s.arch;
  stats_.model_file = std::filesystem::path(model.file().path()).filename().string();
  stats_.fingerprint = low_bit_base(model).fingerprint;
  stats_.n_layer = s.n_layer;
  stats_.n_embd = s.n_embd;
  stats_.labels = labels;
  stats_.label_tokens.assign(labels.size(), 0.0);
  stats_.tcess_k = o.tcess_k;
  stats_.recon_types = o.recon_types;
  stats_.recon_tokens = static_cast<uint64_t>(o.recon_tokens);
  layer_slot_.assign(static_cast<size_t>(s.n_layer), -1);
  for (int il = 0; il < s.n_layer; ++il) {
    const LayerSpec& L = s.layers[il];
    if (!L.is_moe) continue;
    layer_slot_[il] = static_cast<int>(stats_.layers.size());
    LayerStats ls;
    ls.init(il, L.moe.n_expert, L.moe.n_ff_exp, labels.size(), o.recon_types.size());
    stats_.layers.push_back(std::move(ls));
    Sample smp;
    smp.k = L.moe.n_expert_used;
    samples_.push_back(std::move(smp));
    // About recon_tokens tokens per expert: each sampled token feeds k experts.
    const size_t cap = o.recon_types.empty()
                           ? 0
                           : static_cast<size_t>(std::max<int64_t>(
                                 1, static_cast<int64_t>(o.recon_tokens) * L.moe.n_expert / std::max(1, L.moe.n_expert_used)));
    reservoir_cap_.push_back(cap);
  }
  if (stats_.layers.empty()) fail("{}: the model has no MoE layers to calibrate", model.file().path());
}

size_t CalibrationObserver::layer_index(int layer) const {
  if (layer < 0 || layer >= static_cast<int>(layer_slot_.size()) || layer_slot_[layer] < 0)
    fail("calibrate: layer {} is not a MoE layer", layer);
  return static_cast<size_t>(layer_slot_[layer]);
}

ObserverNeeds CalibrationObserver::needs() const {
  ObserverNeeds n;
  n.router_logits = true;
  n.expert_outputs = true;
  n.moe_io = true;
  return n;
}

void CalibrationObserver::on_routing(const MoeLayerRouting& r) {
  const size_t li = layer_index(r.layer);
  LayerStats& ls = stats_.layers[li];
  const Routing& rt = *r.routing;
  const int64_t T = rt.n_tokens, d = r.n_embd;
  const int E = r.n_expert, k = rt.k;
  if (E != ls.n_expert) fail("calibrate: layer {} reports {} experts, expected {}", r.layer, E, ls.n_expert);
  cur_layer_ = r.layer;
  cur_tokens_ = T;
  cur_k_ = k;
  ids_.assign(rt.ids.begin(), rt.ids.end());
  w_.assign(rt.weights.begin(), rt.weights.end());
  g_.assign(static_cast<size_t>(T * k), 0.0f);
  easy_.assign(static_cast<size_t>(T * k), 0.0f);
  residual_.assign(r.residual, r.residual + T * d);
  if (r.layer == stats_.layers.front().layer) {
    stats_.tokens += static_cast<uint64_t>(T);
    if (!stats_.labels.empty()) stats_.label_tokens[label_] += static_cast<double>(T);
  }
  std::vector<int> top(static_cast<size_t>(stats_.tcess_k));
  for (int64_t t = 0; t < T; ++t) {
    // REAP's g: the gate weights renormalized over the token's selected experts. Taken from the final routing
    // weights (not the scores, which are raw logits for softmax-over-selected gates such as gpt-oss's): the
    // renormalization removes any routed scaling factor, and for softmax or sigmoid gates it equals the
    // renormalized scores.
    double sum = 0;
    for (int j = 0; j < k; ++j)
      if (rt.id(t, j) >= 0) sum += std::max(0.0f, rt.weight(t, j));
    for (int j = 0; j < k; ++j) {
      const int e = rt.id(t, j);
      if (e < 0) continue;
      ls.count[e] += 1;
      ls.weight_sum[e] += rt.weight(t, j);
      g_[static_cast<size_t>(t * k + j)] = sum > 0 ? static_cast<float>(std::max(0.0f, rt.weight(t, j)) / sum) : 0.0f;
    }
    // M-SMoE's similarity: the Gram matrix of router-logit columns.
    const float* z = r.logits + t * E;
    for (int a = 0; a < E; ++a) {
      const double za = z[a];
      double* row = ls.logit_gram.data() + static_cast<size_t>(a) * E;
      for (int b = 0; b < E; ++b) row[b] += za * z[b];
    }
    // TCESS: the token's top-k' logits, others zero.
    if (!stats_.labels.empty()) {
      const int kk = std::min(stats_.tcess_k, E);
      std::vector<int> order(static_cast<size_t>(E));
      for (int e = 0; e < E; ++e) order[e] = e;
      std::partial_sort(order.begin(), order.begin() + kk, order.end(),
                        [&](int a, int b) { return z[a] > z[b] || (z[a] == z[b] && a < b); });
      double* pat = ls.tcess.data() + label_ * static_cast<size_t>(E);
      for (int j = 0; j < kk; ++j) pat[order[j]] += z[order[j]];
    }
    // Reservoir of token inputs for the reconstruction errors.
    Sample& smp = samples_[li];
    const size_t cap = reservoir_cap_[li];
    if (cap == 0) continue;
    ++smp.seen;
    size_t slot;
    if (smp.n() < cap) {
      slot = smp.n();
      smp.x.resize((slot + 1) * static_cast<size_t>(d));
      smp.ids.resize((slot + 1) * static_cast<size_t>(k));
      smp.weights.resize((slot + 1) * static_cast<size_t>(k));
    } else {
      const uint64_t j = rng_() % smp.seen;
      if (j >= cap) continue;
      slot = static_cast<size_t>(j);
    }
    std::copy(r.input + t * d, r.input + (t + 1) * d, smp.x.begin() + static_cast<int64_t>(slot) * d);
    for (int j = 0; j < k; ++j) {
      smp.ids[slot * k + j] = rt.id(t, j);
      smp.weights[slot * k + j] = rt.weight(t, j);
    }
  }
}

void CalibrationObserver::on_expert_output(const ExpertOutputs& out) {
  if (out.layer != cur_layer_) fail("calibrate: expert output of layer {} during layer {}", out.layer, cur_layer_);
  LayerStats& ls = stats_.layers[layer_index(out.layer)];
  const int e = out.expert;
  for (int64_t i = 0; i < out.n_rows; ++i) {
    const float* row = out.rows + i * out.n_embd;
    const double nrm = std::sqrt(norm2(row, out.n_embd));
    float mx = 0;
    for (int64_t c = 0; c < out.n_embd; ++c) mx = std::max(mx, std::fabs(row[c]));
    ls.max_out[e] = std::max(ls.max_out[e], static_cast<double>(mx));
    ls.out_norm[e] += nrm;
    const size_t at = static_cast<size_t>(out.token[i]) * static_cast<size_t>(cur_k_) + static_cast<size_t>(out.slot[i]);
    ls.reap[e] += static_cast<double>(g_[at]) * nrm;
    easy_[at] = static_cast<float>(static_cast<double>(w_[at]) * nrm);
  }
}

void CalibrationObserver::on_moe_output(const MoeLayerOutput& out) {
  LayerStats& ls = stats_.layers[layer_index(out.layer)];
  const int64_t d = out.n_embd;
  for (int64_t t = 0; t < cur_tokens_; ++t) {
    // EASY-EP: how much the routed experts turn the residual stream, max(0, 1 - cos(h, h + r)).
    const float* h = residual_.data() + t * d;
    const float* r = out.routed + t * d;
    double hh = 0, hs = 0, ss = 0;
    for (int64_t c = 0; c < d; ++c) {
      const double s = static_cast<double>(h[c]) + r[c];
      hh += static_cast<double>(h[c]) * h[c];
      hs += static_cast<double>(h[c]) * s;
      ss += s * s;
    }
    const double cosv = (hh > 0 && ss > 0) ? hs / std::sqrt(hh * ss) : 1.0;
    const double turn = std::max(0.0, 1.0 - cosv);
    for (int j = 0; j < cur_k_; ++j) {
      const int e = ids_[static_cast<size_t>(t * cur_k_ + j)];
      if (e >= 0) ls.easy_ep[e] += static_cast<double>(easy_[static_cast<size_t>(t * cur_k_ + j)]) * turn;
    }
  }
}

void expert_ffn_f32(const float* X, int64_t n, int64_t d, int64_t ff, const float* Wg, const float* Wu,
                    const float* Wd, float* Y, float* scratch) {
  float* A = scratch;
  float* U = scratch + n * ff;
  const int in = static_cast<int>(n), id = static_cast<int>(d), iff = static_cast<int>(ff);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, in, iff, id, 1.0f, X, id, Wg, id, 0.0f, A, iff);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, in, iff, id, 1.0f, X, id, Wu, id, 0.0f, U, iff);
  for (int64_t i = 0; i < n * ff; ++i) A[i] = A[i] / (1.0f + std::exp(-A[i])) * U[i];
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, in, id, iff, 1.0f, A, iff, Wd, iff, 0.0f, Y, id);
}

ExpertF32 read_expert_f32(const gguf::File& f, const Model& model, int layer, int expert) {
  ExpertF32 out;
  const Role roles[3] = {Role::ExpGate, Role::ExpUp, Role::ExpDown};
  std::vector<float>* dst[3] = {&out.gate, &out.up, &out.down};
  std::vector<uint8_t> raw;
  for (int i = 0; i < 3; ++i) {
    const WeightView& v = model.layer(layer)[roles[i]];
    if (!v) fail("{}: layer {} has no {}", f.path(), layer, role_name(roles[i]));
    // The expert's own tensor in the per-expert layout, else its slice of the stacked one.
    const WeightView m = v.matrix(expert);
    const gguf::TensorInfo* t = f.find_tensor(m.info->name);
    if (!t) fail("{}: tensor '{}' is missing", f.path(), m.info->name);
    const uint64_t mb = m.matrix_bytes();
    raw.resize(static_cast<size_t>(mb));
    f.read_tensor_bytes(*t, v.split ? 0 : static_cast<uint64_t>(expert) * mb, mb, raw.data());
    dst[i]->resize(static_cast<size_t>(v.rows * v.cols));
    const DType file_type = file_dtype(t->type);
    for (int64_t r = 0; r < v.rows; ++r)
      dequantize_row(file_type, raw.data() + static_cast<size_t>(r) * m.row_bytes, dst[i]->data() + r * v.cols, v.cols);
  }
  return out;
}

namespace {

// The matrix as it reads back after quantization to `type` (llama.cpp's fallback for rows it cannot hold).
std::vector<float> requantized(const std::vector<float>& w, int64_t rows, int64_t cols, DType type) {
  const DType t = fallback_type(type, cols);
  std::vector<uint8_t> q(row_bytes(t, cols));
  std::vector<float> out(w.size());
  const QuantizeFn quantize = storage_quantizer(t);
  for (int64_t r = 0; r < rows; ++r) {
    if (t == DType::F32) {
      std::copy(w.begin() + r * cols, w.begin() + (r + 1) * cols, out.begin() + r * cols);
      continue;
    }
    quantize(w.data() + r * cols, q.data(), cols);
    dequantize_row(t, q.data(), out.data() + r * cols, cols);
  }
  return out;
}

}  // namespace

void add_reconstruction_errors(CalibrationObserver& obs, const Model& model, ThreadPool& pool,
                               const CalibrateProgress& progress) {
  CalibStats& st = obs.stats();
  if (st.recon_types.empty()) return;
  auto f = gguf::File::open(model.file().path(), gguf::DataAccess::Pread);
  const int64_t d = model.spec().n_embd;
  size_t total = 0, done = 0;
  for (const LayerStats& ls : st.layers) total += static_cast<size_t>(ls.n_expert);
  for (size_t li = 0; li < st.layers.size(); ++li) {
    LayerStats& ls = st.layers[li];
    const CalibrationObserver::Sample& smp = obs.sample(li);
    const int64_t ff = ls.n_ff, E = ls.n_expert;
    const size_t C = st.recon_types.size();
    // Experts are independent: one per work item.
    pool.parallel_for(E, 1, [&](int64_t e0, int64_t e1, int) {
      for (int64_t e = e0; e < e1; ++e) {
        std::vector<float> X;
        for (size_t s = 0; s < smp.n(); ++s)
          for (int j = 0; j < smp.k; ++j)
            if (smp.ids[s * smp.k + j] == e) X.insert(X.end(), smp.x.begin() + s * d, smp.x.begin() + (s + 1) * d);
        const int64_t n = static_cast<int64_t>(X.size()) / d;
        ls.recon_n[e] = static_cast<double>(n);
        if (n == 0) continue;
        const ExpertF32 w = read_expert_f32(*f, model, ls.layer, static_cast<int>(e));
        std::vector<float> Y(static_cast<size_t>(n * d)), Yq(Y.size()), scratch(static_cast<size_t>(2 * n * ff));
        expert_ffn_f32(X.data(), n, d, ff, w.gate.data(), w.up.data(), w.down.data(), Y.data(), scratch.data());
        ls.recon_ref[e] = norm2(Y.data(), n * d) / static_cast<double>(n);
        for (size_t c = 0; c < C; ++c) {
          const std::vector<float> qg = requantized(w.gate, ff, d, st.recon_types[c]);
          const std::vector<float> qu = requantized(w.up, ff, d, st.recon_types[c]);
          const std::vector<float> qd = requantized(w.down, d, ff, st.recon_types[c]);
          const float* parts[kReconParts][3] = {{qg.data(), w.up.data(), w.down.data()},
                                                {w.gate.data(), qu.data(), w.down.data()},
                                                {w.gate.data(), w.up.data(), qd.data()},
                                                {qg.data(), qu.data(), qd.data()}};
          for (int p = 0; p < kReconParts; ++p) {
            expert_ffn_f32(X.data(), n, d, ff, parts[p][0], parts[p][1], parts[p][2], Yq.data(), scratch.data());
            double err = 0;
            for (size_t i = 0; i < Y.size(); ++i) err += (static_cast<double>(Yq[i]) - Y[i]) * (static_cast<double>(Yq[i]) - Y[i]);
            ls.recon[(c * kReconParts + static_cast<size_t>(p)) * static_cast<size_t>(E) + static_cast<size_t>(e)] =
                err / static_cast<double>(n);
          }
        }
      }
    });
    done += static_cast<size_t>(E);
    if (progress)
      progress(static_cast<double>(done) / static_cast<double>(total), "reconstruction, layer " + std::to_string(ls.layer));
  }
}

}  // namespace moe::compress
