// `moe run --samples N --k-list 1,2,3,4` (Dynamic Experts Search style, techniques.md section 3): N
// continuations of one prompt, sample i routed with k = k_list[i mod |k_list|] in every MoE layer for
// its whole length (its own KV cache: the session is reset between samples) and sampled with seed + i.
// They are printed side by side, each with its mean log-probability (under its own k), so a scorer or a
// reader can pick; --samples-json writes them for scripts.
#pragma once
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "base/thread_pool.h"
#include "runtime/engine.h"
#include "runtime/sampler.h"
#include "runtime/session.h"
#include "tokenizer/tokenizer.h"

namespace moe::cli {

struct SamplesRequest {
  int n = 0;                // 0 = off
  std::vector<int> k_list;  // empty = the model's k for every sample
  std::string json_out;
  int width = 0;            // total width of the side-by-side view; 0 = $COLUMNS or 160
};

void add_samples_flags(CLI::App* sub, SamplesRequest& r, const std::string& group);

// The session carries the command's routing policy (which must leave k to --k-list).
int run_samples(Engine& engine, Session& session, const Tokenizer* tok, const std::vector<int32_t>& prompt,
                const SamplerParams& sampling, int n_predict, bool ignore_eos, const std::vector<std::string>& stops,
                const SamplesRequest& req, ThreadPool& pool);

// Lays texts out in columns of equal width under their headers (UTF-8 aware, newlines kept).
std::string side_by_side(const std::vector<std::string>& headers, const std::vector<std::string>& texts, int width);

}  // namespace moe::cli
