#include "train/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "base/error.h"
#include "format/gguf.h"
#include "tensor/fp16.h"
#include "train/train_ops.h"

namespace moe::train {

ShapeOptions preset_shape(const std::string& preset) {
  ShapeOptions s;
  s.preset = preset;
  if (preset == "qwen3moe") {
    // Routed experts only: 8 experts of width 256, top-2, renormalized (the arch hook sets norm_topk).
    s.n_expert = 8;
    s.n_expert_used = 2;
    s.n_ff_exp = 256;
  } else if (preset == "qwen3") {
    // The dense baseline: qwen3moe's attention, and one FFN as wide as qwen3moe's k active experts
    // together (2 x 256), so it has the same active parameters per token.
    s.n_expert = 0;
    s.n_expert_used = 0;
    s.n_ff_dense = 512;
  } else if (preset == "deepseek") {
    // DeepSeekMoE: one dense layer first, then fine-grained experts (16 of width 128, top-4) plus two
    // always-on shared experts; about the same active FFN width per token as the qwen3moe preset.
    s.n_expert = 16;
    s.n_expert_used = 4;
    s.n_ff_exp = 128;
    s.n_dense_lead = 1;
    s.n_ff_dense = 768;
    s.n_shared = 2;
    s.tied_output = false;  // the deepseek loader requires output.weight
    s.n_head_kv = 4;        // the deepseek preset keeps plain multi-head attention
  } else {
    fail("train: unknown preset '{}' (known: qwen3moe, qwen3, deepseek)", preset);
  }
  return s;
}

ModelSpec canonical_spec(const ShapeOptions& o, const ArchDescriptor& arch) {
  if (o.n_vocab <= 0) fail("train: the vocabulary size is not set");
  if (o.n_head <= 0 || o.n_head_kv <= 0 || o.n_head % o.n_head_kv != 0)
    fail("train: {} heads are not a multiple of {} kv heads", o.n_head, o.n_head_kv);
  if (o.n_expert > 0 && (o.n_expert_used <= 0 || o.n_expert_used > o.n_expert))
    fail("train: top-k {} must be in [1, {}]", o.n_expert_used, o.n_expert);
  if (o.head_dim % 2) fail("train: head_dim {} must be even", o.head_dim);
  ModelSpec s;
  s.arch = arch.name;
  s.n_vocab = o.n_vocab;
  s.n_embd = o.n_embd;
  s.n_layer = o.n_layer;
  s.n_head = o.n_head;
  s.n_head_kv = o.n_head_kv;
  s.head_dim = o.head_dim;
  s.n_rot = o.head_dim;
  s.n_ctx_train = o.n_ctx;
  s.rope_base = o.rope_base;
  s.layers.resize(static_cast<size_t>(o.n_layer));
  for (int il = 0; il < o.n_layer; ++il) {
    LayerSpec& L = s.layers[il];
    L.is_moe = il >= o.n_dense_lead && o.n_expert > 0;
    L.n_ff_dense = o.n_ff_dense;
    L.moe.n_expert = o.n_expert;
    L.moe.n_expert_used = o.n_expert_used;
    L.moe.n_ff_exp = o.n_ff_exp;
    L.moe.n_shared = o.n_shared;
    L.moe.n_ff_shexp = o.n_ff_exp * o.n_shared;
  }
  // Round-trip the metadata through the inference loader.
  gguf::Writer w;
  save_model_spec(s, arch, w);
  std::random_device rd;
  const std::string tmp = (std::filesystem::temp_directory_path() /
                           ("moe_train_spec_" + std::to_string(getpid()) + "_" + std::to_string(rd()) + ".gguf"))
                              .string();
  ModelSpec out;
  try {
    w.write(tmp);
    auto f = gguf::File::open(tmp);
    out = load_model_spec(*f, arch);
  } catch (...) {
    std::filesystem::remove(tmp);
    throw;
  }
  std::filesystem::remove(tmp);
  out.tied_output = o.tied_output;
  for (const TensorRoleDesc& d : arch.roles)
    if (d.role == Role::Output && !d.optional && o.tied_output)
      fail("train: architecture '{}' requires output.weight; tied output is not loadable", arch.name);
  return out;
}

double learning_rate(const OptimOptions& o, int64_t step) {
  if (step < o.warmup_steps) return o.lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup_steps);
  const double span = static_cast<double>(std::max<int64_t>(1, o.total_steps - o.warmup_steps));
  const double t = std::min(1.0, static_cast<double>(step - o.warmup_steps) / span);
  const double min_lr = o.lr * o.min_lr_ratio;
  return min_lr + 0.5 * (o.lr - min_lr) * (1.0 + std::cos(3.141592653589793 * t));
}

bool uses_selection_bias(const TrainOptions& o) { return o.bias_update_rate != 0.0; }

void sample_batch(const std::vector<int32_t>& stream, int64_t batch, int64_t seq_len, uint64_t seed, int64_t step,
                  std::vector<int32_t>& inputs, std::vector<int32_t>& targets) {
  const int64_t n = static_cast<int64_t>(stream.size());
  if (n < seq_len + 1) fail("train: the token stream ({} tokens) is shorter than one window ({})", n, seq_len + 1);
  inputs.resize(static_cast<size_t>(batch * seq_len));
  targets.resize(inputs.size());
  // splitmix64 on (seed, step, row): portable, and independent of how many steps ran before.
  auto mix = [](uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  const uint64_t range = static_cast<uint64_t>(n - seq_len);
  for (int64_t b = 0; b < batch; ++b) {
    const uint64_t r = mix(mix(mix(seed) ^ static_cast<uint64_t>(step)) ^ static_cast<uint64_t>(b));
    const int64_t off = static_cast<int64_t>(r % range);
    std::copy(stream.begin() + off, stream.begin() + off + seq_len, inputs.begin() + b * seq_len);
    std::copy(stream.begin() + off + 1, stream.begin() + off + seq_len + 1, targets.begin() + b * seq_len);
  }
}

Trainer::Trainer(const ModelSpec& spec, const ArchDescriptor& arch, TrainOptions opts)
    : spec_(spec), arch_(arch), opts_(opts), model_(spec, arch) {
  const size_t n = model_.layout().total();
  adam_m_.assign(n, 0.0f);
  adam_v_.assign(n, 0.0f);
  decays_.assign(n, 0);
  for (const ParamTensor& t : model_.layout().tensors())
    if (t.dims.size() >= 2) std::fill(decays_.begin() + t.offset, decays_.begin() + t.offset + t.size, 1);
}

StepResult Trainer::step(const std::vector<int32_t>& stream, ThreadPool& pool) {
  StepResult r;
  sample_batch(stream, opts_.batch, opts_.seq_len, opts_.seed, step_, inputs_, targets_);
  std::vector<float>& g = model_.grads();
  std::fill(g.begin(), g.end(), 0.0f);
  r.loss = model_.forward(inputs_.data(), targets_.data(), opts_.batch, opts_.seq_len, opts_.router, &pool);
  model_.backward(&pool);

  // Global gradient norm in double, over fixed chunks summed in order (deterministic).
  const int64_t n = static_cast<int64_t>(g.size());
  constexpr int64_t kChunk = 1 << 16;
  const int64_t n_chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(n_chunks), 0.0);
  parallel_chunks(&pool, n_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double s = 0;
      for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) s += static_cast<double>(g[i]) * g[i];
      partial[c] = s;
    }
  });
  double sq = 0;
  for (double p : partial) sq += p;
  r.grad_norm = std::sqrt(sq);
  const OptimOptions& o = opts_.optim;
  const double clip = (o.grad_clip > 0 && r.grad_norm > o.grad_clip) ? o.grad_clip / r.grad_norm : 1.0;

  // AdamW with bias correction and decoupled weight decay.
  r.lr = learning_rate(o, step_);
  const double t = static_cast<double>(step_ + 1);
  const float bc1 = static_cast<float>(1.0 - std::pow(o.beta1, t)), bc2 = static_cast<float>(1.0 - std::pow(o.beta2, t));
  const float lr = static_cast<float>(r.lr), b1 = static_cast<float>(o.beta1), b2 = static_cast<float>(o.beta2),
              eps = static_cast<float>(o.eps), wd = static_cast<float>(o.weight_decay),
              cs = static_cast<float>(clip);
  std::vector<float>& p = model_.params();
  parallel_chunks(&pool, n, kChunk, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float gi = g[i] * cs;
      adam_m_[i] = b1 * adam_m_[i] + (1.0f - b1) * gi;
      adam_v_[i] = b2 * adam_v_[i] + (1.0f - b2) * gi * gi;
      const float mh = adam_m_[i] / bc1, vh = adam_v_[i] / bc2;
      if (decays_[i]) p[i] -= lr * wd * p[i];
      p[i] -= lr * mh / (std::sqrt(vh) + eps);
    }
  });

  // Expert load statistics and the aux-loss-free bias update: b_e += gamma * sign(mean_load - load_e).
  const auto& load = model_.expert_load();
  int n_moe = 0;
  for (int il = 0; il < spec_.n_layer; ++il) {
    if (load[il].empty()) continue;
    const int E = static_cast<int>(load[il].size());
    double mean = 0, var = 0;
    for (int64_t c : load[il]) mean += static_cast<double>(c);
    mean /= E;
    for (int64_t c : load[il]) var += (c - mean) * (c - mean);
    r.load_cv += mean > 0 ? std::sqrt(var / E) / mean : 0.0;
    ++n_moe;
    if (opts_.bias_update_rate != 0.0) {
      std::vector<float>& b = model_.selection_bias()[il];
      for (int e = 0; e < E; ++e) {
        const double diff = mean - static_cast<double>(load[il][e]);
        const float sign = diff > 0 ? 1.0f : (diff < 0 ? -1.0f : 0.0f);
        b[e] += static_cast<float>(opts_.bias_update_rate) * sign;
      }
    }
  }
  if (n_moe) r.load_cv /= n_moe;
  ++step_;
  return r;
}

double Trainer::evaluate(const std::vector<int32_t>& stream, int64_t max_windows, ThreadPool& pool) {
  const int64_t T = opts_.seq_len;
  const int64_t n_avail = (static_cast<int64_t>(stream.size()) - 1) / T;
  const int64_t n_win = std::min(n_avail, max_windows);
  if (n_win <= 0) fail("train: the evaluation stream ({} tokens) is shorter than one window", stream.size());
  // Evenly spaced windows over the whole stream, evaluated a batch at a time.
  const int64_t stride = n_avail / n_win;
  double sum = 0;
  int64_t done = 0;
  std::vector<int32_t> in, tg;
  while (done < n_win) {
    const int64_t nb = std::min(opts_.batch, n_win - done);
    in.resize(static_cast<size_t>(nb * T));
    tg.resize(in.size());
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t off = (done + b) * stride * T;
      std::copy(stream.begin() + off, stream.begin() + off + T, in.begin() + b * T);
      std::copy(stream.begin() + off + 1, stream.begin() + off + T + 1, tg.begin() + b * T);
    }
    const LossBreakdown l = model_.forward(in.data(), tg.data(), nb, T, RouterLossOptions{}, &pool);
    sum += l.ce * static_cast<double>(nb);
    done += nb;
  }
  return sum / static_cast<double>(n_win);
}

void Trainer::write_gguf(const std::string& path, DType matrix_type, bool with_optimizer, const std::string& vocab_path,
                         const std::string& model_name) const {
  gguf::Writer w;
  ModelSpec saved = spec_;
  if (!model_name.empty()) saved.name = model_name;
  const bool with_bias = uses_selection_bias(opts_);
  for (auto& L : saved.layers) L.moe.has_selection_bias = L.is_moe && with_bias;
  save_model_spec(saved, arch_, w);
  std::unique_ptr<gguf::File> vocab;
  if (!vocab_path.empty()) {
    vocab = gguf::File::open(vocab_path);
    for (const auto& [key, value] : vocab->metadata())
      if (key.rfind("tokenizer.", 0) == 0) w.set(key, value);
  }
  w.set("general.file_type", gguf::Value::make_u32(matrix_type == DType::F16 ? 1 : 0));
  if (with_optimizer) {
    w.set("train.step", gguf::Value::make_u64(static_cast<uint64_t>(step_)));
    w.set("train.seed", gguf::Value::make_u64(opts_.seed));
  }

  auto add_f32 = [&](const std::string& name, const std::vector<int64_t>& dims, const float* data, size_t n) {
    std::vector<uint8_t> bytes(n * sizeof(float));
    std::memcpy(bytes.data(), data, bytes.size());
    w.add_tensor(name, DType::F32, dims, std::move(bytes));
  };
  // Tensors in role-table order; the selection bias goes right after its layer's router.
  const std::vector<float>& p = model_.params();
  for (const ParamTensor& t : model_.layout().tensors()) {
    const bool as_f16 = matrix_type == DType::F16 && t.dims.size() >= 2 && t.placement != Placement::Router;
    if (as_f16) {
      std::vector<uint8_t> bytes(t.size * sizeof(uint16_t));
      fp32_to_fp16_row(p.data() + t.offset, reinterpret_cast<uint16_t*>(bytes.data()), static_cast<int64_t>(t.size));
      w.add_tensor(t.name, DType::F16, t.dims, std::move(bytes));
    } else {
      add_f32(t.name, t.dims, p.data() + t.offset, t.size);
    }
    if (t.role == Role::Router && with_bias) {
      const std::vector<float>& b = model_.selection_bias()[t.layer];
      char name[64];
      std::snprintf(name, sizeof name, "blk.%d.exp_probs_b.bias", t.layer);
      add_f32(name, {static_cast<int64_t>(b.size())}, b.data(), b.size());
    }
  }
  if (with_optimizer) {
    for (const ParamTensor& t : model_.layout().tensors()) {
      add_f32("train.adam_m." + t.name, t.dims, adam_m_.data() + t.offset, t.size);
      add_f32("train.adam_v." + t.name, t.dims, adam_v_.data() + t.offset, t.size);
    }
  }
  w.write(path);
}

void Trainer::save_checkpoint(const std::string& path) const { write_gguf(path, DType::F32, true, "", spec_.name); }

void Trainer::export_model(const std::string& path, DType matrix_type, const std::string& vocab_path,
                           const std::string& model_name) const {
  if (matrix_type != DType::F32 && matrix_type != DType::F16) fail("train: export type must be f32 or f16");
  write_gguf(path, matrix_type, false, vocab_path, model_name);
}

void Trainer::load_checkpoint(const std::string& path) {
  auto f = gguf::File::open(path);
  if (!f->has("train.step")) fail("{}: not a training checkpoint (no train.step)", path);
  if (f->get_string("general.architecture") != arch_.name)
    fail("{}: architecture '{}' does not match the training run's '{}'", path, f->get_string("general.architecture"),
         arch_.name);
  auto read_f32 = [&](const std::string& name, const std::vector<int64_t>& dims, float* dst) {
    const gguf::TensorInfo* ti = f->find_tensor(name);
    if (!ti) fail("{}: tensor '{}' is missing", path, name);
    if (ti->type != DType::F32 || ti->dims != dims)
      fail("{}: tensor '{}' has another shape or type than this training run expects", path, name);
    f->read_tensor_bytes(*ti, 0, ti->nbytes, dst);
  };
  for (const ParamTensor& t : model_.layout().tensors()) {
    read_f32(t.name, t.dims, model_.params().data() + t.offset);
    read_f32("train.adam_m." + t.name, t.dims, adam_m_.data() + t.offset);
    read_f32("train.adam_v." + t.name, t.dims, adam_v_.data() + t.offset);
  }
  for (int il = 0; il < spec_.n_layer; ++il) {
    std::vector<float>& b = model_.selection_bias()[il];
    if (b.empty()) continue;
    char name[64];
    std::snprintf(name, sizeof name, "blk.%d.exp_probs_b.bias", il);
    if (f->find_tensor(name)) read_f32(name, {static_cast<int64_t>(b.size())}, b.data());
    else std::fill(b.begin(), b.end(), 0.0f);
  }
  step_ = static_cast<int64_t>(f->get_uint("train.step"));
}

}  // namespace moe::train
