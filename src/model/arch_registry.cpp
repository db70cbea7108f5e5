#include <cmath>
#include <cstdio>

#include "base/error.h"
#include "format/gguf.h"
#include "model/arch.h"

namespace moe {

namespace {
// The one registry line per architecture.
const std::vector<const ArchDescriptor*>& all_archs() {
  static const std::vector<const ArchDescriptor*> kArchs = {
      &arch_qwen3moe(), &arch_qwen3(),    &arch_qwen2moe(),   &arch_llama(),
      &arch_olmoe(),    &arch_deepseek(), &arch_granitemoe(), &arch_deepseek2(),
      &arch_gptoss(),   &arch_glm4moe(),
  };
  return kArchs;
}
}  // namespace

const ArchDescriptor* find_arch(const std::string& name) {
  for (const auto* a : all_archs())
    if (a->name == name) return a;
  return nullptr;
}

std::vector<std::string> supported_archs() {
  std::vector<std::string> names;
  for (const auto* a : all_archs()) names.push_back(a->name);
  return names;
}

const char* role_name(Role r) {
  static const char* const kNames[] = {
      "token_embd", "output_norm", "output", "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
      "attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_output.bias", "attn_q_norm", "attn_k_norm",
      "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "ffn_gate_inp", "exp_probs_b", "ffn_gate_exps",
      "ffn_up_exps", "ffn_down_exps", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp", "ffn_gate_inp_shexp",
      "attn_q_a", "attn_q_a_norm", "attn_q_b", "attn_kv_a_mqa", "attn_kv_a_norm", "attn_k_b", "attn_v_b",
      "attn_sinks", "ffn_gate_inp.bias", "ffn_gate_exps.bias", "ffn_up_exps.bias", "ffn_down_exps.bias"};
  static_assert(sizeof(kNames) / sizeof(kNames[0]) == static_cast<size_t>(Role::Count));
  return kNames[static_cast<int>(r)];
}

const char* placement_name(Placement p) {
  switch (p) {
    case Placement::Embedding: return "embeddings";
    case Placement::Attention: return "attention";
    case Placement::Router: return "router";
    case Placement::Expert: return "experts";
    case Placement::SharedExpert: return "shared";
    case Placement::DenseFfn: return "dense_ffn";
    case Placement::Norm: return "norms";
    case Placement::Output: return "output";
    case Placement::ExpertBias: return "expert_biases";
  }
  return "?";
}

bool role_is_f32(Role r) {
  switch (r) {
    case Role::OutputNorm: case Role::AttnNorm: case Role::FfnNorm: case Role::AttnQNorm: case Role::AttnKNorm:
    case Role::AttnQBias: case Role::AttnKBias: case Role::AttnVBias: case Role::AttnOutBias: case Role::RouterBias:
    case Role::AttnQANorm: case Role::AttnKvANorm: case Role::AttnSinks: case Role::RouterLogitBias:
    case Role::ExpGateBias: case Role::ExpUpBias: case Role::ExpDownBias:
      return true;
    default:
      return false;
  }
}

float ModelSpec::kq_scale() const {
  return attn_scale != 0.0f ? attn_scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
}

namespace {

// A per-layer hyperparameter that GGUF may store as a scalar or as an array with one value per layer.
int64_t per_layer_uint(const gguf::File& f, const std::string& key, int layer, int64_t def, bool required) {
  const gguf::Value* v = f.find(key);
  if (!v) {
    if (required) fail("{}: missing required key '{}'", f.path(), key);
    return def;
  }
  if (v->type == gguf::ValueType::ARRAY) {
    auto arr = f.get_int_array(key);
    if (layer >= static_cast<int>(arr.size()))
      fail("{}: key '{}': array has {} entries, expected one per layer", f.path(), key, arr.size());
    return arr[layer];
  }
  return static_cast<int64_t>(f.get_uint(key));
}

void check_positive(const gguf::File& f, const std::string& key, int64_t v, int64_t max) {
  if (v <= 0 || v > max) fail("{}: key '{}': value {} out of range [1, {}]", f.path(), key, v, max);
}

}  // namespace

ModelSpec load_model_spec(const gguf::File& f, const ArchDescriptor& arch) {
  ModelSpec s;
  s.arch = arch.name;
  s.name = f.get_string_or("general.name", "");
  const std::string p = arch.name + ".";
  s.n_embd = static_cast<int64_t>(f.get_uint(p + "embedding_length"));
  check_positive(f, p + "embedding_length", s.n_embd, 1 << 20);
  const int64_t n_block = static_cast<int64_t>(f.get_uint(p + "block_count"));
  check_positive(f, p + "block_count", n_block, 4096);
  // Trailing next-token-prediction (NextN/MTP) layers: llama.cpp loads them for speculative decoding
  // only and never runs them in the model's forward pass; neither do we.
  const int64_t n_nextn = static_cast<int64_t>(f.get_uint_or(p + "nextn_predict_layers", 0));
  if (n_nextn < 0 || n_nextn >= n_block)
    fail("{}: key '{}': {} must be below block_count {}", f.path(), p + "nextn_predict_layers", n_nextn, n_block);
  s.n_layer = static_cast<int>(n_block - n_nextn);
  s.n_layer_nextn = static_cast<int>(n_nextn);
  s.n_ctx_train = static_cast<int64_t>(f.get_uint_or(p + "context_length", 4096));
  s.n_head = static_cast<int>(per_layer_uint(f, p + "attention.head_count", 0, 0, true));
  check_positive(f, p + "attention.head_count", s.n_head, 1 << 12);
  s.n_head_kv = static_cast<int>(per_layer_uint(f, p + "attention.head_count_kv", 0, s.n_head, false));
  check_positive(f, p + "attention.head_count_kv", s.n_head_kv, s.n_head);
  if (s.n_head % s.n_head_kv != 0)
    fail("{}: key '{}': {} heads are not a multiple of {} kv heads", f.path(), p + "attention.head_count_kv",
         s.n_head, s.n_head_kv);
  s.head_dim = static_cast<int64_t>(f.get_uint_or(p + "attention.key_length", s.n_embd / s.n_head));
  check_positive(f, p + "attention.key_length", s.head_dim, 1024);  // real models use <= 576
  s.head_dim_v = static_cast<int64_t>(f.get_uint_or(p + "attention.value_length", s.head_dim));
  check_positive(f, p + "attention.value_length", s.head_dim_v, 1024);
  s.n_rot = static_cast<int64_t>(f.get_uint_or(p + "rope.dimension_count", s.head_dim));
  if (s.n_rot <= 0 || s.n_rot > s.head_dim || s.n_rot % 2)
    fail("{}: key '{}': {} must be even and <= head dim {}", f.path(), p + "rope.dimension_count", s.n_rot, s.head_dim);
  s.rope_base = static_cast<float>(f.get_float_or(p + "rope.freq_base", 10000.0));
  if (!(s.rope_base > 1.0f)) fail("{}: key '{}': {} must be > 1", f.path(), p + "rope.freq_base", s.rope_base);
  // Rope scaling as llama.cpp reads it: the frequency scale is 1 / factor (in float), YaRN adds its
  // ramp and magnitude factor, and "none" never scales.
  std::string scaling = f.get_string_or(p + "rope.scaling.type", "none");
  const float factor = static_cast<float>(f.get_float_or(p + "rope.scaling.factor", 0.0));
  if (scaling == "linear" || scaling == "yarn") {
    if (factor < 0.0f || !std::isfinite(factor))
      fail("{}: key '{}': {} is not a valid factor", f.path(), p + "rope.scaling.factor", factor);
    if (factor > 0.0f) s.rope_freq_scale = 1.0f / factor;
    if (scaling == "yarn") {
      s.yarn.ext_factor = 1.0f;
      s.yarn.n_ctx_orig = static_cast<int64_t>(f.get_uint_or(p + "rope.scaling.original_context_length", 0));
      if (s.yarn.n_ctx_orig <= 0) s.yarn.n_ctx_orig = s.n_ctx_train;
      check_positive(f, p + "rope.scaling.original_context_length", s.yarn.n_ctx_orig, int64_t(1) << 32);
    }
  } else if (scaling != "none") {
    fail("{}: key '{}': rope scaling '{}' is not supported (none, linear, yarn)", f.path(), p + "rope.scaling.type",
         scaling);
  }
  const float rope_attn_factor = static_cast<float>(f.get_float_or(p + "rope.scaling.attn_factor", 1.0));
  s.rms_eps = static_cast<float>(f.get_float_or(p + "attention.layer_norm_rms_epsilon", 1e-6));
  s.attn_scale = static_cast<float>(f.get_float_or(p + "attention.scale", 0.0));

  if (f.has(p + "vocab_size")) {
    s.n_vocab = static_cast<int64_t>(f.get_uint(p + "vocab_size"));
  } else if (f.has("tokenizer.ggml.tokens")) {
    s.n_vocab = static_cast<int64_t>(f.get_string_array("tokenizer.ggml.tokens").size());
  } else if (const auto* t = f.find_tensor("token_embd.weight"); t && t->dims.size() == 2) {
    s.n_vocab = t->dims[1];
  }
  check_positive(f, p + "vocab_size", s.n_vocab, int64_t(1) << 24);

  // Generic MoE fields; the arch hook sets the routing rules and block structure.
  const int n_expert = static_cast<int>(f.get_uint_or(p + "expert_count", 0));
  const int n_used = static_cast<int>(f.get_uint_or(p + "expert_used_count", 0));
  if (n_expert < 0 || n_expert > 65536) fail("{}: key '{}': {} out of range", f.path(), p + "expert_count", n_expert);
  if (n_expert > 0 && (n_used <= 0 || n_used > n_expert))
    fail("{}: key '{}': {} must be in [1, expert_count={}]", f.path(), p + "expert_used_count", n_used, n_expert);
  // Group-limited routing (DeepSeek-V2/V3), which llama.cpp applies for any arch that sets it.
  const int n_group = static_cast<int>(f.get_uint_or(p + "expert_group_count", 0));
  const int n_group_used = static_cast<int>(f.get_uint_or(p + "expert_group_used_count", 0));
  if (n_group > 1) {
    if (n_expert == 0 || n_expert % n_group != 0 || n_expert / n_group > 65536)
      fail("{}: key '{}': {} groups do not divide {} experts", f.path(), p + "expert_group_count", n_group, n_expert);
    if (n_group_used <= 0 || n_group_used > n_group)
      fail("{}: key '{}': {} must be in [1, expert_group_count={}]", f.path(), p + "expert_group_used_count",
           n_group_used, n_group);
    // Enough experts in the kept groups for top-k.
    if (static_cast<int64_t>(n_group_used) * (n_expert / n_group) < n_used)
      fail("{}: key '{}': {} groups of {} experts cannot hold top-{}", f.path(), p + "expert_group_used_count",
           n_group_used, n_expert / n_group, n_used);
  }
  s.layers.resize(s.n_layer);
  for (int il = 0; il < s.n_layer; ++il) {
    LayerSpec& L = s.layers[il];
    L.n_ff_dense = per_layer_uint(f, p + "feed_forward_length", il, 0, false);
    L.is_moe = n_expert > 0;
    L.moe.n_expert = n_expert;
    L.moe.n_expert_used = n_used;
    L.moe.n_ff_exp = per_layer_uint(f, p + "expert_feed_forward_length", il, L.n_ff_dense, false);
    if (n_group > 1) {
      L.moe.n_group = n_group;
      L.moe.topk_group = n_group_used;
    }
  }
  s.tied_output = f.find_tensor("output.weight") == nullptr;
  arch.load_spec(f, s);

  // Derived after the arch hook, which may set the YaRN log multiplier (llama_context's yarn_attn_factor).
  if (s.yarn.ext_factor != 0.0f) {
    auto get_mscale = [](float scale, float mscale) {
      return scale <= 1.0f ? 1.0f : (0.1f * mscale * std::log(scale) + 1.0f);
    };
    const float fac = 1.0f / s.rope_freq_scale;
    float attn_factor;
    if (s.yarn.log_mul != 0.0f) {
      const float mscale_all_dims = s.yarn.log_mul;
      const float mscale = s.yarn.log_mul_sets_mscale && mscale_all_dims != 1.0f ? mscale_all_dims : 1.0f;
      attn_factor = get_mscale(fac, mscale) / get_mscale(fac, mscale_all_dims);
    } else {
      attn_factor = get_mscale(fac, 1.0f);
    }
    // The rope kernel multiplies by (1 + 0.1 ln factor) again; llama.cpp cancels it here.
    s.yarn.attn_factor = attn_factor * (1.0f / (1.0f + 0.1f * std::log(fac)));
  }
  s.yarn.attn_factor *= rope_attn_factor;
  if (s.head_dim_v != s.head_dim && !s.is_mla())
    fail("{}: key '{}': value_length {} != key_length {} is not supported for {}", f.path(),
         p + "attention.value_length", s.head_dim_v, s.head_dim, arch.name);
  for (int il = 0; il < s.n_layer; ++il) {
    const LayerSpec& L = s.layers[il];
    if (L.is_moe) {
      check_positive(f, p + "expert_feed_forward_length", L.moe.n_ff_exp, int64_t(1) << 20);
      if (L.moe.n_shared > 0) check_positive(f, p + "expert_shared_feed_forward_length", L.moe.n_ff_shexp, 1 << 20);
    } else {
      check_positive(f, p + "feed_forward_length", L.n_ff_dense, int64_t(1) << 22);
    }
  }
  if (arch.post_load) arch.post_load(s);
  return s;
}

void save_model_spec(const ModelSpec& s, const ArchDescriptor& arch, gguf::Writer& w) {
  using gguf::Value;
  const std::string p = arch.name + ".";
  w.set("general.architecture", Value::make_string(arch.name));
  if (!s.name.empty()) w.set("general.name", Value::make_string(s.name));
  w.set(p + "vocab_size", Value::make_u32(static_cast<uint32_t>(s.n_vocab)));
  w.set(p + "context_length", Value::make_u32(static_cast<uint32_t>(s.n_ctx_train)));
  w.set(p + "embedding_length", Value::make_u32(static_cast<uint32_t>(s.n_embd)));
  w.set(p + "block_count", Value::make_u32(static_cast<uint32_t>(s.n_layer + s.n_layer_nextn)));
  if (s.n_layer_nextn > 0) w.set(p + "nextn_predict_layers", Value::make_u32(static_cast<uint32_t>(s.n_layer_nextn)));
  // The dense width: from the first dense layer if any, else the expert width (as converters do).
  int64_t n_ff = 0, n_ff_exp = 0;
  int n_expert = 0, n_used = 0;
  for (const auto& L : s.layers) {
    if (!L.is_moe && n_ff == 0) n_ff = L.n_ff_dense;
    if (L.is_moe && n_expert == 0) {
      n_expert = L.moe.n_expert;
      n_used = L.moe.n_expert_used;
      n_ff_exp = L.moe.n_ff_exp;
    }
  }
  w.set(p + "feed_forward_length", Value::make_u32(static_cast<uint32_t>(n_ff ? n_ff : n_ff_exp)));
  w.set(p + "attention.head_count", Value::make_u32(static_cast<uint32_t>(s.n_head)));
  w.set(p + "attention.head_count_kv", Value::make_u32(static_cast<uint32_t>(s.n_head_kv)));
  w.set(p + "attention.key_length", Value::make_u32(static_cast<uint32_t>(s.head_dim)));
  w.set(p + "attention.value_length", Value::make_u32(static_cast<uint32_t>(s.v_dim_head())));
  w.set(p + "attention.layer_norm_rms_epsilon", Value::make_f32(s.rms_eps));
  if (s.attn_scale != 0.0f) w.set(p + "attention.scale", Value::make_f32(s.attn_scale));
  w.set(p + "rope.freq_base", Value::make_f32(s.rope_base));
  w.set(p + "rope.dimension_count", Value::make_u32(static_cast<uint32_t>(s.n_rot)));
  if (s.yarn.ext_factor != 0.0f || s.rope_freq_scale != 1.0f) {
    w.set(p + "rope.scaling.type", Value::make_string(s.yarn.ext_factor != 0.0f ? "yarn" : "linear"));
    w.set(p + "rope.scaling.factor", Value::make_f32(1.0f / s.rope_freq_scale));
    if (s.yarn.ext_factor != 0.0f && s.yarn.n_ctx_orig > 0)
      w.set(p + "rope.scaling.original_context_length", Value::make_u32(static_cast<uint32_t>(s.yarn.n_ctx_orig)));
  }
  const MoeSpec* first_moe = nullptr;
  for (const auto& L : s.layers)
    if (L.is_moe && !first_moe) first_moe = &L.moe;
  if (first_moe && first_moe->n_group > 1) {
    w.set(p + "expert_group_count", Value::make_u32(static_cast<uint32_t>(first_moe->n_group)));
    w.set(p + "expert_group_used_count", Value::make_u32(static_cast<uint32_t>(first_moe->topk_group)));
  }
  if (n_expert > 0) {
    w.set(p + "expert_count", Value::make_u32(static_cast<uint32_t>(n_expert)));
    w.set(p + "expert_used_count", Value::make_u32(static_cast<uint32_t>(n_used)));
    w.set(p + "expert_feed_forward_length", Value::make_u32(static_cast<uint32_t>(n_ff_exp)));
  }
  if (arch.save_spec) arch.save_spec(s, w);
}

namespace roles {

using Shape = std::vector<int64_t>;

std::vector<TensorRoleDesc> common_io(bool output_optional) {
  return {
      {Role::TokenEmbd, "token_embd.weight", false, Placement::Embedding,
       [](const ModelSpec& s, int) { return Shape{s.n_embd, s.n_vocab}; }},
      {Role::OutputNorm, "output_norm.weight", false, Placement::Norm,
       [](const ModelSpec& s, int) { return Shape{s.n_embd}; }},
      {Role::Output, "output.weight", false, Placement::Output,
       [](const ModelSpec& s, int) { return Shape{s.n_embd, s.n_vocab}; }, output_optional},
  };
}

std::vector<TensorRoleDesc> common_attention(bool with_qkv_bias, QkNorm qk_norm) {
  std::vector<TensorRoleDesc> r = {
      {Role::AttnNorm, "blk.%d.attn_norm.weight", true, Placement::Norm,
       [](const ModelSpec& s, int) { return Shape{s.n_embd}; }},
      {Role::AttnQ, "blk.%d.attn_q.weight", true, Placement::Attention,
       [](const ModelSpec& s, int) { return Shape{s.n_embd, s.q_dim()}; }},
      {Role::AttnK, "blk.%d.attn_k.weight", true, Placement::Attention,
       [](const ModelSpec& s, int) { return Shape{s.n_embd, s.kv_dim()}; }},
      {Role::AttnV, "blk.%d.attn_v.weight", true, Placement::Attention,
       [](const ModelSpec& s, int) { return Shape{s.n_embd, s.kv_dim()}; }},
      {Role::AttnOut, "blk.%d.attn_output.weight", true, Placement::Attention,
       [](const ModelSpec& s, int) { return Shape{s.q_dim(), s.n_embd}; }},
      {Role::AttnOutBias, "blk.%d.attn_output.bias", true, Placement::Attention,
       [](const ModelSpec& s, int) { return Shape{s.n_embd}; }, true},
  };
  if (with_qkv_bias) {
    r.push_back({Role::AttnQBias, "blk.%d.attn_q.bias", true, Placement::Attention,
                 [](const ModelSpec& s, int) { return Shape{s.q_dim()}; }});
    r.push_back({Role::AttnKBias, "blk.%d.attn_k.bias", true, Placement::Attention,
                 [](const ModelSpec& s, int) { return Shape{s.kv_dim()}; }});
    r.push_back({Role::AttnVBias, "blk.%d.attn_v.bias", true, Placement::Attention,
                 [](const ModelSpec& s, int) { return Shape{s.kv_dim()}; }});
  }
  if (qk_norm == QkNorm::PerHead) {
    r.push_back({Role::AttnQNorm, "blk.%d.attn_q_norm.weight", true, Placement::Norm,
                 [](const ModelSpec& s, int) { return Shape{s.head_dim}; }});
    r.push_back({Role::AttnKNorm, "blk.%d.attn_k_norm.weight", true, Placement::Norm,
                 [](const ModelSpec& s, int) { return Shape{s.head_dim}; }});
  } else if (qk_norm == QkNorm::Full) {
    r.push_back({Role::AttnQNorm, "blk.%d.attn_q_norm.weight", true, Placement::Norm,
                 [](const ModelSpec& s, int) { return Shape{s.q_dim()}; }});
    r.push_back({Role::AttnKNorm, "blk.%d.attn_k_norm.weight", true, Placement::Norm,
                 [](const ModelSpec& s, int) { return Shape{s.kv_dim()}; }});
  }
  r.push_back({Role::FfnNorm, "blk.%d.ffn_norm.weight", true, Placement::Norm,
               [](const ModelSpec& s, int) { return Shape{s.n_embd}; }});
  return r;
}

std::vector<TensorRoleDesc> dense_ffn() {
  auto dense = [](Shape (*f)(const ModelSpec&, const LayerSpec&)) {
    return [f](const ModelSpec& s, int il) { return s.layers[il].is_moe ? Shape{} : f(s, s.layers[il]); };
  };
  return {
      {Role::FfnGate, "blk.%d.ffn_gate.weight", true, Placement::DenseFfn,
       dense([](const ModelSpec& s, const LayerSpec& L) { return Shape{s.n_embd, L.n_ff_dense}; })},
      {Role::FfnUp, "blk.%d.ffn_up.weight", true, Placement::DenseFfn,
       dense([](const ModelSpec& s, const LayerSpec& L) { return Shape{s.n_embd, L.n_ff_dense}; })},
      {Role::FfnDown, "blk.%d.ffn_down.weight", true, Placement::DenseFfn,
       dense([](const ModelSpec& s, const LayerSpec& L) { return Shape{L.n_ff_dense, s.n_embd}; })},
  };
}

std::vector<TensorRoleDesc> routed_experts() {
  auto moe = [](Shape (*f)(const ModelSpec&, const MoeSpec&)) {
    return [f](const ModelSpec& s, int il) { return s.layers[il].is_moe ? f(s, s.layers[il].moe) : Shape{}; };
  };
  return {
      {Role::Router, "blk.%d.ffn_gate_inp.weight", true, Placement::Router,
       moe([](const ModelSpec& s, const MoeSpec& m) { return Shape{s.n_embd, m.n_expert}; })},
      // Selection-only bias (DeepSeek-V3, aux-loss-free training): used when present.
      {Role::RouterBias, "blk.%d.exp_probs_b.bias", true, Placement::Router,
       moe([](const ModelSpec&, const MoeSpec& m) { return Shape{m.n_expert}; }), true},
      {Role::ExpGate, "blk.%d.ffn_gate_exps.weight", true, Placement::Expert,
       moe([](const ModelSpec& s, const MoeSpec& m) { return Shape{s.n_embd, m.n_ff_exp, m.n_expert}; })},
      {Role::ExpUp, "blk.%d.ffn_up_exps.weight", true, Placement::Expert,
       moe([](const ModelSpec& s, const MoeSpec& m) { return Shape{s.n_embd, m.n_ff_exp, m.n_expert}; })},
      {Role::ExpDown, "blk.%d.ffn_down_exps.weight", true, Placement::Expert,
       moe([](const ModelSpec& s, const MoeSpec& m) { return Shape{m.n_ff_exp, s.n_embd, m.n_expert}; })},
  };
}

std::vector<TensorRoleDesc> shared_experts(bool with_gate) {
  auto sh = [](Shape (*f)(const ModelSpec&, const MoeSpec&)) {
    return [f](const ModelSpec& s, int il) {
      const LayerSpec& L = s.layers[il];
      return L.is_moe && L.moe.n_shared > 0 ? f(s, L.moe) : Shape{};
    };
  };
  std::vector<TensorRoleDesc> r = {
      {Role::ShexpGate, "blk.%d.ffn_gate_shexp.weight", true, Placement::SharedExpert,
       sh([](const ModelSpec& s, const MoeSpec& m) { return Shape{s.n_embd, m.n_ff_shexp}; })},
      {Role::ShexpUp, "blk.%d.ffn_up_shexp.weight", true, Placement::SharedExpert,
       sh([](const ModelSpec& s, const MoeSpec& m) { return Shape{s.n_embd, m.n_ff_shexp}; })},
      {Role::ShexpDown, "blk.%d.ffn_down_shexp.weight", true, Placement::SharedExpert,
       sh([](const ModelSpec& s, const MoeSpec& m) { return Shape{m.n_ff_shexp, s.n_embd}; })},
  };
  if (with_gate) {
    r.push_back({Role::ShexpRouter, "blk.%d.ffn_gate_inp_shexp.weight", true, Placement::SharedExpert,
                 sh([](const ModelSpec& s, const MoeSpec&) { return Shape{s.n_embd}; })});
  }
  return r;
}

std::vector<TensorRoleDesc> expert_biases() {
  auto moe = [](Shape (*f)(const ModelSpec&, const MoeSpec&)) {
    return [f](const ModelSpec& s, int il) { return s.layers[il].is_moe ? f(s, s.layers[il].moe) : Shape{}; };
  };
  return {
      {Role::RouterLogitBias, "blk.%d.ffn_gate_inp.bias", true, Placement::Router,
       moe([](const ModelSpec&, const MoeSpec& m) { return Shape{m.n_expert}; })},
      {Role::ExpGateBias, "blk.%d.ffn_gate_exps.bias", true, Placement::ExpertBias,
       moe([](const ModelSpec&, const MoeSpec& m) { return Shape{m.n_ff_exp, m.n_expert}; })},
      {Role::ExpUpBias, "blk.%d.ffn_up_exps.bias", true, Placement::ExpertBias,
       moe([](const ModelSpec&, const MoeSpec& m) { return Shape{m.n_ff_exp, m.n_expert}; })},
      {Role::ExpDownBias, "blk.%d.ffn_down_exps.bias", true, Placement::ExpertBias,
       moe([](const ModelSpec& s, const MoeSpec& m) { return Shape{s.n_embd, m.n_expert}; })},
  };
}

std::vector<UnusedTensorDesc> nextn_layers(const ModelSpec& s, const std::vector<TensorRoleDesc>& roles) {
  std::vector<UnusedTensorDesc> out;
  if (s.n_layer_nextn <= 0 || s.layers.empty()) return out;
  // A spec whose extra layers are copies of the last one, so the role shapes can be asked for them.
  ModelSpec ext = s;
  for (int i = 0; i < s.n_layer_nextn; ++i) ext.layers.push_back(s.layers.back());
  ext.n_layer = s.n_layer + s.n_layer_nextn;
  char name[256];
  for (int il = s.n_layer; il < ext.n_layer; ++il) {
    for (const TensorRoleDesc& d : roles) {
      if (!d.per_layer) continue;
      std::vector<int64_t> dims = d.shape(ext, il);
      if (dims.empty() || (d.optional && d.role != Role::RouterBias)) continue;
      std::snprintf(name, sizeof name, d.gguf_name, il);
      out.push_back({name, dims, d.placement, d.role});
    }
    const struct {
      const char* pattern;
      std::vector<int64_t> dims;
      Placement placement;
    } extra[] = {
        {"blk.%d.nextn.eh_proj.weight", {2 * s.n_embd, s.n_embd}, Placement::Attention},
        {"blk.%d.nextn.enorm.weight", {s.n_embd}, Placement::Norm},
        {"blk.%d.nextn.hnorm.weight", {s.n_embd}, Placement::Norm},
        {"blk.%d.nextn.shared_head_norm.weight", {s.n_embd}, Placement::Norm},
    };
    for (const auto& e : extra) {
      std::snprintf(name, sizeof name, e.pattern, il);
      out.push_back({name, e.dims, e.placement, Role::Count});
    }
  }
  return out;
}

std::vector<TensorRoleDesc> concat(std::initializer_list<std::vector<TensorRoleDesc>> groups) {
  std::vector<TensorRoleDesc> out;
  for (const auto& g : groups) out.insert(out.end(), g.begin(), g.end());
  return out;
}

}  // namespace roles
}  // namespace moe
