// DeepSeek-V2/V3, Kimi-K2 and other `deepseek2` files: multi-head latent attention (MLA) stored in the
// split layout current converters write (attn_kv_a_mqa, attn_k_b, attn_v_b; key_length = kv_lora_rank
// + qk_rope, value_length = kv_lora_rank, one kv head), with the query either projected directly
// (`attn_q`, V2-Lite) or through a low-rank pair with a norm (`attn_q_a`, `attn_q_a_norm`, `attn_q_b`,
// V2/V3/Kimi-K2). Normal (interleaved-pair) rope on the qk_rope part, YaRN with DeepSeek's attention
// scale mscale^2 / sqrt(qk_nope + qk_rope). MoE layers after `leading_dense_block_count` dense ones:
// softmax, sigmoid or softmax-weight gating (`expert_gating_func`), an optional `exp_probs_b` selection
// bias, group-limited top-k, optional renormalization, `expert_weights_scale`, and ungated shared
// experts stored as one FFN. A trailing NextN/MTP layer (`nextn_predict_layers`) is not run.
#include <cmath>

#include "base/error.h"
#include "format/gguf.h"
#include "model/arch.h"

namespace moe {

namespace {

using Shape = std::vector<int64_t>;

Gating gating_from_func(const gguf::File& f, const std::string& key, uint64_t func) {
  switch (func) {
    case 1: return Gating::Softmax;
    case 2: return Gating::Sigmoid;
    case 3: return Gating::SoftmaxWeight;
    default: fail("{}: key '{}': expert gating function {} is not supported (1 softmax, 2 sigmoid, 3 softmax "
                  "over the selected)", f.path(), key, func);
  }
}

std::vector<TensorRoleDesc> mla_attention() {
  auto low_rank_q = [](Shape (*f)(const ModelSpec&)) {
    return [f](const ModelSpec& s, int) { return s.mla.q_lora_rank > 0 ? f(s) : Shape{}; };
  };
  auto direct_q = [](Shape (*f)(const ModelSpec&)) {
    return [f](const ModelSpec& s, int) { return s.mla.q_lora_rank > 0 ? Shape{} : f(s); };
  };
  return {
      {Role::AttnNorm, "blk.%d.attn_norm.weight", true, Placement::Norm,
       [](const ModelSpec& s, int) { return Shape{s.n_embd}; }},
      {Role::AttnQ, "blk.%d.attn_q.weight", true, Placement::Attention,
       direct_q([](const ModelSpec& s) { return Shape{s.n_embd, s.n_head * (s.mla.qk_nope + s.mla.qk_rope)}; })},
      {Role::AttnQA, "blk.%d.attn_q_a.weight", true, Placement::Attention,
       low_rank_q([](const ModelSpec& s) { return Shape{s.n_embd, s.mla.q_lora_rank}; })},
      {Role::AttnQANorm, "blk.%d.attn_q_a_norm.weight", true, Placement::Norm,
       low_rank_q([](const ModelSpec& s) { return Shape{s.mla.q_lora_rank}; })},
      {Role::AttnQB, "blk.%d.attn_q_b.weight", true, Placement::Attention,
       low_rank_q([](const ModelSpec& s) {
         return Shape{s.mla.q_lora_rank, s.n_head * (s.mla.qk_nope + s.mla.qk_rope)};
       })},
      {Role::AttnKvA, "blk.%d.attn_kv_a_mqa.weight", true, Placement::Attention,
       [](const ModelSpec& s, int) { return Shape{s.n_embd, s.mla.kv_lora_rank + s.mla.qk_rope}; }},
      {Role::AttnKvANorm, "blk.%d.attn_kv_a_norm.weight", true, Placement::Norm,
       [](const ModelSpec& s, int) { return Shape{s.mla.kv_lora_rank}; }},
      {Role::AttnKB, "blk.%d.attn_k_b.weight", true, Placement::Attention,
       [](const ModelSpec& s, int) { return Shape{s.mla.qk_nope, s.mla.kv_lora_rank, s.n_head}; }},
      {Role::AttnVB, "blk.%d.attn_v_b.weight", true, Placement::Attention,
       [](const ModelSpec& s, int) { return Shape{s.mla.kv_lora_rank, s.mla.v_head, s.n_head}; }},
      {Role::AttnOut, "blk.%d.attn_output.weight", true, Placement::Attention,
       [](const ModelSpec& s, int) { return Shape{s.n_head * s.mla.v_head, s.n_embd}; }},
      {Role::FfnNorm, "blk.%d.ffn_norm.weight", true, Placement::Norm,
       [](const ModelSpec& s, int) { return Shape{s.n_embd}; }},
  };
}

std::vector<TensorRoleDesc> deepseek2_roles() {
  return roles::concat({roles::common_io(true), mla_attention(), roles::dense_ffn(), roles::routed_experts(),
                        roles::shared_experts(false)});
}

}  // namespace

const ArchDescriptor& arch_deepseek2() {
  static const ArchDescriptor d = [] {
    ArchDescriptor a;
    a.name = "deepseek2";
    a.load_spec = [](const gguf::File& f, ModelSpec& s) {
        const std::string p = "deepseek2.";
        s.rope_style = RopeStyle::Normal;
        if (!f.has(p + "attention.kv_lora_rank") || !f.has(p + "attention.key_length_mla"))
          fail("{}: key '{}': missing; files with the old unsplit attn_kv_b layout are not supported (convert the "
               "model again with a current convert_hf_to_gguf.py, which writes attn_k_b / attn_v_b)",
               f.path(), p + (f.has(p + "attention.kv_lora_rank") ? "attention.key_length_mla" : "attention.kv_lora_rank"));
        MlaSpec& m = s.mla;
        m.kv_lora_rank = static_cast<int64_t>(f.get_uint(p + "attention.kv_lora_rank"));
        m.q_lora_rank = static_cast<int64_t>(f.get_uint_or(p + "attention.q_lora_rank", 0));
        const int64_t k_mla = static_cast<int64_t>(f.get_uint(p + "attention.key_length_mla"));
        m.v_head = static_cast<int64_t>(f.get_uint_or(p + "attention.value_length_mla", static_cast<uint64_t>(k_mla)));
        m.qk_rope = s.n_rot;
        m.qk_nope = k_mla - s.n_rot;
        if (m.kv_lora_rank <= 0 || m.kv_lora_rank > 65536)
          fail("{}: key '{}': {} out of range", f.path(), p + "attention.kv_lora_rank", m.kv_lora_rank);
        if (m.q_lora_rank < 0 || m.q_lora_rank > 65536)
          fail("{}: key '{}': {} out of range", f.path(), p + "attention.q_lora_rank", m.q_lora_rank);
        if (m.qk_nope < 1 || k_mla > 4096)
          fail("{}: key '{}': {} must exceed rope.dimension_count {}", f.path(), p + "attention.key_length_mla", k_mla,
               s.n_rot);
        if (m.v_head <= 0 || m.v_head > 4096)
          fail("{}: key '{}': {} out of range", f.path(), p + "attention.value_length_mla", m.v_head);
        // Attention runs as multi-query attention over the cached latent and rope key.
        if (s.n_head_kv != 1 || s.head_dim != m.kv_lora_rank + m.qk_rope || s.head_dim_v != m.kv_lora_rank)
          fail("{}: key '{}': MLA files have 1 kv head of key length kv_lora_rank + rope ({}) and value length "
               "kv_lora_rank ({}); found {} kv heads of {} / {}",
               f.path(), p + "attention.key_length", m.kv_lora_rank + m.qk_rope, m.kv_lora_rank, s.n_head_kv,
               s.head_dim, s.head_dim_v);
        if (f.get_float_or(p + "attention.temperature_scale", 0.0) != 0.0)
          fail("{}: key '{}': attention temperature tuning is not supported", f.path(),
               p + "attention.temperature_scale");
        if (f.has(p + "rope.scaling.yarn_log_multiplier")) {
          // The converter stores 0.1 * mscale_all_dim; llama.cpp divides the factor back out.
          s.yarn.log_mul = static_cast<float>(f.get_float(p + "rope.scaling.yarn_log_multiplier")) / 0.1f;
          s.yarn.log_mul_sets_mscale = true;
        }

        const int64_t n_dense = static_cast<int64_t>(f.get_uint_or(p + "leading_dense_block_count", 0));
        const int n_shared = static_cast<int>(f.get_uint(p + "expert_shared_count"));
        if (n_shared < 0 || n_shared > 64) fail("{}: key '{}': {} out of range", f.path(), p + "expert_shared_count", n_shared);
        const float w_scale = static_cast<float>(f.get_float_or(p + "expert_weights_scale", 0.0));
        const bool w_norm = f.get_bool_or(p + "expert_weights_norm", false);
        uint64_t func = f.get_uint_or(p + "expert_gating_func", 0);
        // llama.cpp's default for files written before the key existed (and its GLM-4.7-Lite case).
        if (func == 0) func = ((s.n_layer == 47 || s.n_layer == 48) && s.n_vocab == 154880) ? 2 : 1;
        const Gating gating = gating_from_func(f, p + "expert_gating_func", func);
        for (int il = 0; il < s.n_layer; ++il) {
          LayerSpec& L = s.layers[il];
          if (il < n_dense) {
            L.is_moe = false;
            continue;
          }
          if (!L.is_moe) fail("{}: key '{}': layer {} is a MoE layer but the file has no experts", f.path(),
                              p + "expert_count", il);
          L.moe.gating = gating;
          L.moe.norm_topk = w_norm;
          L.moe.route_scale = (w_scale == 0.0f) ? 1.0f : w_scale;  // llama.cpp: 0 and 1 both mean none
          L.moe.n_shared = n_shared;
          L.moe.n_ff_shexp = L.moe.n_ff_exp * n_shared;
          L.moe.shared_gate = SharedGate::None;
        }
      };
    a.roles = deepseek2_roles();
    a.save_spec = [](const ModelSpec& s, gguf::Writer& w) {
        using gguf::Value;
        const std::string p = "deepseek2.";
        uint32_t n_dense = 0;
        while (n_dense < s.layers.size() && !s.layers[n_dense].is_moe) ++n_dense;
        w.set(p + "leading_dense_block_count", Value::make_u32(n_dense));
        const LayerSpec* moe = n_dense < s.layers.size() ? &s.layers[n_dense] : nullptr;
        w.set(p + "expert_shared_count", Value::make_u32(moe ? static_cast<uint32_t>(moe->moe.n_shared) : 0));
        if (moe) {
          w.set(p + "expert_weights_scale", Value::make_f32(moe->moe.route_scale));
          if (moe->moe.norm_topk) w.set(p + "expert_weights_norm", Value::make_bool(true));
          const uint32_t func = moe->moe.gating == Gating::Softmax ? 1 : moe->moe.gating == Gating::Sigmoid ? 2 : 3;
          w.set(p + "expert_gating_func", Value::make_u32(func));
        }
        // Always written: llama.cpp requires it (0 = no q low-rank) except for a few known layer counts.
        w.set(p + "attention.q_lora_rank", Value::make_u32(static_cast<uint32_t>(s.mla.q_lora_rank)));
        w.set(p + "attention.kv_lora_rank", Value::make_u32(static_cast<uint32_t>(s.mla.kv_lora_rank)));
        w.set(p + "attention.key_length_mla", Value::make_u32(static_cast<uint32_t>(s.mla.qk_nope + s.mla.qk_rope)));
        w.set(p + "attention.value_length_mla", Value::make_u32(static_cast<uint32_t>(s.mla.v_head)));
        if (s.yarn.log_mul != 0.0f) w.set(p + "rope.scaling.yarn_log_multiplier", Value::make_f32(0.1f * s.yarn.log_mul));
      };
    // kq scale: llama.cpp folds the YaRN magnitude into the softmax scale as mscale^2 / sqrt(qk_nope +
    // qk_rope), mscale from the original attn_factor and the log multiplier ([TAG_DEEPSEEK2_YARN_LOG_MUL_FIX]).
    a.post_load = [](ModelSpec& s) {
      const float log_inv_scale = std::log(1.0f / s.rope_freq_scale);
      const float attn_factor_org = s.yarn.attn_factor * (1.0f + 0.1f * log_inv_scale);
      const float mscale = attn_factor_org * (1.0f + 0.1f * s.yarn.log_mul * log_inv_scale);
      s.attn_scale = 1.0f * mscale * mscale / std::sqrt(static_cast<float>(s.mla.qk_nope + s.mla.qk_rope));
    };
    a.unused_tensors = [](const ModelSpec& s) { return roles::nextn_layers(s, deepseek2_roles()); };
    return a;
  }();
  return d;
}

}  // namespace moe
