// Which cached expert to evict. Policies see only keys (layer * n_expert + expert) and events; the
// store owns the slots. Implementations: distance to the executing layer (HOBBIT-style; the default),
// LRU, LFU (LRU tie-break), ARC, and layer-aware LRU (deeper layers are evicted first, since
// cross-layer prediction is weakest for the shallow ones: Fate).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace moe {

using ExpertKey = uint32_t;

class CachePolicy {
 public:
  virtual ~CachePolicy() = default;
  virtual const char* name() const = 0;
  // A cached expert was used (hit) or just inserted after a load.
  virtual void on_access(ExpertKey key) = 0;
  virtual void on_insert(ExpertKey key) = 0;
  virtual void on_evict(ExpertKey key) = 0;
  // Picks a victim among cached keys for which evictable(key) is true; returns false if none.
  virtual bool choose_victim(const std::function<bool(ExpertKey)>& evictable, ExpertKey& victim) = 0;
};

// name: "distance" | "lru" | "lfu" | "arc" | "layer" ; capacity in slots; n_expert to decode keys into layers.
std::unique_ptr<CachePolicy> make_cache_policy(const std::string& name, size_t capacity, int n_expert, int n_layer);
std::vector<std::string> cache_policy_names();

}  // namespace moe
