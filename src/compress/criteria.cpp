#include "compress/criteria.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "base/error.h"
#include "base/rng.h"

namespace moe::compress {

Criterion parse_criterion(const std::string& name) {
  if (name == "reap") return Criterion::Reap;
  if (name == "easy-ep") return Criterion::EasyEp;
  if (name == "frequency") return Criterion::Frequency;
  if (name == "tcess") return Criterion::Tcess;
  if (name == "random") return Criterion::Random;
  if (name == "heapr") return Criterion::Heapr;
  fail("--criterion {}: unknown (known: reap, easy-ep, frequency, tcess, random, heapr)", name);
}

const char* criterion_name(Criterion c) {
  switch (c) {
    case Criterion::Reap: return "reap";
    case Criterion::EasyEp: return "easy-ep";
    case Criterion::Frequency: return "frequency";
    case Criterion::Tcess: return "tcess";
    case Criterion::Random: return "random";
    case Criterion::Heapr: return "heapr";
  }
  return "?";
}

std::vector<double> expert_scores(const CalibStats& stats, const LayerStats& l, Criterion c, size_t label,
                                  uint64_t seed) {
  const size_t E = static_cast<size_t>(l.n_expert);
  std::vector<double> s(E, 0.0);
  switch (c) {
    case Criterion::Reap:
      for (size_t e = 0; e < E; ++e) s[e] = l.count[e] > 0 ? l.reap[e] / l.count[e] : 0.0;
      break;
    case Criterion::EasyEp: s = l.easy_ep; break;
    case Criterion::Frequency: s = l.count; break;
    case Criterion::Tcess: {
      if (label >= stats.labels.size()) fail("tcess: the stats have no labels");
      const double n = stats.label_tokens[label];
      for (size_t e = 0; e < E; ++e) s[e] = n > 0 ? l.tcess[label * E + e] / n : 0.0;
      break;
    }
    case Criterion::Random: {
      // Independent of the statistics: a seeded permutation per layer (Fisher-Yates on SplitMix64, so the
      // same seed removes the same experts on every platform and standard library).
      SplitMix64 rng{seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(l.layer)};
      std::vector<double> perm(E);
      std::iota(perm.begin(), perm.end(), 0.0);
      for (size_t i = E; i > 1; --i) std::swap(perm[i - 1], perm[rng.next() % i]);
      s = perm;
      break;
    }
    case Criterion::Heapr: {
      // An expert's HEAPr importance: the sum of its neurons' scores (used when ranking experts).
      if (l.heapr.empty()) fail("heapr: the stats have no HEAPr scores (calibrate with --heapr)");
      for (size_t e = 0; e < E; ++e)
        for (int64_t j = 0; j < l.n_ff; ++j) s[e] += l.heapr[e * static_cast<size_t>(l.n_ff) + static_cast<size_t>(j)];
      break;
    }
  }
  return s;
}

std::vector<std::vector<bool>> super_experts(const CalibStats& stats) {
  std::vector<std::vector<bool>> out;
  std::vector<double> maxima;
  const double layer_limit = 0.75 * stats.n_layer;
  for (const LayerStats& l : stats.layers) {
    out.emplace_back(static_cast<size_t>(l.n_expert), false);
    if (l.layer < layer_limit) maxima.insert(maxima.end(), l.max_out.begin(), l.max_out.end());
  }
  if (maxima.empty()) return out;
  std::vector<double> sorted = maxima;
  std::sort(sorted.begin(), sorted.end());
  // The 99.5th percentile with linear interpolation between closest ranks.
  const double pos = 0.995 * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  const double p995 = sorted[lo] + (pos - static_cast<double>(lo)) * (sorted[hi] - sorted[lo]);
  const double top = sorted.back();
  for (size_t li = 0; li < stats.layers.size(); ++li) {
    const LayerStats& l = stats.layers[li];
    if (l.layer >= layer_limit) continue;
    for (int e = 0; e < l.n_expert; ++e)
      out[li][e] = l.max_out[e] > p995 && l.max_out[e] > top / 10 && l.count[e] > 0;
  }
  return out;
}

int experts_for_ratio(const ModelSpec& spec, double ratio) {
  if (!(ratio > 0 && ratio <= 1)) fail("--keep {}: expected a ratio in (0, 1]", ratio);
  for (const LayerSpec& L : spec.layers) {
    if (!L.is_moe) continue;
    const int groups = std::max(1, L.moe.n_group);
    const int per_group = std::max(1, static_cast<int>(std::lround(ratio * L.moe.n_expert / groups)));
    return per_group * groups;
  }
  fail("the model has no MoE layers");
}

std::vector<std::vector<int>> choose_experts(const CalibStats& stats, const ModelSpec& spec, const ExpertChoice& c) {
  std::vector<std::vector<int>> keep(static_cast<size_t>(spec.n_layer));
  const auto supers = super_experts(stats);
  for (size_t li = 0; li < stats.layers.size(); ++li) {
    const LayerStats& l = stats.layers[li];
    const MoeSpec& ms = spec.layers[l.layer].moe;
    const int E = l.n_expert, G = std::max(1, ms.n_group);
    if (c.keep < 1 || c.keep > E) fail("--keep-experts {}: expected 1..{} (layer {} has {} experts)", c.keep, E, l.layer, E);
    if (E % G != 0 || c.keep % G != 0)
      fail("--keep-experts {}: layer {} routes in {} groups of {} experts; keep a multiple of {} so every group keeps "
           "the same number",
           c.keep, l.layer, G, E / G, G);
    const int per_group = c.keep / G, group_size = E / G;
    const std::vector<double> score = expert_scores(stats, l, c.criterion, c.label, c.seed);
    for (int g = 0; g < G; ++g) {
      std::vector<int> members(static_cast<size_t>(group_size));
      std::iota(members.begin(), members.end(), g * group_size);
      // Protected experts first, then by score (ties: more selections, then the lower index).
      auto rank = [&](int a, int b) {
        const bool pa = c.protect && supers[li][a], pb = c.protect && supers[li][b];
        if (pa != pb) return pa;
        if (score[a] != score[b]) return score[a] > score[b];
        if (l.count[a] != l.count[b]) return l.count[a] > l.count[b];
        return a < b;
      };
      std::sort(members.begin(), members.end(), rank);
      int n_protected = 0;
      for (int e : members) n_protected += c.protect && supers[li][e];
      if (n_protected > per_group)
        fail("--keep-experts {}: layer {} has {} super experts in a group that keeps {}; keep more experts or pass "
             "--no-protect",
             c.keep, l.layer, n_protected, per_group);
      keep[l.layer].insert(keep[l.layer].end(), members.begin(), members.begin() + per_group);
    }
    std::sort(keep[l.layer].begin(), keep[l.layer].end());
  }
  return keep;
}

}  // namespace moe::compress
