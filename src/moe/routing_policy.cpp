// RoutingPolicy: validation, the JSON form, the text forms of its lists, and compiling it against a
// model's layers (RoutingPlan). The routing itself is in policy_router.cpp.
#include "moe/routing_policy.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <set>

#include "base/error.h"

namespace moe {

namespace {

const char* top_p_weights_name(TopPWeights w) {
  switch (w) {
    case TopPWeights::Model: return "model";
    case TopPWeights::Raw: return "raw";
    case TopPWeights::Renorm: return "renorm";
  }
  return "?";
}

bool finite(double v) { return std::isfinite(v); }

}  // namespace

bool RoutingPolicy::is_default() const {
  return experts == 0 && experts_per_layer.empty() && top_p < 0 && top_p_max_k == 0 &&
         top_p_weights == TopPWeights::Model && ratio_beta == 0 && ratio_layers.empty() && random_drop == 0 &&
         min_weight == 0 && !min_weight_renorm && mask_experts.empty() && force_experts.empty() && steer.empty() &&
         !sinkhorn && only_rank == 0 && remix_refs.empty() && remix_layers == 0 && !remix;
}

void RoutingPolicy::check() const {
  if (experts < 0) fail("experts (--experts) {}: must be at least 1", experts);
  for (const auto& [l, k] : experts_per_layer) {
    if (l < 0) fail("experts_per_layer (--experts-per-layer) {}:{}: layer must be >= 0", l, k);
    if (k < 1) fail("experts_per_layer (--experts-per-layer) {}:{}: k must be at least 1", l, k);
  }
  {
    std::set<int> seen;
    for (const auto& [l, k] : experts_per_layer)
      if (!seen.insert(l).second) fail("experts_per_layer (--experts-per-layer): layer {} is given twice", l);
  }
  if (std::isnan(top_p)) fail("top_p (--route-top-p): not a number");
  const bool has_top_p = top_p >= 0;  // negative = off
  if (has_top_p && top_p > 1.0) fail("top_p (--route-top-p) {}: must be in [0, 1]", top_p);
  if (top_p_max_k < 0) fail("top_p_max_k (--route-top-p-max-k) {}: must be at least 1", top_p_max_k);
  if (!has_top_p && top_p_max_k > 0)
    fail("top_p_max_k (--route-top-p-max-k) {} needs top_p (--route-top-p)", top_p_max_k);
  if (!has_top_p && top_p_weights != TopPWeights::Model)
    fail("top_p_weights (--route-top-p-weights) {} needs top_p (--route-top-p)", top_p_weights_name(top_p_weights));
  if (has_top_p && (experts > 0 || !experts_per_layer.empty()))
    fail("top_p (--route-top-p) and experts{} (--experts{}) both set how many experts a token gets; bound top-p "
         "with top_p_max_k (--route-top-p-max-k) instead",
         experts > 0 ? "" : "_per_layer", experts > 0 ? "" : "-per-layer");
  if (!finite(ratio_beta) || ratio_beta < 0 || ratio_beta > 1)
    fail("ratio_threshold (--route-ratio) {}: must be in (0, 1]", ratio_beta);
  if (ratio_beta == 0 && !ratio_layers.empty()) fail("ratio_layers (--route-ratio-layers) needs ratio_threshold (--route-ratio)");
  for (int l : ratio_layers)
    if (l < 0) fail("ratio_layers (--route-ratio-layers): layer {} must be >= 0", l);
  if (!finite(random_drop) || random_drop < 0 || random_drop > 1)
    fail("random_drop (--route-random-drop) {}: must be in [0, 1]", random_drop);
  if (!finite(min_weight) || min_weight < 0 || min_weight > 1e30)
    fail("min_weight (--route-min-weight / --skip-below) {}: must be a routing weight >= 0", min_weight);
  if (min_weight == 0 && min_weight_renorm)
    fail("min_weight_renorm (--route-min-weight-renorm) needs min_weight (--route-min-weight)");
  auto check_pairs = [](const std::vector<LayerExpert>& v, const char* what) {
    std::set<std::pair<int, int>> seen;
    for (const LayerExpert& p : v) {
      if (p.layer < 0 || p.expert < 0) fail("{}: {}:{}: layer and expert must be >= 0", what, p.layer, p.expert);
      if (!seen.insert({p.layer, p.expert}).second) fail("{}: {}:{} is given twice", what, p.layer, p.expert);
    }
    return seen;
  };
  const auto off = check_pairs(mask_experts, "mask_experts (--mask-experts)");
  const auto on = check_pairs(force_experts, "force_experts (--force-experts)");
  for (const auto& p : on)
    if (off.count(p))
      fail("force_experts (--force-experts) and mask_experts (--mask-experts) both name {}:{}", p.first, p.second);
  {
    std::set<std::pair<int, int>> seen;
    for (const SteerRule& s : steer) {
      if (s.layer < 0 || s.expert < 0) fail("steer (--steer): {}:{}: layer and expert must be >= 0", s.layer, s.expert);
      if (!finite(s.factor) || s.factor <= 0 || s.factor > 1e6)
        fail("steer (--steer) {}:{}: factor {} must be in (0, 1e6]", s.layer, s.expert, s.factor);
      if (!seen.insert({s.layer, s.expert}).second) fail("steer (--steer): {}:{} is given twice", s.layer, s.expert);
      if (off.count({s.layer, s.expert}))
        fail("steer (--steer) and mask_experts (--mask-experts) both name {}:{}", s.layer, s.expert);
    }
  }
  if (sinkhorn) {
    if (!finite(sinkhorn_eps) || sinkhorn_eps <= 0 || sinkhorn_eps > 1e6)
      fail("sinkhorn.eps (--sinkhorn-eps) {}: must be > 0", sinkhorn_eps);
    if (sinkhorn_iters < 1 || sinkhorn_iters > 100000)
      fail("sinkhorn.iterations (--sinkhorn-iters) {}: must be in [1, 100000]", sinkhorn_iters);
    if (has_top_p) fail("sinkhorn (--route-sinkhorn) selects top-k from its plan; it cannot be combined with top_p");
  }
  if (only_rank < 0) fail("only_rank {}: ranks count from 1", only_rank);
  if (only_rank > 0) {
    if (experts > 0 || !experts_per_layer.empty() || has_top_p || sinkhorn || !force_experts.empty() ||
        ratio_beta > 0 || random_drop > 0 || min_weight > 0 || !steer.empty())
      fail("only_rank {} (one expert alone, SCMoE's weak pass) cannot be combined with other selection or weight "
           "settings (only with mask_experts)",
           only_rank);
  }
  if (remix_layers < 0) fail("remix.layers (--remix-layers) {}: must be at least 1", remix_layers);
  if (remix_neighbors < 1 || remix_neighbors > 1000)
    fail("remix.neighbors (--remix-neighbors) {}: must be in [1, 1000]", remix_neighbors);
  if (!remix_refs.empty() && remix_layers == 0) fail("remix (--remix {}) needs remix.layers (--remix-layers N)", remix_refs);
  if (remix_refs.empty() && remix_layers > 0) fail("remix.layers (--remix-layers) needs remix.refs (--remix REFS)");
}

nlohmann::ordered_json RoutingPolicy::to_json() const {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (experts > 0) j["experts"] = experts;
  if (!experts_per_layer.empty()) {
    auto a = nlohmann::ordered_json::array();
    for (const auto& [l, k] : experts_per_layer) a.push_back({l, k});
    j["experts_per_layer"] = a;
  }
  if (top_p >= 0) j["top_p"] = top_p;
  if (top_p_max_k > 0) j["top_p_max_k"] = top_p_max_k;
  if (top_p_weights != TopPWeights::Model) j["top_p_weights"] = top_p_weights_name(top_p_weights);
  if (ratio_beta > 0) j["ratio_threshold"] = ratio_beta;
  if (!ratio_layers.empty()) j["ratio_layers"] = ratio_layers;
  if (random_drop > 0) j["random_drop"] = {{"prob", random_drop}, {"seed", random_seed}};
  if (min_weight > 0) j["min_weight"] = min_weight;
  if (min_weight_renorm) j["min_weight_renorm"] = true;
  auto pairs = [](const std::vector<LayerExpert>& v) {
    auto a = nlohmann::ordered_json::array();
    for (const LayerExpert& p : v) a.push_back({p.layer, p.expert});
    return a;
  };
  if (!mask_experts.empty()) j["mask_experts"] = pairs(mask_experts);
  if (!force_experts.empty()) j["force_experts"] = pairs(force_experts);
  if (!steer.empty()) {
    auto a = nlohmann::ordered_json::array();
    for (const SteerRule& s : steer) {
      nlohmann::ordered_json r;
      r["layer"] = s.layer;
      r["expert"] = s.expert;
      r["factor"] = s.factor;
      if (s.force) r["force"] = true;
      a.push_back(r);
    }
    j["steer"] = a;
  }
  if (sinkhorn) j["sinkhorn"] = {{"eps", sinkhorn_eps}, {"iterations", sinkhorn_iters}};
  if (only_rank > 0) j["only_rank"] = only_rank;
  if (!remix_refs.empty() || remix_layers > 0) {
    nlohmann::ordered_json r;
    r["refs"] = remix_refs;
    r["layers"] = remix_layers;
    r["neighbors"] = remix_neighbors;
    j["remix"] = r;
  }
  return j;
}

namespace {

// Strict readers: the key is named in every error.
int get_int(const nlohmann::json& v, const std::string& key, int lo, int hi) {
  if (!v.is_number_integer()) fail("routing policy: '{}' must be an integer, not {}", key, v.dump());
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) fail("routing policy: '{}' = {} is out of range [{}, {}]", key, x, lo, hi);
  return static_cast<int>(x);
}

double get_number(const nlohmann::json& v, const std::string& key, double lo, double hi) {
  if (!v.is_number()) fail("routing policy: '{}' must be a number, not {}", key, v.dump());
  const double x = v.get<double>();
  if (!(x >= lo && x <= hi)) fail("routing policy: '{}' = {} is out of range [{}, {}]", key, x, lo, hi);
  return x;
}

bool get_bool(const nlohmann::json& v, const std::string& key) {
  if (!v.is_boolean()) fail("routing policy: '{}' must be true or false, not {}", key, v.dump());
  return v.get<bool>();
}

const nlohmann::json& get_array(const nlohmann::json& v, const std::string& key) {
  if (!v.is_array()) fail("routing policy: '{}' must be an array, not {}", key, v.dump());
  return v;
}

void only_keys(const nlohmann::json& obj, const std::string& what, std::initializer_list<const char*> keys) {
  if (!obj.is_object()) fail("routing policy: '{}' must be an object, not {}", what, obj.dump());
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    bool known = false;
    for (const char* k : keys) known |= it.key() == k;
    if (!known) {
      std::string list;
      for (const char* k : keys) list += std::string(list.empty() ? "" : ", ") + k;
      fail("routing policy: unknown key '{}{}' (known: {})", what.empty() ? "" : what + ".", it.key(), list);
    }
  }
}

std::pair<int, int> get_pair(const nlohmann::json& v, const std::string& key) {
  if (!v.is_array() || v.size() != 2) fail("routing policy: '{}' entries must be [layer, n] pairs, not {}", key, v.dump());
  return {get_int(v[0], key, 0, 1 << 20), get_int(v[1], key, 0, 1 << 20)};
}

}  // namespace

RoutingPolicy RoutingPolicy::from_json(const nlohmann::json& j) {
  only_keys(j, "",
            {"experts", "experts_per_layer", "top_p", "top_p_max_k", "top_p_weights", "ratio_threshold",
             "ratio_layers", "random_drop", "min_weight", "min_weight_renorm", "mask_experts", "force_experts",
             "steer", "sinkhorn", "only_rank", "remix"});
  RoutingPolicy p;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const nlohmann::json& v = it.value();
    if (key == "experts") {
      p.experts = get_int(v, key, 1, 65536);
    } else if (key == "experts_per_layer") {
      for (const auto& e : get_array(v, key)) {
        auto [l, k] = get_pair(e, key);
        if (k < 1) fail("routing policy: '{}' {}:{}: k must be at least 1", key, l, k);
        p.experts_per_layer.push_back({l, k});
      }
    } else if (key == "top_p") {
      p.top_p = get_number(v, key, 0.0, 1.0);
    } else if (key == "top_p_max_k") {
      p.top_p_max_k = get_int(v, key, 1, 65536);
    } else if (key == "top_p_weights") {
      const std::string s = v.is_string() ? v.get<std::string>() : "";
      if (s == "model") p.top_p_weights = TopPWeights::Model;
      else if (s == "raw") p.top_p_weights = TopPWeights::Raw;
      else if (s == "renorm") p.top_p_weights = TopPWeights::Renorm;
      else fail("routing policy: '{}' must be \"model\", \"raw\" or \"renorm\", not {}", key, v.dump());
    } else if (key == "ratio_threshold") {
      p.ratio_beta = get_number(v, key, 1e-9, 1.0);
    } else if (key == "ratio_layers") {
      for (const auto& e : get_array(v, key)) p.ratio_layers.push_back(get_int(e, key, 0, 1 << 20));
    } else if (key == "random_drop") {
      only_keys(v, key, {"prob", "seed"});
      if (!v.contains("prob")) fail("routing policy: 'random_drop.prob' is missing");
      p.random_drop = get_number(v["prob"], "random_drop.prob", 0.0, 1.0);
      if (v.contains("seed")) {
        if (!v["seed"].is_number_unsigned() && !(v["seed"].is_number_integer() && v["seed"].get<int64_t>() >= 0))
          fail("routing policy: 'random_drop.seed' must be a non-negative integer, not {}", v["seed"].dump());
        p.random_seed = v["seed"].get<uint64_t>();
      }
    } else if (key == "min_weight") {
      p.min_weight = get_number(v, key, 0.0, 1e30);
    } else if (key == "min_weight_renorm") {
      p.min_weight_renorm = get_bool(v, key);
    } else if (key == "mask_experts" || key == "force_experts") {
      auto& dst = key == "mask_experts" ? p.mask_experts : p.force_experts;
      for (const auto& e : get_array(v, key)) {
        auto [l, x] = get_pair(e, key);
        dst.push_back({l, x});
      }
    } else if (key == "steer") {
      for (const auto& e : get_array(v, key)) {
        only_keys(e, key, {"layer", "expert", "factor", "force"});
        for (const char* req : {"layer", "expert", "factor"})
          if (!e.contains(req)) fail("routing policy: a 'steer' entry lacks '{}': {}", req, e.dump());
        SteerRule s;
        s.layer = get_int(e["layer"], "steer.layer", 0, 1 << 20);
        s.expert = get_int(e["expert"], "steer.expert", 0, 1 << 20);
        s.factor = get_number(e["factor"], "steer.factor", 1e-9, 1e6);
        if (e.contains("force")) s.force = get_bool(e["force"], "steer.force");
        p.steer.push_back(s);
      }
    } else if (key == "sinkhorn") {
      only_keys(v, key, {"eps", "iterations"});
      p.sinkhorn = true;
      if (v.contains("eps")) p.sinkhorn_eps = get_number(v["eps"], "sinkhorn.eps", 1e-9, 1e6);
      if (v.contains("iterations")) p.sinkhorn_iters = get_int(v["iterations"], "sinkhorn.iterations", 1, 100000);
    } else if (key == "only_rank") {
      p.only_rank = get_int(v, key, 1, 65536);
    } else if (key == "remix") {
      only_keys(v, key, {"refs", "layers", "neighbors"});
      if (!v.contains("refs") || !v["refs"].is_string() || v["refs"].get<std::string>().empty())
        fail("routing policy: 'remix.refs' must be a non-empty string (the file from `moe remix-build`)");
      p.remix_refs = v["refs"].get<std::string>();
      if (!v.contains("layers")) fail("routing policy: 'remix.layers' is missing");
      p.remix_layers = get_int(v["layers"], "remix.layers", 1, 1 << 20);
      if (v.contains("neighbors")) p.remix_neighbors = get_int(v["neighbors"], "remix.neighbors", 1, 1000);
    }
  }
  p.check();
  return p;
}

// --- text forms --------------------------------------------------------------------------------------

namespace {

// Splits on whitespace and commas, dropping '#' comments.
std::vector<std::string> entries_of(const std::string& text) {
  std::vector<std::string> out;
  std::string cur;
  bool comment = false;
  for (char c : text) {
    if (c == '\n') comment = false;
    if (comment) continue;
    if (c == '#') {
      comment = true;
    } else if (c == ',' || std::isspace(static_cast<unsigned char>(c))) {
      if (!cur.empty()) out.push_back(std::move(cur));
      cur.clear();
      continue;
    } else {
      cur += c;
      continue;
    }
    if (!cur.empty()) out.push_back(std::move(cur));
    cur.clear();
  }
  if (!cur.empty()) out.push_back(std::move(cur));
  return out;
}

int parse_nonneg(const std::string& s, const std::string& what, const std::string& entry) {
  if (s.empty() || s.size() > 9 || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
    fail("{}: '{}' in '{}' is not a non-negative integer", what, s, entry);
  return std::stoi(s);
}

std::vector<std::string> split_colon(const std::string& s) {
  std::vector<std::string> parts;
  size_t b = 0;
  for (size_t i = 0; i <= s.size(); ++i)
    if (i == s.size() || s[i] == ':') {
      parts.push_back(s.substr(b, i - b));
      b = i + 1;
    }
  return parts;
}

// "N" or "A-B"
std::pair<int, int> parse_range(const std::string& s, const std::string& what, const std::string& entry) {
  const size_t dash = s.find('-');
  if (dash == std::string::npos) {
    const int v = parse_nonneg(s, what, entry);
    return {v, v};
  }
  const int a = parse_nonneg(s.substr(0, dash), what, entry), b = parse_nonneg(s.substr(dash + 1), what, entry);
  if (b < a) fail("{}: range '{}' in '{}' runs backwards", what, s, entry);
  if (b - a > 1 << 16) fail("{}: range '{}' is too long", what, s);
  return {a, b};
}

}  // namespace

std::vector<LayerExpert> parse_layer_experts(const std::string& text, const std::string& what, int n_expert) {
  std::vector<LayerExpert> out;
  for (const std::string& e : entries_of(text)) {
    const auto parts = split_colon(e);
    if (parts.size() != 2) fail("{}: '{}' is not LAYER:EXPERT", what, e);
    const auto [l0, l1] = parse_range(parts[0], what, e);
    std::pair<int, int> ex;
    if (parts[1] == "*") {
      if (n_expert < 0) fail("{}: '{}': '*' (every expert) is not allowed here", what, e);
      ex = {0, n_expert - 1};
    } else {
      ex = parse_range(parts[1], what, e);
    }
    for (int l = l0; l <= l1; ++l)
      for (int x = ex.first; x <= ex.second; ++x) out.push_back({l, x});
    if (out.size() > (1u << 22)) fail("{}: too many entries", what);
  }
  if (out.empty()) fail("{}: no LAYER:EXPERT entries in '{}'", what, text);
  return out;
}

std::vector<std::pair<int, int>> parse_layer_values(const std::string& text, const std::string& what) {
  std::vector<std::pair<int, int>> out;
  for (const std::string& e : entries_of(text)) {
    const auto parts = split_colon(e);
    if (parts.size() != 2) fail("{}: '{}' is not LAYER:K", what, e);
    const auto [l0, l1] = parse_range(parts[0], what, e);
    const int k = parse_nonneg(parts[1], what, e);
    for (int l = l0; l <= l1; ++l) out.push_back({l, k});
  }
  if (out.empty()) fail("{}: no LAYER:K entries in '{}'", what, text);
  return out;
}

std::vector<SteerRule> parse_steer_rules(const std::string& text, const std::string& what, double default_factor,
                                         bool force) {
  std::vector<SteerRule> out;
  for (const std::string& e : entries_of(text)) {
    const auto parts = split_colon(e);
    if (parts.size() != 2 && parts.size() != 3) fail("{}: '{}' is not LAYER:EXPERT or LAYER:EXPERT:FACTOR", what, e);
    const auto [l0, l1] = parse_range(parts[0], what, e);
    const auto [x0, x1] = parse_range(parts[1], what, e);
    double factor = default_factor;
    if (parts.size() == 3) {
      size_t used = 0;
      try {
        factor = std::stod(parts[2], &used);
      } catch (...) {
        used = 0;
      }
      if (used == 0 || used != parts[2].size()) fail("{}: factor '{}' in '{}' is not a number", what, parts[2], e);
    }
    for (int l = l0; l <= l1; ++l)
      for (int x = x0; x <= x1; ++x) out.push_back({l, x, factor, force});
  }
  if (out.empty()) fail("{}: no LAYER:EXPERT entries in '{}'", what, text);
  return out;
}

std::vector<int> parse_int_list(const std::string& text, const std::string& what) {
  std::vector<int> out;
  for (const std::string& e : entries_of(text)) {
    const auto [a, b] = parse_range(e, what, e);
    for (int v = a; v <= b; ++v) out.push_back(v);
  }
  if (out.empty()) fail("{}: empty list", what);
  return out;
}

// --- compiling against a model -------------------------------------------------------------------------

namespace {

void check_layer(const RoutingShape& s, int l, const char* what) {
  if (l < 0 || l >= s.n_layer()) fail("{}: layer {} is out of range (the model has {} layers, 0-{})", what, l, s.n_layer(), s.n_layer() - 1);
  if (s.n_expert[static_cast<size_t>(l)] == 0) fail("{}: layer {} is not a MoE layer (it has a dense FFN)", what, l);
}

void check_expert(const RoutingShape& s, int l, int e, const char* what) {
  check_layer(s, l, what);
  const int E = s.n_expert[static_cast<size_t>(l)];
  if (e < 0 || e >= E) fail("{}: expert {} of layer {} is out of range (the layer has {} experts, 0-{})", what, e, l, E, E - 1);
}

}  // namespace

RoutingPlan::RoutingPlan(const RoutingPolicy& p, const RoutingShape& shape) : policy_(p) {
  p.check();
  identity_ = p.is_default();
  if (identity_) return;
  const int L = shape.n_layer();
  layers_.resize(static_cast<size_t>(L));
  for (const auto& [l, k] : p.experts_per_layer) check_layer(shape, l, "experts_per_layer (--experts-per-layer)");
  for (int l : p.ratio_layers) check_layer(shape, l, "ratio_layers (--route-ratio-layers)");
  for (const auto& m : p.mask_experts) check_expert(shape, m.layer, m.expert, "mask_experts (--mask-experts)");
  for (const auto& m : p.force_experts) check_expert(shape, m.layer, m.expert, "force_experts (--force-experts)");
  for (const auto& s : p.steer) check_expert(shape, s.layer, s.expert, "steer (--steer)");
  for (int il = 0; il < L; ++il) {
    const int E = shape.n_expert[static_cast<size_t>(il)];
    if (E == 0) continue;
    LayerRoutingPlan& lp = layers_[static_cast<size_t>(il)];
    lp.n_expert = E;
    const int model_k = shape.n_expert_used[static_cast<size_t>(il)];
    lp.k = model_k;
    const char* k_from = "";
    if (p.experts > 0) {
      lp.k = p.experts;
      k_from = "experts (--experts)";
    }
    for (const auto& [l, k] : p.experts_per_layer)
      if (l == il) {
        lp.k = k;
        k_from = "experts_per_layer (--experts-per-layer)";
      }
    if (lp.k > E) fail("{} {}: above the {} experts of layer {}", k_from, lp.k, E, il);
    lp.top_p = p.top_p;
    lp.top_p_weights = p.top_p_weights;
    if (p.top_p_max_k > E)
      fail("top_p_max_k (--route-top-p-max-k) {}: above the {} experts of layer {}", p.top_p_max_k, E, il);
    lp.top_p_cap = p.top_p >= 0 ? (p.top_p_max_k > 0 ? p.top_p_max_k : E) : 0;
    const bool ratio_here =
        p.ratio_beta > 0 &&
        (p.ratio_layers.empty() || std::find(p.ratio_layers.begin(), p.ratio_layers.end(), il) != p.ratio_layers.end());
    lp.ratio_beta = ratio_here ? p.ratio_beta : 0;
    lp.random_drop = p.random_drop;
    lp.random_seed = p.random_seed;
    lp.min_weight = p.min_weight;
    lp.min_weight_renorm = p.min_weight_renorm;
    lp.sinkhorn = p.sinkhorn;
    lp.sinkhorn_eps = p.sinkhorn_eps;
    lp.sinkhorn_iters = p.sinkhorn_iters;
    if (p.only_rank > E) fail("only_rank {}: layer {} has only {} experts", p.only_rank, il, E);
    lp.only_rank = p.only_rank;
    for (const auto& m : p.mask_experts)
      if (m.layer == il) {
        if (lp.off.empty()) lp.off.assign(static_cast<size_t>(E), 0);
        lp.off[static_cast<size_t>(m.expert)] = 1;
        ++lp.n_off;
      }
    for (const auto& m : p.force_experts)
      if (m.layer == il) lp.forced.push_back(m.expert);
    for (const auto& s : p.steer)
      if (s.layer == il) {
        if (lp.steer.empty()) lp.steer.assign(static_cast<size_t>(E), 1.0f);
        lp.steer[static_cast<size_t>(s.expert)] = static_cast<float>(s.factor);
        if (s.force && std::find(lp.forced.begin(), lp.forced.end(), s.expert) == lp.forced.end())
          lp.forced.push_back(s.expert);
      }
    std::sort(lp.forced.begin(), lp.forced.end());
    if (p.remix && static_cast<int>(p.remix->per_layer.size()) == L && !p.remix->per_layer[static_cast<size_t>(il)].empty()) {
      if (static_cast<int>(p.remix->per_layer[static_cast<size_t>(il)].size()) != E)
        fail("remix: layer {} has {} re-mixed scores for {} experts", il, p.remix->per_layer[static_cast<size_t>(il)].size(), E);
      lp.remix = &p.remix->per_layer[static_cast<size_t>(il)];
    }
    lp.slots = lp.only_rank > 0 ? 1 : lp.top_p >= 0 ? lp.top_p_cap : lp.k;
    if (static_cast<int>(lp.forced.size()) > lp.slots)
      fail("layer {}: {} experts are forced on (force_experts / steer with force), more than the {} a token gets "
           "there",
           il, lp.forced.size(), lp.slots);
    lp.identity = lp.k == model_k && lp.top_p < 0 && lp.ratio_beta == 0 && lp.random_drop == 0 && lp.min_weight == 0 &&
                  lp.n_off == 0 && lp.forced.empty() && lp.steer.empty() && !lp.sinkhorn && lp.only_rank == 0 &&
                  lp.remix == nullptr;
  }
}

std::vector<LayerExpert> RoutingPlan::masked_experts() const {
  std::vector<LayerExpert> out;
  for (int il = 0; il < static_cast<int>(layers_.size()); ++il) {
    const LayerRoutingPlan* lp = layer(il);
    if (!lp || lp->off.empty()) continue;
    for (int e = 0; e < lp->n_expert; ++e)
      if (lp->off[static_cast<size_t>(e)]) out.push_back({il, e});
  }
  return out;
}

int policy_max_experts(const RoutingPolicy& p) {
  if (p.only_rank > 0) return 0;
  if (p.top_p >= 0) return p.top_p_max_k > 0 ? p.top_p_max_k : -1;
  int k = p.experts;
  for (const auto& [l, lk] : p.experts_per_layer) k = std::max(k, lk);
  return k;
}

// --- counters ------------------------------------------------------------------------------------------

RoutingUseCounters::RoutingUseCounters(std::vector<int> model_k)
    : model_k_(std::move(model_k)),
      tokens_(new std::atomic<uint64_t>[model_k_.size()]),
      selected_(new std::atomic<uint64_t>[model_k_.size()]) {
  reset();
}

void RoutingUseCounters::add(int layer, uint64_t tokens, uint64_t selected) {
  if (layer < 0 || layer >= n_layer()) return;
  tokens_[static_cast<size_t>(layer)] += tokens;
  selected_[static_cast<size_t>(layer)] += selected;
}

void RoutingUseCounters::reset() {
  for (size_t i = 0; i < model_k_.size(); ++i) {
    tokens_[i].store(0);
    selected_[i].store(0);
  }
}

nlohmann::ordered_json RoutingUseCounters::to_json() const {
  nlohmann::ordered_json j;
  uint64_t evals = 0, model_evals = 0, layer_tokens = 0;
  double model_k_sum = 0;
  int n_moe = 0;
  auto per_layer = nlohmann::ordered_json::array();
  for (int il = 0; il < n_layer(); ++il) {
    if (model_k(il) == 0) {
      per_layer.push_back(nullptr);
      continue;
    }
    const uint64_t t = tokens(il), s = selected(il);
    per_layer.push_back(t ? static_cast<double>(s) / static_cast<double>(t) : 0.0);
    evals += s;
    model_evals += t * static_cast<uint64_t>(model_k(il));
    layer_tokens += t;
    model_k_sum += model_k(il);
    ++n_moe;
  }
  j["experts_per_token"] = layer_tokens ? static_cast<double>(evals) / static_cast<double>(layer_tokens) : 0.0;
  j["experts_per_token_per_layer"] = per_layer;
  j["model_experts_per_token"] = n_moe ? model_k_sum / n_moe : 0.0;
  j["expert_evals"] = evals;
  j["expert_evals_model_k"] = model_evals;
  j["expert_evals_saved"] = static_cast<int64_t>(model_evals) - static_cast<int64_t>(evals);
  j["expert_evals_saved_frac"] =
      model_evals ? (static_cast<double>(model_evals) - static_cast<double>(evals)) / static_cast<double>(model_evals)
                  : 0.0;
  return j;
}

}  // namespace moe
