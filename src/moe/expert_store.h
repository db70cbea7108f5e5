// ExpertStore: owns where experts live (design.md seam 3). The executor acquires an expert's
// gate/up/down matrices for a layer, computes, and releases it. Stores must never change the numbers:
// resident and offloaded runs give bit-identical logits.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <array>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/direct_io.h"
#include "kernels/matmul.h"
#include "moe/cache_policy.h"

namespace moe {

struct ExpertWeights {
  kernels::MatrixRef gate, up, down;
};

// Where every routed expert's matrices are, so stores need not know about models or files' formats.
// Each layer's gate/up/down are stacked tensors: expert e's matrix starts e * matrix_bytes in.
struct ExpertTensorLayout {
  const uint8_t* data = nullptr;  // in memory (resident), or null when only on disk
  uint64_t file_offset = 0;       // absolute offset of expert 0 in the file
  kernels::MatrixRef shape;       // type, rows, cols, row_bytes (data unused)
  uint64_t matrix_bytes() const { return shape.row_bytes * static_cast<uint64_t>(shape.rows); }
};

struct ExpertLayout {
  std::string path;
  int n_expert = 0;                                      // max over layers
  std::vector<int> n_expert_used;                        // per layer, 0 for dense layers
  std::vector<std::array<ExpertTensorLayout, 3>> layers; // gate, up, down; empty shapes for dense layers
  int n_layer() const { return static_cast<int>(layers.size()); }
};

class ExpertStore {
 public:
  virtual ~ExpertStore() = default;
  // Returns the expert's matrices, loading them if needed; they stay valid (pinned) until release().
  virtual ExpertWeights acquire(int layer, int expert) = 0;
  virtual void release(int layer, int expert) = 0;
  // Hint: these experts of `layer` will be acquired soon, so a loading store may start reading them.
  // `speculative` marks predictions (e.g. the next layer's likely experts) as opposed to experts the
  // current step has already been routed to; only the former count as prefetches in the statistics.
  virtual void prefetch(int layer, const int32_t* experts, int n, bool speculative) {}
};

// Serves the experts straight from in-memory (mapped or owned) tensor data.
class ResidentExpertStore final : public ExpertStore {
 public:
  explicit ResidentExpertStore(ExpertLayout layout) : layout_(std::move(layout)) {}
  // From anything that describes its experts (a Model), without this layer depending on it.
  template <typename M, typename = decltype(std::declval<const M&>().expert_layout())>
  explicit ResidentExpertStore(const M& model) : layout_(model.expert_layout()) {}
  ExpertWeights acquire(int layer, int expert) override;
  void release(int, int) override {}

 private:
  ExpertLayout layout_;
};

struct ExpertStoreStats {
  // Per layer. A hit is an acquire whose expert was cached or already being read because of a
  // prediction; a miss had to be read because this step was routed to it (possibly overlapped with
  // compute by the executor's read-ahead).
  std::vector<uint64_t> hits, misses;
  uint64_t bytes_read = 0;
  uint64_t loads = 0;
  double read_seconds = 0;        // time the I/O thread spent reading
  double stall_seconds = 0;       // time acquire() waited for I/O
  uint64_t prefetch_issued = 0;   // loads started by a hint
  uint64_t prefetch_used = 0;     // of those, acquired before being evicted
  uint64_t prefetch_wasted = 0;   // evicted without being used
};

// Keeps experts in a fixed pool of aligned slots under a byte budget, loading misses from the GGUF
// file with O_DIRECT (io_uring) on a background thread, so reads overlap compute and the page cache
// holds no second copy. Eviction is delegated to a CachePolicy.
class BudgetedExpertStore final : public ExpertStore {
 public:
  struct Options {
    uint64_t pool_bytes = 0;
    std::string policy = "distance";
    DirectReader::Mode io_mode = DirectReader::Mode::IoUring;
  };
  BudgetedExpertStore(ExpertLayout layout, Options opts);
  ~BudgetedExpertStore() override;

  ExpertWeights acquire(int layer, int expert) override;
  void release(int layer, int expert) override;
  void prefetch(int layer, const int32_t* experts, int n, bool speculative) override;

  size_t n_slots() const { return slots_.size(); }
  uint64_t slot_bytes() const { return slot_bytes_; }
  const char* io_mode_name() const { return reader_->mode_name(); }
  const char* policy_name() const { return policy_->name(); }
  ExpertStoreStats stats() const;
  void reset_stats();  // e.g. after the prompt, so the numbers describe generation only

  // Bytes one slot needs (largest expert, with direct-I/O alignment slack).
  static uint64_t slot_bytes_for(const ExpertLayout& layout, uint64_t io_alignment = 4096);

 private:
  enum class SlotState { Empty, Loading, Ready, Failed };
  struct Slot {
    AlignedBuffer buf;
    ExpertKey key = 0;
    SlotState state = SlotState::Empty;
    int pins = 0;
    bool from_prefetch = false;  // loaded by a hint and not yet acquired
    bool speculative = false;    // that hint was a prediction
    std::string error;           // why the load failed (state Failed)
    ExpertWeights views;
  };
  struct Job {
    ExpertKey key;
    size_t slot;
  };

  ExpertKey key_of(int layer, int expert) const { return static_cast<ExpertKey>(layer * n_expert_ + expert); }
  // Finds a slot for `key` (empty, or a policy victim that passes `evictable`); -1 if none.
  long claim_slot_locked(ExpertKey key, bool for_prefetch, bool speculative);
  void io_loop();
  void load_into(const Job& job);

  ExpertLayout layout_;
  int n_expert_ = 0, n_layer_ = 0;
  uint64_t slot_bytes_ = 0;
  std::unique_ptr<DirectReader> reader_;
  std::unique_ptr<CachePolicy> policy_;
  std::vector<Slot> slots_;
  std::unordered_map<ExpertKey, size_t> where_;
  std::deque<Job> queue_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  ExpertStoreStats stats_;
  std::thread io_thread_;
};

}  // namespace moe
