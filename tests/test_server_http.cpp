// `moe serve` over HTTP (server/server.h), in process on a free port: greedy outputs equal `moe run`'s
// alone and under concurrency, streaming, n and logprobs shapes, moe_usage and traces, the error shapes
// and statuses (400, 401, 404, 413, 429), a client that disconnects frees its slot at once, /metrics,
// /health, /v1/models and the dashboard's feed.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <httplib.h>

#include <chrono>
#include <future>
#include <thread>

#include "cli_runner.h"
#include "fixture_util.h"
#include "runtime/batch_scheduler.h"
#include "server/server.h"

namespace moe::server {
namespace {

using json = nlohmann::json;

std::string default_model() { return std::string(MOE_SOURCE_DIR) + "/models/tiny-qwen3moe-8x2-kjv-py-fortunes-F16.gguf"; }

struct TestServer {
  TestServer(const std::string& path, SchedulerOptions so, ServerOptions sv = {}, EngineOptions eo = {}) {
    eo.n_ctx = so.n_ctx;
    eo.n_seq = so.slots;
    engine = Engine::open(path, eo);
    tok = Tokenizer::from_gguf(engine->model().file());
    load = std::make_unique<LiveExpertLoad>(engine->model().spec());
    ForwardOptions fo;
    if (engine->offload_store()) fo.lookahead_margin = 2;
    sched = std::make_unique<BatchScheduler>(*engine, tok.get(), fo, pool, so, std::vector<ForwardObserver*>{load.get()});
    sv.host = "127.0.0.1";
    sv.port = 0;
    if (sv.model_id.empty()) sv.model_id = "test-model";
    sv.chat_template = detect_chat_template(tok->chat_template());
    srv = std::make_unique<Server>(*sched, *engine, *tok, *load, sv);
    port = srv->bind();
    thread = std::thread([this] { srv->listen(); });
    httplib::Client c("127.0.0.1", port);
    for (int i = 0; i < 200; ++i) {
      if (auto r = c.Get("/health"); r && r->status == 200) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  ~TestServer() {
    srv->stop();
    thread.join();
    srv.reset();
    sched.reset();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(120);
    return c;
  }
  httplib::Result post(const std::string& path, const json& body, const httplib::Headers& h = {}) const {
    return client().Post(path.c_str(), h, body.dump(), "application/json");
  }

  ThreadPool pool{2};
  std::unique_ptr<Engine> engine;
  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<LiveExpertLoad> load;
  std::unique_ptr<BatchScheduler> sched;
  std::unique_ptr<Server> srv;
  std::thread thread;
  int port = 0;
};

SchedulerOptions sched_opts(int slots, int64_t n_ctx = 512) {
  SchedulerOptions o;
  o.slots = o.parallel = slots;
  o.n_ctx = n_ctx;
  o.step_tokens = 64;
  o.max_queue = 8;
  return o;
}

// The data: lines of an SSE body, without the prefix.
std::vector<std::string> sse_events(const std::string& body) {
  std::vector<std::string> out;
  size_t at = 0;
  while ((at = body.find("data: ", at)) != std::string::npos) {
    const size_t end = body.find("\n\n", at);
    out.push_back(body.substr(at + 6, end - at - 6));
    at = end;
  }
  return out;
}

void expect_error(const httplib::Result& r, int status, const std::string& code = {}, const std::string& param = {}) {
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, status) << r->body;
  const json j = json::parse(r->body);
  ASSERT_TRUE(j.contains("error")) << r->body;
  for (const char* k : {"message", "type", "param", "code"}) EXPECT_TRUE(j["error"].contains(k)) << k << " in " << r->body;
  EXPECT_TRUE(j["error"]["message"].is_string());
  if (!code.empty()) { EXPECT_EQ(j["error"]["code"], code) << r->body; }
  if (!param.empty()) { EXPECT_EQ(j["error"]["param"], param) << r->body; }
}

const char* kPrompts[] = {
    "And it came to pass, when the king",
    "def main(argv):\n    ",
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness "
    "was upon the face of the deep. And the Spirit of God moved upon the face of the waters. And God said, Let there "
    "be light: and there was light. And God saw the light, that it was good: and God divided the light from the "
    "darkness.",
    "A fool and his money",
};

std::string moe_run_text(const std::string& prompt, int n) {
  const test::CliResult r = test::run_cli({"run", "-m", default_model(), "-p", prompt, "-n", std::to_string(n), "--temp", "0"});
  EXPECT_EQ(r.status, 0) << r.err;
  return r.out;
}

// Greedy completions through the server equal `moe run --temp 0`, one at a time and four at once.
TEST(ServerHttp, GreedyEqualsMoeRun) {
  const int n = 24;
  std::vector<std::string> want;
  for (const char* p : kPrompts) want.push_back(moe_run_text(p, n));
  TestServer ts(default_model(), sched_opts(4));
  for (size_t i = 0; i < 4; ++i) {
    auto r = ts.post("/v1/completions", {{"prompt", kPrompts[i]}, {"max_tokens", n}, {"temperature", 0}});
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    EXPECT_EQ(json::parse(r->body)["choices"][0]["text"], want[i]) << "alone: " << kPrompts[i];
  }
  for (int round = 0; round < 2; ++round) {
    std::vector<std::future<std::string>> got;
    for (size_t i = 0; i < 4; ++i)
      got.push_back(std::async(std::launch::async, [&, i] {
        json body = {{"prompt", kPrompts[i]}, {"max_tokens", n}, {"temperature", 0}};
        if (round == 1) body["stream"] = true;
        auto r = ts.post("/v1/completions", body);
        if (!r || r->status != 200) return std::string("HTTP error");
        if (round == 0) return json::parse(r->body)["choices"][0]["text"].get<std::string>();
        std::string text;
        for (const std::string& e : sse_events(r->body))
          if (e != "[DONE]") text += json::parse(e)["choices"][0]["text"].get<std::string>();
        return text;
      }));
    for (size_t i = 0; i < 4; ++i)
      EXPECT_EQ(got[i].get(), want[i]) << (round ? "streamed" : "") << " concurrently: " << kPrompts[i];
  }
}

// A request's `moe` object routes its tokens: greedy completions under per-request policies, four at once
// (each with another policy, sharing steps), equal `moe run` with the same routing flags; moe_usage and
// traces follow the request's policy; policies that do not fit the model or the plan are 400s.
TEST(ServerHttp, PerRequestRoutingEqualsMoeRunFlags) {
  const int n = 16;
  struct Case {
    json moe;
    std::vector<std::string> flags;
  };
  const std::vector<Case> cases = {
      {{{"experts", 1}}, {"--experts", "1"}},
      {{{"top_p", 0.5}, {"top_p_max_k", 2}}, {"--route-top-p", "0.5", "--route-top-p-max-k", "2"}},
      {{{"mask_experts", {{0, 1}, {1, 2}, {2, 3}}}}, {"--mask-experts", "0:1,1:2,2:3"}},
      {json::object(), {}},
  };
  std::vector<std::string> want;
  for (size_t i = 0; i < cases.size(); ++i) {
    std::vector<std::string> args = {"run", "-m", default_model(), "-p", kPrompts[i], "-n", std::to_string(n), "--temp", "0"};
    args.insert(args.end(), cases[i].flags.begin(), cases[i].flags.end());
    const test::CliResult r = test::run_cli(args);
    ASSERT_EQ(r.status, 0) << r.err;
    want.push_back(r.out);
  }
  EXPECT_NE(want[0], moe_run_text(kPrompts[0], n));  // the policy changes the text
  TestServer ts(default_model(), sched_opts(4));
  std::vector<std::future<json>> got;
  for (size_t i = 0; i < cases.size(); ++i)
    got.push_back(std::async(std::launch::async, [&, i] {
      json body = {{"prompt", kPrompts[i]}, {"max_tokens", n}, {"temperature", 0}};
      if (!cases[i].moe.empty()) body["moe"] = cases[i].moe;
      body["moe"]["trace"] = true;
      auto r = ts.post("/v1/completions", body);
      return r && r->status == 200 ? json::parse(r->body) : json{{"error", r ? r->body : "no response"}};
    }));
  for (size_t i = 0; i < cases.size(); ++i) {
    const json j = got[i].get();
    ASSERT_FALSE(j.contains("error")) << j.dump();
    EXPECT_EQ(j["choices"][0]["text"], want[i]) << "moe " << cases[i].moe.dump();
    EXPECT_EQ(j["moe_usage"]["routing_policy"], cases[i].moe) << j["moe_usage"].dump();
    const double ept = j["moe_usage"]["experts_per_token"].get<double>();
    if (i == 0) { EXPECT_DOUBLE_EQ(ept, 1.0); }
    if (i == 1) { EXPECT_LE(ept, 2.0); }
    if (i == 3) { EXPECT_DOUBLE_EQ(ept, 2.0); }
    for (const json& t : j["choices"][0]["moe_trace"]["tokens"]) {
      if (i == 0) { EXPECT_EQ(t["experts"]["0"].size(), 1u); }
      if (i == 2) {
        for (const json& pair : t["experts"]["0"]) EXPECT_NE(pair[0], 1);
        for (const json& pair : t["experts"]["2"]) EXPECT_NE(pair[0], 3);
      }
    }
  }
  auto c = ts.client();
  const std::string m = R"("prompt": "x", "max_tokens": 2, )";
  // All 8 experts: more than the server planned for (the model's 2 without --max-experts).
  expect_error(c.Post("/v1/completions", "{" + m + R"("moe": {"experts": 8}})", "application/json"), 400, "",
               "moe.experts");
  expect_error(c.Post("/v1/completions", "{" + m + R"("moe": {"top_p": 0.9}})", "application/json"), 400, "", "moe.top_p");
  expect_error(c.Post("/v1/completions", "{" + m + R"("moe": {"mask_experts": [[0, 8]]}})", "application/json"), 400, "",
               "moe.mask_experts");
  expect_error(c.Post("/v1/completions", "{" + m + R"("moe": {"experts": "2"}})", "application/json"), 400, "",
               "moe.experts");
}

TEST(ServerHttp, ChatStreamingUsageAndTrace) {
  TestServer ts(default_model(), sched_opts(2));
  const json msgs = json::array({{{"role", "user"}, {"content", "Who begat Enoch?"}}});
  auto whole = ts.post("/v1/chat/completions",
                       {{"messages", msgs}, {"max_tokens", 12}, {"temperature", 0}, {"moe", {{"trace", true}}}});
  ASSERT_TRUE(whole);
  ASSERT_EQ(whole->status, 200) << whole->body;
  const json w = json::parse(whole->body);
  EXPECT_EQ(w["object"], "chat.completion");
  EXPECT_EQ(w["model"], "test-model");
  EXPECT_EQ(w["choices"][0]["message"]["role"], "assistant");
  const std::string text = w["choices"][0]["message"]["content"];
  EXPECT_TRUE(w["choices"][0]["finish_reason"] == "length" || w["choices"][0]["finish_reason"] == "stop");
  EXPECT_GT(w["usage"]["prompt_tokens"].get<int>(), 0);
  EXPECT_EQ(w["usage"]["total_tokens"], w["usage"]["prompt_tokens"].get<int>() + w["usage"]["completion_tokens"].get<int>());
  EXPECT_DOUBLE_EQ(w["moe_usage"]["experts_per_token"].get<double>(), 2.0);  // top-2, no policy
  EXPECT_DOUBLE_EQ(w["moe_usage"]["store_hit_rate"].get<double>(), 1.0);   // resident
  const json& trace = w["choices"][0]["moe_trace"]["tokens"];
  ASSERT_EQ(trace.size(), static_cast<size_t>(w["usage"]["total_tokens"].get<int>() - 1));
  EXPECT_EQ(trace[0]["experts"]["0"].size(), 2u);

  auto streamed = ts.post("/v1/chat/completions", {{"messages", msgs},
                                                   {"max_tokens", 12},
                                                   {"temperature", 0},
                                                   {"stream", true},
                                                   {"stream_options", {{"include_usage", true}}}});
  ASSERT_TRUE(streamed);
  ASSERT_EQ(streamed->status, 200);
  EXPECT_NE(streamed->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  const auto events = sse_events(streamed->body);
  ASSERT_GE(events.size(), 4u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string joined, finish;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json c = json::parse(events[i]);
    if (i + 2 == events.size()) {  // the usage chunk
      EXPECT_TRUE(c["choices"].empty());
      EXPECT_EQ(c["usage"], w["usage"]);
      EXPECT_TRUE(c.contains("moe_usage"));
      continue;
    }
    EXPECT_EQ(c["object"], "chat.completion.chunk");
    EXPECT_TRUE(c["usage"].is_null());
    const json& ch = c["choices"][0];
    if (i == 0) { EXPECT_EQ(ch["delta"]["role"], "assistant"); }
    if (ch["delta"].contains("content")) joined += ch["delta"]["content"].get<std::string>();
    if (!ch["finish_reason"].is_null()) finish = ch["finish_reason"];
  }
  EXPECT_EQ(joined, text);
  EXPECT_EQ(finish, w["choices"][0]["finish_reason"]);
}

TEST(ServerHttp, ChoicesLogprobsAndEcho) {
  TestServer ts(default_model(), sched_opts(4));
  auto r = ts.post("/v1/completions", {{"prompt", json::array({"The LORD", "import os"})},
                                       {"n", 2},
                                       {"max_tokens", 6},
                                       {"temperature", 0.9},
                                       {"seed", 11},
                                       {"logprobs", 3},
                                       {"echo", true}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json j = json::parse(r->body);
  ASSERT_EQ(j["choices"].size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    const json& c = j["choices"][i];
    EXPECT_EQ(c["index"], i);
    EXPECT_EQ(c["text"].get<std::string>().rfind(i < 2 ? "The LORD" : "import os", 0), 0u) << "echo";
    const json& lp = c["logprobs"];
    EXPECT_EQ(lp["tokens"].size(), lp["token_logprobs"].size());
    ASSERT_FALSE(lp["top_logprobs"].empty());
    EXPECT_EQ(lp["top_logprobs"][0].size(), 3u);
    EXPECT_LE(lp["token_logprobs"][0].get<double>(), 0.0);
  }
  // Prompt tokens count once per prompt, however many choices it has.
  EXPECT_EQ(j["usage"]["prompt_tokens"].get<size_t>(),
            ts.tok->encode("The LORD", true, true).size() + ts.tok->encode("import os", true, true).size());
  // The same seed gives the same samples.
  auto again = ts.post("/v1/completions", {{"prompt", json::array({"The LORD", "import os"})},
                                           {"n", 2},
                                           {"max_tokens", 6},
                                           {"temperature", 0.9},
                                           {"seed", 11},
                                           {"logprobs", 3},
                                           {"echo", true}});
  ASSERT_TRUE(again);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(json::parse(again->body)["choices"][i]["text"], j["choices"][i]["text"]);
  // Chat logprobs.
  auto c = ts.post("/v1/chat/completions", {{"messages", json::array({{{"role", "user"}, {"content", "hi"}}})},
                                            {"max_tokens", 3},
                                            {"temperature", 0},
                                            {"logprobs", true},
                                            {"top_logprobs", 2}});
  ASSERT_TRUE(c);
  ASSERT_EQ(c->status, 200) << c->body;
  const json cl = json::parse(c->body)["choices"][0]["logprobs"]["content"];
  ASSERT_FALSE(cl.empty());
  EXPECT_EQ(cl[0]["top_logprobs"].size(), 2u);
  EXPECT_EQ(cl[0]["top_logprobs"][0]["logprob"], cl[0]["logprob"]);  // greedy picks the most likely
  EXPECT_TRUE(cl[0]["bytes"].is_array());
}

TEST(ServerHttp, ErrorShapes) {
  ServerOptions sv;
  sv.api_key = "sekrit";
  sv.max_body_bytes = 4096;
  TestServer ts(default_model(), sched_opts(1, 128), sv);
  const httplib::Headers auth = {{"Authorization", "Bearer sekrit"}};
  httplib::Client c = ts.client();
  // Authentication.
  expect_error(c.Post("/v1/completions", R"({"prompt": "x"})", "application/json"), 401, "missing_api_key");
  expect_error(c.Post("/v1/completions", {{"Authorization", "Bearer nope"}}, R"({"prompt": "x"})", "application/json"), 401,
               "invalid_api_key");
  expect_error(c.Get("/v1/models"), 401);
  expect_error(c.Get("/metrics"), 401);
  auto health = c.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  auto models = c.Get("/v1/models", auth);
  ASSERT_TRUE(models);
  ASSERT_EQ(models->status, 200);
  EXPECT_EQ(json::parse(models->body)["data"][0]["id"], "test-model");
  EXPECT_EQ(c.Get("/v1/models/test-model", auth)->status, 200);
  expect_error(c.Get("/v1/models/other", auth), 404, "model_not_found");
  // Malformed requests.
  expect_error(c.Post("/v1/completions", auth, "{\"prompt\": ", "application/json"), 400, "invalid_json");
  expect_error(c.Post("/v1/completions", auth, R"({"prompt": "x", "temperature": "hot"})", "application/json"), 400, "",
               "temperature");
  expect_error(c.Post("/v1/completions", auth, R"({"prompt": "x", "bogus": 1})", "application/json"), 400, "", "bogus");
  expect_error(c.Post("/v1/chat/completions", auth, R"({"messages": [{"role": "user", "content": "x"}], "moe": {"nope": 1}})",
                      "application/json"),
               400, "", "moe.nope");
  expect_error(c.Post("/v1/completions", auth, R"({"prompt": "x", "model": "gpt-4"})", "application/json"), 404,
               "model_not_found");
  expect_error(c.Post("/v1/completions", auth, R"({"prompt": [999999]})", "application/json"), 400);
  expect_error(c.Post("/v1/completions", auth, R"({"prompt": "x", "logit_bias": {"999999": 1}})", "application/json"), 400,
               "", "logit_bias");
  // Longer than the context (128 per slot), and prompt + max_tokens over it.
  json long_prompt = json::array();
  for (int i = 0; i < 128; ++i) long_prompt.push_back(5);
  expect_error(c.Post("/v1/completions", auth, json({{"prompt", long_prompt}}).dump(), "application/json"), 400,
               "context_length_exceeded");
  expect_error(c.Post("/v1/completions", auth, R"({"prompt": [5, 6], "max_tokens": 127})", "application/json"), 400,
               "context_length_exceeded", "max_tokens");
  // A body over the limit, an unknown URL.
  expect_error(c.Post("/v1/completions", auth, std::string(10000, ' '), "application/json"), 413);
  expect_error(c.Get("/v2/nothing"), 404);
  EXPECT_EQ(c.Post("/v1/completions", auth, R"({"prompt": "x", "max_tokens": 2})", "application/json")->status, 200);
}

// A raw connection, so the test decides when the client goes away.
int connect_to(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return -1;
  return fd;
}

int send_request(int port, const std::string& path, const std::string& body) {
  const int fd = connect_to(port);
  const std::string req = "POST " + path + " HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: " +
                          std::to_string(body.size()) + "\r\n\r\n" + body;
  EXPECT_EQ(write(fd, req.data(), req.size()), static_cast<ssize_t>(req.size()));
  return fd;
}

// Reads until `n` occurrences of `what` arrived (or 30 s).
std::string read_until(int fd, const std::string& what, int n) {
  std::string got;
  char buf[4096];
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30)) {
    int count = 0;
    for (size_t at = got.find(what); at != std::string::npos; at = got.find(what, at + 1)) ++count;
    if (count >= n) break;
    const ssize_t k = read(fd, buf, sizeof buf);
    if (k <= 0) break;
    got.append(buf, static_cast<size_t>(k));
  }
  return got;
}

bool wait_for(const std::function<bool()>& pred, double seconds) {
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < seconds) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return pred();
}

TEST(ServerHttp, DisconnectFreesTheSlotAtOnce) {
  SchedulerOptions so = sched_opts(1, 2048);
  so.max_queue = 0;
  TestServer ts(default_model(), so);
  const std::string endless =
      json({{"prompt", "And"}, {"max_tokens", 1500}, {"ignore_eos", true}, {"temperature", 0.8}, {"stream", true}}).dump();
  // A stream occupies the only slot; with no queue a second request is refused with 429.
  int fd = send_request(ts.port, "/v1/completions", endless);
  ASSERT_GE(fd, 0);
  const std::string head = read_until(fd, "data: ", 3);
  ASSERT_NE(head.find("200 OK"), std::string::npos) << head;
  expect_error(ts.post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}}), 429, "rate_limit_exceeded");
  // The client goes away mid-stream: its sequence is cancelled and the slot is free within moments.
  const auto t0 = std::chrono::steady_clock::now();
  close(fd);
  ASSERT_TRUE(wait_for([&] { return ts.sched->stats().active == 0; }, 2.0)) << "the slot was not freed";
  const double freed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(freed, 1.0);
  EXPECT_EQ(ts.sched->stats().finished[static_cast<int>(FinishReason::Cancelled)], 1u);
  EXPECT_LT(ts.sched->stats().generated_tokens, 1500u);
  auto ok = ts.post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}});
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
  // The same for a client waiting for a whole (non-streamed) response.
  json whole = json::parse(endless);
  whole["stream"] = false;
  fd = send_request(ts.port, "/v1/completions", whole.dump());
  ASSERT_TRUE(wait_for([&] { return ts.sched->stats().active == 1; }, 10.0));
  ASSERT_TRUE(wait_for([&] { return ts.sched->stats().generated_tokens > 10; }, 10.0));
  close(fd);
  ASSERT_TRUE(wait_for([&] { return ts.sched->stats().active == 0; }, 2.0));
  EXPECT_EQ(ts.sched->stats().finished[static_cast<int>(FinishReason::Cancelled)], 2u);
  // Both show up as 499 (client closed) in the metrics.
  ASSERT_TRUE(wait_for([&] { return ts.srv->metrics_text().find("status=\"499\"} 2") != std::string::npos; }, 2.0))
      << ts.srv->metrics_text();
}

TEST(ServerHttp, MetricsAndDashboardFeed) {
  EngineOptions eo;
  eo.force_offload = true;  // experts stream: hit rate and bytes read are real
  TestServer ts(default_model(), sched_opts(2), {}, eo);
  ASSERT_NE(ts.engine->offload_store(), nullptr);
  auto r = ts.post("/v1/completions", {{"prompt", "Blessed are"}, {"max_tokens", 8}, {"temperature", 0}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  const json usage = json::parse(r->body)["moe_usage"];
  EXPECT_GT(usage["store_hits"].get<uint64_t>() + usage["store_misses"].get<uint64_t>(), 0u);
  auto m = ts.client().Get("/metrics");
  ASSERT_TRUE(m);
  ASSERT_EQ(m->status, 200);
  for (const char* name : {"moe_requests_total{endpoint=\"completions\",status=\"200\"} 1", "moe_generated_tokens_total 8",
                           "moe_prompt_tokens_total ", "moe_queue_depth 0", "moe_tokens_per_second ",
                           "moe_expert_store_hit_rate ", "moe_expert_bytes_read_total ", "moe_resident_memory_bytes ",
                           "moe_expert_tokens_total{layer=\"0\",expert=\"0\"} ", "# TYPE moe_requests_total counter"})
    EXPECT_NE(m->body.find(name), std::string::npos) << name;
  // Per-layer load adds up to tokens x k for every MoE layer.
  const std::vector<uint64_t> counts = ts.load->counts();
  uint64_t layer0 = 0;
  for (int e = 0; e < ts.load->n_expert(); ++e) layer0 += counts[static_cast<size_t>(e)];
  EXPECT_EQ(layer0, 2 * ts.sched->stats().prompt_tokens + 2 * ts.sched->stats().decode_rows);
  // The dashboard page and the first frame of its feed.
  auto page = ts.client().Get("/");
  ASSERT_TRUE(page);
  EXPECT_NE(page->body.find("EventSource"), std::string::npos);
  EXPECT_EQ(page->body.find("http://"), std::string::npos) << "the page must not load anything from elsewhere";
  EXPECT_EQ(page->body.find("https://"), std::string::npos);
  const int fd = connect_to(ts.port);
  const std::string req = "GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n";
  ASSERT_EQ(write(fd, req.data(), req.size()), static_cast<ssize_t>(req.size()));
  const std::string got = read_until(fd, "\n\n", 3);
  close(fd);
  const auto events = sse_events(got.substr(got.find("\r\n\r\n")));
  ASSERT_FALSE(events.empty()) << got;
  const json frame = json::parse(events[0].substr(events[0].find('{'), events[0].rfind('}') - events[0].find('{') + 1));
  EXPECT_EQ(frame["load"].size(), ts.load->moe_layers().size());
  EXPECT_EQ(frame["load"][0].size(), static_cast<size_t>(ts.load->n_expert()));
  EXPECT_TRUE(frame["streaming_experts"].get<bool>());
  EXPECT_GT(frame["store_hits"].get<uint64_t>() + frame["store_misses"].get<uint64_t>(), 0u);
}

}  // namespace
}  // namespace moe::server
