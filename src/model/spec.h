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

// YaRN rope scaling (rope.scaling.type = yarn), with the values llama.cpp derives from the metadata:
// a ramp between interpolated and extrapolated frequencies over the correction dims, and a magnitude
// factor on cos/sin. Off (ext_factor 0, attn_factor 1) for unscaled and linearly scaled ropes.
struct RopeYarn {
  float ext_factor = 0.0f;   // 1 with YaRN
  float attn_factor = 1.0f;  // cparams.yarn_attn_factor: mscale ratio / (1 + 0.1 ln factor)
  float beta_fast = 32.0f;   // llama.cpp uses its defaults here, not the file's yarn_beta_* keys
  float beta_slow = 1.0f;
  int64_t n_ctx_orig = 0;    // rope.scaling.original_context_length (default: context_length)
  float log_mul = 0.0f;      // rope.scaling.yarn_log_multiplier as the arch reads it (DeepSeek: / 0.1)
  bool log_mul_sets_mscale = false;  // DeepSeek-V2: mscale = mscale_all_dim (= log_mul) when that is not 1
};

// Multi-head latent attention (DeepSeek-V2/V3): the KV cache holds per token one latent of kv_lora
// values plus one shared rope key of qk_rope values; decoding attends in the absorbed form, where the
// query is mapped into the latent space (attn_k_b) and the attention output back out of it (attn_v_b).
struct MlaSpec {
  int64_t q_lora_rank = 0;   // 0: attn_q directly; else attn_q_a (+ norm) then attn_q_b
  int64_t kv_lora_rank = 0;  // 0: not MLA
  int64_t qk_nope = 0;       // per-head query/key part without rope
  int64_t qk_rope = 0;       // per-head rope part (= n_rot), shared by all heads on the key side
  int64_t v_head = 0;        // per-head value length after attn_v_b
};

struct LayerSpec {
  bool is_moe = false;
  int64_t n_ff_dense = 0;  // dense FFN width when !is_moe
  // Sliding-window attention: a query at position p sees keys (p - n_swa, p]. 0 = full attention.
  // Window layers keep a ring of n_swa + 63 positions in the KV cache instead of the whole context.
  int64_t n_swa = 0;
  MoeSpec moe;
};

struct ModelSpec {
  std::string arch;
  std::string name;
  int64_t n_vocab = 0;
  int64_t n_embd = 0;
  int n_layer = 0;           // layers the forward pass runs (next-token-prediction layers excluded)
  int n_layer_nextn = 0;     // trailing NextN/MTP layers in the file, loaded by nobody (block_count - n_layer)
  int n_head = 0;
  int n_head_kv = 0;
  int64_t head_dim = 0;      // key length per head as attention sees it (MLA: kv_lora_rank + qk_rope)
  int64_t head_dim_v = 0;    // value length per head as attention sees it (MLA: kv_lora_rank); 0 = head_dim
  int64_t n_rot = 0;
  int64_t n_ctx_train = 0;
  float rope_base = 10000.0f;
  float rope_base_swa = 0.0f;    // rope base of sliding-window layers (0 = rope_base)
  float rope_freq_scale = 1.0f;
  RopeYarn yarn;
  RopeStyle rope_style = RopeStyle::Normal;
  float rms_eps = 1e-6f;
  float attn_scale = 0.0f;       // 0 = 1/sqrt(head_dim)
  float embedding_scale = 0.0f;  // 0 = none
  float residual_scale = 0.0f;   // 0 = none
  float logit_scale = 0.0f;      // 0 = none; logits are divided by it
  QkNorm qk_norm = QkNorm::None;
  bool qkv_bias = false;
  bool attn_out_bias = false;
  bool attn_sinks = false;       // one learned logit per head joins each softmax (gpt-oss)
  bool tied_output = false;      // output.weight absent: reuse token_embd
  MlaSpec mla;
  std::vector<LayerSpec> layers;

  bool is_mla() const { return mla.kv_lora_rank > 0; }
  int64_t v_dim_head() const { return head_dim_v > 0 ? head_dim_v : head_dim; }
  int64_t q_dim() const { return head_dim * n_head; }
  int64_t kv_dim() const { return head_dim * n_head_kv; }
  int64_t v_dim() const { return v_dim_head() * n_head_kv; }
  // Width of the attention output projection's input: heads x value length (MLA: after attn_v_b).
  int64_t attn_out_dim() const { return (is_mla() ? mla.v_head : v_dim_head()) * n_head; }
  float kq_scale() const;
};

}  // namespace moe
