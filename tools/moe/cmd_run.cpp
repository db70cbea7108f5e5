// `moe run`: generate a continuation. The prompt is token ids (--tokens FILE) or text (-p TEXT), the
// output streams as it is generated, and timing statistics go to stderr at the end.
#include <chrono>
#include <cstdio>
#include <fstream>

#include "base/error.h"
#include "base/thread_pool.h"
#include "cli_util.h"
#include "commands.h"
#include "model/weights.h"
#include "moe/expert_store.h"
#include "runtime/sampler.h"
#include "runtime/session.h"
#include "tokenizer/tokenizer.h"

namespace moe::cli {

namespace {

struct RunArgs {
  std::string model, tokens, prompt, ids_out;
  std::vector<std::string> stops;
  int n_predict = 64;
  int threads = 0;
  int64_t n_ctx = 0;
  float temp = 0.8f;
  int top_k = 40;
  float top_p = 0.95f;
  uint64_t seed = 0;
  bool ignore_eos = false;
  bool llama_compat = false;
};

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

int run_run(const RunArgs& a) {
  if (a.tokens.empty() == a.prompt.empty()) fail("run: give exactly one of --tokens FILE or -p TEXT");
  auto model = Model::load(a.model);
  const ModelSpec& s = model->spec();
  std::unique_ptr<Tokenizer> tok;
  if (model->file().has("tokenizer.ggml.model")) tok = Tokenizer::from_gguf(model->file());

  std::vector<int32_t> prompt;
  if (!a.tokens.empty()) {
    prompt = read_token_file(a.tokens);
  } else {
    if (!tok) fail("{}: -p needs a tokenizer, and this model has no tokenizer.ggml.model", a.model);
    prompt = tok->encode(a.prompt, /*add_bos=*/true, /*parse_special=*/true);
    if (prompt.empty()) fail("run: the prompt is empty after tokenization");
  }
  for (int32_t id : prompt)
    if (id < 0 || id >= s.n_vocab) fail("run: prompt token id {} is outside the vocabulary [0, {})", id, s.n_vocab);

  int64_t n_ctx = a.n_ctx > 0 ? a.n_ctx : std::min<int64_t>(std::max<int64_t>(s.n_ctx_train, 512), 4096);
  n_ctx = std::max<int64_t>(n_ctx, static_cast<int64_t>(prompt.size()) + a.n_predict);
  if (static_cast<int64_t>(prompt.size()) >= n_ctx)
    fail("run: the prompt has {} tokens, more than the context size {}", prompt.size(), n_ctx);

  ThreadPool pool(resolve_threads(a.threads));
  ResidentExpertStore store(*model);
  ForwardOptions fopts;
  fopts.llama_compat_attention = a.llama_compat;
  Session session(*model, store, n_ctx, fopts);
  Sampler sampler({a.temp, a.top_k, a.top_p, a.seed});
  std::unique_ptr<StreamDecoder> stream;
  const bool text_out = tok && a.tokens.empty();
  if (text_out) stream = std::make_unique<StreamDecoder>(*tok);

  const auto t0 = Clock::now();
  const std::vector<float>* logits = &session.eval(prompt, pool);
  const double t_prompt = seconds_since(t0);
  std::vector<int32_t> generated;
  std::string text;
  const auto t1 = Clock::now();
  double ttft = 0.0;
  for (int i = 0; i < a.n_predict; ++i) {
    const int32_t next = sampler.sample(logits->data(), s.n_vocab);
    if (i == 0) ttft = seconds_since(t0);
    if (tok && !a.ignore_eos && tok->is_eog(next)) break;
    generated.push_back(next);
    if (text_out) {
      std::string piece = stream->push(next);
      text += piece;
      std::fputs(piece.c_str(), stdout);
      std::fflush(stdout);
      bool stop = false;
      for (const auto& st : a.stops)
        if (!st.empty() && text.find(st) != std::string::npos) stop = true;
      if (stop) break;
    } else {
      std::printf("%d\n", next);
      std::fflush(stdout);
    }
    if (i + 1 == a.n_predict) break;
    if (session.n_past() >= session.n_ctx()) break;
    logits = &session.eval({next}, pool);
  }
  const double t_gen = seconds_since(t1);
  if (text_out) {
    std::fputs(stream->flush().c_str(), stdout);
    std::fputs("\n", stdout);
  }
  if (!a.ids_out.empty()) {
    std::string body;
    for (int32_t id : generated) body += std::to_string(id) + "\n";
    write_file_atomic(a.ids_out, body.data(), body.size());
  }
  const double n_gen_steps = generated.size() > 1 ? static_cast<double>(generated.size() - 1) : 0.0;
  std::fprintf(stderr,
               "\nmoe run: prompt %zu tokens (%.1f tok/s), generated %zu tokens (%.2f tok/s), time to first token "
               "%.1f ms, %d threads\n",
               prompt.size(), prompt.size() / std::max(t_prompt, 1e-9), generated.size(),
               n_gen_steps / std::max(t_gen, 1e-9), ttft * 1000.0, pool.size());
  return 0;
}

}  // namespace

void register_run(CLI::App& app, CommandSet& cmds) {
  auto args = std::make_shared<RunArgs>();
  CLI::App* sub = app.add_subcommand("run", "Generate a continuation of a prompt");
  sub->add_option("-m,--model", args->model, "GGUF model file")->required();
  sub->add_option("--tokens", args->tokens, "Prompt as a file of token ids");
  sub->add_option("-p,--prompt", args->prompt, "Prompt text");
  sub->add_option("-n,--n-predict", args->n_predict, "Tokens to generate")->check(CLI::Range(0, 1 << 20));
  sub->add_option("--ids-out", args->ids_out, "Write generated ids here, one per line");
  sub->add_option("-t,--threads", args->threads, "Threads (0 = all cores)")->check(CLI::Range(0, 1024));
  sub->add_option("-c,--ctx-size", args->n_ctx, "Context size (default: min(train ctx, 4096))")->check(CLI::Range(0, 1 << 24));
  sub->add_option("--temp", args->temp, "Temperature (0 = greedy)")->check(CLI::Range(0.0, 100.0));
  sub->add_option("--top-k", args->top_k, "Top-k (0 = off)")->check(CLI::Range(0, 1 << 24));
  sub->add_option("--top-p", args->top_p, "Top-p (1 = off)")->check(CLI::Range(0.0, 1.0));
  sub->add_option("--seed", args->seed, "Sampling seed");
  sub->add_option("--stop", args->stops, "Stop when this string is generated (repeatable)");
  sub->add_flag("--llama-compat", args->llama_compat, "Reproduce llama.cpp's fp16 small-batch attention numerics exactly");
  sub->add_flag("--ignore-eos", args->ignore_eos, "Keep generating past end-of-generation tokens");
  cmds.add(sub, [args] { return run_run(*args); });
}

}  // namespace moe::cli
