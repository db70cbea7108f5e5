// `moe prune -m MODEL --stats STATS --criterion reap|easy-ep|frequency|tcess|random --keep RATIO -o OUT`
// (or --keep-experts N): drops the least important routed experts of every MoE layer (compress/criteria.h)
// and writes an ordinary GGUF of the same arch (compress/expert_edit.h): expert slices, router rows and
// selection-bias entries removed, expert count updated, k clamped, shared experts untouched, group-limited
// routers pruned evenly per group, super experts kept unless --no-protect. --mask-only prints the run-time
// mask of the same experts instead. --criterion heapr prunes expert neurons (compress/heapr_prune.h).
#include <cstdio>
#include <filesystem>

#include "base/error.h"
#include "cli_util.h"
#include "commands.h"
#include "compress/criteria.h"
#include "compress/expert_edit.h"
#include "compress/heapr_prune.h"
#include "compress_quality.h"
#include "model/weights.h"
#include "progress.h"
#include "quantize_flags.h"

namespace moe::cli {

namespace {

struct PruneArgs {
  std::string model, stats, criterion, out, label, neuron_layout = "pad";
  double keep = 0;
  int keep_experts = 0;
  bool no_protect = false, mask_only = false, quiet = false;
  uint64_t seed = 1;
  int threads = 0;
  EvalFlags eval;
};

std::string list(const std::vector<int>& v) {
  std::string s;
  for (int x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
  return s;
}

int run_prune(const PruneArgs& a) {
  if ((a.keep > 0) == (a.keep_experts > 0)) fail("prune: give exactly one of --keep RATIO and --keep-experts N");
  const compress::Criterion crit = compress::parse_criterion(a.criterion);
  if (!a.mask_only) {
    if (a.out.empty()) fail("prune: -o OUT is required (or --mask-only)");
    check_output_path(a.model, a.out);
  }
  auto model = Model::load(a.model, gguf::DataAccess::Mmap, /*defer_experts=*/true);
  model->require_stacked_experts("moe prune");
  const ModelSpec& spec = model->spec();
  const compress::CalibStats stats = compress::load_stats(a.stats);
  if (!compress::check_stats_match(stats, *model, a.stats))
    std::fprintf(stderr, "moe prune: note: %s was calibrated on %s, whose expert weights differ from %s's\n",
                 a.stats.c_str(), stats.model_file.c_str(), a.model.c_str());
  ProgressLine bar("moe prune", a.quiet || a.mask_only);
  auto progress = [&](int done, int total) {
    bar.update(static_cast<double>(done) / total, fmt::format("tensor {}/{}", done, total));
  };
  auto src = gguf::File::open(a.model, gguf::DataAccess::Pread);

  if (crit == compress::Criterion::Heapr) {
    if (a.keep_experts > 0) fail("--criterion heapr prunes neurons: give --keep RATIO (of the experts' neurons)");
    if (a.mask_only) fail("--mask-only: HEAPr removes neurons, which a routing mask cannot express");
    if (a.neuron_layout != "pad" && a.neuron_layout != "uniform")
      fail("--neuron-layout {}: expected pad or uniform", a.neuron_layout);
    const compress::NeuronPlan plan = compress::plan_neurons(
        stats, spec.n_layer, a.keep, a.neuron_layout == "pad" ? compress::NeuronLayout::Pad : compress::NeuronLayout::Uniform,
        !a.no_protect);
    const compress::ExpertEdit edit = compress::neuron_edit(*src, plan, spec.n_layer);
    compress::write_expert_edit(*src, edit, a.out, [&](gguf::Writer& w) {
      w.set("moe.prune.criterion", gguf::Value::make_string("heapr"));
      w.set("moe.prune.neuron_layout", gguf::Value::make_string(a.neuron_layout));
      w.set("moe.prune.keep_ratio", gguf::Value::make_f32(static_cast<float>(a.keep)));
    }, progress);
    std::printf("kept %llu of %llu expert neurons (%.1f%%); file width %lld of %lld (%s layout)\nwrote %s in %.1fs\n",
                static_cast<unsigned long long>(plan.kept_total), static_cast<unsigned long long>(plan.total),
                100.0 * static_cast<double>(plan.kept_total) / static_cast<double>(plan.total),
                static_cast<long long>(plan.width), static_cast<long long>(stats.layers.front().n_ff),
                a.neuron_layout.c_str(), a.out.c_str(), bar.seconds());
    report_quality(a.eval, a.model, a.out, resolve_threads(a.threads));
    return 0;
  }

  compress::ExpertChoice choice;
  choice.criterion = crit;
  choice.keep = a.keep_experts > 0 ? a.keep_experts : compress::experts_for_ratio(spec, a.keep);
  choice.protect = !a.no_protect;
  choice.seed = a.seed;
  if (crit == compress::Criterion::Tcess) {
    if (stats.labels.empty()) fail("--criterion tcess: the statistics have no labels");
    if (a.label.empty() && stats.labels.size() > 1)
      fail("--criterion tcess: give --label (the stats have {} labels: {}...)", stats.labels.size(), stats.labels[0]);
    choice.label = a.label.empty() ? 0 : stats.label_index(a.label);
  } else if (!a.label.empty()) {
    fail("--label is for --criterion tcess");
  }
  const std::vector<std::vector<int>> keep = compress::choose_experts(stats, spec, choice);
  if (a.mask_only) {
    std::printf("%s", compress::mask_for_kept(spec, keep).c_str());
    return 0;
  }
  compress::ExpertEdit edit;
  edit.copy_from = keep;
  edit.router_from = keep;
  compress::write_expert_edit(*src, edit, a.out, [&](gguf::Writer& w) {
    w.set("moe.prune.criterion", gguf::Value::make_string(compress::criterion_name(crit)));
    w.set("moe.prune.source_experts", gguf::Value::make_u32(static_cast<uint32_t>(stats.layers.front().n_expert)));
    for (int il = 0; il < spec.n_layer; ++il)
      if (!keep[il].empty())
        w.set("moe.prune.kept." + std::to_string(il),
              gguf::Value::make_i32_array(std::vector<int32_t>(keep[il].begin(), keep[il].end())));
  }, progress);
  int k = 0;
  for (const LayerSpec& L : spec.layers)
    if (L.is_moe) k = L.moe.n_expert_used;
  std::printf("criterion %s: kept %d of %d experts per layer (k %d -> %d)\n", compress::criterion_name(crit),
              choice.keep, stats.layers.front().n_expert, k, std::min(k, choice.keep));
  for (int il = 0; il < spec.n_layer; ++il)
    if (!keep[il].empty()) std::printf("  layer %d keeps %s\n", il, list(keep[il]).c_str());
  std::printf("wrote %s in %.1fs\n", a.out.c_str(), bar.seconds());
  report_quality(a.eval, a.model, a.out, resolve_threads(a.threads));
  return 0;
}

}  // namespace

void register_prune(CLI::App& app, CommandSet& cmds) {
  auto a = std::make_shared<PruneArgs>();
  CLI::App* sub = app.add_subcommand("prune", "Remove experts (or expert neurons) by a calibration criterion");
  sub->add_option("-m,--model", a->model, "GGUF model file")->required();
  sub->add_option("--stats", a->stats, "calibration statistics (moe calibrate)")->required();
  sub->add_option("--criterion", a->criterion, "reap | easy-ep | frequency | tcess | random | heapr")->required();
  sub->add_option("--keep", a->keep, "fraction of each layer's experts to keep (heapr: of the neurons)");
  sub->add_option("--keep-experts", a->keep_experts, "experts to keep per layer")->check(CLI::Range(1, 65536));
  sub->add_option("-o,--output", a->out, "output GGUF");
  sub->add_option("--label", a->label, "the task whose experts TCESS keeps (a calibrate --label)");
  sub->add_flag("--no-protect", a->no_protect, "let the criterion remove super experts too");
  sub->add_option("--seed", a->seed, "seed of --criterion random");
  sub->add_flag("--mask-only", a->mask_only, "write nothing; print the routing mask of the removed experts");
  sub->add_option("--neuron-layout", a->neuron_layout, "heapr: pad (global ranking, zero-padded) or uniform")
      ->capture_default_str();
  add_eval_flags(sub, a->eval);
  sub->add_option("-t,--threads", a->threads, "threads for --eval (0 = all cores)")->check(CLI::Range(0, 1024));
  sub->add_flag("-q,--quiet", a->quiet, "No progress line");
  cmds.add(sub, [a] { return run_prune(*a); });
}

}  // namespace moe::cli
