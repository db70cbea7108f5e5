#include "runtime/remix.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "base/error.h"
#include "format/gguf.h"
#include "model/transitions.h"

namespace moe {

namespace {

constexpr uint32_t kVersion = 1;
constexpr uint64_t kMaxRefs = 1u << 20;

std::string hex64(uint64_t v) { return fmt::format("{:016x}", v); }

std::vector<uint8_t> f32_bytes(const float* v, size_t n) {
  std::vector<uint8_t> b(n * sizeof(float));
  std::memcpy(b.data(), v, b.size());
  return b;
}

}  // namespace

RemixReferences RemixReferences::for_model(const Model& model) {
  RemixReferences r;
  const ModelSpec& s = model.spec();
  r.arch = s.arch;
  r.n_embd = s.n_embd;
  for (const LayerSpec& L : s.layers) r.n_expert.push_back(L.is_moe ? L.moe.n_expert : 0);
  r.router_fnv = hex64(transition_shape(model).router_fingerprint);
  r.scores.resize(r.n_expert.size());
  return r;
}

void RemixReferences::add(const std::string& source, const std::vector<float>& embedding,
                          const std::vector<std::vector<float>>& layer_scores) {
  if (static_cast<int64_t>(embedding.size()) != n_embd) fail("remix: embedding of {} values for n_embd {}", embedding.size(), n_embd);
  if (layer_scores.size() != n_expert.size()) fail("remix: scores for {} layers, the model has {}", layer_scores.size(), n_expert.size());
  for (size_t l = 0; l < n_expert.size(); ++l)
    if (static_cast<int>(layer_scores[l].size()) != n_expert[l])
      fail("remix: layer {} has {} scores for {} experts", l, layer_scores[l].size(), n_expert[l]);
  sources.push_back(source);
  embeddings.insert(embeddings.end(), embedding.begin(), embedding.end());
  for (size_t l = 0; l < n_expert.size(); ++l) scores[l].insert(scores[l].end(), layer_scores[l].begin(), layer_scores[l].end());
}

void RemixReferences::write(const std::string& path) const {
  if (count() == 0) fail("{}: no references to write", path);
  gguf::Writer w;
  w.set("moe.remix.version", gguf::Value::make_u32(kVersion));
  w.set("moe.remix.model.arch", gguf::Value::make_string(arch));
  w.set("moe.remix.model.n_embd", gguf::Value::make_u32(static_cast<uint32_t>(n_embd)));
  w.set("moe.remix.model.n_expert", gguf::Value::make_i32_array(std::vector<int32_t>(n_expert.begin(), n_expert.end())));
  w.set("moe.remix.model.router_fnv", gguf::Value::make_string(router_fnv));
  w.set("moe.remix.count", gguf::Value::make_u32(static_cast<uint32_t>(count())));
  w.set("moe.remix.snippet_len", gguf::Value::make_u32(static_cast<uint32_t>(snippet_len)));
  w.set("moe.remix.sources", gguf::Value::make_string_array(sources));
  w.add_tensor("remix.embedding", DType::F32, {n_embd, count()}, f32_bytes(embeddings.data(), embeddings.size()));
  for (size_t l = 0; l < n_expert.size(); ++l)
    if (n_expert[l] > 0)
      w.add_tensor(fmt::format("remix.scores.{}", l), DType::F32, {n_expert[l], count()},
                   f32_bytes(scores[l].data(), scores[l].size()));
  w.write(path);
}

RemixReferences RemixReferences::read(const std::string& path) {
  auto f = gguf::File::open(path, gguf::DataAccess::Pread);
  return parse(*f);
}

RemixReferences RemixReferences::parse(const gguf::File& f) {
  const std::string& path = f.path();
  auto need = [&](const std::string& key) {
    if (!f.has(key)) fail("{}: not a remix reference file: key '{}' is missing (make one with `moe remix-build`)", path, key);
  };
  need("moe.remix.version");
  if (f.get_uint("moe.remix.version") != kVersion)
    fail("{}: key 'moe.remix.version': {} (this build reads version {})", path, f.get_uint("moe.remix.version"), kVersion);
  for (const char* k : {"moe.remix.model.arch", "moe.remix.model.n_embd", "moe.remix.model.n_expert",
                        "moe.remix.model.router_fnv", "moe.remix.count", "moe.remix.sources"})
    need(k);
  RemixReferences r;
  r.arch = f.get_string("moe.remix.model.arch");
  const uint64_t n_embd = f.get_uint("moe.remix.model.n_embd");
  if (n_embd == 0 || n_embd > (1u << 20)) fail("{}: key 'moe.remix.model.n_embd': {} out of range", path, n_embd);
  r.n_embd = static_cast<int64_t>(n_embd);
  const std::vector<int64_t> experts = f.get_int_array("moe.remix.model.n_expert");
  if (experts.empty() || experts.size() > 4096) fail("{}: key 'moe.remix.model.n_expert': {} layers", path, experts.size());
  for (int64_t e : experts) {
    if (e < 0 || e > 65536) fail("{}: key 'moe.remix.model.n_expert': {} experts out of range", path, e);
    r.n_expert.push_back(static_cast<int>(e));
  }
  r.router_fnv = f.get_string("moe.remix.model.router_fnv");
  r.snippet_len = static_cast<int>(std::min<uint64_t>(f.get_uint_or("moe.remix.snippet_len", 0), 1u << 30));
  const uint64_t count = f.get_uint("moe.remix.count");
  if (count == 0 || count > kMaxRefs) fail("{}: key 'moe.remix.count': {} out of range [1, {}]", path, count, kMaxRefs);
  r.sources = f.get_string_array("moe.remix.sources");
  if (r.sources.size() != count)
    fail("{}: key 'moe.remix.sources' has {} entries for {} references", path, r.sources.size(), count);
  auto tensor = [&](const std::string& name, int64_t width, bool nonnegative) {
    const gguf::TensorInfo* t = f.find_tensor(name);
    if (!t) fail("{}: tensor '{}' is missing", path, name);
    if (t->type != DType::F32) fail("{}: tensor '{}' must be F32", path, name);
    if (t->dims.size() != 2 || t->dims[0] != width || t->dims[1] != static_cast<int64_t>(count))
      fail("{}: tensor '{}' has the wrong shape (expected [{}][{}])", path, name, count, width);
    // Checked before allocating: the file's own tensor size bounds what a hostile count can ask for.
    const uint64_t want = static_cast<uint64_t>(width) * count * sizeof(float);
    if (t->nbytes != want) fail("{}: tensor '{}' has {} bytes, expected {}", path, name, t->nbytes, want);
    std::vector<float> v(static_cast<size_t>(width) * count);
    f.read_tensor_bytes(*t, 0, t->nbytes, v.data());
    for (float x : v)
      if (!std::isfinite(x) || (nonnegative && x < 0)) fail("{}: tensor '{}' holds an invalid value {}", path, name, x);
    return v;
  };
  r.embeddings = tensor("remix.embedding", r.n_embd, false);
  r.scores.resize(r.n_expert.size());
  int moe_layers = 0;
  for (size_t l = 0; l < r.n_expert.size(); ++l) {
    if (r.n_expert[l] == 0) continue;
    r.scores[l] = tensor(fmt::format("remix.scores.{}", l), r.n_expert[l], true);
    ++moe_layers;
  }
  if (moe_layers == 0) fail("{}: key 'moe.remix.model.n_expert': no MoE layer", path);
  return r;
}

bool RemixReferences::check_model(const Model& model, const std::string& path) const {
  const RemixReferences want = for_model(model);
  if (arch != want.arch || n_embd != want.n_embd || n_expert != want.n_expert)
    fail("{}: remix references were built for a {} model (n_embd {}, {} layers), but {} is {} (n_embd {}, {} layers); "
         "rebuild them with `moe remix-build -m {}`",
         path, arch, n_embd, n_expert.size(), model.file().path(), want.arch, want.n_embd, want.n_expert.size(),
         model.file().path());
  return router_fnv == want.router_fnv;
}

RemixRecorder::RemixRecorder(const ModelSpec& spec)
    : sum_(static_cast<size_t>(spec.n_embd), 0.0), last_scores_(static_cast<size_t>(spec.n_layer)) {}

ObserverNeeds RemixRecorder::needs() const {
  ObserverNeeds n;
  n.final_hidden = true;
  return n;
}

void RemixRecorder::on_routing(const MoeLayerRouting& r) {
  const int64_t n = r.tokens->n_tokens;
  if (n <= 0) return;
  const float* row = r.scores + (n - 1) * r.n_expert;
  last_scores_[static_cast<size_t>(r.layer)].assign(row, row + r.n_expert);
}

void RemixRecorder::on_final_hidden(const StepTokens& tokens, const float* hidden, int64_t n_embd) {
  for (int64_t t = 0; t < tokens.n_tokens; ++t)
    for (int64_t i = 0; i < n_embd; ++i) sum_[static_cast<size_t>(i)] += hidden[t * n_embd + i];
  n_ += tokens.n_tokens;
}

void RemixRecorder::reset() {
  std::fill(sum_.begin(), sum_.end(), 0.0);
  n_ = 0;
  for (auto& s : last_scores_) s.clear();
}

std::vector<float> RemixRecorder::embedding() const {
  std::vector<float> e(sum_.size());
  for (size_t i = 0; i < e.size(); ++i) e[i] = n_ ? static_cast<float>(sum_[i] / static_cast<double>(n_)) : 0.0f;
  return e;
}

namespace {

RemixNeighbors weigh(RemixNeighbors n) {
  double total = 0;
  n.weights.resize(n.ids.size());
  for (size_t i = 0; i < n.ids.size(); ++i) total += (n.weights[i] = std::max(0.0, n.cosine[i]));
  for (double& w : n.weights) w = total > 0 ? w / total : 1.0 / static_cast<double>(n.ids.size());
  return n;
}

}  // namespace

RemixNeighbors remix_neighbors(const RemixReferences& refs, const std::vector<float>& e, int k) {
  if (static_cast<int64_t>(e.size()) != refs.n_embd) fail("remix: embedding of {} values for n_embd {}", e.size(), refs.n_embd);
  const int n = refs.count();
  std::vector<double> cos(static_cast<size_t>(n));
  double ee = 0;
  for (float x : e) ee += static_cast<double>(x) * x;
  for (int r = 0; r < n; ++r) {
    const float* v = refs.embeddings.data() + static_cast<size_t>(r) * refs.n_embd;
    double dot = 0, vv = 0;
    for (int64_t i = 0; i < refs.n_embd; ++i) {
      dot += static_cast<double>(v[i]) * e[static_cast<size_t>(i)];
      vv += static_cast<double>(v[i]) * v[i];
    }
    cos[static_cast<size_t>(r)] = ee > 0 && vv > 0 ? dot / std::sqrt(ee * vv) : 0.0;
  }
  std::vector<int> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  k = std::min(k, n);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int a, int b) {
    return cos[static_cast<size_t>(a)] > cos[static_cast<size_t>(b)] || (cos[static_cast<size_t>(a)] == cos[static_cast<size_t>(b)] && a < b);
  });
  RemixNeighbors out;
  for (int i = 0; i < k; ++i) {
    out.ids.push_back(order[static_cast<size_t>(i)]);
    out.cosine.push_back(cos[static_cast<size_t>(order[static_cast<size_t>(i)])]);
  }
  return weigh(std::move(out));
}

RemixNeighbors with_references(const RemixNeighbors& n, const std::vector<int>& ids) {
  if (ids.size() != n.ids.size()) fail("remix: {} references for {} neighbours", ids.size(), n.ids.size());
  RemixNeighbors out = n;
  out.ids = ids;
  return out;
}

std::shared_ptr<const RemixScores> remix_scores(const RemixReferences& refs, const RemixNeighbors& n, int n_layers) {
  auto out = std::make_shared<RemixScores>();
  out->per_layer.resize(refs.n_expert.size());
  int left = n_layers;
  for (int l = static_cast<int>(refs.n_expert.size()) - 1; l >= 0 && left > 0; --l) {
    const int E = refs.n_expert[static_cast<size_t>(l)];
    if (E == 0) continue;
    --left;
    std::vector<double> mix(static_cast<size_t>(E), 0.0);
    for (size_t i = 0; i < n.ids.size(); ++i) {
      const float* s = refs.scores[static_cast<size_t>(l)].data() + static_cast<size_t>(n.ids[i]) * E;
      for (int e = 0; e < E; ++e) mix[static_cast<size_t>(e)] += n.weights[i] * s[e];
    }
    auto& dst = out->per_layer[static_cast<size_t>(l)];
    dst.resize(static_cast<size_t>(E));
    for (int e = 0; e < E; ++e) dst[static_cast<size_t>(e)] = static_cast<float>(mix[static_cast<size_t>(e)]);
  }
  return out;
}

}  // namespace moe

#include "runtime/session.h"

namespace moe {

const std::vector<float>& eval_with_remix(Session& s, const std::vector<int32_t>& prompt, ThreadPool& pool,
                                          const RemixReferences& refs, int n_layers, int neighbors,
                                          RemixNeighbors* used) {
  if (prompt.empty()) fail("remix: the prompt is empty");
  RoutingPolicy base = s.routing_policy();
  base.remix = nullptr;
  s.set_routing_policy(base);
  RemixRecorder rec(s.model().spec());
  s.forward().add_observer(&rec);
  try {
    s.eval(prompt, pool);
  } catch (...) {
    s.forward().remove_observer(&rec);
    throw;
  }
  s.forward().remove_observer(&rec);
  const RemixNeighbors nb = remix_neighbors(refs, rec.embedding(), neighbors);
  if (used) *used = nb;
  RoutingPolicy p = base;
  p.remix = remix_scores(refs, nb, n_layers);
  s.truncate(s.n_past() - 1);
  s.set_routing_policy(p);
  return s.eval({prompt.back()}, pool);
}

}  // namespace moe
