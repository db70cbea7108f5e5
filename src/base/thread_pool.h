// A fixed-size thread pool passed explicitly to whoever computes (no globals). Built for the many small
// parallel regions of one decoded token (hundreds per token, tens of microseconds each):
//  * workers spin on a generation counter before sleeping, so back-to-back regions pay no wake-up;
//  * the caller only touches the mutex / condition variable when a worker actually went to sleep;
//  * run() and parallel_for() are templates over the callable, so no std::function is built per call;
//  * the shared counters live on separate cache lines.
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

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn(thread_index, n_threads) on every thread (the caller is thread 0) and waits for all.
  template <class F>
  void run(F&& fn) {
    using Fn = std::remove_reference_t<F>;
    run_raw([](void* ctx, int ti, int nt) { (*static_cast<Fn*>(ctx))(ti, nt); }, const_cast<void*>(static_cast<const void*>(&fn)));
  }

  // Splits [0, n) into chunks of `grain` handed out dynamically; fn(begin, end, thread_index).
  template <class F>
  void parallel_for(int64_t n, int64_t grain, F&& fn) {
    if (n <= 0) return;
    grain = std::max<int64_t>(1, grain);
    if (n_threads_ == 1 || n <= grain) {
      fn(int64_t{0}, n, 0);
      return;
    }
    struct alignas(64) Counter {
      std::atomic<int64_t> next{0};
    } counter;
    run([&](int ti, int) {
      for (;;) {
        const int64_t begin = counter.next.fetch_add(grain, std::memory_order_relaxed);
        if (begin >= n) break;
        fn(begin, std::min(n, begin + grain), ti);
      }
    });
  }

  // Type-erased core of run(): fn(ctx, thread_index, n_threads) on every thread.
  using RawFn = void (*)(void* ctx, int ti, int nt);
  void run_raw(RawFn fn, void* ctx);

 private:
  void worker_loop(int index);

  int n_threads_;
  std::vector<std::thread> workers_;
  // Job description: written by the caller before the generation bump (release), read after (acquire).
  RawFn job_fn_ = nullptr;
  void* job_ctx_ = nullptr;
  alignas(64) std::atomic<uint64_t> generation_{0};
  alignas(64) std::atomic<int> pending_{0};
  alignas(64) std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::condition_variable cv_;
};

int default_thread_count();

}  // namespace moe
