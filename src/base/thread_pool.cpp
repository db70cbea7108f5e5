#include "base/thread_pool.h"

namespace moe {
namespace {
// How long an idle worker spins before sleeping: about half a millisecond on current x86 cores
// (pause is ~40-140 cycles), longer than the gap between the parallel regions of one token and short
// enough not to burn a core between requests.
constexpr int kSpinIterations = 20000;
}  // namespace

int default_thread_count() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run_shared(JobFn fn, void* ctx, ProgressFn progress, void* pctx, int64_t total) {
  job_fn_ = fn;
  job_ctx_ = ctx;
  closed_.store(false, std::memory_order_seq_cst);
  // seq_cst bump, then seq_cst read of sleepers_: pairs with the worker's increment of sleepers_ and
  // its re-check of generation_ under the mutex, so a worker is either seen asleep here or sees the job.
  generation_.fetch_add(1, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    { std::lock_guard<std::mutex> lock(mutex_); }
    cv_.notify_all();
  }
  fn(ctx, 0);
  // Every chunk is claimed; wait for the ones still running on other threads.
  while (progress(pctx) < total) cpu_relax();
  // Close the job, then wait only for workers inside it. seq_cst pairs with the worker's increment of
  // active_ followed by its read of closed_: a worker is either counted here or sees the job closed
  // and never touches fn/ctx, which die when we return.
  closed_.store(true, std::memory_order_seq_cst);
  while (active_.load(std::memory_order_seq_cst) != 0) cpu_relax();
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    uint64_t gen = generation_.load(std::memory_order_acquire);
    for (int spin = 0; gen == seen && spin < kSpinIterations; ++spin) {
      cpu_relax();
      gen = generation_.load(std::memory_order_acquire);
    }
    if (gen == seen) {
      std::unique_lock<std::mutex> lock(mutex_);
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      cv_.wait(lock, [&] { return generation_.load(std::memory_order_seq_cst) != seen; });
      sleepers_.fetch_sub(1, std::memory_order_relaxed);
      gen = generation_.load(std::memory_order_acquire);
    }
    seen = gen;
    if (stop_.load()) return;
    active_.fetch_add(1, std::memory_order_seq_cst);
    // Whatever job is open now (the one that woke us, or a newer one) is stable until we leave.
    if (!closed_.load(std::memory_order_seq_cst)) job_fn_(job_ctx_, index);
    active_.fetch_sub(1, std::memory_order_seq_cst);
  }
}

}  // namespace moe
