#include "server/openai_request.h"

#include <cmath>
#include <limits>
#include <regex>

#include "base/error.h"

namespace moe::server {

ApiError bad_request(const std::string& message, const std::string& param, const std::string& code) {
  return ApiError(400, "invalid_request_error", message, param, code);
}

nlohmann::json error_body(const ApiError& e) {
  nlohmann::json err = {{"message", e.message}, {"type", e.type}, {"param", nullptr}, {"code", nullptr}};
  if (!e.param.empty()) err["param"] = e.param;
  if (!e.code.empty()) err["code"] = e.code;
  return {{"error", err}};
}

namespace {

using json = nlohmann::json;

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "integer";
    case json::value_t::number_float: return "number";
    case json::value_t::string: return "string";
    case json::value_t::array: return "array";
    case json::value_t::object: return "object";
    default: return "value";
  }
}

std::string short_value(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

[[noreturn]] void wrong_type(const json& v, const char* expected, const std::string& param) {
  throw bad_request(fmt::format("{} is not of type '{}' - '{}'", short_value(v), expected, param), param);
}

bool get_bool(const json& v, const std::string& param) {
  if (!v.is_boolean()) wrong_type(v, "boolean", param);
  return v.get<bool>();
}

// A JSON number (integers and floats alike), finite and within [lo, hi].
double get_number(const json& v, const std::string& param, double lo, double hi) {
  if (!v.is_number()) wrong_type(v, "number", param);
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    throw bad_request(fmt::format("{} is out of range for '{}': expected a number from {} to {}", short_value(v), param,
                                  lo, hi),
                      param);
  return x;
}

// An integer within [lo, hi] (1.0 counts as an integer, as OpenAI's validator accepts it).
int64_t get_int(const json& v, const std::string& param, int64_t lo, int64_t hi) {
  int64_t x = 0;
  if (v.is_number_integer()) {
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      x = std::numeric_limits<int64_t>::max();
    else
      x = v.get<int64_t>();
  } else if (v.is_number_float() && std::isfinite(v.get<double>()) && std::floor(v.get<double>()) == v.get<double>() &&
             std::fabs(v.get<double>()) < 9e15) {
    x = static_cast<int64_t>(v.get<double>());
  } else {
    wrong_type(v, "integer", param);
  }
  if (x < lo || x > hi)
    throw bad_request(fmt::format("{} is out of range for '{}': expected an integer from {} to {}", short_value(v), param,
                                  lo, hi),
                      param);
  return x;
}

std::string get_string(const json& v, const std::string& param) {
  if (!v.is_string()) wrong_type(v, "string", param);
  return v.get<std::string>();
}

// Message content: a string, or an array of {"type": "text", "text": ...} parts (joined), or null.
std::string get_content(const json& v, const std::string& param) {
  if (v.is_null()) return {};
  if (v.is_string()) return v.get<std::string>();
  if (!v.is_array()) wrong_type(v, "string", param);
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string p = fmt::format("{}[{}]", param, i);
    const json& part = v[i];
    if (!part.is_object()) wrong_type(part, "object", p);
    if (part.contains("type")) {
      const std::string t = get_string(part["type"], p + ".type");
      if (t != "text")
        throw bad_request(fmt::format("content parts of type '{}' are not supported: this model reads text only", t),
                          p + ".type");
    }
    for (const auto& [key, value] : part.items()) {
      if (key == "type") {
        continue;
      } else if (key == "text") {
        out += get_string(value, p + ".text");
      } else {
        throw bad_request(fmt::format("Unrecognized content part field: '{}'", key), p + "." + key);
      }
    }
    if (!part.contains("type") || !part.contains("text"))
      throw bad_request("a content part needs 'type': 'text' and 'text'", p);
  }
  return out;
}

std::vector<ChatMessage> get_messages(const json& v) {
  if (!v.is_array()) wrong_type(v, "array", "messages");
  if (v.empty()) throw bad_request("'messages' must hold at least one message", "messages");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string p = fmt::format("messages[{}]", i);
    const json& m = v[i];
    if (!m.is_object()) wrong_type(m, "object", p);
    ChatMessage msg;
    bool has_role = false, has_content = false;
    for (const auto& [key, value] : m.items()) {
      if (key == "role") {
        msg.role = get_string(value, p + ".role");
        has_role = true;
      } else if (key == "content") {
        msg.content = get_content(value, p + ".content");
        has_content = true;
      } else if (key == "name") {
        get_string(value, p + ".name");  // accepted; the templates have no place for it
      } else {
        throw bad_request(fmt::format("Unrecognized message field: '{}'", key), p + "." + key);
      }
    }
    if (!has_role) throw bad_request(fmt::format("{} has no 'role'", p), p + ".role");
    if (msg.role == "developer") msg.role = "system";
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant")
      throw bad_request(fmt::format("'{}' is not a supported role (system, developer, user, assistant)", msg.role),
                        p + ".role");
    if (!has_content) throw bad_request(fmt::format("{} has no 'content'", p), p + ".content");
    out.push_back(std::move(msg));
  }
  return out;
}

void get_prompt(const json& v, ParsedRequest& r) {
  auto ids_of = [](const json& a, const std::string& p) {
    std::vector<int32_t> ids;
    for (size_t i = 0; i < a.size(); ++i)
      ids.push_back(static_cast<int32_t>(get_int(a[i], fmt::format("{}[{}]", p, i), 0, std::numeric_limits<int32_t>::max())));
    return ids;
  };
  if (v.is_string()) {
    r.prompt_texts.push_back(v.get<std::string>());
    return;
  }
  if (!v.is_array()) wrong_type(v, "string", "prompt");
  if (v.empty()) throw bad_request("'prompt' is an empty array", "prompt");
  if (v[0].is_number()) {
    r.prompt_ids.push_back(ids_of(v, "prompt"));
    return;
  }
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string p = fmt::format("prompt[{}]", i);
    if (v[i].is_string()) {
      if (!r.prompt_ids.empty()) throw bad_request("'prompt' mixes text and token ids", p);
      r.prompt_texts.push_back(v[i].get<std::string>());
    } else if (v[i].is_array()) {
      if (!r.prompt_texts.empty()) throw bad_request("'prompt' mixes text and token ids", p);
      if (v[i].empty()) throw bad_request(fmt::format("{} is an empty array", p), p);
      r.prompt_ids.push_back(ids_of(v[i], p));
    } else {
      wrong_type(v[i], "string", p);
    }
  }
}

std::vector<std::string> get_stop(const json& v) {
  if (v.is_null()) return {};
  if (v.is_string()) return v.get<std::string>().empty() ? std::vector<std::string>{} : std::vector<std::string>{v.get<std::string>()};
  if (!v.is_array()) wrong_type(v, "string", "stop");
  if (v.size() > 4) throw bad_request(fmt::format("'stop' holds {} strings; at most 4 are allowed", v.size()), "stop");
  std::vector<std::string> out;
  for (size_t i = 0; i < v.size(); ++i) {
    std::string s = get_string(v[i], fmt::format("stop[{}]", i));
    if (!s.empty()) out.push_back(std::move(s));
  }
  return out;
}

std::vector<std::pair<int32_t, float>> get_logit_bias(const json& v) {
  if (v.is_null()) return {};
  if (!v.is_object()) wrong_type(v, "object", "logit_bias");
  std::vector<std::pair<int32_t, float>> out;
  for (const auto& [key, value] : v.items()) {
    const std::string p = "logit_bias." + key;
    size_t used = 0;
    long long id = -1;
    try {
      id = std::stoll(key, &used);
    } catch (...) {
      used = 0;
    }
    if (used != key.size() || key.empty() || id < 0 || id > std::numeric_limits<int32_t>::max())
      throw bad_request(fmt::format("'{}' in logit_bias is not a token id", key), p);
    out.push_back({static_cast<int32_t>(id), static_cast<float>(get_number(value, p, -100, 100))});
  }
  return out;
}

}  // namespace

std::string moe_param(const std::string& message) {
  // The routing lab's errors name the key first: "routing policy: unknown key 'k' (...)", "routing policy:
  // 'top_p' must be ...", "routing policy: a 'steer' entry ..." or "top_p (--route-top-p) ...".
  static const std::regex quoted(R"(^routing policy: (?:unknown key |a )?'([A-Za-z_][A-Za-z0-9_.]*)')");
  static const std::regex leading(R"(^([a-z_]+(?:\.[a-z_]+)?)[ :(])");
  std::smatch m;
  if (std::regex_search(message, m, quoted) || std::regex_search(message, m, leading)) return "moe." + m[1].str();
  return "moe";
}

namespace {

MoeControls get_moe(const json& v) {
  if (!v.is_object()) wrong_type(v, "object", "moe");
  MoeControls m;
  m.present = true;
  json policy = json::object();
  for (const auto& [key, value] : v.items()) {
    if (key == "trace") m.trace = get_bool(value, "moe.trace");
    else if (key == "remix")  // C3PO reads reference files named by the policy: not a client's to choose
      throw bad_request("'moe.remix' is not available per request (it reads reference files on the server)",
                        "moe.remix");
    else policy[key] = value;
  }
  if (policy.empty()) return m;
  try {
    m.policy = RoutingPolicy::from_json(policy);
  } catch (const std::exception& e) {
    throw bad_request(fmt::format("Invalid 'moe' object: {}", e.what()), moe_param(e.what()));
  }
  return m;
}

}  // namespace

ParsedRequest parse_request(Endpoint endpoint, std::string_view body) {
  json j;
  try {
    j = json::parse(body.begin(), body.end());
  } catch (const json::exception& e) {
    throw bad_request(fmt::format("We could not parse the JSON body of your request: {}", e.what()), {},
                      "invalid_json");
  }
  if (!j.is_object()) throw bad_request(fmt::format("The request body must be a JSON object, not {}", type_name(j)));
  const bool chat = endpoint == Endpoint::Chat;
  ParsedRequest r;
  r.endpoint = endpoint;
  bool have_logprobs = false, have_max = false;
  int chat_top = -1;
  for (const auto& [key, v] : j.items()) {
    if (key == "model") {
      r.model = get_string(v, key);
    } else if (chat && key == "messages") {
      r.messages = get_messages(v);
    } else if (!chat && key == "prompt") {
      get_prompt(v, r);
    } else if (key == "max_tokens" || (chat && key == "max_completion_tokens")) {
      if (v.is_null()) continue;
      if (have_max) throw bad_request("give only one of 'max_tokens' and 'max_completion_tokens'", key);
      have_max = true;
      r.max_tokens = get_int(v, key, 1, std::numeric_limits<int32_t>::max());
    } else if (key == "temperature") {
      if (!v.is_null()) r.temperature = static_cast<float>(get_number(v, key, 0, 2));
    } else if (key == "top_p") {
      if (!v.is_null()) r.top_p = static_cast<float>(get_number(v, key, 0, 1));
    } else if (key == "top_k") {
      if (!v.is_null()) r.top_k = static_cast<int>(get_int(v, key, 0, std::numeric_limits<int32_t>::max()));
    } else if (key == "seed") {
      if (!v.is_null())
        r.seed = static_cast<uint64_t>(get_int(v, key, std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()));
    } else if (key == "n") {
      if (!v.is_null()) r.n = static_cast<int>(get_int(v, key, 1, kMaxChoices));
    } else if (key == "stop") {
      r.stop = get_stop(v);
    } else if (key == "stream") {
      if (!v.is_null()) r.stream = get_bool(v, key);
    } else if (key == "stream_options") {
      if (v.is_null()) continue;
      if (!v.is_object()) wrong_type(v, "object", key);
      for (const auto& [k2, v2] : v.items()) {
        if (k2 == "include_usage") r.include_usage = get_bool(v2, "stream_options.include_usage");
        else throw bad_request(fmt::format("Unrecognized stream option: '{}'", k2), "stream_options." + k2);
      }
    } else if (key == "logprobs") {
      if (v.is_null()) continue;
      if (chat) {
        have_logprobs = get_bool(v, key);
      } else {
        r.top_logprobs = static_cast<int>(get_int(v, key, 0, 5));
      }
    } else if (chat && key == "top_logprobs") {
      if (!v.is_null()) chat_top = static_cast<int>(get_int(v, key, 0, 20));
    } else if (!chat && key == "echo") {
      if (!v.is_null()) r.echo = get_bool(v, key);
    } else if (key == "logit_bias") {
      r.logit_bias = get_logit_bias(v);
    } else if (key == "presence_penalty" || key == "frequency_penalty" || key == "repetition_penalty") {
      if (v.is_null()) continue;
      const double x = get_number(v, key, -2, 2);
      if (x != 0.0) throw bad_request(fmt::format("'{}' is not supported by this server (only 0)", key), key);
    } else if (!chat && key == "best_of") {
      if (!v.is_null() && get_int(v, key, 1, 1) != 1) throw bad_request("'best_of' must be 1", key);
    } else if (!chat && key == "suffix") {
      if (!v.is_null() && !get_string(v, key).empty())
        throw bad_request("'suffix' is not supported by this server", key);
    } else if (key == "user") {
      if (!v.is_null()) get_string(v, key);
    } else if (key == "ignore_eos") {
      if (!v.is_null()) r.ignore_eos = get_bool(v, key);
    } else if (key == "moe") {
      if (!v.is_null()) r.moe = get_moe(v);
    } else {
      throw bad_request(fmt::format("Unrecognized request argument supplied: {}", key), key);
    }
  }
  if (chat && r.messages.empty()) throw bad_request("'messages' is a required property", "messages");
  if (!chat && r.prompt_texts.empty() && r.prompt_ids.empty()) throw bad_request("'prompt' is a required property", "prompt");
  if (chat) {
    if (chat_top >= 0 && !have_logprobs) throw bad_request("'top_logprobs' needs 'logprobs': true", "top_logprobs");
    if (have_logprobs) r.top_logprobs = std::max(0, chat_top);
  }
  if (j.contains("stream_options") && !j["stream_options"].is_null() && !r.stream)
    throw bad_request("'stream_options' is only allowed when 'stream' is true", "stream_options");
  if (static_cast<int64_t>(r.n) * static_cast<int64_t>(r.n_prompts()) > kMaxChoices)
    throw bad_request(fmt::format("{} prompts times n = {} asks for more than {} choices", r.n_prompts(), r.n, kMaxChoices),
                      "n");
  return r;
}

}  // namespace moe::server
