#include "analysis/logit_compare.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "base/error.h"

namespace moe {

namespace {

// log(sum(exp(x))) over one row, stable.
double log_sum_exp(const float* x, int64_t n) {
  double m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(x[i]));
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(static_cast<double>(x[i]) - m);
  return m + std::log(s);
}

double nearest_rank(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto rank = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
  return v[std::min(v.size(), std::max<size_t>(rank, 1)) - 1];
}

}  // namespace

LogitComparison compare_logits(const float* a, const float* b, int64_t n_tokens, int64_t n_vocab) {
  if (n_vocab <= 0) fail("compare logits: vocabulary size {} must be positive", n_vocab);
  LogitComparison c;
  c.n_tokens = n_tokens;
  c.n_vocab = n_vocab;
  c.kl.resize(static_cast<size_t>(n_tokens));
  int64_t agree = 0;
  double sum = 0;
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* x = a + t * n_vocab;
    const float* y = b + t * n_vocab;
    const double lx = log_sum_exp(x, n_vocab), ly = log_sum_exp(y, n_vocab);
    double kl = 0;
    for (int64_t i = 0; i < n_vocab; ++i) {
      const double lp = static_cast<double>(x[i]) - lx, lq = static_cast<double>(y[i]) - ly;
      const double p = std::exp(lp);
      if (p > 0) kl += p * (lp - lq);
    }
    kl = std::max(0.0, kl);  // rounding can leave -1e-17 for equal rows
    c.kl[static_cast<size_t>(t)] = kl;
    sum += kl;
    if (kl > c.max_kl || t == 0) {
      c.max_kl = kl;
      c.max_kl_token = t;
    }
    agree += std::max_element(x, x + n_vocab) - x == std::max_element(y, y + n_vocab) - y;
  }
  if (n_tokens > 0) {
    c.mean_kl = sum / static_cast<double>(n_tokens);
    c.top1_agreement = static_cast<double>(agree) / static_cast<double>(n_tokens);
  }
  c.p99_kl = nearest_rank(c.kl, 0.99);
  c.median_kl = nearest_rank(c.kl, 0.5);
  return c;
}

std::vector<float> read_logits_file(const std::string& path, int64_t n_vocab) {
  if (n_vocab <= 0) fail("{}: --vocab {} must be positive", path, n_vocab);
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) fail("{}: cannot read the logits file: {}", path, ec.message());
  const uint64_t row = static_cast<uint64_t>(n_vocab) * sizeof(float);
  if (size == 0 || size % row != 0)
    fail("{}: {} bytes is not a whole number of rows of {} float32 logits ({} bytes each); is --vocab right?", path,
         size, n_vocab, row);
  std::vector<float> v(static_cast<size_t>(size / sizeof(float)));
  std::ifstream in(path, std::ios::binary);
  if (!in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(size)))
    fail("{}: read of {} bytes failed", path, size);
  return v;
}

}  // namespace moe
