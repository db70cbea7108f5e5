// Prompt-attention micro-benchmarks (kernels/attention.h), one thread:
//
//  BM_CausalBlock/{keys}/{m}/{heads}: a block of m queries attending `keys` keys (the last block of a
//    prompt that long) for `heads` query heads of one kv head, attended together (kernels/attention.h:
//    stacked, one pass over each chunk of keys) when heads > 1, Qwen3-30B-A3B's layout (head_dim 128;
//    rows of 32 query heads and 4 kv heads interleaved as in the forward pass). Counter GFLOP (per
//    second): 2 * heads * m * keys * (128 + 128) over CPU time, counting the masked part of the diagonal
//    chunk as the kernel computes it.
//  BM_AttnGemmF32/{product}/{impl}: one chunk's product of a stacked block (256 rows: 64 queries of 4
//    heads; 256 keys; head_dim 128): product 0 the scores (256 x 256, k 128, the keys transposed
//    first, as the kernel does), 1 the values (256 x 128, k 256, accumulating); impl 0 our
//    kernels/gemm_f32.h, 1 OpenBLAS's cblas_sgemm on the untransposed keys. Counter GFLOP (per second).
//  BM_ExpShiftedSum/{isa}: the softmax exponential over a 256-key chunk row, isa 0 the scalar reference,
//    1 the AVX2 body, 2 the AVX-512 body (the same bits). Counter ns_per_exp.
#include <benchmark/benchmark.h>

#include <vector>

#include <cblas.h>

#include "kernels/attention.h"
#include "kernels/blas.h"
#include "kernels/cpu_features.h"
#include "kernels/gemm_f32.h"
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

void BM_AttnGemmF32(benchmark::State& state) {
  const bool scores = state.range(0) == 0, ours = state.range(1) == 0;
  if (ours && !moe::kernels::gemm_f32_fast_here()) {
    state.SkipWithError("no AVX-512 here: gemm_f32 is the scalar reference");
    return;
  }
  moe::kernels::use_single_threaded_blas();
  const int64_t rows = 256, keys = 256, hd = 128;
  const auto q = gaussian(rows * hd, 1), k = gaussian(keys * hd, 2), p = gaussian(rows * keys, 3);
  std::vector<float> kt(static_cast<size_t>(hd * keys)), out(static_cast<size_t>(rows * keys));
  for (auto _ : state) {
    if (scores && ours) {
      moe::kernels::transpose_f32(keys, hd, k.data(), hd, kt.data(), keys);
      moe::kernels::gemm_f32({.m = rows, .n = keys, .k = hd, .a = q.data(), .lda = hd, .b = kt.data(), .ldb = keys,
                              .c = out.data(), .ldc = keys, .accumulate = false, .scale = 0.088f});
    } else if (scores) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, hd, 0.088f, q.data(), hd, k.data(), hd, 0.0f,
                  out.data(), keys);
    } else if (ours) {
      moe::kernels::gemm_f32({.m = rows, .n = hd, .k = keys, .a = p.data(), .lda = keys, .b = k.data(), .ldb = hd,
                              .c = out.data(), .ldc = hd, .accumulate = true});
    } else {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, keys, 1.0f, p.data(), keys, k.data(), hd, 1.0f,
                  out.data(), hd);
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["GFLOP"] = benchmark::Counter(2.0 * static_cast<double>(rows * keys * hd) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_AttnGemmF32)->ArgsProduct({{0, 1}, {0, 1}})->Unit(benchmark::kMicrosecond);

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
