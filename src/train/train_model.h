// The trainable model: the same architectures the inference engine runs, described by the same
// ModelSpec and laid out by the arch's tensor-role table (design.md seam 1), with an explicit forward
// and backward pass over a batch of B sequences of T tokens.
//
// Parameters live in one flat array (one block per GGUF tensor, in role-table order, in ggml layout),
// so the optimizer, gradient clipping and checkpoints treat them uniformly and the export to GGUF is
// a plain copy.
//
// Templated on the scalar type: training uses float; the gradient-check tests instantiate double.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "base/thread_pool.h"
#include "model/arch.h"
#include "model/spec.h"

namespace moe::train {

// One tensor of the model inside the flat parameter array.
struct ParamTensor {
  std::string name;            // GGUF name, e.g. "blk.0.attn_q.weight"
  Role role;
  int layer;                   // -1 for global tensors
  std::vector<int64_t> dims;   // ggml order
  Placement placement;
  size_t offset = 0;           // into the flat array
  size_t size = 0;             // elements
};

// Which tensors a spec has, in the arch's role-table order. The selection bias is not a trained
// parameter (it is updated by the aux-loss-free rule) and is kept outside this layout.
class ParamLayout {
 public:
  ParamLayout(const ModelSpec& spec, const ArchDescriptor& arch);
  const std::vector<ParamTensor>& tensors() const { return tensors_; }
  size_t total() const { return total_; }
  const ParamTensor* find(Role role, int layer) const;  // nullptr when absent
  const ParamTensor& get(Role role, int layer) const;   // throws when absent

 private:
  std::vector<ParamTensor> tensors_;
  std::vector<int> index_;  // [(layer + 1) * Role::Count + role] -> tensor index or -1
  size_t total_ = 0;
};

struct RouterLossOptions {
  double load_balance_coef = 0.0;  // Switch: coef * E * sum_e f_e * P_e, summed over MoE layers
  double z_loss_coef = 0.0;        // coef * mean_t logsumexp(z_t)^2, summed over MoE layers
};

struct LossBreakdown {
  double ce = 0;       // mean next-token cross-entropy
  double balance = 0;  // load-balancing loss (already times its coefficient)
  double z = 0;        // router z-loss (already times its coefficient)
  double total() const { return ce + balance + z; }
};

template <typename Real>
class MoeTransformer {
 public:
  // `spec` must be complete as the inference loader fills it (see canonical_spec in trainer.h).
  MoeTransformer(const ModelSpec& spec, const ArchDescriptor& arch);
  ~MoeTransformer();
  MoeTransformer(const MoeTransformer&) = delete;
  MoeTransformer& operator=(const MoeTransformer&) = delete;

  const ModelSpec& spec() const { return spec_; }
  const ArchDescriptor& arch() const { return arch_; }
  const ParamLayout& layout() const { return layout_; }
  std::vector<Real>& params() { return params_; }
  const std::vector<Real>& params() const { return params_; }
  std::vector<Real>& grads() { return grads_; }
  Real* param(Role role, int layer) { return params_.data() + layout_.get(role, layer).offset; }
  // Per-layer selection bias (empty vector for dense layers), added to the softmax probabilities
  // for top-k selection only, as the inference router does with exp_probs_b.
  std::vector<std::vector<Real>>& selection_bias() { return selection_bias_; }
  const std::vector<std::vector<Real>>& selection_bias() const { return selection_bias_; }

  // Deterministic initialisation from a seed (independent of thread count).
  void init_params(uint64_t seed);

  // Runs B sequences of T tokens (inputs [B][T]). With targets ([B][T], the next tokens) computes the
  // loss and keeps what backward() needs; without, only logits. Logits are [B*T][n_vocab].
  LossBreakdown forward(const int32_t* inputs, const int32_t* targets, int64_t B, int64_t T,
                        const RouterLossOptions& opts, ThreadPool* pool);
  // Gradient of the last forward's total loss, ADDED to grads() (zero them first).
  void backward(ThreadPool* pool);

  // Logits of the last forward. After a forward with targets they are overwritten by their gradient.
  const std::vector<Real>& logits() const;
  // Tokens routed to each expert by the last forward, [layer][expert] (empty for dense layers).
  const std::vector<std::vector<int64_t>>& expert_load() const;

  // Optional, for analysis (HEAPr, compress/heapr.h): backward() calls it on the calling thread for every
  // MoE layer and every expert that had tokens, with the activations entering the expert's down
  // projection u [n][ff] and the gradient of the loss at the expert's (unweighted) output g [n][n_embd].
  using ExpertGradHook = std::function<void(int layer, int expert, int64_t n, const Real* u, const Real* g)>;
  void set_expert_grad_hook(ExpertGradHook hook) { expert_grad_hook_ = std::move(hook); }

 private:
  struct State;
  ModelSpec spec_;
  const ArchDescriptor& arch_;
  ParamLayout layout_;
  std::vector<Real> params_, grads_;
  std::vector<std::vector<Real>> selection_bias_;
  State* state_;  // activations kept for backward (pimpl, owned)
  ExpertGradHook expert_grad_hook_;
};

extern template class MoeTransformer<float>;
extern template class MoeTransformer<double>;

}  // namespace moe::train
