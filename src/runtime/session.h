// A Session is one conversation with a model: its KV cache, its position, and the forward pass that
// extends it. Several sessions can share one Model in a process (no globals).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "base/thread_pool.h"
#include "model/forward.h"
#include "model/weights.h"
#include "moe/expert_store.h"

namespace moe {

class Session {
 public:
  Session(const Model& model, ExpertStore& store, int64_t n_ctx, ForwardOptions options = {});

  // Appends tokens to the context and returns logits: of every new token ([n][n_vocab]) when
  // all_logits, else of the last one ([n_vocab]). Prompts are processed in batches of `n_batch`.
  const std::vector<float>& eval(const std::vector<int32_t>& tokens, ThreadPool& pool, bool all_logits = false,
                                 int64_t n_batch = 512);

  int64_t n_past() const { return n_past_; }
  int64_t n_ctx() const { return kv_.n_ctx(); }
  void reset() { n_past_ = 0; }
  // Drops the context after position n, keeping [0, m) and returning m: n itself unless a
  // sliding-window layer's ring has already overwritten keys that continuing at n would need (then 0,
  // and the caller evaluates the tokens again).
  int64_t truncate(int64_t n) {
    n_past_ = kv_.max_truncation(n_past_, n);
    return n_past_;
  }
  ForwardPass& forward() { return forward_; }
  // The session's routing policy (moe/routing_policy.h); it applies to the tokens evaluated after the
  // call. Throws when the policy does not fit the model.
  void set_routing_policy(const RoutingPolicy& policy) { forward_.set_routing_policy(policy); }
  const RoutingPolicy& routing_policy() const { return forward_.routing_policy(); }
  const Model& model() const { return model_; }
  size_t kv_bytes() const { return kv_.bytes(); }

 private:
  const Model& model_;
  KvCache kv_;
  ForwardPass forward_;
  int64_t n_past_ = 0;
  std::vector<float> logits_;
};

}  // namespace moe
