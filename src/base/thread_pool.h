// A fixed-size thread pool passed explicitly to whoever computes (no globals). Built for the many small
// parallel regions of one decoded token (hundreds per token, tens of microseconds each):
//  * workers spin on a generation counter before sleeping, so back-to-back regions pay no wake-up;
//  * work is claimed in chunks, and a region completes when its chunks are done, not when every
//    worker has checked in: a worker that another process keeps off its core is simply not waited for
//    (on a loaded 2-core machine that is the difference between 2x and 1/10x speed);
//  * chunks can also shrink towards the end of a range (parallel_for_guided), so that the last ones,
//    which decide when a region ends, are short;
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
    struct {
      alignas(64) std::atomic<int64_t> next{0};
    } counter;
    parallel_claims(n, [&](int64_t& begin, int64_t& end) {
      begin = counter.next.fetch_add(grain, std::memory_order_relaxed);
      end = std::min(n, begin + grain);
      return begin < n;
    }, fn);
  }

  // As parallel_for, but chunks shrink as the range runs out (guided self-scheduling): each claim takes
  // a 1/(2 * threads) share of what is left, at least min_grain and a multiple of align (the last may
  // be shorter). Early chunks stay long (one stream each for the hardware prefetcher) while the last
  // ones are short, so no thread waits long at the end for another's big chunk. For work whose
  // result does not depend on where chunks are cut (a decoded token's matrix rows).
  template <class F>
  void parallel_for_guided(int64_t n, int64_t min_grain, int64_t align, F&& fn) {
    if (n <= 0) return;
    if (n_threads_ == 1 || n <= min_grain) {
      fn(int64_t{0}, n, 0);
      return;
    }
    GuidedRange range(n, min_grain, align, n_threads_);
    parallel_claims(n, [&](int64_t& begin, int64_t& end) { return range.claim(begin, end); }, fn);
  }

  // The claim rule of parallel_for_guided, for regions that mix it with other work.
  class GuidedRange {
   public:
    GuidedRange(int64_t n, int64_t min_grain, int64_t align, int n_threads)
        : n_(n), align_(std::max<int64_t>(1, align)), divisor_(2 * std::max(1, n_threads)) {
      min_grain_ = std::max<int64_t>(align_, (std::max<int64_t>(1, min_grain) + align_ - 1) / align_ * align_);
    }
    bool claim(int64_t& begin, int64_t& end) {
      int64_t b = next_.load(std::memory_order_relaxed);
      for (;;) {
        if (b >= n_) return false;
        int64_t size = std::max(min_grain_, (n_ - b) / divisor_);
        size = (size + align_ - 1) / align_ * align_;
        const int64_t e = std::min(n_, b + size);
        if (next_.compare_exchange_weak(b, e, std::memory_order_relaxed)) {
          begin = b;
          end = e;
          return true;
        }
      }
    }

   private:
    alignas(64) std::atomic<int64_t> next_{0};
    int64_t n_, align_, divisor_, min_grain_;
  };

  // The general form: every thread calls claim(begin, end) (which must be thread-safe) and runs
  // fn(begin, end, ti) on each range it gets, until claim returns false; returns when the claimed
  // ranges, n items in all, are done.
  template <class Claim, class F>
  void parallel_claims(int64_t n, Claim&& claim, F& fn) {
    struct {
      alignas(64) std::atomic<int64_t> done{0};
    } progress;
    auto body = [&](int ti) {
      int64_t begin = 0, end = 0;
      while (claim(begin, end)) {
        fn(begin, end, ti);
        progress.done.fetch_add(end - begin, std::memory_order_release);
      }
    };
    using Body = decltype(body);
    using Progress = decltype(progress);
    run_shared([](void* ctx, int ti) { (*static_cast<Body*>(ctx))(ti); }, &body,
               [](void* ctx) { return static_cast<Progress*>(ctx)->done.load(std::memory_order_acquire); },
               &progress, n);
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
