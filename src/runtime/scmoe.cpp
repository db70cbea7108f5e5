#include "runtime/scmoe.h"

#include <algorithm>
#include <cmath>

#include "base/error.h"

namespace moe {

void ScmoeParams::check() const {
  if (!(alpha > 0 && alpha <= 1)) fail("--scmoe-alpha {}: must be in (0, 1]", alpha);
  if (!(beta >= 0 && beta <= 100)) fail("--scmoe-beta {}: must be in [0, 100]", beta);
  if (rank < 1) fail("--scmoe-rank {}: ranks count from 1 (the router's best expert)", rank);
}

RoutingPolicy scmoe_weak_policy(const RoutingPolicy& strong, int rank) {
  RoutingPolicy weak;
  weak.mask_experts = strong.mask_experts;
  weak.only_rank = rank;
  return weak;
}

namespace {

// log-softmax normalizer: log sum exp(x - max) + max, in double.
double log_norm(const float* x, int64_t n) {
  const float mx = *std::max_element(x, x + n);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(static_cast<double>(x[i] - mx));
  return mx + std::log(s);
}

}  // namespace

void scmoe_scores(const float* ls, const float* lw, int64_t n, const ScmoeParams& p, float* out) {
  const double zs = log_norm(ls, n), zw = log_norm(lw, n);
  const float best = *std::max_element(ls, ls + n);
  // log p_s[v] >= log p_s[best] + log alpha  <=>  l_s[v] >= max l_s + log alpha
  const double cut = static_cast<double>(best) + std::log(p.alpha);
  for (int64_t v = 0; v < n; ++v) {
    if (static_cast<double>(ls[v]) < cut && ls[v] != best) {
      out[v] = -INFINITY;
      continue;
    }
    const double lps = ls[v] - zs, lpw = lw[v] - zw;
    out[v] = static_cast<float>((1 + p.beta) * lps - p.beta * lpw);
  }
}

}  // namespace moe
