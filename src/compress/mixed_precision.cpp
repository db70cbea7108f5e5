#include "compress/mixed_precision.h"

#include <algorithm>
#include <cctype>
#include <cmath>

#include "base/error.h"
#include "compress/criteria.h"

namespace moe::compress {

MixedBudget parse_budget(const std::string& s) {
  MixedBudget b;
  size_t end = 0;
  double v = 0;
  try {
    v = std::stod(s, &end);
  } catch (const std::exception&) {
    fail("--budget {}: expected bits per weight (e.g. 4.5) or a size (e.g. 300M, 1.5G)", s);
  }
  std::string unit = s.substr(end);
  for (char& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (!(v > 0) || !std::isfinite(v)) fail("--budget {}: must be positive", s);
  if (unit.empty() && v <= 32) {
    b.bits_per_weight = v;
    return b;
  }
  double mult = 0;
  if (unit.empty() || unit == "B") mult = 1;
  else if (unit == "K" || unit == "KB") mult = 1e3;
  else if (unit == "M" || unit == "MB") mult = 1e6;
  else if (unit == "G" || unit == "GB") mult = 1e9;
  else if (unit == "KIB") mult = 1024.0;
  else if (unit == "MIB") mult = 1024.0 * 1024;
  else if (unit == "GIB") mult = 1024.0 * 1024 * 1024;
  else fail("--budget {}: unknown unit '{}' (B, K, M, G, KiB, MiB, GiB)", s, s.substr(end));
  b.total_bytes = static_cast<uint64_t>(v * mult);
  return b;
}

namespace {

int proj_index(Role r) {
  switch (r) {
    case Role::ExpGate: return 0;
    case Role::ExpUp: return 1;
    case Role::ExpDown: return 2;
    default: return -1;
  }
}

double bits_per_weight(DType t) {
  const DTypeTraits& d = dtype_traits(t);
  return 8.0 * static_cast<double>(d.block_bytes) / static_cast<double>(d.block_elems);
}

uint64_t tensor_bytes(DType t, const std::vector<int64_t>& dims) {
  uint64_t rows = 1;
  for (size_t i = 1; i < dims.size(); ++i) rows *= static_cast<uint64_t>(dims[i]);
  return static_cast<uint64_t>(row_bytes(t, dims[0])) * rows;
}

// The best single type at this size, for comparison.
void best_uniform(const CalibStats& stats, const std::vector<size_t>& cand, const AllocProblem& p, MixedResult& r) {
  double best = -1;
  for (size_t ci = 0; ci < cand.size(); ++ci) {
    uint64_t bytes = 0;
    double cost = 0;
    for (const AllocItem& it : p.items) {
      bytes += it.bytes[ci];
      cost += it.cost[ci];
    }
    if (bytes <= p.budget && std::isfinite(cost) && (best < 0 || cost < best)) {
      best = cost;
      r.uniform_type = dtype_traits(stats.recon_types[cand[ci]]).name;
    }
  }
  r.cost_uniform_at_size = best;
}

// The expert budget from the options: bits per expert weight, or the file's tensor bytes less the rest's.
// The statistics of the layer whose expert projection `t` is (what the allocation chooses types for), or
// null for every other tensor, which keeps its type. A projection whose expert count disagrees with the
// statistics is an error.
const LayerStats* covering_layer(const CalibStats& stats, const MixTensor& t) {
  const int proj = t.role ? proj_index(*t.role) : -1;
  const LayerStats* ls = proj >= 0 ? stats.find_layer(t.layer) : nullptr;
  if (ls && (t.dims.size() != 3 || t.dims[2] != ls->n_expert))
    fail("--mixed: tensor '{}' has {} experts, the statistics {}", t.name, t.dims.size() == 3 ? t.dims[2] : 0,
         ls->n_expert);
  return ls;
}

uint64_t expert_budget(const MixedOptions& o, uint64_t expert_elements, uint64_t other_bytes) {
  if (o.budget.bits_per_weight > 0)
    return static_cast<uint64_t>(o.budget.bits_per_weight * static_cast<double>(expert_elements) / 8.0);
  if (o.budget.total_bytes <= other_bytes)
    fail("--budget: {} bytes do not even hold the {} bytes of the tensors other than the routed experts",
         o.budget.total_bytes, other_bytes);
  return o.budget.total_bytes - other_bytes;
}

constexpr int kAllParts = 3;  // calib_stats.h: recon part "all" (gate, up and down quantized together)

// One item per (layer, expert, projection), or with whole_expert per (layer, expert) with its matrices at one type.
MixedResult allocate_per_expert(const CalibStats& stats, QuantizePlan& plan, const MixedOptions& o,
                                const std::vector<size_t>& cand, size_t best, const std::vector<std::vector<bool>>& supers) {
  MixedResult r;
  AllocProblem p;
  uint64_t other_bytes = 0;
  // Each covered layer's projection tensors (plan indices), in plan order.
  std::vector<std::vector<size_t>> by_layer(static_cast<size_t>(std::max(stats.n_layer, 0)));
  std::vector<int> layer_order;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const MixTensor& t = plan.tensors[i];
    const LayerStats* ls = covering_layer(stats, t);
    if (!ls) {
      other_bytes += tensor_bytes(plan.types[i], t.dims);
      continue;
    }
    auto& v = by_layer.at(static_cast<size_t>(t.layer));
    if (v.empty()) layer_order.push_back(t.layer);
    v.push_back(i);
  }
  struct ItemRef {
    size_t layer_j;
    int expert;
    int tensor;  // index into the layer's tensors, or -1 for all of them (whole_expert)
  };
  std::vector<ItemRef> refs;
  for (size_t lj = 0; lj < layer_order.size(); ++lj) {
    const int il = layer_order[lj];
    const LayerStats* ls = stats.find_layer(il);
    const size_t li = static_cast<size_t>(ls - stats.layers.data());
    const std::vector<size_t>& tensors = by_layer[static_cast<size_t>(il)];
    for (size_t i : tensors) {
      r.tensor.push_back(i);
      const auto& d = plan.tensors[i].dims;
      r.expert_elements += static_cast<uint64_t>(d[0] * d[1] * d[2]);
    }
    double total = 0;
    for (double c : ls->count) total += c;
    for (int e = 0; e < ls->n_expert; ++e) {
      const double f = total > 0 ? ls->count[e] / total : 1.0 / ls->n_expert;
      const double w = ls->count[e] > 0 ? ls->weight_sum[e] / ls->count[e] : 0.0;
      const double importance = std::pow(f, o.alpha) * std::pow(w, o.beta);
      const int n_items = o.whole_expert ? 1 : static_cast<int>(tensors.size());
      for (int k = 0; k < n_items; ++k) {
        AllocItem it;
        it.name = o.whole_expert ? fmt::format("blk.{} expert {}", il, e)
                                 : fmt::format("{} expert {}", plan.tensors[tensors[static_cast<size_t>(k)]].name, e);
        for (size_t c : cand) {
          const DType ty = stats.recon_types[c];
          uint64_t bytes = 0;
          bool fits = true;
          for (size_t x = 0; x < tensors.size(); ++x) {
            if (!o.whole_expert && static_cast<int>(x) != k) continue;
            const auto& d = plan.tensors[tensors[x]].dims;
            fits &= fallback_type(ty, d[0]) == ty;
            bytes += tensor_bytes(ty, {d[0], d[1]});
          }
          const int part = o.whole_expert ? kAllParts : proj_index(*plan.tensors[tensors[static_cast<size_t>(k)]].role);
          it.cost.push_back(fits ? importance * ls->recon_at(c, part, e) : kNotAllowed);
          it.bytes.push_back(bytes);
        }
        if (o.protect && supers[li][static_cast<size_t>(e)]) it.forced = static_cast<int>(best);
        refs.push_back({lj, e, o.whole_expert ? -1 : k});
        p.items.push_back(std::move(it));
      }
    }
  }
  if (p.items.empty()) fail("--mixed: the model has no routed-expert tensors the statistics cover");
  p.budget = expert_budget(o, r.expert_elements, other_bytes);
  r.expert_budget = p.budget;
  r.alloc = solve_allocation(p);
  // Every tensor of a layer gets the layer's experts' types.
  r.split_types.resize(r.tensor.size());
  size_t j0 = 0;
  std::vector<size_t> first_j(layer_order.size());
  for (size_t lj = 0; lj < layer_order.size(); ++lj) {
    first_j[lj] = j0;
    const size_t n_t = by_layer[static_cast<size_t>(layer_order[lj])].size();
    const int n_e = stats.find_layer(layer_order[lj])->n_expert;
    for (size_t k = 0; k < n_t; ++k) r.split_types[j0 + k].resize(static_cast<size_t>(n_e));
    j0 += n_t;
  }
  for (size_t k = 0; k < refs.size(); ++k) {
    const DType ty = stats.recon_types[cand[static_cast<size_t>(r.alloc.choice[k])]];
    const size_t lj = refs[k].layer_j;
    const size_t n_t = by_layer[static_cast<size_t>(layer_order[lj])].size();
    for (size_t t = 0; t < n_t; ++t)
      if (refs[k].tensor < 0 || static_cast<int>(t) == refs[k].tensor)
        r.split_types[first_j[lj] + t][static_cast<size_t>(refs[k].expert)] = ty;
    r.type.push_back(ty);
  }
  for (size_t j = 0; j < r.tensor.size(); ++j) {
    const size_t i = r.tensor[j];
    const auto& d = plan.tensors[i].dims;
    uint64_t split_bytes = 0;
    for (DType ty : r.split_types[j]) split_bytes += tensor_bytes(ty, {d[0], d[1]});
    plan.bytes_out = plan.bytes_out - tensor_bytes(plan.types[i], d) + split_bytes;
  }
  best_uniform(stats, cand, p, r);
  split_experts(plan, r.tensor, r.split_types);
  return r;
}

}  // namespace

MixedResult allocate_mixed(const CalibStats& stats, QuantizePlan& plan, const MixedOptions& o) {
  if (stats.recon_types.empty())
    fail("--mixed: the statistics have no reconstruction errors (calibrate with --recon-types)");
  // Candidates: indices into the stats' reconstruction types.
  std::vector<size_t> cand;
  if (o.candidates.empty()) {
    for (size_t c = 0; c < stats.recon_types.size(); ++c) cand.push_back(c);
  } else {
    for (DType t : o.candidates) {
      auto it = std::find(stats.recon_types.begin(), stats.recon_types.end(), t);
      if (it == stats.recon_types.end())
        fail("--candidates: {} has no reconstruction errors in the statistics (calibrate with --recon-types)",
             dtype_traits(t).name);
      cand.push_back(static_cast<size_t>(it - stats.recon_types.begin()));
    }
  }
  // Highest precision = most bits per weight.
  size_t best = 0;
  for (size_t i = 1; i < cand.size(); ++i)
    if (bits_per_weight(stats.recon_types[cand[i]]) > bits_per_weight(stats.recon_types[cand[best]]))
      best = i;
  const auto supers = super_experts(stats);

  MixedResult r;
  AllocProblem p;
  uint64_t other_bytes = 0;
  if (o.per_expert) return allocate_per_expert(stats, plan, o, cand, best, supers);
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const MixTensor& t = plan.tensors[i];
    const LayerStats* ls = covering_layer(stats, t);
    if (!ls) {
      other_bytes += tensor_bytes(plan.types[i], t.dims);
      continue;
    }
    const size_t li = static_cast<size_t>(ls - stats.layers.data());
    AllocItem it;
    it.name = t.name;
    double total = 0;
    for (double c : ls->count) total += c;
    bool has_super = false;
    for (int e = 0; e < ls->n_expert; ++e) has_super |= supers[li][e];
    for (size_t c : cand) {
      const DType ty = stats.recon_types[c];
      // A type whose blocks do not fit the row length falls back as llama.cpp's quantizer would; the cost
      // measured for the candidate is then not what would be written, so such candidates are not offered.
      if (fallback_type(ty, t.dims[0]) != ty) {
        it.cost.push_back(kNotAllowed);
        it.bytes.push_back(tensor_bytes(DType::F32, t.dims));
        continue;
      }
      double cost = 0;
      for (int e = 0; e < ls->n_expert; ++e) {
        const double f = total > 0 ? ls->count[e] / total : 1.0 / ls->n_expert;
        const double w = ls->count[e] > 0 ? ls->weight_sum[e] / ls->count[e] : 0.0;
        cost += std::pow(f, o.alpha) * std::pow(w, o.beta) * ls->recon_at(c, proj_index(*t.role), e);
      }
      it.cost.push_back(cost);
      it.bytes.push_back(tensor_bytes(ty, t.dims));
    }
    if (o.protect && has_super) it.forced = static_cast<int>(best);
    r.tensor.push_back(i);
    r.expert_elements += static_cast<uint64_t>(t.dims[0] * t.dims[1] * t.dims[2]);
    p.items.push_back(std::move(it));
  }
  if (p.items.empty()) fail("--mixed: the model has no routed-expert tensors the statistics cover");
  p.budget = expert_budget(o, r.expert_elements, other_bytes);
  r.expert_budget = p.budget;
  r.alloc = solve_allocation(p);
  for (size_t j = 0; j < r.tensor.size(); ++j) {
    const DType ty = stats.recon_types[cand[static_cast<size_t>(r.alloc.choice[j])]];
    r.type.push_back(ty);
    const size_t i = r.tensor[j];
    plan.bytes_out = plan.bytes_out - tensor_bytes(plan.types[i], plan.tensors[i].dims) +
                     tensor_bytes(ty, plan.tensors[i].dims);
    plan.types[i] = ty;
  }
  best_uniform(stats, cand, p, r);
  return r;
}

}  // namespace moe::compress
