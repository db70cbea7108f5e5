#include "moe/expert_store.h"

#include <algorithm>
#include <chrono>

#include "base/error.h"
#include "kernels/q4k_repack.h"
#include "kernels/q8_0_panels.h"
#include "kernels/quant_blocks.h"

namespace moe {

namespace {

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
    const uint8_t* data = t.data_of(expert);
    if (!data) fail("expert store: the model was loaded with deferred experts; use an offloading store");
    *out[i] = t.shape_of(expert);
    out[i]->data = data;
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

namespace {

bool t_split(const std::array<ExpertTensorLayout, 3>& l) { return l[0].split() || l[1].split() || l[2].split(); }

}  // namespace

uint64_t BudgetedExpertStore::slot_bytes_for(const ExpertLayout& layout, uint64_t a) {
  uint64_t best = 0;
  for (int il = 0; il < layout.n_layer(); ++il) {
    if (layout.n_expert_used[il] == 0) continue;
    // The largest expert (per-expert layouts: types, hence sizes, differ between experts).
    const int n = t_split(layout.layers[il]) ? layout.n_expert : 1;
    for (int e = 0; e < n; ++e) {
      uint64_t sum = 0;
      for (const auto& t : layout.layers[il]) sum += align_up(t.bytes_of(e), a) + a;  // + a: misaligned start
      best = std::max(best, sum);
    }
  }
  return best;
}

uint64_t BudgetedExpertStore::read_bytes_for(const ExpertLayout& layout, int layer, uint64_t a) {
  if (layer < 0 || layer >= layout.n_layer() || layout.n_expert_used[static_cast<size_t>(layer)] == 0) return 0;
  // The worst case over experts: where an expert's matrices start relative to the alignment varies.
  uint64_t best = 0;
  for (int e = 0; e < layout.n_expert; ++e) {
    uint64_t sum = 0;
    for (const auto& t : layout.layers[static_cast<size_t>(layer)]) {
      const uint64_t offset = t.offset_of(e);
      sum += align_up(offset + t.bytes_of(e), a) - align_down(offset, a);
    }
    best = std::max(best, sum);
  }
  return best;
}

ExpertResidency::Config BudgetedExpertStore::residency_config(const ExpertLayout& full, bool low_bit,
                                                              const std::array<uint64_t, 2>& slot_bytes,
                                                              const Options& opts) {
  ExpertResidency::Config c;
  c.n_layer = full.n_layer();
  c.n_expert = full.n_expert;
  c.low_bit = low_bit;
  c.slot_bytes = slot_bytes;
  c.pool_bytes = opts.pool_bytes;
  c.policy = opts.policy;
  return c;
}

namespace {

// Checks the layouts and opens the readers before the pool's bookkeeping is built from them.
std::array<uint64_t, 2> open_readers(const ExpertLayout& full, const ExpertLayout& low, const BudgetedExpertStore::Options& opts,
                                     std::array<std::unique_ptr<DirectReader>, 2>& readers) {
  const bool has_low = !low.empty();
  if (has_low) check_low_bit_layout(full, low);
  int max_k = 0;
  for (int k : full.n_expert_used) max_k = std::max(max_k, k);
  if (full.n_expert == 0 || max_k == 0) fail("{}: the model has no experts to offload", full.path);
  max_k = std::max(max_k, opts.min_slots);
  std::array<uint64_t, 2> slot_bytes{};
  const ExpertLayout* layouts[2] = {&full, &low};
  for (int t = 0; t < (has_low ? 2 : 1); ++t) {
    readers[t] = std::make_unique<DirectReader>(layouts[t]->path, opts.io_mode);
    slot_bytes[t] = BudgetedExpertStore::slot_bytes_for(*layouts[t], readers[t]->alignment());
  }
  const uint64_t n = opts.pool_bytes / slot_bytes[0];
  if (n < static_cast<uint64_t>(max_k))
    fail("expert pool of {} bytes holds {} experts of {} bytes, fewer than the {} one layer needs per token; raise --mem",
         opts.pool_bytes, n, slot_bytes[0], max_k);
  return slot_bytes;
}

}  // namespace

void BudgetedExpertStore::Buffers::allocate(size_t slot, ExpertTier tier, uint64_t bytes) {
  s_.slot_data_[slot].buf = AlignedBuffer(bytes, s_.readers_[static_cast<int>(tier)]->alignment());
}

void BudgetedExpertStore::Buffers::free(size_t slot) { s_.slot_data_[slot].buf = AlignedBuffer(); }

BudgetedExpertStore::BudgetedExpertStore(ExpertLayout layout, Options opts)
    : layouts_{std::move(layout), std::move(opts.low_bit)},
      has_low_(!layouts_[1].empty()),
      slot_bytes_(open_readers(layouts_[0], layouts_[1], opts, readers_)),
      pool_bytes_(opts.pool_bytes),
      slot_data_(static_cast<size_t>(opts.pool_bytes / std::min(slot_bytes_[0], has_low_ ? slot_bytes_[1] : slot_bytes_[0]))),
      residency_(residency_config(layouts_[0], has_low_, slot_bytes_, opts), &buffers_) {
  stats_.hits.assign(static_cast<size_t>(layouts_[0].n_layer()), 0);
  stats_.misses.assign(static_cast<size_t>(layouts_[0].n_layer()), 0);
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

ExpertWeights BudgetedExpertStore::acquire(int layer, int expert, bool low_bit_ok) {
  std::unique_lock<std::mutex> lock(mu_);
  ExpertResidency::AcquireAttempt attempt;
  Clock::time_point wait_start{};
  bool waited = false;
  for (;;) {
    const bool counted_before = attempt.counted;
    const ExpertResidency::AcquireResult r = residency_.acquire(layer, expert, low_bit_ok, attempt);
    if (!counted_before && attempt.counted && acquire_listener_) acquire_listener_(layer, expert, attempt.hit);
    switch (r.kind) {
      case ExpertResidency::AcquireResult::Ready:
        if (waited) stats_.stall_seconds += std::chrono::duration<double>(Clock::now() - wait_start).count();
        return slot_data_[r.slot].views;
      case ExpertResidency::AcquireResult::Failed: {
        std::string msg = std::move(slot_data_[r.slot].error);
        residency_.clear_failed(r.slot);
        throw Error(msg);
      }
      case ExpertResidency::AcquireResult::Loading:
        if (!waited) promote_locked(r.key);
        break;
      case ExpertResidency::AcquireResult::Read:
        enqueue_needed_locked({r.key, r.slot, true});
        io_cv_.notify_all();
        break;
      case ExpertResidency::AcquireResult::NoSlot:
        break;  // everything is pinned or being read: wait for a release or a read
    }
    if (!waited) {
      waited = true;
      wait_start = Clock::now();
    }
    ready_cv_.wait(lock);
  }
}

bool BudgetedExpertStore::is_ready(int layer, int expert, bool low_bit_ok) {
  std::lock_guard<std::mutex> lock(mu_);
  return residency_.is_ready(layer, expert, low_bit_ok);
}

void BudgetedExpertStore::release(int layer, int expert, ExpertTier tier) {
  std::lock_guard<std::mutex> lock(mu_);
  residency_.release(layer, expert, tier);
  ready_cv_.notify_all();
}

void BudgetedExpertStore::prefetch(int layer, const int32_t* experts, int n, bool speculative,
                                   const uint8_t* low_bit_ok) {
  std::lock_guard<std::mutex> lock(mu_);
  actions_.clear();
  residency_.hint(layer, experts, n, speculative, low_bit_ok, actions_);
  bool queued = false;
  for (const ExpertResidency::Action& a : actions_) {
    if (a.kind == ExpertResidency::Action::Promote) {
      promote_locked(a.key, a.needed_now);
    } else if (a.needed_now) {
      enqueue_needed_locked({a.key, a.slot, true});
      queued = true;
    } else {
      queue_.push_back({a.key, a.slot, false});
      queued = true;
    }
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
    if (layer < 0 || layer >= layouts_[0].n_layer()) continue;
    if (layouts_[0].n_expert_used[static_cast<size_t>(layer)] == 0) continue;  // a dense layer
    const long slot = residency_.claim_preload(layer, expert);
    if (slot == ExpertResidency::kThrottled) continue;  // cached already, or no such expert
    if (slot < 0) break;                                 // full: preloading never evicts
    Job job{residency_.key_of(layer, expert), static_cast<size_t>(slot)};
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

void BudgetedExpertStore::load_into(const Job& job) {
  // The slot is Loading: nothing but this thread touches its buffer, and the bookkeeping only reads
  // the key of a Loading slot, so these reads need no lock.
  const int layer = residency_.layer_of(job.key), expert = residency_.expert_of(job.key);
  const ExpertTier tier = residency_.tier_of(job.key);
  const ExpertLayout& layout = layouts_[static_cast<int>(tier)];
  DirectReader& reader = *readers_[static_cast<int>(tier)];
  const uint64_t a = reader.alignment();
  uint8_t* base = slot_data_[job.slot].buf.data();
  std::vector<ReadRequest> reqs;
  kernels::MatrixRef refs[3];
  uint8_t* dst[3];
  uint64_t cursor = 0, bytes = 0;
  for (int i = 0; i < 3; ++i) {
    const ExpertTensorLayout& t = layout.layers[layer][i];
    const uint64_t offset = t.offset_of(expert);
    const uint64_t start = align_down(offset, a), end = align_up(offset + t.bytes_of(expert), a);
    reqs.push_back({start, end - start, base + cursor});
    refs[i] = t.shape_of(expert);
    dst[i] = base + cursor + (offset - start);
    refs[i].data = dst[i];
    cursor += end - start;
    bytes += end - start;
  }
  const auto t0 = Clock::now();
  reader.read(reqs);
  const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
  // The file holds Q4_K / Q8_0; a model repacked for the kernels expects Q4_K_R / Q8_0_P (here, off the
  // compute thread).
  for (int i = 0; i < 3; ++i) {
    if (refs[i].type == DType::Q4_K_R)
      quant::repack_q4k(dst[i], dst[i], refs[i].rows * static_cast<int64_t>(refs[i].row_bytes / sizeof(quant::BlockQ4_K)));
    if (refs[i].type == DType::Q8_0_P)
      quant::pack_q8_0_panels(dst[i], dst[i], refs[i].rows / quant::kQ8PanelRows, refs[i].cols);
  }
  std::lock_guard<std::mutex> lock(mu_);
  slot_data_[job.slot].views = {refs[0], refs[1], refs[2], tier};
  attach_biases(layout, layer, expert, slot_data_[job.slot].views);
  residency_.loaded(job.slot);
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
      residency_.failed(job.slot);
      slot_data_[job.slot].error = e.what();
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
  ExpertStoreStats s = stats_;
  const ExpertResidency::Counters& c = residency_.counters();
  s.hits = c.hits;
  s.misses = c.misses;
  s.prefetch_issued = c.prefetch_issued;
  s.prefetch_used = c.prefetch_used;
  s.prefetch_wasted = c.prefetch_wasted;
  s.prefetch_throttled = c.prefetch_throttled;
  s.order_sensitive_evictions = c.order_sensitive_evictions;
  return s;
}

}  // namespace moe

namespace moe {

uint64_t BudgetedExpertStore::pool_bytes_held() const {
  std::lock_guard<std::mutex> lock(mu_);
  return residency_.bytes_held();
}

void BudgetedExpertStore::reset_stats() {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t n = stats_.hits.size();
  stats_ = ExpertStoreStats{};
  stats_.hits.assign(n, 0);
  stats_.misses.assign(n, 0);
  residency_.reset_counters();
}

}  // namespace moe
