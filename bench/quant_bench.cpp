// Matrix-vector product per weight dtype, one row dot product per output, single thread.
// Arguments: {dtype, isa} with isa 0 = scalar reference, 1 = AVX2, 2 = AVX-512 (skipped when the CPU
// lacks it). Shape: 1024 x 4096 (an expert-sized down/up projection; large enough that the weights do
// not fit in L2). Reports weight bytes read per second (bytes_per_second) and GFLOP/s (2*rows*cols).
// The activation row is quantized to vec_dot_type once, outside the timed loop.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "kernels/cpu_features.h"
#include "kernels/quant_dispatch.h"
#include "tensor/dtype.h"

namespace {

constexpr int64_t kRows = 1024;
constexpr int64_t kCols = 4096;

void BM_QuantMatVec(benchmark::State& state) {
  const auto type = static_cast<moe::DType>(state.range(0));
  const auto isa = static_cast<moe::Isa>(state.range(1));
  const auto& f = moe::cpu_features();
  if ((isa == moe::Isa::Avx2 && !f.has_avx2_kernels()) || (isa == moe::Isa::Avx512 && !f.has_avx512_kernels())) {
    state.SkipWithError("ISA not available on this CPU");
    return;
  }
  const moe::DTypeTraits& tr = moe::dtype_traits(type);
  const moe::DTypeTraits& at = moe::dtype_traits(tr.vec_dot_type);
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> row(kCols);
  const size_t rb = moe::row_bytes(type, kCols);
  std::vector<uint8_t> w(rb * kRows);
  for (int64_t r = 0; r < kRows; ++r) {
    for (auto& v : row) v = dist(rng);
    tr.quantize(row.data(), w.data() + r * rb, kCols);
  }
  for (auto& v : row) v = dist(rng);
  std::vector<uint8_t> act(moe::row_bytes(tr.vec_dot_type, kCols));
  at.quantize(row.data(), act.data(), kCols);
  const moe::VecDotFn dot = moe::quant::vec_dot_for_isa(type, isa);
  std::vector<float> out(kRows);
  for (auto _ : state) {
    for (int64_t r = 0; r < kRows; ++r) out[r] = dot(kCols, w.data() + r * rb, act.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(w.size()));
  state.counters["GFLOP/s"] = benchmark::Counter(static_cast<double>(2 * kRows * kCols) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(std::string(tr.name) + "/" + moe::isa_name(isa));
}

void QuantArgs(benchmark::internal::Benchmark* b) {
  const moe::DType types[] = {moe::DType::F32,  moe::DType::F16,  moe::DType::BF16, moe::DType::Q8_0,
                              moe::DType::Q4_0, moe::DType::Q4_1, moe::DType::Q5_0, moe::DType::Q5_1,
                              moe::DType::Q2_K, moe::DType::Q3_K, moe::DType::Q4_K, moe::DType::Q5_K,
                              moe::DType::Q6_K};
  for (moe::DType t : types) {
    for (int isa = 0; isa <= 2; ++isa) b->Args({static_cast<int64_t>(t), isa});
  }
}

BENCHMARK(BM_QuantMatVec)->Apply(QuantArgs)->Unit(benchmark::kMillisecond);

}  // namespace
