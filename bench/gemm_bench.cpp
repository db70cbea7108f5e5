// Prefill GEMM micro-benchmarks: the machine's int8 peak and the panel GEMM against it, in one process.
//
//  BM_Int8Peak/{threads}: vpdpbusd on register operands, 12 independent accumulators per thread (the
//    instruction's throughput bound; 128 int8 ops = 64 multiply-adds each). Counter GOPS: int8 ops per
//    second over all threads (CPU time with 1 thread, wall time with 2).
//  BM_PanelGemm/{dtype}/{shape}/{tokens}: quant::panel_gemm_avx512 on one thread over an expert-shaped
//    matrix, shape 0 = Qwen3-30B-A3B gate/up (768 x 2048), 1 = its down projection (2048 x 768),
//    2 = an attention projection (4096 x 2048), for `tokens` tokens, conversion included. Counters:
//    GFLOP/s (2 * rows * cols * tokens / thread CPU time), of_peak (GOPS over BM_Int8Peak's 1-thread
//    figure, measured in the same process just before), x_rows (speed-up over the one-token row
//    kernels run once per token, timed in the same run), x_scalar (over the scalar reference per pair).
// The activations are quantized once, outside the timed loop.
// GCC 12 warns about the intentionally undefined upper halves in its own reduce intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <benchmark/benchmark.h>
#include <immintrin.h>

#include <chrono>
#include <ctime>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cpu_features.h"
#include "kernels/matmul.h"
#include "kernels/q4k_repack.h"
#include "kernels/q8_0_panels.h"
#include "kernels/quant_tile.h"
#include "tensor/dtype.h"

namespace {

double thread_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// 12 independent vpdpbusd chains on registers; returns a value that depends on all of them.
__attribute__((target("avx512f,avx512bw,avx512vnni"), noinline)) int64_t dpbusd_loop(int64_t iters) {
  __m512i a[12];
  for (int k = 0; k < 12; ++k) a[k] = _mm512_set1_epi32(k);
  __m512i w = _mm512_set1_epi8(3), y = _mm512_set1_epi8(5);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int k = 0; k < 12; ++k) a[k] = _mm512_dpbusd_epi32(a[k], w, y);
    __asm__ volatile("" : "+v"(w), "+v"(y));
  }
  __m512i s = a[0];
  for (int k = 1; k < 12; ++k) s = _mm512_add_epi32(s, a[k]);
  return _mm512_reduce_add_epi32(s);
}
constexpr double kOpsPerIter = 12.0 * 128.0;

// Best of 3 single-thread measurements, in int8 GOPS (thread CPU time).
double int8_peak_gops_1t() {
  constexpr int64_t iters = 20'000'000;
  double best = 1e30;
  for (int r = 0; r < 3; ++r) {
    const double t0 = thread_cpu_seconds();
    benchmark::DoNotOptimize(dpbusd_loop(iters));
    best = std::min(best, thread_cpu_seconds() - t0);
  }
  return kOpsPerIter * static_cast<double>(iters) / best * 1e-9;
}

bool vnni_ok() { return moe::cpu_features().has_avx512_kernels(); }

void BM_Int8Peak(benchmark::State& state) {
  if (!vnni_ok()) {
    state.SkipWithError("no AVX-512 VNNI");
    return;
  }
  const int threads = static_cast<int>(state.range(0));
  constexpr int64_t iters = 10'000'000;
  for (auto _ : state) {
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back([] { benchmark::DoNotOptimize(dpbusd_loop(iters)); });
    benchmark::DoNotOptimize(dpbusd_loop(iters));
    for (auto& th : pool) th.join();
  }
  state.counters["GOPS"] = benchmark::Counter(kOpsPerIter * iters * threads * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(std::to_string(threads) + "t");
}
BENCHMARK(BM_Int8Peak)->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Int8Peak)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

std::vector<uint8_t> make_weights(moe::DType type, int64_t rows, int64_t cols, uint32_t seed) {
  const moe::DType file_type = moe::file_dtype(type);
  const size_t rb = moe::row_bytes(type, cols);
  std::vector<uint8_t> w(rb * rows);
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> row(cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (auto& v : row) v = dist(rng);
    moe::dtype_traits(file_type).quantize(row.data(), w.data() + r * rb, cols);
  }
  if (type == moe::DType::Q4_K_R) moe::quant::repack_q4k(w.data(), w.data(), rows * (cols / 256));
  if (type == moe::DType::Q8_0_P) moe::quant::pack_q8_0_panels(w.data(), w.data(), rows / moe::quant::kQ8PanelRows, cols);
  return w;
}

// n copies of one expert-shaped matrix, back to back: cycling through more of them than the L3 holds
// makes every call read its weights from DRAM, as a prefill or a decode step does.
struct ExpertCopies {
  ExpertCopies(moe::DType type, int64_t rows, int64_t cols, int n) : bytes(moe::row_bytes(type, cols) * rows) {
    const std::vector<uint8_t> one = make_weights(type, rows, cols, 5);
    w.resize(bytes * static_cast<size_t>(n));
    for (int e = 0; e < n; ++e) std::copy(one.begin(), one.end(), w.begin() + static_cast<ptrdiff_t>(e * bytes));
  }
  const uint8_t* at(int e) const { return w.data() + static_cast<size_t>(e) * bytes; }
  size_t bytes;
  std::vector<uint8_t> w;
};

template <class F>
double cpu_seconds_per_call(F&& fn, int reps) {
  fn();
  const double c0 = thread_cpu_seconds();
  for (int i = 0; i < reps; ++i) fn();
  return (thread_cpu_seconds() - c0) / reps;
}

// Whether this CPU runs the AVX-512 panel GEMM for the type (else the benchmark is skipped, saying so).
bool panel_gemm_here(benchmark::State& state, moe::DType type) {
  const moe::DTypeTraits& tr = moe::dtype_traits(type);
  if (vnni_ok() && moe::best_isa() == moe::Isa::Avx512 &&
      ((tr.vec_dot_tile && moe::quant::has_panel_gemm(type)) || type == moe::DType::Q8_0_P))
    return true;
  state.SkipWithError("no AVX-512 panel GEMM for this type here");
  return false;
}

// nt tokens of Gaussian activations (fixed seed), quantized for the type's vec_dot.
void gaussian_activations(moe::DType type, int64_t cols, int nt, moe::kernels::ActBuffer& act) {
  std::mt19937 rng(6);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(cols * nt));
  for (auto& v : x) v = dist(rng);
  act.convert(moe::dtype_traits(type).vec_dot_type, x.data(), nt, cols, cols);
}

// "q8_0/768x2048/32tok": the label of a benchmark over one weight shape and token count.
std::string shape_label(moe::DType type, int64_t rows, int64_t cols, int nt) {
  return std::string(moe::dtype_traits(type).name) + "/" + std::to_string(rows) + "x" + std::to_string(cols) + "/" +
         std::to_string(nt) + "tok";
}

// An expert matrix's copies, cycled so that every call reads its weights from DRAM, the tokens'
// quantized activations and the output.
struct ExpertCase {
  ExpertCase(moe::DType t, int64_t r, int64_t c, int tokens, int experts)
      : type(t), rows(r), cols(c), nt(tokens), rb(moe::row_bytes(t, c)), w(t, r, c, experts),
        y(static_cast<size_t>(r * tokens)) {
    gaussian_activations(type, cols, nt, act);
  }
  moe::DType type;
  int64_t rows, cols;
  int nt;
  size_t rb;
  ExpertCopies w;
  moe::kernels::ActBuffer act;
  std::vector<float> y;
};

void BM_PanelGemm(benchmark::State& state) {
  const auto type = static_cast<moe::DType>(state.range(0));
  const int shape = static_cast<int>(state.range(1));
  const int nt = static_cast<int>(state.range(2));
  const moe::DTypeTraits& tr = moe::dtype_traits(type);
  if (!panel_gemm_here(state, type)) return;
  const int64_t rows = shape == 0 ? 768 : shape == 1 ? 2048 : 4096, cols = shape == 1 ? 768 : 2048;
  const size_t rb = moe::row_bytes(type, cols);
  const std::vector<uint8_t> w = make_weights(type, rows, cols, 5);
  moe::kernels::ActBuffer act;
  gaussian_activations(type, cols, nt, act);
  std::vector<float> y(static_cast<size_t>(rows * nt));
  auto gemm = [&] {
    moe::quant::panel_gemm_avx512(type, cols, w.data(), rb, static_cast<int>(rows), act.row(0), act.row_bytes(),
                                  act.block_facts(0), nt, y.data(), rows);
    benchmark::DoNotOptimize(y.data());
  };
  // The row kernels, one token at a time (what a batch cost before the GEMM, minus its tile reuse).
  auto rows_per_token = [&] {
    for (int t = 0; t < nt; ++t)
      tr.vec_dot_tile(cols, w.data(), rb, static_cast<int>(rows), act.row(t), act.row_bytes(), 1, y.data() + t * rows, rows);
    benchmark::DoNotOptimize(y.data());
  };
  auto scalar = [&] {  // an eighth of the rows
    for (int64_t r = 0; r < rows / 8; ++r)
      for (int t = 0; t < nt; ++t) y[t * rows + r] = tr.vec_dot_ref(cols, w.data() + r * rb, act.row(t));
    benchmark::DoNotOptimize(y.data());
  };
  const double peak = int8_peak_gops_1t();
  const double rows_s = cpu_seconds_per_call(rows_per_token, 2);
  const double scalar_s = cpu_seconds_per_call(scalar, 1) * 8;
  for (auto _ : state) gemm();
  const double flops = 2.0 * static_cast<double>(rows * cols) * nt;
  const double own_s = cpu_seconds_per_call(gemm, 5);
  state.counters["GFLOP/s"] = flops / own_s * 1e-9;
  state.counters["of_peak"] = flops / own_s * 1e-9 / peak;
  state.counters["peak_GOPS"] = peak;
  state.counters["x_rows"] = rows_s / own_s;
  state.counters["x_scalar"] = scalar_s / own_s;
  state.SetLabel(shape_label(type, rows, cols, nt));
}

void PanelArgs(benchmark::internal::Benchmark* b) {
  const moe::DType types[] = {moe::DType::Q4_K, moe::DType::Q4_K_R, moe::DType::Q6_K, moe::DType::Q8_0,
                              moe::DType::Q5_K, moe::DType::Q4_0};
  for (moe::DType t : types)
    for (int nt : {8, 32, 128}) b->Args({static_cast<int64_t>(t), 0, nt});
  for (moe::DType t : {moe::DType::Q4_K, moe::DType::Q6_K, moe::DType::Q8_0}) b->Args({static_cast<int64_t>(t), 1, 32});
  for (moe::DType t : {moe::DType::Q4_K_R, moe::DType::Q8_0}) b->Args({static_cast<int64_t>(t), 2, 112});
}
BENCHMARK(BM_PanelGemm)->Apply(PanelArgs)->Unit(benchmark::kMillisecond);

// BM_PrefillExpert/{dtype}/{shape}/{tokens}: one expert matrix of a prefill as the executor multiplies
// it: kernels::matmul_rows over the chunks of rows matmul hands each thread, shape 0 = Qwen3-30B-A3B
// gate/up (768 x 2048), 1 = down (2048 x 768), 32 tokens (a 512-token prompt gives each of 128 experts
// 32 on average) or more. The matrices cycle through 64 experts' copies (more than the L3), so every
// call reads its weights from DRAM, as a prefill does: this is what the panel conversion's prefetching
// is for, which BM_PanelGemm (one matrix, from cache) cannot show. q8_0 against q8_0_p (the same
// matrices packed at load, kernels/q8_0_panels.h) also at 1, 2, 4 and 8 tokens: a decoded token and a
// batched decode step, where q8_0 takes its row kernels. Counter GFLOP/s: thread CPU time.
void BM_PrefillExpert(benchmark::State& state) {
  const auto type = static_cast<moe::DType>(state.range(0));
  const int shape = static_cast<int>(state.range(1));
  if (!panel_gemm_here(state, type)) return;
  constexpr int kExperts = 64;
  ExpertCase c(type, shape == 0 ? 768 : 2048, shape == 0 ? 2048 : 768, static_cast<int>(state.range(2)), kExperts);
  moe::kernels::MatrixRef m{nullptr, type, c.rows, c.cols, c.rb};
  const int64_t grain = moe::kernels::matmul_row_grain(m);
  int next = 0;
  auto expert = [&] {
    m.data = c.w.at(next++ % kExperts);
    for (int64_t r = 0; r < c.rows; r += grain)
      moe::kernels::matmul_rows(m, c.act, c.y.data(), c.rows, r, std::min(c.rows, r + grain));
    benchmark::DoNotOptimize(c.y.data());
  };
  double s = 0;
  for (auto _ : state) s += cpu_seconds_per_call(expert, kExperts);
  const double flops = 2.0 * static_cast<double>(c.rows * c.cols) * c.nt;
  state.counters["GFLOP/s"] = flops / (s / static_cast<double>(state.iterations())) * 1e-9;
  state.counters["us"] = s / static_cast<double>(state.iterations()) * 1e6;
  state.SetLabel(shape_label(type, c.rows, c.cols, c.nt));
}

void PrefillExpertArgs(benchmark::internal::Benchmark* b) {
  for (moe::DType t : {moe::DType::Q8_0, moe::DType::Q8_0_P, moe::DType::Q4_K_R, moe::DType::Q6_K})
    for (int shape : {0, 1})
      for (int nt : {32, 128}) b->Args({static_cast<int64_t>(t), shape, nt});
  // Q8_0 against its panel layout at one token (decode) and a few (a batched decode step).
  for (moe::DType t : {moe::DType::Q8_0, moe::DType::Q8_0_P})
    for (int nt : {1, 2, 4, 8}) b->Args({static_cast<int64_t>(t), 0, nt});
}
BENCHMARK(BM_PrefillExpert)->Apply(PrefillExpertArgs)->Unit(benchmark::kMillisecond);

}  // namespace

// BM_FewTokens/{dtype}/{shape}/{tokens}: an expert's few rows of a batched decode step (a server step of
// 8 streams gives each of ~42 experts 1-3 tokens). The matrices cycle through 48 experts' worth of
// weights (more than the L3), so every call reads its weights from DRAM as decode does. Compares the
// panel GEMM (which converts every weight block for the tokens) with the tile drivers' few-token path
// over row groups of 16, as kernels::matmul calls it below quant_tile.h's kPanelMinTokens: Q4_K, Q4_K_R,
// Q5_K and Q6_K decode each block once for up to 4 tokens (k4_tokens, q6_tokens); Q8_0 and Q4_0 run the
// one-token row kernels once per token, from L1 after the first. Counters: us_panel, us_rows (thread CPU time per
// call), x_rows = panel / rows (> 1: the few-token path is faster at this token count).
void BM_FewTokens(benchmark::State& state) {
  const auto type = static_cast<moe::DType>(state.range(0));
  const int shape = static_cast<int>(state.range(1));
  const moe::DTypeTraits& tr = moe::dtype_traits(type);
  if (!panel_gemm_here(state, type)) return;
  // shape 0: OLMoE gate/up (1024 x 2048), 1: its down projection (2048 x 1024).
  constexpr int kExperts = 48;
  ExpertCase c(type, shape == 0 ? 1024 : 2048, shape == 0 ? 2048 : 1024, static_cast<int>(state.range(2)), kExperts);
  int next = 0;
  auto panel = [&] {
    const uint8_t* m = c.w.at(next++ % kExperts);
    moe::quant::panel_gemm_avx512(type, c.cols, m, c.rb, static_cast<int>(c.rows), c.act.row(0), c.act.row_bytes(),
                                  c.act.block_facts(0), c.nt, c.y.data(), c.rows);
    benchmark::DoNotOptimize(c.y.data());
  };
  auto row_kernels = [&] {
    const uint8_t* m = c.w.at(next++ % kExperts);
    constexpr int64_t kGroup = 16;
    for (int64_t r = 0; r < c.rows; r += kGroup)
      tr.vec_dot_tile(c.cols, m + r * c.rb, c.rb, static_cast<int>(std::min(kGroup, c.rows - r)), c.act.row(0),
                      c.act.row_bytes(), c.nt, c.y.data() + r, c.rows);
    benchmark::DoNotOptimize(c.y.data());
  };
  double p = 0, r = 0;
  for (auto _ : state) {
    p += cpu_seconds_per_call(panel, kExperts);
    r += cpu_seconds_per_call(row_kernels, kExperts);
  }
  const double n = static_cast<double>(state.iterations());
  state.counters["us_panel"] = p / n * 1e6;
  state.counters["us_rows"] = r / n * 1e6;
  state.counters["x_rows"] = p / r;
  state.SetLabel(shape_label(type, c.rows, c.cols, c.nt));
}

void FewTokenArgs(benchmark::internal::Benchmark* b) {
  for (moe::DType t : {moe::DType::Q4_K_R, moe::DType::Q4_K, moe::DType::Q6_K, moe::DType::Q8_0})
    for (int shape : {0, 1})
      for (int nt : {2, 3, 4, 6, 12}) b->Args({static_cast<int64_t>(t), shape, nt});
}
BENCHMARK(BM_FewTokens)->Apply(FewTokenArgs)->Unit(benchmark::kMillisecond);

// BM_RouterF32/{tokens}: an F32 router (Qwen3-30B-A3B: 128 experts x 2048) over a prompt batch, one
// thread, as kernels::matmul_rows runs it: the F32 tile kernel (rows x tokens, vec_dot_f32_512's
// arithmetic per pair) against the per-pair vec_dot loop it replaced, timed alternately in the same run.
// Counters: GFLOP/s of the tile, x_pairs = per-pair time / tile time.
void BM_RouterF32(benchmark::State& state) {
  const int nt = static_cast<int>(state.range(0));
  const moe::DTypeTraits& tr = moe::dtype_traits(moe::DType::F32);
  if (tr.vec_dot_tile == nullptr) {
    state.SkipWithError("no F32 tile kernel at this ISA");
    return;
  }
  const int64_t rows = 128, cols = 2048;
  std::mt19937 rng(5);
  std::normal_distribution<float> g;
  std::vector<float> w(static_cast<size_t>(rows * cols)), x(static_cast<size_t>(nt * cols));
  for (float& v : w) v = g(rng);
  for (float& v : x) v = g(rng);
  moe::kernels::ActBuffer act;
  act.convert(moe::DType::F32, x.data(), nt, cols, cols);
  const moe::kernels::MatrixRef m{reinterpret_cast<const uint8_t*>(w.data()), moe::DType::F32, rows, cols,
                                  static_cast<size_t>(cols) * sizeof(float)};
  std::vector<float> y(static_cast<size_t>(rows * nt));
  auto tile = [&] {
    moe::kernels::matmul_rows(m, act, y.data(), rows, 0, rows);
    benchmark::DoNotOptimize(y.data());
  };
  auto pairs = [&] {
    for (int64_t r = 0; r < rows; ++r)
      for (int t = 0; t < nt; ++t) y[t * rows + r] = tr.vec_dot(cols, w.data() + r * cols, act.row(t));
    benchmark::DoNotOptimize(y.data());
  };
  double a = 0, b = 0;
  for (auto _ : state) {
    a += cpu_seconds_per_call(tile, 1);
    b += cpu_seconds_per_call(pairs, 1);
  }
  state.counters["GFLOP/s"] = 2.0 * static_cast<double>(rows * cols * nt) * static_cast<double>(state.iterations()) / a * 1e-9;
  state.counters["x_pairs"] = b / a;
}
BENCHMARK(BM_RouterF32)->Arg(32)->Arg(512)->Unit(benchmark::kMillisecond);
