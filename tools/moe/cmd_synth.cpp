// `moe synth -o OUT.gguf (--shape NAME | --layers ... ) [--type Q4_K_M] [--seed N] [-t N]`: writes a
// random-weight model with a real shape, for benchmarks. Streaming: the writer holds one tensor at a
// time; rows are generated and quantized on -t threads (bytes do not depend on -t).
//
// --type is a file type as llama-quantize names it (Q4_K_M, Q8_0, F16, ...); every tensor gets the type
// llama.cpp's rules give it for that file type (compress/quant_mix.h, the table `moe quantize` uses), as if
// an F16 file of this shape had been quantized by llama-quantize. Norms, biases and the router stay F32.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <optional>

#include "base/error.h"
#include "cli_util.h"
#include "commands.h"
#include "compress/quantize_model.h"
#include "model/synth.h"

namespace moe::cli {

namespace {

struct SynthArgs {
  std::string out, shape, type = "Q4_K_M", arch, name;
  int layers = 0, experts = -1, top_k = 0, heads = 0, kv_heads = 0, dense_lead = 0, shared = 0;
  int64_t embd = 0, ff = 0, head_dim = 0, vocab = 0, ff_dense = 0;
  uint64_t seed = 1;
  int64_t unique_rows = 0;
  int threads = 0;
  bool quiet = false;
};

struct NamedShape {
  std::string arch;
  ModelSpec spec;
};

NamedShape named_shape(const std::string& name) {
  NamedShape s;
  if (name == "olmoe-1b-7b") {
    s.arch = "olmoe";
    s.spec = make_moe_shape(16, 2048, 16, 16, 128, 64, 8, 1024, 50304);
    s.spec.rms_eps = 1e-5f;
  } else if (name == "qwen3-30b-a3b") {
    s.arch = "qwen3moe";
    s.spec = make_moe_shape(48, 2048, 32, 4, 128, 128, 8, 768, 151936);
    s.spec.rope_base = 1e6f;
    s.spec.n_ctx_train = 40960;
  } else if (name == "mixtral-8x7b") {
    s.arch = "llama";
    s.spec = make_moe_shape(32, 4096, 32, 8, 128, 8, 2, 14336, 32000);
    s.spec.rope_base = 1e6f;
    s.spec.rms_eps = 1e-5f;
    s.spec.n_ctx_train = 32768;
  } else if (name == "deepseek-moe-16b") {
    s.arch = "deepseek";
    // 1 leading dense layer (ff 10944), 2 shared experts stored as one FFN of width 2 * 1408.
    s.spec = make_moe_shape(28, 2048, 16, 16, 128, 64, 6, 1408, 102400, 1, 10944, 2, 2 * 1408);
  } else {
    fail("--shape: unknown shape '{}' (known: olmoe-1b-7b, qwen3-30b-a3b, mixtral-8x7b, deepseek-moe-16b)", name);
  }
  s.spec.name = "synth-" + name;
  return s;
}

int run_synth(const SynthArgs& a) {
  NamedShape ns;
  if (!a.shape.empty()) {
    ns = named_shape(a.shape);
  } else {
    if (a.layers <= 0 || a.embd <= 0 || a.heads <= 0 || a.vocab <= 0 || a.experts < 0 || a.ff <= 0) {
      fail("synth: give --shape NAME, or all of --layers --embd --heads --vocab --experts --ff (custom shape)");
    }
    const int kv = a.kv_heads > 0 ? a.kv_heads : a.heads;
    const int64_t hd = a.head_dim > 0 ? a.head_dim : a.embd / a.heads;
    ns.arch = a.arch.empty() ? "qwen3moe" : a.arch;
    const int k = a.top_k > 0 ? a.top_k : std::min(a.experts, 8);
    ns.spec = make_moe_shape(a.layers, a.embd, a.heads, kv, hd, a.experts, k, a.ff, a.vocab, a.dense_lead,
                             a.ff_dense, a.shared, a.ff * a.shared);
    ns.spec.name = "synth-custom";
  }
  if (!a.arch.empty()) ns.arch = a.arch;
  if (!a.name.empty()) ns.spec.name = a.name;
  int n_expert = 0;
  for (const auto& L : ns.spec.layers) n_expert = std::max(n_expert, L.is_moe ? L.moe.n_expert : 0);
  const compress::QuantMix* mix = compress::find_quant_mix(a.type);
  if (!mix) fail("--type {}: unknown file type (known: {})", a.type, compress::quant_mix_names());

  // The tensors as an F16 file would hold them, typed by llama.cpp's rules for the file type (the table
  // `moe quantize` uses), so a synth file has the types llama-quantize would give it.
  SynthConfig cfg;
  cfg.arch = ns.arch;
  cfg.spec = ns.spec;
  cfg.attn_type = cfg.expert_type = cfg.shared_type = cfg.embd_type = cfg.output_type = DType::F16;
  cfg.router_type = DType::F32;
  std::vector<compress::MixTensor> tensors;
  for (const SynthTensor& t : synth_tensors(cfg)) tensors.push_back({t.name, t.role, t.layer, t.dims, t.type});
  compress::sort_llama_order(tensors);
  ModelSpec shaped = ns.spec;
  shaped.arch = ns.arch;
  compress::MixOptions mo;
  mo.mix = mix;
  const compress::MixPlan plan = compress::plan_mix(compress::mix_model(shaped), tensors, mo);
  for (size_t i = 0; i < tensors.size(); ++i) cfg.tensor_types[tensors[i].name] = plan.types[i];
  cfg.file_type = mix->ftype;
  cfg.seed = a.seed;
  cfg.row_streams = true;
  cfg.threads = resolve_threads(a.threads);
  cfg.unique_rows = a.unique_rows;

  const auto t0 = std::chrono::steady_clock::now();
  const bool tty = isatty(STDERR_FILENO);
  double last_print = -1e9;
  auto progress = [&](uint64_t done, uint64_t total) {
    if (a.quiet) return;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // A live line on a terminal; a line every 10 s in a log.
    if (done < total && s - last_print < (tty ? 0.5 : 10.0)) return;
    last_print = s;
    const double rate = s > 0 ? done / s : 0;
    const double eta = rate > 0 ? (total - done) / rate : 0;
    std::fprintf(stderr, "%smoe synth: %s / %s (%.0f%%)  %.1f MB/s  eta %.0fs   %s", tty ? "\r" : "",
                 human_bytes(done).c_str(), human_bytes(total).c_str(), 100.0 * done / std::max<uint64_t>(total, 1),
                 rate / 1e6, eta, tty ? "" : "\n");
    std::fflush(stderr);
  };
  std::fprintf(stderr, "moe synth: %s (%s, %d layers, %d experts) type %s, %d threads -> %s\n",
               ns.spec.name.c_str(), ns.arch.c_str(), ns.spec.n_layer, n_expert, a.type.c_str(), cfg.threads,
               a.out.c_str());
  write_synth_model(a.out, cfg, progress);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "%smoe synth: wrote %s in %.1fs\n", tty && !a.quiet ? "\n" : "", a.out.c_str(), s);
  return 0;
}

}  // namespace

void register_synth(CLI::App& app, CommandSet& cmds) {
  auto a = std::make_shared<SynthArgs>();
  CLI::App* sub = app.add_subcommand("synth", "Write a random-weight model with a real shape (for benchmarks)");
  sub->add_option("-o,--output", a->out, "Output GGUF file")->required();
  sub->add_option("--shape", a->shape, "olmoe-1b-7b | qwen3-30b-a3b | mixtral-8x7b | deepseek-moe-16b");
  sub->add_option("--type", a->type, "Q4_K_M (default), Q4_K_S, Q5_K_M, Q5_K_S, Q8_0, Q4_0, F16, ...");
  sub->add_option("--arch", a->arch, "Architecture (custom shapes; default qwen3moe)");
  sub->add_option("--name", a->name, "general.name");
  sub->add_option("--layers", a->layers, "Layers")->check(CLI::Range(1, 1024));
  sub->add_option("--embd", a->embd, "Model width")->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  sub->add_option("--experts", a->experts, "Routed experts per layer (0 = dense)")->check(CLI::Range(0, 4096));
  sub->add_option("--top-k", a->top_k, "Experts used per token")->check(CLI::Range(0, 4096));
  sub->add_option("--ff", a->ff, "Expert FFN width")->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  sub->add_option("--dense-lead", a->dense_lead, "Leading dense layers")->check(CLI::Range(0, 1024));
  sub->add_option("--ff-dense", a->ff_dense, "Dense FFN width")->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
  sub->add_option("--shared", a->shared, "Shared experts (width --ff each)")->check(CLI::Range(0, 64));
  sub->add_option("--heads", a->heads, "Query heads")->check(CLI::Range(1, 1024));
  sub->add_option("--kv-heads", a->kv_heads, "KV heads (default = heads)")->check(CLI::Range(1, 1024));
  sub->add_option("--head-dim", a->head_dim, "Head dim (default embd/heads)")->check(CLI::Range(int64_t{1}, int64_t{4096}));
  sub->add_option("--vocab", a->vocab, "Vocabulary size")->check(CLI::Range(int64_t{257}, int64_t{1} << 24));
  sub->add_option("--seed", a->seed, "Random seed");
  sub->add_option("--unique-rows", a->unique_rows,
                  "Quantize only N distinct rows per tensor, copy the rest (fast; 0 = all distinct)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  sub->add_option("-t,--threads", a->threads, "Threads (0 = all cores)")->check(CLI::Range(0, 1024));
  sub->add_flag("-q,--quiet", a->quiet, "No progress line");
  cmds.add(sub, [a] { return run_synth(*a); });
}

}  // namespace moe::cli
