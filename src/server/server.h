// `moe serve`: an OpenAI-compatible HTTP server (cpp-httplib) over the batch scheduler (runtime/).
//
//   POST /v1/chat/completions, POST /v1/completions   streamed (server-sent events, ending in [DONE]) or not
//   GET  /v1/models, /v1/models/{id}
//   GET  /health                                       {"status": "ok"}
//   GET  /metrics                                      Prometheus text format
//   GET  /                                             the live dashboard (one self-contained page)
//   GET  /events                                       the dashboard's feed (server-sent events, twice a second)
//
// With an API key, /v1/* and /metrics need "Authorization: Bearer KEY" (401 otherwise); /health, the
// dashboard and its feed stay open. Errors use OpenAI's shape {"error": {message, type, param, code}}.
// A full queue answers 429. A client that disconnects (mid-stream or while waiting for a whole response)
// has its sequences cancelled at once: the server watches each request's connection for the peer's close.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "runtime/batch_scheduler.h"
#include "runtime/engine.h"
#include "server/live_stats.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace moe::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;              // 0 = any free port (bind() says which)
  std::string api_key;          // "" = no authentication
  std::string model_id;         // what /v1/models lists and responses name
  ChatTemplate chat_template = ChatTemplate::None;  // None: messages are joined as plain text
  int http_threads = 0;         // 0 = slots + queue + 8 (every waiting or streaming request holds one)
  size_t max_body_bytes = 8u << 20;
  bool log_requests = false;    // one line per request on stderr
};

class Server {
 public:
  // The scheduler must have been built with `load` among its observers.
  Server(BatchScheduler& sched, Engine& engine, const Tokenizer& tok, LiveExpertLoad& load, ServerOptions o);
  ~Server();
  // Binds the listening socket; returns the port. Throws moe::Error when it cannot.
  int bind();
  // Serves until stop() (blocks).
  void listen();
  // Stops listening and ends open streams; safe from any thread.
  void stop();
  std::string metrics_text();
  nlohmann::json dashboard_snapshot();
  const RequestCounters& counters() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The dashboard page (self-contained HTML: no external scripts, styles or fonts).
const std::string& dashboard_html();

}  // namespace moe::server
