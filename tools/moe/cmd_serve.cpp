// `moe serve`: the OpenAI-compatible server (src/server/) over continuous batching (runtime/batch_scheduler).
// Binds to loopback unless --host says otherwise. SIGINT/SIGTERM stop it: open streams end, queued and
// running sequences are cancelled.
#include <signal.h>
#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <cstdio>
#include <thread>

#include "base/error.h"
#include "base/thread_pool.h"
#include "cli_util.h"
#include "commands.h"
#include "engine_flags.h"
#include "generation.h"
#include "runtime/batch_scheduler.h"
#include "server/live_stats.h"
#include "server/server.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace moe::cli {

namespace {

struct ServeArgs {
  std::string model, host = "127.0.0.1", api_key, alias, chat_template, schedule = "fcfs";
  int port = 8080;
  int parallel = 4;
  int slots = 0;  // 0 = parallel
  int64_t n_ctx = 0;
  int64_t step_tokens = 128;
  int queue = 64;
  int max_wait = 4;
  int max_experts = 0;  // experts per token a request's routing policy may use; 0 = the model's k, -1 = all
  int threads = 0;
  int http_threads = 0;
  bool log_requests = false;
  EngineFlags engine;
};

std::string model_id_for(const std::string& path) {
  std::string base = path.substr(path.find_last_of('/') + 1);
  if (base.size() > 5 && base.compare(base.size() - 5, 5, ".gguf") == 0) base.resize(base.size() - 5);
  return base;
}

// SIGINT/SIGTERM write a byte to this pipe (any thread may take the signal: libraries start threads of
// their own before main), and a watcher thread stops the server when it reads one.
int g_stop_pipe[2] = {-1, -1};

void on_stop_signal(int) {
  const char c = 1;
  [[maybe_unused]] const ssize_t n = write(g_stop_pipe[1], &c, 1);
}

int run_serve(const ServeArgs& a) {
  if (pipe(g_stop_pipe) != 0) fail("serve: cannot create a pipe for signals");
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  const int slots = a.slots > 0 ? a.slots : a.parallel;
  if (a.parallel < 1) fail("serve: --parallel {} must be at least 1", a.parallel);
  if (slots < a.parallel) fail("serve: --slots {} is fewer than --parallel {}", slots, a.parallel);
  if (a.step_tokens < 64 || a.step_tokens % 64 != 0)
    fail("serve: --step-tokens {} must be a positive multiple of 64 (prompt chunks are whole 64-token blocks)",
         a.step_tokens);

  auto header = load_model_for_generation(a.model);
  const ModelSpec spec = header->spec();
  if (!header->file().has("tokenizer.ggml.model"))
    fail("{}: serving needs a tokenizer, and this model has no tokenizer.ggml.model", a.model);
  auto tok = Tokenizer::from_gguf(header->file());
  ChatTemplate tmpl = ChatTemplate::None;
  if (!a.chat_template.empty()) {
    tmpl = detect_chat_template(a.chat_template);
    if (tmpl == ChatTemplate::None) fail("serve: --chat-template '{}' is not a template I recognise", a.chat_template);
  } else {
    tmpl = detect_chat_template(tok->chat_template());
    if (tmpl == ChatTemplate::None)
      std::fprintf(stderr,
                   "moe serve: warning: %s %s; chat messages are joined as plain text (--chat-template NAME picks a "
                   "format)\n",
                   a.model.c_str(),
                   tok->chat_template().empty() ? "has no chat template" : "has a chat template I do not recognise");
  }
  int64_t n_ctx = a.n_ctx;
  if (n_ctx <= 0) n_ctx = std::min<int64_t>(spec.n_ctx_train > 0 ? spec.n_ctx_train : 4096, 4096);
  header.reset();

  ThreadPool pool(resolve_threads(a.threads));
  // Every slot's KV cache and a step's rows (prompt chunk + decoded tokens) count against --mem.
  // Buffers and the expert pool are planned for the most experts per token a request may ask for.
  auto engine = open_engine(a.model, a.engine, n_ctx, a.step_tokens + a.parallel, a.max_experts, slots);
  server::LiveExpertLoad load(engine->model().spec());
  SchedulerOptions so;
  so.slots = slots;
  so.parallel = a.parallel;
  so.n_ctx = n_ctx;
  so.step_tokens = a.step_tokens;
  so.max_queue = static_cast<size_t>(a.queue);
  so.policy = a.schedule == "expert" ? SchedulePolicy::ExpertAware : SchedulePolicy::Fcfs;
  so.max_wait = a.max_wait;
  // What open_engine planned for: the routing flags' policy and --max-experts, whichever is more.
  const int flags_max = policy_max_experts(routing_policy(a.engine));
  so.max_experts = a.max_experts < 0 || flags_max < 0 ? -1 : std::max(a.max_experts, flags_max);
  auto sched = std::make_unique<BatchScheduler>(*engine, tok.get(), forward_options(a.engine, *engine, false), pool,
                                                so, std::vector<ForwardObserver*>{&load});
  server::ServerOptions sv;
  sv.host = a.host;
  sv.port = a.port;
  sv.api_key = a.api_key;
  sv.model_id = a.alias.empty() ? model_id_for(a.model) : a.alias;
  sv.chat_template = tmpl;
  sv.http_threads = a.http_threads;
  sv.log_requests = a.log_requests;
  server::Server srv(*sched, *engine, *tok, load, sv);
  const int port = srv.bind();
  std::fprintf(stderr,
               "moe serve: http://%s:%d  model %s (%s), %d slots of %lld tokens, %d per step, %s scheduling, "
               "template %s, %d threads; %s\n",
               a.host.c_str(), port, sv.model_id.c_str(), engine->plan().describe().c_str(), slots,
               static_cast<long long>(n_ctx), a.parallel, schedule_policy_name(so.policy), chat_template_name(tmpl),
               pool.size(), a.api_key.empty() ? "no API key" : "API key required");
  std::fflush(stderr);

  std::thread waiter([&] {
    char c = 0;
    while (read(g_stop_pipe[0], &c, 1) < 0 && errno == EINTR) {
    }
    srv.stop();
  });
  srv.listen();
  // listen() also ends when it fails; wake the waiter if no signal did.
  on_stop_signal(0);
  waiter.join();
  sched.reset();  // cancels what is left before the server's sinks go
  std::fprintf(stderr, "moe serve: stopped\n");
  return 0;
}

}  // namespace

void register_serve(CLI::App& app, CommandSet& cmds) {
  auto args = std::make_shared<ServeArgs>();
  CLI::App* sub = app.add_subcommand("serve", "OpenAI-compatible HTTP server with continuous batching and a live expert view");
  sub->add_option("-m,--model", args->model, "GGUF model file (default: the bundled model, see README)");
  sub->add_option("--host", args->host, "Address to listen on (default 127.0.0.1: this machine only)");
  sub->add_option("--port", args->port, "Port (0 = any free port, printed at start)")->check(CLI::Range(0, 65535));
  sub->add_option("--api-key", args->api_key, "Require 'Authorization: Bearer KEY' on /v1/* and /metrics");
  sub->add_option("--alias", args->alias, "Model id in the API (default: the file name without .gguf)");
  sub->add_option("--parallel", args->parallel, "Most sequences decoded together in one forward step")
      ->check(CLI::Range(1, 256));
  sub->add_option("--slots", args->slots, "Sequences generating at once, each with its own KV cache (default: --parallel)")
      ->check(CLI::Range(0, 1024));
  sub->add_option("-c,--ctx-size", args->n_ctx, "Context per slot (default: min(train ctx, 4096))")
      ->check(CLI::Range(0, 1 << 24));
  sub->add_option("--step-tokens", args->step_tokens,
                  "Prompt tokens evaluated per step beside the decoded ones (a multiple of 64)")
      ->check(CLI::Range(64, 1 << 20));
  sub->add_option("--queue", args->queue, "Sequences that may wait for a slot; beyond that requests get 429")
      ->check(CLI::Range(0, 1 << 20));
  sub->add_option("--schedule", args->schedule,
                  "Which decoding sequences share a step when more are ready than --parallel: fcfs (round robin) or "
                  "expert (those whose predicted experts overlap most)")
      ->check(CLI::IsMember({"fcfs", "expert"}));
  sub->add_option("--max-wait", args->max_wait, "--schedule expert: steps a sequence may be passed over")
      ->check(CLI::Range(1, 1 << 20));
  sub->add_option("--max-experts", args->max_experts,
                  "Most experts per token a request's routing policy (its 'moe' object) may select: buffers and the "
                  "expert pool are planned for it; 0 = the model's k (or the routing flags'), -1 = every expert")
      ->check(CLI::Range(-1, 1 << 16));
  sub->add_option("-t,--threads", args->threads, "Compute threads (0 = all cores)")->check(CLI::Range(0, 1024));
  sub->add_option("--http-threads", args->http_threads, "HTTP worker threads (0 = slots + queue + 8)")
      ->check(CLI::Range(0, 1 << 16));
  sub->add_option("--chat-template", args->chat_template, "Chat template family (default: from the model)");
  sub->add_flag("--log-requests", args->log_requests, "One line per request on stderr");
  add_engine_flags(sub, args->engine);
  cmds.add(sub, [args] {
    if (args->model.empty()) args->model = default_model_path();
    return run_serve(*args);
  });
}

}  // namespace moe::cli
