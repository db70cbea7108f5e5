// libFuzzer target for the server's request parser (server/openai_request.h). The first byte picks the
// endpoint; the rest is the body. A body must either parse or throw ApiError with a 400 status (any
// other exception, a crash, a sanitizer report or a hang is a bug); a parsed request is then rendered
// through a chat template, and every error is put in OpenAI's shape and serialized, as the server does.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

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
    (void)dump_json(r.moe.policy);
  } catch (const ApiError& e) {
    if (e.status != 400) std::abort();
    (void)dump_json(error_body(e));
  }
  return 0;
}
