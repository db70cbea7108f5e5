// `moe chat -m MODEL`: an interactive conversation.
//
// Each user line becomes a user turn. The whole conversation is rendered with the model's chat
// template (tokenizer.chat_template, or --chat-template), tokenized, and compared with the tokens
// already in the session's KV cache: the session is truncated to the common prefix and only the
// rest is evaluated, so a turn costs its own tokens, not the conversation's. Models without a
// template we recognise fall back to plain completion (each message on its own line) with a
// warning.
//
// Terminal use (stdin is a tty): "> " marks where to type; Ctrl-C stops the current answer and
// keeps the conversation (at the prompt it discards the line being typed); Ctrl-D on an empty line
// quits. Scripted use (stdin is not a tty): one user turn per non-empty line, answers one per
// line-terminated block on stdout, no prompt marker, default SIGINT behaviour; EOF quits.
// When the conversation no longer fits the context, the oldest exchanges are dropped (the system
// message stays); an answer that fills the context is stopped with a notice.
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>

#include "base/error.h"
#include "base/thread_pool.h"
#include "cli_util.h"
#include "commands.h"
#include "engine_flags.h"
#include "generation.h"
#include "model/weights.h"
#include "moe/expert_store.h"
#include "runtime/sampler.h"
#include "runtime/session.h"
#include "trace_flags.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace moe::cli {

namespace {

struct ChatArgs {
  std::string model, system, chat_template;
  std::vector<std::string> stops;
  int n_predict = -1;
  int threads = 0;
  int64_t n_ctx = 0;
  SamplerParams sampling;
  bool ignore_eos = false;
  bool verbose = false;
  EngineFlags engine;
  TraceFlags trace;
};

// The only mutable global: what the SIGINT handler may touch. Everything else receives the flag
// as a reference.
std::atomic<bool> g_sigint{false};
static_assert(std::atomic<bool>::is_always_lock_free, "the SIGINT flag must be lock-free");

extern "C" void on_sigint(int) { g_sigint.store(true, std::memory_order_relaxed); }

// Installs the SIGINT handler for the lifetime of the object. SA_RESTART is left off so that a
// read() blocked on the terminal returns EINTR and the prompt can react.
class SigintGuard {
 public:
  SigintGuard() {
    struct sigaction sa {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    installed_ = sigaction(SIGINT, &sa, &old_) == 0;
  }
  ~SigintGuard() {
    if (installed_) sigaction(SIGINT, &old_, nullptr);
  }
  SigintGuard(const SigintGuard&) = delete;
  SigintGuard& operator=(const SigintGuard&) = delete;

 private:
  struct sigaction old_ {};
  bool installed_ = false;
};

// Line input on a file descriptor, aware of the interrupt flag.
class LineReader {
 public:
  enum class Status { Line, Eof, Interrupted };
  explicit LineReader(int fd) : fd_(fd) {}

  Status read_line(std::string& line, std::atomic<bool>& interrupt) {
    for (;;) {
      if (const size_t nl = buf_.find('\n'); nl != std::string::npos) {
        line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        return Status::Line;
      }
      if (eof_) {
        if (buf_.empty()) return Status::Eof;
        line.swap(buf_);  // a last line without a newline still counts
        buf_.clear();
        return Status::Line;
      }
      char chunk[4096];
      const ssize_t n = ::read(fd_, chunk, sizeof chunk);
      if (n < 0) {
        if (errno != EINTR) fail("chat: reading stdin failed: {}", std::strerror(errno));
        if (interrupt.exchange(false)) {
          buf_.clear();
          return Status::Interrupted;
        }
        continue;
      }
      if (n == 0) {
        eof_ = true;
        continue;
      }
      buf_.append(chunk, static_cast<size_t>(n));
    }
  }

 private:
  int fd_;
  std::string buf_;
  bool eof_ = false;
};

// Plain completion for models without a usable template: every message on its own line.
std::string render_plain(const std::vector<ChatMessage>& msgs) {
  std::string s;
  for (const auto& m : msgs) s += m.content + "\n";
  return s;
}

std::string known_template_names() {
  std::string names;
  for (int i = 1; i <= static_cast<int>(ChatTemplate::Granite4); ++i) {
    if (!names.empty()) names += ", ";
    names += chat_template_name(static_cast<ChatTemplate>(i));
  }
  return names;
}

class ChatLoop {
 public:
  ChatLoop(const ChatArgs& a, const Tokenizer& tok, ChatTemplate tmpl, Session& session,
           ThreadPool& pool, std::atomic<bool>& interrupt, bool interactive, CliTrace* trace)
      : a_(a), tok_(tok), tmpl_(tmpl), session_(session), pool_(pool), interrupt_(interrupt),
        interactive_(interactive), sampler_(a.sampling), trace_(trace) {
    if (!a.system.empty()) msgs_.push_back({"system", a.system});
  }

  int run() {
    LineReader reader(STDIN_FILENO);
    std::string line;
    for (;;) {
      if (interactive_) {
        std::fputs("> ", stdout);
        std::fflush(stdout);
      }
      const auto st = reader.read_line(line, interrupt_);
      if (st == LineReader::Status::Eof) break;
      if (st == LineReader::Status::Interrupted) {
        std::fputs("\n(Ctrl-D quits)\n", stdout);
        continue;
      }
      if (line.empty()) continue;
      turn(line);
    }
    if (interactive_) std::fputs("\n", stdout);
    std::fflush(stdout);
    return 0;
  }

 private:
  std::string render() const {
    return tmpl_ == ChatTemplate::None ? render_plain(msgs_) : apply_chat_template(tmpl_, msgs_, true);
  }

  // Tokens of the rendered conversation. When the rendering starts with the text the previous
  // turn ended on (the usual case: the new turn only appends), those tokens are kept as they were,
  // including the answer exactly as it was generated, and only the new text is tokenized; otherwise
  // the whole text is tokenized. Re-tokenizing an answer would not always give back the sampled
  // ids (and never does for bytes that were not valid UTF-8), which would cost a re-evaluation.
  std::vector<int32_t> tokenize_conversation(const std::string& text) const {
    if (!history_text_.empty() && text.compare(0, history_text_.size(), history_text_) == 0) {
      std::vector<int32_t> ids = history_ids_;
      const auto tail = tok_.encode(std::string_view(text).substr(history_text_.size()), /*add_bos=*/false,
                                    /*parse_special=*/true);
      ids.insert(ids.end(), tail.begin(), tail.end());
      return ids;
    }
    return tok_.encode(text, /*add_bos=*/true, /*parse_special=*/true);
  }

  // The conversation with the new user message, dropping the oldest exchanges while it does not
  // fit (at least one token of room must stay for the answer). Returns false, with the message
  // removed again, when even the new message alone does not fit.
  bool fit_conversation(std::string& text, std::vector<int32_t>& ids) {
    const size_t first = (!msgs_.empty() && msgs_[0].role == "system") ? 1 : 0;
    size_t dropped = 0;
    for (;;) {
      text = render();
      ids = tokenize_conversation(text);
      if (static_cast<int64_t>(ids.size()) < session_.n_ctx()) {
        if (dropped > 0)
          std::fprintf(stderr, "moe chat: the context is full; dropped the %zu oldest message%s\n", dropped,
                       dropped == 1 ? "" : "s");
        return true;
      }
      if (msgs_.size() - first <= 1) {
        std::fprintf(stderr,
                     "moe chat: this message does not fit in the context: the conversation would be %zu tokens, "
                     "the context size is %lld (-c)\n",
                     ids.size(), static_cast<long long>(session_.n_ctx()));
        msgs_.pop_back();
        return false;
      }
      // Drop the oldest message after the system prompt; dropping keeps user/assistant alternation.
      msgs_.erase(msgs_.begin() + static_cast<std::ptrdiff_t>(first));
      ++dropped;
      if (msgs_.size() - first > 1 && msgs_[first].role == "assistant") {
        msgs_.erase(msgs_.begin() + static_cast<std::ptrdiff_t>(first));
        ++dropped;
      }
    }
  }

  void turn(const std::string& user_text) {
    ++n_turns_;
    msgs_.push_back({"user", user_text});
    std::string text;
    std::vector<int32_t> ids;
    if (!fit_conversation(text, ids)) return;

    // Re-use the cached prefix; at least one token must be evaluated to get fresh logits.
    size_t common = 0;
    while (common < cached_.size() && common < ids.size() && cached_[common] == ids[common]) ++common;
    if (common == ids.size()) --common;
    common = static_cast<size_t>(session_.truncate(static_cast<int64_t>(common)));
    cached_.resize(common);
    const std::vector<int32_t> fresh(ids.begin() + static_cast<std::ptrdiff_t>(common), ids.end());
    if (trace_) trace_->begin_input("", fmt::format("turn {}", n_turns_));
    const std::vector<float>& logits = session_.eval(fresh, pool_);
    if (trace_) trace_->set_generated(true);
    cached_.insert(cached_.end(), fresh.begin(), fresh.end());

    GenerateParams gp;
    gp.n_predict = a_.n_predict;
    gp.stops = a_.stops;
    gp.ignore_eos = a_.ignore_eos;
    auto emit = [](std::string_view piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    };
    const GenerateResult r = generate(session_, pool_, sampler_, &tok_, logits, gp, emit, &interrupt_);
    // The session holds every evaluated answer token (not the last sampled one).
    const size_t n_eval_answer = static_cast<size_t>(session_.n_past()) - cached_.size();
    cached_.insert(cached_.end(), r.ids.begin(), r.ids.begin() + static_cast<std::ptrdiff_t>(n_eval_answer));
    msgs_.push_back({"assistant", r.text});
    generated_ += r.ids.size();
    generate_seconds_ += r.seconds;
    // What the next turn can build on: the prompt and, unless a stop string cut the text short of
    // the sampled ids, the answer's ids.
    history_text_ = text;
    history_ids_ = ids;
    if (r.reason != StopReason::StopString) {
      history_text_ += r.text;
      history_ids_.insert(history_ids_.end(), r.ids.begin(), r.ids.end());
    }

    clearerr(stdout);  // a write cut short by SIGINT (EINTR) must not poison later output
    std::fputs("\n", stdout);
    if (r.reason == StopReason::Interrupted) std::fputs("[interrupted]\n", stdout);
    if (r.reason == StopReason::ContextFull)
      std::printf("[the context is full (%lld tokens): answer stopped]\n", static_cast<long long>(session_.n_ctx()));
    if (interactive_) std::fputs("\n", stdout);
    std::fflush(stdout);
    interrupt_.store(false);

    if (a_.verbose) {
      const double t_gen = std::max(r.seconds - r.first_token_seconds, 1e-9);
      const double steps = r.ids.size() > 1 ? static_cast<double>(r.ids.size() - 1) : 0.0;
      std::fprintf(stderr,
                   "moe chat: turn %d: evaluated %zu new tokens (%zu reused from the cache, conversation %zu "
                   "tokens), generated %zu tokens (%.1f tok/s), stopped by %s\n",
                   n_turns_, fresh.size(), common, ids.size(), r.ids.size(), steps / t_gen,
                   stop_reason_name(r.reason));
    }
  }

  const ChatArgs& a_;
  const Tokenizer& tok_;
  ChatTemplate tmpl_;
  Session& session_;
  ThreadPool& pool_;
  std::atomic<bool>& interrupt_;
  bool interactive_;
  Sampler sampler_;
  std::vector<ChatMessage> msgs_;
  std::vector<int32_t> cached_;  // the tokens in session_'s KV cache, in order
  std::string history_text_;     // rendered text that history_ids_ stand for
  std::vector<int32_t> history_ids_;
  int n_turns_ = 0;
  CliTrace* trace_ = nullptr;  // --trace: each turn is an input; answers are generated tokens
  uint64_t generated_ = 0;       // tokens generated over all turns, and the time it took (--stats)
  double generate_seconds_ = 0;

 public:
  uint64_t generated() const { return generated_; }
  double generate_seconds() const { return generate_seconds_; }
};

int run_chat(const ChatArgs& a) {
  auto model = load_model_for_generation(a.model);  // a header view: maps the file, reads nothing
  const ModelSpec s = model->spec();
  if (!model->file().has("tokenizer.ggml.model"))
    fail("{}: chat needs a tokenizer, and this model has no tokenizer.ggml.model", a.model);
  auto tok = Tokenizer::from_gguf(model->file());

  ChatTemplate tmpl = ChatTemplate::None;
  if (!a.chat_template.empty()) {
    tmpl = detect_chat_template(a.chat_template);
    if (tmpl == ChatTemplate::None)
      fail("chat: --chat-template '{}' is not a template I recognise (known: {})", a.chat_template,
           known_template_names());
  } else {
    tmpl = detect_chat_template(tok->chat_template());
    if (tmpl == ChatTemplate::None)
      std::fprintf(stderr,
                   "moe chat: warning: %s %s; falling back to plain completion (each message on its own "
                   "line; --chat-template NAME picks a format)\n",
                   a.model.c_str(),
                   tok->chat_template().empty() ? "has no chat template (tokenizer.chat_template)"
                                                : "has a chat template I do not recognise");
  }

  int64_t n_ctx = a.n_ctx;
  if (n_ctx <= 0) n_ctx = std::min<int64_t>(s.n_ctx_train > 0 ? s.n_ctx_train : 4096, 4096);
  const bool interactive = isatty(STDIN_FILENO);
  model.reset();
  ThreadPool pool(resolve_threads(a.threads));
  auto engine = open_engine(a.model, a.engine, n_ctx, 512);
  Session session(engine->model(), engine->store(), n_ctx, forward_options(a.engine, *engine, false));
  if (a.verbose || interactive)
    std::fprintf(stderr, "moe chat: %s, template %s, context %lld tokens, %d threads%s\n", a.model.c_str(),
                 chat_template_name(tmpl), static_cast<long long>(n_ctx), pool.size(),
                 interactive ? "; Ctrl-C stops an answer, Ctrl-D quits" : "");

  g_sigint.store(false);
  std::unique_ptr<SigintGuard> guard;
  if (interactive) guard = std::make_unique<SigintGuard>();
  auto trace = CliTrace::open(a.trace, *engine, a.engine, n_ctx, 512, "moe chat");
  if (trace) trace->attach(session);
  ChatLoop loop(a, *tok, tmpl, session, pool, g_sigint, interactive, trace.get());
  const int rc = loop.run();
  if (trace) trace->finish();
  // Every answer ended its line on stdout, so these start on a line of their own.
  report_engine_stats(a.engine, *engine, &session.forward().prediction_stats(), loop.generated(),
                      loop.generate_seconds());
  return rc;
}

}  // namespace

void register_chat(CLI::App& app, CommandSet& cmds) {
  auto args = std::make_shared<ChatArgs>();
  CLI::App* sub = app.add_subcommand("chat", "Chat with a model (interactive on a terminal, one turn per line otherwise)");
  sub->add_option("-m,--model", args->model, "GGUF model file (default: the bundled model, see README)");
  sub->add_option("-n,--n-predict", args->n_predict, "Most tokens per answer (-1 = until end of generation)")
      ->check(CLI::Range(-1, 1 << 24));
  sub->add_option("-t,--threads", args->threads, "Threads (0 = all cores)")->check(CLI::Range(0, 1024));
  sub->add_option("-c,--ctx-size", args->n_ctx, "Context size (default: min(train ctx, 4096))")
      ->check(CLI::Range(0, 1 << 24));
  add_sampling_flags(sub, args->sampling);
  sub->add_option("--system", args->system, "System message");
  sub->add_option("--stop", args->stops, "End an answer before this string (repeatable)");
  sub->add_option("--chat-template", args->chat_template,
                  "Template family name (chatml, llama3, ...) or template text, instead of the model's");
  sub->add_flag("--ignore-eos", args->ignore_eos, "Keep generating past end-of-generation tokens");
  sub->add_flag("-v,--verbose", args->verbose, "Per-turn statistics on stderr (tokens evaluated, reused, generated)");
  add_engine_flags(sub, args->engine);
  add_trace_flags(sub, args->trace);
  cmds.add(sub, [args] {
    if (args->model.empty()) args->model = default_model_path();
    return run_chat(*args);
  });
}

}  // namespace moe::cli
