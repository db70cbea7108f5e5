// `moe perplexity -m MODEL -f FILE...`: perplexity of each text file through the inference engine, and
// how often each expert of each MoE layer is chosen for that text (expert usage per domain).
//
// Each file is tokenized whole (no BOS), cut into windows of --ctx tokens, and every window is evaluated
// from an empty context; every token but a window's first is scored. The routing counts come from the
// forward pass's observer (on_routing), so they are exactly the experts inference ran. --html writes a heatmap
// of expert usage (files x experts, one panel per MoE layer); --json writes everything as JSON.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/thread_pool.h"
#include "cli_util.h"
#include "commands.h"
#include "engine_flags.h"
#include "generation.h"
#include "text_inputs.h"
#include "model/forward.h"
#include "analysis/expert_npmi.h"
#include "moe/expert_load.h"
#include "runtime/sampler.h"
#include "runtime/scmoe.h"
#include "runtime/engine.h"
#include "runtime/session.h"
#include "tokenizer/tokenizer.h"
#include "trace_flags.h"

namespace moe::cli {

namespace {

struct PerplexityArgs {
  std::string model;
  std::vector<std::string> files;
  int64_t ctx = 256;
  int64_t max_windows = 0;  // 0 = all
  int threads = 0;
  std::string json_out, html_out;
  EngineFlags engine;
  TraceFlags trace;
  bool scmoe = false;  // also score next-token accuracy under SCMoE's contrastive argmax
  ScmoeParams scmoe_params;
};

// counts[layer][expert]: how many (token, slot) routings chose the expert. Dense layers stay empty.
class ExpertCounter : public ForwardObserver {
 public:
  explicit ExpertCounter(const ModelSpec& spec) : counts_(static_cast<size_t>(spec.n_layer)) {
    for (int il = 0; il < spec.n_layer; ++il)
      if (spec.layers[il].is_moe) counts_[il].assign(static_cast<size_t>(spec.layers[il].moe.n_expert), 0);
  }
  void on_routing(const MoeLayerRouting& view) override {
    const Routing& r = *view.routing;
    std::vector<uint64_t>& c = counts_[static_cast<size_t>(view.layer)];
    for (int64_t t = 0; t < r.n_tokens; ++t)
      for (int j = 0; j < r.k; ++j)
        if (r.id(t, j) >= 0) ++c[static_cast<size_t>(r.id(t, j))];
  }
  void on_step_begin(const StepTokens& tokens) override { tokens_ += static_cast<uint64_t>(tokens.n_tokens); }
  const std::vector<std::vector<uint64_t>>& counts() const { return counts_; }
  uint64_t tokens() const { return tokens_; }  // routed token positions (each MoE layer routes each once)

 private:
  std::vector<std::vector<uint64_t>> counts_;
  uint64_t tokens_ = 0;
};

struct FileResult {
  std::string path;
  uint64_t scored = 0;
  double nll = 0;  // summed negative log-likelihood (nats)
  uint64_t correct = 0;        // top-1 next-token predictions that were right
  uint64_t scmoe_correct = 0;  // the same under SCMoE's contrastive argmax (--scmoe)
  uint64_t routed = 0;         // token positions routed (for experts per token)
  std::vector<std::vector<uint64_t>> counts;
  double ce() const { return scored ? nll / static_cast<double>(scored) : NAN; }
};

// Mean experts per routed token over the MoE layers.
double experts_per_token(const FileResult& r) {
  uint64_t pairs = 0;
  int layers = 0;
  for (const auto& c : r.counts) {
    if (c.empty()) continue;
    ++layers;
    for (uint64_t x : c) pairs += x;
  }
  return r.routed && layers ? static_cast<double>(pairs) / static_cast<double>(r.routed) / layers : 0.0;
}

double mean_cv(const std::vector<std::vector<uint64_t>>& counts) {
  double sum = 0;
  int n = 0;
  for (const auto& c : counts)
    if (!c.empty()) sum += load_cv(c), ++n;
  return n ? sum / n : NAN;
}

// Natural-log softmax cross-entropy of `target` under one row of logits.
double token_nll(const float* logits, int64_t n_vocab, int32_t target) {
  float mx = logits[0];
  for (int64_t i = 1; i < n_vocab; ++i) mx = std::max(mx, logits[i]);
  double sum = 0;
  for (int64_t i = 0; i < n_vocab; ++i) sum += std::exp(static_cast<double>(logits[i] - mx));
  return std::log(sum) - static_cast<double>(logits[target] - mx);
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// Diverging colour for an expert's share relative to uniform: blue below, white at 1x, red above
// (log2 scale, saturating at 4x either way).
std::string ratio_colour(double ratio) {
  const double t = std::clamp(std::log2(std::max(ratio, 1e-9)) / 2.0, -1.0, 1.0);
  const int fade = static_cast<int>(255 * (1.0 - std::abs(t)));
  return t >= 0 ? fmt::format("rgb(255,{},{})", fade, fade) : fmt::format("rgb({},{},255)", fade, fade);
}

std::string usage_html(const std::string& model, const std::vector<FileResult>& results) {
  std::string h = "<!doctype html><html><head><meta charset=\"utf-8\"><title>moe perplexity: expert usage</title>"
                  "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}"
                  "svg text{font-size:11px;font-family:sans-serif}</style></head><body>";
  h += fmt::format("<h1>Expert usage per text</h1><p>Model <code>{}</code>. Each cell is the share of the text's "
                   "routing decisions that chose the expert, relative to a uniform router (1.00 = 1/E): red above, "
                   "blue below.</p>",
                   html_escape(model));
  h += "<table><tr><th style=\"text-align:left\">text</th><th>tokens</th><th>cross-entropy</th><th>perplexity</th>"
       "<th>load CV</th></tr>";
  for (const FileResult& r : results)
    h += fmt::format("<tr><td style=\"text-align:left\">{}</td><td>{}</td><td>{:.4f}</td><td>{:.2f}</td><td>{:.3f}"
                     "</td></tr>",
                     html_escape(r.path), r.scored, r.ce(), std::exp(r.ce()), mean_cv(r.counts));
  h += "</table>";
  const size_t n_layer = results.empty() ? 0 : results[0].counts.size();
  const int cell = 34, label_w = 260, top = 18;
  for (size_t il = 0; il < n_layer; ++il) {
    const size_t E = results[0].counts[il].size();
    if (E == 0) continue;
    const int w = label_w + static_cast<int>(E) * cell + 10, hgt = top + static_cast<int>(results.size()) * cell + 6;
    h += fmt::format("<h2>Layer {}</h2><svg width=\"{}\" height=\"{}\">", il, w, hgt);
    for (size_t e = 0; e < E; ++e)
      h += fmt::format("<text x=\"{}\" y=\"12\" text-anchor=\"middle\">e{}</text>", label_w + e * cell + cell / 2, e);
    for (size_t f = 0; f < results.size(); ++f) {
      const std::vector<uint64_t>& c = results[f].counts[il];
      uint64_t total = 0;
      for (uint64_t x : c) total += x;
      const int y = top + static_cast<int>(f) * cell;
      std::string label = results[f].path;
      if (label.size() > 40) label = "..." + label.substr(label.size() - 37);
      h += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>", label_w - 6, y + cell / 2 + 4,
                       html_escape(label));
      for (size_t e = 0; e < E; ++e) {
        const double share = total ? static_cast<double>(c[e]) / static_cast<double>(total) : 0.0;
        const double ratio = share * static_cast<double>(E);
        const int x = label_w + static_cast<int>(e) * cell;
        h += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\" stroke=\"#888\">"
                         "<title>{} / expert {}: {:.1f}% of routings ({:.2f}x uniform)</title></rect>",
                         x, y, cell, cell, ratio_colour(ratio), html_escape(results[f].path), e, share * 100, ratio);
        h += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{:.2f}</text>", x + cell / 2, y + cell / 2 + 4,
                         ratio);
      }
    }
    h += "</svg>";
  }
  h += "</body></html>\n";
  return h;
}

int run_perplexity(PerplexityArgs& a) {
  if (a.scmoe) a.scmoe_params.check();
  // Tokenized before the engine opens: under --mem the tokenizer and the texts never share the budget
  // with the model, and the ids that stay count as held.
  const std::vector<std::vector<int32_t>> all_ids = tokenize_text_files(a.model, a.files, a.engine);
  for (size_t f = 0; f < a.files.size(); ++f)
    if (all_ids[f].size() < 2) fail("{}: fewer than 2 tokens, nothing to score", a.files[f]);
  ThreadPool pool(resolve_threads(a.threads));
  // The batch is the window: its [ctx][n_vocab] logits are part of the plan's buffers. SCMoE's weak pass is
  // a second session with its own KV cache and buffers: reserved under --mem.
  std::vector<MemoryReservation> reserved;
  if (a.scmoe && !a.engine.mem.empty()) {
    const MemoryPlan p = plan_memory(a.model, engine_options(a.engine, a.ctx, a.ctx));
    reserved.push_back({"SCMoE weak session", p.kv_bytes + p.buffer_bytes});
  }
  auto engine = open_engine(a.model, a.engine, a.ctx, a.ctx, 0, 1, std::move(reserved));
  const Model& model = engine->model();
  const ModelSpec& spec = model.spec();
  const ForwardOptions fo = forward_options(a.engine, *engine, false);
  Session session(model, engine->store(), a.ctx, fo);
  std::unique_ptr<Session> weak;
  std::vector<float> scores(static_cast<size_t>(spec.n_vocab));
  if (a.scmoe) {
    ForwardOptions wo = fo;
    wo.routing = scmoe_weak_policy(fo.routing, a.scmoe_params.rank);
    wo.routing_use = nullptr;
    wo.expert_use = nullptr;
    weak = std::make_unique<Session>(model, engine->store(), a.ctx, wo);
  }

  auto trace = CliTrace::open(a.trace, *engine, a.engine, a.ctx, a.ctx, "moe perplexity");
  int32_t window_seq = 0;  // with --trace: each window is its own sequence, from position 0

  std::vector<FileResult> results;
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t evaluated = 0;
  for (size_t fi = 0; fi < a.files.size(); ++fi) {
    const std::string& path = a.files[fi];
    const std::vector<int32_t>& ids = all_ids[fi];
    ExpertCounter counter(spec);
    session.forward().set_observer(&counter);
    if (trace) {
      trace->attach(session);
      trace->begin_input(path, std::filesystem::path(path).stem().string());
    }
    FileResult r;
    r.path = path;
    const int64_t n = static_cast<int64_t>(ids.size());
    int64_t n_windows = (n + a.ctx - 1) / a.ctx;
    if (a.max_windows > 0) n_windows = std::min(n_windows, a.max_windows);
    for (int64_t w = 0; w < n_windows; ++w) {
      const int64_t b = w * a.ctx, e = std::min(n, b + a.ctx);
      if (e - b < 2) break;
      const std::vector<int32_t> window(ids.begin() + b, ids.begin() + e);
      session.reset();
      if (trace) session.forward().set_seq_id(window_seq++);
      const std::vector<float>& logits = session.eval(window, pool, /*all_logits=*/true, a.ctx);
      for (int64_t i = 0; i + 1 < e - b; ++i) {
        const float* row = logits.data() + i * spec.n_vocab;
        const int32_t next = window[static_cast<size_t>(i + 1)];
        r.nll += token_nll(row, spec.n_vocab, next);
        r.correct += argmax(row, spec.n_vocab) == next;
      }
      if (weak) {
        weak->reset();
        const std::vector<float>& wl = weak->eval(window, pool, /*all_logits=*/true, a.ctx);
        for (int64_t i = 0; i + 1 < e - b; ++i) {
          scmoe_scores(logits.data() + i * spec.n_vocab, wl.data() + i * spec.n_vocab, spec.n_vocab, a.scmoe_params,
                       scores.data());
          r.scmoe_correct += argmax(scores.data(), spec.n_vocab) == window[static_cast<size_t>(i + 1)];
        }
      }
      r.scored += static_cast<uint64_t>(e - b - 1);
      evaluated += static_cast<uint64_t>(e - b);
      std::fprintf(stderr, "\rperplexity: %s window %lld/%lld   ", path.c_str(), static_cast<long long>(w + 1),
                   static_cast<long long>(n_windows));
    }
    session.forward().set_observer(nullptr);
    if (trace) trace->detach();
    r.counts = counter.counts();
    r.routed = counter.tokens();
    results.push_back(std::move(r));
  }
  std::fprintf(stderr, "\n");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::printf("%-44s %9s %8s %10s %8s\n", "text", "tokens", "ce", "ppl", "load_cv");
  for (const FileResult& r : results)
    std::printf("%-44s %9llu %8.4f %10.2f %8.3f\n", r.path.c_str(), static_cast<unsigned long long>(r.scored), r.ce(),
                std::exp(r.ce()), mean_cv(r.counts));
  // Expert usage: per MoE layer, each text's share of routings per expert, in percent.
  for (int il = 0; il < spec.n_layer; ++il) {
    if (!spec.layers[il].is_moe) continue;
    std::printf("layer %d expert usage (%% of routings):\n", il);
    for (const FileResult& r : results) {
      const std::vector<uint64_t>& c = r.counts[il];
      uint64_t total = 0;
      for (uint64_t x : c) total += x;
      std::string row = fmt::format("  {:<42}", r.path.size() > 42 ? "..." + r.path.substr(r.path.size() - 39) : r.path);
      for (uint64_t x : c) row += fmt::format(" {:5.1f}", total ? 100.0 * static_cast<double>(x) / total : 0.0);
      std::printf("%s\n", row.c_str());
    }
  }
  std::fprintf(stderr, "perplexity: %llu tokens evaluated in %.1f s (%.0f tok/s)\n",
               static_cast<unsigned long long>(evaluated), secs, static_cast<double>(evaluated) / secs);

  // nPMI of each expert with each text (the texts are the classes).
  std::vector<std::vector<std::vector<uint64_t>>> all_counts;
  std::vector<uint64_t> all_tokens;
  for (const FileResult& r : results) {
    all_counts.push_back(r.counts);
    all_tokens.push_back(r.routed);
  }
  const auto npmi = expert_npmi(all_counts, all_tokens);
  if (a.engine.stats) {
    for (const FileResult& r : results)
      std::fprintf(stderr, "moe stats: %s: top-1 accuracy %.4f%s, experts per token %.3f\n", r.path.c_str(),
                   r.scored ? static_cast<double>(r.correct) / r.scored : 0.0,
                   weak ? fmt::format(" (SCMoE {:.4f})", r.scored ? static_cast<double>(r.scmoe_correct) / r.scored : 0.0).c_str() : "",
                   experts_per_token(r));
  }

  if (!a.json_out.empty()) {
    nlohmann::ordered_json j;
    j["model"] = a.model;
    j["ctx"] = a.ctx;
    j["routing_policy"] = fo.routing.to_json();
    j["routing"] = engine->routing_use().to_json();
    if (weak) j["scmoe"] = {{"alpha", a.scmoe_params.alpha}, {"beta", a.scmoe_params.beta}, {"rank", a.scmoe_params.rank}};
    for (size_t fi = 0; fi < results.size(); ++fi) {
      const FileResult& r = results[fi];
      nlohmann::ordered_json f;
      f["file"] = r.path;
      f["tokens_scored"] = r.scored;
      f["ce"] = r.ce();
      f["ppl"] = std::exp(r.ce());
      f["accuracy"] = r.scored ? static_cast<double>(r.correct) / static_cast<double>(r.scored) : 0.0;
      if (weak) f["scmoe_accuracy"] = r.scored ? static_cast<double>(r.scmoe_correct) / static_cast<double>(r.scored) : 0.0;
      f["load_cv"] = mean_cv(r.counts);
      f["experts_per_token"] = experts_per_token(r);
      nlohmann::ordered_json per_layer = nlohmann::ordered_json::array();
      for (size_t il = 0; il < r.counts.size(); ++il) {
        if (r.counts[il].empty()) {
          per_layer.push_back(nullptr);
          continue;
        }
        uint64_t n = 0;
        for (uint64_t c : r.counts[il]) n += c;
        per_layer.push_back(r.routed ? static_cast<double>(n) / static_cast<double>(r.routed) : 0.0);
      }
      f["experts_per_token_per_layer"] = per_layer;
      f["expert_counts"] = r.counts;
      f["npmi"] = npmi[fi];
      j["files"].push_back(f);
    }
    const std::string s = j.dump(1) + "\n";
    write_file_atomic(a.json_out, s.data(), s.size());
  }
  if (!a.html_out.empty()) {
    const std::string s = usage_html(a.model, results);
    write_file_atomic(a.html_out, s.data(), s.size());
    std::fprintf(stderr, "perplexity: wrote %s\n", a.html_out.c_str());
  }
  report_engine_stats(a.engine, *engine, &session.forward().prediction_stats(), evaluated, secs);
  if (trace) trace->finish();
  return 0;
}

}  // namespace

void register_perplexity(CLI::App& app, CommandSet& cmds) {
  auto a = std::make_shared<PerplexityArgs>();
  CLI::App* sub = app.add_subcommand("perplexity", "Perplexity and expert usage of text files");
  sub->add_option("-m,--model", a->model, "GGUF model file (default: the bundled model, see README)");
  sub->add_option("-f,--file", a->files, "text files (one result each)")->required();
  sub->add_option("-c,--ctx", a->ctx, "tokens per window")->capture_default_str()->check(CLI::Range(2, 1 << 20));
  sub->add_option("--max-windows", a->max_windows, "windows per file (0 = all)")->check(CLI::Range(0, 1 << 30));
  sub->add_option("-t,--threads", a->threads, "threads (0 = all cores)")->check(CLI::Range(0, 1024));
  sub->add_option("--json", a->json_out, "write the results as JSON");
  sub->add_option("--html", a->html_out, "write an HTML report with expert-usage heatmaps");
  add_engine_flags(sub, a->engine);
  add_trace_flags(sub, a->trace);
  sub->footer(
      "Memory: with --mem SIZE, at most SIZE (the experts stream from disk when the model does not fit). Without "
      "it, the whole model, plus one window's KV cache, activations and [ctx][n_vocab] logits (twice with --scmoe), "
      "plus the token ids of every file. The files are tokenized before the model loads.");
  const std::string g = "Decoding strategies (docs/routing-lab.md)";
  sub->add_flag("--scmoe", a->scmoe, "Also report next-token accuracy under SCMoE self-contrast (weak pass: one expert "
                                     "by router rank)")
      ->group(g);
  sub->add_option("--scmoe-alpha", a->scmoe_params.alpha, "SCMoE plausibility cut (default 0.1)")->group(g);
  sub->add_option("--scmoe-beta", a->scmoe_params.beta, "SCMoE contrast strength (default 0.5)")->group(g);
  sub->add_option("--scmoe-rank", a->scmoe_params.rank, "SCMoE weak expert's router rank from 1 (default 2)")->group(g);
  cmds.add(sub, [a] {
    if (a->model.empty()) a->model = default_model_path();
    return run_perplexity(*a);
  });
}

}  // namespace moe::cli
