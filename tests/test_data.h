// Small deterministic data helpers shared by the kernel tests.
#pragma once
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

namespace moe::test {

// n samples of N(0, sigma^2) from a fixed seed.
inline std::vector<float> gaussian(int64_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = dist(rng);
  return v;
}

// The bit pattern of a float, for exact (bit-identical) comparisons that also distinguish -0 and NaNs.
inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

}  // namespace moe::test
