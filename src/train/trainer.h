// The training loop around MoeTransformer<float>: batches from a token stream, AdamW with warmup and
// cosine decay, global-norm gradient clipping, router losses and DeepSeek-V3 aux-loss-free bias
// balancing, validation, checkpoints and export to an ordinary GGUF model.
//
// Determinism: for a fixed seed and thread count (in fact for any thread count: every reduction has
// a fixed order) the loss curve is bitwise reproducible. Batches are a pure function of
// (seed, step), so a run resumed from a checkpoint sees exactly the batches it would have seen.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/thread_pool.h"
#include "model/arch.h"
#include "model/spec.h"
#include "tensor/dtype.h"
#include "train/train_model.h"

namespace moe::train {

// Shapes for the two training presets. `preset` is "qwen3moe" (routed experts only, renormalized
// top-k, per-head q/k norm) or "deepseek" (leading dense layer, fine-grained routed experts plus
// shared experts, no renormalization).
struct ShapeOptions {
  std::string preset = "qwen3moe";
  int64_t n_vocab = 0;
  int n_layer = 4;
  int64_t n_embd = 256;
  int n_head = 4;
  int n_head_kv = 2;
  int64_t head_dim = 64;
  int n_expert = 8;
  int n_expert_used = 2;
  int64_t n_ff_exp = 256;
  int n_dense_lead = 0;      // deepseek: leading dense layers
  int64_t n_ff_dense = 512;  // deepseek: width of the dense layers
  int n_shared = 0;          // deepseek: shared experts (each n_ff_exp wide)
  int64_t n_ctx = 256;
  float rope_base = 10000.0f;
  bool tied_output = true;
};
ShapeOptions preset_shape(const std::string& preset);  // defaults for a preset (vocab left 0)

// The ModelSpec exactly as the inference loader will build it from the saved metadata: the shape's
// metadata is written and read back through the arch descriptor, so the arch hooks (rope style, q/k
// norm, renormalization, shared-expert width) are the inference engine's own.
ModelSpec canonical_spec(const ShapeOptions& shape, const ArchDescriptor& arch);

struct OptimOptions {
  double lr = 3e-3;
  double min_lr_ratio = 0.1;  // cosine decays to lr * min_lr_ratio
  int64_t warmup_steps = 50;
  int64_t total_steps = 1000;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;  // decoupled; matrices only (not norms or the selection bias)
  double grad_clip = 1.0;     // global L2 norm; 0 = off
};
double learning_rate(const OptimOptions& o, int64_t step);

struct TrainOptions {
  int64_t batch = 16;    // sequences per step
  int64_t seq_len = 128; // tokens per sequence
  uint64_t seed = 1;
  OptimOptions optim;
  RouterLossOptions router;
  double bias_update_rate = 0.0;  // DeepSeek-V3 aux-loss-free gamma; 0 = off
};

// Inputs and next-token targets of step `step`: `batch` windows at offsets drawn from (seed, step).
void sample_batch(const std::vector<int32_t>& stream, int64_t batch, int64_t seq_len, uint64_t seed, int64_t step,
                  std::vector<int32_t>& inputs, std::vector<int32_t>& targets);

struct StepResult {
  LossBreakdown loss;
  double grad_norm = 0;  // before clipping
  double lr = 0;
  double load_cv = 0;    // mean over MoE layers of the coefficient of variation of expert load
};

class Trainer {
 public:
  Trainer(const ModelSpec& spec, const ArchDescriptor& arch, TrainOptions opts);

  void init_params() { model_.init_params(opts_.seed); }
  StepResult step(const std::vector<int32_t>& train_stream, ThreadPool& pool);
  // Mean cross-entropy over up to `max_windows` evenly spaced, non-overlapping windows of the stream.
  double evaluate(const std::vector<int32_t>& stream, int64_t max_windows, ThreadPool& pool);

  int64_t step_index() const { return step_; }
  MoeTransformer<float>& model() { return model_; }
  const TrainOptions& options() const { return opts_; }

  // A checkpoint is a GGUF: the model itself (F32, loadable by Model::load when no selection bias is
  // used) plus train.* metadata and the AdamW moments as tensors "train.adam_m.<name>" and
  // "train.adam_v.<name>". Written atomically.
  void save_checkpoint(const std::string& path) const;
  // Restores parameters, moments, selection biases and the step; the file must have this shape.
  void load_checkpoint(const std::string& path);

  // Writes the model as GGUF with the given weight type for matrices (F32 or F16; norms, router and
  // the selection bias stay F32). Copies the tokenizer.ggml.* keys of `vocab_path` when not empty.
  void export_model(const std::string& path, DType matrix_type, const std::string& vocab_path,
                    const std::string& model_name) const;

 private:
  void write_gguf(const std::string& path, DType matrix_type, bool with_optimizer, const std::string& vocab_path,
                  const std::string& model_name) const;

  ModelSpec spec_;
  const ArchDescriptor& arch_;
  TrainOptions opts_;
  MoeTransformer<float> model_;
  std::vector<float> adam_m_, adam_v_;
  std::vector<uint8_t> decays_;  // per parameter element: 1 if weight decay applies
  int64_t step_ = 0;
  std::vector<int32_t> inputs_, targets_;
};

// True when any MoE layer uses a selection bias (aux-loss-free balancing).
bool uses_selection_bias(const TrainOptions& o);

}  // namespace moe::train
