// The sampler: greedy is argmax; otherwise draws follow softmax(logits / T) restricted by top-k and
// top-p (the nucleus: the fewest best tokens whose probability reaches p), reproducibly for a seed. The
// expected frequencies are computed here in double from the definition, not from the sampler's code.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "runtime/sampler.h"

using namespace moe;

namespace {

std::vector<float> random_logits(int64_t n, unsigned seed, float spread) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, spread);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

// Probabilities by definition: softmax at T over the top-k (by logit, ties to the lower id), then the
// nucleus of top-p, renormalised.
std::vector<double> expected(const std::vector<float>& logits, float t, int top_k, float top_p) {
  std::vector<int> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  if (top_k > 0 && static_cast<size_t>(top_k) < ids.size()) ids.resize(static_cast<size_t>(top_k));
  const double mx = logits[static_cast<size_t>(ids[0])];
  std::vector<double> w;
  double sum = 0;
  for (int id : ids) sum += w.emplace_back(std::exp((logits[static_cast<size_t>(id)] - mx) / t));
  size_t keep = ids.size();
  if (top_p < 1.0f) {
    double cum = 0;
    for (keep = 0; keep < ids.size();) {
      cum += w[keep++] / sum;
      if (cum >= top_p) break;
    }
  }
  double kept = 0;
  for (size_t i = 0; i < keep; ++i) kept += w[i];
  std::vector<double> p(logits.size(), 0.0);
  for (size_t i = 0; i < keep; ++i) p[static_cast<size_t>(ids[i])] = w[i] / kept;
  return p;
}

// Draws `n` tokens and checks every frequency against p within 5 standard deviations (plus a little),
// and that no token outside p's support is ever drawn.
void check_frequencies(const std::vector<float>& logits, SamplerParams sp, int n) {
  const auto p = expected(logits, sp.temperature, sp.top_k, sp.top_p);
  Sampler s(sp);
  std::vector<int> count(logits.size(), 0);
  for (int i = 0; i < n; ++i) ++count[static_cast<size_t>(s.sample(logits.data(), static_cast<int64_t>(logits.size())))];
  for (size_t id = 0; id < logits.size(); ++id) {
    if (p[id] == 0.0) {
      ASSERT_EQ(count[id], 0) << "token " << id << " is outside the allowed set (top_k " << sp.top_k << ", top_p " << sp.top_p << ")";
      continue;
    }
    const double sd = std::sqrt(n * p[id] * (1 - p[id]));
    EXPECT_NEAR(count[id], n * p[id], 5 * sd + 3) << "token " << id << " top_k " << sp.top_k << " top_p " << sp.top_p;
  }
}

}  // namespace

TEST(Sampler, GreedyAndTopOneAreArgmax) {
  const auto logits = random_logits(5000, 1, 2.0f);
  const auto best = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  Sampler greedy({0.0f, 0, 1.0f, 7});
  EXPECT_EQ(greedy.sample(logits.data(), 5000), best);
  Sampler top1({1.0f, 1, 1.0f, 7});
  for (int i = 0; i < 20; ++i) EXPECT_EQ(top1.sample(logits.data(), 5000), best);
  Sampler tiny_p({1.0f, 0, 1e-6f, 7});  // the nucleus is the best token alone
  for (int i = 0; i < 20; ++i) EXPECT_EQ(tiny_p.sample(logits.data(), 5000), best);
}

TEST(Sampler, FrequenciesFollowTheFilteredSoftmax) {
  const auto logits = random_logits(300, 2, 1.5f);
  check_frequencies(logits, {0.8f, 0, 1.0f, 11}, 60000);    // the whole vocabulary, no filter
  check_frequencies(logits, {1.0f, 20, 1.0f, 12}, 60000);   // top-k
  check_frequencies(logits, {0.7f, 0, 0.9f, 13}, 60000);    // top-p alone
  check_frequencies(logits, {1.3f, 40, 0.95f, 14}, 60000);  // both
  // A flat distribution: the nucleus needs most of the vocabulary (the growing prefix reaches its end).
  check_frequencies(random_logits(1000, 3, 0.05f), {1.0f, 0, 0.99f, 15}, 60000);
}

TEST(Sampler, TheSameSeedGivesTheSameTokens) {
  const auto logits = random_logits(2000, 4, 1.0f);
  for (const SamplerParams sp : {SamplerParams{0.9f, 0, 1.0f, 99}, SamplerParams{0.9f, 40, 0.95f, 99}}) {
    Sampler a(sp), b(sp);
    for (int i = 0; i < 200; ++i) ASSERT_EQ(a.sample(logits.data(), 2000), b.sample(logits.data(), 2000));
  }
}
