// GLM-4.5 / GLM-4.5-Air (`glm4moe`): grouped-query attention with q/k/v biases, optional per-head q/k
// RMSNorm (present in GLM-4.5, absent in some files), NEOX rope on the first rope.dimension_count dims
// of each head (half of it in the released models); the FFN norm is `post_attention_norm`.
// `leading_dense_block_count` dense layers, then MoE layers with a sigmoid gate, an `exp_probs_b`
// selection bias, optional group-limited top-k, renormalized weights, `expert_weights_scale` and
// `expert_shared_count` ungated shared experts. The trailing next-token-prediction layer
// (`nextn_predict_layers`) is in the file but not run, as in llama.cpp.
#include "base/error.h"
#include "format/gguf.h"
#include "model/arch.h"

namespace moe {

namespace {

std::vector<TensorRoleDesc> glm4moe_roles() {
  std::vector<TensorRoleDesc> attn = roles::common_attention(true, QkNorm::PerHead);
  for (auto& r : attn) {
    if (r.role == Role::AttnQNorm || r.role == Role::AttnKNorm) r.optional = true;  // GLM-4.5 has them
    if (r.role == Role::FfnNorm) r.gguf_name = "blk.%d.post_attention_norm.weight";
  }
  // Selection bias: required by llama.cpp for glm4moe, written by every converter.
  std::vector<TensorRoleDesc> experts = roles::routed_experts();
  for (auto& r : experts)
    if (r.role == Role::RouterBias) r.optional = false;
  return roles::concat({roles::common_io(true), attn, roles::dense_ffn(), experts, roles::shared_experts(false)});
}

Gating gating_from_func(const gguf::File& f, const std::string& key, uint64_t func) {
  switch (func) {
    case 0: case 2: return Gating::Sigmoid;  // GLM-4.5's gate; llama.cpp's default for the arch
    case 1: return Gating::Softmax;
    case 3: return Gating::SoftmaxWeight;
    default: fail("{}: key '{}': expert gating function {} is not supported", f.path(), key, func);
  }
}

}  // namespace

const ArchDescriptor& arch_glm4moe() {
  static const ArchDescriptor d = [] {
    ArchDescriptor a;
    a.name = "glm4moe";
    a.load_spec = [](const gguf::File& f, ModelSpec& s) {
      const std::string p = "glm4moe.";
      s.rope_style = RopeStyle::Neox;
      s.qkv_bias = true;
      // Multimodal GLM-4.5V files carry rope sections (M-RoPE), which the text model here does not do.
      if (const gguf::Value* v = f.find(p + "rope.dimension_sections"); v && v->type == gguf::ValueType::ARRAY)
        for (int64_t x : f.get_int_array(p + "rope.dimension_sections"))
          if (x != 0)
            fail("{}: key '{}': multimodal rope sections are not supported", f.path(), p + "rope.dimension_sections");
      s.qk_norm = f.find_tensor("blk.0.attn_q_norm.weight") ? QkNorm::PerHead : QkNorm::None;
      const int64_t n_dense = static_cast<int64_t>(f.get_uint_or(p + "leading_dense_block_count", 0));
      const int n_shared = static_cast<int>(f.get_uint(p + "expert_shared_count"));
      if (n_shared < 0 || n_shared > 64) fail("{}: key '{}': {} out of range", f.path(), p + "expert_shared_count", n_shared);
      const float w_scale = static_cast<float>(f.get_float_or(p + "expert_weights_scale", 0.0));
      const bool w_norm = f.get_bool_or(p + "expert_weights_norm", false);
      const Gating gating = gating_from_func(f, p + "expert_gating_func", f.get_uint_or(p + "expert_gating_func", 0));
      for (int il = 0; il < s.n_layer; ++il) {
        LayerSpec& L = s.layers[il];
        if (il < n_dense) {
          L.is_moe = false;
          continue;
        }
        if (!L.is_moe) fail("{}: key '{}': layer {} is a MoE layer but the file has no experts", f.path(),
                            p + "expert_count", il);
        // llama.cpp's fallback when the expert width is missing.
        if (!f.has(p + "expert_feed_forward_length")) L.moe.n_ff_exp = L.n_ff_dense / L.moe.n_expert_used;
        L.moe.gating = gating;
        L.moe.norm_topk = w_norm;
        L.moe.route_scale = (w_scale == 0.0f) ? 1.0f : w_scale;
        L.moe.n_shared = n_shared;
        L.moe.n_ff_shexp = L.moe.n_ff_exp * n_shared;
        L.moe.shared_gate = SharedGate::None;
      }
    };
    a.roles = glm4moe_roles();
    a.save_spec = [](const ModelSpec& s, gguf::Writer& w) {
      using gguf::Value;
      const std::string p = "glm4moe.";
      uint32_t n_dense = 0;
      while (n_dense < s.layers.size() && !s.layers[n_dense].is_moe) ++n_dense;
      w.set(p + "leading_dense_block_count", Value::make_u32(n_dense));
      const LayerSpec* moe = n_dense < s.layers.size() ? &s.layers[n_dense] : nullptr;
      w.set(p + "expert_shared_count", Value::make_u32(moe ? static_cast<uint32_t>(moe->moe.n_shared) : 0));
      if (moe) {
        w.set(p + "expert_weights_scale", Value::make_f32(moe->moe.route_scale));
        w.set(p + "expert_weights_norm", Value::make_bool(moe->moe.norm_topk));
        const uint32_t func = moe->moe.gating == Gating::Softmax ? 1 : moe->moe.gating == Gating::Sigmoid ? 2 : 3;
        w.set(p + "expert_gating_func", Value::make_u32(func));
      }
    };
    a.unused_tensors = [](const ModelSpec& s) { return roles::nextn_layers(s, glm4moe_roles()); };
    return a;
  }();
  return d;
}

}  // namespace moe
