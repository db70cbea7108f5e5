// `moe trace`: record a routing trace of text or token files, and print traces as text.
//
//   moe trace -m MODEL (-f TEXT... | --tokens FILE...) [--label NAME...] -o FILE.trace
//   moe trace --dump FILE.trace [--csv | --jsonl]
//
// Each input is evaluated in one batched pass from position 0 (as `moe logits` does), as its own
// sequence; an input longer than -c is cut into windows of -c tokens, each its own sequence from
// position 0. Text files are tokenized as a whole (BOS as the model asks, special-token text kept as
// text). Inputs are the -f files in order, then the --tokens files; --label names them in that order
// (default: the file's name without its extension).
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "analysis/trace_dump.h"
#include "base/error.h"
#include "base/thread_pool.h"
#include "cli_util.h"
#include "commands.h"
#include "engine_flags.h"
#include "generation.h"
#include "trace_flags.h"
#include "tokenizer/tokenizer.h"

namespace moe::cli {

namespace {

struct TraceArgs {
  std::string model, out, dump;
  std::vector<std::string> files, token_files, labels;
  bool csv = false, jsonl = false;
  int64_t ctx = 0;
  int64_t batch = 0;
  int threads = 0;
  TraceFields fields;
  EngineFlags engine;
};

struct Input {
  std::string file, label;
  std::vector<int32_t> ids;
};

int run_dump(const TraceArgs& a) {
  if (a.csv && a.jsonl) fail("trace --dump: give at most one of --csv and --jsonl");
  TraceReader r(a.dump);
  if (a.csv)
    dump_trace_csv(r, stdout);
  else if (a.jsonl)
    dump_trace_jsonl(r, stdout);
  else
    dump_trace_summary(r, stdout);
  if (std::fflush(stdout) != 0) fail("trace --dump: write to stdout failed");
  return 0;
}

int run_trace(const TraceArgs& a) {
  if (a.out.empty()) fail("trace: -o FILE.trace is required (or --dump FILE to read one)");
  if (a.files.empty() && a.token_files.empty()) fail("trace: give the inputs: -f TEXT... or --tokens FILE...");
  if (a.csv || a.jsonl) fail("trace: --csv and --jsonl go with --dump");
  const size_t n_inputs = a.files.size() + a.token_files.size();
  if (!a.labels.empty() && a.labels.size() != n_inputs)
    fail("trace: --label given {} times for {} inputs (one per input, in order: -f files, then --tokens files)",
         a.labels.size(), n_inputs);

  auto header_model = load_model_for_generation(a.model);
  const ModelSpec spec = header_model->spec();
  std::vector<Input> inputs;
  std::unique_ptr<Tokenizer> tok;
  for (size_t i = 0; i < n_inputs; ++i) {
    Input in;
    in.file = i < a.files.size() ? a.files[i] : a.token_files[i - a.files.size()];
    in.label = a.labels.empty() ? std::filesystem::path(in.file).stem().string() : a.labels[i];
    if (i < a.files.size()) {
      if (!tok) {
        if (!header_model->file().has("tokenizer.ggml.model"))
          fail("{}: -f needs a tokenizer, and this model has none; give --tokens FILE", a.model);
        tok = Tokenizer::from_gguf(header_model->file());
      }
      in.ids = tok->encode(read_text_file(in.file), /*add_bos=*/true, /*parse_special=*/false);
    } else {
      in.ids = read_token_file(in.file);
    }
    if (in.ids.empty()) fail("{}: no tokens", in.file);
    for (int32_t id : in.ids)
      if (id < 0 || id >= spec.n_vocab) fail("{}: token id {} is outside the vocabulary [0, {})", in.file, id, spec.n_vocab);
    inputs.push_back(std::move(in));
  }
  // One pass per input (or window): the context holds the longest one.
  int64_t longest = 0;
  for (const Input& in : inputs) longest = std::max<int64_t>(longest, static_cast<int64_t>(in.ids.size()));
  const int64_t window = a.ctx > 0 ? a.ctx : longest;
  const int64_t batch = a.batch > 0 ? std::min(a.batch, window) : window;
  header_model.reset();

  ThreadPool pool(resolve_threads(a.threads));
  auto engine = open_engine(a.model, a.engine, window, batch);
  Session session(engine->model(), engine->store(), window, forward_options(a.engine, *engine, false));
  TraceFlags tf;
  tf.path = a.out;
  tf.fields = a.fields;
  auto trace = CliTrace::open(tf, *engine, a.engine, window, batch, "moe trace");
  trace->attach(session);
  const auto t0 = std::chrono::steady_clock::now();
  int32_t seq = 0;
  uint64_t done = 0, total = 0;
  for (const Input& in : inputs) total += in.ids.size();
  for (const Input& in : inputs) {
    trace->begin_input(in.file, in.label);
    for (size_t b = 0; b < in.ids.size(); b += static_cast<size_t>(window)) {
      const size_t e = std::min(in.ids.size(), b + static_cast<size_t>(window));
      session.reset();
      session.forward().set_seq_id(seq++);
      session.eval(std::vector<int32_t>(in.ids.begin() + static_cast<std::ptrdiff_t>(b),
                                        in.ids.begin() + static_cast<std::ptrdiff_t>(e)),
                   pool, /*all_logits=*/false, batch);
      done += e - b;
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::fprintf(stderr, "\rtrace: %s: %llu/%llu tokens (%.0f tok/s)   ", in.label.c_str(),
                   static_cast<unsigned long long>(done), static_cast<unsigned long long>(total), done / std::max(secs, 1e-9));
    }
  }
  std::fprintf(stderr, "\n");
  trace->finish();
  return 0;
}

}  // namespace

void register_trace(CLI::App& app, CommandSet& cmds) {
  auto a = std::make_shared<TraceArgs>();
  CLI::App* sub = app.add_subcommand("trace", "Record which experts every token uses (a routing trace), or print one");
  sub->add_option("-m,--model", a->model, "GGUF model file (default: the bundled model, see README)");
  sub->add_option("-f,--file", a->files, "Text files to trace (one input each)");
  sub->add_option("--tokens", a->token_files, "Token-id files to trace (one input each)");
  sub->add_option("--label", a->labels, "A label per input, in order (default: the file name without extension)");
  sub->add_option("-o,--output", a->out, "The trace file to write");
  sub->add_option("-c,--ctx", a->ctx, "Tokens per pass: longer inputs are cut into windows (default: the longest input)")
      ->check(CLI::Range(1, 1 << 24));
  sub->add_option("-b,--batch", a->batch, "Tokens per forward call within a pass (default: the whole pass)")
      ->check(CLI::Range(1, 1 << 24));
  sub->add_option("-t,--threads", a->threads, "Threads (0 = all cores)")->check(CLI::Range(0, 1024));
  sub->add_flag("--probs", a->fields.probs, "Also record the router's scores over all experts");
  sub->add_flag("--expert-stats", a->fields.expert_stats,
                "Also record each selected expert's output norm and max |output| (super experts, pruning)");
  sub->add_option("--lookahead", a->fields.lookahead,
                  "Also record the next MoE layer's top R experts as the gate predictor ranks them")
      ->check(CLI::Range(0, 255));
  sub->add_option("--dump", a->dump, "Print this trace (a summary; --csv or --jsonl for every token)");
  sub->add_flag("--csv", a->csv, "With --dump: one row per selected expert: seq,pos,token,layer,rank,expert,weight");
  sub->add_flag("--jsonl", a->jsonl, "With --dump: one JSON object per token");
  add_engine_flags(sub, a->engine);
  cmds.add(sub, [a] {
    if (!a->dump.empty()) {
      if (!a->files.empty() || !a->token_files.empty() || !a->out.empty())
        fail("trace: --dump reads a trace; it does not take -f, --tokens or -o");
      return run_dump(*a);
    }
    if (a->model.empty()) a->model = default_model_path();
    return run_trace(*a);
  });
}

}  // namespace moe::cli
