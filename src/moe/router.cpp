#include "moe/router.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/ops.h"

namespace moe {

namespace gate {

void scores(const MoeSpec& spec, float* p, const uint8_t* off, std::vector<float>& scratch) {
  const int E = spec.n_expert;
  if (spec.gating == Gating::Softmax) {
    if (!off) {
      kernels::softmax(p, E);
      return;
    }
    // A softmax over the experts left, computed on them alone (the same arithmetic, in the same order,
    // as a model whose removed rows are not there).
    scratch.clear();
    for (int e = 0; e < E; ++e)
      if (!off[e]) scratch.push_back(p[e]);
    if (!scratch.empty()) kernels::softmax(scratch.data(), static_cast<int64_t>(scratch.size()));
    size_t i = 0;
    for (int e = 0; e < E; ++e) p[e] = off[e] ? 0.0f : scratch[i++];
    return;
  }
  if (spec.gating == Gating::SoftmaxWeight) {  // selection on the logits themselves
    if (off)
      for (int e = 0; e < E; ++e)
        if (off[e]) p[e] = -INFINITY;
    return;
  }
  for (int e = 0; e < E; ++e) p[e] = off && off[e] ? 0.0f : 1.0f / (1.0f + std::exp(-p[e]));
}

void selection_keys(const MoeSpec& spec, const float* p, const float* bias, const uint8_t* off, float* sel,
                    std::vector<float>& gscore, std::vector<int32_t>& scratch) {
  const int E = spec.n_expert;
  for (int e = 0; e < E; ++e) sel[e] = off && off[e] ? -INFINITY : p[e] + (bias ? bias[e] : 0.0f);
  if (spec.n_group <= 1) return;
  // Group score = sum of the two best biased scores in the group; keep the best topk_group groups.
  const int per = E / spec.n_group;
  gscore.resize(static_cast<size_t>(spec.n_group));
  for (int g = 0; g < spec.n_group; ++g) {
    float b1 = -INFINITY, b2 = -INFINITY;
    int left = 0;
    for (int e = g * per; e < (g + 1) * per; ++e) {
      if (off && off[e]) continue;
      ++left;
      if (sel[e] > b1) { b2 = b1; b1 = sel[e]; } else if (sel[e] > b2) { b2 = sel[e]; }
    }
    gscore[g] = left == 0 ? -INFINITY : b1 + (left > 1 ? b2 : 0.0f);
  }
  std::vector<int32_t> groups(static_cast<size_t>(spec.n_group)), keep(static_cast<size_t>(spec.topk_group));
  std::iota(groups.begin(), groups.end(), 0);
  top_n(gscore.data(), groups.data(), spec.n_group, spec.topk_group, keep.data(), scratch);
  std::vector<bool> kept(spec.n_group, false);
  for (int32_t g : keep) kept[g] = true;
  for (int e = 0; e < E; ++e)
    if (!kept[e / per]) sel[e] = -INFINITY;
}

void top_n(const float* v, const int32_t* candidates, int n_candidates, int n, int32_t* out,
           std::vector<int32_t>& idx) {
  idx.assign(candidates, candidates + n_candidates);
  n = std::min(n, n_candidates);
  std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), [&](int32_t a, int32_t b) {
    return v[a] > v[b] || (v[a] == v[b] && a < b);
  });
  std::copy(idx.begin(), idx.begin() + n, out);
}

void weights(const MoeSpec& spec, const float* p, const int32_t* ids, int k, bool renorm, float* w) {
  for (int j = 0; j < k; ++j) w[j] = p[ids[j]];
  if (spec.gating == Gating::SoftmaxWeight && k > 0) kernels::softmax(w, k);  // over the selected logits only
  if (renorm) {
    float sum = 0.0f;
    for (int j = 0; j < k; ++j) sum += w[j];
    sum = std::max(sum, 6.103515625e-5f);  // smallest normal fp16, as llama.cpp clamps
    for (int j = 0; j < k; ++j) w[j] /= sum;
  }
  if (spec.route_scale != 1.0f)
    for (int j = 0; j < k; ++j) w[j] *= spec.route_scale;
}

}  // namespace gate

void route_tokens(const MoeSpec& spec, float* logits, const float* selection_bias, int64_t n_tokens, Routing& out) {
  const int E = spec.n_expert;
  const int k = spec.n_expert_used;
  out.n_tokens = n_tokens;
  out.k = k;
  out.ids.resize(static_cast<size_t>(n_tokens * k));
  out.weights.resize(static_cast<size_t>(n_tokens * k));
  std::vector<float> sel(E), fscratch;
  std::vector<int32_t> all(E), scratch;
  std::iota(all.begin(), all.end(), 0);
  for (int64_t t = 0; t < n_tokens; ++t) {
    float* p = logits + t * E;
    gate::scores(spec, p, nullptr, fscratch);
    gate::selection_keys(spec, p, selection_bias, nullptr, sel.data(), fscratch, scratch);
    int32_t* ids = out.ids.data() + t * k;
    gate::top_n(sel.data(), all.data(), E, k, ids, scratch);
    gate::weights(spec, p, ids, k, spec.norm_topk, out.weights.data() + t * k);
  }
}

}  // namespace moe
