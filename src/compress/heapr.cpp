#include "compress/heapr.h"

#include <cblas.h>

#include <algorithm>

#include "base/error.h"
#include "format/gguf.h"
#include "model/arch.h"
#include "train/train_model.h"

namespace moe::compress {

void add_heapr_scores(CalibStats& stats, const std::string& model_path,
                      const std::vector<std::vector<int32_t>>& windows, ThreadPool& pool,
                      const std::function<void(double, const std::string&)>& progress) {
  auto f = gguf::File::open(model_path, gguf::DataAccess::Pread);
  const ArchDescriptor* arch = find_arch(f->get_string("general.architecture"));
  if (!arch) fail("{}: unknown architecture", model_path);
  const ModelSpec spec = load_model_spec(*f, *arch);
  std::unique_ptr<train::MoeTransformer<float>> net;
  try {
    net = std::make_unique<train::MoeTransformer<float>>(spec, *arch);
  } catch (const Error& e) {
    fail("--heapr: {}: HEAPr needs the trainer's backward pass, which does not cover this model ({})", model_path,
         e.what());
  }
  // The model's weights, dequantized into the trainer's flat parameter array.
  std::vector<uint8_t> raw;
  for (const train::ParamTensor& t : net->layout().tensors()) {
    const gguf::TensorInfo* ti = f->find_tensor(t.name);
    if (!ti) fail("{}: tensor '{}' is missing", model_path, t.name);
    if (ti->n_elements() != static_cast<int64_t>(t.size))
      fail("{}: tensor '{}': {} elements, the trainer expects {}", model_path, t.name, ti->n_elements(), t.size);
    raw.resize(static_cast<size_t>(ti->nbytes));
    f->read_tensor_bytes(*ti, 0, ti->nbytes, raw.data());
    const int64_t cols = ti->dims[0], rows = ti->n_rows();
    const size_t rb = row_bytes(ti->type, cols);
    float* dst = net->params().data() + t.offset;
    for (int64_t r = 0; r < rows; ++r) dequantize_row(ti->type, raw.data() + r * rb, dst + r * cols, cols);
  }
  for (int il = 0; il < spec.n_layer; ++il) {
    std::vector<float>& b = net->selection_bias()[il];
    if (b.empty()) continue;
    char name[64];
    std::snprintf(name, sizeof name, "blk.%d.exp_probs_b.bias", il);
    if (const gguf::TensorInfo* ti = f->find_tensor(name)) f->read_tensor_bytes(*ti, 0, b.size() * sizeof(float), b.data());
  }

  // Per MoE layer and expert: sum of u^2 and of (W_down^T g)^2 per neuron, and the token count.
  const int64_t d = spec.n_embd;
  struct Acc {
    std::vector<double> u2, v2, n;
  };
  std::vector<Acc> acc(static_cast<size_t>(spec.n_layer));
  for (const LayerStats& ls : stats.layers) {
    Acc& a = acc[static_cast<size_t>(ls.layer)];
    a.u2.assign(static_cast<size_t>(ls.n_expert * ls.n_ff), 0.0);
    a.v2.assign(a.u2.size(), 0.0);
    a.n.assign(static_cast<size_t>(ls.n_expert), 0.0);
  }
  double grad_scale = 1;  // the loss is a mean over the window's tokens: undo it for per-token gradients
  std::vector<float> V;
  net->set_expert_grad_hook([&](int layer, int expert, int64_t n, const float* u, const float* g) {
    Acc& a = acc[static_cast<size_t>(layer)];
    if (a.n.empty()) return;
    const int64_t ff = spec.layers[layer].moe.n_ff_exp;
    const float* Wd = net->param(Role::ExpDown, layer) + static_cast<size_t>(expert) * static_cast<size_t>(d * ff);
    V.resize(static_cast<size_t>(n * ff));
    // V[t][j] = sum_i g[t][i] * Wd[i][j] = w_j . g_t
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(n), static_cast<int>(ff),
                static_cast<int>(d), 1.0f, g, static_cast<int>(d), Wd, static_cast<int>(ff), 0.0f, V.data(),
                static_cast<int>(ff));
    double* u2 = a.u2.data() + expert * ff;
    double* v2 = a.v2.data() + expert * ff;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < ff; ++j) {
        const double uu = u[t * ff + j], vv = V[t * ff + j] * grad_scale;
        u2[j] += uu * uu;
        v2[j] += vv * vv;
      }
    a.n[expert] += static_cast<double>(n);
  });
  train::RouterLossOptions no_router_loss;
  uint64_t tokens = 0;
  for (size_t w = 0; w < windows.size(); ++w) {
    const std::vector<int32_t>& win = windows[w];
    if (win.size() < 2) continue;
    const int64_t T = static_cast<int64_t>(win.size()) - 1;
    grad_scale = static_cast<double>(T);
    net->forward(win.data(), win.data() + 1, 1, T, no_router_loss, &pool);
    std::fill(net->grads().begin(), net->grads().end(), 0.0f);
    net->backward(&pool);
    tokens += static_cast<uint64_t>(T);
    if (progress) progress(static_cast<double>(w + 1) / static_cast<double>(windows.size()), "HEAPr backward passes");
  }
  if (tokens == 0) fail("--heapr: no window of at least 2 tokens");
  for (LayerStats& ls : stats.layers) {
    const Acc& a = acc[static_cast<size_t>(ls.layer)];
    ls.heapr.assign(a.u2.size(), 0.0);
    for (int e = 0; e < ls.n_expert; ++e) {
      if (a.n[e] == 0) continue;
      for (int64_t j = 0; j < ls.n_ff; ++j) {
        const size_t i = static_cast<size_t>(e * ls.n_ff + j);
        ls.heapr[i] = (a.u2[i] / a.n[e]) * (a.v2[i] / a.n[e]);
      }
    }
  }
  stats.heapr_tokens = tokens;
}

}  // namespace moe::compress
