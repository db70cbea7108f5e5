// The token loop shared by `moe run` and `moe chat`: sample, stream text, check stop conditions,
// extend the session. Stop strings are matched on the decoded text and are never printed: output
// that could still turn out to be the start of a stop string is held back until it cannot.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/thread_pool.h"
#include "runtime/sampler.h"
#include "runtime/scmoe.h"
#include "runtime/session.h"
#include "tokenizer/tokenizer.h"

namespace moe::cli {

// Incremental stop-string search over streamed text.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);
  // Adds text; returns what is safe to print now. After a stop string was seen, stopped() is true,
  // the returned text ends just before it, and later calls return nothing.
  std::string push(std::string_view text);
  // Whatever is still held back (call once generation ended without a stop string).
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

enum class StopReason { Eog, Length, StopString, ContextFull, Interrupted };
const char* stop_reason_name(StopReason r);

struct GenerateParams {
  int n_predict = -1;  // < 0: no limit (until another stop condition)
  std::vector<std::string> stops;
  bool ignore_eos = false;
  std::function<void(int32_t)> on_token;  // optional: called with each kept token as it is sampled
  // SCMoE (runtime/scmoe.h): a second session (the weak pass) fed the same tokens; sampling then uses
  // the contrastive scores. contrast_logits: its logits for its last token (it has seen the prompt).
  Session* contrast = nullptr;
  const std::vector<float>* contrast_logits = nullptr;
  ScmoeParams scmoe;
  bool logprobs = false;  // fill GenerateResult::logprobs
};

struct GenerateResult {
  std::vector<int32_t> ids;  // every sampled token except a final end-of-generation one
  std::string text;          // the printed text (without any stop string)
  StopReason reason = StopReason::Length;
  double seconds = 0;        // wall time of the loop
  double first_token_seconds = 0;  // from entry to the first sampled token
  std::vector<float> logprobs;     // with params.logprobs: log p(token) under the session's own logits, per id
};

// Generates from `logits` (the session's output for its last token). `tok` may be null: then no
// text is produced and EOG/stop strings are not checked. `emit` receives printable text as it
// becomes final. `interrupt` (may be null) is polled once per token; when it is set the loop ends
// with StopReason::Interrupted (the flag is left for the caller to clear). The session keeps every
// token that was evaluated; the last sampled token is not evaluated.
GenerateResult generate(Session& session, ThreadPool& pool, Sampler& sampler, const Tokenizer* tok,
                        const std::vector<float>& logits, const GenerateParams& params,
                        const std::function<void(std::string_view)>& emit, const std::atomic<bool>* interrupt);

}  // namespace moe::cli

namespace moe {
class Model;
}

namespace moe::cli {

// Model::load for commands that generate text. A file without weights (a vocabulary-only GGUF such
// as llama.cpp's ggml-vocab-*.gguf) gets an error saying so, naming the file, instead of the
// generic missing-tensor/architecture error.
std::unique_ptr<Model> load_model_for_generation(const std::string& path);

// Reads a whole file (binary); errors name the file.
std::string read_text_file(const std::string& path);

}  // namespace moe::cli
