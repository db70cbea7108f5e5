// Router near-ties: a token whose k-th and (k+1)-th best selection scores (the gate's scores plus any
// selection bias; the raw logits for softmax-over-selected gates) differ by less than eps can pick
// other experts under last-bit differences upstream (fp16 activations against fp32, another attention
// summation order). Tests that compare two numerically different evaluations use this to tell such a
// legitimate flip from a bug.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "base/thread_pool.h"
#include "model/forward_observer.h"
#include "model/weights.h"
#include "moe/expert_store.h"
#include "runtime/session.h"

namespace moe::test {

// The first position of `ids` (evaluated in one batch from position 0) with a router near-tie in any
// MoE layer, or -1.
inline int64_t first_router_near_tie(const Model& model, const std::vector<int32_t>& ids, double eps = 1e-4) {
  struct Finder : ForwardObserver {
    const Model* model = nullptr;
    double eps = 0;
    int64_t first = -1;
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
          const int64_t pos = r.tokens->positions[t];
          if (first < 0 || pos < first) first = pos;
        }
      }
    }
  };
  Finder f;
  f.model = &model;
  f.eps = eps;
  ThreadPool pool(2);
  ResidentExpertStore store(model);
  Session s(model, store, static_cast<int64_t>(ids.size()));
  s.forward().set_observer(&f);
  s.eval(ids, pool, true);
  return f.first;
}

}  // namespace moe::test
