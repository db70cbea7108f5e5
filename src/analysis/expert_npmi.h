// nPMI between a class of tokens x (a domain, a text) and an expert e of a layer (techniques.md
// section 4): nPMI = log2(p(x, e) / (p(x) p(e))) / -log2 p(x, e), counted over token positions, where
// "e active" means e was selected for the token. -1 when x and e never co-occur; 1 when they always do.
#pragma once
#include <cstdint>
#include <vector>

namespace moe {

// counts[c][l][e]: tokens of class c whose routing in layer l selected expert e (dense layers: empty);
// tokens[c]: tokens of class c. Returns npmi[c][l][e] (empty for dense layers).
std::vector<std::vector<std::vector<double>>> expert_npmi(const std::vector<std::vector<std::vector<uint64_t>>>& counts,
                                                          const std::vector<uint64_t>& tokens);

}  // namespace moe
