// `moe synth -o OUT.gguf (--shape NAME | --layers ... ) [--type Q4_K_M] [--seed N] [-t N]`: writes a
// random-weight model with a real shape, for benchmarks. Streaming: the writer holds one tensor at a
// time; rows are generated and quantized on -t threads (bytes do not depend on -t).
//
// --type names a uniform type (Q8_0, Q4_0, F16, ...) or one of llama.cpp's K-quant mixes. The mixes
// follow the rules of llama.cpp's llama-quant.cpp (restated, not copied):
//   * output.weight: Q6_K for every quantized type except Q8_0 (which stays Q8_0); token_embd keeps
//     the base type.
//   * Q4_K_M / Q5_K_M: base Q4_K / Q5_K; attn_v and every ffn_down* (dense, routed experts, shared)
//     of layer i become Q6_K when use_more_bits(i, n_layer): i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2.
//   * Q4_K_S: base Q4_K; attn_v of layers 0..3 and ffn_down of layers < n/8 become Q5_K.
//   * With exactly 8 experts (Mixtral) and any K-quant mix: attn_v and attn_k become Q8_0, attn_output Q5_K.
//   * A row length that is not a multiple of 256 falls back: Q4_K->Q5_0, Q5_K->Q5_1, Q6_K->Q8_0.
//   * Norms, biases and the router (ffn_gate_inp) stay F32.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <optional>

#include "base/error.h"
#include "cli_util.h"
#include "commands.h"
#include "model/synth.h"

namespace moe::cli {

namespace {

struct SynthArgs {
  std::string out, shape, type = "Q4_K_M", arch, name;
  int layers = 0, experts = -1, top_k = 0, heads = 0, kv_heads = 0, dense_lead = -1, shared = 0;
  int64_t embd = 0, ff = 0, head_dim = 0, vocab = 0, ff_dense = 0;
  uint64_t seed = 1;
  int64_t unique_rows = 0;
  int threads = 0;
  bool quiet = false;
  // Overrides of a named shape's attention (0 = keep): MLA ranks and head parts, rope dims, window.
  int64_t kv_lora = 0, q_lora = -1, qk_nope = 0, qk_rope = 0, v_head = 0, rot = 0, window = 0;
  int groups = 0, groups_used = 0, nextn = -1;
};

struct NamedShape {
  std::string arch;
  ModelSpec spec;
};

constexpr const char* kShapeNames =
    "olmoe-1b-7b, qwen3-30b-a3b, mixtral-8x7b, deepseek-moe-16b, deepseek-v2-lite, deepseek-v3, gpt-oss-20b, "
    "glm-4.5-air";

// Keeps the first n layers (the shape's dense lead and window pattern stay as they are).
void keep_layers(ModelSpec& s, int n) {
  if (n <= 0 || n == s.n_layer) return;
  // Growing repeats the pattern of the last two layers (gpt-oss alternates window and full layers).
  for (size_t i = s.layers.size(); i < static_cast<size_t>(n); ++i) s.layers.push_back(s.layers[i >= 2 ? i - 2 : 0]);
  s.layers.resize(static_cast<size_t>(n));
  s.n_layer = n;
}

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
  } else if (name == "deepseek-v2-lite") {
    // DeepSeek-V2-Lite: MLA (kv_lora 512, no q low-rank, nope 128 + rope 64, v 128, 16 heads), 1 dense layer
    // (ff 10944), 64 experts top-6 of ff 1408 + 2 shared, softmax without renorm, YaRN x40 from 4096.
    s.arch = "deepseek2";
    s.spec = make_moe_shape(27, 2048, 16, 1, 512 + 64, 64, 6, 1408, 102400, 1, 10944, 2, 2 * 1408);
    set_mla(s.spec, 0, 512, 128, 64, 128);
    s.spec.n_ctx_train = 163840;
    set_yarn(s.spec, 40.0f, 4096);
    s.spec.yarn.log_mul = 0.707f;  // mscale_all_dim (and mscale) 0.707
  } else if (name == "deepseek-v3") {
    // DeepSeek-V3 / R1 (Kimi-K2 has the same layout with 384 experts): MLA with q low-rank 1536, kv_lora 512,
    // 128 heads; 3 dense layers (ff 18432); 256 experts top-8 of ff 2048 + 1 shared, sigmoid with a
    // selection bias, 8 groups of which 4 are kept, renorm, scale 2.5; YaRN x40 from 4096.
    s.arch = "deepseek2";
    s.spec = make_moe_shape(61, 7168, 128, 1, 512 + 64, 256, 8, 2048, 129280, 3, 18432, 1, 2048);
    set_mla(s.spec, 1536, 512, 128, 64, 128);
    s.spec.n_ctx_train = 163840;
    set_yarn(s.spec, 40.0f, 4096);
    s.spec.yarn.log_mul = 1.0f;  // mscale_all_dim 1
    for (auto& L : s.spec.layers) {
      L.moe.gating = Gating::Sigmoid;
      L.moe.has_selection_bias = true;
      L.moe.n_group = 8;
      L.moe.topk_group = 4;
      L.moe.norm_topk = true;
      L.moe.route_scale = 2.5f;
    }
  } else if (name == "gpt-oss-20b") {
    // gpt-oss-20b: 24 layers of 64 q / 8 kv heads of 64, sinks, a 128-token window on even layers, 32 experts
    // top-4 of ff 2880 with biases, clamped SwiGLU, YaRN x32 from 4096.
    s.arch = "gpt-oss";
    s.spec = make_moe_shape(24, 2880, 64, 8, 64, 32, 4, 2880, 201088);
    s.spec.rope_base = 150000.0f;
    s.spec.rms_eps = 1e-5f;
    s.spec.n_ctx_train = 131072;
    set_yarn(s.spec, 32.0f, 4096);
    for (int il = 0; il < s.spec.n_layer; ++il) s.spec.layers[il].n_swa = il % 2 == 0 ? 128 : 0;
  } else if (name == "glm-4.5-air") {
    // GLM-4.5-Air: 46 layers (+1 next-token-prediction layer in the file), 96 q / 8 kv heads of 128 with
    // rope on half of each, 1 dense layer (ff 10944), 128 experts top-8 of ff 1408 + 1 shared, sigmoid with
    // selection bias, renorm.
    s.arch = "glm4moe";
    s.spec = make_moe_shape(46, 4096, 96, 8, 128, 128, 8, 1408, 151552, 1, 10944, 1, 1408);
    s.spec.n_rot = 64;
    s.spec.rope_base = 1e6f;
    s.spec.rms_eps = 1e-5f;
    s.spec.n_ctx_train = 131072;
    s.spec.n_layer_nextn = 1;
    for (auto& L : s.spec.layers) {
      L.moe.gating = Gating::Sigmoid;
      L.moe.has_selection_bias = true;
      L.moe.norm_topk = true;
    }
  } else {
    fail("--shape: unknown shape '{}' (known: {})", name, kShapeNames);
  }
  s.spec.name = "synth-" + name;
  return s;
}

bool use_more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

bool is_down(Role r) { return r == Role::FfnDown || r == Role::ExpDown || r == Role::ShexpDown; }

struct TypePlan {
  DType base;
  DType output;
  int file_type;
  std::function<DType(Role, int, DType)> override;  // null for uniform types
};

TypePlan plan_types(const std::string& type_name, int n_layer, int n_expert) {
  static const std::map<std::string, int> mixes = {{"Q4_K_S", 14}, {"Q4_K_M", 15}, {"Q5_K_S", 16}, {"Q5_K_M", 17}};
  std::string upper;
  for (char c : type_name) upper += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  TypePlan p;
  if (auto it = mixes.find(upper); it != mixes.end()) {
    const bool q4 = upper[1] == '4';
    const bool medium = upper.back() == 'M';
    p.base = q4 ? DType::Q4_K : DType::Q5_K;
    p.output = DType::Q6_K;
    p.file_type = it->second;
    p.override = [=](Role r, int il, DType def) -> DType {
      if (r == Role::Output || r == Role::TokenEmbd || il < 0) return def;
      if (n_expert == 8) {
        if (r == Role::AttnV || r == Role::AttnK) return DType::Q8_0;
        if (r == Role::AttnOut) return DType::Q5_K;
      }
      if (medium) {
        if ((r == Role::AttnV || is_down(r)) && use_more_bits(il, n_layer)) return DType::Q6_K;
      } else if (q4) {  // Q4_K_S
        if (r == Role::AttnV && il < 4) return DType::Q5_K;
        if (is_down(r) && il < n_layer / 8) return DType::Q5_K;
      }
      return def;
    };
    return p;
  }
  static const std::map<DType, int> uniform_ftype = {
      {DType::F32, 0},  {DType::F16, 1},  {DType::Q4_0, 2}, {DType::Q4_1, 3}, {DType::Q8_0, 7},
      {DType::Q5_0, 8}, {DType::Q5_1, 9}, {DType::Q2_K, 10}, {DType::Q3_K, 11}, {DType::Q4_K, 14},
      {DType::Q5_K, 16}, {DType::Q6_K, 18}, {DType::BF16, 32}};
  std::optional<DType> t = dtype_from_name(type_name);
  if (!t || !uniform_ftype.count(*t)) {
    fail("--type: unknown or unsupported type '{}' (Q4_K_M, Q4_K_S, Q5_K_M, Q5_K_S, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, "
         "Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, F16, BF16, F32)",
         type_name);
  }
  p.base = *t;
  p.file_type = uniform_ftype.at(*t);
  const bool float_type = *t == DType::F32 || *t == DType::F16 || *t == DType::BF16;
  p.output = (float_type || *t == DType::Q8_0) ? *t : DType::Q6_K;
  return p;
}

// The shape's MoE layout with another number of leading dense layers (before --layers cuts it).
void set_dense_lead(ModelSpec& s, int n_dense) {
  if (n_dense < 0) return;
  LayerSpec dense, moe;
  bool has_dense = false;
  for (const LayerSpec& L : s.layers) {
    if (L.is_moe) moe = L;
    else dense = L, has_dense = true;
  }
  if (!moe.is_moe) fail("--dense-lead: the shape has no MoE layer");
  if (!has_dense) dense.n_ff_dense = moe.moe.n_ff_exp * 4;
  for (int il = 0; il < s.n_layer; ++il) {
    const int64_t swa = s.layers[il].n_swa;
    s.layers[il] = il < n_dense ? dense : moe;
    s.layers[il].is_moe = il >= n_dense;
    s.layers[il].n_swa = swa;
  }
}

// A named shape with some dimensions changed (small models of a real shape for tests). Flags left at
// their defaults keep the shape's value.
void apply_overrides(ModelSpec& s, const SynthArgs& a) {
  if (a.embd > 0) s.n_embd = a.embd;
  if (a.vocab > 0) s.n_vocab = a.vocab;
  if (a.heads > 0) s.n_head = a.heads;
  if (s.is_mla()) {
    MlaSpec m = s.mla;
    if (a.kv_lora > 0) m.kv_lora_rank = a.kv_lora;
    if (a.q_lora >= 0) m.q_lora_rank = a.q_lora;
    if (a.qk_nope > 0) m.qk_nope = a.qk_nope;
    if (a.qk_rope > 0) m.qk_rope = a.qk_rope;
    if (a.v_head > 0) m.v_head = a.v_head;
    set_mla(s, m.q_lora_rank, m.kv_lora_rank, m.qk_nope, m.qk_rope, m.v_head);
  } else {
    if (a.kv_lora > 0 || a.q_lora >= 0 || a.qk_nope > 0 || a.qk_rope > 0 || a.v_head > 0)
      fail("--kv-lora/--q-lora/--qk-nope/--qk-rope/--v-head: the shape has no latent attention");
    if (a.kv_heads > 0) s.n_head_kv = a.kv_heads;
    if (a.head_dim > 0) {
      // Keep the fraction of each head that rotates (GLM: half) unless --rot says otherwise.
      s.n_rot = s.n_rot * a.head_dim / s.head_dim;
      s.head_dim = a.head_dim;
    }
    if (a.rot > 0) s.n_rot = a.rot;
  }
  if (s.n_head % s.n_head_kv != 0) fail("--heads {} is not a multiple of {} kv heads", s.n_head, s.n_head_kv);
  for (LayerSpec& L : s.layers) {
    if (a.window > 0 && L.n_swa > 0) L.n_swa = a.window;
    if (a.ff_dense > 0) L.n_ff_dense = a.ff_dense;
    if (a.experts > 0) L.moe.n_expert = a.experts;
    if (a.top_k > 0) L.moe.n_expert_used = a.top_k;
    if (a.ff > 0) L.moe.n_ff_exp = a.ff;
    L.moe.n_ff_shexp = L.moe.n_ff_exp * L.moe.n_shared;
    if (a.groups > 0) {
      L.moe.n_group = a.groups;
      L.moe.topk_group = a.groups_used > 0 ? a.groups_used : a.groups;
    }
    if (L.is_moe && L.moe.n_expert_used > L.moe.n_expert)
      fail("--top-k {} exceeds {} experts", L.moe.n_expert_used, L.moe.n_expert);
    if (L.is_moe && L.moe.n_expert % L.moe.n_group != 0)
      fail("--groups {} does not divide {} experts", L.moe.n_group, L.moe.n_expert);
  }
  if (a.nextn >= 0) s.n_layer_nextn = a.nextn;
}

int run_synth(const SynthArgs& a) {
  NamedShape ns;
  if (!a.shape.empty()) {
    ns = named_shape(a.shape);
    set_dense_lead(ns.spec, a.dense_lead);
    keep_layers(ns.spec, a.layers);  // --layers N: a smaller (or larger) model of the same shape
    apply_overrides(ns.spec, a);
  } else {
    if (a.layers <= 0 || a.embd <= 0 || a.heads <= 0 || a.vocab <= 0 || a.experts < 0 || a.ff <= 0) {
      fail("synth: give --shape NAME, or all of --layers --embd --heads --vocab --experts --ff (custom shape)");
    }
    const int kv = a.kv_heads > 0 ? a.kv_heads : a.heads;
    const int64_t hd = a.head_dim > 0 ? a.head_dim : a.embd / a.heads;
    ns.arch = a.arch.empty() ? "qwen3moe" : a.arch;
    const int k = a.top_k > 0 ? a.top_k : std::min(a.experts, 8);
    ns.spec = make_moe_shape(a.layers, a.embd, a.heads, kv, hd, a.experts, k, a.ff, a.vocab, std::max(a.dense_lead, 0),
                             a.ff_dense, a.shared, a.ff * a.shared);
    ns.spec.name = "synth-custom";
  }
  if (!a.arch.empty()) ns.arch = a.arch;
  if (!a.name.empty()) ns.spec.name = a.name;
  int n_expert = 0;
  for (const auto& L : ns.spec.layers) n_expert = std::max(n_expert, L.is_moe ? L.moe.n_expert : 0);
  const TypePlan tp = plan_types(a.type, ns.spec.n_layer, n_expert);

  SynthConfig cfg;
  cfg.arch = ns.arch;
  cfg.spec = ns.spec;
  cfg.attn_type = cfg.expert_type = cfg.shared_type = cfg.embd_type = tp.base;
  cfg.output_type = tp.output;
  cfg.router_type = DType::F32;
  cfg.seed = a.seed;
  cfg.type_override = tp.override;
  cfg.llama_fallback = true;
  cfg.file_type = tp.file_type;
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
  sub->add_option("--shape", a->shape, kShapeNames);
  sub->add_option("--type", a->type, "Q4_K_M (default), Q4_K_S, Q5_K_M, Q5_K_S, Q8_0, Q4_0, F16, ...");
  sub->add_option("--arch", a->arch, "Architecture (custom shapes; default qwen3moe)");
  sub->add_option("--name", a->name, "general.name");
  sub->add_option("--layers", a->layers, "Layers (with --shape: keep that many of the shape's layers)")
      ->check(CLI::Range(1, 1024));
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
  sub->add_option("--kv-lora", a->kv_lora, "With an MLA --shape: latent (kv_lora_rank) width")
      ->check(CLI::Range(int64_t{1}, int64_t{65536}));
  sub->add_option("--q-lora", a->q_lora, "With an MLA --shape: query low-rank width (0 = attn_q directly)")
      ->check(CLI::Range(int64_t{0}, int64_t{65536}));
  sub->add_option("--qk-nope", a->qk_nope, "With an MLA --shape: per-head query/key part without rope")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  sub->add_option("--qk-rope", a->qk_rope, "With an MLA --shape: per-head rope part")->check(CLI::Range(int64_t{2}, int64_t{4096}));
  sub->add_option("--v-head", a->v_head, "With an MLA --shape: per-head value width")->check(CLI::Range(int64_t{1}, int64_t{4096}));
  sub->add_option("--rot", a->rot, "Rotated dims per head (rope.dimension_count)")->check(CLI::Range(int64_t{2}, int64_t{4096}));
  sub->add_option("--window", a->window, "Sliding window of the shape's window layers")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  sub->add_option("--groups", a->groups, "Expert groups for group-limited routing")->check(CLI::Range(1, 4096));
  sub->add_option("--groups-used", a->groups_used, "Groups kept per token")->check(CLI::Range(1, 4096));
  sub->add_option("--nextn", a->nextn, "Trailing next-token-prediction layers written (not run)")->check(CLI::Range(0, 8));
  sub->add_option("--seed", a->seed, "Random seed");
  sub->add_option("--unique-rows", a->unique_rows,
                  "Quantize only N distinct rows per tensor, copy the rest (fast; 0 = all distinct)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  sub->add_option("-t,--threads", a->threads, "Threads (0 = all cores)")->check(CLI::Range(0, 1024));
  sub->add_flag("-q,--quiet", a->quiet, "No progress line");
  cmds.add(sub, [a] { return run_synth(*a); });
}

}  // namespace moe::cli
