#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>

namespace moe {

int32_t argmax(const float* logits, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (logits[i] > logits[best]) best = i;
  return static_cast<int32_t>(best);
}

// The filters need the candidates in descending logit order only as far as they look: the k best for
// top-k, and for top-p the shortest prefix whose probability reaches p, found by ordering a growing
// prefix (nth_element, then sorting that prefix). Without either filter nothing is ordered: the draw walks
// the vocabulary in index order, which gives the same distribution. (Sorting all 50-150k candidates for
// every token cost a batched server step of 8 streams about a tenth of its time.)
int32_t Sampler::sample(const float* logits, int64_t n_vocab) {
  if (params_.temperature <= 0.0f) return argmax(logits, n_vocab);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const float mx = logits[argmax(logits, n_vocab)];
  const auto weight = [&](float logit) { return std::exp(static_cast<double>((logit - mx) / params_.temperature)); };
  const bool use_top_k = params_.top_k > 0 && params_.top_k < n_vocab;
  const bool use_top_p = params_.top_p < 1.0f;
  if (!use_top_k && !use_top_p) {
    weights_.resize(static_cast<size_t>(n_vocab));
    double sum = 0.0;
    for (int64_t i = 0; i < n_vocab; ++i) sum += (weights_[static_cast<size_t>(i)] = weight(logits[i]));
    const double r = u(rng_) * sum;
    double cum = 0.0;
    int32_t last = 0;
    for (int64_t i = 0; i < n_vocab; ++i) {
      const double w = weights_[static_cast<size_t>(i)];
      if (w <= 0.0) continue;
      cum += w;
      last = static_cast<int32_t>(i);
      if (r < cum) return last;
    }
    return last;
  }
  cand_.clear();
  for (int64_t i = 0; i < n_vocab; ++i) cand_.push_back({logits[i], static_cast<int32_t>(i)});
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  // The k best first, in order (n_vocab when top-k is off), and the normaliser over them.
  const size_t limit = use_top_k ? static_cast<size_t>(params_.top_k) : cand_.size();
  size_t ordered = 0;
  const auto order_prefix = [&](size_t m) {
    if (m <= ordered) return;
    const auto mid = cand_.begin() + static_cast<std::ptrdiff_t>(m);
    if (m < cand_.size()) std::nth_element(cand_.begin(), mid, cand_.end(), by_logit);
    std::sort(cand_.begin(), mid, by_logit);
    ordered = m;
  };
  if (use_top_k) {
    order_prefix(limit);
    cand_.resize(limit);
  }
  double sum = 0.0;
  for (const auto& c : cand_) sum += weight(c.first);
  size_t keep = limit;
  if (use_top_p) {
    for (size_t m = std::min<size_t>(limit, 64);; m = std::min(limit, 4 * m)) {
      order_prefix(m);
      double cum = 0.0;
      size_t n = 0;
      while (n < m) {
        cum += weight(cand_[n++].first) / sum;
        if (cum >= params_.top_p) break;
      }
      if (cum >= params_.top_p || m == limit) {
        keep = n;
        break;
      }
    }
  }
  double kept = 0.0;
  for (size_t i = 0; i < keep; ++i) kept += weight(cand_[i].first);
  const double r = u(rng_) * kept;
  double cum = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    cum += weight(cand_[i].first);
    if (r < cum) return cand_[i].second;
  }
  return cand_[keep - 1].second;
}

}  // namespace moe
