// Tests for the multi-row / multi-token tile kernels, the SIMD activation quantizers, the matmul
// driver and the thread pool.
//
//  * Tile kernels: every output must equal the type's vec_dot on the same (row, token) pair BIT FOR BIT
//    (the kernels are written so that each pair sees the same float operations whatever the tile shape),
//    for all tile shapes, odd block counts and row / token counts that are not multiples of the tile.
//    Against the scalar reference the tolerance is the one of QuantVecDot.SimdMatchesReference: 2e-6 of
//    sum |w_i * a_i| (exact integer block sums; only the float summation order across blocks differs).
//  * matmul: identical bits for 1 and 2 threads, for one token (decode) and many (prefill), and equal
//    to vec_dot per pair.
//  * Thread pool: fixed and guided chunks cover every index once; guided chunks shrink and respect
//    their floor and alignment.
//  * Activation quantizers: byte-identical to the scalar ones on Gaussian data, on data built to hit
//    rounding ties exactly (x * id = k + 0.5), on blocks whose largest |x| occurs with both signs (Q8_K
//    keeps the first), on zero blocks, and with NaN / inf present.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <random>
#include <vector>

#include "test_data.h"
#include "base/thread_pool.h"
#include "kernels/cpu_features.h"
#include "kernels/matmul.h"
#include "kernels/quant_blocks.h"
#include "kernels/quant_tile.h"
#include "tensor/dtype.h"

using namespace moe;

namespace {

using test::gaussian;
const auto bits = test::float_bits;

const DType kTileTypes[] = {DType::Q4_0, DType::Q8_0, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::MXFP4, DType::F32};

struct Problem {
  int64_t n, rows, tokens;
  size_t wrb, arb;
  std::vector<uint8_t> w, a;
  std::vector<float> wf, af;
};

Problem make_problem(DType t, int64_t n, int64_t rows, int64_t tokens, uint32_t seed) {
  const DTypeTraits& tr = dtype_traits(t);
  Problem p{n, rows, tokens, row_bytes(t, n), row_bytes(tr.vec_dot_type, n), {}, {}, {}, {}};
  p.w.resize(p.wrb * rows);
  p.a.resize(p.arb * tokens);
  p.wf = gaussian(n * rows, seed);
  p.af = gaussian(n * tokens, seed + 1);
  for (int64_t r = 0; r < rows; ++r) tr.quantize(p.wf.data() + r * n, p.w.data() + r * p.wrb, n);
  const DTypeTraits& at = dtype_traits(tr.vec_dot_type);
  for (int64_t i = 0; i < tokens; ++i) at.quantize(p.af.data() + i * n, p.a.data() + i * p.arb, n);
  return p;
}

}  // namespace

TEST(QuantTile, MatchesVecDotBitwiseAndReference) {
  // The trait table holds the AVX-512 kernels only when they are in use (not under MOE_ISA=avx2).
  if (best_isa() != Isa::Avx512) GTEST_SKIP() << "AVX-512 tile kernels not in use (CPU or MOE_ISA)";
  for (DType t : kTileTypes) {
    const DTypeTraits& tr = dtype_traits(t);
    ASSERT_NE(tr.vec_dot_tile, nullptr) << tr.name;
    const int64_t bs = tr.block_elems;
    // 65 K-quant blocks is past the multi-token kernels' block limit (the per-token path).
    for (int64_t n : {bs, 2 * bs, 3 * bs, 8 * bs, bs == 32 ? int64_t{4096 + 32} : int64_t{4096}, 65 * bs}) {
      const int64_t rows = 7, tokens = 19;  // token groups of 8, 8 and 3 in the K-quant kernels
      Problem p = make_problem(t, n, rows, tokens, static_cast<uint32_t>(n) * 31 + static_cast<uint32_t>(t));
      for (int nr = 1; nr <= rows; ++nr) {
        for (int nt = 1; nt <= tokens; ++nt) {
          std::vector<float> out(static_cast<size_t>(tokens * rows), -1.0f);
          tr.vec_dot_tile(n, p.w.data(), p.wrb, nr, p.a.data(), p.arb, nt, out.data(), rows);
          for (int r = 0; r < nr; ++r) {
            for (int i = 0; i < nt; ++i) {
              const float one = tr.vec_dot(n, p.w.data() + r * p.wrb, p.a.data() + i * p.arb);
              ASSERT_EQ(bits(out[i * rows + r]), bits(one)) << tr.name << " n=" << n << " nr=" << nr << " nt=" << nt;
            }
          }
          for (int r = nr; r < rows; ++r) ASSERT_EQ(out[r], -1.0f) << "wrote past nr";
        }
      }
      // Against the scalar reference, with the magnitude of what the kernel sees.
      std::vector<float> wd(n), ad(n);
      for (int r = 0; r < rows; ++r) {
        for (int i = 0; i < tokens; ++i) {
          const uint8_t* wr = p.w.data() + r * p.wrb;
          const uint8_t* ar = p.a.data() + i * p.arb;
          tr.dequantize(wr, wd.data(), n);
          dtype_traits(tr.vec_dot_type).dequantize(ar, ad.data(), n);
          double mag = 0;
          for (int64_t k = 0; k < n; ++k) mag += std::fabs(static_cast<double>(wd[k]) * ad[k]);
          EXPECT_NEAR(tr.vec_dot(n, wr, ar), tr.vec_dot_ref(n, wr, ar), 2e-6 * mag + 1e-6) << tr.name << " n=" << n;
        }
      }
    }
  }
}

TEST(QuantTile, MatmulIsIdenticalForAnyThreadCountAndTokenCount) {
  for (DType t : {DType::Q4_0, DType::Q8_0, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q3_K, DType::F16,
                  DType::MXFP4, DType::F32}) {
    const DTypeTraits& tr = dtype_traits(t);
    const int64_t n = 512, rows = 70;
    for (int64_t tokens : {1, 3, 67}) {
      Problem p = make_problem(t, n, rows, 1, 7);
      const std::vector<float> x = gaussian(n * tokens, 99);
      kernels::ActBuffer act;
      act.convert(tr.vec_dot_type, x.data(), tokens, n, n);
      kernels::MatrixRef m{p.w.data(), t, rows, n, p.wrb};
      std::vector<float> y1(rows * tokens), y2(rows * tokens);
      ThreadPool one(1), two(2);
      kernels::matmul(m, act, y1.data(), rows, one);
      kernels::matmul(m, act, y2.data(), rows, two);
      for (int64_t i = 0; i < tokens; ++i) {
        for (int64_t r = 0; r < rows; ++r) {
          const float want = tr.vec_dot(n, p.w.data() + r * p.wrb, act.row(i));
          ASSERT_EQ(bits(y1[i * rows + r]), bits(want)) << tr.name << " tokens=" << tokens;
          ASSERT_EQ(bits(y2[i * rows + r]), bits(want)) << tr.name << " tokens=" << tokens;
        }
      }
    }
  }
}

// A decoded token's batch is cut by guided claims that span jobs: every row must still be its own vec_dot.
TEST(QuantTile, MatmulBatchOfOneTokenMatchesVecDotPerRow) {
  const int64_t n = 512;
  struct Spec {
    DType t;
    int64_t rows;
  };
  const Spec specs[] = {{DType::Q4_K, 1001}, {DType::Q6_K, 37}, {DType::Q8_0, 700}, {DType::Q4_K, 0}, {DType::Q6_K, 903}};
  std::vector<Problem> problems;
  std::vector<kernels::ActBuffer> acts(std::size(specs));
  const std::vector<float> x = gaussian(n, 5);
  for (size_t i = 0; i < std::size(specs); ++i) {
    problems.push_back(make_problem(specs[i].t, n, std::max<int64_t>(1, specs[i].rows), 1, 11 + static_cast<uint32_t>(i)));
    acts[i].convert(dtype_traits(specs[i].t).vec_dot_type, x.data(), 1, n, n);
  }
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    std::vector<std::vector<float>> ys(std::size(specs));
    std::vector<kernels::MatmulJob> jobs;
    for (size_t i = 0; i < std::size(specs); ++i) {
      ys[i].assign(static_cast<size_t>(specs[i].rows) + 1, -7.0f);
      jobs.push_back({kernels::MatrixRef{problems[i].w.data(), specs[i].t, specs[i].rows, n, problems[i].wrb}, &acts[i],
                      ys[i].data(), specs[i].rows});
    }
    std::vector<int64_t> scratch;
    kernels::matmul_batch(jobs.data(), jobs.size(), pool, scratch);
    for (size_t i = 0; i < std::size(specs); ++i) {
      const DTypeTraits& tr = dtype_traits(specs[i].t);
      for (int64_t r = 0; r < specs[i].rows; ++r)
        ASSERT_EQ(bits(ys[i][r]), bits(tr.vec_dot(n, problems[i].w.data() + r * problems[i].wrb, acts[i].row(0))))
            << tr.name << " job " << i << " row " << r << " threads " << threads;
      ASSERT_EQ(ys[i][specs[i].rows], -7.0f) << "job " << i << " wrote past its rows";
    }
  }
}

// ---- activation quantizers ---------------------------------------------------------------------

namespace {

// Blocks designed to stress the bit-exactness of the SIMD activation quantizers.
std::vector<float> tricky_activations(int64_t n, int block, uint32_t seed) {
  std::vector<float> x = gaussian(n, seed);
  std::mt19937 rng(seed + 5);
  const int64_t nb = n / block;
  for (int64_t b = 0; b < nb; ++b) {
    float* v = x.data() + b * block;
    switch (b % 8) {
      case 0: break;  // plain Gaussian
      case 1:         // amax 127 -> multiplier exactly 1 (Q8_0) and many exact .5 ties
        for (int j = 0; j < block; ++j) v[j] = static_cast<float>(static_cast<int>(rng() % 254) - 127) + 0.5f;
        v[block / 2] = 127.0f;
        for (int j = 0; j < block; ++j) v[j] = std::fmin(v[j], 127.0f);
        break;
      case 2:  // largest |x| with both signs, negative first
        v[3] = -4.0f;
        v[block - 2] = 4.0f;
        break;
      case 3:  // largest |x| with both signs, positive first
        v[1] = 5.0f;
        v[2] = -5.0f;
        break;
      case 4:
        for (int j = 0; j < block; ++j) v[j] = 0.0f;
        break;
      case 5:  // ties for the Q8_K multiplier -127/vmax with vmax = -127
        for (int j = 0; j < block; ++j) v[j] = static_cast<float>(static_cast<int>(rng() % 200) - 100) + 0.5f;
        v[0] = -127.0f;
        break;
      case 6:
        v[block / 3] = std::numeric_limits<float>::quiet_NaN();
        break;
      case 7:
        v[block / 4] = std::numeric_limits<float>::infinity();
        v[block / 4 + 1] = -0.0f;
        break;
    }
  }
  return x;
}

}  // namespace

TEST(QuantActSimd, BitExactWithScalarQuantizers) {
  if (best_isa() != Isa::Avx512) GTEST_SKIP() << "AVX-512 quantizers not in use (CPU or MOE_ISA)";
  struct Case {
    DType t;
    QuantizeFn scalar, simd;
  } cases[] = {{DType::Q8_0, quant::quantize_q8_0, quant::quantize_q8_0_avx512},
               {DType::Q8_1, quant::quantize_q8_1, quant::quantize_q8_1_avx512},
               {DType::Q8_K, quant::quantize_q8_K, quant::quantize_q8_K_avx512}};
  for (const Case& c : cases) {
    EXPECT_EQ(dtype_traits(c.t).quantize, c.simd) << "trait table should use the SIMD quantizer";
    const int block = static_cast<int>(dtype_traits(c.t).block_elems);
    for (uint32_t seed = 0; seed < 20; ++seed) {
      const int64_t n = 16 * 256;
      const std::vector<float> x = seed < 10 ? gaussian(n, seed) : tricky_activations(n, block, seed);
      std::vector<uint8_t> a(row_bytes(c.t, n), 0xAB), b(row_bytes(c.t, n), 0xCD);
      c.scalar(x.data(), a.data(), n);
      c.simd(x.data(), b.data(), n);
      ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size()), 0) << dtype_traits(c.t).name << " seed " << seed;
    }
  }
}

// ---- thread pool --------------------------------------------------------------------------------

TEST(ThreadPoolTest, ParallelForCoversEveryIndexOnce) {
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (int rep = 0; rep < 2000; ++rep) {
      const int64_t n = 1 + rep % 97, grain = 1 + rep % 7;
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      for (auto& h : hits) h.store(0);
      pool.parallel_for(n, grain, [&](int64_t b, int64_t e, int ti) {
        ASSERT_GE(ti, 0);
        ASSERT_LT(ti, threads);
        for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "threads=" << threads << " rep=" << rep;
    }
    // std::function callers still work, and run() reaches every thread.
    std::atomic<int> mask{0};
    const std::function<void(int, int)> fn = [&](int ti, int nt) { mask.fetch_or(1 << ti); EXPECT_EQ(nt, threads); };
    pool.run(fn);
    EXPECT_EQ(mask.load(), (1 << threads) - 1);
  }
}

TEST(ThreadPoolTest, GuidedChunksCoverEveryIndexOnceAndShrink) {
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (int rep = 0; rep < 1000; ++rep) {
      const int64_t n = 1 + (rep * 37) % 3001, min_grain = 1 + rep % 40, align = rep % 3 == 0 ? 4 : 1;
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      for (auto& h : hits) h.store(0);
      std::mutex m;
      std::vector<std::pair<int64_t, int64_t>> chunks;
      pool.parallel_for_guided(n, min_grain, align, [&](int64_t b, int64_t e, int) {
        for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
        std::lock_guard<std::mutex> lock(m);
        chunks.emplace_back(b, e);
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "threads=" << threads << " rep=" << rep;
      if (threads == 1 || n <= min_grain) {
        ASSERT_EQ(chunks.size(), 1u);
        continue;
      }
      std::sort(chunks.begin(), chunks.end());
      const int64_t floor = (min_grain + align - 1) / align * align;
      for (size_t c = 0; c < chunks.size(); ++c) {
        const int64_t len = chunks[c].second - chunks[c].first;
        ASSERT_EQ(chunks[c].first % align, 0) << "chunks start on align";
        if (c + 1 < chunks.size()) {
          ASSERT_GE(len, floor) << "only the last chunk may be shorter than min_grain";
          // A share of what was left, so chunks never grow.
          ASSERT_GE(len, chunks[c + 1].second - chunks[c + 1].first - align) << "rep=" << rep;
        }
      }
      // The first claim takes 1/(2 threads) of the range, not all of it.
      ASSERT_LE(chunks[0].second - chunks[0].first, std::max(floor, n / (2 * threads) + align));
    }
  }
}

TEST(ThreadPoolTest, WakesWorkersThatWentToSleep) {
  ThreadPool pool(2);
  for (int rep = 0; rep < 3; ++rep) {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));  // long enough for the worker to sleep
    std::atomic<int> count{0};
    pool.run([&](int, int) { count.fetch_add(1); });
    EXPECT_EQ(count.load(), 2);
  }
}
