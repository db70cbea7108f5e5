// DeepSeekMoE (v1, 16B): `leading_dense_block_count` dense layers first, then MoE layers with a softmax
// gate (no renormalization), `expert_weights_scale`, and `expert_shared_count` ungated shared experts
// stored as one FFN of width n_ff_exp * n_shared. Normal rope.
#include "format/gguf.h"
#include "model/arch.h"

namespace moe {

const ArchDescriptor& arch_deepseek() {
  static const ArchDescriptor d{
      "deepseek",
      [](const gguf::File& f, ModelSpec& s) {
        s.rope_style = RopeStyle::Normal;
        const int64_t n_dense = static_cast<int64_t>(f.get_uint_or("deepseek.leading_dense_block_count", 0));
        const int n_shared = static_cast<int>(f.get_uint("deepseek.expert_shared_count"));
        const float w_scale = static_cast<float>(f.get_float_or("deepseek.expert_weights_scale", 0.0));
        for (int il = 0; il < s.n_layer; ++il) {
          LayerSpec& L = s.layers[il];
          if (il < n_dense) {
            L.is_moe = false;
            continue;
          }
          L.moe.norm_topk = false;
          // llama.cpp treats 0 and 1 alike: no scaling.
          L.moe.route_scale = (w_scale == 0.0f) ? 1.0f : w_scale;
          L.moe.n_shared = n_shared;
          L.moe.n_ff_shexp = L.moe.n_ff_exp * n_shared;
          L.moe.shared_gate = SharedGate::None;
        }
      },
      roles::concat({roles::common_io(false), roles::common_attention(false, QkNorm::None), roles::dense_ffn(),
                     roles::routed_experts(), roles::shared_experts(false)}),
      [](const ModelSpec& s, gguf::Writer& w) {
        uint32_t n_dense = 0;
        while (n_dense < s.layers.size() && !s.layers[n_dense].is_moe) ++n_dense;
        w.set("deepseek.leading_dense_block_count", gguf::Value::make_u32(n_dense));
        const LayerSpec* moe = n_dense < s.layers.size() ? &s.layers[n_dense] : nullptr;
        w.set("deepseek.expert_shared_count", gguf::Value::make_u32(moe ? moe->moe.n_shared : 0));
        w.set("deepseek.expert_weights_scale", gguf::Value::make_f32(moe ? moe->moe.route_scale : 1.0f));
      },
  };
  return d;
}

}  // namespace moe
