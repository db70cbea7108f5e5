// Balance of expert routing: shared by the trace tools (route-stats tables, perplexity reports).
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

namespace moe {

// Coefficient of variation (std / mean) of one layer's per-expert routing counts: 0 is perfectly
// balanced. NaN when there are no experts or no routings.
inline double load_cv(const std::vector<uint64_t>& counts) {
  if (counts.empty()) return NAN;
  double mean = 0;
  for (uint64_t x : counts) mean += static_cast<double>(x);
  mean /= static_cast<double>(counts.size());
  if (mean == 0) return NAN;
  double var = 0;
  for (uint64_t x : counts) var += (static_cast<double>(x) - mean) * (static_cast<double>(x) - mean);
  return std::sqrt(var / static_cast<double>(counts.size())) / mean;
}

}  // namespace moe
