// Engine: a loaded model plus the expert store that serves it, set up from a memory budget. With no
// budget, or one the whole model fits in, every weight is resident (mmap). Otherwise non-expert
// weights are read into memory and the routed experts stream from disk through a BudgetedExpertStore
// whose pool takes what the budget leaves after weights, KV cache and buffers.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "format/gguf.h"
#include "model/weights.h"
#include "moe/executor.h"
#include "moe/expert_store.h"
#include "moe/routing_policy.h"

namespace moe {

// Memory a caller will allocate for itself while the engine runs (a benchmark's probe buffer, an output
// buffer), counted against the budget and named in the plan.
struct MemoryReservation {
  std::string what;
  uint64_t bytes = 0;
};

struct EngineOptions {
  uint64_t mem_bytes = 0;     // total budget for everything the process holds; 0 = unlimited
  int64_t n_ctx = 4096;       // context the KV cache is sized for
  int n_seq = 1;              // KV caches of n_ctx each (a server's slots); all count against the budget
  int64_t n_batch = 512;      // largest prompt batch (sizes the activation buffers)
  std::string cache_policy = "distance";
  // Compute from the file's page-cache pages (mmap) instead of reading resident weights into memory of
  // our own. Off by default: our buffers get 2 MiB pages where the kernel allows, and streaming weights
  // through 4 KiB file pages measured up to 3x slower for Q6_K expert matrices (TLB misses, which a VM's
  // nested page tables make dear); mapping starts faster and shares the page cache between processes.
  bool mmap = false;
  bool force_offload = false; // stream experts even if everything would fit (testing, benchmarks)
  // Repack at load where the CPU has the kernels for it, bit-identical results: Q4_K matrices to Q4_K_R
  // (AVX-512 VBMI + GFNI; faster decode), Q8_0 matrices but the token embedding to Q8_0_P (AVX-512
  // VNNI; no per-call panel conversion in prefill, faster decode). Off: the file's layout is used as is.
  bool repack = true;
  DirectReader::Mode io_mode = DirectReader::Mode::IoUring;
  // When streaming: fill the expert pool in the background from the start (every layer's experts in
  // turn, until it is full), so that later tokens find experts cached instead of cold slots. Off by
  // default: while it runs it competes with the first tokens for the disk and, on a VM, for the cores
  // (a first touch of fresh memory costs about as much as the read), which halved a short `moe run`'s
  // decode speed; it pays where the engine waits anyway (a server before its first request, a
  // benchmark before timing). Not with low-bit copies (see Engine::open).
  bool preload = false;
  // Low-bit copies of the experts (a side file from `moe quantize-experts`); "" = none. Resident: the
  // side file is mapped too (its bytes count against the budget). Streaming: the copies are read into
  // the expert pool on demand. When they are used is up to the forward options (ExpertPrecision).
  std::string low_bit_path;
  // What the process already holds when the engine opens (code, libraries, a tokenizer, tokenized
  // inputs), counted against mem_bytes. The CLI measures it (VmRSS); a library caller says what it knows.
  uint64_t held_bytes = 0;
  // Allocations the caller will make besides the engine's own, counted against mem_bytes.
  std::vector<MemoryReservation> reserved;
  // The most experts a token may get in one layer under the routing policies sessions will use
  // (policy_max_experts): 0 = the model's k, -1 = every expert. Activation buffers and the smallest
  // expert pool are planned for it.
  int experts_per_token = 0;
  // Experts the preload must not read (those the command's routing policy masks).
  std::vector<std::pair<int, int>> preload_exclude;
};

struct MemoryPlan {
  bool offload = false;
  uint64_t weights_total = 0;       // all tensors
  uint64_t weights_resident = 0;    // what stays in memory
  uint64_t kv_bytes = 0;
  // Activations and scratch for the batch size, plus the engine's own overhead: thread stacks, I/O rings,
  // the model file's parsed metadata (estimates).
  uint64_t buffer_bytes = 0;
  uint64_t held_bytes = 0;          // EngineOptions::held_bytes
  std::vector<MemoryReservation> reserved;  // EngineOptions::reserved
  uint64_t expert_pool_bytes = 0;   // offload only
  uint64_t low_bit_bytes = 0;       // resident low-bit copies (mapped side file); 0 when offloading
  uint64_t reserved_bytes() const;
  // Everything the plan counts: with a budget, at most the budget.
  uint64_t total_bytes() const;
  std::string describe() const;
};

// Estimates the plan without loading weights (reads only the header). low_bit_expert_bytes: the
// side file's expert bytes, which a resident plan must also hold.
MemoryPlan plan_memory(const Model& model_header_only, const EngineOptions& opts, uint64_t low_bit_expert_bytes = 0);
// The plan Engine::open(path, opts) will follow, from the file's header only (nothing is loaded). Throws
// what open would throw when the budget is too small.
MemoryPlan plan_memory(const std::string& path, const EngineOptions& opts);

class Engine {
 public:
  static std::unique_ptr<Engine> open(const std::string& path, const EngineOptions& opts);
  const Model& model() const { return *model_; }
  ExpertStore& store() { return *store_; }
  const MemoryPlan& plan() const { return plan_; }
  // Non-null when experts stream from disk.
  BudgetedExpertStore* offload_store() { return budgeted_; }
  // Whether the store has low-bit copies, and their type.
  bool has_low_bit() const { return store_->has_low_bit(); }
  DType low_bit_type() const { return low_bit_type_; }
  // Where forward passes on this engine count their full / low-bit / skipped expert evaluations
  // (ForwardOptions::expert_use).
  ExpertUseCounters& expert_use() { return expert_use_; }
  // Where forward passes on this engine count routed tokens and selected experts per layer
  // (ForwardOptions::routing_use).
  RoutingUseCounters& routing_use() { return *routing_use_; }
  // Zeroes the store statistics and the evaluation counters (e.g. after the prompt).
  void reset_stats();

 private:
  std::unique_ptr<Model> model_;
  std::unique_ptr<gguf::File> low_bit_file_;  // before store_: the store may point into its mapping
  DType low_bit_type_ = DType::F32;
  ExpertUseCounters expert_use_;
  std::unique_ptr<RoutingUseCounters> routing_use_;
  std::unique_ptr<ExpertStore> store_;
  BudgetedExpertStore* budgeted_ = nullptr;
  MemoryPlan plan_;
};

// Parses sizes like "8G", "512M", "3.5GiB", "1000000" (bytes). Throws naming `what` on bad input.
uint64_t parse_size(const std::string& text, const std::string& what);

}  // namespace moe
