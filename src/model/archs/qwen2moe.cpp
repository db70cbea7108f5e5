// Qwen1.5/2-MoE: q/k/v biases, NEOX rope, softmax gate without renormalization, and one shared expert
// whose output is scaled by sigmoid(w_s . x).
#include "format/gguf.h"
#include "model/arch.h"

namespace moe {

const ArchDescriptor& arch_qwen2moe() {
  static const ArchDescriptor d{
      "qwen2moe",
      [](const gguf::File& f, ModelSpec& s) {
        s.rope_style = RopeStyle::Neox;
        s.qkv_bias = true;
        for (auto& L : s.layers) {
          L.moe.norm_topk = false;
          L.moe.n_shared = 1;
          L.moe.n_ff_shexp = static_cast<int64_t>(
              f.get_uint_or("qwen2moe.expert_shared_feed_forward_length", static_cast<uint64_t>(L.n_ff_dense)));
          L.moe.shared_gate = SharedGate::Sigmoid;
        }
      },
      roles::concat({roles::common_io(true), roles::common_attention(true, QkNorm::None), roles::routed_experts(),
                     roles::shared_experts(true)}),
      [](const ModelSpec& s, gguf::Writer& w) {
        for (const auto& L : s.layers)
          if (L.is_moe) {
            w.set("qwen2moe.expert_shared_feed_forward_length",
                  gguf::Value::make_u32(static_cast<uint32_t>(L.moe.n_ff_shexp)));
            break;
          }
      },
  };
  return d;
}

}  // namespace moe
