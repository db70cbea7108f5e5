#include "analysis/expert_npmi.h"

#include <cmath>

#include "base/error.h"

namespace moe {

std::vector<std::vector<std::vector<double>>> expert_npmi(const std::vector<std::vector<std::vector<uint64_t>>>& counts,
                                                          const std::vector<uint64_t>& tokens) {
  if (counts.size() != tokens.size()) fail("nPMI: {} count tables for {} classes", counts.size(), tokens.size());
  const size_t C = counts.size();
  std::vector<std::vector<std::vector<double>>> out(C);
  if (C == 0) return out;
  double n = 0;
  for (uint64_t t : tokens) n += static_cast<double>(t);
  const size_t L = counts[0].size();
  for (size_t c = 0; c < C; ++c) {
    if (counts[c].size() != L) fail("nPMI: class {} has {} layers, class 0 has {}", c, counts[c].size(), L);
    out[c].resize(L);
  }
  if (n <= 0) return out;
  for (size_t l = 0; l < L; ++l) {
    const size_t E = counts[0][l].size();
    std::vector<double> pe(E, 0.0);
    for (size_t c = 0; c < C; ++c) {
      if (counts[c][l].size() != E) fail("nPMI: class {} layer {} has {} experts, class 0 has {}", c, l, counts[c][l].size(), E);
      for (size_t e = 0; e < E; ++e) pe[e] += static_cast<double>(counts[c][l][e]) / n;
    }
    for (size_t c = 0; c < C; ++c) {
      const double px = static_cast<double>(tokens[c]) / n;
      out[c][l].resize(E);
      for (size_t e = 0; e < E; ++e) {
        const double pxe = static_cast<double>(counts[c][l][e]) / n;
        double v;
        if (pxe <= 0) v = -1.0;
        else if (pxe >= 1) v = 1.0;
        else v = std::log2(pxe / (px * pe[e])) / -std::log2(pxe);
        out[c][l][e] = v;
      }
    }
  }
  return out;
}

}  // namespace moe
