#include "moe/transition_table.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/error.h"
#include "format/gguf.h"
#include "moe/expert_load.h"

namespace moe {

namespace {

constexpr uint32_t kFormatVersion = 1;
// Limits a hostile side file cannot push past before we allocate (the counts themselves are bounded
// by the file's size, which the GGUF reader already checked).
constexpr int kMaxLayers = 4096;
constexpr int kMaxExperts = 1 << 16;

std::string usage_key(int layer) { return fmt::format("transitions.usage.{}", layer); }
std::string counts_key(int layer) { return fmt::format("transitions.counts.{}", layer); }

gguf::Value u64_array(const std::vector<uint64_t>& v) {
  gguf::Value r;
  r.type = gguf::ValueType::ARRAY;
  r.array_type = gguf::ValueType::U64;
  r.array_count = v.size();
  r.array_raw.resize(v.size() * sizeof(uint64_t));
  if (!v.empty()) std::memcpy(r.array_raw.data(), v.data(), r.array_raw.size());
  return r;
}

std::vector<uint64_t> read_u64_array(const gguf::File& f, const std::string& key, size_t count) {
  const gguf::Value* v = f.find(key);
  if (!v) fail("{}: transition table: key '{}' is missing (expected {} u64 counts)", f.path(), key, count);
  if (v->type != gguf::ValueType::ARRAY || v->array_type != gguf::ValueType::U64)
    fail("{}: transition table: key '{}': expected an array of u64, found {}", f.path(), key,
         v->type == gguf::ValueType::ARRAY ? fmt::format("an array of {}", gguf::value_type_name(v->array_type))
                                           : std::string(gguf::value_type_name(v->type)));
  if (v->array_count != count)
    fail("{}: transition table: key '{}': expected {} counts, found {}", f.path(), key, count, v->array_count);
  std::vector<uint64_t> out(count);
  if (count) std::memcpy(out.data(), v->array_raw.data(), count * sizeof(uint64_t));
  return out;
}

// Keeps out[0..m) as the best n (score desc, then id asc) of the candidates offered so far. Offering
// ids in ascending order makes ties keep the lower id without comparing ids. n is small (k + margin),
// so insertion beats sorting all E candidates and needs no scratch.
void offer(int32_t id, double score, int n, int32_t* out, double* out_scores, int& m) {
  if (m == n && !(score > out_scores[m - 1])) return;
  int pos = m < n ? m : n - 1;
  while (pos > 0 && score > out_scores[pos - 1]) {
    out[pos] = out[pos - 1];
    out_scores[pos] = out_scores[pos - 1];
    --pos;
  }
  out[pos] = id;
  out_scores[pos] = score;
  if (m < n) ++m;
}

bool contains(const int32_t* ids, int k, int32_t id) { return std::find(ids, ids + k, id) != ids + k; }

}  // namespace

std::string TransitionShape::describe() const {
  int n_moe = 0, lo = 0, hi = 0;
  for (int e : n_expert) {
    if (e == 0) continue;
    lo = n_moe ? std::min(lo, e) : e;
    hi = std::max(hi, e);
    ++n_moe;
  }
  const std::string experts = lo == hi ? fmt::format("{}", hi) : fmt::format("{}-{}", lo, hi);
  return fmt::format("{}, {} layers, {} MoE layers x {} experts", arch, n_layer(), n_moe, experts);
}

void TransitionAccuracy::add(const TransitionAccuracy& o) {
  tokens += o.tokens;
  top1_hits += o.top1_hits;
  top1_hits_unweighted += o.top1_hits_unweighted;
  topk_hits += o.topk_hits;
  topk_total += o.topk_total;
  popular_top1_hits += o.popular_top1_hits;
  popular_topk_hits += o.popular_topk_hits;
}

TransitionTable::TransitionTable(TransitionShape shape) : shape_(std::move(shape)) {
  const int L = shape_.n_layer();
  if (L <= 0 || L > kMaxLayers) fail("transition table: {} layers is out of range [1, {}]", L, kMaxLayers);
  for (int l = 0; l < L; ++l)
    if (shape_.n_expert[l] < 0 || shape_.n_expert[l] > kMaxExperts)
      fail("transition table: layer {} has {} experts, outside [0, {}]", l, shape_.n_expert[l], kMaxExperts);
  next_.assign(static_cast<size_t>(L), -1);
  counts_.resize(static_cast<size_t>(L));
  usage_.resize(static_cast<size_t>(L));
  int following = -1;
  for (int l = L - 1; l >= 0; --l) {
    const int E = shape_.n_expert[l];
    if (E == 0) continue;
    next_[l] = following;
    usage_[l].assign(static_cast<size_t>(E), 0);
    if (following >= 0)
      counts_[l].assign(static_cast<size_t>(E) * static_cast<size_t>(shape_.n_expert[following]), 0);
    following = l;
  }
}

int TransitionTable::next_moe_layer(int layer) const {
  return layer >= 0 && layer < shape_.n_layer() ? next_[static_cast<size_t>(layer)] : -1;
}

size_t TransitionTable::pair_index(int layer, int from, int to) const {
  const int next = next_[static_cast<size_t>(layer)];
  return static_cast<size_t>(from) * static_cast<size_t>(shape_.n_expert[next]) + static_cast<size_t>(to);
}

void TransitionTable::add_usage(int layer, const int32_t* ids, int k) {
  if (layer < 0 || layer >= shape_.n_layer() || usage_[layer].empty())
    fail("transition table: layer {} is not a MoE layer of {}", layer, shape_.describe());
  const int E = shape_.n_expert[layer];
  for (int s = 0; s < k; ++s) {
    if (ids[s] == Routing::kEmpty) continue;  // an empty slot: no expert
    if (ids[s] < 0 || ids[s] >= E) fail("transition table: layer {}: expert {} outside [0, {})", layer, ids[s], E);
    ++usage_[layer][static_cast<size_t>(ids[s])];
  }
}

void TransitionTable::add_transition(int layer, const int32_t* ids, int k, const int32_t* next_ids, int k_next) {
  const int next = next_moe_layer(layer);
  if (next < 0) fail("transition table: layer {} has no following MoE layer in {}", layer, shape_.describe());
  const int E = shape_.n_expert[layer], En = shape_.n_expert[next];
  std::vector<uint64_t>& c = counts_[static_cast<size_t>(layer)];
  for (int s = 0; s < k; ++s) {
    if (ids[s] == Routing::kEmpty) continue;
    if (ids[s] < 0 || ids[s] >= E) fail("transition table: layer {}: expert {} outside [0, {})", layer, ids[s], E);
    for (int r = 0; r < k_next; ++r) {
      if (next_ids[r] == Routing::kEmpty) continue;
      if (next_ids[r] < 0 || next_ids[r] >= En)
        fail("transition table: layer {}: expert {} outside [0, {})", next, next_ids[r], En);
      ++c[pair_index(layer, ids[s], next_ids[r])];
    }
  }
}

void TransitionTable::add(const std::vector<Routing>& per_layer) {
  if (static_cast<int>(per_layer.size()) != shape_.n_layer())
    fail("transition table: routing for {} layers, but the table has {}", per_layer.size(), shape_.n_layer());
  for (int l = 0; l < shape_.n_layer(); ++l) {
    const Routing& r = per_layer[static_cast<size_t>(l)];
    if (usage_[l].empty() || r.n_tokens == 0) continue;
    for (int64_t t = 0; t < r.n_tokens; ++t) add_usage(l, &r.ids[static_cast<size_t>(t * r.k)], r.k);
    const int next = next_[l];
    if (next < 0) continue;
    const Routing& rn = per_layer[static_cast<size_t>(next)];
    // Pairs need the same tokens at both layers, which holds within one forward call.
    if (rn.n_tokens != r.n_tokens) continue;
    for (int64_t t = 0; t < r.n_tokens; ++t)
      add_transition(l, &r.ids[static_cast<size_t>(t * r.k)], r.k, &rn.ids[static_cast<size_t>(t * rn.k)], rn.k);
  }
}

uint64_t TransitionTable::count(int layer, int from, int to) const {
  const int next = next_moe_layer(layer);
  if (next < 0 || from < 0 || from >= shape_.n_expert[layer] || to < 0 || to >= shape_.n_expert[next]) return 0;
  return counts_[static_cast<size_t>(layer)][pair_index(layer, from, to)];
}

uint64_t TransitionTable::usage(int layer, int expert) const {
  if (layer < 0 || layer >= shape_.n_layer() || expert < 0 || expert >= static_cast<int>(usage_[layer].size()))
    return 0;
  return usage_[static_cast<size_t>(layer)][static_cast<size_t>(expert)];
}

double TransitionTable::load_cv(int layer) const {
  if (layer < 0 || layer >= shape_.n_layer()) return NAN;
  return moe::load_cv(usage_[static_cast<size_t>(layer)]);
}

int TransitionTable::predict(int layer, const int32_t* ids, const float* weights, int k, int n, int32_t* out,
                             std::vector<double>& scores) const {
  const int next = next_moe_layer(layer);
  if (next < 0 || n <= 0) return 0;
  const int E = shape_.n_expert[layer], En = shape_.n_expert[next];
  n = std::min(n, En);
  const std::vector<uint64_t>& c = counts_[static_cast<size_t>(layer)];
  const std::vector<uint64_t>& u = usage_[static_cast<size_t>(next)];
  double u_total = 0;
  for (uint64_t x : u) u_total += static_cast<double>(x);
  // scores[0..En) accumulate; scores[En..En+n) hold the kept candidates' scores.
  scores.assign(static_cast<size_t>(En + n), 0.0);
  for (int s = 0; s < k; ++s) {
    const int32_t i = ids[s];
    if (i < 0 || i >= E) continue;
    const double w = weights ? static_cast<double>(weights[s]) : 1.0;
    const uint64_t* row = c.data() + pair_index(layer, i, 0);
    double row_total = 0;
    for (int j = 0; j < En; ++j) row_total += static_cast<double>(row[j]);
    const double denom = row_total + kSmoothing;
    for (int j = 0; j < En; ++j) {
      const double prior = u_total > 0 ? kSmoothing * static_cast<double>(u[j]) / u_total : 0.0;
      scores[j] += w * (static_cast<double>(row[j]) + prior) / denom;
    }
  }
  int m = 0;
  for (int j = 0; j < En; ++j)
    if (scores[j] > 0) offer(j, scores[j], n, out, scores.data() + En, m);
  return m;
}

int TransitionTable::predict_popular(int layer, int n, int32_t* out) const {
  const int next = next_moe_layer(layer);
  if (next < 0 || n <= 0) return 0;
  const std::vector<uint64_t>& u = usage_[static_cast<size_t>(next)];
  n = std::min(n, static_cast<int>(u.size()));
  std::vector<double> kept(static_cast<size_t>(n));
  int m = 0;
  for (size_t j = 0; j < u.size(); ++j)
    if (u[j] > 0) offer(static_cast<int32_t>(j), static_cast<double>(u[j]), n, out, kept.data(), m);
  return m;
}

void TransitionTable::evaluate(const std::vector<Routing>& per_layer, std::vector<TransitionAccuracy>& acc) const {
  if (static_cast<int>(per_layer.size()) != shape_.n_layer())
    fail("transition table: routing for {} layers, but the table has {}", per_layer.size(), shape_.n_layer());
  acc.resize(static_cast<size_t>(shape_.n_layer()));
  std::vector<double> scores;
  std::vector<int32_t> pred, popular;
  for (int l = 0; l < shape_.n_layer(); ++l) {
    const int next = next_[static_cast<size_t>(l)];
    if (next < 0) continue;
    const Routing& r = per_layer[static_cast<size_t>(l)];
    const Routing& rn = per_layer[static_cast<size_t>(next)];
    if (r.n_tokens == 0 || rn.n_tokens != r.n_tokens) continue;
    const int kn = rn.k;
    pred.resize(static_cast<size_t>(kn));
    popular.resize(static_cast<size_t>(kn));
    const int n_pop = predict_popular(l, kn, popular.data());
    TransitionAccuracy& a = acc[static_cast<size_t>(l)];
    for (int64_t t = 0; t < r.n_tokens; ++t) {
      const int32_t* ids = &r.ids[static_cast<size_t>(t * r.k)];
      const float* w = &r.weights[static_cast<size_t>(t * r.k)];
      const int32_t* actual = &rn.ids[static_cast<size_t>(t * kn)];
      const int m = predict(l, ids, w, r.k, kn, pred.data(), scores);
      a.top1_hits += m > 0 && contains(actual, kn, pred[0]);
      for (int j = 0; j < m; ++j) a.topk_hits += contains(actual, kn, pred[static_cast<size_t>(j)]);
      int32_t top_unweighted = -1;
      if (predict(l, ids, nullptr, r.k, 1, &top_unweighted, scores) > 0)
        a.top1_hits_unweighted += contains(actual, kn, top_unweighted);
      a.popular_top1_hits += n_pop > 0 && contains(actual, kn, popular[0]);
      for (int j = 0; j < n_pop; ++j) a.popular_topk_hits += contains(actual, kn, popular[static_cast<size_t>(j)]);
      a.topk_total += static_cast<uint64_t>(kn);
      ++a.tokens;
    }
  }
}

void TransitionTable::save(const std::string& path, const std::string& source_note) const {
  gguf::Writer w;
  w.set("transitions.version", gguf::Value::make_u32(kFormatVersion));
  // Human-readable, so `gguf dump`-style tools show which model the table belongs to.
  w.set("transitions.model", gguf::Value::make_string(shape_.describe()));
  w.set("transitions.arch", gguf::Value::make_string(shape_.arch));
  w.set("transitions.n_layer", gguf::Value::make_u32(static_cast<uint32_t>(shape_.n_layer())));
  w.set("transitions.n_expert", gguf::Value::make_i32_array(std::vector<int32_t>(shape_.n_expert.begin(), shape_.n_expert.end())));
  w.set("transitions.router_fingerprint", gguf::Value::make_u64(shape_.router_fingerprint));
  if (!source_note.empty()) w.set("transitions.source", gguf::Value::make_string(source_note));
  for (int l = 0; l < shape_.n_layer(); ++l) {
    if (usage_[l].empty()) continue;
    w.set(usage_key(l), u64_array(usage_[l]));
    if (next_[l] >= 0) w.set(counts_key(l), u64_array(counts_[l]));
  }
  w.write(path);
}

TransitionTable TransitionTable::load(const std::string& path) {
  auto f = gguf::File::open(path, gguf::DataAccess::Pread);
  if (!f->has("transitions.version"))
    fail("{}: not a transition table (no key 'transitions.version'); build one with `moe route-stats -m MODEL -f "
         "TEXT -o TABLE`",
         path);
  const uint64_t version = f->get_uint("transitions.version");
  if (version != kFormatVersion)
    fail("{}: transition table format version {} is not supported (expected {})", path, version, kFormatVersion);
  TransitionShape shape;
  shape.arch = f->get_string("transitions.arch");
  const uint64_t n_layer = f->get_uint("transitions.n_layer");
  const std::vector<int64_t> n_expert = f->get_int_array("transitions.n_expert");
  if (n_layer == 0 || n_layer > static_cast<uint64_t>(kMaxLayers) || n_expert.size() != n_layer)
    fail("{}: transition table: transitions.n_layer is {} but transitions.n_expert has {} entries", path, n_layer,
         n_expert.size());
  for (size_t l = 0; l < n_expert.size(); ++l) {
    if (n_expert[l] < 0 || n_expert[l] > kMaxExperts)
      fail("{}: transition table: transitions.n_expert[{}] = {} is outside [0, {}]", path, l, n_expert[l], kMaxExperts);
    shape.n_expert.push_back(static_cast<int>(n_expert[l]));
  }
  shape.router_fingerprint = f->get_uint_or("transitions.router_fingerprint", 0);
  // Read (and so size-check) every array before the table allocates its own: the arrays are bounded by
  // the file's size, so a hostile header cannot make us allocate more than the file holds.
  const int L = static_cast<int>(n_layer);
  std::vector<std::vector<uint64_t>> usage(static_cast<size_t>(L)), counts(static_cast<size_t>(L));
  for (int l = L - 1, following = -1; l >= 0; --l) {
    const size_t E = static_cast<size_t>(shape.n_expert[static_cast<size_t>(l)]);
    if (E == 0) continue;
    usage[static_cast<size_t>(l)] = read_u64_array(*f, usage_key(l), E);
    if (following >= 0)
      counts[static_cast<size_t>(l)] = read_u64_array(
          *f, counts_key(l), E * static_cast<size_t>(shape.n_expert[static_cast<size_t>(following)]));
    following = l;
  }
  TransitionTable t(std::move(shape));
  t.usage_ = std::move(usage);
  t.counts_ = std::move(counts);
  return t;
}

}  // namespace moe
