// llama: plain dense llama, and the Mixtral layout (stacked experts, softmax gate, renormalized top-k).
// Normal (interleaved) rope pairing.
#include "model/arch.h"

namespace moe {

const ArchDescriptor& arch_llama() {
  static const ArchDescriptor d{
      "llama",
      [](const gguf::File&, ModelSpec& s) {
        s.rope_style = RopeStyle::Normal;
        for (auto& L : s.layers) L.moe.norm_topk = true;
      },
      roles::concat({roles::common_io(true), roles::common_attention(false, QkNorm::None), roles::dense_ffn(),
                     roles::routed_experts()}),
      nullptr,
  };
  return d;
}

}  // namespace moe
