#include "analysis/route_analysis.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <regex>

#include "analysis/expert_npmi.h"
#include "base/error.h"
#include "moe/expert_load.h"

namespace moe {

double npmi(uint64_t n_xe, uint64_t n_x, uint64_t n_e, uint64_t n) {
  if (n == 0 || n_x == 0 || n_e == 0) return NAN;  // undefined: the class or the expert never occurs
  return npmi_value(n_xe, n_x, n_e, n);
}

std::vector<TokenClass> builtin_token_classes() {
  return {
      {"digits", R"(^\s?[0-9]+$)"},
      {"whitespace", R"(^\s+$)"},
      {"newline", R"(\n)"},
      {"punctuation", R"(^\s?[!-/:-@\[-`{-~]+$)"},
      {"identifier", R"(^\s?[A-Za-z_][A-Za-z0-9_]*(_[A-Za-z0-9]|[a-z][A-Z]|[A-Za-z][0-9])[A-Za-z0-9_]*$)"},
      {"keyword", R"(^\s?(def|class|return|import|from|if|elif|else|for|while|in|is|not|and|or|self|None|True|False|try|except|with|as|lambda|yield|pass|raise)$)"},
      {"capitalized", R"(^\s?[A-Z][a-z]+$)"},
      {"lowercase word", R"(^\s?[a-z]+$)"},
  };
}

struct RouteAnalysis::CompiledClass {
  std::regex re;
};

RouteAnalysis::RouteAnalysis(const TraceHeader& first, AnalyzeOptions options)
    : opt_(std::move(options)), model_(first), rng_(opt_.shuffle_seed) {
  for (int m : opt_.segment_lengths)
    if (m <= 0) fail("analyze: segment length {} must be positive", m);
  const int M = model_.n_moe();
  layers_.resize(static_cast<size_t>(M));
  for (int i = 0; i < M; ++i) {
    LayerCounts& L = layers_[static_cast<size_t>(i)];
    const size_t E = static_cast<size_t>(model_.n_expert[i]);
    L.expert.assign(E, 0);
    L.coact.assign(E * E, 0);
    if (i + 1 < M) L.trans.assign(E * static_cast<size_t>(model_.n_expert[i + 1]), 0);
    for (int seg : opt_.segment_lengths) {
      L.srp.emplace_back(seg);
      L.srp_shuffled.emplace_back(seg);
      L.sch.emplace_back(seg, static_cast<int>(E));
      L.sch_shuffled.emplace_back(seg, static_cast<int>(E));
    }
    L.out_max.assign(E, 0.0);
    L.out_norm_sum.assign(E, 0.0);
    L.out_n.assign(E, 0);
  }
  if (opt_.token_text) {
    for (const TokenClass& c : opt_.classes) {
      auto cc = std::make_shared<CompiledClass>();
      try {
        cc->re = std::regex(c.pattern, std::regex::ECMAScript | std::regex::optimize);
      } catch (const std::regex_error& e) {
        fail("token class '{}': bad regular expression '{}': {}", c.name, c.pattern, e.what());
      }
      compiled_.push_back(cc);
    }
    class_count_.assign(opt_.classes.size(), 0);
    for (LayerCounts& L : layers_)
      L.class_expert.assign(opt_.classes.size(), std::vector<uint64_t>(L.expert.size(), 0));
  }
}

int RouteAnalysis::label_index(const std::string& label) {
  auto it = label_ids_.find(label);
  if (it != label_ids_.end()) return it->second;
  const int id = static_cast<int>(labels_.size());
  labels_.push_back(label);
  label_ids_[label] = id;
  label_tokens_.push_back(0);
  std::vector<SrpCounts> srp;
  for (int seg : opt_.segment_lengths) srp.emplace_back(seg);
  label_srp_.push_back(std::move(srp));
  for (LayerCounts& L : layers_) L.label_expert.emplace_back(L.expert.size(), 0);
  return id;
}

void RouteAnalysis::begin_trace(const TraceHeader& h, const std::string& path) {
  if (h.arch != model_.arch || h.moe_layers != model_.moe_layers || h.n_expert != model_.n_expert)
    fail("analyze: {} is a trace of {} ({} MoE layers), but the first trace is of {} ({} MoE layers): traces analysed "
         "together must come from the same model",
         path, h.arch, h.n_moe(), model_.arch, model_.n_moe());
  if (h.router_fingerprint != model_.router_fingerprint)
    std::fprintf(stderr, "moe analyze: warning: %s comes from a model with other router weights than the first trace\n",
                 path.c_str());
  ++trace_index_;
  has_stats_ = has_stats_ && h.fields.expert_stats;
  input_label_.clear();
  for (const TraceInput& in : h.inputs) input_label_.push_back(label_index(in.label));
  traces_.push_back({{"file", path}, {"model", h.model_file}, {"fields", h.to_json()["fields"]}});
}

void RouteAnalysis::sync_inputs(const TraceHeader& h) {
  for (size_t i = input_label_.size(); i < h.inputs.size(); ++i) input_label_.push_back(label_index(h.inputs[i].label));
}

std::vector<uint8_t> RouteAnalysis::classes_of(int32_t token) {
  auto it = class_cache_.find(token);
  if (it != class_cache_.end()) return it->second;
  const std::string text = opt_.token_text(token);
  std::vector<uint8_t> in(compiled_.size(), 0);
  for (size_t c = 0; c < compiled_.size(); ++c) in[c] = std::regex_search(text, compiled_[c]->re) ? 1 : 0;
  class_cache_[token] = in;
  return in;
}

void RouteAnalysis::add_step(const TraceStep& s) {
  const int M = model_.n_moe();
  ++step_index_;
  std::vector<uint8_t> active;
  for (size_t t = 0; t < s.n_tokens(); ++t) {
    const TraceToken& k = s.tokens[t];
    if (k.input >= input_label_.size()) fail("analyze: token of input {} before that input was declared", k.input);
    const int label = input_label_[k.input];
    ++n_tokens_;
    n_generated_ += (k.flags & TraceToken::kGenerated) != 0;
    ++label_tokens_[static_cast<size_t>(label)];
    ++token_count_[k.id];
    std::vector<uint8_t> cls;
    if (!compiled_.empty()) {
      cls = classes_of(k.id);
      for (size_t c = 0; c < cls.size(); ++c) class_count_[c] += cls[c];
    }
    // The sequence's run: continued when the position follows on.
    const auto key = std::make_pair(trace_index_, k.seq);
    auto it = runs_.find(key);
    if (it != runs_.end() && it->second.last_pos + 1 != k.pos) {
      flush_run(it->second);
      runs_.erase(it);
      it = runs_.end();
    }
    if (it == runs_.end()) {
      Run r;
      r.trace = trace_index_;
      r.seq = k.seq;
      r.label = label;
      r.layers.resize(static_cast<size_t>(M));
      it = runs_.emplace(key, std::move(r)).first;
    }
    Run& run = it->second;
    run.last_pos = k.pos;
    run.last_step = step_index_;
    for (int m = 0; m < M; ++m) {
      LayerCounts& L = layers_[static_cast<size_t>(m)];
      const size_t E = L.expert.size();
      const uint32_t b = s.begin(t, m), e = s.end(t, m);
      LayerRun& lr = run.layers[static_cast<size_t>(m)];
      for (uint32_t i = b; i < e; ++i) {
        const int32_t x = s.experts[i];
        ++L.expert[static_cast<size_t>(x)];
        ++L.token_expert[(static_cast<uint64_t>(static_cast<uint32_t>(k.id)) << 20) | static_cast<uint64_t>(x)];
        ++L.label_expert[static_cast<size_t>(label)][static_cast<size_t>(x)];
        for (size_t c = 0; c < cls.size(); ++c)
          if (cls[c]) ++L.class_expert[c][static_cast<size_t>(x)];
        for (uint32_t j = b; j < e; ++j)
          if (j != i) ++L.coact[static_cast<size_t>(x) * E + static_cast<size_t>(s.experts[j])];
        if (m + 1 < M) {
          const size_t En = static_cast<size_t>(model_.n_expert[m + 1]);
          for (uint32_t j = s.begin(t, m + 1); j < s.end(t, m + 1); ++j)
            ++L.trans[static_cast<size_t>(x) * En + static_cast<size_t>(s.experts[j])];
        }
        if (model_.fields.expert_stats && has_stats_ && i < s.out_max.size()) {
          const float mx = s.out_max[i], nm = s.out_norm[i];
          if (std::isfinite(mx)) L.out_max[static_cast<size_t>(x)] = std::max(L.out_max[static_cast<size_t>(x)], static_cast<double>(mx));
          if (std::isfinite(nm)) {
            L.out_norm_sum[static_cast<size_t>(x)] += nm;
            ++L.out_n[static_cast<size_t>(x)];
          }
        }
        lr.ids.push_back(x);
      }
      lr.offsets.push_back(static_cast<uint32_t>(lr.ids.size()));
    }
  }
  if (step_index_ % 256 == 0) flush_idle();
}

void RouteAnalysis::flush_idle() {
  for (auto it = runs_.begin(); it != runs_.end();) {
    if (step_index_ - it->second.last_step > kIdleSteps) {
      flush_run(it->second);
      it = runs_.erase(it);
    } else {
      ++it;
    }
  }
}

void RouteAnalysis::flush_run(Run& run) {
  const int M = model_.n_moe();
  if (run.layers.empty() || run.layers[0].n_tokens() == 0) return;
  ++n_runs_;
  const size_t n = run.layers[0].n_tokens();
  // The token-shuffled control: the same tokens (with their routing at every layer) in random order.
  std::vector<uint32_t> perm(n);
  std::iota(perm.begin(), perm.end(), 0u);
  std::shuffle(perm.begin(), perm.end(), rng_);
  LayerRun shuffled;
  for (int m = 0; m < M; ++m) {
    LayerCounts& L = layers_[static_cast<size_t>(m)];
    const LayerRun& lr = run.layers[static_cast<size_t>(m)];
    shuffled.clear();
    for (uint32_t t : perm) {
      shuffled.ids.insert(shuffled.ids.end(), lr.ids.begin() + lr.offsets[t], lr.ids.begin() + lr.offsets[t + 1]);
      shuffled.offsets.push_back(static_cast<uint32_t>(shuffled.ids.size()));
    }
    const int E = static_cast<int>(L.expert.size());
    for (size_t i = 0; i < opt_.segment_lengths.size(); ++i) {
      SrpCounts one(opt_.segment_lengths[i]);
      srp_accumulate(lr, E, one);
      L.srp[i].add(one);
      label_srp_[static_cast<size_t>(run.label)][i].add(one);
      srp_accumulate(shuffled, E, L.srp_shuffled[i]);
      sch_accumulate(lr, L.sch[i]);
      sch_accumulate(shuffled, L.sch_shuffled[i]);
    }
  }
}

void RouteAnalysis::end_trace(uint64_t steps, uint64_t tokens) {
  if (!traces_.empty()) {
    traces_.back()["steps"] = steps;
    traces_.back()["tokens"] = tokens;
  }
}

namespace {

double entropy_bits(const std::vector<uint64_t>& c) {
  double total = 0, h = 0;
  for (uint64_t x : c) total += static_cast<double>(x);
  if (total == 0) return NAN;
  for (uint64_t x : c)
    if (x) h -= static_cast<double>(x) / total * std::log2(static_cast<double>(x) / total);
  return h;
}

nlohmann::ordered_json load_json(const std::vector<uint64_t>& c) {
  double total = 0, mx = 0;
  for (uint64_t x : c) {
    total += static_cast<double>(x);
    mx = std::max(mx, static_cast<double>(x));
  }
  const double mean = c.empty() ? 0 : total / static_cast<double>(c.size());
  nlohmann::ordered_json j;
  j["counts"] = c;
  const double cv = load_cv(c);
  j["cv"] = std::isfinite(cv) ? nlohmann::ordered_json(cv) : nlohmann::ordered_json(nullptr);
  j["max_over_mean"] = mean > 0 ? nlohmann::ordered_json(mx / mean) : nlohmann::ordered_json(nullptr);
  const double h = entropy_bits(c);
  j["entropy_bits"] = std::isfinite(h) ? nlohmann::ordered_json(h) : nlohmann::ordered_json(nullptr);
  j["entropy_norm"] = std::isfinite(h) && c.size() > 1 ? nlohmann::ordered_json(h / std::log2(static_cast<double>(c.size())))
                                                       : nlohmann::ordered_json(nullptr);
  return j;
}

nlohmann::ordered_json num_or_null(double v) { return std::isfinite(v) ? nlohmann::ordered_json(v) : nlohmann::ordered_json(nullptr); }

// Linear-interpolation percentile (numpy's default) of sorted values.
double percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return NAN;
  const double pos = q / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos)), hi = std::min(sorted.size() - 1, lo + 1);
  return sorted[lo] + (pos - static_cast<double>(lo)) * (sorted[hi] - sorted[lo]);
}

}  // namespace

nlohmann::ordered_json RouteAnalysis::finish() {
  for (auto& [key, run] : runs_) flush_run(run);
  runs_.clear();
  const int M = model_.n_moe();
  const uint64_t N = n_tokens_;
  nlohmann::ordered_json j;
  j["traces"] = traces_;
  j["model"] = {{"arch", model_.arch},
                {"name", model_.model_name},
                {"file", model_.model_file},
                {"moe_layers", model_.moe_layers},
                {"n_expert", model_.n_expert},
                {"n_expert_used", model_.n_expert_used},
                {"router_fingerprint", model_.to_json()["model"]["router_fingerprint"]}};
  j["tokens"] = N;
  j["generated_tokens"] = n_generated_;
  j["sequences"] = n_runs_;
  j["labels"] = labels_;
  j["label_tokens"] = label_tokens_;

  // Load.
  nlohmann::ordered_json load = nlohmann::ordered_json::array();
  for (int m = 0; m < M; ++m) {
    const LayerCounts& L = layers_[static_cast<size_t>(m)];
    nlohmann::ordered_json l = load_json(L.expert);
    l["layer"] = model_.moe_layers[m];
    nlohmann::ordered_json per_label = nlohmann::ordered_json::array();
    for (size_t a = 0; a < labels_.size(); ++a) per_label.push_back(load_json(L.label_expert[a]));
    l["per_label"] = per_label;
    load.push_back(l);
  }
  j["load"] = load;

  // Specialisation: label x expert shares (relative to uniform) and nPMI; token classes; tokens.
  nlohmann::ordered_json spec = nlohmann::ordered_json::array();
  for (int m = 0; m < M; ++m) {
    const LayerCounts& L = layers_[static_cast<size_t>(m)];
    const size_t E = L.expert.size();
    nlohmann::ordered_json l;
    l["layer"] = model_.moe_layers[m];
    nlohmann::ordered_json share = nlohmann::ordered_json::array(), lnpmi = nlohmann::ordered_json::array();
    for (size_t a = 0; a < labels_.size(); ++a) {
      const auto& c = L.label_expert[a];
      const double total = static_cast<double>(std::accumulate(c.begin(), c.end(), uint64_t{0}));
      std::vector<double> ratio(E), np(E);
      for (size_t e = 0; e < E; ++e) {
        ratio[e] = total > 0 ? static_cast<double>(c[e]) / total * static_cast<double>(E) : 0.0;
        np[e] = npmi(c[e], label_tokens_[a], L.expert[e], N);
      }
      share.push_back(ratio);
      nlohmann::ordered_json row = nlohmann::ordered_json::array();
      for (double v : np) row.push_back(num_or_null(v));
      lnpmi.push_back(row);
    }
    l["label_share"] = share;
    l["label_npmi"] = lnpmi;
    if (!compiled_.empty()) {
      nlohmann::ordered_json cn = nlohmann::ordered_json::array();
      for (size_t c = 0; c < opt_.classes.size(); ++c) {
        nlohmann::ordered_json row = nlohmann::ordered_json::array();
        for (size_t e = 0; e < E; ++e) row.push_back(num_or_null(npmi(L.class_expert[c][e], class_count_[c], L.expert[e], N)));
        cn.push_back(row);
      }
      l["class_npmi"] = cn;
    }
    // Each expert's top tokens: by nPMI (tokens seen at least min_token_count times) and by count.
    std::vector<std::vector<std::pair<double, int32_t>>> by_npmi(E), by_count(E);
    for (const auto& [key, n_xe] : L.token_expert) {
      const int32_t tok = static_cast<int32_t>(key >> 20);
      const size_t e = static_cast<size_t>(key & 0xFFFFF);
      const uint64_t n_x = token_count_.at(tok);
      by_count[e].push_back({static_cast<double>(n_xe), tok});
      if (n_x >= static_cast<uint64_t>(opt_.min_token_count)) by_npmi[e].push_back({npmi(n_xe, n_x, L.expert[e], N), tok});
    }
    nlohmann::ordered_json experts = nlohmann::ordered_json::array();
    for (size_t e = 0; e < E; ++e) {
      auto take = [&](std::vector<std::pair<double, int32_t>>& v) {
        std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
        nlohmann::ordered_json out = nlohmann::ordered_json::array();
        for (size_t i = 0; i < v.size() && i < static_cast<size_t>(opt_.top_tokens); ++i) {
          const int32_t tok = v[i].second;
          const uint64_t n_xe = L.token_expert.at((static_cast<uint64_t>(static_cast<uint32_t>(tok)) << 20) | e);
          nlohmann::ordered_json t = {{"token", tok},
                                      {"count", token_count_.at(tok)},
                                      {"with_expert", n_xe},
                                      {"npmi", num_or_null(npmi(n_xe, token_count_.at(tok), L.expert[e], N))}};
          if (opt_.token_text) t["text"] = opt_.token_text(tok);
          out.push_back(t);
        }
        return out;
      };
      experts.push_back({{"expert", e}, {"top_npmi", take(by_npmi[e])}, {"top_count", take(by_count[e])}});
    }
    l["experts"] = experts;
    spec.push_back(l);
  }
  j["specialisation"] = spec;
  if (!compiled_.empty()) {
    nlohmann::ordered_json cl = nlohmann::ordered_json::array();
    for (size_t c = 0; c < opt_.classes.size(); ++c)
      cl.push_back({{"name", opt_.classes[c].name}, {"pattern", opt_.classes[c].pattern}, {"tokens", class_count_[c]}});
    j["token_classes"] = cl;
  }

  // Co-activation and transitions.
  nlohmann::ordered_json co = nlohmann::ordered_json::array(), tr = nlohmann::ordered_json::array();
  for (int m = 0; m < M; ++m) {
    const LayerCounts& L = layers_[static_cast<size_t>(m)];
    const size_t E = L.expert.size();
    nlohmann::ordered_json lift = nlohmann::ordered_json::array();
    for (size_t a = 0; a < E; ++a) {
      nlohmann::ordered_json row = nlohmann::ordered_json::array();
      for (size_t b = 0; b < E; ++b) {
        const double pa = static_cast<double>(L.expert[a]), pb = static_cast<double>(L.expert[b]);
        row.push_back(a == b || pa == 0 || pb == 0 ? nlohmann::ordered_json(nullptr)
                                                   : nlohmann::ordered_json(static_cast<double>(L.coact[a * E + b]) * static_cast<double>(N) / (pa * pb)));
      }
      lift.push_back(row);
    }
    co.push_back({{"layer", model_.moe_layers[m]}, {"counts", L.coact}, {"lift", lift}});
    if (m + 1 < M) {
      const size_t En = static_cast<size_t>(model_.n_expert[m + 1]);
      nlohmann::ordered_json cond = nlohmann::ordered_json::array();
      double h_cond = 0, h_w = 0;
      for (size_t a = 0; a < E; ++a) {
        std::vector<uint64_t> row(L.trans.begin() + static_cast<std::ptrdiff_t>(a * En), L.trans.begin() + static_cast<std::ptrdiff_t>((a + 1) * En));
        const double total = static_cast<double>(std::accumulate(row.begin(), row.end(), uint64_t{0}));
        nlohmann::ordered_json p = nlohmann::ordered_json::array();
        for (uint64_t x : row) p.push_back(total > 0 ? static_cast<double>(x) / total : 0.0);
        cond.push_back(p);
        const double h = entropy_bits(row);
        if (std::isfinite(h)) {
          h_cond += total * h;
          h_w += total;
        }
      }
      tr.push_back({{"from_layer", model_.moe_layers[m]},
                    {"to_layer", model_.moe_layers[m + 1]},
                    {"counts", L.trans},
                    {"conditional", cond},
                    {"conditional_entropy_bits", num_or_null(h_w > 0 ? h_cond / h_w : NAN)},
                    {"next_layer_entropy_bits", num_or_null(entropy_bits(layers_[static_cast<size_t>(m + 1)].expert))}});
    }
  }
  j["coactivation"] = co;
  j["transitions"] = tr;

  // Local routing consistency, micro-summed over layers (and per layer), real and shuffled.
  nlohmann::ordered_json lrc;
  lrc["segment_lengths"] = opt_.segment_lengths;
  nlohmann::ordered_json srp = nlohmann::ordered_json::array(), sch = nlohmann::ordered_json::array();
  for (size_t i = 0; i < opt_.segment_lengths.size(); ++i) {
    const int seg = opt_.segment_lengths[i];
    SrpCounts all(seg), all_sh(seg);
    nlohmann::ordered_json per_layer = nlohmann::ordered_json::array(), per_layer_sh = nlohmann::ordered_json::array();
    for (const LayerCounts& L : layers_) {
      all.add(L.srp[i]);
      all_sh.add(L.srp_shuffled[i]);
      per_layer.push_back(num_or_null(L.srp[i].value()));
      per_layer_sh.push_back(num_or_null(L.srp_shuffled[i].value()));
    }
    nlohmann::ordered_json per_label = nlohmann::ordered_json::object();
    for (size_t a = 0; a < labels_.size(); ++a) per_label[labels_[a]] = num_or_null(label_srp_[a][i].value());
    srp.push_back({{"m", seg},
                   {"srp", num_or_null(all.value())},
                   {"threshold", all.best_threshold()},
                   {"shuffled", num_or_null(all_sh.value())},
                   {"windows", all.windows},
                   {"per_layer", per_layer},
                   {"per_layer_shuffled", per_layer_sh},
                   {"per_label", per_label}});
    // SCH: cache sizes 1..E experts per layer (as multiples of that layer's k), micro-summed.
    int E_max = 0;
    for (const LayerCounts& L : layers_) E_max = std::max(E_max, static_cast<int>(L.expert.size()));
    nlohmann::ordered_json curve = nlohmann::ordered_json::array(), curve_sh = nlohmann::ordered_json::array(),
                           sizes = nlohmann::ordered_json::array();
    for (int c = 1; c <= E_max; ++c) {
      uint64_t hit = 0, hit_sh = 0, uses = 0;
      for (const LayerCounts& L : layers_) {
        const SchCounts& s = L.sch[i];
        const SchCounts& sh = L.sch_shuffled[i];
        for (int r = 0; r < c && r < static_cast<int>(s.rank_hist.size()); ++r) {
          hit += s.rank_hist[static_cast<size_t>(r)];
          hit_sh += sh.rank_hist[static_cast<size_t>(r)];
        }
        uses += s.uses;
      }
      sizes.push_back(c);
      curve.push_back(num_or_null(uses ? static_cast<double>(hit) / static_cast<double>(uses) : NAN));
      curve_sh.push_back(num_or_null(uses ? static_cast<double>(hit_sh) / static_cast<double>(uses) : NAN));
    }
    sch.push_back({{"m", seg}, {"cache_experts", sizes}, {"hit_rate", curve}, {"shuffled", curve_sh}});
  }
  lrc["srp"] = srp;
  lrc["sch"] = sch;
  lrc["k"] = model_.n_expert_used.empty() ? 0 : *std::max_element(model_.n_expert_used.begin(), model_.n_expert_used.end());
  j["lrc"] = lrc;

  // Super experts (techniques.md section 4): among the first 75% of layers, max |output| above the
  // 99.5th percentile of all such maxima and above a tenth of the largest.
  nlohmann::ordered_json sup;
  sup["available"] = has_stats_ && model_.fields.expert_stats;
  if (sup["available"]) {
    std::vector<double> maxima;
    nlohmann::ordered_json all = nlohmann::ordered_json::array();
    const double cut = 0.75 * static_cast<double>(model_.n_layer);
    for (int m = 0; m < M; ++m) {
      const LayerCounts& L = layers_[static_cast<size_t>(m)];
      const bool considered = static_cast<double>(model_.moe_layers[m]) < cut;
      for (size_t e = 0; e < L.out_max.size(); ++e) {
        if (L.out_n[e] == 0) continue;
        all.push_back({{"layer", model_.moe_layers[m]},
                       {"expert", e},
                       {"max_abs", L.out_max[e]},
                       {"mean_norm", L.out_norm_sum[e] / static_cast<double>(L.out_n[e])},
                       {"considered", considered}});
        if (considered) maxima.push_back(L.out_max[e]);
      }
    }
    std::sort(maxima.begin(), maxima.end());
    const double p995 = percentile(maxima, 99.5), top = maxima.empty() ? NAN : maxima.back();
    nlohmann::ordered_json supers = nlohmann::ordered_json::array();
    for (const auto& x : all)
      if (x["considered"].get<bool>() && x["max_abs"].get<double>() > p995 && x["max_abs"].get<double>() > top / 10)
        supers.push_back(x);
    sup["layers_considered_below"] = cut;
    sup["p99_5"] = num_or_null(p995);
    sup["largest"] = num_or_null(top);
    sup["experts"] = all;
    sup["super"] = supers;
  }
  j["super_experts"] = sup;
  return j;
}

}  // namespace moe
