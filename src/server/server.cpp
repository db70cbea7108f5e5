#include "server/server.h"

#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "base/error.h"
#include "server/openai_request.h"
#include "server/openai_response.h"

namespace moe::server {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// ---- connections ---------------------------------------------------------------------------------

uint16_t port_of(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
  if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
  return 0;
}

// The socket a request arrived on: the one whose local and peer ports are the request's (httplib does
// not hand it to handlers). -1 when not found. While the handler runs, its connection stays open, so
// the descriptor cannot be reused under us.
int connection_fd(const httplib::Request& req) {
  if (req.local_port <= 0 || req.remote_port <= 0) return -1;
  DIR* d = opendir("/proc/self/fd");
  if (!d) return -1;
  int found = -1;
  while (dirent* e = readdir(d)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (!end || *end || fd < 0) continue;
    sockaddr_storage local{}, peer{};
    socklen_t ll = sizeof(local), pl = sizeof(peer);
    if (getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&local), &ll) != 0) continue;
    if (port_of(local) != req.local_port) continue;
    if (getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &pl) != 0) continue;
    if (port_of(peer) != req.remote_port) continue;
    found = static_cast<int>(fd);
    break;
  }
  closedir(d);
  return found;
}

// Whether the client closed its end (or the connection broke). Data the client sent early (a
// pipelined request) does not count.
bool peer_closed(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, static_cast<short>(POLLIN | POLLRDHUP), 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
  char c;
  return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

uint64_t rss_bytes() {
  std::ifstream in("/proc/self/statm");
  uint64_t pages = 0, resident = 0;
  in >> pages >> resident;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

std::string random_hex(size_t n) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) s += digits[rng() % 16];
  return s;
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// ---- one request's sequences -------------------------------------------------------------------------

struct Event {
  int choice = 0;
  bool finish = false;
  GeneratedToken token;
  SequenceResult result;
};

struct RequestState {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Event> events;
  int remaining = 0;
  std::vector<std::shared_ptr<SequenceHandle>> handles;
  void cancel_all() {
    for (auto& h : handles) h->cancel();
  }
};

class ChoiceSink final : public SequenceSink {
 public:
  ChoiceSink(std::shared_ptr<RequestState> st, int index) : st_(std::move(st)), index_(index) {}
  void on_token(const GeneratedToken& t) override {
    std::lock_guard<std::mutex> lock(st_->mu);
    Event e;
    e.choice = index_;
    e.token = t;
    st_->events.push_back(std::move(e));
    st_->cv.notify_all();
  }
  void on_finish(const SequenceResult& r) override {
    std::lock_guard<std::mutex> lock(st_->mu);
    Event e;
    e.choice = index_;
    e.finish = true;
    e.result = r;
    st_->events.push_back(std::move(e));
    --st_->remaining;
    st_->cv.notify_all();
  }

 private:
  std::shared_ptr<RequestState> st_;
  int index_;
};

// A request ready to submit.
struct Prepared {
  std::vector<SequenceRequest> seqs;
  std::vector<std::string> echo_prefix;  // per choice
  size_t n_prompts = 0;
};

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(dump_json(error_body(e)), "application/json");
}

}  // namespace

struct Server::Impl {
  Impl(BatchScheduler& s, Engine& e, const Tokenizer& t, LiveExpertLoad& l, ServerOptions o)
      : sched(s), engine(e), tok(t), load(l), opts(std::move(o)), started(Clock::now()) {}

  BatchScheduler& sched;
  Engine& engine;
  const Tokenizer& tok;
  LiveExpertLoad& load;
  ServerOptions opts;
  Clock::time_point started;
  httplib::Server http;
  RequestCounters counters;
  std::atomic<bool> stopping{false};
  std::atomic<uint64_t> streams_open{0};

  void log(const httplib::Request& req, int status, double seconds) {
    if (!opts.log_requests) return;
    std::fprintf(stderr, "moe serve: %s %s %d %.3f s\n", req.method.c_str(), req.path.c_str(), status, seconds);
  }

  void check_auth(const httplib::Request& req) {
    if (opts.api_key.empty()) return;
    const std::string h = req.get_header_value("Authorization");
    if (h.empty())
      throw ApiError(401, "invalid_request_error",
                     "You didn't provide an API key. You need to provide your API key in an Authorization header using "
                     "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                     {}, "missing_api_key");
    if (h != "Bearer " + opts.api_key)
      throw ApiError(401, "invalid_request_error", "Incorrect API key provided.", {}, "invalid_api_key");
  }

  void check_model(const std::string& model) {
    if (model.empty() || model == opts.model_id) return;
    throw ApiError(404, "invalid_request_error",
                   fmt::format("The model '{}' does not exist: this server serves '{}'", model, opts.model_id), "model",
                   "model_not_found");
  }

  Prepared prepare(const ParsedRequest& pr) {
    Prepared p;
    const int64_t n_ctx = sched.options().n_ctx;
    const int64_t n_vocab = engine.model().spec().n_vocab;
    std::vector<std::vector<int32_t>> prompts;
    std::vector<std::string> prompt_text;
    if (pr.endpoint == Endpoint::Chat) {
      const std::string text = apply_chat_template(opts.chat_template, pr.messages, true);
      prompts.push_back(tok.encode(text, /*add_bos=*/true, /*parse_special=*/true));
      prompt_text.push_back(text);
    } else {
      for (const std::string& t : pr.prompt_texts) {
        prompts.push_back(tok.encode(t, /*add_bos=*/true, /*parse_special=*/true));
        prompt_text.push_back(t);
      }
      for (const auto& ids : pr.prompt_ids) {
        for (size_t i = 0; i < ids.size(); ++i)
          if (ids[i] >= n_vocab)
            throw bad_request(fmt::format("token id {} is outside the vocabulary [0, {})", ids[i], n_vocab),
                              fmt::format("prompt[{}]", i));
        prompts.push_back(ids);
        prompt_text.push_back(pr.echo ? tok.decode(ids) : std::string());
      }
    }
    for (const auto& [id, bias] : pr.logit_bias)
      if (id >= n_vocab)
        throw bad_request(fmt::format("token id {} in logit_bias is outside the vocabulary [0, {})", id, n_vocab),
                          "logit_bias");
    std::shared_ptr<const RoutingPlan> routing;
    if (pr.moe.policy) {
      try {
        routing = sched.compile_routing(*pr.moe.policy);
      } catch (const Error& e) {
        throw bad_request(fmt::format("Invalid 'moe' object: {}", e.what()), moe_param(e.what()));
      }
    }
    std::random_device rd;
    const uint64_t seed0 = pr.seed ? *pr.seed : (static_cast<uint64_t>(rd()) << 32) ^ rd();
    for (size_t pi = 0; pi < prompts.size(); ++pi) {
      const int64_t n = static_cast<int64_t>(prompts[pi].size());
      if (n == 0) throw bad_request("the prompt is empty after tokenization", pr.endpoint == Endpoint::Chat ? "messages" : "prompt");
      const char* what = pr.endpoint == Endpoint::Chat ? "messages" : "prompt";
      if (n >= n_ctx)
        throw bad_request(fmt::format("This model's maximum context length is {} tokens. However, your {} resulted in "
                                      "{} tokens.",
                                      n_ctx, what, n),
                          what, "context_length_exceeded");
      if (pr.max_tokens > 0 && n + pr.max_tokens > n_ctx)
        throw bad_request(fmt::format("This model's maximum context length is {} tokens. However, you requested {} "
                                      "tokens ({} in the {}, {} for the completion). Please reduce the length of the "
                                      "{} or completion.",
                                      n_ctx, n + pr.max_tokens, n, what, pr.max_tokens, what),
                          "max_tokens", "context_length_exceeded");
      for (int j = 0; j < pr.n; ++j) {
        SequenceRequest s;
        s.prompt = prompts[pi];
        s.sampling.temperature = pr.temperature;
        s.sampling.top_k = pr.top_k;
        s.sampling.top_p = pr.top_p;
        s.sampling.seed = seed0 + p.seqs.size();
        s.max_tokens = pr.max_tokens;
        s.stops = pr.stop;
        s.ignore_eos = pr.ignore_eos;
        s.top_logprobs = pr.top_logprobs;
        s.logit_bias = pr.logit_bias;
        s.trace = pr.moe.trace;
        s.routing = routing;
        p.seqs.push_back(std::move(s));
        p.echo_prefix.push_back(pr.echo ? prompt_text[pi] : std::string());
      }
    }
    p.n_prompts = prompts.size();
    const size_t capacity = static_cast<size_t>(sched.options().slots) + sched.options().max_queue;
    if (p.seqs.size() > capacity)
      throw bad_request(fmt::format("{} choices can never run here: the server has {} slots and a queue of {}",
                                    p.seqs.size(), sched.options().slots, sched.options().max_queue),
                        "n");
    return p;
  }

  // Runs a completion request; returns the status for the counters (0: the response streams).
  void completion(const httplib::Request& req, httplib::Response& res, Endpoint ep) {
    const auto t0 = Clock::now();
    const std::string ep_name = ep == Endpoint::Chat ? "chat" : "completions";
    int status = 200;
    try {
      check_auth(req);
      ParsedRequest pr = parse_request(ep, req.body);
      check_model(pr.model);
      Prepared p = prepare(pr);
      auto st = std::make_shared<RequestState>();
      st->remaining = static_cast<int>(p.seqs.size());
      std::vector<std::shared_ptr<SequenceSink>> sinks;
      for (size_t i = 0; i < p.seqs.size(); ++i) sinks.push_back(std::make_shared<ChoiceSink>(st, static_cast<int>(i)));
      const size_t n_choices = p.seqs.size();
      try {
        auto handles = sched.submit(std::move(p.seqs), std::move(sinks));
        std::lock_guard<std::mutex> lock(st->mu);
        st->handles = std::move(handles);
      } catch (const QueueFull& e) {
        throw ApiError(429, "rate_limit_error",
                       fmt::format("The server is busy: {}. Retry later.", e.what()), {}, "rate_limit_exceeded");
      } catch (const Error& e) {
        throw bad_request(e.what());
      }
      ResponseMeta meta;
      meta.id = (ep == Endpoint::Chat ? "chatcmpl-" : "cmpl-") + random_hex(24);
      meta.created = unix_now();
      meta.model = opts.model_id;
      meta.endpoint = ep;
      const int fd = connection_fd(req);
      // moe_usage names the policy the request's tokens were routed under.
      json policy = (pr.moe.policy ? *pr.moe.policy : sched.default_routing()).to_json();
      if (pr.stream) {
        stream(res, st, meta, pr, p.echo_prefix, n_choices, p.n_prompts, fd, policy, t0);
        return;
      }
      std::vector<ChoiceState> choices(n_choices);
      bool gone = false;
      for (;;) {
        std::unique_lock<std::mutex> lock(st->mu);
        st->cv.wait_for(lock, std::chrono::milliseconds(50), [&] { return !st->events.empty(); });
        while (!st->events.empty()) {
          Event e = std::move(st->events.front());
          st->events.pop_front();
          ChoiceState& c = choices[static_cast<size_t>(e.choice)];
          if (e.finish) {
            c.finished = true;
            c.text += e.result.tail;
            c.result = std::move(e.result);
          } else {
            c.text += e.token.text;
            if (pr.top_logprobs >= 0) c.tokens.push_back(std::move(e.token));
          }
        }
        if (st->remaining == 0) break;
        lock.unlock();
        if (stopping.load() || peer_closed(fd)) {
          gone = true;
          st->cancel_all();
          break;
        }
      }
      if (gone) {
        status = 499;  // nginx's "client closed request": nobody reads this response
        counters.add(ep_name, status);
        log(req, status, std::chrono::duration<double>(Clock::now() - t0).count());
        return;
      }
      for (const ChoiceState& c : choices)
        if (c.result.reason == FinishReason::Error || c.result.reason == FinishReason::Cancelled)
          throw ApiError(500, "server_error",
                         c.result.reason == FinishReason::Error ? "generation failed: " + c.result.error
                                                                : std::string("generation was cancelled (the server is stopping)"));
      res.set_content(dump_json(full_response(meta, tok, choices, p.n_prompts, pr.n, pr.top_logprobs >= 0,
                                              p.echo_prefix, policy)),
                      "application/json");
    } catch (const ApiError& e) {
      send_error(res, e);
      status = e.status;
    } catch (const std::exception& e) {
      send_error(res, ApiError(500, "server_error", e.what()));
      status = 500;
    }
    counters.add(ep_name, status);
    log(req, status, std::chrono::duration<double>(Clock::now() - t0).count());
  }

  void stream(httplib::Response& res, std::shared_ptr<RequestState> st, ResponseMeta meta, const ParsedRequest& pr,
              std::vector<std::string> echo, size_t n_choices, size_t n_prompts, int fd, json policy,
              Clock::time_point t0) {
    struct StreamCtx {
      std::vector<ChoiceState> choices;
      std::vector<size_t> offsets;  // completions: text offset of the next token, per choice
      bool started = false, done = false;
    };
    auto ctx = std::make_shared<StreamCtx>();
    ctx->choices.resize(n_choices);
    ctx->offsets.assign(n_choices, 0);
    const bool include_usage = pr.include_usage;
    const bool logprobs = pr.top_logprobs >= 0;
    const int n_per_prompt = pr.n;
    const std::string ep_name = meta.endpoint == Endpoint::Chat ? "chat" : "completions";
    ++streams_open;
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, st, ctx, meta, echo, include_usage, logprobs, n_per_prompt, n_prompts, fd, policy](
            size_t, httplib::DataSink& sink) {
          auto send = [&](const json& j) {
            const std::string line = "data: " + dump_json(j) + "\n\n";
            return sink.write(line.data(), line.size());
          };
          if (!ctx->started) {
            ctx->started = true;
            for (size_t i = 0; i < ctx->choices.size(); ++i) {
              if (meta.endpoint == Endpoint::Chat) {
                if (!send(role_chunk(meta, static_cast<int>(i), include_usage))) return false;
              } else if (!echo[i].empty()) {
                if (!send(text_chunk(meta, tok, static_cast<int>(i), echo[i], nullptr, 0, include_usage))) return false;
                ctx->offsets[i] = echo[i].size();
              }
            }
          }
          std::deque<Event> batch;
          bool all_done = false;
          {
            std::unique_lock<std::mutex> lock(st->mu);
            st->cv.wait_for(lock, std::chrono::milliseconds(50), [&] { return !st->events.empty(); });
            batch.swap(st->events);
            all_done = st->remaining == 0;
          }
          for (Event& e : batch) {
            const size_t i = static_cast<size_t>(e.choice);
            ChoiceState& c = ctx->choices[i];
            if (e.finish) {
              c.finished = true;
              c.result = std::move(e.result);
              if (c.result.reason == FinishReason::Error || c.result.reason == FinishReason::Cancelled) {
                const ApiError err(500, "server_error",
                                   c.result.reason == FinishReason::Error ? "generation failed: " + c.result.error
                                                                          : std::string("generation was cancelled"));
                send(error_body(err));
                continue;
              }
              if (!c.result.tail.empty() &&
                  !send(text_chunk(meta, tok, static_cast<int>(i), c.result.tail, nullptr, ctx->offsets[i], include_usage)))
                return false;
              if (!send(finish_chunk(meta, static_cast<int>(i), c, include_usage))) return false;
              continue;
            }
            std::vector<GeneratedToken> one;
            if (logprobs) one.push_back(e.token);
            if (e.token.text.empty() && !logprobs) continue;
            if (!send(text_chunk(meta, tok, static_cast<int>(i), e.token.text, logprobs ? &one : nullptr, ctx->offsets[i],
                                 include_usage)))
              return false;
            ctx->offsets[i] += tok.token_to_piece(e.token.id).size();
          }
          if (all_done) {
            if (include_usage && !send(usage_chunk(meta, ctx->choices, n_prompts, n_per_prompt, policy))) return false;
            const std::string done = "data: [DONE]\n\n";
            if (!sink.write(done.data(), done.size())) return false;
            ctx->done = true;
            sink.done();
            return true;
          }
          if (stopping.load() || peer_closed(fd)) return false;
          return true;
        },
        [this, st, ctx, ep_name, t0](bool success) {
          if (!success || !ctx->done) st->cancel_all();
          --streams_open;
          const int status = ctx->done ? 200 : 499;
          counters.add(ep_name, status);
          if (opts.log_requests)
            std::fprintf(stderr, "moe serve: stream %s %d %.3f s\n", ep_name.c_str(), status,
                         std::chrono::duration<double>(Clock::now() - t0).count());
        });
  }

  json models_json() {
    return {{"object", "list"},
            {"data", json::array({{{"id", opts.model_id},
                                   {"object", "model"},
                                   {"created", unix_now()},
                                   {"owned_by", "moe.cpp"},
                                   {"meta",
                                    {{"arch", engine.model().spec().arch},
                                     {"n_ctx_per_slot", sched.options().n_ctx},
                                     {"n_vocab", engine.model().spec().n_vocab},
                                     {"slots", sched.options().slots}}}}})}};
  }

  json snapshot() {
    const SchedulerStats s = sched.stats();
    json j;
    j["t"] = std::chrono::duration<double>(Clock::now() - started).count();
    j["model"] = opts.model_id;
    j["tok_s"] = s.recent_tok_s;
    j["prompt_tok_s"] = s.recent_prompt_tok_s;
    j["queue"] = s.queued;
    j["active"] = s.active;
    j["slots"] = s.slots;
    j["parallel"] = sched.options().parallel;
    j["policy"] = schedule_policy_name(sched.options().policy);
    j["steps"] = s.steps;
    j["generated"] = s.generated_tokens;
    j["prompt_tokens"] = s.prompt_tokens;
    j["streaming_experts"] = engine.offload_store() != nullptr;
    uint64_t hits = 0, misses = 0, bytes = 0;
    if (BudgetedExpertStore* st = engine.offload_store()) {
      const ExpertStoreStats x = st->stats();
      for (auto h : x.hits) hits += h;
      for (auto m : x.misses) misses += m;
      bytes = x.bytes_read;
    }
    j["store_hits"] = hits;
    j["store_misses"] = misses;
    j["bytes_read"] = bytes;
    j["n_expert"] = load.n_expert();
    j["layers"] = load.moe_layers();
    const std::vector<uint64_t> counts = load.counts();
    json rows = json::array();
    for (int l : load.moe_layers())
      rows.push_back(std::vector<uint64_t>(counts.begin() + l * load.n_expert(), counts.begin() + (l + 1) * load.n_expert()));
    j["load"] = rows;
    return j;
  }

  std::string metrics() {
    const SchedulerStats s = sched.stats();
    std::string out;
    auto metric = [&](const char* name, const char* type, const char* help) {
      out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
    };
    metric("moe_requests_total", "counter", "HTTP requests answered, by endpoint and status (499: the client left).");
    for (const auto& [k, v] : counters.snapshot())
      out += fmt::format("moe_requests_total{{endpoint=\"{}\",status=\"{}\"}} {}\n", k.first, k.second, v);
    metric("moe_prompt_tokens_total", "counter", "Prompt tokens evaluated.");
    out += fmt::format("moe_prompt_tokens_total {}\n", s.prompt_tokens);
    metric("moe_generated_tokens_total", "counter", "Tokens generated.");
    out += fmt::format("moe_generated_tokens_total {}\n", s.generated_tokens);
    metric("moe_queue_depth", "gauge", "Sequences waiting for a slot.");
    out += fmt::format("moe_queue_depth {}\n", s.queued);
    metric("moe_active_sequences", "gauge", "Sequences in slots.");
    out += fmt::format("moe_active_sequences {}\n", s.active);
    metric("moe_slots", "gauge", "Slots (sequences with a KV cache).");
    out += fmt::format("moe_slots {}\n", s.slots);
    metric("moe_open_streams", "gauge", "Streaming responses being sent.");
    out += fmt::format("moe_open_streams {}\n", streams_open.load());
    metric("moe_tokens_per_second", "gauge", "Tokens generated per second over the last 5 s.");
    out += fmt::format("moe_tokens_per_second {:.3f}\n", s.recent_tok_s);
    metric("moe_prompt_tokens_per_second", "gauge", "Prompt tokens evaluated per second over the last 5 s.");
    out += fmt::format("moe_prompt_tokens_per_second {:.3f}\n", s.recent_prompt_tok_s);
    metric("moe_steps_total", "counter", "Forward steps run.");
    out += fmt::format("moe_steps_total {}\n", s.steps);
    metric("moe_step_seconds_total", "counter", "Time spent in forward steps.");
    out += fmt::format("moe_step_seconds_total {:.6f}\n", s.step_seconds);
    metric("moe_decode_rows_total", "counter", "Tokens decoded (one row per sequence and step).");
    out += fmt::format("moe_decode_rows_total {}\n", s.decode_rows);
    metric("moe_decode_steps_total", "counter", "Steps that only decoded (no prompt rows).");
    out += fmt::format("moe_decode_steps_total {}\n", s.decode_steps);
    metric("moe_decode_step_rows_total", "counter", "Tokens decoded in those steps.");
    out += fmt::format("moe_decode_step_rows_total {}\n", s.decode_step_rows);
    metric("moe_decode_step_seconds_total", "counter", "Time spent in those steps.");
    out += fmt::format("moe_decode_step_seconds_total {:.6f}\n", s.decode_step_seconds);
    metric("moe_decode_step_distinct_experts_total", "counter",
           "Distinct experts per MoE layer of those steps, summed (what the steps had to read).");
    out += fmt::format("moe_decode_step_distinct_experts_total {}\n", s.decode_step_distinct_experts);
    metric("moe_decode_step_moe_layers_total", "counter", "(step, MoE layer) pairs of those steps.");
    out += fmt::format("moe_decode_step_moe_layers_total {}\n", s.decode_step_moe_layers);
    metric("moe_sequences_finished_total", "counter", "Sequences finished, by reason.");
    for (int r = 0; r < 4; ++r)
      out += fmt::format("moe_sequences_finished_total{{reason=\"{}\"}} {}\n", finish_reason_name(static_cast<FinishReason>(r)),
                         s.finished[r]);
    uint64_t hits = 0, misses = 0, bytes = 0, loads = 0;
    if (BudgetedExpertStore* st = engine.offload_store()) {
      const ExpertStoreStats x = st->stats();
      for (auto h : x.hits) hits += h;
      for (auto m : x.misses) misses += m;
      bytes = x.bytes_read;
      loads = x.loads;
    }
    metric("moe_expert_store_hits_total", "counter", "Expert acquires served from memory (streamed experts only).");
    out += fmt::format("moe_expert_store_hits_total {}\n", hits);
    metric("moe_expert_store_misses_total", "counter", "Expert acquires that had to be read from disk.");
    out += fmt::format("moe_expert_store_misses_total {}\n", misses);
    metric("moe_expert_store_hit_rate", "gauge", "Hits over acquires since start (1 when every expert is resident).");
    out += fmt::format("moe_expert_store_hit_rate {:.6f}\n", hits + misses ? double(hits) / double(hits + misses) : 1.0);
    metric("moe_expert_bytes_read_total", "counter", "Bytes of experts read from disk.");
    out += fmt::format("moe_expert_bytes_read_total {}\n", bytes);
    metric("moe_expert_loads_total", "counter", "Expert reads from disk.");
    out += fmt::format("moe_expert_loads_total {}\n", loads);
    metric("moe_resident_memory_bytes", "gauge", "Resident set size of the server process.");
    out += fmt::format("moe_resident_memory_bytes {}\n", rss_bytes());
    metric("moe_expert_tokens_total", "counter", "Tokens routed to each expert, by layer (the live expert load).");
    const std::vector<uint64_t> counts = load.counts();
    for (int l : load.moe_layers())
      for (int e = 0; e < load.n_expert(); ++e)
        out += fmt::format("moe_expert_tokens_total{{layer=\"{}\",expert=\"{}\"}} {}\n", l, e,
                           counts[static_cast<size_t>(l * load.n_expert() + e)]);
    return out;
  }

  void routes() {
    http.set_default_headers({{"Access-Control-Allow-Origin", "*"}});
    http.set_payload_max_length(opts.max_body_bytes);
    http.set_keep_alive_timeout(30);
    http.set_read_timeout(30);
    http.set_write_timeout(30);
    http.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      const int st = res.status;
      ApiError e(st, st == 413 ? "invalid_request_error" : st == 404 ? "invalid_request_error" : "server_error",
                 st == 404   ? fmt::format("Unknown request URL: {} {}", req.method, req.path)
                 : st == 413 ? std::string("The request body is too large")
                 : st == 400 ? std::string("Bad request")
                             : fmt::format("HTTP error {}", st));
      if (st >= 400 && st < 500) e.type = "invalid_request_error";
      send_error(res, e);
      return httplib::Server::HandlerResponse::Handled;
    }));
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string msg = "internal error";
      try {
        if (ep) std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        msg = e.what();
      } catch (...) {
      }
      send_error(res, ApiError(500, "server_error", msg));
    });
    http.Post("/v1/chat/completions",
              [this](const httplib::Request& req, httplib::Response& res) { completion(req, res, Endpoint::Chat); });
    http.Post("/v1/completions",
              [this](const httplib::Request& req, httplib::Response& res) { completion(req, res, Endpoint::Completion); });
    http.Options(R"(/v1/.*)", [](const httplib::Request&, httplib::Response& res) {
      res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
      res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type");
      res.status = 204;
    });
    http.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
      try {
        check_auth(req);
        res.set_content(dump_json(models_json()), "application/json");
        counters.add("models", 200);
      } catch (const ApiError& e) {
        send_error(res, e);
        counters.add("models", e.status);
      }
    });
    http.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      try {
        check_auth(req);
        check_model(req.matches[1]);
        res.set_content(dump_json(models_json()["data"][0]), "application/json");
        counters.add("models", 200);
      } catch (const ApiError& e) {
        send_error(res, e);
        counters.add("models", e.status);
      }
    });
    http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(dump_json({{"status", "ok"}}), "application/json");
      counters.add("health", 200);
    });
    http.Get("/metrics", [this](const httplib::Request& req, httplib::Response& res) {
      try {
        check_auth(req);
        res.set_content(metrics(), "text/plain; version=0.0.4; charset=utf-8");
        counters.add("metrics", 200);
      } catch (const ApiError& e) {
        send_error(res, e);
        counters.add("metrics", e.status);
      }
    });
    http.Get("/", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(dashboard_html(), "text/html; charset=utf-8");
      counters.add("dashboard", 200);
    });
    http.Get("/events", [this](const httplib::Request& req, httplib::Response& res) {
      counters.add("events", 200);
      const int fd = connection_fd(req);
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider("text/event-stream", [this, fd](size_t, httplib::DataSink& sink) {
        const std::string line = "data: " + dump_json(snapshot()) + "\n\n";
        if (!sink.write(line.data(), line.size())) return false;
        for (int i = 0; i < 10; ++i) {  // 0.5 s, watching for the end
          if (stopping.load() || peer_closed(fd)) return false;
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        return true;
      });
    });
  }
};

Server::Server(BatchScheduler& sched, Engine& engine, const Tokenizer& tok, LiveExpertLoad& load, ServerOptions o)
    : impl_(std::make_unique<Impl>(sched, engine, tok, load, std::move(o))) {
  Impl& m = *impl_;
  if (m.opts.model_id.empty()) m.opts.model_id = "model";
  int threads = m.opts.http_threads;
  if (threads <= 0)
    threads = sched.options().slots + static_cast<int>(std::min<size_t>(sched.options().max_queue, 1024)) + 8;
  m.http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  m.routes();
}

Server::~Server() { stop(); }

int Server::bind() {
  Impl& m = *impl_;
  if (m.opts.port == 0) {
    const int port = m.http.bind_to_any_port(m.opts.host);
    if (port <= 0) fail("serve: cannot bind to {} (any port)", m.opts.host);
    m.opts.port = port;
    return port;
  }
  if (!m.http.bind_to_port(m.opts.host, m.opts.port))
    fail("serve: cannot bind to {}:{} (in use, or not an address of this machine)", m.opts.host, m.opts.port);
  return m.opts.port;
}

void Server::listen() { impl_->http.listen_after_bind(); }

void Server::stop() {
  impl_->stopping = true;
  impl_->http.stop();
}

std::string Server::metrics_text() { return impl_->metrics(); }
json Server::dashboard_snapshot() { return impl_->snapshot(); }
const RequestCounters& Server::counters() const { return impl_->counters; }

}  // namespace moe::server
