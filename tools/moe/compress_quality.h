// "Quality, always": every compression command (quantize, prune, merge) ends by measuring what it cost on
// held-out text given with --eval FILE...: perplexity of the original and of the output, the mean KL
// divergence of the output's next-token distribution from the original's, top-1 agreement, and the file
// sizes before and after. Both models run resident through the inference engine, window by window.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace moe::cli {

struct EvalFlags {
  std::vector<std::string> files;
  int64_t ctx = 256;
  int64_t max_windows = 16;  // per file
  std::string tsv;           // also append the results here (file, tokens, ppl before/after, KL, top-1, sizes)
};

void add_eval_flags(CLI::App* sub, EvalFlags& f);

struct FileQuality {
  std::string file;
  uint64_t tokens = 0;
  double ppl_original = 0, ppl_compressed = 0;
  double kl_mean = 0;      // nats per token, KL(original || compressed)
  double top1_agree = 0;   // fraction of positions whose argmax agrees
};

// Prints the sizes, and with files the table; returns the per-file results (empty without files).
std::vector<FileQuality> report_quality(const EvalFlags& f, const std::string& original, const std::string& compressed,
                                        int threads);

}  // namespace moe::cli
