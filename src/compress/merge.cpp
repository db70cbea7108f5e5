#include "compress/merge.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <mutex>

#include "base/error.h"
#include "compress/criteria.h"
#include "model/weights.h"

namespace moe::compress {

std::vector<int> max_weight_assignment(const std::vector<double>& score, int n) {
  if (n < 0 || score.size() != static_cast<size_t>(n) * static_cast<size_t>(n))
    fail("linear assignment: {} scores for a {} x {} matrix", score.size(), n, n);
  for (double s : score)
    if (!std::isfinite(s)) fail("linear assignment: a score is not finite");
  // Minimizes cost = -score. Rows are added one at a time; u and v are the dual potentials (u_i + v_j <= cost_ij,
  // tight on the matching), row_of[j] the row matched to column j (1-based, 0 = free; column 0 is a sentinel), and
  // each step grows a shortest alternating path from the new row to a free column (Dijkstra on reduced costs).
  const double inf = std::numeric_limits<double>::infinity();
  const size_t N = static_cast<size_t>(n);
  std::vector<double> u(N + 1, 0.0), v(N + 1, 0.0), min_reduced(N + 1);
  std::vector<int> row_of(N + 1, 0), prev_col(N + 1, 0);
  std::vector<char> visited(N + 1);
  for (int i = 1; i <= n; ++i) {
    row_of[0] = i;
    int col = 0;
    std::fill(min_reduced.begin(), min_reduced.end(), inf);
    std::fill(visited.begin(), visited.end(), 0);
    do {
      visited[col] = 1;
      const int row = row_of[col];
      double delta = inf;
      int next = 0;
      for (int j = 1; j <= n; ++j) {
        if (visited[j]) continue;
        const double reduced = -score[static_cast<size_t>(row - 1) * N + static_cast<size_t>(j - 1)] - u[row] - v[j];
        if (reduced < min_reduced[j]) {
          min_reduced[j] = reduced;
          prev_col[j] = col;
        }
        if (min_reduced[j] < delta) {
          delta = min_reduced[j];
          next = j;
        }
      }
      for (int j = 0; j <= n; ++j) {
        if (visited[j]) {
          u[row_of[j]] += delta;
          v[j] -= delta;
        } else {
          min_reduced[j] -= delta;
        }
      }
      col = next;
    } while (row_of[col] != 0);
    // Flip the alternating path back to the start.
    while (col != 0) {
      const int p = prev_col[col];
      row_of[col] = row_of[p];
      col = p;
    }
  }
  std::vector<int> perm(N);
  for (int j = 1; j <= n; ++j) perm[static_cast<size_t>(row_of[j] - 1)] = j - 1;
  return perm;
}

double router_similarity(const LayerStats& l, int a, int b) {
  const size_t E = static_cast<size_t>(l.n_expert);
  const double gab = l.logit_gram[static_cast<size_t>(a) * E + static_cast<size_t>(b)];
  const double gaa = l.logit_gram[static_cast<size_t>(a) * E + static_cast<size_t>(a)];
  const double gbb = l.logit_gram[static_cast<size_t>(b) * E + static_cast<size_t>(b)];
  if (!(gaa > 0) || !(gbb > 0)) return 0.0;
  return gab / std::sqrt(gaa * gbb);
}

MergePlan plan_merge(const CalibStats& stats, const ModelSpec& spec, const MergeOptions& o) {
  ExpertChoice choice;
  choice.criterion = Criterion::Frequency;
  choice.keep = o.keep;
  choice.protect = o.protect;
  MergePlan plan;
  plan.centres = choose_experts(stats, spec, choice);
  plan.group_of.resize(static_cast<size_t>(spec.n_layer));
  plan.weight.resize(static_cast<size_t>(spec.n_layer));
  for (const LayerStats& l : stats.layers) {
    for (int e = 0; e < l.n_expert; ++e)
      if (l.logit_gram[static_cast<size_t>(e) * static_cast<size_t>(l.n_expert + 1)] < 0)
        fail("{}: tensor 'calib.{}.logit_gram': diagonal entry {} is negative; not a Gram matrix of router logits",
             stats.model_file.empty() ? std::string("stats") : "stats of " + stats.model_file, l.layer, e);
    const std::vector<int>& centres = plan.centres[l.layer];
    const int E = l.n_expert, group_size = E / std::max(1, spec.layers[l.layer].moe.n_group);
    std::vector<int>& group_of = plan.group_of[l.layer];
    group_of.assign(static_cast<size_t>(E), -1);
    for (size_t j = 0; j < centres.size(); ++j) group_of[centres[j]] = static_cast<int>(j);
    for (int e = 0; e < E; ++e) {
      if (group_of[e] >= 0) continue;
      // The most similar centre of the expert's own routing group (ties: the lower centre).
      int best = -1;
      double best_sim = -std::numeric_limits<double>::infinity();
      for (size_t j = 0; j < centres.size(); ++j) {
        if (centres[j] / group_size != e / group_size) continue;
        const double s = router_similarity(l, e, centres[j]);
        if (s > best_sim) {
          best_sim = s;
          best = static_cast<int>(j);
        }
      }
      if (best < 0) fail("merge: layer {}: expert {} has no centre in its routing group", l.layer, e);
      group_of[e] = best;
    }
    std::vector<double> total(centres.size(), 0.0), members(centres.size(), 0.0);
    for (int e = 0; e < E; ++e) {
      total[group_of[e]] += o.frequency_weights ? l.count[e] : 0.0;
      members[group_of[e]] += 1;
    }
    std::vector<double>& w = plan.weight[l.layer];
    w.resize(static_cast<size_t>(E));
    for (int e = 0; e < E; ++e) {
      const int g = group_of[e];
      w[e] = total[g] > 0 ? l.count[e] / total[g] : 1.0 / members[g];
    }
  }
  return plan;
}

std::vector<int> align_neurons(const ExpertF32& centre, const ExpertF32& member, int64_t d, int64_t ff) {
  const size_t n = static_cast<size_t>(ff * d);
  if (centre.gate.size() != n || centre.up.size() != n || centre.down.size() != n || member.gate.size() != n ||
      member.up.size() != n || member.down.size() != n)
    fail("align: experts of different shapes ({} x {} expected)", ff, d);
  // S[i][j] = gate_c[i] . gate_m[j] + up_c[i] . up_m[j] + down_c[:, i] . down_m[:, j]
  std::vector<float> S(static_cast<size_t>(ff * ff));
  const int iff = static_cast<int>(ff), id = static_cast<int>(d);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, iff, iff, id, 1.0f, centre.gate.data(), id, member.gate.data(),
              id, 0.0f, S.data(), iff);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, iff, iff, id, 1.0f, centre.up.data(), id, member.up.data(), id,
              1.0f, S.data(), iff);
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, iff, iff, id, 1.0f, centre.down.data(), iff, member.down.data(),
              iff, 1.0f, S.data(), iff);
  return max_weight_assignment(std::vector<double>(S.begin(), S.end()), iff);
}

std::vector<float> permute_neurons(const std::vector<float>& m, int proj, const std::vector<int>& perm, int64_t d,
                                   int64_t ff) {
  if (proj == 5) return m;
  std::vector<float> out(m.size());
  if (proj == 2) {  // down [d][ff]: columns
    for (int64_t r = 0; r < d; ++r)
      for (int64_t i = 0; i < ff; ++i) out[r * ff + i] = m[r * ff + perm[i]];
    return out;
  }
  const int64_t width = proj < 2 ? d : 1;  // gate/up rows of d values; a bias has one value per neuron
  for (int64_t i = 0; i < ff; ++i)
    std::copy(m.begin() + perm[i] * width, m.begin() + (perm[i] + 1) * width, out.begin() + i * width);
  return out;
}

namespace {

const Role kParts[6] = {Role::ExpGate, Role::ExpUp, Role::ExpDown, Role::ExpGateBias, Role::ExpUpBias, Role::ExpDownBias};

// One expert's slice of a stacked expert tensor (matrix or bias), dequantized to f32.
std::vector<float> read_part(const gguf::File& f, const Model& model, int layer, int expert, int proj) {
  const WeightView& v = model.layer(layer)[kParts[proj]];
  if (!v) fail("{}: layer {} has no {}", f.path(), layer, role_name(kParts[proj]));
  const gguf::TensorInfo* t = f.find_tensor(v.info->name);
  if (!t) fail("{}: tensor '{}' is missing", f.path(), v.info->name);
  const int64_t E = t->dims.back(), cols = t->dims[0];
  int64_t rows = 1;
  for (size_t i = 1; i + 1 < t->dims.size(); ++i) rows *= t->dims[i];
  const DType type = file_dtype(t->type);
  const uint64_t rb = row_bytes(type, cols), slice = t->nbytes / static_cast<uint64_t>(E);
  if (rb * static_cast<uint64_t>(rows) != slice) fail("{}: tensor '{}': cannot split by expert", f.path(), t->name);
  std::vector<uint8_t> raw(slice);
  f.read_tensor_bytes(*t, static_cast<uint64_t>(expert) * slice, slice, raw.data());
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) dequantize_row(type, raw.data() + r * rb, out.data() + r * cols, cols);
  return out;
}

}  // namespace

ExpertEdit merge_edit(const gguf::File& src, const MergePlan& plan, bool align) {
  auto model = std::shared_ptr<Model>(Model::load(src.path(), gguf::DataAccess::Mmap, /*defer_experts=*/true));
  const ModelSpec& spec = model->spec();
  if (plan.centres.size() != static_cast<size_t>(spec.n_layer)) fail("merge: the plan has the wrong layer count");
  ExpertEdit edit;
  edit.copy_from.resize(static_cast<size_t>(spec.n_layer));
  edit.router_from = plan.centres;
  for (int il = 0; il < spec.n_layer; ++il) {
    const auto& centres = plan.centres[il];
    for (size_t j = 0; j < centres.size(); ++j) {
      const bool alone = std::count(plan.group_of[il].begin(), plan.group_of[il].end(), static_cast<int>(j)) == 1;
      edit.copy_from[il].push_back(alone ? centres[j] : -1);
    }
  }
  // Alignment permutations, computed once per member (the writer asks for each projection separately).
  struct Cache {
    std::mutex mu;
    std::map<std::pair<int, int>, std::vector<int>> perm;
  };
  auto cache = std::make_shared<Cache>();
  const gguf::File* f = &src;
  const MergePlan* pl = &plan;
  edit.matrix = [model, f, pl, align, cache](int layer, int out_expert, int proj) {
    const int64_t d = model->spec().n_embd, ff = model->spec().layers[layer].moe.n_ff_exp;
    const int centre = pl->centres[layer][out_expert];
    std::vector<float> acc;
    const std::vector<int>& group_of = pl->group_of[layer];
    for (size_t e = 0; e < group_of.size(); ++e) {
      if (group_of[e] != out_expert) continue;
      const int member = static_cast<int>(e);
      std::vector<float> m = read_part(*f, *model, layer, member, proj);
      if (align && member != centre && proj != 5) {
        std::vector<int> perm;
        {
          std::lock_guard<std::mutex> lock(cache->mu);
          auto it = cache->perm.find({layer, member});
          if (it != cache->perm.end()) perm = it->second;
        }
        if (perm.empty()) {
          perm = align_neurons(read_expert_f32(*f, *model, layer, centre), read_expert_f32(*f, *model, layer, member), d,
                               ff);
          std::lock_guard<std::mutex> lock(cache->mu);
          cache->perm[{layer, member}] = perm;
        }
        m = permute_neurons(m, proj, perm, d, ff);
      }
      const float w = static_cast<float>(pl->weight[layer][e]);
      if (acc.empty()) acc.assign(m.size(), 0.0f);
      for (size_t i = 0; i < m.size(); ++i) acc[i] += w * m[i];
    }
    return acc;
  };
  return edit;
}

}  // namespace moe::compress
