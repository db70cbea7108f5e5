// `moe calibrate -m MODEL -f TEXT... [--label L] -o STATS`: one pass over calibration text through the
// inference forward pass (compress/calibrate.h), writing the per-expert statistics that `moe prune`,
// `moe merge` and `moe quantize --mixed` read (compress/calib_stats.h).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "base/error.h"
#include "base/thread_pool.h"
#include "cli_util.h"
#include "commands.h"
#include "compress/calibrate.h"
#include "compress/criteria.h"
#include "compress/heapr.h"
#include "engine_flags.h"
#include "generation.h"
#include "progress.h"
#include "runtime/engine.h"
#include "runtime/session.h"
#include "tokenizer/tokenizer.h"

namespace moe::cli {

namespace {

struct CalibrateArgs {
  std::string model, out;
  std::vector<std::string> files, labels;
  int64_t ctx = 256;
  int64_t max_windows = 0;
  std::string recon_types = "q2_K,q3_K,q4_K,q5_K,q6_K,q8_0";
  int recon_tokens = 64;
  int tcess_k = 1;
  bool heapr = false;
  uint64_t seed = 1;
  int threads = 0;
  bool quiet = false;
  EngineFlags engine;
};

std::vector<DType> parse_types(const std::string& list) {
  std::vector<DType> out;
  size_t p = 0;
  while (p < list.size()) {
    size_t q = list.find(',', p);
    if (q == std::string::npos) q = list.size();
    const std::string name = list.substr(p, q - p);
    p = q + 1;
    if (name.empty()) continue;
    const auto t = dtype_from_name(name);
    if (!t || !storage_quantizer(*t) || !dtype_traits(*t).vec_dot)
      fail("--recon-types {}: '{}' is not a weight type (e.g. q2_K, q3_K, q4_K, q5_K, q6_K, q8_0, q4_0)", list, name);
    if (std::find(out.begin(), out.end(), *t) != out.end()) fail("--recon-types {}: '{}' is listed twice", list, name);
    out.push_back(*t);
  }
  return out;
}

int run_calibrate(CalibrateArgs& a) {
  if (a.labels.size() > 1 && a.labels.size() != a.files.size())
    fail("--label: give one label for all files or one per file ({} labels for {} files)", a.labels.size(),
         a.files.size());
  // One label per file: the given ones, or each file's own path.
  std::vector<std::string> file_label(a.files.size());
  for (size_t i = 0; i < a.files.size(); ++i)
    file_label[i] = a.labels.empty() ? a.files[i] : a.labels[a.labels.size() == 1 ? 0 : i];
  std::vector<std::string> labels;
  for (const std::string& l : file_label)
    if (std::find(labels.begin(), labels.end(), l) == labels.end()) labels.push_back(l);

  compress::CalibrateOptions o;
  o.tcess_k = a.tcess_k;
  o.recon_types = parse_types(a.recon_types);
  o.recon_tokens = a.recon_tokens;
  o.seed = a.seed;

  ThreadPool pool(resolve_threads(a.threads));
  auto engine = open_engine(a.model, a.engine, a.ctx, a.ctx);
  const Model& model = engine->model();
  auto tok = Tokenizer::from_gguf(model.file());
  Session session(model, engine->store(), a.ctx, forward_options(a.engine, *engine, false));
  compress::CalibrationObserver obs(model, labels, o);
  session.forward().add_observer(&obs);

  // Windows of --ctx tokens from each file, each evaluated from an empty context.
  struct Window {
    std::vector<int32_t> ids;
    size_t label;
  };
  std::vector<Window> windows;
  for (size_t i = 0; i < a.files.size(); ++i) {
    const std::vector<int32_t> ids = tok->encode(read_text_file(a.files[i]), false, false);
    if (ids.size() < 2) fail("{}: fewer than 2 tokens", a.files[i]);
    const size_t label = static_cast<size_t>(std::find(labels.begin(), labels.end(), file_label[i]) - labels.begin());
    int64_t nw = 0;
    for (size_t b = 0; b + 1 < ids.size(); b += static_cast<size_t>(a.ctx)) {
      if (a.max_windows > 0 && nw >= a.max_windows) break;
      const size_t e = std::min(ids.size(), b + static_cast<size_t>(a.ctx));
      windows.push_back({std::vector<int32_t>(ids.begin() + b, ids.begin() + e), label});
      ++nw;
    }
  }
  ProgressLine bar("moe calibrate", a.quiet);
  uint64_t n_tokens = 0;
  for (size_t w = 0; w < windows.size(); ++w) {
    obs.set_label(windows[w].label);
    session.reset();
    session.eval(windows[w].ids, pool, false, a.ctx);
    n_tokens += windows[w].ids.size();
    bar.update(0.5 * static_cast<double>(w + 1) / static_cast<double>(windows.size()),
               fmt::format("window {}/{}", w + 1, windows.size()));
  }
  session.forward().remove_observer(&obs);
  const double pass_s = bar.seconds();
  compress::add_reconstruction_errors(obs, model, pool, [&](double f, const std::string& what) {
    bar.update(0.5 + (a.heapr ? 0.25 : 0.5) * f, what);
  });
  const double recon_s = bar.seconds() - pass_s;
  compress::CalibStats& stats = obs.stats();
  if (a.heapr) {
    std::vector<std::vector<int32_t>> wins;
    for (const Window& w : windows) wins.push_back(w.ids);
    compress::add_heapr_scores(stats, a.model, wins, pool,
                               [&](double f, const std::string& what) { bar.update(0.75 + 0.25 * f, what); });
  }
  bar.update(1.0, "done");
  compress::save_stats(stats, a.out);

  const auto supers = compress::super_experts(stats);
  int n_super = 0;
  std::string super_list;
  for (size_t li = 0; li < supers.size(); ++li)
    for (size_t e = 0; e < supers[li].size(); ++e)
      if (supers[li][e]) super_list += fmt::format("{}{}:{}", n_super++ ? "," : "", stats.layers[li].layer, e);
  std::printf("calibrated %s on %llu tokens (%zu windows, %zu labels) in %.1fs (pass %.1fs, reconstruction %.1fs%s)\n",
              a.model.c_str(), static_cast<unsigned long long>(n_tokens), windows.size(), labels.size(), bar.seconds(),
              pass_s, recon_s, a.heapr ? ", HEAPr" : "");
  std::printf("super experts (max |down output| > p99.5 of all and > max/10, first 75%% of layers): %s\n",
              n_super ? super_list.c_str() : "none");
  std::printf("wrote %s\n", a.out.c_str());
  return 0;
}

}  // namespace

void register_calibrate(CLI::App& app, CommandSet& cmds) {
  auto a = std::make_shared<CalibrateArgs>();
  CLI::App* sub = app.add_subcommand("calibrate", "Collect per-expert statistics on calibration text (for prune, "
                                                  "merge, quantize --mixed)");
  sub->add_option("-m,--model", a->model, "GGUF model file")->required();
  sub->add_option("-f,--file", a->files, "calibration text files")->required();
  sub->add_option("--label", a->labels, "task label for TCESS: one for all files, or one per file (default: the "
                                        "file's path)");
  sub->add_option("-o,--output", a->out, "statistics file to write (GGUF)")->required();
  sub->add_option("-c,--ctx", a->ctx, "tokens per window")->capture_default_str()->check(CLI::Range(2, 1 << 20));
  sub->add_option("--max-windows", a->max_windows, "windows per file (0 = all)")->check(CLI::Range(0, 1 << 30));
  sub->add_option("--recon-types", a->recon_types,
                  "candidate types for the reconstruction errors, comma-separated ('' = none)")
      ->capture_default_str();
  sub->add_option("--recon-tokens", a->recon_tokens, "sampled tokens per expert for the reconstruction errors")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 16));
  sub->add_option("--tcess-k", a->tcess_k, "router logits kept per token for TCESS patterns")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  sub->add_flag("--heapr", a->heapr, "also compute HEAPr neuron scores (a backward pass per window; qwen3moe, "
                                     "llama/Mixtral, deepseek)");
  sub->add_option("--seed", a->seed, "seed of the token sampling for the reconstruction errors");
  sub->add_option("-t,--threads", a->threads, "threads (0 = all cores)")->check(CLI::Range(0, 1024));
  sub->add_flag("-q,--quiet", a->quiet, "No progress line");
  add_engine_flags(sub, a->engine);
  cmds.add(sub, [a] { return run_calibrate(*a); });
}

}  // namespace moe::cli
