#include <cstdio>
#include <exception>

#include "base/error.h"
#include "commands.h"

int main(int argc, char** argv) {
  CLI::App app{"moe.cpp: a Mixture-of-Experts inference engine"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "moe.cpp 0.1.0");
  moe::cli::CommandSet cmds;
  moe::cli::register_info(app, cmds);
  moe::cli::register_logits(app, cmds);
  moe::cli::register_run(app, cmds);
  moe::cli::register_chat(app, cmds);
  moe::cli::register_tokenize(app, cmds);
  moe::cli::register_train(app, cmds);
  moe::cli::register_train_tokenizer(app, cmds);
  moe::cli::register_synth(app, cmds);
  moe::cli::register_bench(app, cmds);
  moe::cli::register_perplexity(app, cmds);
  moe::cli::register_route_stats(app, cmds);
  moe::cli::register_quantize_experts(app, cmds);
  moe::cli::register_kl_logits(app, cmds);
  moe::cli::register_serve(app, cmds);
  moe::cli::register_trace(app, cmds);
  moe::cli::register_analyze(app, cmds);
  moe::cli::register_quantize(app, cmds);
  moe::cli::register_tensors(app, cmds);
  moe::cli::register_calibrate(app, cmds);
  moe::cli::register_prune(app, cmds);
  moe::cli::register_merge(app, cmds);
  moe::cli::register_remix(app, cmds);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto& entry : cmds.entries) {
      if (entry.sub->parsed()) return entry.run();
    }
  } catch (const moe::Error& e) {
    std::fprintf(stderr, "moe: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "moe: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
