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
//  BM_ExpertDecode/{shape}/{threads}: one decoded token's expert work for one MoE layer, as the executor
//    runs it: 8 random experts out of a pool of about 1 GiB, gate and up of all 8 in one matmul_batch and
//    then the 8 down projections in another (Q4_K_R weights). shape 0 = OLMoE-1B-7B experts (1024 x 2048),
//    1 = Qwen3-30B-A3B experts (768 x 2048); 2 and 3 the same with Q6_K down projections, as in half the
//    layers of a Q4_K_M file. Counter x_stream: its GB/s over kernels::matmul on one 256 MiB
//    matrix of the same type and pool, timed in the same run (how much the small matrices cost).
// The activation rows are quantized to vec_dot_type once, outside the timed loop.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstring>
#include <random>
#include <vector>

#include "base/thread_pool.h"
#include "kernels/cpu_features.h"
#include "kernels/matmul.h"
#include "kernels/q4k_repack.h"
#include "kernels/quant_dispatch.h"
#include "tensor/dtype.h"
#include "test_data.h"

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

using moe::test::gaussian;

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
                                moe::DType::Q6_K, moe::DType::Q4_K_R, moe::DType::MXFP4};
const moe::DType kHotTypes[] = {moe::DType::Q4_K, moe::DType::Q4_K_R, moe::DType::Q5_K, moe::DType::Q6_K,
                                moe::DType::Q8_0, moe::DType::Q4_0, moe::DType::MXFP4};

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

// ---- one layer's experts for one token, DRAM-bound -------------------------------------------------

void BM_ExpertDecode(benchmark::State& state) {
  const bool qwen = state.range(0) % 2 == 1;
  const bool down_q6 = state.range(0) >= 2;  // Q4_K_M files keep half the layers' down projections in Q6_K
  const int threads = static_cast<int>(state.range(1));
  constexpr moe::DType type = moe::DType::Q4_K_R;
  const moe::DType down_type = down_q6 ? moe::DType::Q6_K : type;
  if (!moe::quant::q4k_repacked_kernels_available()) {
    state.SkipWithError("no AVX-512 VBMI/GFNI kernels on this CPU");
    return;
  }
  const moe::DTypeTraits& tr = moe::dtype_traits(type);
  const int64_t d = 2048, ff = qwen ? 768 : 1024, k = 8;
  const size_t up_rb = moe::row_bytes(type, d), down_rb = moe::row_bytes(down_type, ff);
  const size_t expert_bytes = 2 * ff * up_rb + d * down_rb;
  const int64_t n_experts = static_cast<int64_t>((1ull << 30) / expert_bytes);
  const std::vector<uint8_t> gate_up = make_weights(type, 2 * ff * n_experts, d, 256, 7);
  const std::vector<uint8_t> down = make_weights(down_type, d * n_experts, ff, 256, 8);
  const std::vector<float> x = gaussian(d, 9), h = gaussian(ff, 10);
  std::vector<moe::kernels::ActBuffer> act_in(k), act_down(k);
  for (int i = 0; i < k; ++i) {
    act_in[i].convert(tr.vec_dot_type, x.data(), 1, d, d);
    act_down[i].convert(moe::dtype_traits(down_type).vec_dot_type, h.data(), 1, ff, ff);
  }
  std::vector<float> y_gate(k * ff), y_up(k * ff), y_down(k * d);
  moe::ThreadPool pool(threads);
  std::vector<moe::kernels::MatmulJob> jobs;
  std::vector<int64_t> scratch;
  std::mt19937 rng(11);
  auto layer = [&] {
    std::vector<int64_t> chosen;
    while (static_cast<int64_t>(chosen.size()) < k) {
      const int64_t e = static_cast<int64_t>(rng() % static_cast<uint64_t>(n_experts));
      if (std::find(chosen.begin(), chosen.end(), e) == chosen.end()) chosen.push_back(e);
    }
    jobs.clear();
    for (int i = 0; i < k; ++i) {
      const uint8_t* g = gate_up.data() + static_cast<size_t>(chosen[i]) * 2 * ff * up_rb;
      jobs.push_back({{g, type, ff, d, up_rb}, &act_in[i], y_gate.data() + i * ff, ff});
      jobs.push_back({{g + ff * up_rb, type, ff, d, up_rb}, &act_in[i], y_up.data() + i * ff, ff});
    }
    moe::kernels::matmul_batch(jobs.data(), jobs.size(), pool, scratch);
    jobs.clear();
    for (int i = 0; i < k; ++i) {
      const uint8_t* w = down.data() + static_cast<size_t>(chosen[i]) * d * down_rb;
      jobs.push_back({{w, down_type, d, ff, down_rb}, &act_down[i], y_down.data() + i * d, d});
    }
    moe::kernels::matmul_batch(jobs.data(), jobs.size(), pool, scratch);
    benchmark::DoNotOptimize(y_down.data());
  };
  constexpr int kLayers = 64;  // per timed call below
  for (auto _ : state) layer();
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * k * expert_bytes));
  const double own_s = seconds_per_call([&] { for (int l = 0; l < kLayers; ++l) layer(); }, 3) / kLayers;
  // Reference: the same bytes as one long matrix.
  const int64_t rows = static_cast<int64_t>((256u << 20) / up_rb) & ~int64_t{3};
  const std::vector<uint8_t> big = make_weights(type, rows, d, 256, 12);
  const moe::kernels::MatrixRef m{big.data(), type, rows, d, up_rb};
  std::vector<float> y(rows);
  const double big_s = seconds_per_call([&] { moe::kernels::matmul(m, act_in[0], y.data(), rows, pool); }, 3);
  const double own_gbps = static_cast<double>(k * expert_bytes) / own_s * 1e-9;
  const double stream_gbps = static_cast<double>(big.size()) / big_s * 1e-9;
  state.counters["own_GB/s"] = own_gbps;
  state.counters["stream_GB/s"] = stream_gbps;
  state.counters["x_stream"] = own_gbps / stream_gbps;
  state.SetLabel(std::string(qwen ? "qwen3-30b" : "olmoe") + (down_q6 ? "/down-q6_K/" : "/") + std::to_string(threads) + "t");
}
BENCHMARK(BM_ExpertDecode)->ArgsProduct({{0, 1, 2, 3}, {1, 2}})->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
