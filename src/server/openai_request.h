// OpenAI-compatible request bodies (/v1/chat/completions, /v1/completions): strict parsing and
// validation into a ParsedRequest, and OpenAI's error shape. Nothing here touches a model, so it can be
// fuzzed on its own (fuzz/openai_request_fuzz.cpp); server.cpp turns a ParsedRequest into sequences.
//
// Strictness follows OpenAI's API: a body that is not a JSON object, a field of the wrong type or out
// of range, and an unrecognized field are 400 errors naming the field (`param`). Fields we accept but
// do not implement are errors when set to anything but their neutral value (presence_penalty 0, ...),
// so a client never gets silently different behaviour. The `moe` object (moe.cpp's own) is just as
// strict: an unknown key in it is an error.
#pragma once
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "moe/routing_policy.h"
#include "tokenizer/chat_template.h"

namespace moe::server {

// An error as OpenAI reports it: HTTP status, and {"error": {"message", "type", "param", "code"}}.
struct ApiError : std::exception {
  ApiError(int status, std::string type, std::string message, std::string param = {}, std::string code = {})
      : status(status), type(std::move(type)), message(std::move(message)), param(std::move(param)),
        code(std::move(code)) {}
  const char* what() const noexcept override { return message.c_str(); }
  int status;
  std::string type;     // invalid_request_error, authentication_error, rate_limit_error, server_error, ...
  std::string message;
  std::string param;    // "" = null
  std::string code;     // "" = null
};
// 400 invalid_request_error naming the field.
ApiError bad_request(const std::string& message, const std::string& param = {}, const std::string& code = {});
nlohmann::json error_body(const ApiError& e);

enum class Endpoint { Chat, Completion };

// moe.cpp's per-request controls: the routing policy (moe/routing_policy.h's JSON form, parsed strictly:
// an unknown key, a wrong type or a value out of range is a 400) and traces.
struct MoeControls {
  bool present = false;
  std::optional<RoutingPolicy> policy;  // the keys other than "trace"; none: the server's own policy
  bool trace = false;
};

// The request parameter a routing-policy error is about ("moe.top_p"), from the error's text; "moe"
// when it names none.
std::string moe_param(const std::string& message);

struct ParsedRequest {
  Endpoint endpoint = Endpoint::Chat;
  std::string model;                            // "" = not given
  std::vector<ChatMessage> messages;            // chat
  std::vector<std::string> prompt_texts;        // completions: text prompts ...
  std::vector<std::vector<int32_t>> prompt_ids; // ... or token-id prompts (one of the two is filled)
  int n = 1;                                    // choices per prompt
  int64_t max_tokens = -1;                      // -1 = until end of generation or a full context
  float temperature = 1.0f;
  float top_p = 1.0f;
  int top_k = 0;                                // 0 = off (an extension: OpenAI has no top_k)
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;                   // stream_options.include_usage
  int top_logprobs = -1;                        // -1 = no logprobs; else how many alternatives per token
  bool echo = false;                            // completions: the prompt is prepended to the text
  std::vector<std::pair<int32_t, float>> logit_bias;
  bool ignore_eos = false;                      // an extension (llama-server's name)
  MoeControls moe;
  size_t n_prompts() const { return endpoint == Endpoint::Chat ? 1 : prompt_texts.size() + prompt_ids.size(); }
};

// Most choices one request may ask for (n times the number of prompts).
inline constexpr int kMaxChoices = 128;

// Parses and validates a body. Throws ApiError (400) on any problem.
ParsedRequest parse_request(Endpoint endpoint, std::string_view body);

}  // namespace moe::server
