// Helpers shared by the compression tests (prune, merge): all-position logits of a model through the inference engine.
#pragma once
#include <cstdint>
#include <vector>

#include "model/weights.h"
#include "moe/executor.h"
#include "runtime/session.h"

namespace moe::test {

// All-position logits of `ids` (resident experts, 2 threads), optionally with an observer on the forward pass.
inline std::vector<float> eval_logits(const Model& model, const std::vector<int32_t>& ids,
                                      ForwardObserver* obs = nullptr) {
  ResidentExpertStore store(model);
  ThreadPool pool(2);
  Session s(model, store, static_cast<int64_t>(ids.size()) + 4);
  if (obs) s.forward().add_observer(obs);
  return s.eval(ids, pool, /*all_logits=*/true, 512);
}

}  // namespace moe::test
