// Quality cost of a change to the forward pass (precision tiers, pruning, quantization), measured on
// two logits files of the same tokens: KL divergence of the next-token distributions and top-1
// agreement (design.md "Numbers we trust").
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moe {

struct LogitComparison {
  int64_t n_tokens = 0;
  int64_t n_vocab = 0;
  std::vector<double> kl;    // per token: KL(softmax(a) || softmax(b)) in nats
  double mean_kl = 0;
  double max_kl = 0;
  int64_t max_kl_token = 0;  // where max_kl is
  double p99_kl = 0;         // nearest-rank 99th percentile of the per-token values
  double median_kl = 0;      // nearest-rank 50th percentile
  double top1_agreement = 0; // fraction of tokens whose arg-max agrees (first index on ties)
};

// a, b: [n_tokens][n_vocab] logits. Computed in double with log-softmax, so identical rows give 0.
LogitComparison compare_logits(const float* a, const float* b, int64_t n_tokens, int64_t n_vocab);

// Reads a float32 logits file written by `moe logits` ([n_tokens][n_vocab], row-major). Throws naming
// the file when it is missing, empty, or not a whole number of rows of n_vocab floats.
std::vector<float> read_logits_file(const std::string& path, int64_t n_vocab);

}  // namespace moe
