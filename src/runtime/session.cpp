#include "runtime/session.h"

#include <algorithm>

#include "base/error.h"

namespace moe {

Session::Session(const Model& model, ExpertStore& store, int64_t n_ctx, ForwardOptions options)
    : model_(model), kv_(model.spec(), n_ctx), forward_(model, store, options) {}

const std::vector<float>& Session::eval(const std::vector<int32_t>& tokens, ThreadPool& pool, bool all_logits,
                                        int64_t n_batch) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t n_vocab = model_.spec().n_vocab;
  if (n == 0) fail("eval: no tokens to evaluate");
  if (n_past_ + n > kv_.n_ctx())
    fail("context overflow: {} tokens in context + {} new > context size {}", n_past_, n, kv_.n_ctx());
  logits_.resize(static_cast<size_t>((all_logits ? n : 1) * n_vocab));
  n_batch = std::max<int64_t>(1, n_batch);
  for (int64_t b = 0; b < n; b += n_batch) {
    const int64_t m = std::min(n_batch, n - b);
    const bool last = b + m == n;
    float* out = all_logits ? logits_.data() + b * n_vocab : logits_.data();
    // Without all_logits only the final batch's last token needs the output projection.
    if (all_logits || last) {
      forward_.run(tokens.data() + b, m, n_past_, kv_, pool, out, all_logits);
    } else {
      std::vector<float> discard(static_cast<size_t>(n_vocab));
      forward_.run(tokens.data() + b, m, n_past_, kv_, pool, discard.data(), false);
    }
    n_past_ += m;
  }
  return logits_;
}

}  // namespace moe
