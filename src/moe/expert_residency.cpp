#include "moe/expert_residency.h"

#include <algorithm>

#include "base/error.h"

namespace moe {

namespace {

// Speculative-prefetch throttle (speculation_may_evict): the moving average covers about the last
// 1 / rate outcomes.
constexpr double kSpeculationEmaRate = 0.05;
constexpr double kMinSpeculativeSuccess = 0.5;
constexpr uint32_t kSpeculationProbeEvery = 8;

}  // namespace

ExpertResidency::ExpertResidency(const Config& c, SlotMemory* memory)
    : n_layer_(c.n_layer), n_expert_(c.n_expert), has_low_(c.low_bit), slot_bytes_(c.slot_bytes),
      pool_bytes_(c.pool_bytes), memory_(memory) {
  if (n_layer_ <= 0 || n_expert_ <= 0) fail("expert pool: {} layers of {} experts", n_layer_, n_expert_);
  if (slot_bytes_[0] == 0 || (has_low_ && slot_bytes_[1] == 0)) fail("expert pool: slot size 0");
  key_stride_ = has_low_ ? 2 * n_expert_ : n_expert_;
  n_full_slots_ = static_cast<size_t>(pool_bytes_ / slot_bytes_[0]);
  if (!has_low_) {
    // One size: every slot's buffer is allocated now.
    slots_.resize(n_full_slots_);
    for (size_t i = 0; i < slots_.size(); ++i) {
      slots_[i].has_buffer = true;
      if (memory_) memory_->allocate(i, ExpertTier::Full, slot_bytes_[0]);
    }
    bytes_held_ = n_full_slots_ * slot_bytes_[0];
  } else {
    // Two sizes: as many slots as the smaller size allows, buffers allocated on demand.
    slots_.resize(static_cast<size_t>(pool_bytes_ / std::min(slot_bytes_[0], slot_bytes_[1])));
  }
  // Capacity in (full-size) slots: only ARC uses it, to bound its target and ghost lists.
  policy_ = make_cache_policy(c.policy, n_full_slots_, key_stride_, n_layer_);
  counters_.hits.assign(static_cast<size_t>(n_layer_), 0);
  counters_.misses.assign(static_cast<size_t>(n_layer_), 0);
}

void ExpertResidency::reset_counters() {
  counters_ = Counters{};
  counters_.hits.assign(static_cast<size_t>(n_layer_), 0);
  counters_.misses.assign(static_cast<size_t>(n_layer_), 0);
}

void ExpertResidency::drop_buffer(Slot& sl, size_t i) {
  bytes_held_ -= slot_bytes_[static_cast<int>(sl.tier)];
  sl.has_buffer = false;
  if (memory_) memory_->free(i);
}

void ExpertResidency::forget(Slot& sl) {
  policy_->on_evict(sl.key);
  where_.erase(sl.key);
  sl.state = SlotState::Empty;
  sl.pins = 0;
  sl.hinted = sl.declared = sl.preloaded = false;
}

long ExpertResidency::free_slot(ExpertTier tier) {
  for (Slot& sl : slots_)
    if (sl.state == SlotState::Failed && (sl.hinted || sl.preloaded)) forget(sl);  // nobody waits on it
  for (size_t i = 0; i < slots_.size(); ++i)
    if (slots_[i].state == SlotState::Empty && slots_[i].has_buffer && slots_[i].tier == tier) return static_cast<long>(i);
  if (!has_low_) return kNoSlot;
  const uint64_t need = slot_bytes_[static_cast<int>(tier)];
  if (bytes_held_ + need > pool_bytes_) {
    // Unused buffers of the other size make room first.
    for (size_t i = 0; i < slots_.size(); ++i)
      if (slots_[i].state == SlotState::Empty && slots_[i].has_buffer && slots_[i].tier != tier) drop_buffer(slots_[i], i);
  }
  if (bytes_held_ + need > pool_bytes_) return kNoSlot;
  for (size_t i = 0; i < slots_.size(); ++i) {
    Slot& sl = slots_[i];
    if (sl.state != SlotState::Empty || sl.has_buffer) continue;
    sl.tier = tier;
    sl.has_buffer = true;
    bytes_held_ += need;
    if (memory_) memory_->allocate(i, tier, need);
    return static_cast<long>(i);
  }
  return kNoSlot;
}

// Called only when no slot is free (a speculative hint may always take a free one). Evicting a cached
// expert for a hint is allowed while the moving average says hints are used more often than the
// experts they pushed out come back: in a tight pool predictions evict experts that are needed next
// (measured on OLMoE-1B-7B under 2 GB, that halved decode speed), while in a roomy pool (3 GB)
// prefetch hides the misses.
bool ExpertResidency::speculation_may_evict() {
  if (speculative_success_ >= kMinSpeculativeSuccess) return true;
  return ++speculative_probe_ % kSpeculationProbeEvery == 0;
}

long ExpertResidency::claim(ExpertKey key, ExpertTier tier, ClaimKind kind) {
  long slot = free_slot(tier);
  if (slot < 0 && kind == ClaimKind::Hint && !speculation_may_evict()) return kThrottled;
  while (slot < 0) {
    // Never a pinned expert or one still being read. A declared expert is about to be acquired, and
    // hints never evict experts other hints brought in (those are about to be needed); an acquire
    // that finds nothing else may take a declared one (the executor never gets there: it acquires
    // every declared expert before it claims an undeclared one).
    auto evictable = [&](ExpertKey k, bool allow_declared) {
      const Slot& sl = slots_[where_.at(k)];
      if ((sl.state != SlotState::Ready && sl.state != SlotState::Failed) || sl.pins != 0) return false;
      if (sl.declared) return allow_declared;
      return !(sl.hinted && kind != ClaimKind::Acquire);
    };
    ExpertKey victim = 0;
    if (!policy_->choose_victim([&](ExpertKey k) { return evictable(k, false); }, victim)) {
      if (kind != ClaimKind::Acquire || !policy_->choose_victim([&](ExpertKey k) { return evictable(k, true); }, victim))
        return kNoSlot;
    }
    const size_t at = where_.at(victim);
    Slot& sl = slots_[at];
    if (kind == ClaimKind::Acquire && (sl.hinted || sl.declared)) ++counters_.order_sensitive_evictions;
    if (kind == ClaimKind::Hint) {
      if (evicted_for_speculation_.size() > 4 * slots_.size()) evicted_for_speculation_.clear();  // stay bounded
      evicted_for_speculation_.insert(victim);
    }
    if (sl.hinted) {
      ++counters_.prefetch_wasted;
      speculative_success_ *= 1.0 - kSpeculationEmaRate;
    }
    forget(sl);
    if (sl.tier == tier) {
      slot = static_cast<long>(at);
    } else {
      // A copy of the other size: its bytes go back to the pool, and more victims may be needed.
      drop_buffer(sl, at);
      slot = free_slot(tier);
    }
  }
  Slot& sl = slots_[static_cast<size_t>(slot)];
  sl.key = key;
  sl.state = SlotState::Loading;
  sl.pins = 0;
  sl.hinted = kind == ClaimKind::Hint;
  sl.declared = kind == ClaimKind::Declare;
  sl.declared_hit = false;
  sl.preloaded = false;
  where_[key] = static_cast<size_t>(slot);
  // The insertion is the use that brought the expert in: policies see it now, in call order, not
  // when the read completes.
  policy_->on_insert(key);
  return slot;
}

void ExpertResidency::declare_existing(ExpertKey key, int layer) {
  Slot& sl = slots_[where_.at(key)];
  if (sl.declared) return;  // declared twice before its acquire: one use
  sl.declared = true;
  sl.declared_hit = true;
  ++counters_.hits[static_cast<size_t>(layer)];
  policy_->on_access(key);
}

void ExpertResidency::hint(int layer, const int32_t* experts, int n, bool speculative, const uint8_t* low_bit_ok,
                           std::vector<Action>& out) {
  if (layer < 0 || layer >= n_layer_) return;
  for (int i = 0; i < n; ++i) {
    if (experts[i] < 0 || experts[i] >= n_expert_) continue;
    const ExpertKey full = key_of(layer, experts[i], ExpertTier::Full);
    ExpertKey key = full;
    if (!where_.count(full)) {  // the full copy serves any request
      const ExpertTier tier = has_low_ && low_bit_ok && low_bit_ok[i] ? ExpertTier::LowBit : ExpertTier::Full;
      key = key_of(layer, experts[i], tier);
    }
    if (where_.count(key)) {
      out.push_back({Action::Promote, key, 0, !speculative});
      if (!speculative) declare_existing(key, layer);
      continue;
    }
    // Loading an expert that a speculative load pushed out is that speculation's cost, whether a
    // demand miss or another hint brings it back (hints chasing each other through a tight pool).
    if (evicted_for_speculation_.erase(key)) speculative_success_ *= 1.0 - kSpeculationEmaRate;
    const long slot = claim(key, tier_of(key), speculative ? ClaimKind::Hint : ClaimKind::Declare);
    if (slot == kThrottled) {
      ++counters_.prefetch_throttled;
      continue;
    }
    if (slot < 0) break;  // everything else is pinned, declared or hinted: drop the rest
    out.push_back({Action::Read, key, static_cast<size_t>(slot), !speculative});
    if (speculative)
      ++counters_.prefetch_issued;
    else
      ++counters_.misses[static_cast<size_t>(layer)];
  }
}

ExpertResidency::AcquireResult ExpertResidency::acquire(int layer, int expert, bool low_bit_ok, AcquireAttempt& a) {
  if (layer < 0 || layer >= n_layer_ || expert < 0 || expert >= n_expert_)
    fail("expert store: no expert {} in layer {}", expert, layer);
  // The full copy when it is wanted or already in the pool (being read counts: its I/O is spent).
  ExpertTier tier = ExpertTier::Full;
  if (low_bit_ok && has_low_ && !where_.count(key_of(layer, expert, ExpertTier::Full))) tier = ExpertTier::LowBit;
  const ExpertKey key = key_of(layer, expert, tier);
  AcquireResult r;
  r.key = key;
  r.tier = tier;
  auto it = where_.find(key);
  if (it != where_.end()) {
    Slot& sl = slots_[it->second];
    r.slot = it->second;
    if (!a.counted) {
      if (!sl.declared && !a.claimed) ++counters_.hits[static_cast<size_t>(layer)];
      a.counted = true;
      a.hit = sl.declared ? sl.declared_hit : !a.claimed;
    }
    if (sl.state == SlotState::Failed) {
      r.kind = AcquireResult::Failed;
      return r;
    }
    if (sl.state != SlotState::Ready) {
      r.kind = AcquireResult::Loading;
      return r;
    }
    sl.preloaded = false;
    if (sl.hinted) {
      ++counters_.prefetch_used;
      speculative_success_ += kSpeculationEmaRate * (1.0 - speculative_success_);
      sl.hinted = false;
    }
    // A declared expert's use was counted and shown to the policy by its declaration, and a claimed
    // one's by its insertion.
    if (sl.declared)
      sl.declared = false;
    else if (!a.claimed)
      policy_->on_access(key);
    ++sl.pins;
    r.kind = AcquireResult::Ready;
    return r;
  }
  if (!a.counted) {
    ++counters_.misses[static_cast<size_t>(layer)];
    a.counted = true;
    a.hit = false;
  }
  if (evicted_for_speculation_.erase(key)) speculative_success_ *= 1.0 - kSpeculationEmaRate;
  const long slot = claim(key, tier, ClaimKind::Acquire);
  if (slot < 0) {
    r.kind = AcquireResult::NoSlot;
    return r;
  }
  a.claimed = true;
  r.kind = AcquireResult::Read;
  r.slot = static_cast<size_t>(slot);
  return r;
}

void ExpertResidency::release(int layer, int expert, ExpertTier tier) {
  auto it = where_.find(key_of(layer, expert, tier));
  if (it == where_.end() || slots_[it->second].pins == 0)
    fail("expert store: release of layer {} expert {} that is not acquired", layer, expert);
  --slots_[it->second].pins;
}

bool ExpertResidency::is_ready(int layer, int expert, bool low_bit_ok) const {
  if (layer < 0 || layer >= n_layer_ || expert < 0 || expert >= n_expert_) return false;
  // The same choice of copy as acquire().
  ExpertTier tier = ExpertTier::Full;
  if (low_bit_ok && has_low_ && !where_.count(key_of(layer, expert, ExpertTier::Full))) tier = ExpertTier::LowBit;
  const auto it = where_.find(key_of(layer, expert, tier));
  return it != where_.end() && slots_[it->second].state == SlotState::Ready;
}

void ExpertResidency::loaded(size_t slot) { slots_[slot].state = SlotState::Ready; }

void ExpertResidency::failed(size_t slot) { slots_[slot].state = SlotState::Failed; }

void ExpertResidency::clear_failed(size_t slot) {
  Slot& sl = slots_[slot];
  if (sl.state == SlotState::Failed) forget(sl);
}

long ExpertResidency::claim_preload(int layer, int expert) {
  if (layer < 0 || layer >= n_layer_ || expert < 0 || expert >= n_expert_) return kThrottled;
  const ExpertKey key = key_of(layer, expert, ExpertTier::Full);
  if (where_.count(key)) return kThrottled;
  const long slot = free_slot(ExpertTier::Full);
  if (slot < 0) return kNoSlot;  // full: preloading never evicts
  Slot& sl = slots_[static_cast<size_t>(slot)];
  sl.key = key;
  sl.state = SlotState::Loading;
  sl.pins = 0;
  sl.hinted = sl.declared = false;
  sl.preloaded = true;
  where_[key] = static_cast<size_t>(slot);
  policy_->on_insert(key);
  return slot;
}

}  // namespace moe
