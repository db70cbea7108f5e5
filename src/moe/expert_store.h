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

namespace moe {

// Which copy of an expert: the model's own (full precision), or the low-bit side copy.
enum class ExpertTier : uint8_t { Full = 0, LowBit = 1 };

struct ExpertWeights {
  kernels::MatrixRef gate, up, down;
  ExpertTier tier = ExpertTier::Full;  // the copy these matrices belong to (pass it to release())
  // Per-expert biases added to each product (gpt-oss), rows floats each; null = none. Always resident
  // and shared by both tiers.
  const float* gate_bias = nullptr;
  const float* up_bias = nullptr;
  const float* down_bias = nullptr;
};

// Where every routed expert's matrices are, so stores need not know about models or files' formats.
// Each layer's gate/up/down are stacked tensors: expert e's matrix starts e * matrix_bytes in.
struct ExpertTensorLayout {
  const uint8_t* data = nullptr;  // in memory (resident), or null when only on disk
  uint64_t file_offset = 0;       // absolute offset of expert 0 in the file
  kernels::MatrixRef shape;       // type, rows, cols, row_bytes (data unused)
  const float* bias = nullptr;    // [n_expert][shape.rows] f32 in memory, or null (no bias)
  uint64_t matrix_bytes() const { return shape.row_bytes * static_cast<uint64_t>(shape.rows); }
  const float* bias_of(int expert) const { return bias ? bias + static_cast<int64_t>(expert) * shape.rows : nullptr; }
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
  // Per layer. A hit is an acquire whose expert was cached or already being read because of a
  // prediction or a preload(); a miss had to be read because this step was routed to it (possibly overlapped with
  // compute by the executor's read-ahead).
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
};

// Keeps experts in a pool of aligned slots under a byte budget, loading misses from the GGUF file
// with O_DIRECT (io_uring) on a background thread, so reads overlap compute and the page cache holds
// no second copy. Eviction is delegated to a CachePolicy.
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
  size_t n_slots() const { return n_full_slots_; }
  uint64_t slot_bytes() const { return slot_bytes_[0]; }
  // Slot size of a low-bit copy (0 without low-bit copies).
  uint64_t low_bit_slot_bytes() const { return has_low_ ? slot_bytes_[1] : 0; }
  // The budget, and the bytes of slot buffers allocated now (never above it).
  uint64_t pool_bytes() const { return pool_bytes_; }
  uint64_t pool_bytes_held() const;
  const char* io_mode_name() const { return readers_[0]->mode_name(); }
  const char* policy_name() const { return policy_->name(); }
  ExpertStoreStats stats() const;
  void reset_stats();  // e.g. after the prompt, so the numbers describe generation only
  // Receives every acquire's outcome as stats() counts it (hit or miss), on the acquiring thread and
  // under the store's lock, so it must be quick (a server attributes hits to the requests of a step).
  // Empty = none. Set it while no acquire runs.
  using AcquireListener = std::function<void(int layer, int expert, bool hit)>;
  void set_acquire_listener(AcquireListener listener) { acquire_listener_ = std::move(listener); }

  // Bytes one slot needs (largest expert, with direct-I/O alignment slack).
  static uint64_t slot_bytes_for(const ExpertLayout& layout, uint64_t io_alignment = 4096);

 private:
  enum class SlotState { Empty, Loading, Ready, Failed };
  struct Slot {
    AlignedBuffer buf;           // slot_bytes_[tier] bytes, or none (a low-bit pool allocates lazily)
    ExpertTier tier = ExpertTier::Full;  // what buf is sized for (and, when not Empty, what it holds)
    ExpertKey key = 0;
    SlotState state = SlotState::Empty;
    int pins = 0;
    bool from_prefetch = false;  // loaded by a hint and not yet acquired
    bool speculative = false;    // that hint was a prediction
    bool preloaded = false;      // filled by preload() and not yet acquired
    std::string error;           // why the load failed (state Failed)
    ExpertWeights views;
  };
  struct Job {
    ExpertKey key;
    size_t slot;
    bool needed_now = false;  // a layer being computed waits for it (else: a hint for later layers)
    bool preload = false;     // queued by preload() (counted in preload_pending_ until read)
  };
  // Reads the computing layer waits for go before every hint for later layers, in the order asked
  // (they sit at the queue's front); a queued hint that becomes needed moves up to join them.
  void enqueue_needed_locked(const Job& job);
  // A queued read becomes needed now (to the front group), or for a hint moves from the preload
  // queue to the hint queue.
  void promote_locked(ExpertKey key, bool needed_now = true);

  // Keys: layer * key_stride_ + tier * n_expert_ + expert, so policies that decode the layer as
  // key / (their n_expert) see both copies of an expert in its layer.
  ExpertKey key_of(int layer, int expert, ExpertTier tier = ExpertTier::Full) const {
    return static_cast<ExpertKey>(layer * key_stride_ + static_cast<int>(tier) * n_expert_ + expert);
  }
  // Finds a slot for `key` (empty, or a policy victim that passes `evictable`); -1 if none, and
  // kThrottledSlot for a speculative hint that may not evict (speculation_may_evict_locked).
  static constexpr long kThrottledSlot = -2;
  long claim_slot_locked(ExpertKey key, ExpertTier tier, bool for_prefetch, bool speculative);
  // A free slot with a buffer for `tier`, allocating one if the budget allows; -1 if none.
  long free_slot_locked(ExpertTier tier);
  void drop_buffer_locked(Slot& sl);
  void io_loop();
  void load_into(const Job& job);

  std::array<ExpertLayout, 2> layouts_;  // by tier
  bool has_low_ = false;
  int n_expert_ = 0, n_layer_ = 0, key_stride_ = 0;
  std::array<uint64_t, 2> slot_bytes_{};
  uint64_t pool_bytes_ = 0, bytes_held_ = 0;  // budget, and bytes of the slot buffers allocated
  size_t n_full_slots_ = 0;
  std::array<std::unique_ptr<DirectReader>, 2> readers_;
  std::unique_ptr<CachePolicy> policy_;
  std::vector<Slot> slots_;  // fixed size (never reallocated: the I/O thread reads into them)
  std::unordered_map<ExpertKey, size_t> where_;
  std::deque<Job> queue_;
  std::deque<Job> background_;  // preload() reads: only when queue_ is empty
  size_t preload_pending_ = 0;  // preload() reads not finished yet
  mutable std::mutex mu_;
  // Two conditions, so that the compute threads' releases (8 per layer of a decoded token) do not wake
  // the I/O thread, which would take a core from a compute thread each time on a 2-core machine.
  std::condition_variable io_cv_;     // the I/O thread: a job was queued, or stop_
  std::condition_variable ready_cv_;  // acquirers: a read finished, or a pin was released
  bool stop_ = false;
  ExpertStoreStats stats_;
  // Speculative prefetch pays only while it helps more than it hurts. Exponential moving average of
  // outcomes (1 = a speculative load used; 0 = one evicted unused, or a demand miss on an expert that
  // was evicted for one), and a counter that still lets one in kSpeculationProbeEvery throttled hints
  // through, so the average keeps measuring.
  double speculative_success_ = 1.0;
  uint32_t speculative_probe_ = 0;
  // Experts evicted to make room for a speculative load: a later demand miss on one of them is a
  // cost of speculation (counted as a failure), as is a speculative load evicted unused.
  std::unordered_set<ExpertKey> evicted_for_speculation_;
  bool speculation_may_evict_locked();
  AcquireListener acquire_listener_;
  std::thread io_thread_;
};

}  // namespace moe
