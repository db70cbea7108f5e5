#include "compress_quality.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "base/error.h"
#include "base/thread_pool.h"
#include "cli_util.h"
#include "generation.h"
#include "runtime/engine.h"
#include "runtime/session.h"
#include "tokenizer/tokenizer.h"

namespace moe::cli {

void add_eval_flags(CLI::App* sub, EvalFlags& f) {
  sub->add_option("--eval", f.files, "held-out text files: perplexity and KL against the original afterwards");
  sub->add_option("--eval-ctx", f.ctx, "tokens per evaluation window")->capture_default_str()->check(CLI::Range(2, 1 << 20));
  sub->add_option("--eval-windows", f.max_windows, "windows per evaluation file (0 = all)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 30));
  sub->add_option("--eval-tsv", f.tsv, "append the --eval results to this file as tab-separated rows");
}

namespace {

// log-softmax of one row into `out`.
void log_softmax(const float* z, int64_t n, std::vector<double>& out) {
  out.resize(static_cast<size_t>(n));
  double mx = z[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, static_cast<double>(z[i]));
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(z[i] - mx);
  const double lse = mx + std::log(s);
  for (int64_t i = 0; i < n; ++i) out[i] = z[i] - lse;
}

}  // namespace

std::vector<FileQuality> report_quality(const EvalFlags& f, const std::string& original, const std::string& compressed,
                                        int threads) {
  const uint64_t before = std::filesystem::file_size(original), after = std::filesystem::file_size(compressed);
  std::printf("file size: %s -> %s (%.1f%%)\n", human_bytes(before).c_str(), human_bytes(after).c_str(),
              100.0 * static_cast<double>(after) / static_cast<double>(before));
  std::vector<FileQuality> out;
  if (f.files.empty()) return out;
  ThreadPool pool(threads);
  EngineOptions eo;
  eo.n_ctx = f.ctx;
  eo.n_batch = f.ctx;
  auto ea = Engine::open(original, eo);
  auto eb = Engine::open(compressed, eo);
  const int64_t V = ea->model().spec().n_vocab;
  if (eb->model().spec().n_vocab != V)
    fail("--eval: {} has {} tokens in its vocabulary, {} has {}", compressed, eb->model().spec().n_vocab, original, V);
  auto tok = Tokenizer::from_gguf(ea->model().file());
  Session sa(ea->model(), ea->store(), f.ctx), sb(eb->model(), eb->store(), f.ctx);
  std::vector<float> la;
  std::vector<double> pa, pb;
  for (const std::string& path : f.files) {
    const std::vector<int32_t> ids = tok->encode(read_text_file(path), false, false);
    if (ids.size() < 2) fail("--eval {}: fewer than 2 tokens", path);
    FileQuality q;
    q.file = path;
    double nll_a = 0, nll_b = 0, kl = 0;
    uint64_t agree = 0;
    int64_t nw = 0;
    for (size_t b = 0; b + 1 < ids.size(); b += static_cast<size_t>(f.ctx)) {
      if (f.max_windows > 0 && nw++ >= f.max_windows) break;
      const size_t e = std::min(ids.size(), b + static_cast<size_t>(f.ctx));
      const std::vector<int32_t> win(ids.begin() + b, ids.begin() + e);
      sa.reset();
      la = sa.eval(win, pool, true, f.ctx);
      sb.reset();
      const std::vector<float>& lb = sb.eval(win, pool, true, f.ctx);
      for (size_t i = 0; i + 1 < win.size(); ++i) {
        log_softmax(la.data() + i * V, V, pa);
        log_softmax(lb.data() + i * V, V, pb);
        const int32_t next = win[i + 1];
        nll_a -= pa[next];
        nll_b -= pb[next];
        double k = 0;
        size_t arg_a = 0, arg_b = 0;
        for (int64_t v = 0; v < V; ++v) {
          k += std::exp(pa[v]) * (pa[v] - pb[v]);
          if (pa[v] > pa[arg_a]) arg_a = static_cast<size_t>(v);
          if (pb[v] > pb[arg_b]) arg_b = static_cast<size_t>(v);
        }
        kl += std::max(0.0, k);
        agree += arg_a == arg_b;
        ++q.tokens;
      }
    }
    q.ppl_original = std::exp(nll_a / static_cast<double>(q.tokens));
    q.ppl_compressed = std::exp(nll_b / static_cast<double>(q.tokens));
    q.kl_mean = kl / static_cast<double>(q.tokens);
    q.top1_agree = static_cast<double>(agree) / static_cast<double>(q.tokens);
    out.push_back(q);
  }
  std::printf("%-40s %8s %10s %10s %8s %10s %8s\n", "eval text", "tokens", "ppl before", "ppl after", "change",
              "KL (nats)", "top-1");
  for (const FileQuality& q : out) {
    std::string name = q.file.size() > 40 ? "..." + q.file.substr(q.file.size() - 37) : q.file;
    std::printf("%-40s %8llu %10.3f %10.3f %+7.2f%% %10.5f %7.2f%%\n", name.c_str(),
                static_cast<unsigned long long>(q.tokens), q.ppl_original, q.ppl_compressed,
                100.0 * (q.ppl_compressed / q.ppl_original - 1.0), q.kl_mean, 100.0 * q.top1_agree);
  }
  if (!f.tsv.empty()) {
    std::FILE* t = std::fopen(f.tsv.c_str(), "a");
    if (!t) fail("--eval-tsv {}: cannot open for appending", f.tsv);
    for (const FileQuality& q : out)
      std::fprintf(t, "%s\t%s\t%llu\t%.6f\t%.6f\t%.6f\t%.6f\t%llu\t%llu\n", compressed.c_str(), q.file.c_str(),
                   static_cast<unsigned long long>(q.tokens), q.ppl_original, q.ppl_compressed, q.kl_mean,
                   q.top1_agree, static_cast<unsigned long long>(before), static_cast<unsigned long long>(after));
    std::fclose(t);
  }
  return out;
}

}  // namespace moe::cli
