// Qwen3 (dense): Qwen3-MoE's attention (per-head q/k RMSNorm, NEOX rope) with a dense SwiGLU FFN in
// every layer. The trainer's dense baseline uses it, so the dense-vs-MoE comparison changes only the FFN.
#include "model/arch.h"

namespace moe {

const ArchDescriptor& arch_qwen3() {
  static const ArchDescriptor d{
      "qwen3",
      [](const gguf::File&, ModelSpec& s) {
        s.rope_style = RopeStyle::Neox;
        s.qk_norm = QkNorm::PerHead;
      },
      roles::concat({roles::common_io(true), roles::common_attention(false, QkNorm::PerHead), roles::dense_ffn()}),
      nullptr,
  };
  return d;
}

}  // namespace moe
