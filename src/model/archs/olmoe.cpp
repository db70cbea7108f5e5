// OLMoE: q/k RMSNorm over the whole projection (before splitting heads), NEOX rope, softmax gate
// without renormalization.
#include "model/arch.h"

namespace moe {

const ArchDescriptor& arch_olmoe() {
  static const ArchDescriptor d{
      "olmoe",
      [](const gguf::File&, ModelSpec& s) {
        s.rope_style = RopeStyle::Neox;
        s.qk_norm = QkNorm::Full;
        for (auto& L : s.layers) L.moe.norm_topk = false;
      },
      roles::concat({roles::common_io(false), roles::common_attention(false, QkNorm::Full), roles::routed_experts()}),
      nullptr,
  };
  return d;
}

}  // namespace moe
