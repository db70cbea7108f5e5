// gpt-oss (OpenAI): grouped-query attention with biases on q/k/v/o and one learned sink logit per head
// that joins every softmax; sliding-window layers (`attention.sliding_window`, by default every other
// layer starting with layer 0, or `attention.sliding_window_pattern`) alternating with full ones; NEOX
// rope with YaRN; the FFN norm is `post_attention_norm`. MoE in every layer: the router has a bias,
// top-k is taken on the raw logits and the weights are the softmax over the k selected logits; every
// expert matrix has a bias, and the activation is the clamped SwiGLU (alpha 1.702, limit 7).
#include <cmath>

#include "base/error.h"
#include "format/gguf.h"
#include "model/arch.h"

namespace moe {

namespace {

using Shape = std::vector<int64_t>;

// Which layers use the sliding window, as llama.cpp's load_swa_pattern(ml, 2) decides: an array of
// flags, or a period n (layer il is a window layer when il % n < n - 1; 0 = every layer).
std::vector<bool> window_layers(const gguf::File& f, const std::string& key, int n_layer) {
  std::vector<bool> out(static_cast<size_t>(n_layer));
  const gguf::Value* v = f.find(key);
  if (v && v->type == gguf::ValueType::ARRAY) {
    std::vector<int64_t> flags;
    if (v->array_type == gguf::ValueType::BOOL) {
      for (uint64_t i = 0; i < v->array_count; ++i) flags.push_back(v->array_raw[i] != 0);
    } else {
      flags = f.get_int_array(key);
    }
    if (flags.size() < static_cast<size_t>(n_layer))
      fail("{}: key '{}': {} entries, expected one per layer ({})", f.path(), key, flags.size(), n_layer);
    for (int il = 0; il < n_layer; ++il) out[static_cast<size_t>(il)] = flags[static_cast<size_t>(il)] != 0;
    return out;
  }
  const uint64_t n_pattern = v ? f.get_uint(key) : 2;
  for (int il = 0; il < n_layer; ++il)
    out[static_cast<size_t>(il)] = n_pattern == 0 || static_cast<uint64_t>(il) % n_pattern < n_pattern - 1;
  return out;
}

std::vector<TensorRoleDesc> gptoss_roles() {
  std::vector<TensorRoleDesc> attn = roles::common_attention(true, QkNorm::None);
  for (auto& r : attn) {
    if (r.role == Role::AttnOutBias) r.optional = false;
    if (r.role == Role::FfnNorm) r.gguf_name = "blk.%d.post_attention_norm.weight";
  }
  attn.push_back({Role::AttnSinks, "blk.%d.attn_sinks.weight", true, Placement::Attention,
                  [](const ModelSpec& s, int) { return Shape{s.n_head}; }});
  return roles::concat({roles::common_io(false), attn, roles::routed_experts(), roles::expert_biases()});
}

}  // namespace

const ArchDescriptor& arch_gptoss() {
  static const ArchDescriptor d = [] {
    ArchDescriptor a;
    a.name = "gpt-oss";
    a.load_spec = [](const gguf::File& f, ModelSpec& s) {
      const std::string p = "gpt-oss.";
      s.rope_style = RopeStyle::Neox;
      s.qkv_bias = true;
      s.attn_sinks = true;
      s.attn_scale = 1.0f / std::sqrt(static_cast<float>(s.n_rot));
      const int64_t n_swa = static_cast<int64_t>(f.get_uint(p + "attention.sliding_window"));
      if (n_swa <= 0 || n_swa > (int64_t(1) << 30))
        fail("{}: key '{}': {} out of range", f.path(), p + "attention.sliding_window", n_swa);
      const std::vector<bool> swa = window_layers(f, p + "attention.sliding_window_pattern", s.n_layer);
      s.rope_base_swa = static_cast<float>(f.get_float_or(p + "rope.freq_base_swa", s.rope_base));
      if (!(s.rope_base_swa > 1.0f))
        fail("{}: key '{}': {} must be > 1", f.path(), p + "rope.freq_base_swa", s.rope_base_swa);
      for (int il = 0; il < s.n_layer; ++il) {
        LayerSpec& L = s.layers[il];
        L.n_swa = swa[static_cast<size_t>(il)] ? n_swa : 0;
        if (!L.is_moe) fail("{}: key '{}': gpt-oss layers are MoE layers", f.path(), p + "expert_count");
        L.moe.gating = Gating::SoftmaxWeight;
        L.moe.norm_topk = false;
        L.moe.activation = Activation::SwiGLUOai;
      }
    };
    a.roles = gptoss_roles();
    a.save_spec = [](const ModelSpec& s, gguf::Writer& w) {
      using gguf::Value;
      int64_t n_swa = 0;
      std::vector<int32_t> pattern;
      for (const auto& L : s.layers) {
        n_swa = std::max(n_swa, L.n_swa);
        pattern.push_back(L.n_swa > 0 ? 1 : 0);
      }
      w.set("gpt-oss.attention.sliding_window", Value::make_u32(static_cast<uint32_t>(n_swa)));
      // The default pattern (even layers windowed) needs no key; others are written as a period or flags.
      bool default_pattern = true;
      for (size_t il = 0; il < pattern.size(); ++il) default_pattern &= pattern[il] == (il % 2 == 0 ? 1 : 0);
      if (!default_pattern) w.set("gpt-oss.attention.sliding_window_pattern", Value::make_i32_array(pattern));
      if (s.rope_base_swa != 0.0f && s.rope_base_swa != s.rope_base)
        w.set("gpt-oss.rope.freq_base_swa", Value::make_f32(s.rope_base_swa));
    };
    return a;
  }();
  return d;
}

}  // namespace moe
