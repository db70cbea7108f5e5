// `moe merge --method msmoe --keep RATIO --stats STATS -m IN -o OUT [--align] [--eval FILE...]` (or --keep-experts N):
// M-SMoE expert merging (compress/merge.h). Per MoE layer the most frequent experts become centres, the others join
// the centre with the most similar router-logit column, optionally aligned neuron by neuron, and each group is
// averaged with frequency weights. The output is an ordinary GGUF of the same arch with fewer experts; each merged
// expert routes through its centre's router row (docs/compression.md).
#include <cstdio>

#include "base/error.h"
#include "cli_util.h"
#include "commands.h"
#include "compress/criteria.h"
#include "compress/expert_edit.h"
#include "compress/merge.h"
#include "compress_quality.h"
#include "model/weights.h"
#include "progress.h"
#include "quantize_flags.h"

namespace moe::cli {

namespace {

struct MergeArgs {
  std::string model, stats, method = "msmoe", out, weighting = "frequency";
  double keep = 0;
  int keep_experts = 0;
  bool no_protect = false, align = false, quiet = false;
  int threads = 0;
  EvalFlags eval;
};

int run_merge(const MergeArgs& a) {
  if (a.method != "msmoe") fail("--method {}: unknown (known: msmoe)", a.method);
  if (a.weighting != "frequency" && a.weighting != "uniform")
    fail("--weighting {}: expected frequency or uniform", a.weighting);
  if ((a.keep > 0) == (a.keep_experts > 0)) fail("merge: give exactly one of --keep RATIO and --keep-experts N");
  if (a.out.empty()) fail("merge: -o OUT is required");
  check_output_path(a.model, a.out);
  auto model = Model::load(a.model, gguf::DataAccess::Mmap, /*defer_experts=*/true);
  model->require_stacked_experts("moe merge");
  const ModelSpec& spec = model->spec();
  const compress::CalibStats stats = compress::load_stats(a.stats);
  if (!compress::check_stats_match(stats, *model, a.stats))
    std::fprintf(stderr, "moe merge: note: %s was calibrated on %s, whose expert weights differ from %s's\n",
                 a.stats.c_str(), stats.model_file.c_str(), a.model.c_str());
  compress::MergeOptions o;
  o.keep = a.keep_experts > 0 ? a.keep_experts : compress::experts_for_ratio(spec, a.keep);
  o.protect = !a.no_protect;
  o.frequency_weights = a.weighting == "frequency";
  const compress::MergePlan plan = compress::plan_merge(stats, spec, o);
  for (const compress::LayerStats& l : stats.layers) {
    double selections = 0;
    for (double c : l.count) selections += c;
    if (selections == 0)
      std::fprintf(stderr, "moe merge: note: layer %d saw no calibration tokens; its groups follow expert order\n",
                   l.layer);
  }

  ProgressLine bar("moe merge", a.quiet);
  auto src = gguf::File::open(a.model, gguf::DataAccess::Pread);
  const compress::ExpertEdit edit = compress::merge_edit(*src, plan, a.align);
  compress::write_expert_edit(*src, edit, a.out, [&](gguf::Writer& w) {
    w.set("moe.merge.method", gguf::Value::make_string(a.method));
    w.set("moe.merge.aligned", gguf::Value::make_bool(a.align));
    w.set("moe.merge.weighting", gguf::Value::make_string(a.weighting));
    w.set("moe.merge.source_experts", gguf::Value::make_u32(static_cast<uint32_t>(stats.layers.front().n_expert)));
    // Per MoE layer, the output expert each source expert was merged into.
    for (int il = 0; il < spec.n_layer; ++il)
      if (!plan.group_of[il].empty())
        w.set("moe.merge.group_of." + std::to_string(il),
              gguf::Value::make_i32_array(std::vector<int32_t>(plan.group_of[il].begin(), plan.group_of[il].end())));
  }, [&](int done, int total) { bar.update(static_cast<double>(done) / total, fmt::format("tensor {}/{}", done, total)); });

  int k = 0;
  for (const LayerSpec& L : spec.layers)
    if (L.is_moe) k = L.moe.n_expert_used;
  std::printf("method msmoe%s, %s weights: %d of %d experts per layer (k %d -> %d)\n", a.align ? " (aligned)" : "",
              a.weighting.c_str(), o.keep, stats.layers.front().n_expert, k, std::min(k, o.keep));
  for (int il = 0; il < spec.n_layer; ++il) {
    if (plan.centres[il].empty()) continue;
    std::string groups;
    for (size_t j = 0; j < plan.centres[il].size(); ++j) {
      // The centre first (marked *), then its members; each with its averaging weight.
      const int c = plan.centres[il][j];
      std::string g = fmt::format("{}*({:.2f})", c, plan.weight[il][c]);
      for (size_t e = 0; e < plan.group_of[il].size(); ++e)
        if (plan.group_of[il][e] == static_cast<int>(j) && static_cast<int>(e) != c)
          g += fmt::format("+{}({:.2f})", e, plan.weight[il][e]);
      groups += (groups.empty() ? "" : " ") + fmt::format("[{}]", g);
    }
    std::printf("  layer %d groups %s\n", il, groups.c_str());
  }
  std::printf("wrote %s in %.1fs\n", a.out.c_str(), bar.seconds());
  report_quality(a.eval, a.model, a.out, resolve_threads(a.threads));
  return 0;
}

}  // namespace

void register_merge(CLI::App& app, CommandSet& cmds) {
  auto a = std::make_shared<MergeArgs>();
  CLI::App* sub = app.add_subcommand("merge", "Merge experts (M-SMoE) by calibration statistics");
  sub->add_option("-m,--model", a->model, "GGUF model file")->required();
  sub->add_option("--stats", a->stats, "calibration statistics (moe calibrate)")->required();
  sub->add_option("--method", a->method, "msmoe (frequency centres, router-logit similarity, weighted average)")
      ->capture_default_str();
  sub->add_option("--keep", a->keep, "fraction of each layer's experts kept (as merged groups)");
  sub->add_option("--keep-experts", a->keep_experts, "experts per layer after merging")->check(CLI::Range(1, 65536));
  sub->add_option("-o,--output", a->out, "output GGUF");
  sub->add_flag("--align", a->align, "align each member's neurons to its centre (linear assignment) before averaging");
  sub->add_option("--weighting", a->weighting, "frequency (M-SMoE) or uniform (naive averaging)")->capture_default_str();
  sub->add_flag("--no-protect", a->no_protect, "let super experts be merged into other centres");
  add_eval_flags(sub, a->eval);
  sub->add_option("-t,--threads", a->threads, "threads for --eval (0 = all cores)")->check(CLI::Range(0, 1024));
  sub->add_flag("-q,--quiet", a->quiet, "No progress line");
  sub->footer(
      "Memory: one output tensor, the f32 matrices of the experts of one group being averaged and, with --align, two "
      "experts' matrices and an n_ff x n_ff score matrix; the model is read tensor by tensor.");
  cmds.add(sub, [a] { return run_merge(*a); });
}

}  // namespace moe::cli
