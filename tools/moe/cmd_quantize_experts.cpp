// `moe quantize-experts -m MODEL --type q2_K -o SIDE.gguf [-t N]`: writes low-bit copies of every
// routed expert (model/lowbit_experts.h), for `--lowbit SIDE.gguf --lowbit-below W` at run time.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "base/error.h"
#include "base/thread_pool.h"
#include "cli_util.h"
#include "commands.h"
#include "model/lowbit_experts.h"
#include "model/weights.h"

namespace moe::cli {

namespace {

struct QuantizeExpertsArgs {
  std::string model, type, out;
  int threads = 0;
  bool quiet = false;
};

int run_quantize_experts(const QuantizeExpertsArgs& a) {
  const auto type = dtype_from_name(a.type);
  if (!type) fail("--type {}: unknown type (use e.g. q2_K, q3_K, q4_K, q5_K, q6_K, q4_0, q5_0, q8_0)", a.type);
  std::error_code ec;
  if (a.out == a.model || std::filesystem::equivalent(a.out, a.model, ec))
    fail("-o {}: the side file must not replace the model", a.out);
  // Mapped header and non-expert tensors (nothing is read from them); expert bytes are read with pread.
  auto model = Model::load(a.model, gguf::DataAccess::Mmap, /*defer_experts=*/true);
  model->require_stacked_experts("moe quantize-experts");
  check_low_bit_type(*model, *type);
  const int n_threads = resolve_threads(a.threads);
  ThreadPool pool(n_threads);
  const uint64_t expert_bytes = model->byte_report().by_placement[static_cast<size_t>(Placement::Expert)];
  // What the output holds at most: the largest expert tensor (all experts of one matrix) at the new type.
  uint64_t largest = 0;
  for (int il = 0; il < model->spec().n_layer; ++il)
    for (Role r : {Role::ExpGate, Role::ExpUp, Role::ExpDown})
      if (const WeightView& v = model->layer(il)[r])
        largest = std::max<uint64_t>(largest, row_bytes(*type, v.cols) * static_cast<uint64_t>(v.rows * v.n_mat));
  std::fprintf(stderr, "moe quantize-experts: %s (%s of experts) -> %s as %s, %d threads; holds one output tensor "
                       "at a time (at most %s)\n",
               a.model.c_str(), human_bytes(expert_bytes).c_str(), a.out.c_str(),
               std::string(dtype_traits(*type).name).c_str(), n_threads, human_bytes(largest).c_str());

  const auto t0 = std::chrono::steady_clock::now();
  const bool tty = isatty(STDERR_FILENO);
  double last_print = -1e9;
  bool printed_all = false;
  auto progress = [&](int tensors_done, int tensors_total, int64_t rows_done, int64_t rows_total) {
    if (a.quiet || printed_all) return;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // A live line on a terminal; a line every 10 s in a log; the last one once.
    if (rows_done < rows_total && s - last_print < (tty ? 0.5 : 10.0)) return;
    printed_all = rows_done >= rows_total;
    last_print = s;
    const double frac = static_cast<double>(rows_done) / static_cast<double>(std::max<int64_t>(rows_total, 1));
    const double eta = frac > 0 ? s * (1 - frac) / frac : 0;
    std::fprintf(stderr, "%smoe quantize-experts: tensor %d/%d, %.0f%% of rows, %.0fs, eta %.0fs   %s",
                 tty ? "\r" : "", std::min(tensors_done + 1, tensors_total), tensors_total, 100 * frac, s, eta,
                 tty ? "" : "\n");
    std::fflush(stderr);
  };
  write_low_bit_experts(*model, *type, a.out, pool, progress);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "%smoe quantize-experts: wrote %s (%s) in %.1fs\n", tty && !a.quiet ? "\n" : "",
               a.out.c_str(), human_bytes(low_bit_file_expert_bytes(a.out)).c_str(), s);
  return 0;
}

}  // namespace

void register_quantize_experts(CLI::App& app, CommandSet& cmds) {
  auto a = std::make_shared<QuantizeExpertsArgs>();
  CLI::App* sub = app.add_subcommand(
      "quantize-experts", "Write low-bit copies of a model's routed experts (a side file for --lowbit)");
  sub->add_option("-m,--model", a->model, "GGUF model file")->required();
  sub->add_option("--type", a->type, "Type of the copies: q2_K, q3_K, q4_K, q5_K, q6_K, q4_0, q4_1, q5_0, q5_1, q8_0, mxfp4")
      ->required();
  sub->add_option("-o,--output", a->out, "Side file to write (GGUF holding only the expert tensors)")->required();
  sub->add_option("-t,--threads", a->threads, "Threads (0 = all cores)")->check(CLI::Range(0, 1024));
  sub->add_flag("-q,--quiet", a->quiet, "No progress line");
  sub->footer(
      "Memory: holds one output tensor at a time (all experts of one matrix of one layer, at the new type; the "
      "largest is printed at the start), plus a chunk of rows per thread and the model's metadata. The model's "
      "expert bytes are read with pread, tensor by tensor, and dropped from the page cache after use; the output "
      "is written to disk tensor by tensor. No --mem: this is the most it holds.");
  cmds.add(sub, [a] { return run_quantize_experts(*a); });
}

}  // namespace moe::cli
