#include "compress/heapr_prune.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

#include "base/error.h"
#include "compress/calibrate.h"
#include "compress/criteria.h"
#include "model/weights.h"

namespace moe::compress {

NeuronPlan plan_neurons(const CalibStats& stats, int n_layer, double keep_ratio, NeuronLayout layout, bool protect) {
  if (!(keep_ratio > 0 && keep_ratio <= 1)) fail("--keep {}: expected a ratio in (0, 1]", keep_ratio);
  if (stats.heapr_tokens == 0) fail("--criterion heapr: the statistics have no HEAPr scores (run moe calibrate --heapr)");
  const auto supers = super_experts(stats);
  NeuronPlan plan;
  plan.kept.resize(static_cast<size_t>(n_layer));
  // Every (layer, expert, neuron) with its score; protected neurons rank first.
  struct Neuron {
    double score;
    int li, e, j;
  };
  std::vector<Neuron> all;
  for (size_t li = 0; li < stats.layers.size(); ++li) {
    const LayerStats& l = stats.layers[li];
    plan.kept[l.layer].assign(static_cast<size_t>(l.n_expert), {});
    for (int e = 0; e < l.n_expert; ++e)
      for (int64_t j = 0; j < l.n_ff; ++j) {
        const bool prot = protect && supers[li][e];
        all.push_back({prot ? INFINITY : l.heapr[static_cast<size_t>(e * l.n_ff + j)], static_cast<int>(li), e,
                       static_cast<int>(j)});
      }
  }
  plan.total = all.size();
  if (layout == NeuronLayout::Pad) {
    const size_t n_keep = std::max<size_t>(1, static_cast<size_t>(std::llround(keep_ratio * static_cast<double>(all.size()))));
    std::stable_sort(all.begin(), all.end(), [](const Neuron& a, const Neuron& b) { return a.score > b.score; });
    for (size_t i = 0; i < n_keep && i < all.size(); ++i)
      plan.kept[stats.layers[all[i].li].layer][all[i].e].push_back(all[i].j);
  } else {
    for (size_t li = 0; li < stats.layers.size(); ++li) {
      const LayerStats& l = stats.layers[li];
      const int64_t n_keep = std::max<int64_t>(1, std::llround(keep_ratio * static_cast<double>(l.n_ff)));
      for (int e = 0; e < l.n_expert; ++e) {
        std::vector<int> idx(static_cast<size_t>(l.n_ff));
        std::iota(idx.begin(), idx.end(), 0);
        const bool prot = protect && supers[li][e];
        if (!prot) {
          std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) {
            return l.heapr[static_cast<size_t>(e * l.n_ff + a)] > l.heapr[static_cast<size_t>(e * l.n_ff + b)];
          });
          idx.resize(static_cast<size_t>(n_keep));
        } else if (n_keep < l.n_ff) {
          fail("--neuron-layout uniform: layer {} expert {} is a super expert and keeps all {} neurons, more than "
               "the uniform width {}; pass --no-protect or use --neuron-layout pad",
               l.layer, e, l.n_ff, n_keep);
        }
        plan.kept[l.layer][e] = idx;
      }
    }
  }
  for (auto& layer : plan.kept)
    for (auto& k : layer) {
      std::sort(k.begin(), k.end());
      plan.width = std::max<int64_t>(plan.width, static_cast<int64_t>(k.size()));
      plan.kept_total += k.size();
    }
  return plan;
}

ExpertEdit neuron_edit(const gguf::File& src, const NeuronPlan& plan, int n_layer) {
  auto model = std::shared_ptr<Model>(Model::load(src.path(), gguf::DataAccess::Mmap, /*defer_experts=*/true));
  ExpertEdit edit;
  edit.copy_from.resize(static_cast<size_t>(n_layer));
  edit.router_from.resize(static_cast<size_t>(n_layer));
  for (int il = 0; il < n_layer; ++il)
    for (size_t e = 0; e < plan.kept[il].size(); ++e) {
      edit.copy_from[il].push_back(-1);
      edit.router_from[il].push_back(static_cast<int>(e));
    }
  edit.n_ff = plan.width;
  const gguf::File* f = &src;
  const NeuronPlan* pl = &plan;
  edit.matrix = [model, f, pl](int layer, int expert, int proj) {
    if (proj > 2) fail("heapr: layer {}: experts with biases are not supported", layer);
    const ExpertF32 w = read_expert_f32(*f, *model, layer, expert);
    const int64_t d = model->spec().n_embd, ff = model->spec().layers[layer].moe.n_ff_exp, W = pl->width;
    const std::vector<int>& kept = pl->kept[layer][expert];
    std::vector<float> out;
    if (proj < 2) {  // gate / up: [W][d], kept rows then zero rows
      const std::vector<float>& src_m = proj == 0 ? w.gate : w.up;
      out.assign(static_cast<size_t>(W * d), 0.0f);
      for (size_t i = 0; i < kept.size(); ++i)
        std::copy(src_m.begin() + kept[i] * d, src_m.begin() + (kept[i] + 1) * d, out.begin() + static_cast<int64_t>(i) * d);
    } else {  // down: [d][W], kept columns then zero columns
      out.assign(static_cast<size_t>(d * W), 0.0f);
      for (int64_t r = 0; r < d; ++r)
        for (size_t i = 0; i < kept.size(); ++i) out[r * W + static_cast<int64_t>(i)] = w.down[r * ff + kept[i]];
    }
    return out;
  };
  return edit;
}

}  // namespace moe::compress
