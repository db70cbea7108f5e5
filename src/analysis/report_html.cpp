#include "analysis/report_html.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <tuple>

#include <fmt/format.h>

#include "analysis/svg_plot.h"

namespace moe {

namespace {

using json = nlohmann::ordered_json;
using svg::escape;

double num(const json& j) { return j.is_number() ? j.get<double>() : NAN; }

std::vector<double> nums(const json& j) {
  std::vector<double> v;
  if (j.is_array())
    for (const auto& x : j) v.push_back(num(x));
  return v;
}

std::string pct(double v) { return std::isfinite(v) ? fmt::format("{:.1f}%", 100 * v) : "–"; }
std::string f3(double v) { return std::isfinite(v) ? fmt::format("{:.3f}", v) : "–"; }

std::string human_bytes(double b) {
  if (!std::isfinite(b)) return "–";
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return fmt::format("{:.{}f} {}", b, u == 0 ? 0 : 1, units[u]);
}

std::string expert_name(size_t e) { return fmt::format("e{}", e); }

std::vector<std::string> expert_names(size_t n) {
  std::vector<std::string> v;
  for (size_t e = 0; e < n; ++e) v.push_back(expert_name(e));
  return v;
}

std::string section_load(const json& a) {
  std::string h = "<h2 id=\"load\">Load per layer</h2><p>Tokens routed to each expert (a token counts once per expert "
                  "it selected). CV is the coefficient of variation of the counts (0 = perfectly balanced), entropy "
                  "is in bits and normalised by log2(E) (1 = uniform).</p>";
  h += "<table><tr><th>layer</th><th>CV</th><th>max / mean</th><th>entropy (bits)</th><th>normalised</th>";
  const json& labels = a["labels"];
  for (const auto& l : labels) h += fmt::format("<th>CV: {}</th>", escape(l.get<std::string>()));
  h += "</tr>";
  for (const auto& l : a["load"]) {
    h += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>", l["layer"].get<int>(), f3(num(l["cv"])),
                     f3(num(l["max_over_mean"])), f3(num(l["entropy_bits"])), f3(num(l["entropy_norm"])));
    for (const auto& pl : l["per_label"]) h += fmt::format("<td>{}</td>", f3(num(pl["cv"])));
    h += "</tr>";
  }
  h += "</table><div class=\"grid\">";
  for (const auto& l : a["load"]) {
    svg::Bars b;
    b.title = fmt::format("layer {}: tokens per expert", l["layer"].get<int>());
    const std::vector<double> c = nums(l["counts"]);
    b.values = c;
    b.labels = expert_names(c.size());
    double mean = 0;
    for (double x : c) mean += x;
    mean /= std::max<size_t>(1, c.size());
    b.h_lines.push_back({mean, "uniform"});
    b.width = std::max(260, std::min(560, 40 + static_cast<int>(c.size()) * 22));
    h += svg::bar_chart(b);
  }
  h += "</div>";
  return h;
}

std::string section_specialisation(const json& a) {
  std::string h = "<h2 id=\"specialisation\">Specialisation</h2>";
  const json& labels = a["labels"];
  std::vector<std::string> label_names;
  for (const auto& l : labels) label_names.push_back(l.get<std::string>());
  h += "<p>Left: each label's share of routings per expert relative to a uniform router (1.00 = 1/E; red above, blue "
       "below). Right: nPMI of the label with each expert over token positions (1 = the expert fires exactly on "
       "this label's tokens, 0 = independent, -1 = never together).</p><div class=\"grid\">";
  for (const auto& l : a["specialisation"]) {
    const int layer = l["layer"].get<int>();
    svg::Heatmap s;
    s.title = fmt::format("layer {}: share vs uniform", layer);
    s.rows = label_names;
    for (const auto& row : l["label_share"]) s.values.push_back(nums(row));
    s.cols = expert_names(s.values.empty() ? 0 : s.values[0].size());
    s.scale = svg::Scale::Diverging;
    s.value_name = "share / uniform";
    s.label_width = 110;
    h += svg::heatmap(s);
    svg::Heatmap n = s;
    n.title = fmt::format("layer {}: nPMI(label, expert)", layer);
    n.values.clear();
    for (const auto& row : l["label_npmi"]) n.values.push_back(nums(row));
    n.scale = svg::Scale::Signed;
    n.value_name = "nPMI";
    h += svg::heatmap(n);
  }
  h += "</div>";
  if (a.contains("token_classes")) {
    h += "<h3>Token classes</h3><p>nPMI of each token class (a regular expression over the token's text) with each "
         "expert. Classes: ";
    std::vector<std::string> names;
    for (const auto& c : a["token_classes"]) {
      names.push_back(c["name"].get<std::string>());
      h += fmt::format("<code>{}</code> = <code>{}</code> ({} tokens); ", escape(c["name"].get<std::string>()),
                       escape(c["pattern"].get<std::string>()), c["tokens"].get<uint64_t>());
    }
    h += "</p><div class=\"grid\">";
    for (const auto& l : a["specialisation"]) {
      svg::Heatmap n;
      n.title = fmt::format("layer {}: nPMI(class, expert)", l["layer"].get<int>());
      n.rows = names;
      for (const auto& row : l["class_npmi"]) n.values.push_back(nums(row));
      n.cols = expert_names(n.values.empty() ? 0 : n.values[0].size());
      n.scale = svg::Scale::Signed;
      n.value_name = "nPMI";
      n.label_width = 110;
      h += svg::heatmap(n);
    }
    h += "</div>";
  }
  h += "<h3>Each expert's top tokens</h3><p>By nPMI among tokens seen at least a few times (the tokens most specific "
       "to the expert), and by count (the tokens it serves most).</p>";
  for (const auto& l : a["specialisation"]) {
    h += fmt::format("<details><summary>layer {}</summary><table><tr><th>expert</th><th>top by nPMI</th><th>top by "
                     "count</th></tr>",
                     l["layer"].get<int>());
    for (const auto& e : l["experts"]) {
      auto cell = [&](const json& list, bool with_npmi) {
        std::string c;
        for (const auto& t : list) {
          const std::string text = t.contains("text") ? t["text"].get<std::string>() : fmt::format("#{}", t["token"].get<int>());
          c += fmt::format("<span class=\"tok\" title=\"token {}: {} of {} uses{}\">{}</span> ", t["token"].get<int>(),
                           t["with_expert"].get<uint64_t>(), t["count"].get<uint64_t>(),
                           with_npmi ? fmt::format(", nPMI {:.2f}", num(t["npmi"])) : "", escape(text));
        }
        return c;
      };
      h += fmt::format("<tr><td>e{}</td><td>{}</td><td>{}</td></tr>", e["expert"].get<int>(), cell(e["top_npmi"], true),
                       cell(e["top_count"], false));
    }
    h += "</table></details>";
  }
  return h;
}

std::string section_coactivation(const json& a) {
  std::string h = "<h2 id=\"coactivation\">Co-activation and transitions</h2><p>Left: lift of two experts firing for "
                  "the same token in a layer, p(i, j) / (p(i) p(j)) (1 = independent). Right: P(expert at the next MoE "
                  "layer | expert here), rows summing to 1: what a transition-table predictor learns.</p><div class=\"grid\">";
  for (const auto& c : a["coactivation"]) {
    svg::Heatmap m;
    m.title = fmt::format("layer {}: co-activation lift", c["layer"].get<int>());
    for (const auto& row : c["lift"]) m.values.push_back(nums(row));
    m.rows = m.cols = expert_names(m.values.size());
    m.scale = svg::Scale::Diverging;
    m.value_name = "lift";
    m.label_width = 40;
    m.show_values = m.values.size() <= 16;
    m.cell = m.values.size() <= 16 ? 28 : 12;
    h += svg::heatmap(m);
  }
  for (const auto& t : a["transitions"]) {
    svg::Heatmap m;
    m.title = fmt::format("layer {} -> {}: P(next | this); H = {:.2f} of {:.2f} bits", t["from_layer"].get<int>(),
                          t["to_layer"].get<int>(), num(t["conditional_entropy_bits"]), num(t["next_layer_entropy_bits"]));
    for (const auto& row : t["conditional"]) m.values.push_back(nums(row));
    m.rows = expert_names(m.values.size());
    m.cols = expert_names(m.values.empty() ? 0 : m.values[0].size());
    m.scale = svg::Scale::Sequential;
    m.value_name = "P";
    m.label_width = 40;
    m.show_values = m.values.size() <= 16;
    m.cell = m.values.size() <= 16 ? 28 : 12;
    h += svg::heatmap(m);
  }
  h += "</div>";
  return h;
}

std::string section_lrc(const json& a) {
  const json& lrc = a["lrc"];
  const int k = lrc["k"].get<int>();
  std::string h = "<h2 id=\"lrc\">Local routing consistency</h2><p>SRP: how well one fixed set of experts per window "
                  "of m tokens covers the window's routing (best F1 over a shared count threshold). SCH: the hit rate "
                  "of a per-layer cache that keeps the experts used most in the next m tokens. Dashed: the same tokens "
                  "in random order (the control: locality, not load, is what separates them).</p>";
  svg::LineChart c;
  c.title = "SRP against segment length m";
  c.x_label = "m (tokens)";
  c.y_label = "SRP";
  c.log_x = true;
  svg::Series real{"real text", {}, {}, svg::palette(0), false}, shuf{"shuffled", {}, {}, svg::palette(1), true};
  h += "<table><tr><th>m</th><th>SRP</th><th>shuffled</th><th>threshold</th>";
  for (const auto& l : a["labels"]) h += fmt::format("<th>{}</th>", escape(l.get<std::string>()));
  h += "</tr>";
  for (const auto& s : lrc["srp"]) {
    const double m = num(s["m"]);
    real.x.push_back(m);
    real.y.push_back(num(s["srp"]));
    shuf.x.push_back(m);
    shuf.y.push_back(num(s["shuffled"]));
    c.x_ticks.push_back(m);
    h += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td>", s["m"].get<int>(), f3(num(s["srp"])),
                     f3(num(s["shuffled"])), s["threshold"].get<int>());
    for (const auto& l : a["labels"]) h += fmt::format("<td>{}</td>", f3(num(s["per_label"][l.get<std::string>()])));
    h += "</tr>";
  }
  h += "</table><div class=\"grid\">";
  c.series = {real, shuf};
  h += svg::line_chart(c);
  svg::LineChart sc;
  sc.title = "SCH: hit rate against cache size (per layer, in units of k)";
  sc.x_label = fmt::format("cache size / k (k = {})", k);
  sc.y_label = "hit rate";
  size_t i = 0;
  for (const auto& s : lrc["sch"]) {
    svg::Series r{fmt::format("m = {}", s["m"].get<int>()), {}, {}, svg::palette(i), false};
    svg::Series sh{fmt::format("m = {} shuffled", s["m"].get<int>()), {}, {}, svg::palette(i), true};
    const std::vector<double> sizes = nums(s["cache_experts"]), hit = nums(s["hit_rate"]), hs = nums(s["shuffled"]);
    for (size_t j = 0; j < sizes.size(); ++j) {
      r.x.push_back(sizes[j] / std::max(1, k));
      r.y.push_back(hit[j]);
      sh.x.push_back(sizes[j] / std::max(1, k));
      sh.y.push_back(hs[j]);
    }
    sc.series.push_back(r);
    sc.series.push_back(sh);
    ++i;
  }
  sc.width = 640;
  sc.h_lines.push_back({0.9, "90%"});
  h += svg::line_chart(sc);
  h += "</div>";
  return h;
}

std::string section_super(const json& a) {
  std::string h = "<h2 id=\"super\">Super experts</h2>";
  const json& s = a["super_experts"];
  if (!s["available"].get<bool>())
    return h + "<p>The trace has no expert output statistics; record them with <code>moe trace --expert-stats</code> "
               "(or <code>--trace-expert-stats</code>).</p>";
  h += fmt::format("<p>Rule (techniques.md section 4): among the layers below {:.2f} (the first 75%), an expert whose "
                   "largest |output| exceeds the 99.5th percentile of all such maxima ({:.4g}) and a tenth of the "
                   "largest ({:.4g}). Found: <b>{}</b>.</p>",
                   num(s["layers_considered_below"]), num(s["p99_5"]), num(s["largest"]), s["super"].size());
  svg::Bars b;
  b.title = "max |expert output| per expert, sorted (grey: layers not considered)";
  std::vector<std::tuple<double, std::string, bool>> all;
  for (const auto& e : s["experts"])
    all.push_back({num(e["max_abs"]), fmt::format("L{} e{}", e["layer"].get<int>(), e["expert"].get<int>()), e["considered"].get<bool>()});
  std::sort(all.begin(), all.end(), [](const auto& x, const auto& y) { return std::get<0>(x) > std::get<0>(y); });
  for (const auto& [v, name, considered] : all) {
    b.values.push_back(v);
    b.labels.push_back(name);
    b.colors.push_back(considered ? svg::palette(0) : "#bbbbbb");
  }
  b.h_lines.push_back({num(s["p99_5"]), "p99.5"});
  b.h_lines.push_back({num(s["largest"]) / 10, "max/10"});
  b.width = std::max(400, std::min(1100, 60 + static_cast<int>(all.size()) * 14));
  h += svg::bar_chart(b);
  if (!s["super"].empty()) {
    h += "<table><tr><th>layer</th><th>expert</th><th>max |output|</th><th>mean output norm</th></tr>";
    for (const auto& e : s["super"])
      h += fmt::format("<tr><td>{}</td><td>{}</td><td>{:.4g}</td><td>{:.4g}</td></tr>", e["layer"].get<int>(),
                       e["expert"].get<int>(), num(e["max_abs"]), num(e["mean_norm"]));
    h += "</table>";
  }
  return h;
}

std::string section_simulation(const json& a) {
  if (!a.contains("simulation")) return "";
  const json& s = a["simulation"];
  const bool gen = s["counted"] == "generated";
  std::string h = fmt::format(
      "<h2 id=\"simulation\">Cache simulation</h2><p>The trace replayed against the expert store's own bookkeeping "
      "(every cache policy it has, with and without each predictor it can replay) and Belady's optimal policy, for "
      "pools of several sizes (one slot holds one expert: {}). Hit rates count {}.</p>",
      human_bytes(num(s["slot_bytes"])), gen ? "the generated tokens' steps (what `--stats` reports after the prompt)" : "every step");
  const json& rec = s["recommendation"];
  h += fmt::format("<p class=\"rec\">{}</p>", escape(rec["text"].get<std::string>()));
  std::map<std::string, svg::Series> hit, bytes;
  size_t n = 0;
  for (const auto& r : s["results"]) {
    const std::string name = r["policy"].get<std::string>() + (r["predictor"] == "none" ? "" : " + " + r["predictor"].get<std::string>());
    if (!hit.count(name)) {
      const bool belady = r["policy"] == "belady";
      const std::string col = belady ? "#000000" : svg::palette(n++);
      hit[name] = svg::Series{name, {}, {}, col, r["predictor"] != "none"};
      bytes[name] = hit[name];
    }
    hit[name].x.push_back(num(r["slots"]));
    hit[name].y.push_back(num(r[gen ? "gen_hit_rate" : "hit_rate"]));
    bytes[name].x.push_back(num(r["slots"]));
    bytes[name].y.push_back(num(r["bytes_per_token"]) / (1 << 20));
  }
  svg::LineChart hc;
  hc.title = "hit rate against pool size";
  hc.x_label = "pool size (experts)";
  hc.y_label = "hit rate";
  hc.width = 680;
  hc.h_lines.push_back({num(s["target_hit_rate"]), "target"});
  svg::LineChart bc = hc;
  bc.title = "expert bytes read per token";
  bc.y_label = "MiB per token";
  bc.y_min = bc.y_max = 0;
  bc.h_lines.clear();
  for (auto& [name, se] : hit) hc.series.push_back(se);
  for (auto& [name, se] : bytes) bc.series.push_back(se);
  h += "<div class=\"grid\">" + svg::line_chart(hc) + svg::line_chart(bc) + "</div>";
  h += "<details><summary>all results</summary><table><tr><th>policy</th><th>predictor</th><th>slots</th><th>--mem</th>"
       "<th>hit rate</th><th>generated</th><th>MiB read / token</th><th>prefetch issued / used / wasted</th><th>order-sensitive</th></tr>";
  for (const auto& r : s["results"])
    h += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2f}</td><td>{} / {} / {}</td>"
                     "<td>{}</td></tr>",
                     escape(r["policy"].get<std::string>()), escape(r["predictor"].get<std::string>()), r["slots"].get<uint64_t>(),
                     r["mem_bytes"].is_number() ? human_bytes(num(r["mem_bytes"])) : "–", pct(num(r["hit_rate"])),
                     pct(num(r["gen_hit_rate"])), num(r["bytes_per_token"]) / (1 << 20), r["prefetch_issued"].get<uint64_t>(),
                     r["prefetch_used"].get<uint64_t>(), r["prefetch_wasted"].get<uint64_t>(), r["order_sensitive"].get<uint64_t>());
  h += "</table></details>";
  return h;
}

std::string summary(const json& a) {
  std::string h = "<h2 id=\"summary\">Summary</h2><ul>";
  const json& m = a["model"];
  h += fmt::format("<li>Model <code>{}</code> ({}, {} MoE layers, experts {}, k {}).</li>",
                   escape(m["file"].get<std::string>()), escape(m["arch"].get<std::string>()), m["moe_layers"].size(),
                   m["n_expert"].dump(), m["n_expert_used"].dump());
  h += fmt::format("<li>{} tokens ({} generated) in {} sequences from {} trace file(s); labels:", a["tokens"].get<uint64_t>(),
                   a["generated_tokens"].get<uint64_t>(), a["sequences"].get<uint64_t>(), a["traces"].size());
  for (size_t i = 0; i < a["labels"].size(); ++i)
    h += fmt::format(" <b>{}</b> ({} tokens)", escape(a["labels"][i].get<std::string>()), a["label_tokens"][i].get<uint64_t>());
  h += ".</li>";
  double cv = 0;
  int n = 0;
  for (const auto& l : a["load"])
    if (std::isfinite(num(l["cv"]))) cv += num(l["cv"]), ++n;
  h += fmt::format("<li>Load: mean CV over layers {}.</li>", f3(n ? cv / n : NAN));
  std::string srp;
  for (const auto& s : a["lrc"]["srp"])
    srp += fmt::format(" m={}: {} (shuffled {});", s["m"].get<int>(), f3(num(s["srp"])), f3(num(s["shuffled"])));
  h += "<li>Local routing consistency, SRP:" + srp + "</li>";
  const int k = a["lrc"]["k"].get<int>();
  std::string sch;
  for (const auto& s : a["lrc"]["sch"]) {
    const std::vector<double> sizes = nums(s["cache_experts"]), hit = nums(s["hit_rate"]), hs = nums(s["shuffled"]);
    for (size_t j = 0; j < sizes.size(); ++j)
      if (static_cast<int>(sizes[j]) == 2 * k)
        sch += fmt::format(" m={}: {} (shuffled {});", s["m"].get<int>(), pct(hit[j]), pct(hs[j]));
  }
  if (!sch.empty()) h += "<li>SCH with a cache of 2k experts per layer:" + sch + "</li>";
  const json& sup = a["super_experts"];
  if (sup["available"].get<bool>()) {
    std::string list;
    for (const auto& e : sup["super"]) list += fmt::format(" layer {} expert {};", e["layer"].get<int>(), e["expert"].get<int>());
    h += fmt::format("<li>Super experts: {}{}</li>", sup["super"].size(), list.empty() ? " (none passes the rule)." : ":" + list);
  } else {
    h += "<li>Super experts: no expert statistics in the trace.</li>";
  }
  if (a.contains("simulation")) h += "<li>Cache: " + escape(a["simulation"]["recommendation"]["text"].get<std::string>()) + "</li>";
  h += "</ul>";
  return h;
}

}  // namespace

std::string analysis_report_html(const json& a) {
  std::string h =
      "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>moe analyze</title>"
      "<script>window.__errors=[];window.addEventListener('error',function(e){window.__errors.push(String(e.message));"
      "document.documentElement.setAttribute('data-errors',window.__errors.join(' | '));});</script>"
      "<style>body{font-family:sans-serif;margin:1.5em 2em;color:#222;max-width:1400px}"
      "h2{border-bottom:1px solid #ccc;margin-top:1.6em}table{border-collapse:collapse;margin:.6em 0}"
      "td,th{padding:2px 8px;text-align:right;border-bottom:1px solid #eee}th{background:#f4f4f4}"
      "svg{margin:6px 12px 6px 0}svg text{font-size:11px;fill:#222}svg text.title{font-size:12px;font-weight:bold}"
      "svg text.cell{font-size:9px}svg text.note{font-size:10px;fill:#555}.grid{display:flex;flex-wrap:wrap}"
      ".tok{background:#f0f0f8;border-radius:3px;padding:0 3px;font-family:monospace;white-space:pre}"
      ".rec{background:#eef6ee;padding:.5em;border-left:4px solid #4a4}nav a{margin-right:1em}</style></head><body>";
  h += "<h1>Routing analysis</h1><nav><a href=\"#summary\">summary</a><a href=\"#load\">load</a><a "
       "href=\"#specialisation\">specialisation</a><a href=\"#coactivation\">co-activation</a><a href=\"#lrc\">local "
       "consistency</a><a href=\"#super\">super experts</a>";
  if (a.contains("simulation")) h += "<a href=\"#simulation\">cache simulation</a>";
  h += "</nav>";
  h += summary(a);
  h += section_load(a);
  h += section_specialisation(a);
  h += section_coactivation(a);
  h += section_lrc(a);
  h += section_super(a);
  h += section_simulation(a);
  h += "<script>document.documentElement.setAttribute('data-ready','1');</script></body></html>\n";
  return h;
}

}  // namespace moe
