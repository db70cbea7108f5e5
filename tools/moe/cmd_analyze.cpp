// `moe analyze FILE.trace... [-m MODEL] [--html REPORT.html] [--json OUT.json] [--simulate ...]`: what the
// experts do in one or more routing traces of the same model (analysis/route_analysis.h), and with
// --simulate what an expert cache would do (analysis/cache_sim.h): hit rates and bytes read for every
// store policy, predictor and Belady's policy over a grid of pool sizes, and the --mem and policy that
// reach a target hit rate. Traces stream: one step in memory at a time.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "analysis/cache_sim.h"
#include "analysis/report_html.h"
#include "analysis/route_analysis.h"
#include "analysis/trace_format.h"
#include "base/error.h"
#include "cli_util.h"
#include "commands.h"
#include "model/arch.h"
#include "model/transitions.h"
#include "moe/cache_policy.h"
#include "runtime/engine.h"
#include "tokenizer/tokenizer.h"

namespace moe::cli {

namespace {

using json = nlohmann::ordered_json;

struct AnalyzeArgs {
  std::vector<std::string> traces;
  std::string model, html, json_out, transitions;
  std::vector<std::string> classes;  // NAME=REGEX
  std::vector<int> segments = {4, 16, 64, 256};
  int min_count = 5;
  int top_tokens = 8;
  bool simulate = false;
  std::vector<std::string> policies;
  std::vector<std::string> predictors;
  std::vector<size_t> budgets;
  int margin = 2;
  double target = 0.9;
  int64_t ctx = 0;
  bool quiet = false;
};

std::vector<std::string> split_list(const std::vector<std::string>& v) {
  std::vector<std::string> out;
  for (const std::string& s : v) {
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ','))
      if (!item.empty()) out.push_back(item);
  }
  return out;
}

// What a pool of N slots costs as --mem: resident weights + KV + buffers + N slots.
struct MemoryModel {
  bool known = false;
  uint64_t fixed = 0, slot = 0;
  int64_t n_ctx = 0;
  std::string source;
  uint64_t mem_for(size_t slots) const { return fixed + static_cast<uint64_t>(slots) * slot; }
};

MemoryModel memory_model(const TraceHeader& h, const AnalyzeArgs& a) {
  MemoryModel mm;
  if (!a.model.empty()) {
    auto model = Model::load(a.model, gguf::DataAccess::Mmap, /*defer_experts=*/true);
    EngineOptions o;
    const json& mem = h.json.contains("memory") ? h.json["memory"] : json::object();
    o.n_ctx = a.ctx > 0 ? a.ctx : (mem.contains("n_ctx") ? mem["n_ctx"].get<int64_t>() : 4096);
    o.n_batch = mem.contains("n_batch") ? std::min<int64_t>(mem["n_batch"].get<int64_t>(), o.n_ctx) : std::min<int64_t>(512, o.n_ctx);
    o.force_offload = true;
    // What the recorded process held before loading (its RSS, measured): --mem covers it as well.
    o.held_bytes = mem.contains("held_bytes") && mem["held_bytes"].is_number_unsigned() ? mem["held_bytes"].get<uint64_t>() : 0;
    const MemoryPlan p = plan_memory(*model, o);
    mm.known = true;
    mm.fixed = p.weights_resident + p.kv_bytes + p.buffer_bytes + p.held_bytes;
    mm.slot = BudgetedExpertStore::slot_bytes_for(model->expert_layout());
    mm.n_ctx = o.n_ctx;
    mm.source = a.model;
    return mm;
  }
  if (!h.json.contains("memory") || !h.json["memory"].is_object()) return mm;
  const json& mem = h.json["memory"];
  auto u = [&](const char* k) -> uint64_t { return mem.contains(k) && mem[k].is_number_unsigned() ? mem[k].get<uint64_t>() : 0; };
  mm.slot = u("slot_bytes");
  mm.fixed = u("resident_bytes") + u("kv_bytes") + u("buffer_bytes") + u("held_bytes");
  mm.n_ctx = mem.contains("n_ctx") ? mem["n_ctx"].get<int64_t>() : 0;
  mm.known = mm.slot > 0;
  mm.source = "the trace header";
  return mm;
}

std::vector<uint64_t> read_bytes_of(const TraceHeader& h) {
  std::vector<uint64_t> v;
  if (h.json.contains("memory") && h.json["memory"].contains("expert_read_bytes"))
    for (const auto& x : h.json["memory"]["expert_read_bytes"]) v.push_back(x.is_number_unsigned() ? x.get<uint64_t>() : 0);
  if (v.size() != static_cast<size_t>(h.n_moe())) v.assign(static_cast<size_t>(h.n_moe()), 0);
  return v;
}

TransitionShape shape_of(const TraceHeader& h) {
  TransitionShape s;
  s.arch = h.arch;
  s.n_expert.assign(static_cast<size_t>(h.n_layer), 0);
  for (int m = 0; m < h.n_moe(); ++m) s.n_expert[static_cast<size_t>(h.moe_layers[m])] = h.n_expert[m];
  s.router_fingerprint = h.router_fingerprint;
  return s;
}

json result_json(const CacheSimResult& r, const MemoryModel& mm, uint64_t tokens, uint64_t gen_tokens) {
  json j;
  j["policy"] = r.config.policy;
  j["predictor"] = sim_predictor_name(r.config.predictor);
  j["margin"] = r.config.predictor == SimPredictor::None ? -1 : r.config.margin;
  j["slots"] = r.config.slots;
  j["mem_bytes"] = mm.known ? json(mm.mem_for(r.config.slots)) : json(nullptr);
  j["hits"] = r.total_hits();
  j["misses"] = r.total_misses();
  j["hits_per_layer"] = r.hits;
  j["misses_per_layer"] = r.misses;
  auto rate = [](double v) { return std::isfinite(v) ? json(v) : json(nullptr); };
  j["hit_rate"] = rate(r.hit_rate());
  j["gen_hits"] = r.gen_hits;
  j["gen_misses"] = r.gen_misses;
  j["gen_hit_rate"] = rate(r.gen_hit_rate());
  j["loads"] = r.loads;
  j["bytes_read"] = r.bytes_read;
  j["bytes_per_token"] = gen_tokens ? static_cast<double>(r.gen_bytes_read) / static_cast<double>(gen_tokens)
                                    : static_cast<double>(r.bytes_read) / static_cast<double>(std::max<uint64_t>(1, tokens));
  j["prefetch_issued"] = r.prefetch_issued;
  j["prefetch_used"] = r.prefetch_used;
  j["prefetch_wasted"] = r.prefetch_wasted;
  j["prefetch_throttled"] = r.prefetch_throttled;
  j["order_sensitive"] = r.order_sensitive;
  return j;
}

// The smallest pool (and its policy and predictor) whose hit rate reaches the target.
json recommend(const json& results, bool generated, double target, const MemoryModel& mm) {
  const char* key = generated ? "gen_hit_rate" : "hit_rate";
  const json* best = nullptr;
  const json* belady = nullptr;
  const json* top = nullptr;
  for (const auto& r : results) {
    const double v = r[key].is_number() ? r[key].get<double>() : -1;
    if (r["policy"] == "belady") {
      if (v >= target && (!belady || r["slots"].get<size_t>() < (*belady)["slots"].get<size_t>())) belady = &r;
      continue;
    }
    if (!top || v > (*top)[key].get<double>()) top = &r;
    if (v < target) continue;
    if (!best || r["slots"].get<size_t>() < (*best)["slots"].get<size_t>() ||
        (r["slots"] == (*best)["slots"] && v > (*best)[key].get<double>()))
      best = &r;
  }
  json rec;
  rec["target_hit_rate"] = target;
  std::string text;
  if (best) {
    const json& b = *best;
    rec["policy"] = b["policy"];
    rec["predictor"] = b["predictor"];
    rec["slots"] = b["slots"];
    rec["mem_bytes"] = b["mem_bytes"];
    rec["hit_rate"] = b[key];
    const std::string mem = mm.known ? fmt::format("--mem {}", mm.mem_for(b["slots"].get<size_t>())) : "a pool";
    text = fmt::format("For a {:.0f}% hit rate: {} ({} expert slots{}) --cache-policy {}{} reaches {:.1f}%",
                       100 * target, mem, b["slots"].get<size_t>(),
                       mm.known && mm.n_ctx > 0 ? fmt::format(", sized for -c {}", mm.n_ctx) : "", b["policy"].get<std::string>(),
                       b["predictor"] == "none" ? " --prefetch-margin -1"
                                                : fmt::format(" --predictor {} --prefetch-margin {}", b["predictor"].get<std::string>(), b["margin"].get<int>()),
                       100 * b[key].get<double>());
    if (belady) text += fmt::format("; Belady's optimal policy needs {} slots", (*belady)["slots"].get<size_t>());
    text += ".";
  } else if (top) {
    text = fmt::format("No simulated pool reaches a {:.0f}% hit rate; the best is {:.1f}% ({} with {} slots).", 100 * target,
                       100 * (*top)[key].get<double>(), (*top)["policy"].get<std::string>(), (*top)["slots"].get<size_t>());
  } else {
    text = "Nothing was simulated.";
  }
  rec["text"] = text;
  return rec;
}

void print_summary(const json& a) {
  std::printf("%llu tokens (%llu generated), %llu sequences; labels:", static_cast<unsigned long long>(a["tokens"].get<uint64_t>()),
              static_cast<unsigned long long>(a["generated_tokens"].get<uint64_t>()),
              static_cast<unsigned long long>(a["sequences"].get<uint64_t>()));
  for (size_t i = 0; i < a["labels"].size(); ++i)
    std::printf(" %s (%llu)", a["labels"][i].get<std::string>().c_str(), static_cast<unsigned long long>(a["label_tokens"][i].get<uint64_t>()));
  std::printf("\n\nload per layer:   layer      CV  max/mean  entropy(norm)\n");
  for (const auto& l : a["load"])
    std::printf("                  %5d  %6.3f  %8.3f  %13.3f\n", l["layer"].get<int>(),
                l["cv"].is_number() ? l["cv"].get<double>() : NAN, l["max_over_mean"].is_number() ? l["max_over_mean"].get<double>() : NAN,
                l["entropy_norm"].is_number() ? l["entropy_norm"].get<double>() : NAN);
  std::printf("\nlocal routing consistency:   m     SRP  shuffled\n");
  for (const auto& s : a["lrc"]["srp"])
    std::printf("                           %4d  %6.3f  %8.3f\n", s["m"].get<int>(), s["srp"].is_number() ? s["srp"].get<double>() : NAN,
                s["shuffled"].is_number() ? s["shuffled"].get<double>() : NAN);
  const int k = a["lrc"]["k"].get<int>();
  std::printf("SCH hit rate with a cache of 2k = %d experts per layer:", 2 * k);
  for (const auto& s : a["lrc"]["sch"]) {
    const auto& sizes = s["cache_experts"];
    for (size_t j = 0; j < sizes.size(); ++j)
      if (sizes[j].get<int>() == 2 * k && s["hit_rate"][j].is_number())
        std::printf(" m=%d %.1f%% (shuffled %.1f%%);", s["m"].get<int>(), 100 * s["hit_rate"][j].get<double>(),
                    100 * s["shuffled"][j].get<double>());
  }
  std::printf("\n");
  // The experts most tied to each label (nPMI), per layer.
  std::printf("\nexperts most tied to each label (nPMI):\n");
  for (const auto& l : a["specialisation"]) {
    for (size_t i = 0; i < a["labels"].size(); ++i) {
      const auto& row = l["label_npmi"][i];
      int best = -1;
      double bv = -2;
      for (size_t e = 0; e < row.size(); ++e)
        if (row[e].is_number() && row[e].get<double>() > bv) bv = row[e].get<double>(), best = static_cast<int>(e);
      if (best >= 0)
        std::printf("  layer %d, %-16s expert %d (nPMI %.3f)\n", l["layer"].get<int>(), a["labels"][i].get<std::string>().c_str(),
                    best, bv);
    }
  }
  const auto& sup = a["super_experts"];
  if (sup["available"].get<bool>())
    std::printf("\nsuper experts: %zu (p99.5 of max |output| %.4g, largest %.4g)\n", sup["super"].size(),
                sup["p99_5"].is_number() ? sup["p99_5"].get<double>() : NAN, sup["largest"].is_number() ? sup["largest"].get<double>() : NAN);
  if (a.contains("simulation")) std::printf("\ncache: %s\n", a["simulation"]["recommendation"]["text"].get<std::string>().c_str());
}

int run_analyze(const AnalyzeArgs& a) {
  if (a.traces.empty()) fail("analyze: give at least one trace file");
  std::vector<TraceHeader> headers;
  for (const std::string& p : a.traces) headers.push_back(TraceReader(p).header());
  const TraceHeader& first = headers[0];

  AnalyzeOptions opt;
  opt.segment_lengths = a.segments;
  opt.min_token_count = a.min_count;
  opt.top_tokens = a.top_tokens;
  for (const std::string& c : a.classes) {
    const size_t eq = c.find('=');
    if (eq == std::string::npos || eq == 0) fail("--class {}: expected NAME=REGEX", c);
    opt.classes.push_back({c.substr(0, eq), c.substr(eq + 1)});
  }
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tok;
  if (!a.model.empty()) {
    model = Model::load(a.model, gguf::DataAccess::Mmap, /*defer_experts=*/true);
    const TransitionShape ms = transition_shape(*model, /*with_fingerprint=*/false);
    if (!ms.same_layout(shape_of(first)))
      fail("analyze: {} is {}, but {} was traced from {}", a.model, ms.describe(), a.traces[0], shape_of(first).describe());
    if (model->file().has("tokenizer.ggml.model")) {
      tok = Tokenizer::from_gguf(model->file());
      const Tokenizer* t = tok.get();
      opt.token_text = [t](int32_t id) { return t->token_to_piece(id); };
    }
  } else if (!a.classes.empty()) {
    fail("analyze: --class needs -m MODEL (token classes match the tokens' text)");
  }
  RouteAnalysis analysis(first, opt);

  // Simulation set-up.
  std::unique_ptr<CacheSimulator> sim, sim_transition;
  std::unique_ptr<TransitionTable> table;
  std::vector<CacheSimConfig> configs, transition_configs;
  bool table_in_sample = false;
  std::vector<std::string> predictors;
  MemoryModel mm;
  if (a.simulate) {
    std::vector<std::string> policies = split_list(a.policies);
    if (policies.empty()) {
      policies = cache_policy_names();
      policies.push_back("belady");
    }
    predictors = split_list(a.predictors);
    if (predictors.empty()) {
      predictors = {"none", "transition"};
      if (first.fields.lookahead > 0) predictors.push_back("gate");
    }
    if (std::find(predictors.begin(), predictors.end(), "transition") != predictors.end()) {
      std::string path = a.transitions;
      if (path.empty() && !a.model.empty() && std::filesystem::exists(default_transition_path(a.model)))
        path = default_transition_path(a.model);
      if (!path.empty()) {
        table = std::make_unique<TransitionTable>(TransitionTable::load(path));
        if (!table->shape().same_layout(shape_of(first)))
          fail("analyze: {} is a transition table for {}, the trace is of {}", path, table->shape().describe(),
               shape_of(first).describe());
      } else {
        table = std::make_unique<TransitionTable>(shape_of(first));  // built from the traces (in-sample)
        table_in_sample = true;
      }
    }
    std::vector<size_t> grid = a.budgets.empty() ? default_slot_grid(first) : a.budgets;
    for (const std::string& p : policies)
      for (const std::string& pr : predictors) {
        SimPredictor sp = SimPredictor::None;
        if (pr == "gate")
          sp = SimPredictor::Gate;
        else if (pr == "transition")
          sp = SimPredictor::Transition;
        else if (pr != "none")
          fail("--predictors: unknown predictor '{}' (none, gate, transition)", pr);
        if (p == "belady" && sp != SimPredictor::None) continue;
        for (size_t slots : grid) {
          CacheSimConfig c{p, slots, sp, a.margin};
          (sp == SimPredictor::Transition && table_in_sample ? transition_configs : configs).push_back(c);
        }
      }
    sim = std::make_unique<CacheSimulator>(first, configs, read_bytes_of(first), table.get());
    mm = memory_model(first, a);
  }

  const auto t0 = std::chrono::steady_clock::now();
  uint64_t tokens = 0, gen_tokens = 0;
  auto pass = [&](bool analyse, CacheSimulator* s) {
    for (size_t i = 0; i < a.traces.size(); ++i) {
      TraceReader r(a.traces[i]);
      if (analyse) analysis.begin_trace(r.header(), a.traces[i]);
      else if (r.header().moe_layers != first.moe_layers)
        fail("analyze: {} is not a trace of the first trace's model", a.traces[i]);
      TraceStep step;
      while (r.next(step)) {
        if (analyse) {
          analysis.sync_inputs(r.header());
          analysis.add_step(step);
          tokens += step.n_tokens();
          bool gen = step.n_tokens() > 0;
          for (const TraceToken& t : step.tokens) gen = gen && (t.flags & TraceToken::kGenerated);
          if (gen) gen_tokens += step.n_tokens();
          if (table_in_sample) {
            for (size_t t = 0; t < step.n_tokens(); ++t)
              for (int m = 0; m < first.n_moe(); ++m) {
                const uint32_t b = step.begin(t, m), e = step.end(t, m);
                table->add_usage(first.moe_layers[m], step.experts.data() + b, static_cast<int>(e - b));
                if (m + 1 < first.n_moe())
                  table->add_transition(first.moe_layers[m], step.experts.data() + b, static_cast<int>(e - b),
                                        step.experts.data() + step.begin(t, m + 1), static_cast<int>(step.end(t, m + 1) - step.begin(t, m + 1)));
              }
          }
        }
        if (s) s->add_step(step);
        if (!a.quiet && r.steps_read() % 512 == 0) {
          const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          std::fprintf(stderr, "\ranalyze: %s: %llu tokens (%.1f s)   ", a.traces[i].c_str(),
                       static_cast<unsigned long long>(r.tokens_read()), secs);
        }
      }
      if (analyse) analysis.end_trace(r.steps_read(), r.tokens_read());
    }
  };
  pass(true, sim.get());
  if (!transition_configs.empty()) {
    // The transition table was built from these traces in the first pass: replay with it now.
    sim_transition = std::make_unique<CacheSimulator>(first, transition_configs, read_bytes_of(first), table.get());
    pass(false, sim_transition.get());
  }
  if (!a.quiet) std::fprintf(stderr, "\r%60s\r", "");
  json result = analysis.finish();
  if (a.simulate) {
    std::vector<CacheSimResult> results = sim->finish();
    if (sim_transition)
      for (CacheSimResult& r : sim_transition->finish()) results.push_back(std::move(r));
    std::sort(results.begin(), results.end(), [](const CacheSimResult& x, const CacheSimResult& y) {
      return std::tie(x.config.policy, x.config.predictor, x.config.slots) < std::tie(y.config.policy, y.config.predictor, y.config.slots);
    });
    json s;
    const bool generated = gen_tokens > 0;
    s["counted"] = generated ? "generated" : "all";
    s["slot_bytes"] = mm.slot;
    s["memory_from"] = mm.known ? json(mm.source) : json(nullptr);
    s["n_ctx"] = mm.n_ctx;
    s["target_hit_rate"] = a.target;
    s["transition_table"] = table ? json(table_in_sample ? "built from the traces (in-sample)" : "loaded") : json(nullptr);
    // The routing policy the run was recorded under: the trace holds the routing it produced (empty slots
    // left out), so demand replays are exact; the gate predictor's hints under a policy follow the policy,
    // which the lookahead rankings (the gate alone) do not record.
    s["routing_policy"] = first.json.contains("routing") && first.json["routing"].contains("policy")
                              ? first.json["routing"]["policy"] : json(nullptr);
    json rs = json::array();
    for (const CacheSimResult& r : results) rs.push_back(result_json(r, mm, tokens, gen_tokens));
    s["results"] = rs;
    s["recommendation"] = recommend(rs, generated, a.target, mm);
    result["simulation"] = s;
  }
  print_summary(result);
  if (!a.json_out.empty()) {
    const std::string body = result.dump(1) + "\n";
    write_file_atomic(a.json_out, body.data(), body.size());
    std::fprintf(stderr, "analyze: wrote %s\n", a.json_out.c_str());
  }
  if (!a.html.empty()) {
    const std::string body = analysis_report_html(result);
    write_file_atomic(a.html, body.data(), body.size());
    std::fprintf(stderr, "analyze: wrote %s\n", a.html.c_str());
  }
  return 0;
}

}  // namespace

void register_analyze(CLI::App& app, CommandSet& cmds) {
  auto a = std::make_shared<AnalyzeArgs>();
  CLI::App* sub = app.add_subcommand("analyze", "Load, specialisation, locality, super experts and cache simulation from routing traces");
  sub->add_option("traces", a->traces, "Trace files (moe trace, or --trace on run/chat/perplexity), all of one model")->required();
  sub->add_option("-m,--model", a->model, "The traced model: token texts, token classes, exact --mem numbers");
  sub->add_option("--html", a->html, "Write a self-contained HTML report (summary, then plots)");
  sub->add_option("--json", a->json_out, "Write every number as JSON");
  sub->add_option("--class", a->classes, "A token class for nPMI, NAME=REGEX over the token's text (repeatable; needs -m)");
  sub->add_option("--segments", a->segments, "SRP windows and SCH look-aheads (default 4 16 64 256)")->delimiter(',')->check(CLI::Range(1, 1 << 20));
  sub->add_option("--min-count", a->min_count, "Tokens rarer than this get no nPMI ranking (default 5)")->check(CLI::Range(1, 1 << 30));
  sub->add_option("--top-tokens", a->top_tokens, "Top tokens listed per expert (default 8)")->check(CLI::Range(0, 1000));
  sub->add_flag("--simulate", a->simulate, "Replay the traces against the expert store's cache policies and Belady's");
  sub->add_option("--policies", a->policies, "With --simulate: policies (default: distance,lru,lfu,arc,layer,belady)");
  sub->add_option("--predictors", a->predictors,
                  "With --simulate: none, gate (needs a trace with lookahead), transition (default: none, transition, and "
                  "gate when recorded)");
  sub->add_option("--budgets", a->budgets, "With --simulate: pool sizes in experts (default: a grid from k to all)")
      ->delimiter(',')->check(CLI::Range(size_t{1}, size_t{1} << 30));
  sub->add_option("--margin", a->margin, "With --simulate: prefetch margin of the predictors (default 2)")->check(CLI::Range(0, 1024));
  sub->add_option("--transitions", a->transitions,
                  "With --simulate: the transition table (default: MODEL.transitions.gguf, else built from the traces)");
  sub->add_option("--target-hit-rate", a->target, "With --simulate: the hit rate to recommend a --mem for (default 0.9)")
      ->check(CLI::Range(0.0, 1.0));
  sub->add_option("-c,--ctx", a->ctx, "With -m: the context the recommended --mem is sized for (default: the trace's)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  sub->add_flag("-q,--quiet", a->quiet, "No progress line");
  cmds.add(sub, [a] { return run_analyze(*a); });
}

}  // namespace moe::cli
