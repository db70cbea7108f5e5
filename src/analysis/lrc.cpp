#include "analysis/lrc.h"

#include <algorithm>
#include <cmath>

#include "base/error.h"

namespace moe {

void SrpCounts::add(const SrpCounts& o) {
  if (o.m != m) fail("SRP: adding counts of segment length {} to {}", o.m, m);
  for (size_t c = 0; c < matched.size(); ++c) {
    matched[c] += o.matched[c];
    predicted[c] += o.predicted[c];
  }
  actual += o.actual;
  windows += o.windows;
}

double SrpCounts::value() const {
  const int c = best_threshold();
  if (c < 0) return NAN;
  return 2.0 * static_cast<double>(matched[static_cast<size_t>(c)]) /
         static_cast<double>(predicted[static_cast<size_t>(c)] + actual);
}

int SrpCounts::best_threshold() const {
  if (windows == 0 || actual == 0) return -1;
  int best = 0;
  double best_f1 = -1;
  for (size_t c = 0; c < matched.size(); ++c) {
    const double f1 = 2.0 * static_cast<double>(matched[c]) / std::max<double>(1.0, static_cast<double>(predicted[c] + actual));
    if (f1 > best_f1) {
      best_f1 = f1;
      best = static_cast<int>(c);
    }
  }
  return best;
}

void srp_accumulate(const LayerRun& run, int n_expert, SrpCounts& acc) {
  const int m = acc.m;
  const size_t n = run.n_tokens();
  if (m <= 0 || n < static_cast<size_t>(m)) return;
  std::vector<int> count(static_cast<size_t>(n_expert), 0);
  // hist[v]: experts whose count in the current window is v.
  std::vector<uint64_t> hist(static_cast<size_t>(m + 1), 0);
  hist[0] = static_cast<uint64_t>(n_expert);
  auto change = [&](int32_t e, int d) {
    if (e < 0 || e >= n_expert) fail("SRP: expert {} outside [0, {})", e, n_expert);
    --hist[static_cast<size_t>(count[static_cast<size_t>(e)])];
    count[static_cast<size_t>(e)] += d;
    ++hist[static_cast<size_t>(count[static_cast<size_t>(e)])];
  };
  std::vector<uint64_t> at_least(static_cast<size_t>(m + 2), 0), sum_at_least(static_cast<size_t>(m + 2), 0);
  for (size_t t = 0; t < n; ++t) {
    for (uint32_t i = run.offsets[t]; i < run.offsets[t + 1]; ++i) change(run.ids[i], +1);
    if (t >= static_cast<size_t>(m))
      for (uint32_t i = run.offsets[t - m]; i < run.offsets[t - m + 1]; ++i) change(run.ids[i], -1);
    if (t + 1 < static_cast<size_t>(m)) continue;
    // Window [t - m + 1, t]: suffix sums of the histogram over the threshold.
    uint64_t n_ge = 0, sum_ge = 0;
    for (int c = m; c >= 0; --c) {
      n_ge += hist[static_cast<size_t>(c)];
      sum_ge += static_cast<uint64_t>(c) * hist[static_cast<size_t>(c)];
      acc.matched[static_cast<size_t>(c)] += sum_ge;
      acc.predicted[static_cast<size_t>(c)] += static_cast<uint64_t>(m) * n_ge;
    }
    acc.actual += sum_ge;
    ++acc.windows;
  }
}

void SchCounts::add(const SchCounts& o) {
  if (o.m != m || o.rank_hist.size() != rank_hist.size()) fail("SCH: adding counts of another shape");
  for (size_t r = 0; r < rank_hist.size(); ++r) rank_hist[r] += o.rank_hist[r];
  uses += o.uses;
}

double SchCounts::hit_rate(int c) const {
  if (uses == 0) return NAN;
  uint64_t hits = 0;
  for (int r = 0; r < c && r < static_cast<int>(rank_hist.size()); ++r) hits += rank_hist[static_cast<size_t>(r)];
  return static_cast<double>(hits) / static_cast<double>(uses);
}

void sch_accumulate(const LayerRun& run, SchCounts& acc) {
  const int E = static_cast<int>(acc.rank_hist.size());
  const int m = acc.m;
  const size_t n = run.n_tokens();
  if (m <= 0 || n == 0) return;
  std::vector<int64_t> future(static_cast<size_t>(E), 0);  // uses in [t, t + m)
  std::vector<uint64_t> last(static_cast<size_t>(E), 0);   // last use (0 = never)
  auto add_token = [&](size_t t, int d) {
    for (uint32_t i = run.offsets[t]; i < run.offsets[t + 1]; ++i) {
      const int32_t e = run.ids[i];
      if (e < 0 || e >= E) fail("SCH: expert {} outside [0, {})", e, E);
      future[static_cast<size_t>(e)] += d;
    }
  };
  for (size_t t = 0; t < std::min(n, static_cast<size_t>(m)); ++t) add_token(t, +1);
  uint64_t tick = 0;
  int n_seen = 0;
  std::vector<int> rank;
  for (size_t t = 0; t < n; ++t) {
    // Ranks before this token's uses: among used experts, by (future uses, last use) descending.
    const uint32_t b = run.offsets[t], e = run.offsets[t + 1];
    rank.assign(e - b, 0);
    for (uint32_t i = b; i < e; ++i) {
      const int32_t x = run.ids[i];
      if (last[static_cast<size_t>(x)] == 0) {
        rank[i - b] = -1;
        continue;
      }
      int r = 0;
      for (int y = 0; y < E; ++y) {
        if (last[static_cast<size_t>(y)] == 0 || y == x) continue;
        if (future[static_cast<size_t>(y)] > future[static_cast<size_t>(x)] ||
            (future[static_cast<size_t>(y)] == future[static_cast<size_t>(x)] && last[static_cast<size_t>(y)] > last[static_cast<size_t>(x)]))
          ++r;
      }
      rank[i - b] = r;
    }
    for (uint32_t i = b; i < e; ++i) {
      int r = rank[i - b];
      if (r < 0) r = n_seen++;  // first use: after every used expert
      ++acc.rank_hist[static_cast<size_t>(std::min(r, E - 1))];
      ++acc.uses;
    }
    for (uint32_t i = b; i < e; ++i) {
      const int32_t x = run.ids[i];
      last[static_cast<size_t>(x)] = ++tick;
      --future[static_cast<size_t>(x)];
    }
    if (t + static_cast<size_t>(m) < n) add_token(t + static_cast<size_t>(m), +1);
  }
}

}  // namespace moe
