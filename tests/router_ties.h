// Router near-ties: a token whose k-th and (k+1)-th best selection scores (the gate's scores plus any
// selection bias; the raw logits for softmax-over-selected gates) differ by less than eps can pick
// other experts under last-bit differences upstream (fp16 activations against fp32, another attention
// summation order). Tests that compare two numerically different evaluations use this to tell such a
// legitimate flip from a bug.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "base/thread_pool.h"
#include "model/forward_observer.h"
#include "model/weights.h"
#include "moe/expert_store.h"
#include "runtime/session.h"

namespace moe::test {

// Each position of `ids` (evaluated in one batch from position 0): whether any MoE layer's router is at
// a near-tie there.
inline std::vector<bool> router_near_tie_positions(const Model& model, const std::vector<int32_t>& ids,
                                                   double eps = 1e-4) {
  struct Finder : ForwardObserver {
    const Model* model = nullptr;
    double eps = 0;
    std::vector<bool> tie;
    ObserverNeeds needs() const override {
      ObserverNeeds n;
      n.router_logits = true;
      return n;
    }
    void on_routing(const MoeLayerRouting& r) override {
      const MoeSpec& m = model->spec().layers[static_cast<size_t>(r.layer)].moe;
      const WeightView& b = model->layer(r.layer)[Role::RouterBias];
      const float* bias = b ? reinterpret_cast<const float*>(b.data) : nullptr;
      std::vector<double> sel(static_cast<size_t>(r.n_expert));
      for (int64_t t = 0; t < r.tokens->n_tokens; ++t) {
        const float* src = m.gating == Gating::SoftmaxWeight ? r.logits : r.scores;
        for (int e = 0; e < r.n_expert; ++e)
          sel[static_cast<size_t>(e)] = src[t * r.n_expert + e] + (bias ? bias[e] : 0.0f);
        std::sort(sel.begin(), sel.end(), std::greater<double>());
        const int k = m.n_expert_used;
        if (k < r.n_expert && sel[static_cast<size_t>(k - 1)] - sel[static_cast<size_t>(k)] < eps) {
          const auto pos = static_cast<size_t>(r.tokens->positions[t]);
          if (pos < tie.size()) tie[pos] = true;
        }
      }
    }
  };
  Finder f;
  f.model = &model;
  f.eps = eps;
  f.tie.assign(ids.size(), false);
  ThreadPool pool(2);
  ResidentExpertStore store(model);
  Session s(model, store, static_cast<int64_t>(ids.size()));
  s.forward().set_observer(&f);
  s.eval(ids, pool, true);
  return f.tie;
}

// The first position of `ids` (evaluated in one batch from position 0) with a router near-tie in any
// MoE layer, or -1.
inline int64_t first_router_near_tie(const Model& model, const std::vector<int32_t>& ids, double eps = 1e-4) {
  const std::vector<bool> tie = router_near_tie_positions(model, ids, eps);
  for (size_t i = 0; i < tie.size(); ++i)
    if (tie[i]) return static_cast<int64_t>(i);
  return -1;
}

// Every MoE layer's routing of each position of `ids` when evaluated in batches of n_batch: the selected
// experts (sorted) and the selection scores the gate ranks them by (see above).
struct RoutingRecord {
  std::vector<int> k;                        // [layer] experts per token (0 for dense layers)
  std::vector<std::vector<int32_t>> chosen;  // [layer][pos * k + j], ascending per position
  std::vector<std::vector<double>> score;    // [layer][pos * n_expert + e]
  std::vector<int> n_expert;                 // [layer]
};

inline RoutingRecord record_routing(const Model& model, const std::vector<int32_t>& ids, int64_t n_batch) {
  struct Recorder : ForwardObserver {
    const Model* model = nullptr;
    RoutingRecord rec;
    size_t n_pos = 0;
    ObserverNeeds needs() const override {
      ObserverNeeds n;
      n.router_logits = true;
      return n;
    }
    void on_routing(const MoeLayerRouting& r) override {
      const size_t il = static_cast<size_t>(r.layer);
      const MoeSpec& m = model->spec().layers[il].moe;
      const WeightView& b = model->layer(r.layer)[Role::RouterBias];
      const float* bias = b ? reinterpret_cast<const float*>(b.data) : nullptr;
      const int k = r.routing->k, ne = r.n_expert;
      if (rec.chosen[il].empty()) {
        rec.k[il] = k;
        rec.n_expert[il] = ne;
        rec.chosen[il].assign(n_pos * static_cast<size_t>(k), -1);
        rec.score[il].assign(n_pos * static_cast<size_t>(ne), 0.0);
      }
      const float* src = m.gating == Gating::SoftmaxWeight ? r.logits : r.scores;
      for (int64_t t = 0; t < r.tokens->n_tokens; ++t) {
        const auto pos = static_cast<size_t>(r.tokens->positions[t]);
        if (pos >= n_pos) continue;
        std::vector<int32_t> ids(static_cast<size_t>(k));
        for (int j = 0; j < k; ++j) ids[static_cast<size_t>(j)] = r.routing->id(t, j);
        std::sort(ids.begin(), ids.end());
        std::copy(ids.begin(), ids.end(), rec.chosen[il].begin() + static_cast<std::ptrdiff_t>(pos * k));
        for (int e = 0; e < ne; ++e)
          rec.score[il][pos * ne + static_cast<size_t>(e)] = src[t * ne + e] + (bias ? bias[e] : 0.0f);
      }
    }
  };
  Recorder f;
  f.model = &model;
  f.n_pos = ids.size();
  const size_t n_layer = static_cast<size_t>(model.spec().n_layer);
  f.rec.k.assign(n_layer, 0);
  f.rec.n_expert.assign(n_layer, 0);
  f.rec.chosen.resize(n_layer);
  f.rec.score.resize(n_layer);
  ThreadPool pool(2);
  ResidentExpertStore store(model);
  Session s(model, store, static_cast<int64_t>(ids.size()));
  s.forward().set_observer(&f);
  s.eval(ids, pool, true, n_batch);
  return std::move(f.rec);
}

// Positions where two evaluations of the same tokens select different experts in some MoE layer. A flip
// is legitimate only at a near-tie: the margin between the k-th and (k+1)-th selection score (in
// evaluation a) is smaller than how far the two evaluations moved that token's scores. `unexplained`
// counts flips that are not (a routing bug, not rounding).
inline std::vector<bool> routing_flips(const RoutingRecord& a, const RoutingRecord& b, int* unexplained) {
  size_t n_pos = 0;
  for (size_t il = 0; il < a.k.size(); ++il)
    if (a.k[il] > 0) n_pos = a.chosen[il].size() / static_cast<size_t>(a.k[il]);
  std::vector<bool> flip(n_pos, false);
  *unexplained = 0;
  for (size_t il = 0; il < a.k.size(); ++il) {
    const size_t k = static_cast<size_t>(a.k[il]), ne = static_cast<size_t>(a.n_expert[il]);
    if (k == 0 || b.k[il] != a.k[il]) continue;
    for (size_t p = 0; p < n_pos; ++p) {
      if (std::equal(a.chosen[il].begin() + p * k, a.chosen[il].begin() + (p + 1) * k, b.chosen[il].begin() + p * k))
        continue;
      flip[p] = true;
      std::vector<double> sel(a.score[il].begin() + p * ne, a.score[il].begin() + (p + 1) * ne);
      double moved = 0;
      for (size_t e = 0; e < ne; ++e) moved = std::max(moved, std::abs(sel[e] - b.score[il][p * ne + e]));
      std::sort(sel.begin(), sel.end(), std::greater<double>());
      if (k >= ne || sel[k - 1] - sel[k] > 2 * moved) ++*unexplained;
    }
  }
  return flip;
}

}  // namespace moe::test
