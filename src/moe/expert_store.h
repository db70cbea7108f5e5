// ExpertStore: owns where experts live (design.md seam 3). The executor acquires an expert's
// gate/up/down matrices for a layer, computes, and releases it. Stores must never change the numbers:
// resident and offloaded runs give bit-identical logits for the same precision.
//
// Precision tiers (HOBBIT / EdgeMoE, techniques.md section 5): a store may also hold a low-bit copy of
// every expert (a side file from `moe quantize-experts`). The caller says when a low-bit copy is
// acceptable; the store answers with the copy it serves (ExpertWeights::tier).
#pragma once
#include <condition_variable>
#include <cstdint>
#include <algorithm>
#include <array>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "base/direct_io.h"
#include "kernels/matmul.h"
#include "moe/cache_policy.h"
#include "moe/expert_residency.h"

namespace moe {

struct ExpertWeights {
  kernels::MatrixRef gate, up, down;
  ExpertTier tier = ExpertTier::Full;  // the copy these matrices belong to (pass it to release())
  // Per-expert biases added to each product (gpt-oss), rows floats each; null = none. Always resident
  // and shared by both tiers.
  const float* gate_bias = nullptr;
  const float* up_bias = nullptr;
  const float* down_bias = nullptr;
};

// One expert's matrix when each expert is its own tensor (the per-expert layout, model/expert_split.h).
struct ExpertMatrixLocation {
  const uint8_t* data = nullptr;  // in memory, or null when only on disk
  uint64_t file_offset = 0;       // absolute offset in the file
  DType type = DType::F32;
  size_t row_bytes = 0;
};

// Where every routed expert's matrices are, so stores need not know about models or files' formats.
// Stacked (standard GGUF): one tensor per layer and projection, expert e's matrix starts e * matrix_bytes in.
// Per-expert layout: `per_expert` holds each expert's own location, type and row bytes (types may differ
// between experts); `shape` then has expert 0's. Stores read experts through the *_of(e) accessors.
struct ExpertTensorLayout {
  const uint8_t* data = nullptr;  // in memory (resident), or null when only on disk
  uint64_t file_offset = 0;       // absolute offset of expert 0 in the file
  kernels::MatrixRef shape;       // type, rows, cols, row_bytes (data unused)
  const float* bias = nullptr;    // [n_expert][shape.rows] f32 in memory, or null (no bias)
  std::vector<ExpertMatrixLocation> per_expert;  // empty when stacked
  // Bytes of one stacked matrix (expert 0's when per-expert: see bytes_of).
  uint64_t matrix_bytes() const { return shape.row_bytes * static_cast<uint64_t>(shape.rows); }
  const float* bias_of(int expert) const { return bias ? bias + static_cast<int64_t>(expert) * shape.rows : nullptr; }

  bool split() const { return !per_expert.empty(); }
  // Expert e's matrix: type, rows, cols, row_bytes (data null).
  kernels::MatrixRef shape_of(int e) const {
    if (!split()) return shape;
    const ExpertMatrixLocation& l = per_expert[static_cast<size_t>(e)];
    return {nullptr, l.type, shape.rows, shape.cols, l.row_bytes};
  }
  uint64_t bytes_of(int e) const {
    return split() ? per_expert[static_cast<size_t>(e)].row_bytes * static_cast<uint64_t>(shape.rows) : matrix_bytes();
  }
  uint64_t offset_of(int e) const {
    return split() ? per_expert[static_cast<size_t>(e)].file_offset
                   : file_offset + static_cast<uint64_t>(e) * matrix_bytes();
  }
  // In memory, or null when only on disk.
  const uint8_t* data_of(int e) const {
    if (split()) return per_expert[static_cast<size_t>(e)].data;
    return data ? data + static_cast<uint64_t>(e) * matrix_bytes() : nullptr;
  }
  // The largest matrix over the n experts (slot sizing).
  uint64_t max_bytes(int n_expert) const {
    if (!split()) return matrix_bytes();
    uint64_t m = 0;
    for (int e = 0; e < n_expert && e < static_cast<int>(per_expert.size()); ++e) m = std::max(m, bytes_of(e));
    return m;
  }
};

struct ExpertLayout {
  std::string path;
  int n_expert = 0;                                      // max over layers
  std::vector<int> n_expert_used;                        // per layer, 0 for dense layers
  std::vector<std::array<ExpertTensorLayout, 3>> layers; // gate, up, down; empty shapes for dense layers
  int n_layer() const { return static_cast<int>(layers.size()); }
  bool empty() const { return layers.empty(); }
};

class ExpertStore {
 public:
  virtual ~ExpertStore() = default;
  // Returns the expert's matrices, loading them if needed; they stay valid (pinned) until
  // release(layer, expert, returned.tier). With `low_bit_ok` the store may serve the low-bit copy
  // (each store documents when it does); without a low-bit copy it always serves the full one.
  virtual ExpertWeights acquire(int layer, int expert, bool low_bit_ok) = 0;
  virtual void release(int layer, int expert, ExpertTier tier) = 0;
  // Hint: these experts of `layer` will be acquired soon, so a loading store may start reading them.
  // `speculative` marks predictions (e.g. the next layer's likely experts) as opposed to experts the
  // current step has already been routed to; only the former count as prefetches in the statistics.
  // low_bit_ok (null = none): per expert, whether the acquire will accept the low-bit copy.
  virtual void prefetch(int layer, const int32_t* experts, int n, bool speculative, const uint8_t* low_bit_ok) {}
  // Whether this store holds low-bit copies at all.
  virtual bool has_low_bit() const { return false; }
  // Whether acquire(layer, expert, low_bit_ok) would return at once (the copy it would serve is in
  // memory). When all of a layer's experts are, the executor acquires them up front and computes them
  // in shared parallel regions; otherwise it takes them one at a time, so that computing one expert
  // overlaps reading the next. A hint only: the store stays correct if the answer goes stale.
  virtual bool is_ready(int layer, int expert, bool low_bit_ok) { return false; }

  // Full precision only (the store's behaviour before precision tiers).
  ExpertWeights acquire(int layer, int expert) { return acquire(layer, expert, false); }
  void release(int layer, int expert) { release(layer, expert, ExpertTier::Full); }
  void prefetch(int layer, const int32_t* experts, int n, bool speculative) {
    prefetch(layer, experts, n, speculative, nullptr);
  }
};

// Serves the experts straight from in-memory (mapped or owned) tensor data. With a low-bit layout
// (in memory too), every acquire that accepts the low-bit copy gets it: nothing is loaded, so this is
// the deterministic "always low-bit below the threshold" case that quality measurements use.
class ResidentExpertStore final : public ExpertStore {
 public:
  explicit ResidentExpertStore(ExpertLayout layout, ExpertLayout low_bit = {});
  // From anything that describes its experts (a Model), without this layer depending on it.
  template <typename M, typename = decltype(std::declval<const M&>().expert_layout())>
  explicit ResidentExpertStore(const M& model) : ResidentExpertStore(model.expert_layout()) {}
  using ExpertStore::acquire;
  using ExpertStore::prefetch;
  using ExpertStore::release;
  ExpertWeights acquire(int layer, int expert, bool low_bit_ok) override;
  void release(int, int, ExpertTier) override {}
  bool has_low_bit() const override { return !low_bit_.empty(); }
  bool is_ready(int, int, bool) override { return true; }

 private:
  ExpertLayout layout_, low_bit_;
};

// Checks that a low-bit layout has the same layers, experts and matrix shapes as the full one.
void check_low_bit_layout(const ExpertLayout& full, const ExpertLayout& low);

struct ExpertStoreStats {
  // Per layer. A hit is a use of an expert that was cached or already being read because of a
  // prediction or a preload(); a miss had to be read because this step was routed to it (possibly
  // overlapped with compute by the executor's read-ahead). A use is counted where the step declares its
  // experts (prefetch with speculative = false), or by an acquire nothing declared (ExpertResidency).
  std::vector<uint64_t> hits, misses;
  uint64_t bytes_read = 0;         // both tiers
  uint64_t loads = 0;              // both tiers
  uint64_t low_bit_bytes_read = 0; // of those, low-bit copies
  uint64_t low_bit_loads = 0;
  double read_seconds = 0;        // time the I/O thread spent reading
  double stall_seconds = 0;       // time acquire() waited for I/O
  uint64_t prefetch_issued = 0;   // loads started by a hint
  uint64_t prefetch_used = 0;     // of those, acquired before being evicted
  uint64_t prefetch_wasted = 0;   // evicted without being used
  uint64_t prefetch_throttled = 0;  // speculative hints dropped rather than evict (see prefetch())
  uint64_t preload_loads = 0;       // experts read by preload() (also counted in loads and bytes_read)
  // Evictions that may depend on read timing (ExpertResidency::Counters); 0 means the hit and miss
  // counts are exactly what the cache simulator computes for the same calls.
  uint64_t order_sensitive_evictions = 0;
};

// Keeps experts in a pool of aligned slots under a byte budget, loading misses from the GGUF file
// with O_DIRECT (io_uring) on a background thread, so reads overlap compute and the page cache holds
// no second copy. Which expert occupies which slot, eviction (delegated to a CachePolicy) and the hit
// counts are ExpertResidency's, under this store's mutex; this class adds the buffers and the reads.
//
// With a low-bit layout (the side file), low-bit copies are cached in the same pool under their own
// keys, in slots of their own (smaller) size: the pool's bytes are shared by both sizes, and a buffer
// of one size is freed before one of the other size is allocated, so the pool never holds more than
// pool_bytes. An acquire that accepts the low-bit copy gets the full copy if that is already in the
// pool (ready or being read), else the low-bit copy (loading it on a miss). Which copies are in the
// pool depends on the order reads complete in, so with low-bit copies the logits of a streamed run
// can differ between runs; without them they never do.
class BudgetedExpertStore final : public ExpertStore {
 public:
  struct Options {
    uint64_t pool_bytes = 0;
    std::string policy = "distance";
    DirectReader::Mode io_mode = DirectReader::Mode::IoUring;
    ExpertLayout low_bit;  // low-bit copies (file offsets into the side file); empty = none
    // The pool must hold at least this many experts (one layer's experts for one token: more than the
    // model's k when a routing policy selects more); 0 = the model's largest k.
    int min_slots = 0;
  };
  BudgetedExpertStore(ExpertLayout layout, Options opts);
  ~BudgetedExpertStore() override;

  using ExpertStore::acquire;
  using ExpertStore::prefetch;
  using ExpertStore::release;
  ExpertWeights acquire(int layer, int expert, bool low_bit_ok) override;
  void release(int layer, int expert, ExpertTier tier) override;
  void prefetch(int layer, const int32_t* experts, int n, bool speculative, const uint8_t* low_bit_ok) override;
  bool has_low_bit() const override { return has_low_; }
  bool is_ready(int layer, int expert, bool low_bit_ok) override;

  // Fills the pool's empty slots in the background with these experts' full copies, in order, until
  // the pool is full (nothing is evicted). The I/O thread reads them only when no other read waits:
  // demand reads and hints always go first, and an acquire or hint of a queued expert moves it up.
  // Moves the reads, and the first touch of the pool's memory, off the first tokens' path (on a VM a
  // first touch of fresh memory costs about as much as the disk read). Returns how many were queued.
  size_t preload(const std::vector<std::pair<int, int>>& layer_expert_order);
  // Blocks until every preload() read has finished (e.g. before a benchmark times decoding).
  void wait_preloaded();

  // How many full-precision experts the pool holds (and the size of their slots).
  size_t n_slots() const { return residency_.n_full_slots(); }
  uint64_t slot_bytes() const { return slot_bytes_[0]; }
  // Slot size of a low-bit copy (0 without low-bit copies).
  uint64_t low_bit_slot_bytes() const { return has_low_ ? slot_bytes_[1] : 0; }
  // The budget, and the bytes of slot buffers allocated now (never above it).
  uint64_t pool_bytes() const { return pool_bytes_; }
  uint64_t pool_bytes_held() const;
  const char* io_mode_name() const { return readers_[0]->mode_name(); }
  const char* policy_name() const { return residency_.policy().name(); }
  ExpertStoreStats stats() const;
  void reset_stats();  // e.g. after the prompt, so the numbers describe generation only
  // Receives every acquire's outcome as stats() counts it (hit or miss), on the acquiring thread and
  // under the store's lock, so it must be quick (a server attributes hits to the requests of a step).
  // Empty = none. Set it while no acquire runs.
  using AcquireListener = std::function<void(int layer, int expert, bool hit)>;
  void set_acquire_listener(AcquireListener listener) { acquire_listener_ = std::move(listener); }

  // Bytes one slot needs (largest expert, with direct-I/O alignment slack).
  static uint64_t slot_bytes_for(const ExpertLayout& layout, uint64_t io_alignment = 4096);
  // Bytes a read of one expert of `layer` transfers (each matrix's extent rounded out to the alignment).
  static uint64_t read_bytes_for(const ExpertLayout& layout, int layer, uint64_t io_alignment = 4096);

 private:
  // What the pool's bookkeeping does not know: the buffers, the matrices they hold, a failed read's error.
  struct SlotData {
    AlignedBuffer buf;
    ExpertWeights views;
    std::string error;
  };
  class Buffers final : public ExpertResidency::SlotMemory {
   public:
    explicit Buffers(BudgetedExpertStore& s) : s_(s) {}
    void allocate(size_t slot, ExpertTier tier, uint64_t bytes) override;
    void free(size_t slot) override;

   private:
    BudgetedExpertStore& s_;
  };
  struct Job {
    ExpertKey key;
    size_t slot;
    bool needed_now = false;  // a layer being computed waits for it (else: a hint for later layers)
    bool preload = false;     // queued by preload() (counted in preload_pending_ until read)
  };
  static ExpertResidency::Config residency_config(const ExpertLayout& full, bool low_bit,
                                                  const std::array<uint64_t, 2>& slot_bytes, const Options& opts);
  // Reads the computing layer waits for go before every hint for later layers, in the order asked
  // (they sit at the queue's front); a queued hint that becomes needed moves up to join them.
  void enqueue_needed_locked(const Job& job);
  // A queued read becomes needed now (to the front group), or for a hint moves from the preload
  // queue to the hint queue.
  void promote_locked(ExpertKey key, bool needed_now = true);
  void io_loop();
  void load_into(const Job& job);

  // Initialised in this order by the constructor: the readers decide the slot sizes.
  std::array<ExpertLayout, 2> layouts_;  // by tier
  bool has_low_ = false;
  std::array<std::unique_ptr<DirectReader>, 2> readers_;
  std::array<uint64_t, 2> slot_bytes_{};
  uint64_t pool_bytes_ = 0;
  std::vector<SlotData> slot_data_;  // by slot (never reallocated: the I/O thread reads into the buffers)
  Buffers buffers_{*this};
  ExpertResidency residency_;  // after slot_data_ and buffers_: it allocates through them
  std::vector<ExpertResidency::Action> actions_;
  std::deque<Job> queue_;
  std::deque<Job> background_;  // preload() reads: only when queue_ is empty
  size_t preload_pending_ = 0;  // preload() reads not finished yet
  mutable std::mutex mu_;
  // Two conditions, so that the compute threads' releases (8 per layer of a decoded token) do not wake
  // the I/O thread, which would take a core from a compute thread each time on a 2-core machine.
  std::condition_variable io_cv_;     // the I/O thread: a job was queued, or stop_
  std::condition_variable ready_cv_;  // acquirers: a read finished, or a pin was released
  bool stop_ = false;
  ExpertStoreStats stats_;  // the I/O side (bytes, loads, times); the counts come from residency_
  AcquireListener acquire_listener_;
  std::thread io_thread_;
};

}  // namespace moe
