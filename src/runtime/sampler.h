// Token sampling: greedy at temperature 0, otherwise top-k -> top-p -> temperature -> draw, with a
// seeded generator so runs are reproducible.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace moe {

struct SamplerParams {
  float temperature = 0.8f;
  int top_k = 40;        // 0 = off
  float top_p = 0.95f;   // 1 = off
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(SamplerParams p) : params_(p), rng_(p.seed) {}
  int32_t sample(const float* logits, int64_t n_vocab);

 private:
  SamplerParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;
  std::vector<double> weights_;
};

int32_t argmax(const float* logits, int64_t n);

}  // namespace moe
