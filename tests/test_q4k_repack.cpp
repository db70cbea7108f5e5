// Tests for Q4_K_R, the in-memory repacked Q4_K layout (kernels/q4k_repack.h):
//  * repack / unrepack are exact inverses on arbitrary bytes (every bit pattern of a Q4_K block is a
//    valid encoding), and dequantizing a repacked block gives the original block's values;
//  * the Q4_K_R kernels (vec_dot and every tile shape: decode rows, prefill tokens, rows past the
//    multi-token block limit) are BIT-identical to the Q4_K kernels on the unrepacked bytes, and the
//    scalar reference matches the Q4_K reference bit for bit;
//  * files: Q4_K_R is not a file type (reader lookup and writer both refuse it).
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "test_data.h"
#include "base/error.h"
#include "base/thread_pool.h"
#include "fixture_util.h"
#include "format/gguf.h"
#include "kernels/q4k_repack.h"
#include "kernels/quant_blocks.h"
#include "runtime/engine.h"
#include "runtime/session.h"
#include "tensor/dtype.h"

using namespace moe;

namespace {

using test::gaussian;
const auto bits = test::float_bits;

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// Q4_K rows from Gaussian data, with finite fp16 scales.
std::vector<uint8_t> q4k_rows(int64_t n, int64_t rows, uint32_t seed) {
  const size_t rb = row_bytes(DType::Q4_K, n);
  std::vector<uint8_t> w(rb * rows);
  const std::vector<float> f = gaussian(n * rows, seed);
  for (int64_t r = 0; r < rows; ++r) quantize_row(DType::Q4_K, f.data() + r * n, w.data() + r * rb, n);
  return w;
}

}  // namespace

TEST(Q4KRepack, RoundTripsAnyBytesAndKeepsValues) {
  constexpr int64_t kBlocks = 64;
  const std::vector<uint8_t> orig = random_bytes(kBlocks * sizeof(quant::BlockQ4_K), 7);
  std::vector<uint8_t> packed(orig.size()), back(orig.size());
  quant::repack_q4k(orig.data(), packed.data(), kBlocks);
  EXPECT_NE(packed, orig);
  quant::unrepack_q4k(packed.data(), back.data(), kBlocks);
  EXPECT_EQ(back, orig);
  // In place gives the same bytes, and the SIMD repack (where it exists) the scalar one's.
  std::vector<uint8_t> inplace = orig, ref(orig.size());
  quant::repack_q4k(inplace.data(), inplace.data(), kBlocks);
  EXPECT_EQ(inplace, packed);
  quant::repack_q4k_ref(orig.data(), ref.data(), kBlocks);
  EXPECT_EQ(ref, packed);

  const std::vector<uint8_t> w = q4k_rows(4 * 256, 4, 11);
  std::vector<uint8_t> wr(w.size());
  quant::repack_q4k(w.data(), wr.data(), static_cast<int64_t>(w.size() / sizeof(quant::BlockQ4_K)));
  const int64_t n = 16 * 256;
  std::vector<float> a(n), b(n);
  dequantize_row(DType::Q4_K, w.data(), a.data(), n);
  dequantize_row(DType::Q4_K_R, wr.data(), b.data(), n);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(bits(a[i]), bits(b[i])) << i;

  // The trait quantizer writes the repacked form of the Q4_K quantizer's output.
  const std::vector<float> f = gaussian(256, 3);
  std::vector<uint8_t> q(sizeof(quant::BlockQ4_K)), qr(q.size()), expect(q.size());
  quantize_row(DType::Q4_K, f.data(), q.data(), 256);
  quantize_row(DType::Q4_K_R, f.data(), qr.data(), 256);
  quant::repack_q4k(q.data(), expect.data(), 1);
  EXPECT_EQ(qr, expect);
}

TEST(Q4KRepack, KernelsBitIdenticalToQ4K) {
  const DTypeTraits& k4 = dtype_traits(DType::Q4_K);
  const DTypeTraits& kr = dtype_traits(DType::Q4_K_R);
  EXPECT_EQ(kr.block_bytes, k4.block_bytes);
  EXPECT_EQ(kr.vec_dot_type, DType::Q8_K);
  for (int64_t n : {int64_t{256}, int64_t{768}, int64_t{2048}, int64_t{65 * 256}}) {
    constexpr int64_t kRows = 9, kTokens = 19;
    const size_t rb = row_bytes(DType::Q4_K, n), ab = row_bytes(DType::Q8_K, n);
    const std::vector<uint8_t> w = q4k_rows(n, kRows, static_cast<uint32_t>(n));
    std::vector<uint8_t> wr(w.size());
    quant::repack_q4k(w.data(), wr.data(), static_cast<int64_t>(w.size() / sizeof(quant::BlockQ4_K)));
    std::vector<uint8_t> act(ab * kTokens);
    const std::vector<float> af = gaussian(n * kTokens, 5);
    for (int64_t t = 0; t < kTokens; ++t) quantize_row(DType::Q8_K, af.data() + t * n, act.data() + t * ab, n);

    for (int64_t r = 0; r < kRows; ++r)
      for (int64_t t = 0; t < kTokens; ++t) {
        const uint8_t* x = w.data() + r * rb;
        const uint8_t* xr = wr.data() + r * rb;
        const uint8_t* y = act.data() + t * ab;
        ASSERT_EQ(bits(kr.vec_dot_ref(n, xr, y)), bits(k4.vec_dot_ref(n, x, y))) << n << " " << r << " " << t;
        // Without the repacked kernels (CPU, or MOE_ISA below avx512) Q4_K_R's vec_dot is the reference
        // (the engine then never repacks), so it matches the Q4_K reference instead of the SIMD kernel.
        const VecDotFn q4k = quant::q4k_repacked_kernels_available() ? k4.vec_dot : k4.vec_dot_ref;
        ASSERT_EQ(bits(kr.vec_dot(n, xr, y)), bits(q4k(n, x, y))) << n << " " << r << " " << t;
      }
    if (!quant::q4k_repacked_kernels_available()) continue;
    ASSERT_NE(kr.vec_dot_tile, nullptr);
    for (int nr : {1, 3, 4, 9})
      for (int nt : {1, 2, 5, 8, 19}) {
        std::vector<float> o4(static_cast<size_t>(nt) * nr), orr(o4.size());
        k4.vec_dot_tile(n, w.data(), rb, nr, act.data(), ab, nt, o4.data(), nr);
        kr.vec_dot_tile(n, wr.data(), rb, nr, act.data(), ab, nt, orr.data(), nr);
        for (size_t i = 0; i < o4.size(); ++i) ASSERT_EQ(bits(orr[i]), bits(o4[i])) << n << " " << nr << "x" << nt << " @" << i;
      }
  }
}

TEST(Q4KRepack, NotAFileType) {
  EXPECT_EQ(find_file_dtype(static_cast<uint32_t>(DType::Q4_K_R)), nullptr);
  EXPECT_NE(find_dtype(static_cast<uint32_t>(DType::Q4_K_R)), nullptr);
  EXPECT_EQ(file_dtype(DType::Q4_K_R), DType::Q4_K);
  EXPECT_EQ(file_dtype(DType::Q6_K), DType::Q6_K);
  gguf::Writer w;
  EXPECT_THROW(w.add_tensor("blk.0.ffn_up_exps.weight", DType::Q4_K_R, {256, 1},
                            std::vector<uint8_t>(sizeof(quant::BlockQ4_K))),
               Error);
}

namespace {

std::vector<float> fixture_logits(const std::string& name, const EngineOptions& o, bool* repacked) {
  const auto ids = test::read_ids(test::ref_path(name, "seq.tok"));
  auto e = Engine::open(test::model_path(name), o);
  *repacked = e->model().layer(0)[Role::ExpUp].type == DType::Q4_K_R ||
              e->model().layer(0)[Role::AttnQ].type == DType::Q4_K_R;
  ThreadPool pool(2);
  Session s(e->model(), e->store(), static_cast<int64_t>(ids.size()));
  return s.eval(ids, pool, true, 512);
}

}  // namespace

// Repacking at load changes the layout, never a result: resident (mapped and pread) and streamed runs
// of the Q4_K_M fixtures give the same logits bit for bit with and without it.
TEST(Q4KRepack, EngineLogitsIdenticalWithAndWithoutRepacking) {
  for (const std::string name : {"tiny-qwen3moe-Q4_K_M", "tiny-mixtral-Q4_K_M"}) {
    EngineOptions plain;
    plain.repack = false;
    bool repacked = true;
    const std::vector<float> want = fixture_logits(name, plain, &repacked);
    EXPECT_FALSE(repacked);
    for (int mode = 0; mode < 3; ++mode) {
      EngineOptions o;
      o.mmap = mode == 1;
      o.force_offload = mode == 2;
      const std::vector<float> got = fixture_logits(name, o, &repacked);
      EXPECT_EQ(repacked, quant::q4k_repacked_kernels_available()) << name;
      EXPECT_EQ(got, want) << name << " mode " << mode;
    }
  }
}
