#include "moe/expert_store.h"

#include <algorithm>
#include <chrono>

#include "base/error.h"
#include "model/weights.h"

namespace moe {

ExpertWeights ResidentExpertStore::acquire(int layer, int expert) {
  const LayerWeights& lw = model_.layer(layer);
  const WeightView& up = lw[Role::ExpUp];
  if (!up || expert < 0 || expert >= up.n_mat) fail("expert store: no expert {} in layer {}", expert, layer);
  if (!up.data) fail("expert store: the model was loaded with deferred experts; use an offloading store");
  return {to_matrix(lw[Role::ExpGate], expert), to_matrix(up, expert), to_matrix(lw[Role::ExpDown], expert)};
}

namespace {

using Clock = std::chrono::steady_clock;
constexpr Role kExpertRoles[3] = {Role::ExpGate, Role::ExpUp, Role::ExpDown};

// One expert's matrix inside its stacked tensor, as an absolute file extent.
struct Extent {
  uint64_t offset, size;
};

Extent expert_extent(const Model& m, const WeightView& v, int expert) {
  return {m.file().data_offset() + v.info->offset + static_cast<uint64_t>(expert) * v.matrix_bytes(), v.matrix_bytes()};
}

uint64_t align_down(uint64_t x, uint64_t a) { return x / a * a; }
uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

}  // namespace

uint64_t BudgetedExpertStore::slot_bytes_for(const Model& m, uint64_t a) {
  uint64_t best = 0;
  for (int il = 0; il < m.spec().n_layer; ++il) {
    if (!m.spec().layers[il].is_moe) continue;
    uint64_t sum = 0;
    for (Role r : kExpertRoles) sum += align_up(m.layer(il)[r].matrix_bytes(), a) + a;  // + a: misaligned start
    best = std::max(best, sum);
  }
  return best;
}

BudgetedExpertStore::BudgetedExpertStore(const Model& model, Options opts) : model_(model) {
  const ModelSpec& s = model.spec();
  n_layer_ = s.n_layer;
  int max_k = 0;
  for (const auto& L : s.layers)
    if (L.is_moe) {
      n_expert_ = std::max(n_expert_, L.moe.n_expert);
      max_k = std::max(max_k, L.moe.n_expert_used);
    }
  if (n_expert_ == 0) fail("{}: the model has no experts to offload", model.file().path());
  reader_ = std::make_unique<DirectReader>(model.file().path(), opts.io_mode);
  slot_bytes_ = slot_bytes_for(model, reader_->alignment());
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
  const LayerWeights& lw = model_.layer(layer);
  const uint64_t a = reader_->alignment();
  uint8_t* base = slots_[job.slot].buf.data();  // the slot is Loading: only this thread touches it
  std::vector<ReadRequest> reqs;
  kernels::MatrixRef refs[3];
  uint64_t cursor = 0, bytes = 0;
  for (int i = 0; i < 3; ++i) {
    const WeightView& v = lw[kExpertRoles[i]];
    const Extent e = expert_extent(model_, v, expert);
    const uint64_t start = align_down(e.offset, a), end = align_up(e.offset + e.size, a);
    reqs.push_back({start, end - start, base + cursor});
    refs[i] = {base + cursor + (e.offset - start), v.type, v.rows, v.cols, v.row_bytes};
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
