// C3PO re-mixing (runtime/remix.h), kernel-regression form:
//   `moe remix-build -m MODEL -f FILE... -o REFS`: cuts each text into snippets, keeps those whose next
//   token the model predicts (top-1; --keep all keeps every one), and stores each snippet's embedding
//   (mean-pooled final hidden state) and its last position's gate scores in every MoE layer.
//   `moe remix-eval -m MODEL --refs REFS -f FILE... --remix-layers N`: on held-out snippets, the next
//   token's log-likelihood and top-1 accuracy without re-mixing, with it, and with the same similarity
//   weights on random references (the control), per file.
// `moe run --remix REFS --remix-layers N` re-mixes a prompt's continuation.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/thread_pool.h"
#include "cli_util.h"
#include "commands.h"
#include "engine_flags.h"
#include "generation.h"
#include "runtime/remix.h"
#include "runtime/session.h"
#include "tokenizer/tokenizer.h"

namespace moe::cli {

namespace {

struct Snippet {
  std::vector<int32_t> ids;  // the context
  int32_t target = 0;        // the token after it
  std::string source;
};

// Snippets of `len` tokens (and their next token) every `stride` tokens, at most `max_n` per file.
std::vector<Snippet> snippets_of(const Tokenizer& tok, const std::string& path, int len, int stride, int max_n) {
  const std::vector<int32_t> ids = tok.encode(read_text_file(path), false, false);
  std::vector<Snippet> out;
  for (size_t b = 0; b + static_cast<size_t>(len) < ids.size() && static_cast<int>(out.size()) < max_n;
       b += static_cast<size_t>(stride)) {
    Snippet s;
    s.ids.assign(ids.begin() + static_cast<std::ptrdiff_t>(b), ids.begin() + static_cast<std::ptrdiff_t>(b) + len);
    s.target = ids[b + static_cast<size_t>(len)];
    s.source = fmt::format("{}@{}", path, b);
    out.push_back(std::move(s));
  }
  if (out.empty()) fail("{}: shorter than one snippet of {} tokens plus the next", path, len);
  return out;
}

double nll_of(const std::vector<float>& logits, int32_t target) {
  const float mx = *std::max_element(logits.begin(), logits.end());
  double z = 0;
  for (float v : logits) z += std::exp(static_cast<double>(v - mx));
  return std::log(z) - static_cast<double>(logits[static_cast<size_t>(target)] - mx);
}

bool top1(const std::vector<float>& logits, int32_t target) {
  return std::max_element(logits.begin(), logits.end()) - logits.begin() == target;
}

struct BuildArgs {
  std::string model, out, keep = "correct";
  std::vector<std::string> files;
  int snippet_len = 48, stride = 0, max_per_file = 256, threads = 0;
  EngineFlags engine;
};

int run_build(const BuildArgs& a) {
  ThreadPool pool(resolve_threads(a.threads));
  auto engine = open_engine(a.model, a.engine, a.snippet_len + 1, a.snippet_len);
  const Model& model = engine->model();
  auto tok = Tokenizer::from_gguf(model.file());
  Session session(model, engine->store(), a.snippet_len + 1, forward_options(a.engine, *engine, false));
  RemixReferences refs = RemixReferences::for_model(model);
  refs.snippet_len = a.snippet_len;
  RemixRecorder rec(model.spec());
  session.forward().add_observer(&rec);
  for (const std::string& path : a.files) {
    const auto snippets = snippets_of(*tok, path, a.snippet_len, a.stride > 0 ? a.stride : a.snippet_len, a.max_per_file);
    int kept = 0;
    for (size_t i = 0; i < snippets.size(); ++i) {
      const Snippet& s = snippets[i];
      session.reset();
      rec.reset();
      const std::vector<float>& logits = session.eval(s.ids, pool);
      if (a.keep == "all" || top1(logits, s.target)) {
        refs.add(s.source, rec.embedding(), rec.last_scores());
        ++kept;
      }
      std::fprintf(stderr, "\rremix-build: %s snippet %zu/%zu, kept %d   ", path.c_str(), i + 1, snippets.size(), kept);
    }
    std::fprintf(stderr, "\nremix-build: %s: kept %d of %zu snippets (%s)\n", path.c_str(), kept, snippets.size(),
                 a.keep == "all" ? "all" : "next token predicted");
  }
  session.forward().remove_observer(&rec);
  if (refs.count() == 0) fail("remix-build: no snippet was kept (the model predicted none; try --keep all)");
  refs.write(a.out);
  std::fprintf(stderr, "remix-build: wrote %d references to %s\n", refs.count(), a.out.c_str());
  return 0;
}

struct EvalArgs {
  std::string model, refs, json_out;
  std::vector<std::string> files;
  int snippet_len = 48, max_per_file = 64, layers = 4, neighbors = 3, threads = 0;
  uint32_t seed = 1;
  EngineFlags engine;
};

int run_eval(const EvalArgs& a) {
  if (a.layers < 1) fail("--remix-layers {}: must be at least 1", a.layers);
  if (a.neighbors < 1) fail("--remix-neighbors {}: must be at least 1", a.neighbors);
  ThreadPool pool(resolve_threads(a.threads));
  auto engine = open_engine(a.model, a.engine, a.snippet_len + 1, a.snippet_len);
  const Model& model = engine->model();
  const RemixReferences refs = RemixReferences::read(a.refs);
  if (!refs.check_model(model, a.refs))
    std::fprintf(stderr, "remix-eval: warning: %s was built from another checkpoint of this model's shape\n",
                 a.refs.c_str());
  auto tok = Tokenizer::from_gguf(model.file());
  const ForwardOptions fo = forward_options(a.engine, *engine, false);
  Session session(model, engine->store(), a.snippet_len + 1, fo);
  std::mt19937 rng(a.seed);
  nlohmann::ordered_json j;
  j["model"] = a.model;
  j["refs"] = a.refs;
  j["references"] = refs.count();
  j["remix_layers"] = a.layers;
  j["neighbors"] = a.neighbors;
  std::printf("%-44s %6s %9s %9s %9s %7s %7s %7s\n", "text", "n", "nll_none", "nll_remix", "nll_rand", "acc_none",
              "acc_rmx", "acc_rnd");
  for (const std::string& path : a.files) {
    const auto snippets = snippets_of(*tok, path, a.snippet_len, a.snippet_len, a.max_per_file);
    double nll[3] = {0, 0, 0};
    int acc[3] = {0, 0, 0};
    double cos_sum = 0;
    for (size_t i = 0; i < snippets.size(); ++i) {
      const Snippet& s = snippets[i];
      session.reset();
      session.set_routing_policy(fo.routing);
      RemixNeighbors nb;
      const std::vector<float> remixed =
          eval_with_remix(session, s.ids, pool, refs, a.layers, a.neighbors, &nb);
      // The plain pass: the same prompt without re-mixing.
      session.reset();
      session.set_routing_policy(fo.routing);
      const std::vector<float> plain = session.eval(s.ids, pool);
      // The control: the same weights on random references.
      std::vector<int> random_ids;
      std::uniform_int_distribution<int> pick(0, refs.count() - 1);
      while (static_cast<int>(random_ids.size()) < static_cast<int>(nb.ids.size())) random_ids.push_back(pick(rng));
      RoutingPolicy p = fo.routing;
      p.remix = remix_scores(refs, with_references(nb, random_ids), a.layers);
      session.truncate(session.n_past() - 1);
      session.set_routing_policy(p);
      const std::vector<float> random = session.eval({s.ids.back()}, pool);
      const std::vector<float>* out[3] = {&plain, &remixed, &random};
      for (int v = 0; v < 3; ++v) {
        nll[v] += nll_of(*out[v], s.target);
        acc[v] += top1(*out[v], s.target);
      }
      cos_sum += nb.cosine.empty() ? 0.0 : nb.cosine[0];
      std::fprintf(stderr, "\rremix-eval: %s snippet %zu/%zu   ", path.c_str(), i + 1, snippets.size());
    }
    std::fprintf(stderr, "\n");
    const double n = static_cast<double>(snippets.size());
    std::printf("%-44s %6zu %9.4f %9.4f %9.4f %7.3f %7.3f %7.3f\n", path.c_str(), snippets.size(), nll[0] / n,
                nll[1] / n, nll[2] / n, acc[0] / n, acc[1] / n, acc[2] / n);
    nlohmann::ordered_json f;
    f["file"] = path;
    f["snippets"] = snippets.size();
    f["nll_none"] = nll[0] / n;
    f["nll_remix"] = nll[1] / n;
    f["nll_random_refs"] = nll[2] / n;
    f["acc_none"] = acc[0] / n;
    f["acc_remix"] = acc[1] / n;
    f["acc_random_refs"] = acc[2] / n;
    f["mean_top_cosine"] = cos_sum / n;
    j["files"].push_back(f);
  }
  if (!a.json_out.empty()) {
    const std::string body = j.dump(1) + "\n";
    write_file_atomic(a.json_out, body.data(), body.size());
  }
  return 0;
}

}  // namespace

void register_remix(CLI::App& app, CommandSet& cmds) {
  {
    auto a = std::make_shared<BuildArgs>();
    CLI::App* sub = app.add_subcommand("remix-build", "Build C3PO reference routing from texts (for --remix)");
    sub->add_option("-m,--model", a->model, "GGUF model file (default: the bundled model)");
    sub->add_option("-f,--file", a->files, "Reference texts (snippets are cut from each)")->required();
    sub->add_option("-o,--output", a->out, "Reference file to write")->required();
    sub->add_option("--snippet-len", a->snippet_len, "Tokens per reference snippet")->check(CLI::Range(2, 1 << 16));
    sub->add_option("--stride", a->stride, "Tokens between snippet starts (default: the snippet length)")
        ->check(CLI::Range(1, 1 << 20));
    sub->add_option("--max-per-file", a->max_per_file, "Snippets per file at most")->check(CLI::Range(1, 1 << 20));
    sub->add_option("--keep", a->keep, "correct (the model predicts the next token; default) or all")
        ->check(CLI::IsMember({"correct", "all"}));
    sub->add_option("-t,--threads", a->threads, "Threads (0 = all cores)")->check(CLI::Range(0, 1024));
    add_engine_flags(sub, a->engine);
    cmds.add(sub, [a] {
      if (a->model.empty()) a->model = default_model_path();
      return run_build(*a);
    });
  }
  {
    auto a = std::make_shared<EvalArgs>();
    CLI::App* sub = app.add_subcommand("remix-eval", "Next-token quality with and without C3PO re-mixing on held-out text");
    sub->add_option("-m,--model", a->model, "GGUF model file (default: the bundled model)");
    sub->add_option("--refs", a->refs, "Reference file from `moe remix-build`")->required();
    sub->add_option("-f,--file", a->files, "Held-out texts")->required();
    sub->add_option("--snippet-len", a->snippet_len, "Tokens of context per snippet")->check(CLI::Range(2, 1 << 16));
    sub->add_option("--max-per-file", a->max_per_file, "Snippets per file at most")->check(CLI::Range(1, 1 << 20));
    sub->add_option("--remix-layers", a->layers, "Re-mix the last N MoE layers");
    sub->add_option("--remix-neighbors", a->neighbors, "Nearest references averaged");
    sub->add_option("--seed", a->seed, "Seed of the random-reference control");
    sub->add_option("--json", a->json_out, "Write the results as JSON");
    sub->add_option("-t,--threads", a->threads, "Threads (0 = all cores)")->check(CLI::Range(0, 1024));
    add_engine_flags(sub, a->engine);
    cmds.add(sub, [a] {
      if (a->model.empty()) a->model = default_model_path();
      return run_eval(*a);
    });
  }
}

}  // namespace moe::cli
