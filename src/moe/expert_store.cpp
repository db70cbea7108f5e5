#include "moe/expert_store.h"

#include <algorithm>
#include <chrono>

#include "base/error.h"
#include "kernels/q4k_repack.h"
#include "kernels/quant_blocks.h"

namespace moe {

namespace {

// Speculative-prefetch throttle (BudgetedExpertStore::speculation_may_evict_locked): the moving
// average covers about the last 1 / rate outcomes.
constexpr double kSpeculationEmaRate = 0.05;
constexpr double kMinSpeculativeSuccess = 0.5;
constexpr uint32_t kSpeculationProbeEvery = 8;

void attach_biases(const ExpertLayout& layout, int layer, int expert, ExpertWeights& w) {
  const auto& t = layout.layers[layer];
  w.gate_bias = t[0].bias_of(expert);
  w.up_bias = t[1].bias_of(expert);
  w.down_bias = t[2].bias_of(expert);
}

ExpertWeights views_of(const ExpertLayout& layout, int layer, int expert, ExpertTier tier) {
  ExpertWeights w;
  w.tier = tier;
  kernels::MatrixRef* out[3] = {&w.gate, &w.up, &w.down};
  for (int i = 0; i < 3; ++i) {
    const ExpertTensorLayout& t = layout.layers[layer][i];
    if (!t.data) fail("expert store: the model was loaded with deferred experts; use an offloading store");
    *out[i] = t.shape;
    out[i]->data = t.data + static_cast<uint64_t>(expert) * t.matrix_bytes();
  }
  attach_biases(layout, layer, expert, w);
  return w;
}

}  // namespace

void check_low_bit_layout(const ExpertLayout& full, const ExpertLayout& low) {
  if (low.n_layer() != full.n_layer() || low.n_expert != full.n_expert || low.n_expert_used != full.n_expert_used)
    fail("{}: low-bit experts: {} layers of {} experts, but {} has {} layers of {}", low.path, low.n_layer(),
         low.n_expert, full.path, full.n_layer(), full.n_expert);
  static const char* kNames[3] = {"gate", "up", "down"};
  for (int il = 0; il < full.n_layer(); ++il) {
    if (full.n_expert_used[il] == 0) continue;
    for (int i = 0; i < 3; ++i) {
      const kernels::MatrixRef& a = full.layers[il][i].shape;
      const kernels::MatrixRef& b = low.layers[il][i].shape;
      if (a.rows != b.rows || a.cols != b.cols)
        fail("{}: layer {} {} experts are {}x{}, but {} has {}x{}", low.path, il, kNames[i], b.rows, b.cols, full.path,
             a.rows, a.cols);
    }
  }
}

ResidentExpertStore::ResidentExpertStore(ExpertLayout layout, ExpertLayout low_bit)
    : layout_(std::move(layout)), low_bit_(std::move(low_bit)) {
  if (!low_bit_.empty()) check_low_bit_layout(layout_, low_bit_);
}

ExpertWeights ResidentExpertStore::acquire(int layer, int expert, bool low_bit_ok) {
  if (layer < 0 || layer >= layout_.n_layer() || expert < 0 || expert >= layout_.n_expert ||
      layout_.n_expert_used[layer] == 0)
    fail("expert store: no expert {} in layer {}", expert, layer);
  if (low_bit_ok && !low_bit_.empty()) return views_of(low_bit_, layer, expert, ExpertTier::LowBit);
  return views_of(layout_, layer, expert, ExpertTier::Full);
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

BudgetedExpertStore::BudgetedExpertStore(ExpertLayout layout, Options opts) {
  layouts_[0] = std::move(layout);
  layouts_[1] = std::move(opts.low_bit);
  const ExpertLayout& full = layouts_[0];
  has_low_ = !layouts_[1].empty();
  if (has_low_) check_low_bit_layout(full, layouts_[1]);
  n_layer_ = full.n_layer();
  n_expert_ = full.n_expert;
  key_stride_ = has_low_ ? 2 * n_expert_ : n_expert_;
  int max_k = 0;
  for (int k : full.n_expert_used) max_k = std::max(max_k, k);
  if (n_expert_ == 0 || max_k == 0) fail("{}: the model has no experts to offload", full.path);
  max_k = std::max(max_k, opts.min_slots);
  for (int t = 0; t < (has_low_ ? 2 : 1); ++t) {
    readers_[t] = std::make_unique<DirectReader>(layouts_[t].path, opts.io_mode);
    slot_bytes_[t] = slot_bytes_for(layouts_[t], readers_[t]->alignment());
  }
  const uint64_t n = opts.pool_bytes / slot_bytes_[0];
  if (n < static_cast<uint64_t>(max_k))
    fail("expert pool of {} bytes holds {} experts of {} bytes, fewer than the {} one layer needs per token; raise --mem",
         opts.pool_bytes, n, slot_bytes_[0], max_k);
  pool_bytes_ = opts.pool_bytes;
  n_full_slots_ = static_cast<size_t>(n);
  if (!has_low_) {
    // One size: every slot's buffer is allocated now, as the pool always was.
    slots_.resize(n_full_slots_);
    for (auto& sl : slots_) sl.buf = AlignedBuffer(slot_bytes_[0], readers_[0]->alignment());
    bytes_held_ = n * slot_bytes_[0];
  } else {
    // Two sizes: as many slots as the smaller size allows, buffers allocated on demand.
    const uint64_t smallest = std::min(slot_bytes_[0], slot_bytes_[1]);
    slots_.resize(static_cast<size_t>(pool_bytes_ / smallest));
  }
  // Capacity in (full-size) slots: only ARC uses it, to bound its target and ghost lists.
  policy_ = make_cache_policy(opts.policy, n_full_slots_, key_stride_, n_layer_);
  stats_.hits.assign(n_layer_, 0);
  stats_.misses.assign(n_layer_, 0);
  io_thread_ = std::thread([this] { io_loop(); });
}

BudgetedExpertStore::~BudgetedExpertStore() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  io_cv_.notify_all();
  io_thread_.join();
}

void BudgetedExpertStore::drop_buffer_locked(Slot& sl) {
  bytes_held_ -= sl.buf.size();
  sl.buf = AlignedBuffer();
}

long BudgetedExpertStore::free_slot_locked(ExpertTier tier) {
  for (size_t i = 0; i < slots_.size(); ++i) {
    Slot& sl = slots_[i];
    if (sl.state == SlotState::Failed && (sl.from_prefetch || sl.preloaded)) {
      // A hint or preload whose read failed: nobody waits on it, so reclaim the slot.
      where_.erase(sl.key);
      sl.state = SlotState::Empty;
    }
  }
  for (size_t i = 0; i < slots_.size(); ++i)
    if (slots_[i].state == SlotState::Empty && slots_[i].buf.data() && slots_[i].tier == tier) return static_cast<long>(i);
  if (!has_low_) return -1;
  const uint64_t need = slot_bytes_[static_cast<int>(tier)];
  if (bytes_held_ + need > pool_bytes_) {
    // Unused buffers of the other size make room first.
    for (Slot& sl : slots_)
      if (sl.state == SlotState::Empty && sl.buf.data() && sl.tier != tier) drop_buffer_locked(sl);
  }
  if (bytes_held_ + need > pool_bytes_) return -1;
  for (size_t i = 0; i < slots_.size(); ++i) {
    Slot& sl = slots_[i];
    if (sl.state != SlotState::Empty || sl.buf.data()) continue;
    sl.buf = AlignedBuffer(need, readers_[static_cast<int>(tier)]->alignment());
    sl.tier = tier;
    bytes_held_ += need;
    return static_cast<long>(i);
  }
  return -1;
}

long BudgetedExpertStore::claim_slot_locked(ExpertKey key, ExpertTier tier, bool for_prefetch, bool speculative) {
  long slot = free_slot_locked(tier);
  if (slot < 0 && for_prefetch && speculative && !speculation_may_evict_locked()) return kThrottledSlot;
  while (slot < 0) {
    ExpertKey victim = 0;
    auto evictable = [&](ExpertKey k) {
      const Slot& sl = slots_[where_.at(k)];
      // Hints never evict other hinted-but-unused experts: those are about to be needed.
      return (sl.state == SlotState::Ready || sl.state == SlotState::Failed) && sl.pins == 0 &&
             !(for_prefetch && sl.from_prefetch);
    };
    if (!policy_->choose_victim(evictable, victim)) return -1;
    const size_t at = where_.at(victim);
    Slot& sl = slots_[at];
    if (for_prefetch && speculative) {
      if (evicted_for_speculation_.size() > 4 * slots_.size()) evicted_for_speculation_.clear();  // stay bounded
      evicted_for_speculation_.insert(victim);
    }
    if (sl.from_prefetch && sl.speculative) {
      ++stats_.prefetch_wasted;
      speculative_success_ *= 1.0 - kSpeculationEmaRate;
    }
    policy_->on_evict(victim);
    where_.erase(victim);
    sl.state = SlotState::Empty;
    if (sl.tier == tier) {
      slot = static_cast<long>(at);
    } else {
      // A copy of the other size: its bytes go back to the pool, and more victims may be needed.
      drop_buffer_locked(sl);
      slot = free_slot_locked(tier);
    }
  }
  Slot& sl = slots_[slot];
  sl.key = key;
  sl.state = SlotState::Loading;
  sl.pins = 0;
  sl.from_prefetch = for_prefetch;
  sl.speculative = speculative;
  sl.preloaded = false;
  where_[key] = static_cast<size_t>(slot);
  return slot;
}

ExpertWeights BudgetedExpertStore::acquire(int layer, int expert, bool low_bit_ok) {
  if (layer < 0 || layer >= n_layer_ || expert < 0 || expert >= n_expert_)
    fail("expert store: no expert {} in layer {}", expert, layer);
  std::unique_lock<std::mutex> lock(mu_);
  // The full copy when it is wanted or already in the pool (being read counts: its I/O is spent).
  ExpertTier tier = ExpertTier::Full;
  if (low_bit_ok && has_low_ && !where_.count(key_of(layer, expert, ExpertTier::Full))) tier = ExpertTier::LowBit;
  const ExpertKey key = key_of(layer, expert, tier);
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
        if (acquire_listener_) acquire_listener_(layer, expert, !read_for_this_step);
      }
      if (sl.state == SlotState::Failed) {
        std::string msg = std::move(sl.error);
        sl.state = SlotState::Empty;
        where_.erase(it);
        throw Error(msg);
      }
      if (sl.state == SlotState::Loading && !waited) promote_locked(key);
      if (sl.state == SlotState::Ready) {
        if (waited) stats_.stall_seconds += std::chrono::duration<double>(Clock::now() - wait_start).count();
        sl.preloaded = false;
        if (sl.from_prefetch) {
          if (sl.speculative) {
            ++stats_.prefetch_used;
            speculative_success_ += kSpeculationEmaRate * (1.0 - speculative_success_);
          }
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
        if (acquire_listener_) acquire_listener_(layer, expert, false);
      }
      if (evicted_for_speculation_.erase(key)) speculative_success_ *= 1.0 - kSpeculationEmaRate;
      const long slot = claim_slot_locked(key, tier, false, false);
      if (slot >= 0) {
        enqueue_needed_locked({key, static_cast<size_t>(slot), true});
        io_cv_.notify_all();
      }
    }
    if (!waited) {
      waited = true;
      wait_start = Clock::now();
    }
    ready_cv_.wait(lock);
  }
}

bool BudgetedExpertStore::is_ready(int layer, int expert, bool low_bit_ok) {
  if (layer < 0 || layer >= n_layer_ || expert < 0 || expert >= n_expert_) return false;
  std::lock_guard<std::mutex> lock(mu_);
  // The same choice of copy as acquire().
  ExpertTier tier = ExpertTier::Full;
  if (low_bit_ok && has_low_ && !where_.count(key_of(layer, expert, ExpertTier::Full))) tier = ExpertTier::LowBit;
  const auto it = where_.find(key_of(layer, expert, tier));
  return it != where_.end() && slots_[it->second].state == SlotState::Ready;
}

void BudgetedExpertStore::release(int layer, int expert, ExpertTier tier) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = where_.find(key_of(layer, expert, tier));
  if (it == where_.end() || slots_[it->second].pins == 0)
    fail("expert store: release of layer {} expert {} that is not acquired", layer, expert);
  --slots_[it->second].pins;
  ready_cv_.notify_all();
}

void BudgetedExpertStore::prefetch(int layer, const int32_t* experts, int n, bool speculative,
                                   const uint8_t* low_bit_ok) {
  std::lock_guard<std::mutex> lock(mu_);
  bool queued = false;
  for (int i = 0; i < n; ++i) {
    if (experts[i] < 0 || experts[i] >= n_expert_) continue;
    const ExpertKey full = key_of(layer, experts[i], ExpertTier::Full);
    if (where_.count(full)) {  // the full copy serves any request
      promote_locked(full, !speculative);
      continue;
    }
    const ExpertTier tier = has_low_ && low_bit_ok && low_bit_ok[i] ? ExpertTier::LowBit : ExpertTier::Full;
    const ExpertKey key = key_of(layer, experts[i], tier);
    if (where_.count(key)) {
      promote_locked(key, !speculative);
      continue;
    }
    // Loading an expert that a speculative load pushed out is that speculation's cost, whether a
    // demand miss or another hint brings it back (hints chasing each other through a tight pool).
    if (evicted_for_speculation_.erase(key)) speculative_success_ *= 1.0 - kSpeculationEmaRate;
    const long slot = claim_slot_locked(key, tier, true, speculative);
    if (slot == kThrottledSlot) {
      ++stats_.prefetch_throttled;
      continue;
    }
    if (slot < 0) break;  // everything else is pinned or hinted: drop the rest of the hint
    if (speculative) {
      queue_.push_back({key, static_cast<size_t>(slot), false});
      ++stats_.prefetch_issued;
    } else {
      enqueue_needed_locked({key, static_cast<size_t>(slot), true});
    }
    queued = true;
  }
  if (queued) io_cv_.notify_all();
}

void BudgetedExpertStore::enqueue_needed_locked(const Job& job) {
  auto pos = queue_.begin();
  while (pos != queue_.end() && pos->needed_now) ++pos;
  Job j = job;
  j.needed_now = true;
  queue_.insert(pos, j);
}

void BudgetedExpertStore::promote_locked(ExpertKey key, bool needed_now) {
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (it->key != key) continue;
    if (it->needed_now || !needed_now) return;
    const Job job = *it;
    queue_.erase(it);
    enqueue_needed_locked(job);
    return;
  }
  for (auto it = background_.begin(); it != background_.end(); ++it) {
    if (it->key != key) continue;
    const Job job = *it;
    background_.erase(it);
    if (needed_now)
      enqueue_needed_locked(job);
    else
      queue_.push_back(job);
    io_cv_.notify_all();
    return;
  }
}

size_t BudgetedExpertStore::preload(const std::vector<std::pair<int, int>>& layer_expert_order) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t queued = 0;
  for (const auto& [layer, expert] : layer_expert_order) {
    if (layer < 0 || layer >= n_layer_ || expert < 0 || expert >= n_expert_) continue;
    if (layouts_[0].n_expert_used[static_cast<size_t>(layer)] == 0) continue;  // a dense layer
    const ExpertKey key = key_of(layer, expert, ExpertTier::Full);
    if (where_.count(key)) continue;
    const long slot = free_slot_locked(ExpertTier::Full);
    if (slot < 0) break;  // full: preloading never evicts
    Slot& sl = slots_[static_cast<size_t>(slot)];
    sl.key = key;
    sl.state = SlotState::Loading;
    sl.pins = 0;
    sl.from_prefetch = sl.speculative = false;
    sl.preloaded = true;
    where_[key] = static_cast<size_t>(slot);
    Job job{key, static_cast<size_t>(slot)};
    job.preload = true;
    background_.push_back(job);
    ++preload_pending_;
    ++queued;
  }
  if (queued) io_cv_.notify_all();
  return queued;
}

void BudgetedExpertStore::wait_preloaded() {
  std::unique_lock<std::mutex> lock(mu_);
  ready_cv_.wait(lock, [&] { return preload_pending_ == 0 || stop_; });
}

// Called only when no slot is free (a speculative hint may always take a free one). Evicting a cached
// expert for a hint is allowed while the moving average says hints are used more often than the
// experts they pushed out come back: in a tight pool predictions evict experts that are needed next
// (measured on OLMoE-1B-7B under 2 GB, that halved decode speed), while in a roomy pool (3 GB)
// prefetch hides the misses.
bool BudgetedExpertStore::speculation_may_evict_locked() {
  if (speculative_success_ >= kMinSpeculativeSuccess) return true;
  return ++speculative_probe_ % kSpeculationProbeEvery == 0;
}

void BudgetedExpertStore::load_into(const Job& job) {
  const int layer = static_cast<int>(job.key / static_cast<ExpertKey>(key_stride_));
  const int rest = static_cast<int>(job.key % static_cast<ExpertKey>(key_stride_));
  const ExpertTier tier = rest >= n_expert_ ? ExpertTier::LowBit : ExpertTier::Full;
  const int expert = rest % n_expert_;
  const ExpertLayout& layout = layouts_[static_cast<int>(tier)];
  DirectReader& reader = *readers_[static_cast<int>(tier)];
  const uint64_t a = reader.alignment();
  uint8_t* base = slots_[job.slot].buf.data();  // the slot is Loading: only this thread touches it
  std::vector<ReadRequest> reqs;
  kernels::MatrixRef refs[3];
  uint8_t* dst[3];
  uint64_t cursor = 0, bytes = 0;
  for (int i = 0; i < 3; ++i) {
    const ExpertTensorLayout& t = layout.layers[layer][i];
    const uint64_t offset = t.file_offset + static_cast<uint64_t>(expert) * t.matrix_bytes();
    const uint64_t start = align_down(offset, a), end = align_up(offset + t.matrix_bytes(), a);
    reqs.push_back({start, end - start, base + cursor});
    refs[i] = t.shape;
    dst[i] = base + cursor + (offset - start);
    refs[i].data = dst[i];
    cursor += end - start;
    bytes += end - start;
  }
  const auto t0 = Clock::now();
  reader.read(reqs);
  const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
  // The file holds Q4_K; a model repacked for the kernels expects Q4_K_R (here, off the compute thread).
  for (int i = 0; i < 3; ++i)
    if (refs[i].type == DType::Q4_K_R)
      quant::repack_q4k(dst[i], dst[i], refs[i].rows * static_cast<int64_t>(refs[i].row_bytes / sizeof(quant::BlockQ4_K)));
  std::lock_guard<std::mutex> lock(mu_);
  Slot& sl = slots_[job.slot];
  sl.views = {refs[0], refs[1], refs[2], tier};
  attach_biases(layout, layer, expert, sl.views);
  sl.state = SlotState::Ready;
  policy_->on_insert(job.key);
  if (job.preload) ++stats_.preload_loads;
  stats_.bytes_read += bytes;
  stats_.read_seconds += dt;
  ++stats_.loads;
  if (tier == ExpertTier::LowBit) {
    stats_.low_bit_bytes_read += bytes;
    ++stats_.low_bit_loads;
  }
}

void BudgetedExpertStore::io_loop() {
  for (;;) {
    Job job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      io_cv_.wait(lock, [&] { return stop_ || !queue_.empty() || !background_.empty(); });
      if (stop_) return;
      std::deque<Job>& from = queue_.empty() ? background_ : queue_;
      job = from.front();
      from.pop_front();
    }
    try {
      load_into(job);
    } catch (const Error& e) {
      // The acquire() waiting for this expert rethrows the error; a failed hint is dropped there too.
      std::lock_guard<std::mutex> lock(mu_);
      slots_[job.slot].state = SlotState::Failed;
      slots_[job.slot].error = e.what();
    }
    if (job.preload) {
      std::lock_guard<std::mutex> lock(mu_);
      --preload_pending_;
    }
    ready_cv_.notify_all();
  }
}

ExpertStoreStats BudgetedExpertStore::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace moe

namespace moe {

uint64_t BudgetedExpertStore::pool_bytes_held() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_held_;
}

void BudgetedExpertStore::reset_stats() {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t n = stats_.hits.size();
  stats_ = ExpertStoreStats{};
  stats_.hits.assign(n, 0);
  stats_.misses.assign(n, 0);
}

}  // namespace moe
