// `moe quantize -m IN -o OUT --type T`: whole-model quantization with llama-quantize's file types and
// per-tensor rules (compress/quant_mix.h), so the tensor data equals llama-quantize's for the same input.
// Per-role overrides, llama-quantize's --tensor-type patterns, streaming (one tensor in memory), atomic
// output, a progress bar, threads. `--mixed --budget B --stats S` chooses the routed experts' types per (layer,
// projection) by the bit-allocation ILP (compress/mixed_precision.h); the rest keeps the --type mix.
#include <cstdio>
#include <filesystem>
#include <map>

#include "base/error.h"
#include "base/thread_pool.h"
#include "cli_util.h"
#include "commands.h"
#include "compress/calib_stats.h"
#include "compress/mixed_precision.h"
#include "compress/quantize_model.h"
#include "model/weights.h"
#include "progress.h"
#include "quantize_flags.h"

namespace moe::cli {

namespace {

DType parse_type(const std::string& flag, const std::string& name) {
  const auto t = dtype_from_name(name);
  if (!t || !storage_quantizer(*t) || !dtype_traits(*t).vec_dot)
    fail("{} {}: unknown weight type (use f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0, q6_K, q5_K, q4_K, q3_K, "
         "q2_K)",
         flag, name);
  return *t;
}

}  // namespace

compress::MixOptions mix_options(const QuantizeFlags& a) {
  compress::MixOptions o;
  o.mix = compress::find_quant_mix(a.type);
  if (!o.mix) {
    const std::string lower = [&] {
      std::string s;
      for (char c : a.type) s += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      return s;
    }();
    if (lower == "q2_k_s" || lower.rfind("iq", 0) == 0 || lower.rfind("tq", 0) == 0 || lower == "mxfp4_moe")
      fail("--type {}: llama.cpp's type needs an importance matrix or a block format moe.cpp does not have "
           "(known: {})",
           a.type, compress::quant_mix_names());
    fail("--type {}: unknown file type (known: {})", a.type, compress::quant_mix_names());
  }
  using compress::RoleTypeOverride;
  auto add = [&](const std::string& flag, const std::string& v, std::vector<Role> roles) {
    if (!v.empty()) o.role_types.push_back(RoleTypeOverride{std::move(roles), parse_type(flag, v)});
  };
  add("--expert-type", a.expert_type, {Role::ExpGate, Role::ExpUp, Role::ExpDown});
  add("--shared-type", a.shared_type, {Role::ShexpGate, Role::ShexpUp, Role::ShexpDown});
  add("--dense-ffn-type", a.dense_type, {Role::FfnGate, Role::FfnUp, Role::FfnDown});
  add("--attn-type", a.attn_type, {Role::AttnQ, Role::AttnK, Role::AttnV, Role::AttnOut});
  if (!a.output_type.empty()) o.output_type = parse_type("--output-type", a.output_type);
  if (!a.embd_type.empty()) o.embd_type = parse_type("--embd-type", a.embd_type);
  for (const std::string& s : a.tensor_types) {
    // As llama-quantize: split at the first '=', the pattern lower-cased.
    const size_t eq = s.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == s.size())
      fail("--tensor-type {}: expected PATTERN=TYPE (e.g. ffn_down_exps=q6_K)", s);
    std::string pattern = s.substr(0, eq);
    for (char& c : pattern) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    o.tensor_types.push_back({pattern, parse_type("--tensor-type", s.substr(eq + 1))});
  }
  o.pure = a.pure;
  o.leave_output = a.leave_output;
  return o;
}

void check_output_path(const std::string& in, const std::string& out) {
  std::error_code ec;
  if (out == in || std::filesystem::equivalent(out, in, ec)) fail("-o {}: the output must not replace the input", out);
}

namespace {

int run_quantize(const QuantizeFlags& a) {
  if (a.type.empty())
    fail("quantize: give --type (e.g. Q4_K_M; with --mixed, the mix of everything but the routed experts)");
  check_output_path(a.model, a.out);
  const compress::MixOptions o = mix_options(a);
  auto src = gguf::File::open(a.model, gguf::DataAccess::Pread);
  compress::QuantizePlan plan = compress::plan_quantize(*src, o, a.allow_requantize);
  if (a.mixed != !a.budget.empty() || a.mixed != !a.stats.empty())
    fail("--mixed needs --budget and --stats (and they need --mixed)");
  if (!a.mixed && !a.candidates.empty()) fail("--candidates is for --mixed");
  if (a.layout != "per-tensor" && a.layout != "per-expert")
    fail("--layout {}: expected per-tensor (standard GGUF) or per-expert (moe.cpp's own)", a.layout);
  if (!a.mixed && a.layout != "per-tensor") fail("--layout per-expert is for --mixed");
  if (a.expert_unit != "matrix" && a.expert_unit != "expert")
    fail("--expert-unit {}: expected matrix (a type per expert matrix) or expert (one per expert)", a.expert_unit);
  if (a.expert_unit != "matrix" && a.layout != "per-expert") fail("--expert-unit is for --layout per-expert");
  if (a.mixed) {
    if (!a.expert_type.empty()) fail("--mixed chooses the experts' types: drop --expert-type");
    compress::MixedOptions mo;
    mo.budget = compress::parse_budget(a.budget);
    mo.alpha = a.alpha;
    mo.beta = a.beta;
    mo.protect = !a.no_protect;
    mo.per_expert = a.layout == "per-expert";
    mo.whole_expert = a.expert_unit == "expert";
    for (size_t p = 0; p < a.candidates.size();) {
      size_t q = a.candidates.find(',', p);
      if (q == std::string::npos) q = a.candidates.size();
      const std::string name = a.candidates.substr(p, q - p);
      p = q + 1;
      if (!name.empty()) mo.candidates.push_back(parse_type("--candidates", name));
    }
    const compress::CalibStats stats = compress::load_stats(a.stats);
    auto model = Model::load(a.model, gguf::DataAccess::Mmap, /*defer_experts=*/true);
    if (!compress::check_stats_match(stats, *model, a.stats))
      std::fprintf(stderr, "moe quantize: note: %s was calibrated on %s, whose expert weights differ\n",
                   a.stats.c_str(), stats.model_file.c_str());
    const compress::MixedResult mr = compress::allocate_mixed(stats, plan, mo);
    std::map<std::string, int> by_type;
    for (DType t : mr.type) ++by_type[std::string(dtype_traits(t).name)];
    std::string chosen;
    for (const auto& [name, n] : by_type) chosen += fmt::format("{}{} {}", chosen.empty() ? "" : ", ", n, name);
    uint64_t expert_bytes = mr.alloc.bytes;
    std::printf("mixed: %zu %s: %s; %s of %s budget (%.3f bits/weight), cost %.6g%s\n", mr.type.size(),
                mo.per_expert ? (mo.whole_expert ? "experts" : "expert matrices") : "expert tensors", chosen.c_str(), human_bytes(expert_bytes).c_str(),
                human_bytes(mr.expert_budget).c_str(),
                8.0 * static_cast<double>(expert_bytes) / static_cast<double>(mr.expert_elements), mr.alloc.cost,
                mr.alloc.optimal ? " (optimal)" : " (time limit)");
    if (!mr.uniform_type.empty())
      std::printf("mixed: the best uniform expert type within the budget, %s, costs %.6g\n", mr.uniform_type.c_str(),
                  mr.cost_uniform_at_size);
    if (a.verbose && !mo.per_expert)
      for (size_t j = 0; j < mr.tensor.size(); ++j)
        std::printf("  %-36s %s\n", plan.tensors[mr.tensor[j]].name.c_str(), std::string(dtype_traits(mr.type[j]).name).c_str());
  }

  std::map<std::string, int> counts;
  for (size_t i = 0; i < plan.types.size(); ++i)
    if (plan.tensors[i].dims.size() >= 2) ++counts[std::string(dtype_traits(plan.types[i]).name)];
  std::string summary;
  for (const auto& [name, n] : counts) summary += fmt::format("{}{} {}", summary.empty() ? "" : ", ", n, name);
  if (a.dry_run || a.verbose) {
    for (size_t i = 0; i < plan.tensors.size(); ++i) {
      const auto& t = plan.tensors[i];
      std::printf("%-36s %-8s -> %-6s\n", t.name.c_str(), std::string(dtype_traits(t.type).name).c_str(),
                  std::string(dtype_traits(plan.types[i]).name).c_str());
    }
  }
  const int n_threads = resolve_threads(a.threads);
  std::fprintf(stderr, "moe quantize: %s (%s) -> %s as %s, %d threads; matrices: %s%s\n", a.model.c_str(),
               human_bytes(plan.bytes_in).c_str(), a.out.empty() ? "(dry run)" : a.out.c_str(), o.mix->name,
               n_threads, summary.c_str(),
               plan.n_fallback ? fmt::format("; {} fell back for their row length", plan.n_fallback).c_str() : "");
  const double bpw_in = 8.0 * static_cast<double>(plan.bytes_in) / static_cast<double>(plan.n_elements);
  const double bpw_out = 8.0 * static_cast<double>(plan.bytes_out) / static_cast<double>(plan.n_elements);
  if (a.dry_run) {
    std::printf("size: %s (%.2f bits/weight) -> %s (%.2f bits/weight)\n", human_bytes(plan.bytes_in).c_str(), bpw_in,
                human_bytes(plan.bytes_out).c_str(), bpw_out);
    return 0;
  }
  if (a.out.empty()) fail("quantize: -o OUT is required (or --dry-run)");
  ThreadPool pool(n_threads);
  ProgressLine bar("moe quantize", a.quiet);
  compress::write_quantized(*src, plan, o.mix->ftype, a.out, pool,
                            [&](int done, int total, uint64_t bytes, uint64_t bytes_total) {
                              bar.update(static_cast<double>(bytes) / static_cast<double>(std::max<uint64_t>(bytes_total, 1)),
                                         fmt::format("tensor {}/{}", done, total));
                            });
  std::printf("wrote %s in %.1fs\nsize: %s (%.2f bits/weight) -> %s (%.2f bits/weight), %.1f%%\n", a.out.c_str(),
              bar.seconds(), human_bytes(plan.bytes_in).c_str(), bpw_in, human_bytes(plan.bytes_out).c_str(), bpw_out,
              100.0 * static_cast<double>(plan.bytes_out) / static_cast<double>(plan.bytes_in));
  report_quality(a.eval, a.model, a.out, n_threads);
  return 0;
}

}  // namespace

void register_quantize(CLI::App& app, CommandSet& cmds) {
  auto a = std::make_shared<QuantizeFlags>();
  CLI::App* sub = app.add_subcommand("quantize", "Quantize a whole model (llama.cpp's file types and mixes)");
  sub->add_option("-m,--model", a->model, "Input GGUF")->required();
  sub->add_option("-o,--output", a->out, "Output GGUF");
  sub->add_option("--type", a->type, "File type: Q4_K_M, Q4_K_S, Q5_K_M, Q5_K_S, Q3_K_S/M/L, Q2_K, Q6_K, Q8_0, Q4_0, "
                                     "Q4_1, Q5_0, Q5_1, F16, BF16, F32 (llama-quantize's names)");
  sub->add_option("--expert-type", a->expert_type, "Type of the routed experts (overrides the mix)");
  sub->add_option("--shared-type", a->shared_type, "Type of the shared experts");
  sub->add_option("--dense-ffn-type", a->dense_type, "Type of dense FFN layers");
  sub->add_option("--attn-type", a->attn_type, "Type of attention q/k/v/output");
  sub->add_option("--output-type", a->output_type, "Type of output.weight (llama-quantize --output-tensor-type)");
  sub->add_option("--embd-type", a->embd_type, "Type of token_embd (llama-quantize --token-embedding-type)");
  sub->add_option("--tensor-type", a->tensor_types, "PATTERN=TYPE, as llama-quantize (regex search; first wins)");
  sub->add_flag("--pure", a->pure, "The base type for every matrix (no mix rules)");
  sub->add_flag("--leave-output", a->leave_output, "Keep output.weight as it is");
  sub->add_flag("--allow-requantize", a->allow_requantize, "Allow re-quantizing tensors that are already quantized");
  sub->add_flag("--dry-run", a->dry_run, "Print each tensor's type and the sizes; write nothing");
  sub->add_flag("-v,--verbose", a->verbose, "Print each tensor's type");
  sub->add_flag("--mixed", a->mixed, "Choose the routed experts' types per (layer, projection) by the bit-allocation "
                                     "ILP (needs --budget and --stats)");
  sub->add_option("--budget", a->budget, "--mixed: bits per expert weight (e.g. 4.5) or the file's tensor bytes "
                                         "(e.g. 300M, 1.5G)");
  sub->add_option("--stats", a->stats, "--mixed: calibration statistics with reconstruction errors (moe calibrate)");
  sub->add_option("--candidates", a->candidates, "--mixed: candidate types, comma-separated (default: the stats' "
                                                 "reconstruction types)");
  sub->add_option("--alpha", a->alpha, "--mixed: exponent of the expert frequency in the importance")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 8.0));
  sub->add_option("--beta", a->beta, "--mixed: exponent of the mean routing weight (0 = frequency only)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 8.0));
  sub->add_flag("--no-protect", a->no_protect, "--mixed: no forced highest precision for super experts' layers");
  sub->add_option("--layout", a->layout, "--mixed: per-tensor (one type per layer and projection: standard GGUF, "
                                         "llama.cpp loads it) or per-expert (one type per expert: moe.cpp's own "
                                         "layout, docs/compression.md)")
      ->capture_default_str();
  sub->add_option("--expert-unit", a->expert_unit, "--layout per-expert: matrix (a type per expert matrix: gate, up "
                                                   "and down apart) or expert (one type per expert)")
      ->capture_default_str();
  add_eval_flags(sub, a->eval);
  sub->add_option("-t,--threads", a->threads, "Threads (0 = all cores)")->check(CLI::Range(0, 1024));
  sub->add_flag("-q,--quiet", a->quiet, "No progress line");
  cmds.add(sub, [a] { return run_quantize(*a); });
}

}  // namespace moe::cli
