#include "moe/router.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/ops.h"

namespace moe {

namespace {

// Indices of the k largest values, largest first; ties keep the lower index first.
void top_k(const float* v, int n, int k, int32_t* out, std::vector<int32_t>& idx) {
  idx.resize(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
    return v[a] > v[b] || (v[a] == v[b] && a < b);
  });
  std::copy(idx.begin(), idx.begin() + k, out);
}

}  // namespace

void route_tokens(const MoeSpec& spec, float* logits, const float* selection_bias, int64_t n_tokens, Routing& out) {
  const int E = spec.n_expert;
  const int k = spec.n_expert_used;
  out.n_tokens = n_tokens;
  out.k = k;
  out.ids.resize(static_cast<size_t>(n_tokens * k));
  out.weights.resize(static_cast<size_t>(n_tokens * k));
  std::vector<float> sel(E);
  std::vector<int32_t> scratch;
  for (int64_t t = 0; t < n_tokens; ++t) {
    float* p = logits + t * E;
    if (spec.gating == Gating::Softmax) {
      kernels::softmax(p, E);
    } else if (spec.gating == Gating::Sigmoid) {
      for (int e = 0; e < E; ++e) p[e] = 1.0f / (1.0f + std::exp(-p[e]));
    }  // SoftmaxWeight: selection on the logits themselves
    for (int e = 0; e < E; ++e) sel[e] = p[e] + (selection_bias ? selection_bias[e] : 0.0f);
    if (spec.n_group > 1) {
      // Group score = sum of the two best biased scores in the group; keep the best topk_group groups.
      const int per = E / spec.n_group;
      std::vector<float> gscore(spec.n_group);
      for (int g = 0; g < spec.n_group; ++g) {
        float b1 = -INFINITY, b2 = -INFINITY;
        for (int e = g * per; e < (g + 1) * per; ++e) {
          if (sel[e] > b1) { b2 = b1; b1 = sel[e]; } else if (sel[e] > b2) { b2 = sel[e]; }
        }
        gscore[g] = b1 + (per > 1 ? b2 : 0.0f);
      }
      std::vector<int32_t> keep(spec.topk_group);
      top_k(gscore.data(), spec.n_group, spec.topk_group, keep.data(), scratch);
      std::vector<bool> kept(spec.n_group, false);
      for (int32_t g : keep) kept[g] = true;
      for (int e = 0; e < E; ++e)
        if (!kept[e / per]) sel[e] = -INFINITY;
    }
    int32_t* ids = out.ids.data() + t * k;
    float* w = out.weights.data() + t * k;
    top_k(sel.data(), E, k, ids, scratch);
    for (int j = 0; j < k; ++j) w[j] = p[ids[j]];
    if (spec.gating == Gating::SoftmaxWeight) kernels::softmax(w, k);  // over the selected logits only
    if (spec.norm_topk) {
      float sum = 0.0f;
      for (int j = 0; j < k; ++j) sum += w[j];
      sum = std::max(sum, 6.103515625e-5f);  // smallest normal fp16, as llama.cpp clamps
      for (int j = 0; j < k; ++j) w[j] /= sum;
    }
    if (spec.route_scale != 1.0f)
      for (int j = 0; j < k; ++j) w[j] *= spec.route_scale;
  }
}

}  // namespace moe
