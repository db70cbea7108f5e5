// ModelSpec: everything the forward pass needs to know about a model, filled from GGUF metadata by
// the arch descriptor. MoE layers are described by named fields (MoeSpec), not positional flags.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "moe/moe_spec.h"

namespace moe {

enum class RopeStyle { Normal, Neox };     // Normal pairs (2i, 2i+1); Neox pairs (i, i + n_rot/2)
enum class QkNorm { None, PerHead, Full }; // RMSNorm on q/k per head, or over the whole projection

struct LayerSpec {
  bool is_moe = false;
  int64_t n_ff_dense = 0;  // dense FFN width when !is_moe
  MoeSpec moe;
};

struct ModelSpec {
  std::string arch;
  std::string name;
  int64_t n_vocab = 0;
  int64_t n_embd = 0;
  int n_layer = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int64_t head_dim = 0;      // key/value length per head
  int64_t n_rot = 0;
  int64_t n_ctx_train = 0;
  float rope_base = 10000.0f;
  float rope_freq_scale = 1.0f;
  RopeStyle rope_style = RopeStyle::Normal;
  float rms_eps = 1e-6f;
  float attn_scale = 0.0f;       // 0 = 1/sqrt(head_dim)
  float embedding_scale = 0.0f;  // 0 = none
  float residual_scale = 0.0f;   // 0 = none
  float logit_scale = 0.0f;      // 0 = none; logits are divided by it
  QkNorm qk_norm = QkNorm::None;
  bool qkv_bias = false;
  bool attn_out_bias = false;
  bool tied_output = false;      // output.weight absent: reuse token_embd
  std::vector<LayerSpec> layers;

  int64_t q_dim() const { return head_dim * n_head; }
  int64_t kv_dim() const { return head_dim * n_head_kv; }
  float kq_scale() const;
};

}  // namespace moe
