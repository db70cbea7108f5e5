#include "analysis/expert_npmi.h"

#include <cmath>

#include "base/error.h"

namespace moe {

double npmi_value(uint64_t n_xe, uint64_t n_x, uint64_t n_e, uint64_t n) {
  if (n_xe == 0 || n == 0) return -1.0;
  if (n_xe >= n) return 1.0;
  const double N = static_cast<double>(n);
  const double pxe = static_cast<double>(n_xe) / N;
  return std::log2(pxe / ((static_cast<double>(n_x) / N) * (static_cast<double>(n_e) / N))) / -std::log2(pxe);
}

std::vector<std::vector<std::vector<double>>> expert_npmi(const std::vector<std::vector<std::vector<uint64_t>>>& counts,
                                                          const std::vector<uint64_t>& tokens) {
  if (counts.size() != tokens.size()) fail("nPMI: {} count tables for {} classes", counts.size(), tokens.size());
  const size_t C = counts.size();
  std::vector<std::vector<std::vector<double>>> out(C);
  if (C == 0) return out;
  uint64_t n = 0;
  for (uint64_t t : tokens) n += t;
  const size_t L = counts[0].size();
  for (size_t c = 0; c < C; ++c) {
    if (counts[c].size() != L) fail("nPMI: class {} has {} layers, class 0 has {}", c, counts[c].size(), L);
    out[c].resize(L);
  }
  if (n == 0) return out;
  for (size_t l = 0; l < L; ++l) {
    const size_t E = counts[0][l].size();
    std::vector<uint64_t> n_e(E, 0);
    for (size_t c = 0; c < C; ++c) {
      if (counts[c][l].size() != E) fail("nPMI: class {} layer {} has {} experts, class 0 has {}", c, l, counts[c][l].size(), E);
      for (size_t e = 0; e < E; ++e) n_e[e] += counts[c][l][e];
    }
    for (size_t c = 0; c < C; ++c) {
      out[c][l].resize(E);
      for (size_t e = 0; e < E; ++e) out[c][l][e] = npmi_value(counts[c][l][e], tokens[c], n_e[e], n);
    }
  }
  return out;
}

}  // namespace moe
