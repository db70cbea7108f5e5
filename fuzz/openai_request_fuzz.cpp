// libFuzzer target for the server's request parser (server/openai_request.h). The first byte picks the
// endpoint; the rest is the body. A body must either parse or throw ApiError with a 400 status (any
// other exception, a crash, a sanitizer report or a hang is a bug); a parsed request is then rendered
// through a chat template, its `moe` routing policy round-trips through its JSON form and is compiled
// against a model shape, and every error is put in OpenAI's shape and serialized, as the server does.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "base/error.h"
#include "server/openai_request.h"
#include "server/openai_response.h"
#include "tokenizer/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  using namespace moe::server;
  const Endpoint ep = (data[0] & 1) ? Endpoint::Chat : Endpoint::Completion;
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    const ParsedRequest r = parse_request(ep, body);
    if (r.n < 1 || r.n > kMaxChoices) std::abort();
    if (r.temperature < 0 || r.temperature > 2 || r.top_p < 0 || r.top_p > 1) std::abort();
    if (r.stop.size() > 4) std::abort();
    if (ep == Endpoint::Chat) {
      if (r.messages.empty()) std::abort();
      (void)moe::apply_chat_template(moe::ChatTemplate::ChatML, r.messages, true);
      (void)moe::apply_chat_template(moe::ChatTemplate::Llama3, r.messages, true);
    } else if (r.prompt_texts.empty() && r.prompt_ids.empty()) {
      std::abort();
    }
    if (r.moe.policy) {
      // A parsed policy's own JSON form parses back to the same policy, and compiling it against a model's
      // layers either works or throws moe::Error.
      const std::string text = r.moe.policy->to_json().dump();
      if (moe::RoutingPolicy::from_json(nlohmann::json::parse(text)).to_json().dump() != text) std::abort();
      const moe::RoutingShape shape{{8, 8, 0, 8}, {2, 2, 0, 2}};
      try {
        const moe::RoutingPlan plan(*r.moe.policy, shape);
      } catch (const moe::Error&) {
      }
    }
  } catch (const ApiError& e) {
    if (e.status != 400) std::abort();
    (void)dump_json(error_body(e));
  }
  return 0;
}
