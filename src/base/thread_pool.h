// A fixed-size thread pool passed explicitly to whoever computes (no globals). Built for the many small
// parallel regions of one decoded token (hundreds per token, tens of microseconds each):
//  * workers spin on a generation counter before sleeping, so back-to-back regions pay no wake-up;
//  * work is claimed in chunks, and a region completes when its chunks are done, not when every
//    worker has checked in: a worker that another process keeps off its core is simply not waited for
//    (on a loaded 2-core machine that is the difference between 2x and 1/10x speed);
//  * the caller only touches the mutex / condition variable when a worker actually went to sleep;
//  * run() and parallel_for() are templates over the callable, so no std::function is built per call.
#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>  // callers pass std::function objects too
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace moe {

// The spin-wait hint for loops that wait on another thread (the pool's own, and fused regions whose
// tasks wait on each other).
inline void cpu_relax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#endif
}

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Splits [0, n) into chunks of `grain` handed out dynamically; fn(begin, end, thread_index).
  // thread_index identifies the executing thread (0 = the caller), for per-thread scratch.
  template <class F>
  void parallel_for(int64_t n, int64_t grain, F&& fn) {
    if (n <= 0) return;
    grain = std::max<int64_t>(1, grain);
    if (n_threads_ == 1 || n <= grain) {
      fn(int64_t{0}, n, 0);
      return;
    }
    struct Shared {
      alignas(64) std::atomic<int64_t> next{0};
      alignas(64) std::atomic<int64_t> done{0};
    } sh;
    auto body = [&](int ti) {
      for (;;) {
        const int64_t begin = sh.next.fetch_add(grain, std::memory_order_relaxed);
        if (begin >= n) break;
        const int64_t end = std::min(n, begin + grain);
        fn(begin, end, ti);
        sh.done.fetch_add(end - begin, std::memory_order_release);
      }
    };
    using Body = decltype(body);
    run_shared([](void* ctx, int ti) { (*static_cast<Body*>(ctx))(ti); }, &body,
               [](void* ctx) { return static_cast<Shared*>(ctx)->done.load(std::memory_order_acquire); }, &sh, n);
  }

  // Calls fn(slot, n_threads) once for every slot in [0, n_threads): the classic "each thread takes
  // its share" form. Slots are claimed dynamically, so one thread may run several.
  template <class F>
  void run(F&& fn) {
    const int nt = n_threads_;
    parallel_for(nt, 1, [&](int64_t b, int64_t e, int) {
      for (int64_t slot = b; slot < e; ++slot) fn(static_cast<int>(slot), nt);
    });
  }

 private:
  using JobFn = void (*)(void* ctx, int ti);
  using ProgressFn = int64_t (*)(void* ctx);
  // Publishes fn to the workers, runs it on the caller, and returns when progress(pctx) == total and
  // every worker that entered fn has left it.
  void run_shared(JobFn fn, void* ctx, ProgressFn progress, void* pctx, int64_t total);
  void worker_loop(int index);

  int n_threads_;
  std::vector<std::thread> workers_;
  // The open job. Written before closed_ is cleared; stable while any worker is counted in active_.
  JobFn job_fn_ = nullptr;
  void* job_ctx_ = nullptr;
  alignas(64) std::atomic<uint64_t> generation_{0};
  alignas(64) std::atomic<bool> closed_{true};
  alignas(64) std::atomic<int> active_{0};
  alignas(64) std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::condition_variable cv_;
};

int default_thread_count();

}  // namespace moe
