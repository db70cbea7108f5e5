// OpenAI response bodies: chat.completion / text_completion objects, their streamed chunks, usage, and
// moe.cpp's additions (moe_usage on every final response, moe_trace on a choice when asked for).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/batch_scheduler.h"
#include "server/openai_request.h"
#include "tokenizer/tokenizer.h"

namespace moe::server {

// Dumps JSON for the wire: invalid UTF-8 in strings (a token's raw piece) becomes U+FFFD instead of an
// exception.
std::string dump_json(const nlohmann::json& j);

// What a response needs besides the choices.
struct ResponseMeta {
  std::string id;       // chatcmpl-... / cmpl-...
  int64_t created = 0;  // unix seconds
  std::string model;
  Endpoint endpoint = Endpoint::Chat;
};

// One choice as it is being generated.
struct ChoiceState {
  std::string text;
  std::vector<GeneratedToken> tokens;  // kept only when log-probabilities are asked for
  bool finished = false;
  SequenceResult result;
};

// OpenAI's finish_reason for a sequence result ("stop" or "length").
const char* finish_reason(const SequenceResult& r);

nlohmann::json usage_json(const std::vector<ChoiceState>& choices, size_t n_prompts, int n_per_prompt);
nlohmann::json moe_usage_json(const std::vector<ChoiceState>& choices, const nlohmann::json& policy);
nlohmann::json trace_json(const std::vector<TraceRow>& rows);

// Log-probabilities of some tokens in the endpoint's format: chat {"content": [...]}, completions
// {"tokens", "token_logprobs", "top_logprobs", "text_offset"} (text_offset counts from offset0).
nlohmann::json logprobs_json(Endpoint endpoint, const Tokenizer& tok, const std::vector<GeneratedToken>& tokens,
                             size_t offset0);

// The whole (non-streamed) response. prefix: per choice, text prepended (echo).
nlohmann::json full_response(const ResponseMeta& meta, const Tokenizer& tok, const std::vector<ChoiceState>& choices,
                             size_t n_prompts, int n_per_prompt, bool logprobs, const std::vector<std::string>& prefix,
                             const nlohmann::json& policy);

// Streamed chunks. A chunk's "usage" is null when the client asked for usage (OpenAI's convention),
// absent otherwise.
nlohmann::json chunk_base(const ResponseMeta& meta, bool include_usage);
nlohmann::json role_chunk(const ResponseMeta& meta, int index, bool include_usage);  // chat: the first delta
nlohmann::json text_chunk(const ResponseMeta& meta, const Tokenizer& tok, int index, const std::string& text,
                          const std::vector<GeneratedToken>* logprob_tokens, size_t offset0, bool include_usage);
nlohmann::json finish_chunk(const ResponseMeta& meta, int index, const ChoiceState& c, bool include_usage);
nlohmann::json usage_chunk(const ResponseMeta& meta, const std::vector<ChoiceState>& choices, size_t n_prompts,
                           int n_per_prompt, const nlohmann::json& policy);

}  // namespace moe::server
