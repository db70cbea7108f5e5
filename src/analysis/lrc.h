// Local routing consistency (techniques.md section 4; Liang et al., "Not All Models Suit Expert
// Offloading", and their moe-lrc code): how well a fixed set of experts covers a segment of tokens.
//
// Both metrics take one *run*: the consecutive tokens of one sequence at one MoE layer, each with its
// selected experts. Counts from several runs and layers add up (micro-averaging) before the ratios.
//
// SRP (segment routing best performance), for a segment length m: over every window of m consecutive
// tokens and every expert e, c_e is the number of the window's tokens routed to e. With one threshold
// c shared by all windows and experts, e is predicted active for the whole window iff c_e >= c:
//   M(c) = sum of c_e over (window, e) with c_e >= c      (correctly predicted activations)
//   P(c) = m * #{(window, e): c_e >= c}                   (predicted activations)
//   A    = sum of c_e over all (window, e)                (actual activations: windows * m * k)
//   SRP  = max over c in [0, m] of 2 M(c) / (P(c) + A).
// Runs shorter than m have no window.
//
// SCH (segment cache best hit rate), for a look-ahead m and a cache of C experts: before each token,
// the cache holds the C experts of highest priority, where priority is the number of uses in the next
// m tokens (this one included), ties broken by the more recent last use; an expert never used before
// ranks after every used one, in order of first use (the cache could have loaded it into free room).
// A use hits iff its expert's rank is below C. rank_hist[r] counts uses at rank r, so the hit rate of a
// cache of C experts is sum(rank_hist[0..C)) / uses.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace moe {

// One run at one layer: token t selected experts ids[offsets[t] .. offsets[t+1]).
struct LayerRun {
  std::vector<int32_t> ids;
  std::vector<uint32_t> offsets{0};
  size_t n_tokens() const { return offsets.size() - 1; }
  void clear() {
    ids.clear();
    offsets.assign(1, 0);
  }
};

struct SrpCounts {
  int m = 0;
  std::vector<uint64_t> matched;    // M(c), c = 0..m
  std::vector<uint64_t> predicted;  // P(c)
  uint64_t actual = 0;              // A
  uint64_t windows = 0;
  explicit SrpCounts(int seg = 0) : m(seg), matched(static_cast<size_t>(seg + 1), 0), predicted(static_cast<size_t>(seg + 1), 0) {}
  void add(const SrpCounts& o);
  // max over c of 2M/(P+A), and the smallest c reaching it (NaN / -1 without windows).
  double value() const;
  int best_threshold() const;
};

// Adds one run's windows of length counts.m (experts < n_expert).
void srp_accumulate(const LayerRun& run, int n_expert, SrpCounts& counts);

struct SchCounts {
  int m = 0;
  std::vector<uint64_t> rank_hist;  // [n_expert]: uses at each priority rank
  uint64_t uses = 0;
  SchCounts(int lookahead = 0, int n_expert = 0) : m(lookahead), rank_hist(static_cast<size_t>(n_expert), 0) {}
  void add(const SchCounts& o);
  // Hit rate of a cache of c experts.
  double hit_rate(int c) const;
};

// Adds one run (experts < n_expert = counts.rank_hist.size()).
void sch_accumulate(const LayerRun& run, SchCounts& counts);

}  // namespace moe
