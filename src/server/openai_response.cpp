#include "server/openai_response.h"

namespace moe::server {

using json = nlohmann::json;

std::string dump_json(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

const char* finish_reason(const SequenceResult& r) { return r.reason == FinishReason::Length ? "length" : "stop"; }

json usage_json(const std::vector<ChoiceState>& choices, size_t n_prompts, int n_per_prompt) {
  // Each prompt counts once however many choices it has (as OpenAI counts n > 1).
  int64_t prompt = 0, completion = 0;
  for (size_t i = 0; i < choices.size(); ++i) {
    if (static_cast<int>(i) % n_per_prompt == 0) prompt += choices[i].result.usage.prompt_tokens;
    completion += choices[i].result.usage.completion_tokens;
  }
  (void)n_prompts;
  return {{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion}};
}

json moe_usage_json(const std::vector<ChoiceState>& choices, const json& policy) {
  SequenceUsage u;
  for (const ChoiceState& c : choices) {
    const SequenceUsage& x = c.result.usage;
    u.routed_rows += x.routed_rows;
    u.expert_slots += x.expert_slots;
    u.store_hits += x.store_hits;
    u.store_misses += x.store_misses;
    u.queue_seconds = std::max(u.queue_seconds, x.queue_seconds);
    u.first_token_seconds = c.result.usage.first_token_seconds > 0 && (u.first_token_seconds == 0 || x.first_token_seconds < u.first_token_seconds)
                                ? x.first_token_seconds
                                : u.first_token_seconds;
  }
  json j = {{"experts_per_token", u.experts_per_token()},
            {"store_hit_rate", u.store_hit_rate()},
            {"store_hits", u.store_hits},
            {"store_misses", u.store_misses},
            {"routed_token_layers", u.routed_rows},
            {"queue_seconds", u.queue_seconds},
            {"time_to_first_token_seconds", u.first_token_seconds}};
  j["routing_policy"] = policy;
  return j;
}

json trace_json(const std::vector<TraceRow>& rows) {
  json tokens = json::array();
  for (const TraceRow& r : rows) {
    json layers = json::object();
    for (size_t l = 0; l < r.layers.size(); ++l) {
      if (r.layers[l].empty()) continue;
      json sel = json::array();
      for (const auto& [e, w] : r.layers[l]) sel.push_back({e, w});
      layers[std::to_string(l)] = sel;
    }
    tokens.push_back({{"pos", r.pos}, {"token", r.token}, {"experts", layers}});
  }
  return {{"format", "per token: {layer: [[expert, weight], ...]} after the routing policy"}, {"tokens", tokens}};
}

namespace {

std::string valid_utf8(const std::string& s) { return json::parse(dump_json(json(s))).get<std::string>(); }

json bytes_of(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(static_cast<int>(c));
  return b;
}

}  // namespace

json logprobs_json(Endpoint endpoint, const Tokenizer& tok, const std::vector<GeneratedToken>& tokens, size_t offset0) {
  if (endpoint == Endpoint::Chat) {
    json content = json::array();
    for (const GeneratedToken& g : tokens) {
      const std::string piece = tok.token_to_piece(g.id);
      json top = json::array();
      for (const TokenLogprob& t : g.top) {
        const std::string p = tok.token_to_piece(t.id);
        top.push_back({{"token", p}, {"logprob", t.logprob}, {"bytes", bytes_of(p)}});
      }
      content.push_back({{"token", piece}, {"logprob", g.logprob}, {"bytes", bytes_of(piece)}, {"top_logprobs", top}});
    }
    return {{"content", content}};
  }
  json toks = json::array(), lps = json::array(), tops = json::array(), offs = json::array();
  size_t off = offset0;
  for (const GeneratedToken& g : tokens) {
    const std::string piece = tok.token_to_piece(g.id);
    toks.push_back(piece);
    lps.push_back(g.logprob);
    // Keys are pieces, with any invalid UTF-8 (part of a character) replaced, as every string is on the wire.
    json top = json::object();
    for (const TokenLogprob& t : g.top) top[valid_utf8(tok.token_to_piece(t.id))] = t.logprob;
    tops.push_back(g.top.empty() ? json(nullptr) : top);
    offs.push_back(off);
    off += piece.size();
  }
  return {{"tokens", toks}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offs}};
}

json full_response(const ResponseMeta& meta, const Tokenizer& tok, const std::vector<ChoiceState>& choices,
                   size_t n_prompts, int n_per_prompt, bool logprobs, const std::vector<std::string>& prefix,
                   const json& policy) {
  const bool chat = meta.endpoint == Endpoint::Chat;
  json out = {{"id", meta.id},
              {"object", chat ? "chat.completion" : "text_completion"},
              {"created", meta.created},
              {"model", meta.model},
              {"system_fingerprint", "moe.cpp"}};
  json arr = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceState& c = choices[i];
    const std::string pre = i < prefix.size() ? prefix[i] : std::string();
    json choice = {{"index", i}};
    if (chat) choice["message"] = {{"role", "assistant"}, {"content", c.text}};
    else choice["text"] = pre + c.text;
    choice["logprobs"] = logprobs ? logprobs_json(meta.endpoint, tok, c.tokens, pre.size()) : json(nullptr);
    choice["finish_reason"] = finish_reason(c.result);
    if (!c.result.trace.empty()) choice["moe_trace"] = trace_json(c.result.trace);
    arr.push_back(std::move(choice));
  }
  out["choices"] = std::move(arr);
  out["usage"] = usage_json(choices, n_prompts, n_per_prompt);
  out["moe_usage"] = moe_usage_json(choices, policy);
  return out;
}

json chunk_base(const ResponseMeta& meta, bool include_usage) {
  json j = {{"id", meta.id},
            {"object", meta.endpoint == Endpoint::Chat ? "chat.completion.chunk" : "text_completion"},
            {"created", meta.created},
            {"model", meta.model},
            {"system_fingerprint", "moe.cpp"}};
  if (include_usage) j["usage"] = nullptr;
  return j;
}

json role_chunk(const ResponseMeta& meta, int index, bool include_usage) {
  json j = chunk_base(meta, include_usage);
  j["choices"] = json::array(
      {{{"index", index}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"logprobs", nullptr}, {"finish_reason", nullptr}}});
  return j;
}

json text_chunk(const ResponseMeta& meta, const Tokenizer& tok, int index, const std::string& text,
                const std::vector<GeneratedToken>* logprob_tokens, size_t offset0, bool include_usage) {
  json j = chunk_base(meta, include_usage);
  json lp = logprob_tokens ? logprobs_json(meta.endpoint, tok, *logprob_tokens, offset0) : json(nullptr);
  if (meta.endpoint == Endpoint::Chat)
    j["choices"] = json::array({{{"index", index}, {"delta", {{"content", text}}}, {"logprobs", lp}, {"finish_reason", nullptr}}});
  else
    j["choices"] = json::array({{{"index", index}, {"text", text}, {"logprobs", lp}, {"finish_reason", nullptr}}});
  return j;
}

json finish_chunk(const ResponseMeta& meta, int index, const ChoiceState& c, bool include_usage) {
  json j = chunk_base(meta, include_usage);
  json choice = {{"index", index}, {"logprobs", nullptr}, {"finish_reason", finish_reason(c.result)}};
  if (meta.endpoint == Endpoint::Chat) choice["delta"] = json::object();
  else choice["text"] = "";
  if (!c.result.trace.empty()) choice["moe_trace"] = trace_json(c.result.trace);
  j["choices"] = json::array({choice});
  return j;
}

json usage_chunk(const ResponseMeta& meta, const std::vector<ChoiceState>& choices, size_t n_prompts, int n_per_prompt,
                 const json& policy) {
  json j = chunk_base(meta, false);
  j["choices"] = json::array();
  j["usage"] = usage_json(choices, n_prompts, n_per_prompt);
  j["moe_usage"] = moe_usage_json(choices, policy);
  return j;
}

}  // namespace moe::server
