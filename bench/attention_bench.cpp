// Prompt-attention micro-benchmarks (kernels/attention.h), one thread:
//
//  BM_CausalBlock/{keys}/{m}/{heads}: a block of m queries attending `keys` keys (the last block of a
//    prompt that long) for `heads` query heads of one kv head, attended together (kernels/attention.h:
//    stacked, one pass over each chunk of keys) when heads > 1, Qwen3-30B-A3B's layout (head_dim 128;
//    rows of 32 query heads and 4 kv heads interleaved as in the forward pass). Counter GFLOP (per
//    second): 2 * heads * m * keys * (128 + 128) over CPU time, counting the masked part of the diagonal
//    chunk as the kernel computes it.
//  BM_ExpShiftedSum/{isa}: the softmax exponential over a 256-key chunk row, isa 0 the scalar reference,
//    1 the AVX2 body, 2 the AVX-512 body (the same bits). Counter ns_per_exp.
#include <benchmark/benchmark.h>

#include <vector>

#include "kernels/attention.h"
#include "kernels/cpu_features.h"
#include "test_data.h"

namespace {

using moe::test::gaussian;

void BM_CausalBlock(benchmark::State& state) {
  const int64_t keys = state.range(0), m = state.range(1), heads = state.range(2), hd = 128, q_stride = 32 * hd,
                kv_stride = 4 * hd;
  const auto q = gaussian(m * q_stride, 1);
  const auto k = gaussian(keys * kv_stride, 2);
  const auto v = gaussian(keys * kv_stride, 3);
  std::vector<float> out(static_cast<size_t>(m * q_stride)), scratch;
  moe::kernels::CausalBlock b;
  b.q = q.data();
  b.q_stride = q_stride;
  b.k = k.data();
  b.v = v.data();
  b.kv_stride = kv_stride;
  b.m = m;
  b.n_past = keys - m;
  b.head_dim = hd;
  b.scale = 0.088f;
  b.out = out.data();
  b.out_stride = q_stride;
  b.heads = static_cast<int>(heads);
  b.q_head_stride = hd;
  b.out_head_stride = hd;
  for (auto _ : state) {
    moe::kernels::causal_attention_block(b, scratch);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["GFLOP"] = benchmark::Counter(2.0 * static_cast<double>(heads * m * keys * 2 * hd) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_CausalBlock)->ArgsProduct({{512, 2048, 4096}, {64, 128}, {1, 4}})->Unit(benchmark::kMicrosecond);

void BM_ExpShiftedSum(benchmark::State& state) {
  const int64_t isa = state.range(0);
  if ((isa == 1 && !moe::cpu_features().has_avx2_kernels()) || (isa == 2 && !moe::cpu_features().has_avx512_kernels())) {
    state.SkipWithError("the CPU lacks this ISA");
    return;
  }
  const auto body = isa == 2 ? moe::kernels::exp_shifted_sum_avx512
                    : isa == 1 ? moe::kernels::exp_shifted_sum_avx2
                               : moe::kernels::exp_shifted_sum_ref;
  constexpr int64_t n = moe::kernels::kAttnKeyChunk;
  const auto src = gaussian(n, 4);
  std::vector<float> x(src);
  for (auto _ : state) {
    x = src;
    const float s = body(x.data(), n, 3.0f);
    benchmark::DoNotOptimize(s);
  }
  state.counters["ns_per_exp"] = benchmark::Counter(static_cast<double>(n) * 1e-9,
                                                    benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_ExpShiftedSum)->Arg(0)->Arg(1)->Arg(2);

}  // namespace
