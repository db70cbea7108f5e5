// Routing traces from the CLI: `--trace FILE` on run, chat and perplexity (and what `moe trace` shares
// with them): the flags, the header's engine and memory facts, and a recorder attached to a session.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "analysis/trace_recorder.h"
#include "engine_flags.h"
#include "runtime/engine.h"
#include "runtime/session.h"

namespace moe::cli {

struct TraceFlags {
  std::string path;  // "" = no trace
  TraceFields fields;
};

// --trace FILE, --trace-probs, --trace-expert-stats, --trace-lookahead R.
void add_trace_flags(CLI::App* sub, TraceFlags& f);

// A trace header for the engine's model, with the routing settings in force, the engine's store
// configuration and the memory facts `moe analyze --simulate` needs to turn a pool size into --mem.
TraceHeader cli_trace_header(Engine& engine, const EngineFlags& ef, const TraceFields& fields, int64_t n_ctx,
                             int64_t n_batch, const std::string& command);

// A writer and a recorder observing a session.
class CliTrace {
 public:
  // Null without --trace.
  static std::unique_ptr<CliTrace> open(const TraceFlags& f, Engine& engine, const EngineFlags& ef, int64_t n_ctx,
                                        int64_t n_batch, const std::string& command);
  CliTrace(const std::string& path, const TraceHeader& header);
  ~CliTrace();

  void attach(Session& session);
  void detach();
  // Declares an input and makes it the source of the tokens that follow (for every sequence).
  int begin_input(const std::string& file, const std::string& label);
  // The tokens that follow are sampled by the model (true) or come from the current input (false).
  void set_generated(bool generated);
  // Finishes the file and prints one line on stderr.
  void finish();
  TraceWriter& writer() { return writer_; }
  TraceRecorder& recorder() { return recorder_; }

 private:
  TraceWriter writer_;
  TraceRecorder recorder_;
  Session* session_ = nullptr;
  int input_ = 0;
};

}  // namespace moe::cli
