// Granite-MoE: softmax gate with renormalized top-k; embedding, residual, attention and logit scales
// from metadata; optional ungated shared expert; usually tied output. Normal rope.
#include "format/gguf.h"
#include "model/arch.h"

namespace moe {

const ArchDescriptor& arch_granitemoe() {
  static const ArchDescriptor d{
      "granitemoe",
      [](const gguf::File& f, ModelSpec& s) {
        s.rope_style = RopeStyle::Normal;
        s.embedding_scale = static_cast<float>(f.get_float_or("granitemoe.embedding_scale", 0.0));
        s.residual_scale = static_cast<float>(f.get_float_or("granitemoe.residual_scale", 0.0));
        s.logit_scale = static_cast<float>(f.get_float("granitemoe.logit_scale"));
        const int64_t n_ff_shexp = static_cast<int64_t>(f.get_uint_or("granitemoe.expert_shared_feed_forward_length", 0));
        for (auto& L : s.layers) {
          L.moe.norm_topk = true;
          if (n_ff_shexp > 0) {
            L.moe.n_shared = 1;
            L.moe.n_ff_shexp = n_ff_shexp;
          }
        }
      },
      roles::concat({roles::common_io(true), roles::common_attention(false, QkNorm::None), roles::routed_experts(),
                     roles::shared_experts(false)}),
      [](const ModelSpec& s, gguf::Writer& w) {
        if (s.embedding_scale != 0.0f) w.set("granitemoe.embedding_scale", gguf::Value::make_f32(s.embedding_scale));
        if (s.residual_scale != 0.0f) w.set("granitemoe.residual_scale", gguf::Value::make_f32(s.residual_scale));
        if (s.attn_scale != 0.0f) w.set("granitemoe.attention.scale", gguf::Value::make_f32(s.attn_scale));
        w.set("granitemoe.logit_scale", gguf::Value::make_f32(s.logit_scale != 0.0f ? s.logit_scale : 1.0f));
        if (!s.layers.empty() && s.layers[0].moe.n_shared > 0)
          w.set("granitemoe.expert_shared_feed_forward_length",
                gguf::Value::make_u32(static_cast<uint32_t>(s.layers[0].moe.n_ff_shexp)));
      },
  };
  return d;
}

}  // namespace moe
