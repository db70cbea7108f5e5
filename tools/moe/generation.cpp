#include "generation.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "base/error.h"
#include "format/gguf.h"
#include "model/weights.h"

namespace moe::cli {

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::Eog: return "end of generation";
    case StopReason::Length: return "token limit";
    case StopReason::StopString: return "stop string";
    case StopReason::ContextFull: return "context full";
    case StopReason::Interrupted: return "interrupted";
  }
  return "?";
}

GenerateResult generate(Session& session, ThreadPool& pool, Sampler& sampler, const Tokenizer* tok,
                        const std::vector<float>& first_logits, const GenerateParams& params,
                        const std::function<void(std::string_view)>& emit, const std::atomic<bool>* interrupt) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  auto since = [&] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  const int64_t n_vocab = session.model().spec().n_vocab;

  GenerateResult r;
  std::unique_ptr<StreamDecoder> decoder;
  if (tok) decoder = std::make_unique<StreamDecoder>(*tok);
  StopMatcher matcher(params.stops);
  auto out = [&](const std::string& s) {
    if (s.empty()) return;
    r.text += s;
    if (emit) emit(s);
  };

  const std::vector<float>* logits = &first_logits;
  const std::vector<float>* weak_logits = params.contrast_logits;
  if (params.contrast && !weak_logits) fail("generate: a contrast session needs its logits for the prompt");
  std::vector<float> scores;
  r.reason = StopReason::Length;
  for (int64_t i = 0; params.n_predict < 0 || i < params.n_predict; ++i) {
    if (interrupt && interrupt->load(std::memory_order_relaxed)) {
      r.reason = StopReason::Interrupted;
      break;
    }
    const float* dist = logits->data();
    if (params.contrast) {
      scores.resize(static_cast<size_t>(n_vocab));
      scmoe_scores(logits->data(), weak_logits->data(), n_vocab, params.scmoe, scores.data());
      dist = scores.data();
    }
    const int32_t next = sampler.sample(dist, n_vocab);
    float logprob = 0.0f;
    if (params.logprobs) {
      const float* l = logits->data();
      const float mx = *std::max_element(l, l + n_vocab);
      double z = 0;
      for (int64_t v = 0; v < n_vocab; ++v) z += std::exp(static_cast<double>(l[v] - mx));
      logprob = static_cast<float>(l[next] - mx - std::log(z));
    }
    if (i == 0) r.first_token_seconds = since();
    if (tok && !params.ignore_eos && tok->is_eog(next)) {
      r.reason = StopReason::Eog;
      break;
    }
    r.ids.push_back(next);
    if (params.logprobs) r.logprobs.push_back(logprob);
    if (params.on_token) params.on_token(next);
    if (decoder) {
      out(matcher.push(decoder->push(next)));
      if (matcher.stopped()) {
        r.reason = StopReason::StopString;
        break;
      }
    }
    if (params.n_predict >= 0 && i + 1 >= params.n_predict) break;  // the last token needs no eval
    if (session.n_past() >= session.n_ctx()) {
      r.reason = StopReason::ContextFull;
      break;
    }
    logits = &session.eval({next}, pool);
    if (params.contrast) weak_logits = &params.contrast->eval({next}, pool);
  }
  if (decoder && !matcher.stopped()) {
    out(matcher.push(decoder->flush()));
    if (matcher.stopped()) r.reason = StopReason::StopString;
    out(matcher.flush());
  }
  r.seconds = since();
  return r;
}

}  // namespace moe::cli

namespace moe::cli {

std::unique_ptr<Model> load_model_for_generation(const std::string& path) {
  try {
    return Model::load(path);
  } catch (const Error&) {
    std::unique_ptr<gguf::File> f;
    try {
      f = gguf::File::open(path);
    } catch (const Error&) {
      throw;  // not even a readable GGUF: the loader's own message is the useful one
    }
    if (f && !f->find_tensor("token_embd.weight")) {
      fail("{}: has no weights (no token_embd.weight, {} tensors): it is a vocabulary-only file; "
           "it can be used with `moe tokenize`, not to generate text",
           path, f->tensors().size());
    }
    throw;
  }
}

void end_open_line(const std::string& printed) {
  if (printed.empty() || printed.back() == '\n') return;
  struct stat out {}, err {};
  const bool same = ::fstat(STDOUT_FILENO, &out) == 0 && ::fstat(STDERR_FILENO, &err) == 0 &&
                    out.st_dev == err.st_dev && out.st_ino == err.st_ino;
  if (!same && !::isatty(STDOUT_FILENO)) return;
  std::fputs("\n", stdout);
  std::fflush(stdout);
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open: {}", path, std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail("{}: read failed", path);
  return ss.str();
}

}  // namespace moe::cli
