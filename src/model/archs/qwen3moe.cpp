// Qwen3-MoE: routed experts only, softmax gate with renormalized top-k, per-head q/k RMSNorm, NEOX rope.
#include "model/arch.h"

namespace moe {

const ArchDescriptor& arch_qwen3moe() {
  static const ArchDescriptor d{
      "qwen3moe",
      [](const gguf::File&, ModelSpec& s) {
        s.rope_style = RopeStyle::Neox;
        s.qk_norm = QkNorm::PerHead;
        for (auto& L : s.layers) L.moe.norm_topk = true;
      },
      roles::concat({roles::common_io(true), roles::common_attention(false, QkNorm::PerHead),
                     roles::routed_experts()}),
      nullptr,
  };
  return d;
}

}  // namespace moe
