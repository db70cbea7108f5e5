// Each subcommand of the `moe` CLI lives in its own cmd_*.cpp and registers itself here.
// A registered command returns its process exit code; errors escape as moe::Error and main()
// turns them into one line on stderr.
#pragma once
#include <functional>

#include <CLI/CLI.hpp>

namespace moe::cli {

using CommandRunner = std::function<int()>;

struct CommandSet {
  // Called by each register_* function: the subcommand and what to run when it is chosen.
  void add(CLI::App* sub, CommandRunner run) { entries.push_back({sub, std::move(run)}); }
  struct Entry {
    CLI::App* sub;
    CommandRunner run;
  };
  std::vector<Entry> entries;
};

void register_info(CLI::App& app, CommandSet& cmds);
void register_logits(CLI::App& app, CommandSet& cmds);
void register_run(CLI::App& app, CommandSet& cmds);
void register_chat(CLI::App& app, CommandSet& cmds);
void register_tokenize(CLI::App& app, CommandSet& cmds);
void register_train(CLI::App& app, CommandSet& cmds);
void register_train_tokenizer(CLI::App& app, CommandSet& cmds);
void register_synth(CLI::App& app, CommandSet& cmds);
void register_bench(CLI::App& app, CommandSet& cmds);
void register_perplexity(CLI::App& app, CommandSet& cmds);
void register_route_stats(CLI::App& app, CommandSet& cmds);
void register_quantize_experts(CLI::App& app, CommandSet& cmds);
void register_kl_logits(CLI::App& app, CommandSet& cmds);
void register_serve(CLI::App& app, CommandSet& cmds);
void register_trace(CLI::App& app, CommandSet& cmds);
void register_analyze(CLI::App& app, CommandSet& cmds);
void register_quantize(CLI::App& app, CommandSet& cmds);
void register_tensors(CLI::App& app, CommandSet& cmds);
void register_calibrate(CLI::App& app, CommandSet& cmds);
void register_prune(CLI::App& app, CommandSet& cmds);
void register_merge(CLI::App& app, CommandSet& cmds);
void register_remix(CLI::App& app, CommandSet& cmds);  // remix-build, remix-eval

}  // namespace moe::cli
