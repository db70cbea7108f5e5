// `moe run`: generate a continuation. The prompt is token ids (--tokens FILE) or text (-p TEXT or
// -f FILE). Text prompts stream their continuation as text (the prompt itself is not echoed); token
// prompts print one generated id per line. Generation stops at an end-of-generation token (unless
// --ignore-eos), after -n tokens, at a --stop string (which is not printed) or when the context is
// full. Timing statistics go to stderr at the end.
//
// Input rules: an empty prompt is an error; a prompt that does not fit the context is an error that
// names both sizes; a prompt that is not valid UTF-8 is accepted with a warning and tokenized the
// way the tokenizer defines (byte-level BPE: each malformed byte becomes U+FFFD; SentencePiece: each
// malformed byte becomes its <0xNN> byte token).
#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "base/error.h"
#include "base/thread_pool.h"
#include "cli_util.h"
#include "commands.h"
#include "engine_flags.h"
#include "generation.h"
#include "model/weights.h"
#include "run_samples.h"
#include "runtime/remix.h"
#include "moe/expert_store.h"
#include "runtime/sampler.h"
#include "runtime/session.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "trace_flags.h"

namespace moe::cli {

namespace {

struct RunArgs {
  std::string model, tokens, prompt, prompt_file, ids_out;
  bool have_prompt = false;  // -p given (possibly empty)
  std::vector<std::string> stops;
  int n_predict = 64;
  int threads = 0;
  int64_t n_ctx = 0;
  SamplerParams sampling;
  bool ignore_eos = false;
  bool llama_compat = false;
  EngineFlags engine;
  TraceFlags trace;
  // Decoding strategies (docs/routing-lab.md): SCMoE self-contrast, and DES-style samples with one k each.
  bool scmoe = false;
  ScmoeParams scmoe_params;
  SamplesRequest samples;
};

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

int run_run(RunArgs& a) {
  const int n_sources = int(!a.tokens.empty()) + int(a.have_prompt) + int(!a.prompt_file.empty());
  if (n_sources != 1) fail("run: give exactly one of -p TEXT, -f FILE or --tokens FILE");

  // Text prompts are checked before the (possibly slow) model load.
  std::string text;
  if (a.have_prompt) text = a.prompt;
  if (!a.prompt_file.empty()) text = read_text_file(a.prompt_file);
  const bool text_prompt = a.tokens.empty();
  if (text_prompt && text.empty())
    fail("run: the prompt is empty{}", a.prompt_file.empty() ? "" : fmt::format(" ({} has no bytes)", a.prompt_file));
  std::vector<int32_t> prompt;
  if (!text_prompt) prompt = read_token_file(a.tokens);

  auto model = load_model_for_generation(a.model);
  const ModelSpec s = model->spec();  // a copy: `model` is only a header view, released below
  std::unique_ptr<Tokenizer> tok;
  if (model->file().has("tokenizer.ggml.model")) tok = Tokenizer::from_gguf(model->file());

  if (text_prompt) {
    if (!tok) fail("{}: a text prompt needs a tokenizer, and this model has no tokenizer.ggml.model", a.model);
    if (!tok::utf8_is_valid(text))
      std::fprintf(stderr,
                   "moe run: warning: the prompt is not valid UTF-8; malformed bytes are tokenized as %s\n",
                   tok->model_type() == "llama" ? "byte tokens" : "U+FFFD");
    prompt = tok->encode(text, /*add_bos=*/true, /*parse_special=*/true);
    if (prompt.empty()) fail("run: the prompt is empty after tokenization");
  }
  for (int32_t id : prompt)
    if (id < 0 || id >= s.n_vocab) fail("run: prompt token id {} is outside the vocabulary [0, {})", id, s.n_vocab);

  // -c is taken as given. Without it the context is sized for the prompt plus -n (at least 512,
  // by default no more than 4096 beyond that need), but never beyond the model's training context.
  const int64_t n_prompt = static_cast<int64_t>(prompt.size());
  int64_t n_ctx = a.n_ctx;
  if (n_ctx <= 0) {
    n_ctx = std::max<int64_t>({512, std::min<int64_t>(s.n_ctx_train > 0 ? s.n_ctx_train : 4096, 4096),
                               n_prompt + a.n_predict});
    if (s.n_ctx_train > 0) n_ctx = std::min(n_ctx, std::max<int64_t>(s.n_ctx_train, 512));
  }
  if (a.n_ctx <= 0 && !a.engine.mem.empty()) {
    // Under --mem the KV cache shares the budget with the expert pool: a run never uses more context
    // than its prompt and -n, so the rest would only take memory from the experts.
    const int64_t need = n_prompt + std::max(a.n_predict, 1);
    if (need < n_ctx) {
      std::fprintf(stderr,
                   "moe run: --mem: a context of %lld tokens (the prompt and -n) instead of the default %lld, so the "
                   "KV cache leaves the rest of the budget to the experts; -c sets it\n",
                   static_cast<long long>(need), static_cast<long long>(n_ctx));
      n_ctx = need;
    }
  }
  if (n_prompt >= n_ctx)
    fail("run: the prompt has {} tokens but the context size is {} ({}); it must be smaller (pass a larger -c{})",
         n_prompt, n_ctx, a.n_ctx > 0 ? "-c" : "default", a.n_ctx > 0 ? "" : " or shorten the prompt");

  // The header model above only mapped the file; the engine now loads it under the memory budget.
  model.reset();
  if (a.scmoe) a.scmoe_params.check();
  if (a.scmoe && a.samples.n > 0) fail("run: --scmoe and --samples are separate decoding strategies; give one");
  const RoutingPolicy flag_policy = routing_policy(a.engine);
  if (a.samples.n > 0 && !flag_policy.remix_refs.empty()) fail("run: --samples cannot be combined with --remix");
  int k_list_max = 0;
  for (int k : a.samples.k_list) k_list_max = std::max(k_list_max, k);
  ThreadPool pool(resolve_threads(a.threads));
  const int64_t n_batch = std::min<int64_t>(512, std::max<int64_t>(n_prompt, 1));
  // SCMoE's weak pass is a second session with its own KV cache and buffers: reserved under --mem.
  std::vector<MemoryReservation> reserved;
  if (a.scmoe && !a.engine.mem.empty()) {
    const MemoryPlan p = plan_memory(a.model, engine_options(a.engine, n_ctx, n_batch, k_list_max));
    reserved.push_back({"SCMoE weak session", p.kv_bytes + p.buffer_bytes});
  }
  auto engine = open_engine(a.model, a.engine, n_ctx, n_batch, k_list_max, 1, std::move(reserved));
  ForwardOptions fo = forward_options(a.engine, *engine, a.llama_compat);
  Session session(engine->model(), engine->store(), n_ctx, fo);
  if (a.samples.n > 0 && !a.trace.path.empty()) fail("run: --trace records one generation; it cannot record --samples");
  if (a.samples.n > 0)
    return run_samples(*engine, session, tok.get(), prompt, a.sampling, a.n_predict, a.ignore_eos,
                       text_prompt ? a.stops : std::vector<std::string>{}, a.samples, pool);
  Sampler sampler(a.sampling);
  auto trace = CliTrace::open(a.trace, *engine, a.engine, n_ctx, 512, "moe run");
  if (trace) {
    trace->attach(session);
    trace->begin_input(!a.prompt_file.empty() ? a.prompt_file : a.tokens, "prompt");
  }
  // SCMoE's weak pass: its own session (own KV cache) on the same engine; not counted in the statistics.
  std::unique_ptr<Session> weak;
  if (a.scmoe) {
    ForwardOptions wo = fo;
    wo.routing = scmoe_weak_policy(fo.routing, a.scmoe_params.rank);
    wo.routing_use = nullptr;
    wo.expert_use = nullptr;
    weak = std::make_unique<Session>(engine->model(), engine->store(), n_ctx, wo);
  }

  const auto t0 = Clock::now();
  const std::vector<float>* prompt_logits = nullptr;
  if (!flag_policy.remix_refs.empty()) {
    const RemixReferences refs = RemixReferences::read(flag_policy.remix_refs);
    if (!refs.check_model(engine->model(), flag_policy.remix_refs))
      std::fprintf(stderr, "moe run: warning: %s was built from another checkpoint of this model's shape\n",
                   flag_policy.remix_refs.c_str());
    RemixNeighbors nb;
    prompt_logits = &eval_with_remix(session, prompt, pool, refs, flag_policy.remix_layers,
                                     flag_policy.remix_neighbors, &nb);
    std::string list;
    for (size_t i = 0; i < nb.ids.size(); ++i)
      list += fmt::format("{}{} (cos {:.3f}, weight {:.2f})", i ? ", " : "", refs.sources[static_cast<size_t>(nb.ids[i])],
                          nb.cosine[i], nb.weights[i]);
    std::fprintf(stderr, "moe run: remix: last %d MoE layers from %s\n", flag_policy.remix_layers, list.c_str());
  } else {
    prompt_logits = &session.eval(prompt, pool);
  }
  const std::vector<float>& logits = *prompt_logits;
  if (trace) trace->set_generated(true);
  const std::vector<float>* weak_logits = weak ? &weak->eval(prompt, pool) : nullptr;
  const double t_prompt = seconds_since(t0);
  // Statistics describe generation: drop what the prompt pass counted.
  engine->reset_stats();
  session.forward().reset_prediction_stats();

  GenerateParams gp;
  gp.n_predict = a.n_predict;
  gp.stops = a.stops;
  gp.ignore_eos = a.ignore_eos;
  if (weak) {
    gp.contrast = weak.get();
    gp.contrast_logits = weak_logits;
    gp.scmoe = a.scmoe_params;
  }
  // Text prompts print text; token prompts print one id per line.
  std::function<void(std::string_view)> emit;
  if (text_prompt) {
    emit = [](std::string_view piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    };
  }
  if (!text_prompt) {
    gp.stops.clear();  // stop strings apply to text output only
    gp.on_token = [](int32_t id) {
      std::printf("%d\n", id);
      std::fflush(stdout);
    };
  }
  const GenerateResult r = generate(session, pool, sampler, tok.get(), logits, gp, emit, nullptr);
  // Text output: the statistics below start on a line of their own (ids always end with a newline).
  if (text_prompt) end_open_line(r.text);
  std::fflush(stdout);
  if (r.reason == StopReason::ContextFull)
    std::fprintf(stderr, "moe run: the context is full (%lld tokens); generation stopped\n",
                 static_cast<long long>(session.n_ctx()));
  if (!a.ids_out.empty()) {
    std::string body;
    for (int32_t id : r.ids) body += std::to_string(id) + "\n";
    write_file_atomic(a.ids_out, body.data(), body.size());
  }
  // Generation speed counts the steps after the first token (the first comes from the prompt pass).
  const double t_gen = std::max(r.seconds - r.first_token_seconds, 1e-9);
  const double n_gen_steps = r.ids.size() > 1 ? static_cast<double>(r.ids.size() - 1) : 0.0;
  std::fprintf(stderr,
               "moe run: prompt %lld tokens (%.1f tok/s), generated %zu tokens (%.2f tok/s), time to first token "
               "%.1f ms, stopped by %s, %d threads\n",
               static_cast<long long>(n_prompt), n_prompt / std::max(t_prompt, 1e-9), r.ids.size(),
               n_gen_steps / t_gen, (t_prompt + r.first_token_seconds) * 1000.0, stop_reason_name(r.reason),
               pool.size());
  report_engine_stats(a.engine, *engine, &session.forward().prediction_stats(), r.ids.size(), r.seconds);
  if (trace) trace->finish();
  return 0;
}

}  // namespace

void register_run(CLI::App& app, CommandSet& cmds) {
  auto args = std::make_shared<RunArgs>();
  CLI::App* sub = app.add_subcommand("run", "Generate a continuation of a prompt");
  sub->add_option("-m,--model", args->model, "GGUF model file (default: the bundled model, see README)");
  sub->add_option("--tokens", args->tokens, "Prompt as a file of token ids");
  sub->add_option("-p,--prompt", args->prompt, "Prompt text");
  sub->add_option("-f,--file", args->prompt_file, "Read the prompt text from this file");
  sub->add_option("-n,--n-predict", args->n_predict, "Tokens to generate")->check(CLI::Range(0, 1 << 20));
  sub->add_option("--ids-out", args->ids_out, "Write generated ids here, one per line");
  sub->add_option("-t,--threads", args->threads, "Threads (0 = all cores)")->check(CLI::Range(0, 1024));
  sub->add_option("-c,--ctx-size", args->n_ctx, "Context size (default: prompt + n, at least min(train ctx, 4096), at most train ctx; with --mem, "
                  "prompt + n)")
      ->check(CLI::Range(0, 1 << 24));
  add_sampling_flags(sub, args->sampling);
  sub->add_option("--stop", args->stops, "Stop before this string would be printed (repeatable)");
  sub->add_flag("--llama-compat", args->llama_compat, "Reproduce llama.cpp's fp16 small-batch attention numerics exactly");
  sub->add_flag("--ignore-eos", args->ignore_eos, "Keep generating past end-of-generation tokens");
  add_engine_flags(sub, args->engine);
  add_trace_flags(sub, args->trace);
  add_remix_flags(sub, args->engine.routing);
  const std::string g = "Decoding strategies (docs/routing-lab.md)";
  sub->add_flag("--scmoe", args->scmoe,
                "SCMoE self-contrast decoding: contrast the normal pass with a weak pass (one expert alone, by router "
                "rank), each with its own KV cache")
      ->group(g);
  sub->add_option("--scmoe-alpha", args->scmoe_params.alpha, "SCMoE plausibility cut: keep tokens with p >= alpha * max p "
                                                             "(default 0.1)")
      ->group(g);
  sub->add_option("--scmoe-beta", args->scmoe_params.beta, "SCMoE contrast strength (default 0.5)")->group(g);
  sub->add_option("--scmoe-rank", args->scmoe_params.rank,
                  "SCMoE weak expert's router rank, counted from 1 = the best (default 2, the paper's r = 2)")
      ->group(g);
  add_samples_flags(sub, args->samples, g);
  cmds.add(sub, [args, sub] {
    if (args->model.empty()) args->model = default_model_path();
    args->have_prompt = sub->count("--prompt") > 0;  // -p "" is an (empty) prompt, not a missing one
    if ((sub->count("--scmoe-alpha") || sub->count("--scmoe-beta") || sub->count("--scmoe-rank")) && !args->scmoe)
      fail("run: --scmoe-alpha, --scmoe-beta and --scmoe-rank need --scmoe");
    return run_run(*args);
  });
}

}  // namespace moe::cli
