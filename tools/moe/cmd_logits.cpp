// `moe logits -m MODEL --tokens FILE -o OUT.f32 [-t N]`: one batched forward pass from position 0;
// float32 logits for every position, row-major [n_tokens][n_vocab]. The logits of each batch of -b tokens
// go to the output file as soon as they are computed, so the command holds one batch's [b][n_vocab]
// floats, never the whole [n_tokens][n_vocab] (which for long inputs is larger than the model).
#include <chrono>
#include <cstdio>

#include "base/thread_pool.h"
#include "cli_util.h"
#include "engine_flags.h"
#include "commands.h"
#include "model/weights.h"
#include "moe/expert_store.h"
#include "runtime/session.h"

namespace moe::cli {

namespace {

struct LogitsArgs {
  std::string model, tokens, out;
  int threads = 0;
  int64_t batch = 512;
  bool llama_compat = false;
  EngineFlags engine;
};

int run_logits(const LogitsArgs& a) {
  std::vector<int32_t> ids = read_token_file(a.tokens);
  ThreadPool pool(resolve_threads(a.threads));
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t batch = std::min(n, a.batch);
  auto engine = open_engine(a.model, a.engine, n, batch);
  Session session(engine->model(), engine->store(), n, forward_options(a.engine, *engine, a.llama_compat));
  AtomicFileWriter out(a.out);
  const auto t0 = std::chrono::steady_clock::now();
  // Batch by batch, exactly as one eval over all tokens would split them (same numbers).
  for (int64_t b = 0; b < n; b += batch) {
    const std::vector<int32_t> part(ids.begin() + b, ids.begin() + std::min(n, b + batch));
    const std::vector<float>& logits = session.eval(part, pool, /*all_logits=*/true, batch);
    out.write(logits.data(), logits.size() * sizeof(float));
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  report_engine_stats(a.engine, *engine, &session.forward().prediction_stats(), ids.size(), secs);
  out.commit();
  std::fprintf(stderr, "moe logits: %zu tokens x %lld vocab -> %s\n", ids.size(), (long long)engine->model().spec().n_vocab,
               a.out.c_str());
  return 0;
}

}  // namespace

void register_logits(CLI::App& app, CommandSet& cmds) {
  auto args = std::make_shared<LogitsArgs>();
  CLI::App* sub = app.add_subcommand("logits", "Write the logits of one batched forward pass");
  sub->add_option("-m,--model", args->model, "GGUF model file")->required();
  sub->add_option("--tokens", args->tokens, "File of whitespace-separated token ids")->required();
  sub->add_option("-o,--output", args->out, "Output file (float32, [n_tokens][n_vocab])")->required();
  sub->add_option("-t,--threads", args->threads, "Threads (0 = all cores)")->check(CLI::Range(0, 1024));
  sub->add_option("-b,--batch", args->batch,
                  "Tokens per forward batch; their logits are written as each batch completes, so memory holds "
                  "one batch's [b][n_vocab] floats")->check(CLI::Range(1, 1 << 20));
  sub->add_flag("--llama-compat", args->llama_compat, "Reproduce llama.cpp's fp16 small-batch attention numerics exactly");
  add_engine_flags(sub, args->engine);
  cmds.add(sub, [args] { return run_logits(*args); });
}

}  // namespace moe::cli
