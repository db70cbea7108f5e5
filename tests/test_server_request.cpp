// The OpenAI request parser (server/openai_request.h): what it accepts, and that every malformed body
// is a 400 in OpenAI's error shape naming the field.
#include <gtest/gtest.h>

#include "server/openai_request.h"

namespace moe::server {
namespace {

ApiError error_of(Endpoint ep, const std::string& body) {
  try {
    parse_request(ep, body);
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "accepted: " << body;
  return ApiError(0, "", "");
}

void expect_bad(Endpoint ep, const std::string& body, const std::string& param, const std::string& words = {}) {
  const ApiError e = error_of(ep, body);
  EXPECT_EQ(e.status, 400) << body;
  EXPECT_EQ(e.type, "invalid_request_error") << body;
  EXPECT_EQ(e.param, param) << body << ": " << e.message;
  if (!words.empty()) EXPECT_NE(e.message.find(words), std::string::npos) << e.message;
  const nlohmann::json j = error_body(e);
  ASSERT_TRUE(j.contains("error"));
  for (const char* k : {"message", "type", "param", "code"}) EXPECT_TRUE(j["error"].contains(k)) << k;
}

TEST(ServerRequest, ChatFields) {
  const ParsedRequest r = parse_request(Endpoint::Chat, R"({
    "model": "m", "messages": [{"role": "system", "content": "be brief"},
                               {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
                               {"role": "assistant", "content": null, "name": "bot"},
                               {"role": "developer", "content": "x"}],
    "max_completion_tokens": 7, "temperature": 0, "top_p": 0.5, "top_k": 3, "seed": -1, "n": 2,
    "stop": ["a", "", "b"], "stream": true, "stream_options": {"include_usage": true},
    "logprobs": true, "top_logprobs": 4, "logit_bias": {"12": -100, "7": 2.5},
    "presence_penalty": 0, "frequency_penalty": 0.0, "user": "u", "moe": {"trace": true}})");
  EXPECT_EQ(r.model, "m");
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[1].content, "hi there");
  EXPECT_EQ(r.messages[2].content, "");
  EXPECT_EQ(r.messages[3].role, "system");
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_EQ(r.temperature, 0.0f);
  EXPECT_EQ(r.top_p, 0.5f);
  EXPECT_EQ(r.top_k, 3);
  ASSERT_TRUE(r.seed.has_value());
  EXPECT_EQ(*r.seed, ~uint64_t{0});
  EXPECT_EQ(r.n, 2);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(r.top_logprobs, 4);
  ASSERT_EQ(r.logit_bias.size(), 2u);
  EXPECT_TRUE(r.moe.present);
  EXPECT_TRUE(r.moe.trace);
  EXPECT_FALSE(r.moe.policy.has_value());
}

TEST(ServerRequest, CompletionPrompts) {
  EXPECT_EQ(parse_request(Endpoint::Completion, R"({"prompt": "hello"})").prompt_texts,
            std::vector<std::string>{"hello"});
  EXPECT_EQ(parse_request(Endpoint::Completion, R"({"prompt": ["a", "b"], "n": 3})").n_prompts(), 2u);
  const ParsedRequest ids = parse_request(Endpoint::Completion, R"({"prompt": [1, 2, 3], "logprobs": 2, "echo": true})");
  ASSERT_EQ(ids.prompt_ids.size(), 1u);
  EXPECT_EQ(ids.prompt_ids[0], (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(ids.top_logprobs, 2);
  EXPECT_TRUE(ids.echo);
  EXPECT_EQ(parse_request(Endpoint::Completion, R"({"prompt": [[1, 2], [3]]})").prompt_ids.size(), 2u);
  // Defaults: OpenAI's temperature 1 and top_p 1, no limit, one choice, no logprobs.
  const ParsedRequest d = parse_request(Endpoint::Completion, R"({"prompt": "x", "max_tokens": null})");
  EXPECT_EQ(d.temperature, 1.0f);
  EXPECT_EQ(d.top_p, 1.0f);
  EXPECT_EQ(d.max_tokens, -1);
  EXPECT_EQ(d.n, 1);
  EXPECT_EQ(d.top_logprobs, -1);
  EXPECT_FALSE(d.seed.has_value());
}

TEST(ServerRequest, MalformedBodies) {
  const ApiError json_error = error_of(Endpoint::Chat, "{\"messages\": [");
  EXPECT_EQ(json_error.status, 400);
  EXPECT_EQ(json_error.code, "invalid_json");
  expect_bad(Endpoint::Chat, "[1, 2]", "", "JSON object");
  expect_bad(Endpoint::Chat, "", "");
  expect_bad(Endpoint::Chat, R"({"model": "m"})", "messages", "required");
  expect_bad(Endpoint::Chat, R"({"messages": []})", "messages");
  expect_bad(Endpoint::Chat, R"({"messages": "hi"})", "messages", "not of type 'array'");
  expect_bad(Endpoint::Chat, R"({"messages": [{"content": "x"}]})", "messages[0].role");
  expect_bad(Endpoint::Chat, R"({"messages": [{"role": "user"}]})", "messages[0].content");
  expect_bad(Endpoint::Chat, R"({"messages": [{"role": "tool", "content": "x"}]})", "messages[0].role");
  expect_bad(Endpoint::Chat, R"({"messages": [{"role": "user", "content": 5}]})", "messages[0].content");
  expect_bad(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "x", "tool_calls": []}]})",
             "messages[0].tool_calls");
  expect_bad(Endpoint::Chat, R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]})",
             "messages[0].content[0].type");
  const std::string m = R"("messages": [{"role": "user", "content": "x"}])";
  expect_bad(Endpoint::Chat, "{" + m + R"(, "temperature": "hot"})", "temperature", "not of type 'number'");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "temperature": 2.5})", "temperature", "out of range");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "top_p": -0.1})", "top_p");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "max_tokens": 0})", "max_tokens");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "max_tokens": 1.5})", "max_tokens", "not of type 'integer'");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "max_tokens": 3, "max_completion_tokens": 3})", "max_tokens");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "n": 0})", "n");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "n": true})", "n");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "seed": "1"})", "seed");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "stream": 1})", "stream");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "stream_options": {"include_usage": true}})", "stream_options");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "stream": true, "stream_options": {"x": 1}})", "stream_options.x");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "stop": ["a", "b", "c", "d", "e"]})", "stop");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "stop": [1]})", "stop[0]");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "logprobs": 1})", "logprobs");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "top_logprobs": 2})", "top_logprobs", "logprobs");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "logprobs": true, "top_logprobs": 21})", "top_logprobs");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "logit_bias": {"x": 1}})", "logit_bias.x");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "logit_bias": {"5": 101}})", "logit_bias.5");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "presence_penalty": 0.5})", "presence_penalty", "not supported");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "tools": []})", "tools", "Unrecognized");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "prompt": "x"})", "prompt", "Unrecognized");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "moe": []})", "moe");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "moe": {"trace": "yes"}})", "moe.trace");
  expect_bad(Endpoint::Chat, "{" + m + R"(, "n": 100, "model": 3})", "model");
  expect_bad(Endpoint::Completion, R"({})", "prompt", "required");
  expect_bad(Endpoint::Completion, R"({"prompt": []})", "prompt");
  expect_bad(Endpoint::Completion, R"({"prompt": [1, "a"]})", "prompt[1]");
  expect_bad(Endpoint::Completion, R"({"prompt": ["a", [1]]})", "prompt[1]");
  expect_bad(Endpoint::Completion, R"({"prompt": [-1]})", "prompt[0]");
  expect_bad(Endpoint::Completion, R"({"prompt": "x", "logprobs": 6})", "logprobs");
  expect_bad(Endpoint::Completion, R"({"prompt": "x", "best_of": 2})", "best_of");
  expect_bad(Endpoint::Completion, R"({"prompt": "x", "suffix": "y"})", "suffix");
  expect_bad(Endpoint::Completion, R"({"prompt": "x", "messages": []})", "messages");
  expect_bad(Endpoint::Completion, R"({"prompt": ["a", "b", "c"], "n": 50})", "n");
}

// The moe object: trace, and the routing lab's policy in its strict JSON form (moe/routing_policy.h).
// Unknown keys, wrong types and values out of range are 400s naming the key; C3PO re-mixing (which reads
// files on the server) is refused.
TEST(ServerRequest, MoeObject) {
  const ParsedRequest t = parse_request(Endpoint::Completion, R"({"prompt": "x", "moe": {"trace": true}})");
  EXPECT_TRUE(t.moe.present);
  EXPECT_TRUE(t.moe.trace);
  EXPECT_FALSE(t.moe.policy.has_value());
  const ParsedRequest r = parse_request(
      Endpoint::Completion,
      R"({"prompt": "x", "moe": {"trace": false, "top_p": 0.6, "top_p_max_k": 4, "mask_experts": [[0, 1]],
          "steer": [{"layer": 1, "expert": 2, "factor": 3.0}]}})");
  EXPECT_FALSE(r.moe.trace);
  ASSERT_TRUE(r.moe.policy.has_value());
  EXPECT_DOUBLE_EQ(r.moe.policy->top_p, 0.6);
  EXPECT_EQ(r.moe.policy->top_p_max_k, 4);
  ASSERT_EQ(r.moe.policy->mask_experts.size(), 1u);
  EXPECT_EQ(r.moe.policy->mask_experts[0].expert, 1);
  ASSERT_EQ(r.moe.policy->steer.size(), 1u);
  EXPECT_DOUBLE_EQ(r.moe.policy->steer[0].factor, 3.0);
  EXPECT_EQ(parse_request(Endpoint::Chat, R"({"messages": [{"role": "user", "content": "x"}], "moe": {"experts": 3}})")
                .moe.policy->experts,
            3);
  const std::string m = R"("prompt": "x")";
  expect_bad(Endpoint::Completion, "{" + m + R"(, "moe": {"k": 3}})", "moe.k", "unknown key");
  expect_bad(Endpoint::Completion, "{" + m + R"(, "moe": {"experts": "3"}})", "moe.experts", "integer");
  expect_bad(Endpoint::Completion, "{" + m + R"(, "moe": {"experts": 0}})", "moe.experts");
  expect_bad(Endpoint::Completion, "{" + m + R"(, "moe": {"top_p": 1.5}})", "moe.top_p");
  expect_bad(Endpoint::Completion, "{" + m + R"(, "moe": {"top_p_max_k": 2}})", "moe.top_p_max_k", "needs top_p");
  expect_bad(Endpoint::Completion, "{" + m + R"(, "moe": {"mask_experts": [[0, 1], [0, 1]]}})", "moe.mask_experts");
  expect_bad(Endpoint::Completion, "{" + m + R"(, "moe": {"remix": {"refs": "/etc/passwd", "layers": 1}}})",
             "moe.remix", "not available per request");
}

TEST(ServerRequest, MoeParamFromPolicyErrors) {
  EXPECT_EQ(moe_param("routing policy: unknown key 'nope' (known: experts)"), "moe.nope");
  EXPECT_EQ(moe_param("routing policy: 'top_p' = 2 is out of range [0, 1]"), "moe.top_p");
  EXPECT_EQ(moe_param("routing policy: unknown key 'sinkhorn.x' (known: eps)"), "moe.sinkhorn.x");
  EXPECT_EQ(moe_param("top_p_max_k (--route-top-p-max-k) 2 needs top_p (--route-top-p)"), "moe.top_p_max_k");
  EXPECT_EQ(moe_param("steer (--steer): 1:2 is given twice"), "moe.steer");
  EXPECT_EQ(moe_param("routing policy: a 'steer' entry lacks 'factor': {}"), "moe.steer");
  EXPECT_EQ(moe_param("Something else entirely"), "moe");
}

}  // namespace
}  // namespace moe::server
