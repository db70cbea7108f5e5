#include "moe/expert_store.h"

#include <algorithm>
#include <chrono>

#include "base/error.h"

namespace moe {

ExpertWeights ResidentExpertStore::acquire(int layer, int expert) {
  if (layer < 0 || layer >= layout_.n_layer() || expert < 0 || expert >= layout_.n_expert ||
      layout_.n_expert_used[layer] == 0)
    fail("expert store: no expert {} in layer {}", expert, layer);
  ExpertWeights w;
  kernels::MatrixRef* out[3] = {&w.gate, &w.up, &w.down};
  for (int i = 0; i < 3; ++i) {
    const ExpertTensorLayout& t = layout_.layers[layer][i];
    if (!t.data) fail("expert store: the model was loaded with deferred experts; use an offloading store");
    *out[i] = t.shape;
    out[i]->data = t.data + static_cast<uint64_t>(expert) * t.matrix_bytes();
  }
  return w;
}

namespace {

using Clock = std::chrono::steady_clock;

uint64_t align_down(uint64_t x, uint64_t a) { return x / a * a; }
uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

}  // namespace

uint64_t BudgetedExpertStore::slot_bytes_for(const ExpertLayout& layout, uint64_t a) {
  uint64_t best = 0;
  for (int il = 0; il < layout.n_layer(); ++il) {
    if (layout.n_expert_used[il] == 0) continue;
    uint64_t sum = 0;
    for (const auto& t : layout.layers[il]) sum += align_up(t.matrix_bytes(), a) + a;  // + a: misaligned start
    best = std::max(best, sum);
  }
  return best;
}

BudgetedExpertStore::BudgetedExpertStore(ExpertLayout layout, Options opts) : layout_(std::move(layout)) {
  n_layer_ = layout_.n_layer();
  n_expert_ = layout_.n_expert;
  int max_k = 0;
  for (int k : layout_.n_expert_used) max_k = std::max(max_k, k);
  if (n_expert_ == 0 || max_k == 0) fail("{}: the model has no experts to offload", layout_.path);
  reader_ = std::make_unique<DirectReader>(layout_.path, opts.io_mode);
  slot_bytes_ = slot_bytes_for(layout_, reader_->alignment());
  const uint64_t n = opts.pool_bytes / slot_bytes_;
  if (n < static_cast<uint64_t>(max_k))
    fail("expert pool of {} bytes holds {} experts of {} bytes, fewer than the {} one layer needs per token; raise --mem",
         opts.pool_bytes, n, slot_bytes_, max_k);
  slots_.resize(static_cast<size_t>(n));
  for (auto& sl : slots_) sl.buf = AlignedBuffer(slot_bytes_, reader_->alignment());
  policy_ = make_cache_policy(opts.policy, slots_.size(), n_expert_, n_layer_);
  stats_.hits.assign(n_layer_, 0);
  stats_.misses.assign(n_layer_, 0);
  io_thread_ = std::thread([this] { io_loop(); });
}

BudgetedExpertStore::~BudgetedExpertStore() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  io_thread_.join();
}

long BudgetedExpertStore::claim_slot_locked(ExpertKey key, bool for_prefetch, bool speculative) {
  long slot = -1;
  for (size_t i = 0; i < slots_.size(); ++i) {
    Slot& sl = slots_[i];
    if (sl.state == SlotState::Failed && sl.from_prefetch) {
      // A hint whose read failed: nobody waits on it, so reclaim the slot.
      where_.erase(sl.key);
      sl.state = SlotState::Empty;
    }
    if (sl.state == SlotState::Empty) {
      slot = static_cast<long>(i);
      break;
    }
  }
  if (slot < 0) {
    ExpertKey victim = 0;
    auto evictable = [&](ExpertKey k) {
      const Slot& sl = slots_[where_.at(k)];
      // Hints never evict other hinted-but-unused experts: those are about to be needed.
      return (sl.state == SlotState::Ready || sl.state == SlotState::Failed) && sl.pins == 0 &&
             !(for_prefetch && sl.from_prefetch);
    };
    if (!policy_->choose_victim(evictable, victim)) return -1;
    slot = static_cast<long>(where_.at(victim));
    Slot& sl = slots_[slot];
    if (sl.from_prefetch && sl.speculative) ++stats_.prefetch_wasted;
    policy_->on_evict(victim);
    where_.erase(victim);
  }
  Slot& sl = slots_[slot];
  sl.key = key;
  sl.state = SlotState::Loading;
  sl.pins = 0;
  sl.from_prefetch = for_prefetch;
  sl.speculative = speculative;
  where_[key] = static_cast<size_t>(slot);
  return slot;
}

ExpertWeights BudgetedExpertStore::acquire(int layer, int expert) {
  if (layer < 0 || layer >= n_layer_ || expert < 0 || expert >= n_expert_)
    fail("expert store: no expert {} in layer {}", expert, layer);
  const ExpertKey key = key_of(layer, expert);
  std::unique_lock<std::mutex> lock(mu_);
  bool counted = false;
  Clock::time_point wait_start{};
  bool waited = false;
  for (;;) {
    auto it = where_.find(key);
    if (it != where_.end()) {
      Slot& sl = slots_[it->second];
      if (!counted) {
        const bool read_for_this_step = sl.from_prefetch && !sl.speculative;
        ++(read_for_this_step ? stats_.misses : stats_.hits)[layer];
        counted = true;
      }
      if (sl.state == SlotState::Failed) {
        std::string msg = std::move(sl.error);
        sl.state = SlotState::Empty;
        where_.erase(it);
        throw Error(msg);
      }
      if (sl.state == SlotState::Ready) {
        if (waited) stats_.stall_seconds += std::chrono::duration<double>(Clock::now() - wait_start).count();
        if (sl.from_prefetch) {
          if (sl.speculative) ++stats_.prefetch_used;
          sl.from_prefetch = false;
        }
        ++sl.pins;
        policy_->on_access(key);
        return sl.views;
      }
    } else {
      if (!counted) {
        ++stats_.misses[layer];
        counted = true;
      }
      const long slot = claim_slot_locked(key, false, false);
      if (slot >= 0) {
        queue_.push_front({key, static_cast<size_t>(slot)});
        cv_.notify_all();
      }
    }
    if (!waited) {
      waited = true;
      wait_start = Clock::now();
    }
    cv_.wait(lock);
  }
}

void BudgetedExpertStore::release(int layer, int expert) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = where_.find(key_of(layer, expert));
  if (it == where_.end() || slots_[it->second].pins == 0)
    fail("expert store: release of layer {} expert {} that is not acquired", layer, expert);
  --slots_[it->second].pins;
  cv_.notify_all();
}

void BudgetedExpertStore::prefetch(int layer, const int32_t* experts, int n, bool speculative) {
  std::lock_guard<std::mutex> lock(mu_);
  bool queued = false;
  for (int i = 0; i < n; ++i) {
    if (experts[i] < 0 || experts[i] >= n_expert_) continue;
    const ExpertKey key = key_of(layer, experts[i]);
    if (where_.count(key)) continue;
    const long slot = claim_slot_locked(key, true, speculative);
    if (slot < 0) break;  // everything else is pinned or hinted: drop the rest of the hint
    queue_.push_back({key, static_cast<size_t>(slot)});
    if (speculative) ++stats_.prefetch_issued;
    queued = true;
  }
  if (queued) cv_.notify_all();
}

void BudgetedExpertStore::load_into(const Job& job) {
  const int layer = static_cast<int>(job.key / static_cast<ExpertKey>(n_expert_));
  const int expert = static_cast<int>(job.key % static_cast<ExpertKey>(n_expert_));
  const uint64_t a = reader_->alignment();
  uint8_t* base = slots_[job.slot].buf.data();  // the slot is Loading: only this thread touches it
  std::vector<ReadRequest> reqs;
  kernels::MatrixRef refs[3];
  uint64_t cursor = 0, bytes = 0;
  for (int i = 0; i < 3; ++i) {
    const ExpertTensorLayout& t = layout_.layers[layer][i];
    const uint64_t offset = t.file_offset + static_cast<uint64_t>(expert) * t.matrix_bytes();
    const uint64_t start = align_down(offset, a), end = align_up(offset + t.matrix_bytes(), a);
    reqs.push_back({start, end - start, base + cursor});
    refs[i] = t.shape;
    refs[i].data = base + cursor + (offset - start);
    cursor += end - start;
    bytes += end - start;
  }
  const auto t0 = Clock::now();
  reader_->read(reqs);
  const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
  std::lock_guard<std::mutex> lock(mu_);
  Slot& sl = slots_[job.slot];
  sl.views = {refs[0], refs[1], refs[2]};
  sl.state = SlotState::Ready;
  policy_->on_insert(job.key);
  stats_.bytes_read += bytes;
  stats_.read_seconds += dt;
  ++stats_.loads;
}

void BudgetedExpertStore::io_loop() {
  for (;;) {
    Job job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      job = queue_.front();
      queue_.pop_front();
    }
    try {
      load_into(job);
    } catch (const Error& e) {
      // The acquire() waiting for this expert rethrows the error; a failed hint is dropped there too.
      std::lock_guard<std::mutex> lock(mu_);
      slots_[job.slot].state = SlotState::Failed;
      slots_[job.slot].error = e.what();
    }
    cv_.notify_all();
  }
}

ExpertStoreStats BudgetedExpertStore::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace moe

namespace moe {

void BudgetedExpertStore::reset_stats() {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t n = stats_.hits.size();
  stats_ = ExpertStoreStats{};
  stats_.hits.assign(n, 0);
  stats_.misses.assign(n, 0);
}

}  // namespace moe
