// Kernel micro-benchmarks. Every figure is printed next to a reference measured in the same process:
//
//  BM_QuantMatVec/{dtype}/{isa}: one vec_dot per row, single thread, 1024 x 4096 (L2/L3-resident: this
//    measures kernel compute speed). isa 0 = scalar reference, 1 = AVX2, 2 = AVX-512. Counter x_scalar:
//    speed-up over the scalar reference on the same data (timed in the same run).
//  BM_MatVec/{dtype}/{threads}: kernels::matmul for one token (decode) over a 256 MiB weight matrix, far
//    larger than any cache, so this is the DRAM-bound number to hold against the machine's bandwidth
//    (~23 GB/s with 1 thread, ~45 GB/s with 2). Counter x_pairwise: speed-up over one vec_dot per row
//    on the same matrix and pool (the pre-tile matmul), timed in the same run.
//  BM_Gemm/{dtype}/{threads}/{tokens}: kernels::matmul on an expert-shaped 2048 x 1024 matrix (OLMoE down
//    projection) for `tokens` tokens (prefill), GFLOP/s = 2 * rows * cols * tokens / time. Counters
//    x_pairwise (vs one vec_dot per (row, token)) and x_scalar (vs the scalar reference per pair).
// The activation rows are quantized to vec_dot_type once, outside the timed loop.
#include <benchmark/benchmark.h>

#include <chrono>
#include <ctime>
#include <cstring>
#include <random>
#include <vector>

#include "base/thread_pool.h"
#include "kernels/cpu_features.h"
#include "kernels/matmul.h"
#include "kernels/quant_dispatch.h"
#include "tensor/dtype.h"

namespace {

using Clock = std::chrono::steady_clock;

// Warm-up call, then `reps` calls; returns seconds per call. The machines are shared, so single-thread
// figures use this thread's CPU time (like Google Benchmark's default); multi-thread ones use wall time.
double thread_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}
template <class F>
double seconds_per_call(F&& fn, int reps, bool cpu_time = false) {
  fn();
  const auto t0 = Clock::now();
  const double c0 = thread_cpu_seconds();
  for (int i = 0; i < reps; ++i) fn();
  if (cpu_time) return (thread_cpu_seconds() - c0) / reps;
  return std::chrono::duration<double>(Clock::now() - t0).count() / reps;
}

// `rows` rows of quantized Gaussian data; rows beyond `distinct` repeat the first `distinct` (the
// quantizers are slow, and for bandwidth only the addresses need to be distinct).
std::vector<uint8_t> make_weights(moe::DType type, int64_t rows, int64_t cols, int64_t distinct, uint32_t seed) {
  const moe::DTypeTraits& tr = moe::dtype_traits(type);
  const size_t rb = moe::row_bytes(type, cols);
  std::vector<uint8_t> w(rb * rows);
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> row(cols);
  const int64_t d = std::min(rows, distinct);
  for (int64_t r = 0; r < d; ++r) {
    for (auto& v : row) v = dist(rng);
    tr.quantize(row.data(), w.data() + r * rb, cols);
  }
  for (int64_t r = d; r < rows; r += d) std::memcpy(w.data() + r * rb, w.data(), rb * std::min(d, rows - r));
  return w;
}

std::vector<float> gaussian(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

bool isa_ok(moe::Isa isa) {
  const auto& f = moe::cpu_features();
  return !((isa == moe::Isa::Avx2 && !f.has_avx2_kernels()) || (isa == moe::Isa::Avx512 && !f.has_avx512_kernels()));
}

// One vec_dot per (row, token) with the given kernel, rows split over the pool like matmul does.
void pairwise(moe::VecDotFn dot, const moe::kernels::MatrixRef& w, const moe::kernels::ActBuffer& act, float* y,
              moe::ThreadPool& pool) {
  const int64_t grain = std::max<int64_t>(4, static_cast<int64_t>(32768 / w.row_bytes)) & ~int64_t{3};
  pool.parallel_for(w.rows, grain, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t t = 0; t < act.n_tokens(); ++t)
        y[t * w.rows + r] = dot(w.cols, w.data + r * w.row_bytes, act.row(t));
  });
}

// ---- single-row kernels, cache-resident --------------------------------------------------------

constexpr int64_t kRows = 1024;
constexpr int64_t kCols = 4096;

void BM_QuantMatVec(benchmark::State& state) {
  const auto type = static_cast<moe::DType>(state.range(0));
  const auto isa = static_cast<moe::Isa>(state.range(1));
  if (!isa_ok(isa)) {
    state.SkipWithError("ISA not available on this CPU");
    return;
  }
  const moe::DTypeTraits& tr = moe::dtype_traits(type);
  const size_t rb = moe::row_bytes(type, kCols);
  const std::vector<uint8_t> w = make_weights(type, kRows, kCols, kRows, 1);
  const std::vector<float> x = gaussian(kCols, 2);
  std::vector<uint8_t> act(moe::row_bytes(tr.vec_dot_type, kCols));
  moe::dtype_traits(tr.vec_dot_type).quantize(x.data(), act.data(), kCols);
  const moe::VecDotFn dot = moe::quant::vec_dot_for_isa(type, isa);
  std::vector<float> out(kRows);
  auto pass = [&](moe::VecDotFn f, int64_t rows) {
    for (int64_t r = 0; r < rows; ++r) out[r] = f(kCols, w.data() + r * rb, act.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  };
  const double ref_s = seconds_per_call([&] { pass(tr.vec_dot_ref, kRows / 8); }, 3, true) * 8;
  for (auto _ : state) pass(dot, kRows);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(w.size()));
  state.counters["GFLOP/s"] = benchmark::Counter(static_cast<double>(2 * kRows * kCols) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
  const double own_s = seconds_per_call([&] { pass(dot, kRows); }, 3, true);
  state.counters["x_scalar"] = ref_s / own_s;
  state.SetLabel(std::string(tr.name) + "/" + moe::isa_name(isa));
}

const moe::DType kAllTypes[] = {moe::DType::F32,  moe::DType::F16,  moe::DType::BF16, moe::DType::Q8_0,
                                moe::DType::Q4_0, moe::DType::Q4_1, moe::DType::Q5_0, moe::DType::Q5_1,
                                moe::DType::Q2_K, moe::DType::Q3_K, moe::DType::Q4_K, moe::DType::Q5_K,
                                moe::DType::Q6_K, moe::DType::Q4_K_R};
const moe::DType kHotTypes[] = {moe::DType::Q4_K, moe::DType::Q4_K_R, moe::DType::Q5_K, moe::DType::Q6_K,
                                moe::DType::Q8_0, moe::DType::Q4_0};

void QuantArgs(benchmark::internal::Benchmark* b) {
  for (moe::DType t : kAllTypes) {
    for (int isa = 0; isa <= 2; ++isa) b->Args({static_cast<int64_t>(t), isa});
  }
}
BENCHMARK(BM_QuantMatVec)->Apply(QuantArgs)->Unit(benchmark::kMillisecond);

// ---- decode matvec through matmul, DRAM-bound ----------------------------------------------------

void BM_MatVec(benchmark::State& state) {
  const auto type = static_cast<moe::DType>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  const moe::DTypeTraits& tr = moe::dtype_traits(type);
  constexpr int64_t cols = 2048;
  const size_t rb = moe::row_bytes(type, cols);
  const int64_t rows = static_cast<int64_t>((256u << 20) / rb) & ~int64_t{3};
  const std::vector<uint8_t> w = make_weights(type, rows, cols, 256, 3);
  const std::vector<float> x = gaussian(cols, 4);
  moe::kernels::ActBuffer act;
  act.convert(tr.vec_dot_type, x.data(), 1, cols, cols);
  const moe::kernels::MatrixRef m{w.data(), type, rows, cols, rb};
  std::vector<float> y(rows);
  moe::ThreadPool pool(threads);
  const bool cpu = threads == 1;
  const double pair_s = seconds_per_call([&] { pairwise(tr.vec_dot, m, act, y.data(), pool); }, 3, cpu);
  for (auto _ : state) {
    moe::kernels::matmul(m, act, y.data(), rows, pool);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(w.size()));
  const double own_s = seconds_per_call([&] { moe::kernels::matmul(m, act, y.data(), rows, pool); }, 3, cpu);
  state.counters["x_pairwise"] = pair_s / own_s;
  // own_GB/s / pairwise_GB/s: from thread CPU time with 1 thread (robust on a shared machine), wall time with 2.
  state.counters["own_GB/s"] = static_cast<double>(w.size()) / own_s * 1e-9;
  state.counters["pairwise_GB/s"] = static_cast<double>(w.size()) / pair_s * 1e-9;
  state.SetLabel(std::string(tr.name) + "/" + std::to_string(threads) + "t");
}

void MatVecArgs(benchmark::internal::Benchmark* b) {
  for (moe::DType t : kHotTypes)
    for (int th : {1, 2}) b->Args({static_cast<int64_t>(t), th});
}
BENCHMARK(BM_MatVec)->Apply(MatVecArgs)->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- prefill GEMM --------------------------------------------------------------------------------

void BM_Gemm(benchmark::State& state) {
  const auto type = static_cast<moe::DType>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  const int64_t tokens = state.range(2);
  const moe::DTypeTraits& tr = moe::dtype_traits(type);
  constexpr int64_t rows = 2048, cols = 1024;
  const size_t rb = moe::row_bytes(type, cols);
  const std::vector<uint8_t> w = make_weights(type, rows, cols, rows, 5);
  const std::vector<float> x = gaussian(cols * tokens, 6);
  moe::kernels::ActBuffer act;
  act.convert(tr.vec_dot_type, x.data(), tokens, cols, cols);
  const moe::kernels::MatrixRef m{w.data(), type, rows, cols, rb};
  std::vector<float> y(rows * tokens);
  moe::ThreadPool pool(threads);
  const bool cpu = threads == 1;
  const double pair_s = seconds_per_call([&] { pairwise(tr.vec_dot, m, act, y.data(), pool); }, 3, cpu);
  const moe::kernels::MatrixRef m8{w.data(), type, rows / 8, cols, rb};
  const double ref_s = seconds_per_call([&] { pairwise(tr.vec_dot_ref, m8, act, y.data(), pool); }, 1, cpu) * 8;
  for (auto _ : state) {
    moe::kernels::matmul(m, act, y.data(), rows, pool);
    benchmark::DoNotOptimize(y.data());
  }
  const double flops = 2.0 * rows * cols * tokens;
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  const double own_s = seconds_per_call([&] { moe::kernels::matmul(m, act, y.data(), rows, pool); }, 5, cpu);
  state.counters["x_pairwise"] = pair_s / own_s;
  state.counters["x_scalar"] = ref_s / own_s;
  state.counters["own_GFLOP/s"] = flops / own_s * 1e-9;  // CPU time with 1 thread, wall time with 2
  state.counters["pairwise_GFLOP/s"] = flops / pair_s * 1e-9;
  state.SetLabel(std::string(tr.name) + "/" + std::to_string(threads) + "t/" + std::to_string(tokens) + "tok");
}

void GemmArgs(benchmark::internal::Benchmark* b) {
  for (moe::DType t : kHotTypes)
    for (int th : {1, 2}) b->Args({static_cast<int64_t>(t), th, 64});
  for (moe::DType t : kHotTypes) b->Args({static_cast<int64_t>(t), 1, 1});  // cache-resident matvec
  b->Args({static_cast<int64_t>(moe::DType::Q4_K), 2, 8});
  b->Args({static_cast<int64_t>(moe::DType::Q4_K), 2, 512});
}
BENCHMARK(BM_Gemm)->Apply(GemmArgs)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
