// The expert-cache simulator (techniques.md section 4): replays a routing trace against the expert
// store's own bookkeeping (moe/expert_residency.h, the object BudgetedExpertStore runs, with every
// cache policy the store has), with or without a prefetch predictor, plus Belady's optimal policy, for
// a grid of pool sizes.
//
// The replay makes the calls a forward step makes (ForwardPass::ffn, ExpertExecutor::run), per step and
// MoE layer in order: the predictor's speculative hint for the next MoE layer, the declaration of the
// layer's distinct experts (ascending id), then the acquires in the
// executor's order: first every expert the pool holds, then the others one at a time. Reads complete at
// once. Hence, for one sequence of calls (one session):
//   * prefetch off: the hit and miss counts equal the store's exactly, for every policy and pool size,
//     batched or token by token (tests/test_cache_sim.cpp checks it against BudgetedExpertStore);
//   * with a predictor (the gate one needs the trace's lookahead rankings; the transition one a table):
//     equal whenever order_sensitive is 0, i.e. no acquire had to evict an expert a hint had brought
//     in but that was not used yet (the store can evict it only once its read has finished), and no
//     expert still being read by a hint was acquired after a miss the declaration could not place.
// Belady's policy (evict the expert whose next use is farthest) has no predictor; it is the ceiling of
// demand caching for the same pool.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "analysis/trace_format.h"
#include "moe/expert_residency.h"
#include "moe/transition_table.h"

namespace moe {

enum class SimPredictor { None, Gate, Transition };
const char* sim_predictor_name(SimPredictor p);

struct CacheSimConfig {
  std::string policy;  // a store policy (cache_policy_names()) or "belady"
  size_t slots = 0;    // full-precision experts the pool holds (BudgetedExpertStore::n_slots())
  SimPredictor predictor = SimPredictor::None;
  int margin = 2;      // the predictor hints the next layer's top (k + margin)
};

struct CacheSimResult {
  CacheSimConfig config;
  std::vector<uint64_t> hits, misses;  // per block layer, as ExpertStoreStats
  uint64_t gen_hits = 0, gen_misses = 0;  // over steps whose tokens are all generated
  uint64_t loads = 0, bytes_read = 0, gen_bytes_read = 0;
  uint64_t prefetch_issued = 0, prefetch_used = 0, prefetch_wasted = 0, prefetch_throttled = 0;
  uint64_t order_sensitive = 0;
  uint64_t total_hits() const;
  uint64_t total_misses() const;
  double hit_rate() const;
  double gen_hit_rate() const;
};

class CacheSimulator {
 public:
  // read_bytes: per MoE layer, the bytes one expert's read transfers (the trace header's
  // memory.expert_read_bytes; 0s when unknown). table: for SimPredictor::Transition (may be null
  // otherwise).
  CacheSimulator(const TraceHeader& header, std::vector<CacheSimConfig> configs, std::vector<uint64_t> read_bytes,
                 const TransitionTable* table = nullptr);
  ~CacheSimulator();
  void add_step(const TraceStep& step);
  std::vector<CacheSimResult> finish();

 private:
  struct Run;
  void replay(Run& run, const TraceStep& s, bool generated);
  void belady(CacheSimResult& out) const;

  TraceHeader header_;
  std::vector<uint64_t> read_bytes_;
  const TransitionTable* table_;
  std::vector<std::unique_ptr<Run>> runs_;
  std::vector<CacheSimConfig> belady_;
  int n_expert_max_ = 0;
  // Belady: every layer-step's declared experts, as keys, in call order; groups_ marks where each
  // layer-step starts, gen_ whether its step was generated.
  std::vector<uint32_t> accesses_;
  std::vector<uint32_t> groups_;
  std::vector<uint8_t> gen_;
  std::vector<int32_t> needed_, hint_, top_;
  std::vector<double> scores_;
};

// The pool sizes `moe analyze --simulate` tries by default: from the largest k (the least the store
// accepts) to every expert of every MoE layer.
std::vector<size_t> default_slot_grid(const TraceHeader& header);

}  // namespace moe
