// The per-expert tensor layout (`moe quantize --mixed --layout per-expert`, docs/compression.md): a file whose
// metadata says moe.expert_layout = "per-expert" stores each routed expert's gate, up and down matrix as its own
// 2-D tensor, `blk.L.ffn_gate_exps.E.weight`, so experts of one layer may have different types. Standard GGUF
// (and llama.cpp) stack a layer's experts in one 3-D tensor of one type; this layout is moe.cpp's own.
// The names derive from the role table's stacked name, so every arch with stacked experts gets the layout.
#pragma once
#include <string>

namespace moe {

inline constexpr const char* kExpertLayoutKey = "moe.expert_layout";
inline constexpr const char* kExpertLayoutPerExpert = "per-expert";

// "blk.3.ffn_gate_exps.weight", 7 -> "blk.3.ffn_gate_exps.7.weight" (a name without ".weight" gets ".7").
std::string split_expert_name(const std::string& stacked_name, int expert);

}  // namespace moe
