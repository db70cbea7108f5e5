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

int32_t Sampler::sample(const float* logits, int64_t n_vocab) {
  if (params_.temperature <= 0.0f) return argmax(logits, n_vocab);
  cand_.clear();
  for (int64_t i = 0; i < n_vocab; ++i) cand_.push_back({logits[i], static_cast<int32_t>(i)});
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  size_t keep = cand_.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < keep) {
    keep = static_cast<size_t>(params_.top_k);
    std::partial_sort(cand_.begin(), cand_.begin() + static_cast<std::ptrdiff_t>(keep), cand_.end(), by_logit);
    cand_.resize(keep);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  // Softmax at the given temperature over the survivors.
  const float mx = cand_.front().first;
  double sum = 0.0;
  std::vector<double> p(cand_.size());
  for (size_t i = 0; i < cand_.size(); ++i) sum += (p[i] = std::exp((cand_[i].first - mx) / params_.temperature));
  for (auto& v : p) v /= sum;
  if (params_.top_p < 1.0f) {
    double cum = 0.0;
    size_t n = 0;
    while (n < p.size()) {
      cum += p[n++];
      if (cum >= params_.top_p) break;
    }
    p.resize(n);
    double s2 = 0.0;
    for (double v : p) s2 += v;
    for (auto& v : p) v /= s2;
  }
  std::uniform_real_distribution<double> u(0.0, 1.0);
  double r = u(rng_), cum = 0.0;
  for (size_t i = 0; i < p.size(); ++i) {
    cum += p[i];
    if (r < cum) return cand_[i].second;
  }
  return cand_[p.size() - 1].second;
}

}  // namespace moe
