// ExpertResidency: the synchronous bookkeeping of a budgeted expert pool, without any I/O. Which expert
// sits in which slot, pins, what a hint or a step's routing claims, which expert a policy evicts, and
// what counts as a hit. BudgetedExpertStore runs it under its mutex and does the reads on its I/O thread;
// the cache simulator (analysis/cache_sim.h) runs the very same object over a recorded trace, with reads
// that complete at once. Every decision here depends only on the order of calls, never on when a read
// finishes, except where documented (order_sensitive_evictions), so a replay of the same calls gives
// the same counts as the store.
//
// The calls a forward step makes per MoE layer (see ExpertExecutor::run): an optional speculative hint
// for the next layer (prediction), then a *declaration* (non-speculative hint) of the distinct experts
// the layer's routing chose, in ascending id, then one acquire and one release per declared expert.
// The declaration is where an expert counts as a hit or a miss and where the cache policy sees the use:
// the executor acquires the experts the store has ready first, an order that depends on read timing,
// so acquires of declared experts change nothing the policy or the counters see.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "moe/cache_policy.h"

namespace moe {

// Which copy of an expert: the model's own (full precision), or the low-bit side copy.
enum class ExpertTier : uint8_t { Full = 0, LowBit = 1 };

class ExpertResidency {
 public:
  enum class SlotState : uint8_t { Empty, Loading, Ready, Failed };
  struct Slot {
    ExpertTier tier = ExpertTier::Full;  // the size of its buffer (and, unless Empty, the copy it holds)
    bool has_buffer = false;
    ExpertKey key = 0;
    SlotState state = SlotState::Empty;
    int pins = 0;
    bool hinted = false;     // claimed by a speculative hint and not acquired since
    bool declared = false;   // a declaration (non-speculative hint) counted it and it was not acquired since
    bool declared_hit = false;  // with declared: the declaration found it in the pool (a hit)
    bool preloaded = false;  // claimed by preload and not acquired since
  };

  struct Config {
    int n_layer = 0;
    int n_expert = 0;  // per layer (the largest)
    bool low_bit = false;
    std::array<uint64_t, 2> slot_bytes{};  // by tier
    uint64_t pool_bytes = 0;
    std::string policy = "distance";
  };

  // Slot buffers: the store allocates memory for them; the simulator has none to allocate.
  class SlotMemory {
   public:
    virtual ~SlotMemory() = default;
    virtual void allocate(size_t slot, ExpertTier tier, uint64_t bytes) = 0;
    virtual void free(size_t slot) = 0;
  };

  struct Counters {
    // Per layer. A hit is a use of an expert that was in the pool (cached, or being read because of a
    // hint or a preload); a miss had to be read because the step was routed to it.
    std::vector<uint64_t> hits, misses;
    uint64_t prefetch_issued = 0;     // reads started by a speculative hint
    uint64_t prefetch_used = 0;       // of those, acquired before being evicted
    uint64_t prefetch_wasted = 0;     // evicted without being used
    uint64_t prefetch_throttled = 0;  // speculative hints dropped rather than evict
    // Evictions of an expert that an acquire's own claim took although it was hinted or declared and
    // not yet used. The store can only evict such an expert once its read has finished, so these are
    // the decisions that may depend on read timing (zero with prefetch off and a pool that holds every
    // layer's experts of a step).
    uint64_t order_sensitive_evictions = 0;
  };

  // What the owner of the pool must do after hint(): queue a read into a claimed slot, or move a queued
  // read up (needed_now: the layer being computed waits for it; else: a hint for a later layer).
  struct Action {
    enum Kind : uint8_t { Read, Promote } kind = Read;
    ExpertKey key = 0;
    size_t slot = 0;  // Read only
    bool needed_now = false;
  };

  // One acquire() call of the owner may take several attempts (it waits in between); this carries
  // what the earlier attempts did.
  struct AcquireAttempt {
    bool counted = false;  // counted as a hit or a miss already
    bool hit = false;      // with counted: this use was a hit (for a declared expert: its declaration's outcome)
    bool claimed = false;  // this acquire claimed the slot (its use is the insertion)
  };
  struct AcquireResult {
    enum Kind : uint8_t { Ready, Loading, Read, Failed, NoSlot } kind = NoSlot;
    size_t slot = 0;
    ExpertKey key = 0;
    ExpertTier tier = ExpertTier::Full;
  };

  static constexpr long kNoSlot = -1;
  static constexpr long kThrottled = -2;

  explicit ExpertResidency(const Config& config, SlotMemory* memory = nullptr);

  // Keys: layer * key_stride + tier * n_expert + expert, so policies that decode the layer as
  // key / (their n_expert) see both copies of an expert in its layer.
  ExpertKey key_of(int layer, int expert, ExpertTier tier = ExpertTier::Full) const {
    return static_cast<ExpertKey>(layer * key_stride_ + static_cast<int>(tier) * n_expert_ + expert);
  }
  int layer_of(ExpertKey key) const { return static_cast<int>(key / static_cast<ExpertKey>(key_stride_)); }
  int expert_of(ExpertKey key) const { return static_cast<int>(key % static_cast<ExpertKey>(key_stride_)) % n_expert_; }
  ExpertTier tier_of(ExpertKey key) const {
    return static_cast<int>(key % static_cast<ExpertKey>(key_stride_)) >= n_expert_ ? ExpertTier::LowBit
                                                                                      : ExpertTier::Full;
  }
  int key_stride() const { return key_stride_; }

  // A speculative hint (a prediction for a later layer) or a declaration (speculative = false: the
  // experts this step was routed to, before it acquires them). Appends what to read or promote to `out`.
  // low_bit_ok (null = none): per expert, whether the acquire will accept the low-bit copy.
  void hint(int layer, const int32_t* experts, int n, bool speculative, const uint8_t* low_bit_ok,
            std::vector<Action>& out);
  AcquireResult acquire(int layer, int expert, bool low_bit_ok, AcquireAttempt& attempt);
  // Throws if the expert is not pinned.
  void release(int layer, int expert, ExpertTier tier);
  // Whether acquire would return at once.
  bool is_ready(int layer, int expert, bool low_bit_ok) const;
  // A read finished (or failed) into `slot`.
  void loaded(size_t slot);
  void failed(size_t slot);
  // After acquire reported Failed: forget the expert, so a later acquire reads it again.
  void clear_failed(size_t slot);
  // A free slot for a background preload of the full copy (never evicts): the slot, kNoSlot when the
  // pool is full, or kThrottled when the expert is already in the pool or not an expert.
  long claim_preload(int layer, int expert);

  const Slot& slot(size_t i) const { return slots_[i]; }
  // The slot holding the full copy of an expert, or null.
  const Slot* find(int layer, int expert) const {
    const auto it = where_.find(key_of(layer, expert));
    return it == where_.end() ? nullptr : &slots_[it->second];
  }
  size_t n_slots() const { return slots_.size(); }
  size_t n_full_slots() const { return n_full_slots_; }
  uint64_t bytes_held() const { return bytes_held_; }
  const CachePolicy& policy() const { return *policy_; }
  const Counters& counters() const { return counters_; }
  void reset_counters();

 private:
  enum class ClaimKind : uint8_t { Hint, Declare, Acquire };
  long claim(ExpertKey key, ExpertTier tier, ClaimKind kind);
  long free_slot(ExpertTier tier);
  void drop_buffer(Slot& sl, size_t i);
  void forget(Slot& sl);  // an occupied slot becomes Empty (the policy is told)
  void declare_existing(ExpertKey key, int layer);
  bool speculation_may_evict();

  int n_layer_ = 0, n_expert_ = 0, key_stride_ = 0;
  bool has_low_ = false;
  std::array<uint64_t, 2> slot_bytes_{};
  uint64_t pool_bytes_ = 0, bytes_held_ = 0;
  size_t n_full_slots_ = 0;
  SlotMemory* memory_ = nullptr;
  std::unique_ptr<CachePolicy> policy_;
  std::vector<Slot> slots_;
  std::unordered_map<ExpertKey, size_t> where_;
  Counters counters_;
  // Speculative prefetch pays only while it helps more than it hurts. Exponential moving average of
  // outcomes (1 = a speculative load used; 0 = one evicted unused, or a demand miss on an expert that
  // was evicted for one), and a counter that still lets one in kSpeculationProbeEvery throttled hints
  // through, so the average keeps measuring.
  double speculative_success_ = 1.0;
  uint32_t speculative_probe_ = 0;
  // Experts evicted to make room for a speculative load: a later demand miss on one of them is a
  // cost of speculation (counted as a failure), as is a speculative load evicted unused.
  std::unordered_set<ExpertKey> evicted_for_speculation_;
};

}  // namespace moe
