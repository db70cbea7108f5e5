// `moe route-stats -m MODEL -f TEXT... [-o TABLE]`: runs the model over text files and writes the
// transition table the `--predictor transition` prefetcher uses (moe/transition_table.h), with per-layer
// statistics: expert load CV, and how well the table predicts the next MoE layer's experts.
//
// Each file is tokenized whole (no BOS) and cut into windows of --ctx tokens, each evaluated from an
// empty context as one forward call, like `moe perplexity`. The routing comes from the forward pass's
// routing observer, so it is exactly what inference ran. Accuracy is measured on the last --holdout
// fraction of the windows with a table built from the others (the table written includes them all);
// with --holdout 0 it is in-sample, which flatters the table, most on little data.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
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
#include "model/weights.h"
#include "text_inputs.h"
#include "model/transitions.h"
#include "runtime/engine.h"
#include "runtime/session.h"
#include "tokenizer/tokenizer.h"

namespace moe::cli {

namespace {

struct RouteStatsArgs {
  std::string model;
  std::vector<std::string> files;
  std::string out;  // "" = next to the model
  int64_t ctx = 256;
  int64_t max_windows = 0;  // per file; 0 = all
  double holdout = 0.1;
  int threads = 0;
  std::string json_out;
  EngineFlags engine;
};

struct Window {
  size_t file;
  int64_t begin, end;
};

double pct(uint64_t a, uint64_t b) { return 100.0 * TransitionAccuracy::frac(a, b); }

int run_route_stats(const RouteStatsArgs& a) {
  // The experts per token of each layer (0: dense), from a header view (nothing is loaded).
  std::vector<int> layer_k;
  {
    auto header = load_model_for_generation(a.model);
    for (const LayerSpec& L : header->spec().layers) layer_k.push_back(L.is_moe ? L.moe.n_expert_used : 0);
  }
  const int n_moe = static_cast<int>(std::count_if(layer_k.begin(), layer_k.end(), [](int k) { return k > 0; }));
  if (n_moe < 2)
    fail("{}: {} MoE layer(s); a transition table needs two or more consecutive MoE layers", a.model, n_moe);
  // Tokenize everything first, before the engine opens (the tokenizer is released again, and under --mem
  // the ids count as held), so the held-out windows are known before the model runs and only their
  // routing has to be kept in memory.
  std::vector<std::vector<int32_t>> ids = tokenize_text_files(a.model, a.files, a.engine);
  std::vector<Window> windows;
  for (size_t f = 0; f < a.files.size(); ++f) {
    const int64_t n = static_cast<int64_t>(ids[f].size());
    if (n == 0) fail("{}: no tokens", a.files[f]);
    int64_t n_windows = (n + a.ctx - 1) / a.ctx;
    if (a.max_windows > 0) n_windows = std::min(n_windows, a.max_windows);
    for (int64_t w = 0; w < n_windows; ++w) windows.push_back({f, w * a.ctx, std::min(n, (w + 1) * a.ctx)});
  }
  size_t n_eval = 0;
  if (a.holdout > 0 && windows.size() >= 2)
    n_eval = std::clamp<size_t>(static_cast<size_t>(std::lround(a.holdout * static_cast<double>(windows.size()))), 1,
                                windows.size() - 1);
  const bool in_sample = n_eval == 0;
  const size_t first_eval = in_sample ? 0 : windows.size() - n_eval;

  // The scored windows' routing is kept until the end: ids and weights of k experts per token and MoE
  // layer, and one Routing per layer and window. It counts against --mem.
  uint64_t kept_tokens = 0;
  for (size_t w = first_eval; w < windows.size(); ++w) kept_tokens += static_cast<uint64_t>(windows[w].end - windows[w].begin);
  uint64_t kept_bytes = 0;
  for (int k : layer_k)
    kept_bytes += sizeof(Routing) * (windows.size() - first_eval) +
                  kept_tokens * static_cast<uint64_t>(k) * (sizeof(int32_t) + sizeof(float));

  ThreadPool pool(resolve_threads(a.threads));
  auto engine = open_engine(a.model, a.engine, a.ctx, a.ctx, 0, 1, {{"held-out routing", kept_bytes}});
  const Model& model = engine->model();
  const ModelSpec& spec = model.spec();

  const std::string out = a.out.empty() ? default_transition_path(a.model) : a.out;
  TransitionTable table(transition_shape(model));
  std::vector<std::vector<Routing>> kept;  // the calls to score: held-out windows, or all when in-sample
  bool keeping = false, learning = true;
  RoutingCallRecorder recorder(spec, [&](const std::vector<Routing>& call) {
    if (learning) table.add(call);
    if (keeping) kept.push_back(call);
  });
  Session session(model, engine->store(), a.ctx, forward_options(a.engine, *engine, false));
  session.forward().set_observer(&recorder);

  const auto t0 = std::chrono::steady_clock::now();
  uint64_t evaluated = 0;
  for (size_t w = 0; w < windows.size(); ++w) {
    const Window& win = windows[w];
    keeping = in_sample || w >= first_eval;
    learning = in_sample || w < first_eval;
    const std::vector<int32_t> window(ids[win.file].begin() + win.begin, ids[win.file].begin() + win.end);
    session.reset();
    session.eval(window, pool, /*all_logits=*/false, a.ctx);  // one forward call: routing is all we need
    evaluated += window.size();
    std::fprintf(stderr, "\rroute-stats: window %zu/%zu   ", w + 1, windows.size());
  }
  std::fprintf(stderr, "\n");
  session.forward().set_observer(nullptr);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::vector<TransitionAccuracy> acc;
  for (const auto& call : kept) table.evaluate(call, acc);
  if (!in_sample)
    for (const auto& call : kept) table.add(call);  // the written table learns from every window
  acc.resize(static_cast<size_t>(spec.n_layer));

  std::string note;
  for (const std::string& f : a.files) note += (note.empty() ? "" : ", ") + f;
  note = fmt::format("moe route-stats over {} tokens ({} windows of up to {}) from {}", evaluated, windows.size(),
                     a.ctx, note);
  table.save(out, note);

  std::printf("transition table for %s: %llu tokens, %zu windows; accuracy %s\n", table.shape().describe().c_str(),
              static_cast<unsigned long long>(evaluated), windows.size(),
              in_sample ? "in-sample (--holdout 0 or one window: optimistic)"
                        : fmt::format("on the last {} held-out window(s)", n_eval).c_str());
  std::printf("%-6s %-5s %8s %8s %10s %10s %9s %11s\n", "layer", "next", "load_cv", "top1", "top1_unw", "top1_pop",
              "recall@k", "recall_pop");
  TransitionAccuracy total;
  nlohmann::ordered_json layers = nlohmann::ordered_json::array();
  for (int il = 0; il < spec.n_layer; ++il) {
    if (!spec.layers[static_cast<size_t>(il)].is_moe) continue;
    const int next = table.next_moe_layer(il);
    const TransitionAccuracy& x = acc[static_cast<size_t>(il)];
    total.add(x);
    nlohmann::ordered_json j;
    j["layer"] = il;
    j["next"] = next;
    j["load_cv"] = table.load_cv(il);
    if (next < 0) {
      std::printf("%-6d %-5s %8.3f\n", il, "-", table.load_cv(il));
    } else {
      std::printf("%-6d %-5d %8.3f %7.1f%% %9.1f%% %9.1f%% %8.1f%% %10.1f%%\n", il, next, table.load_cv(il),
                  pct(x.top1_hits, x.tokens), pct(x.top1_hits_unweighted, x.tokens), pct(x.popular_top1_hits, x.tokens),
                  pct(x.topk_hits, x.topk_total), pct(x.popular_topk_hits, x.topk_total));
      j["tokens"] = x.tokens;
      j["top1_accuracy"] = TransitionAccuracy::frac(x.top1_hits, x.tokens);
      j["top1_accuracy_unweighted"] = TransitionAccuracy::frac(x.top1_hits_unweighted, x.tokens);
      j["top1_accuracy_popular"] = TransitionAccuracy::frac(x.popular_top1_hits, x.tokens);
      j["recall_at_k"] = TransitionAccuracy::frac(x.topk_hits, x.topk_total);
      j["recall_at_k_popular"] = TransitionAccuracy::frac(x.popular_topk_hits, x.topk_total);
    }
    layers.push_back(j);
  }
  std::printf("%-12s %8s %7.1f%% %9.1f%% %9.1f%% %8.1f%% %10.1f%%\n", "all pairs", "", pct(total.top1_hits, total.tokens),
              pct(total.top1_hits_unweighted, total.tokens), pct(total.popular_top1_hits, total.tokens),
              pct(total.topk_hits, total.topk_total), pct(total.popular_topk_hits, total.topk_total));
  std::printf("top1: the table's best guess is one of the token's next-layer experts (routing-weighted; _unw: "
              "unweighted; _pop: the next layer's most used expert, ignoring the token). recall@k: share of the "
              "next layer's k experts in the table's top k.\n");
  std::fprintf(stderr, "route-stats: %llu tokens in %.1f s; wrote %s\n", static_cast<unsigned long long>(evaluated),
               secs, out.c_str());

  if (!a.json_out.empty()) {
    nlohmann::ordered_json j;
    j["model"] = a.model;
    j["table"] = out;
    j["shape"] = table.shape().describe();
    j["tokens"] = evaluated;
    j["windows"] = windows.size();
    j["ctx"] = a.ctx;
    j["evaluation"] = in_sample ? "in-sample" : "holdout";
    j["eval_windows"] = in_sample ? windows.size() : n_eval;
    j["top1_accuracy"] = TransitionAccuracy::frac(total.top1_hits, total.tokens);
    j["recall_at_k"] = TransitionAccuracy::frac(total.topk_hits, total.topk_total);
    j["layers"] = layers;
    const std::string s = j.dump(1) + "\n";
    write_file_atomic(a.json_out, s.data(), s.size());
  }
  report_engine_stats(a.engine, *engine, &session.forward().prediction_stats(), evaluated, secs);
  return 0;
}

}  // namespace

void register_route_stats(CLI::App& app, CommandSet& cmds) {
  auto a = std::make_shared<RouteStatsArgs>();
  CLI::App* sub = app.add_subcommand(
      "route-stats", "Build the expert transition table for --predictor transition from text, with routing statistics");
  sub->add_option("-m,--model", a->model, "GGUF model file (default: the bundled model, see README)");
  sub->add_option("-f,--file", a->files, "text files to route")->required();
  sub->add_option("-o,--out", a->out, "table to write (default: the model's path + .transitions.gguf)");
  sub->add_option("-c,--ctx", a->ctx, "tokens per window")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  sub->add_option("--max-windows", a->max_windows, "windows per file (0 = all)")->check(CLI::Range(0, 1 << 30));
  sub->add_option("--holdout", a->holdout,
                  "fraction of windows (the last ones) scored by a table built from the rest; 0 = in-sample. The "
                  "routing of the scored windows is held in memory")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 0.9));
  sub->add_option("-t,--threads", a->threads, "threads (0 = all cores)")->check(CLI::Range(0, 1024));
  sub->add_option("--json", a->json_out, "write the statistics as JSON");
  add_engine_flags(sub, a->engine);
  sub->footer(
      "Memory: with --mem SIZE, at most SIZE (the experts stream from disk when the model does not fit). Without "
      "it, the whole model, plus one window's KV cache and activations, the token ids of every file and the "
      "held-out windows' routing (8 bytes per token, layer and routed expert). The files are tokenized before the "
      "model loads.");
  cmds.add(sub, [a] {
    if (a->model.empty()) a->model = default_model_path();
    return run_route_stats(*a);
  });
}

}  // namespace moe::cli
