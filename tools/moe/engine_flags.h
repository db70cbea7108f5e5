// The flags every model-running command shares: the memory budget and expert-store settings, and the
// statistics report (--stats text on stderr, --stats-json FILE).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "model/forward.h"
#include "routing_flags.h"
#include "runtime/engine.h"
#include "runtime/sampler.h"

namespace moe::cli {

struct EngineFlags {
  std::string mem;              // --mem SIZE ("" = unlimited)
  std::string cache_policy = "distance";
  int prefetch_margin = 2;      // prefetch the next MoE layer's predicted top-(k + margin); -1 = off
  std::string predictor;        // gate | transition | none; "" = transition if --transitions is given, else gate
  std::string transitions;      // transition table file; "" = MODEL.gguf.transitions.gguf
  bool mmap = false;
  bool no_repack = false;
  bool offload_all = false;     // stream experts even when everything fits (testing/benchmarks)
  bool preload = false;         // streaming: fill the expert pool in the background from the start
  bool stats = false;
  bool batch_invariant = false;  // prompt batches attend like token-by-token decoding (bit-identical)
  std::string stats_json;
  // Precision tiers (techniques.md section 5): the low-bit side file, the routing weight below which
  // an expert may come from it, and the weight below which a (token, expert) pair is skipped.
  std::string lowbit;
  double lowbit_below = 0;
  bool lowbit_below_given = false;
  double skip_below = 0;       // the routing policy's minimum weight (--route-min-weight without renorm)
  RoutingFlags routing;         // the routing policy (routing_flags.h)
};

void add_engine_flags(CLI::App* sub, EngineFlags& f);
// --temp, --top-k, --top-p, --seed (shared by run and chat).
void add_sampling_flags(CLI::App* sub, SamplerParams& p);

// Opens the model under the budget. What the process holds at this point (VmRSS: code, libraries, a
// tokenizer, tokenized inputs) counts against --mem, and so does each reservation: memory the command
// will allocate for itself while the engine runs. experts_per_token: plan buffers and the expert pool
// for at least this many experts per token (beyond what the routing flags need; e.g. `run --k-list`;
// -1: every expert). n_seq: KV caches of n_ctx each (a server's slots). Vocabulary-only files get an
// error saying so.
std::unique_ptr<Engine> open_engine(const std::string& path, const EngineFlags& f, int64_t n_ctx, int64_t n_batch,
                                    int experts_per_token = 0, int n_seq = 1,
                                    std::vector<MemoryReservation> reserved = {});
// The EngineOptions open_engine would use (held_bytes measured now).
EngineOptions engine_options(const EngineFlags& f, int64_t n_ctx, int64_t n_batch, int experts_per_token = 0,
                             int n_seq = 1, std::vector<MemoryReservation> reserved = {});

// The precision-tier thresholds of the flags; throws on a bad combination (a threshold without
// --lowbit or the reverse, W < 0, S > W).
ExpertPrecision expert_precision(const EngineFlags& f);

// The routing policy of the flags (checked for contradictions; against the model by forward_options).
RoutingPolicy routing_policy(const EngineFlags& f);

// Forward options implied by the flags (lookahead only when experts stream). The transition table is
// loaded (and checked against the model) when experts stream or when --transitions names one. The
// routing policy is checked against the model here.
ForwardOptions forward_options(const EngineFlags& f, Engine& engine, bool llama_compat);

// The predictor the flags choose: "gate", "transition" or "none".
std::string resolved_predictor(const EngineFlags& f);

// The plan's byte counts (held, weights, KV, buffers, reservations, pool, total) as JSON.
nlohmann::ordered_json plan_bytes_json(const MemoryPlan& p);

// Expert-store and prediction statistics; `tokens`/`seconds` describe the measured generation.
nlohmann::ordered_json engine_stats_json(Engine& engine, const PredictionStats* pred, uint64_t tokens, double seconds);

// Prints (--stats) and/or writes (--stats-json) the statistics.
void report_engine_stats(const EngineFlags& f, Engine& engine, const PredictionStats* pred, uint64_t tokens,
                         double seconds);

uint64_t peak_rss_bytes();
// VmRSS: what the process holds now.
uint64_t current_rss_bytes();

}  // namespace moe::cli
