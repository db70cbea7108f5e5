// route_range: the routing policy's steps (moe/routing_policy.h) around the model's gate (moe/router.h).
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "base/error.h"
#include "moe/routing_policy.h"

namespace moe {

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// A uniform draw in [0, 1) fixed by (seed, layer, position, expert): the same pair drops the same way
// however the tokens are batched.
double uniform01(uint64_t seed, int layer, int64_t pos, int expert) {
  uint64_t h = splitmix64(seed);
  h = splitmix64(h ^ static_cast<uint64_t>(layer));
  h = splitmix64(h ^ static_cast<uint64_t>(pos));
  h = splitmix64(h ^ static_cast<uint64_t>(expert));
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

double log_sum_exp(const double* v, int n) {
  double mx = -INFINITY;
  for (int i = 0; i < n; ++i) mx = std::max(mx, v[i]);
  if (mx == -INFINITY) return -INFINITY;
  double s = 0;
  for (int i = 0; i < n; ++i) s += std::exp(v[i] - mx);
  return mx + std::log(s);
}

// Sinkhorn balancing over the range's T tokens (techniques.md section 2): K = exp(keys / eps), rows
// scaled to sum 1 and columns to T / E' (E' = experts left), alternating in log space until the rows
// are within 1e-3 of 1 or the iterations run out. The selection key becomes log K + log v (the row
// factor u is constant within a row, so it does not change a token's order).
void sinkhorn_keys(const LayerRoutingPlan& lp, float* keys, int64_t T, int E, const std::vector<int32_t>& cand,
                   RouteScratch& s) {
  const int n_cand = static_cast<int>(cand.size());
  if (T < 2 || n_cand == 0) return;  // a plan over one token is uniform: keep the gate's keys
  std::vector<double>& logk = s.d;
  logk.assign(static_cast<size_t>(T * n_cand), -INFINITY);
  for (int64_t t = 0; t < T; ++t)
    for (int c = 0; c < n_cand; ++c) {
      const float k = keys[t * E + cand[static_cast<size_t>(c)]];
      logk[static_cast<size_t>(t * n_cand + c)] = k == -INFINITY ? -INFINITY : static_cast<double>(k) / lp.sinkhorn_eps;
    }
  s.logu.assign(static_cast<size_t>(T), 0.0);
  s.logv.assign(static_cast<size_t>(n_cand), 0.0);
  std::vector<double> tmp(static_cast<size_t>(std::max<int64_t>(T, n_cand)));
  const double log_col = std::log(static_cast<double>(T) / n_cand);
  for (int it = 0; it < lp.sinkhorn_iters; ++it) {
    for (int64_t t = 0; t < T; ++t) {
      for (int c = 0; c < n_cand; ++c) tmp[static_cast<size_t>(c)] = logk[static_cast<size_t>(t * n_cand + c)] + s.logv[static_cast<size_t>(c)];
      const double l = log_sum_exp(tmp.data(), n_cand);
      s.logu[static_cast<size_t>(t)] = l == -INFINITY ? 0.0 : -l;
    }
    for (int c = 0; c < n_cand; ++c) {
      for (int64_t t = 0; t < T; ++t) tmp[static_cast<size_t>(t)] = logk[static_cast<size_t>(t * n_cand + c)] + s.logu[static_cast<size_t>(t)];
      const double l = log_sum_exp(tmp.data(), static_cast<int>(T));
      s.logv[static_cast<size_t>(c)] = l == -INFINITY ? 0.0 : log_col - l;
    }
    double worst = 0;
    for (int64_t t = 0; t < T; ++t) {
      double row = 0;
      bool any = false;
      for (int c = 0; c < n_cand; ++c) {
        const double v = logk[static_cast<size_t>(t * n_cand + c)];
        if (v == -INFINITY) continue;
        any = true;
        row += std::exp(v + s.logu[static_cast<size_t>(t)] + s.logv[static_cast<size_t>(c)]);
      }
      if (any) worst = std::max(worst, std::abs(row - 1.0));
    }
    if (worst < 1e-3) break;
  }
  for (int64_t t = 0; t < T; ++t)
    for (int c = 0; c < n_cand; ++c) {
      const double v = logk[static_cast<size_t>(t * n_cand + c)];
      keys[t * E + cand[static_cast<size_t>(c)]] =
          v == -INFINITY ? -INFINITY : static_cast<float>(v + s.logv[static_cast<size_t>(c)]);
    }
}

// Rescales the kept weights so that they sum to `before` (the token's weight before dropping).
void rescale_kept(float* w, const uint8_t* dropped, int n, double before) {
  double after = 0;
  for (int j = 0; j < n; ++j)
    if (!dropped[j]) after += w[j];
  if (!(after > 0)) return;
  const float f = static_cast<float>(before / after);
  for (int j = 0; j < n; ++j)
    if (!dropped[j]) w[j] *= f;
}

}  // namespace

void reset_routing(Routing& out, int64_t n_tokens, int k) {
  out.n_tokens = n_tokens;
  out.k = k;
  out.ids.assign(static_cast<size_t>(n_tokens * k), Routing::kEmpty);
  out.weights.assign(static_cast<size_t>(n_tokens * k), 0.0f);
}

void compact_routing(Routing& r) {
  int used = 1;
  for (int64_t t = 0; t < r.n_tokens; ++t) {
    int n = 0;
    for (int j = 0; j < r.k; ++j) n += r.id(t, j) >= 0;
    used = std::max(used, n);
  }
  if (used >= r.k) return;
  for (int64_t t = 0; t < r.n_tokens; ++t) {
    int n = 0;
    for (int j = 0; j < r.k; ++j) {
      const int32_t id = r.id(t, j);
      if (id < 0) continue;
      r.ids[static_cast<size_t>(t * used + n)] = id;
      r.weights[static_cast<size_t>(t * used + n)] = r.weight(t, j);
      ++n;
    }
    for (; n < used; ++n) {
      r.ids[static_cast<size_t>(t * used + n)] = Routing::kEmpty;
      r.weights[static_cast<size_t>(t * used + n)] = 0.0f;
    }
  }
  r.k = used;
  r.ids.resize(static_cast<size_t>(r.n_tokens * used));
  r.weights.resize(static_cast<size_t>(r.n_tokens * used));
}

RouteCounts route_range(const MoeSpec& spec, int layer, const LayerRoutingPlan* lp, float* logits, const float* bias,
                        const int64_t* positions, int64_t t0, int64_t t1, Routing& out, RouteScratch& s) {
  const int E = spec.n_expert;
  const int64_t T = t1 - t0;
  RouteCounts counts;
  if (T <= 0) return counts;
  counts.tokens = static_cast<uint64_t>(T);
  if (t0 < 0 || t1 > out.n_tokens) fail("route_range: rows [{}, {}) outside the batch of {}", t0, t1, out.n_tokens);
  const int K = out.k;
  auto write = [&](int64_t row, const int32_t* ids, const float* w, const uint8_t* dropped, int n) {
    int32_t* oi = out.ids.data() + row * K;
    float* ow = out.weights.data() + row * K;
    int m = 0;
    for (int j = 0; j < n; ++j) {
      if (dropped && dropped[j]) continue;
      oi[m] = ids[j];
      ow[m] = w[j];
      ++m;
    }
    for (int j = m; j < K; ++j) {
      oi[j] = Routing::kEmpty;
      ow[j] = 0.0f;
    }
    counts.selected += static_cast<uint64_t>(m);
  };

  if (!lp) {  // the model's gate, exactly as route_tokens computes it
    const int k = spec.n_expert_used;
    if (K < k) fail("route_range: {} routing slots for layer {}'s top-{}", K, layer, k);
    s.cand.resize(static_cast<size_t>(E));
    std::iota(s.cand.begin(), s.cand.end(), 0);
    s.keys.resize(static_cast<size_t>(E));
    s.sel.resize(static_cast<size_t>(k));
    s.w.resize(static_cast<size_t>(k));
    for (int64_t t = t0; t < t1; ++t) {
      float* p = logits + t * E;
      gate::scores(spec, p, nullptr, s.f);
      gate::selection_keys(spec, p, bias, nullptr, s.keys.data(), s.f, s.scratch);
      gate::top_n(s.keys.data(), s.cand.data(), E, k, s.sel.data(), s.scratch);
      gate::weights(spec, p, s.sel.data(), k, spec.norm_topk, s.w.data());
      write(t, s.sel.data(), s.w.data(), nullptr, k);
    }
    return counts;
  }

  if (K < lp->slots) fail("route_range: {} routing slots for layer {}'s policy, which needs {}", K, layer, lp->slots);
  const uint8_t* off = lp->off.empty() ? nullptr : lp->off.data();
  // Candidates: the experts left after the mask, ascending.
  s.cand.clear();
  for (int e = 0; e < E; ++e)
    if (!off || !off[e]) s.cand.push_back(e);
  const int n_cand = static_cast<int>(s.cand.size());
  // 1-3: scores and selection keys of every row (Sinkhorn needs them all before selecting).
  s.keys.resize(static_cast<size_t>(T * E));
  for (int64_t t = 0; t < T; ++t) {
    float* p = logits + (t0 + t) * E;
    if (lp->remix) {
      std::copy(lp->remix->begin(), lp->remix->end(), p);
      if (off) {
        double left = 0;
        for (int e = 0; e < E; ++e) {
          if (off[e]) p[e] = 0.0f;
          left += p[e];
        }
        // A softmax gate's scores over the experts left sum to 1, as the mask's definition requires.
        if (spec.gating == Gating::Softmax && left > 0)
          for (int e = 0; e < E; ++e) p[e] = static_cast<float>(p[e] / left);
      }
    } else {
      gate::scores(spec, p, off, s.f);
    }
    gate::selection_keys(spec, p, bias, off, s.keys.data() + t * E, s.f, s.scratch);
  }
  if (lp->sinkhorn) sinkhorn_keys(*lp, s.keys.data(), T, E, s.cand, s);

  // Candidates that are not forced (selection fills the remaining slots from these).
  std::vector<int32_t>& rest = s.order;
  rest.clear();
  for (int32_t e : s.cand)
    if (!std::binary_search(lp->forced.begin(), lp->forced.end(), e)) rest.push_back(e);
  std::vector<int32_t> ranked;
  std::vector<uint8_t> dropped;
  s.sel.resize(static_cast<size_t>(std::max(lp->slots, 1)));
  s.w.resize(s.sel.size());
  for (int64_t t = 0; t < T; ++t) {
    const int64_t row = t0 + t;
    const float* p = logits + row * E;
    const float* key = s.keys.data() + t * E;
    if (n_cand == 0) {  // every expert masked: the layer adds nothing
      write(row, nullptr, nullptr, nullptr, 0);
      continue;
    }
    // 4: selection.
    if (lp->only_rank > 0) {
      const int r = std::min(lp->only_rank, n_cand);
      ranked.resize(static_cast<size_t>(r));
      gate::top_n(key, s.cand.data(), n_cand, r, ranked.data(), s.scratch);
      const int32_t id = ranked[static_cast<size_t>(r - 1)];
      const float one = 1.0f;
      write(row, &id, &one, nullptr, 1);
      continue;
    }
    int n = 0;
    for (int32_t e : lp->forced) s.sel[static_cast<size_t>(n++)] = e;
    const int n_rest = static_cast<int>(rest.size());
    if (lp->top_p >= 0) {
      // Probability mass: a softmax gate's scores (over the experts left); a softmax-over-selected
      // gate's (gpt-oss) logits through a softmax over the experts left; other gates' scores
      // normalized to sum 1 over the experts left.
      double total = 1.0, shift = 0.0;
      const bool logit_mass = spec.gating == Gating::SoftmaxWeight;
      if (logit_mass) {
        shift = -INFINITY;
        for (int32_t e : s.cand) shift = std::max(shift, static_cast<double>(p[e]));
      }
      auto mass = [&](int32_t e) { return logit_mass ? std::exp(static_cast<double>(p[e]) - shift) : p[e]; };
      if (spec.gating != Gating::Softmax) {
        total = 0;
        for (int32_t e : s.cand) total += mass(e);
        if (!(total > 0)) total = 1.0;
      }
      double cum = 0;
      for (int j = 0; j < n; ++j) cum += mass(s.sel[static_cast<size_t>(j)]) / total;
      ranked.resize(static_cast<size_t>(n_rest));
      gate::top_n(key, rest.data(), n_rest, n_rest, ranked.data(), s.scratch);
      for (int32_t e : ranked) {
        if (n >= lp->top_p_cap) break;
        if (lp->top_p < 1.0 && cum > lp->top_p) break;
        if (key[e] == -INFINITY) break;  // outside the groups the gate kept
        s.sel[static_cast<size_t>(n++)] = e;
        cum += mass(e) / total;
      }
    } else {
      const int want = std::min(lp->k - n, n_rest);
      if (want > 0) gate::top_n(key, rest.data(), n_rest, want, s.sel.data() + n, s.scratch);
      n += std::max(want, 0);
    }
    if (!lp->forced.empty())
      std::sort(s.sel.begin(), s.sel.begin() + n,
                [&](int32_t a, int32_t b) { return key[a] > key[b] || (key[a] == key[b] && a < b); });
    // 5: weights.
    bool renorm = spec.norm_topk;
    if (lp->top_p >= 0 && lp->top_p_weights != TopPWeights::Model) renorm = lp->top_p_weights == TopPWeights::Renorm;
    float* w = s.w.data();
    gate::weights(spec, p, s.sel.data(), n, renorm, w);
    dropped.assign(static_cast<size_t>(n), 0);
    auto forced = [&](int j) {
      return std::binary_search(lp->forced.begin(), lp->forced.end(), s.sel[static_cast<size_t>(j)]);
    };
    auto token_weight = [&] {
      double sum = 0;
      for (int j = 0; j < n; ++j)
        if (!dropped[static_cast<size_t>(j)]) sum += w[j];
      return sum;
    };
    // 6: ratio threshold.
    if (lp->ratio_beta > 0 && n > 1) {
      const double before = token_weight();
      const float wmax = *std::max_element(w, w + n);
      bool any = false;
      for (int j = 0; j < n; ++j)
        if (!forced(j) && w[j] < static_cast<float>(lp->ratio_beta) * wmax) dropped[static_cast<size_t>(j)] = any = true;
      if (any) rescale_kept(w, dropped.data(), n, before);
    }
    // 7: random drop (every expert but the heaviest).
    if (lp->random_drop > 0 && n > 1) {
      const double before = token_weight();
      const int heaviest = static_cast<int>(std::max_element(w, w + n) - w);
      const int64_t pos = positions ? positions[row] : row;
      bool any = false;
      for (int j = 0; j < n; ++j) {
        if (j == heaviest || forced(j) || dropped[static_cast<size_t>(j)]) continue;
        if (uniform01(lp->random_seed, layer, pos, s.sel[static_cast<size_t>(j)]) < lp->random_drop)
          dropped[static_cast<size_t>(j)] = any = true;
      }
      if (any) rescale_kept(w, dropped.data(), n, before);
    }
    // 8: minimum weight (null experts).
    if (lp->min_weight > 0) {
      const double before = token_weight();
      bool any = false;
      for (int j = 0; j < n; ++j)
        if (!dropped[static_cast<size_t>(j)] && !forced(j) && w[j] < static_cast<float>(lp->min_weight)) {
          dropped[static_cast<size_t>(j)] = any = true;
          ++counts.min_weight_dropped;
        }
      if (any && lp->min_weight_renorm) rescale_kept(w, dropped.data(), n, before);
    }
    // 9: steering.
    if (!lp->steer.empty())
      for (int j = 0; j < n; ++j) w[j] *= lp->steer[static_cast<size_t>(s.sel[static_cast<size_t>(j)])];
    write(row, s.sel.data(), w, dropped.data(), n);
  }
  return counts;
}

}  // namespace moe
