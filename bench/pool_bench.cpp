// Thread-pool overhead: the cost of one parallel region with no (or tiny) work, which is what the
// hundreds of small regions of one decoded token pay on top of their work.
//  BM_PoolEmptyParallelFor/{threads}: parallel_for over 2 chunks that do nothing.
//  BM_PoolSmallRegions/{threads}: 200 regions of ~25 us of work each (a decode token's worth), reported
//    per region; counter overhead_us = time per region minus the work's time divided by the threads.
#include <benchmark/benchmark.h>

#include <atomic>
#include <chrono>

#include "base/thread_pool.h"

namespace {

void BM_PoolEmptyParallelFor(benchmark::State& state) {
  moe::ThreadPool pool(static_cast<int>(state.range(0)));
  std::atomic<int64_t> sink{0};
  for (auto _ : state) {
    pool.parallel_for(2, 1, [&](int64_t b, int64_t e, int) { sink.fetch_add(e - b, std::memory_order_relaxed); });
  }
  benchmark::DoNotOptimize(sink.load());
  state.SetLabel(std::to_string(state.range(0)) + " threads");
}
BENCHMARK(BM_PoolEmptyParallelFor)->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond)->UseRealTime();

// Busy work of about `ns` nanoseconds (calibrated once).
double spin_work(int64_t iters) {
  double x = 1.0;
  for (int64_t i = 0; i < iters; ++i) x = x * 1.0000001 + 1e-9;
  return x;
}

void BM_PoolSmallRegions(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  moe::ThreadPool pool(threads);
  // Calibrate: iterations for ~25 us of single-thread work per region.
  const auto t0 = std::chrono::steady_clock::now();
  benchmark::DoNotOptimize(spin_work(1 << 20));
  const double ns_per_iter =
      std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / (1 << 20);
  const int64_t iters = static_cast<int64_t>(25000.0 / ns_per_iter);
  constexpr int kChunks = 16, kRegions = 200;
  for (auto _ : state) {
    for (int r = 0; r < kRegions; ++r) {
      pool.parallel_for(kChunks, 1, [&](int64_t b, int64_t e, int) {
        for (int64_t c = b; c < e; ++c) benchmark::DoNotOptimize(spin_work(iters / kChunks));
      });
    }
  }
  state.SetItemsProcessed(state.iterations() * kRegions);
  const double per_region_us = 25.0 / threads;
  state.counters["ideal_us_per_region"] = per_region_us;
  state.SetLabel(std::to_string(threads) + " threads, 25 us of work per region");
}
BENCHMARK(BM_PoolSmallRegions)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
