// Tests for Q8_0_P, the in-memory 16-row panel layout of Q8_0 matrices (kernels/q8_0_panels.h):
//  * pack / unpack are exact inverses on arbitrary bytes, in place too, and a packed row dequantizes to
//    the original row's values;
//  * kernels::matmul_rows over a Q8_0_P matrix equals vec_dot_q8_0_ref on the unpacked rows BIT FOR BIT,
//    for every token count (1, few, more than a register tile and than a token block), for row ranges
//    that cut panels (nothing outside the range written), with arbitrary weight bytes (every quant,
//    -128 included) and finite scales, Gaussian and heavy-tailed activations;
//  * kernels::matmul and matmul_batch with 1 and 2 threads (decode chunks by guided claims) give the same;
//  * an engine that packs the Q8_0 fixtures' experts at load gives the same logits as one that does not
//    (resident, mapped and streamed; prompt batch and decode);
//  * the trait table keeps it out of files and row functions: file_dtype, find_file_dtype, names, and
//    the row functions fail with a message naming the type.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "base/error.h"
#include "base/thread_pool.h"
#include "kernels/matmul.h"
#include "kernels/q8_0_panels.h"
#include "kernels/quant_blocks.h"
#include "model/weights.h"
#include "runtime/engine.h"
#include "runtime/session.h"
#include "tensor/dtype.h"
#include "tensor/fp16.h"
#include "fixture_util.h"
#include "test_data.h"

using namespace moe;

namespace {

const auto bits = test::float_bits;

// Arbitrary Q8_0 bytes with finite scales: every quant value occurs (-128 too).
std::vector<uint8_t> random_q8_0(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> scale(-2.0f, 2.0f);
  const size_t rb = row_bytes(DType::Q8_0, cols);
  std::vector<uint8_t> w(rb * static_cast<size_t>(rows));
  for (auto& b : w) b = static_cast<uint8_t>(rng());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < cols / 32; ++b) {
      const uint16_t h = fp32_to_fp16(scale(rng));
      std::memcpy(w.data() + r * rb + b * sizeof(quant::BlockQ8_0), &h, 2);
    }
  return w;
}

std::vector<uint8_t> packed(std::vector<uint8_t> w, int64_t rows, int64_t cols) {
  quant::pack_q8_0_panels(w.data(), w.data(), rows / quant::kQ8PanelRows, cols);
  return w;
}

// Activations as the engine converts them (ActBuffer): Gaussian, or heavy-tailed (a few large values
// per block push the others' quants towards 0 and the large ones to +-127).
void activations(kernels::ActBuffer& act, int64_t cols, int64_t tokens, uint32_t seed, bool heavy) {
  std::vector<float> x = test::gaussian(cols * tokens, seed);
  if (heavy)
    for (size_t i = 0; i < x.size(); i += 13) x[i] *= 40.0f;
  act.convert(DType::Q8_0, x.data(), tokens, cols, cols);
}

bool kernels_here() { return quant::q8_0_panel_kernels_available(); }

}  // namespace

TEST(Q8_0Panels, PackUnpackAreInversesAndRowsDequantize) {
  for (int64_t cols : {32, 64, 96, 2048}) {
    const int64_t rows = 48;
    const std::vector<uint8_t> w = random_q8_0(rows, cols, 3);
    std::vector<uint8_t> p(w.size()), back(w.size());
    quant::pack_q8_0_panels(w.data(), p.data(), rows / 16, cols);
    EXPECT_NE(p, w);
    EXPECT_EQ(packed(w, rows, cols), p) << "in place";
    std::vector<uint8_t> ref(w.size());
    quant::pack_q8_0_panels_ref(w.data(), ref.data(), rows / 16, cols);
    EXPECT_EQ(ref, p) << "the scalar packing";
    quant::unpack_q8_0_panels(p.data(), back.data(), rows / 16, cols);
    EXPECT_EQ(back, w);
    const size_t rb = row_bytes(DType::Q8_0, cols);
    std::vector<float> want(static_cast<size_t>(cols)), got(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      dequantize_row(DType::Q8_0, w.data() + r * rb, want.data(), cols);
      quant::dequantize_q8_0_panel_row(p.data(), r, cols, got.data());
      for (int64_t c = 0; c < cols; ++c) ASSERT_EQ(bits(got[c]), bits(want[c])) << "row " << r << " col " << c;
    }
  }
  // Byte 64k + 4r + j of block 0 is quant 4k + j of row r, plus 128; the scales follow in row order.
  const std::vector<uint8_t> w = random_q8_0(16, 32, 4);
  const std::vector<uint8_t> p = packed(w, 16, 32);
  EXPECT_EQ(p[64 * 3 + 4 * 5 + 2], static_cast<uint8_t>(w[5 * 34 + 2 + 14] ^ 0x80));
  EXPECT_EQ(p[512 + 2 * 7], w[7 * 34]);
  EXPECT_EQ(p[512 + 2 * 7 + 1], w[7 * 34 + 1]);
}

TEST(Q8_0Panels, MatmulRowsMatchesScalarReferenceBitwise) {
  if (!kernels_here()) GTEST_SKIP() << "no AVX-512 panel kernels on this CPU: Q8_0_P is never used here";
  const int64_t rows = 64, cols = 256;
  const size_t rb = row_bytes(DType::Q8_0, cols);
  const std::vector<uint8_t> w = random_q8_0(rows, cols, 7), p = packed(w, rows, cols);
  const kernels::MatrixRef m{p.data(), DType::Q8_0_P, rows, cols, rb};
  // Whole and cut panels, alone, in pairs (the kernel's tile) and with an odd panel after pairs.
  const std::pair<int64_t, int64_t> ranges[] = {{0, 64}, {5, 37}, {16, 32}, {47, 48}, {0, 1},  {63, 64},
                                                {0, 48}, {5, 60}, {16, 64}, {1, 33}, {17, 31}, {0, 32}};
  for (bool heavy : {false, true})
    for (int64_t nt : {1, 2, 3, 4, 5, 6, 8, 9, 17, 33, 130}) {
      kernels::ActBuffer act;
      activations(act, cols, nt, static_cast<uint32_t>(nt), heavy);
      for (auto [r0, r1] : ranges) {
        const int64_t ys = rows + 5;
        std::vector<float> y(static_cast<size_t>(nt * ys), -7.0f);
        kernels::matmul_rows(m, act, y.data(), ys, r0, r1);
        for (int64_t t = 0; t < nt; ++t)
          for (int64_t r = 0; r < ys; ++r) {
            const float got = y[t * ys + r];
            if (r < r0 || r >= r1) {
              ASSERT_EQ(got, -7.0f) << "wrote row " << r << " outside [" << r0 << ", " << r1 << ")";
              continue;
            }
            const float want = quant::vec_dot_q8_0_ref(cols, w.data() + r * rb, act.row(t));
            ASSERT_EQ(bits(got), bits(want)) << "tokens " << nt << " token " << t << " row " << r << " heavy " << heavy;
          }
      }
    }
}

TEST(Q8_0Panels, KernelDerivesBlockFactsItselfWhenNotGiven) {
  if (!kernels_here()) GTEST_SKIP() << "no AVX-512 panel kernels on this CPU";
  const int64_t rows = 32, cols = 128;
  const size_t rb = row_bytes(DType::Q8_0, cols);
  const std::vector<uint8_t> w = random_q8_0(rows, cols, 9), p = packed(w, rows, cols);
  kernels::ActBuffer act;
  activations(act, cols, 11, 5, true);
  std::vector<float> y(static_cast<size_t>(11 * rows));
  quant::q8_0_panels_gemm_avx512(cols, p.data(), 0, rows, act.row(0), act.row_bytes(), {}, 11, y.data(), rows);
  for (int64_t t = 0; t < 11; ++t)
    for (int64_t r = 0; r < rows; ++r)
      ASSERT_EQ(bits(y[t * rows + r]), bits(quant::vec_dot_q8_0_ref(cols, w.data() + r * rb, act.row(t))));
}

TEST(Q8_0Panels, ThreadedMatmulAndDecodeBatchMatchTheFileLayout) {
  if (!kernels_here()) GTEST_SKIP() << "no AVX-512 panel kernels on this CPU";
  const int64_t rows = 768, cols = 512;
  const size_t rb = row_bytes(DType::Q8_0, cols);
  const std::vector<uint8_t> w = random_q8_0(rows, cols, 13), p = packed(w, rows, cols);
  const kernels::MatrixRef file{w.data(), DType::Q8_0, rows, cols, rb}, pan{p.data(), DType::Q8_0_P, rows, cols, rb};
  for (int threads : {1, 2}) {
    ThreadPool pool(threads);
    for (int64_t nt : {1, 4, 40}) {
      kernels::ActBuffer act;
      activations(act, cols, nt, 21, false);
      std::vector<float> want(static_cast<size_t>(nt * rows)), got(want.size(), -1.0f);
      kernels::matmul(file, act, want.data(), rows, pool);
      kernels::matmul(pan, act, got.data(), rows, pool);
      for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(bits(got[i]), bits(want[i])) << threads << " threads, " << nt << " tokens";
      // Two jobs laid end to end, as a decoded token's experts are.
      const kernels::MatmulJob jobs[2] = {{pan, &act, got.data(), rows}, {file, &act, want.data(), rows}};
      std::vector<int64_t> scratch;
      std::fill(got.begin(), got.end(), -1.0f);
      kernels::matmul_batch(jobs, 2, pool, scratch);
      for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(bits(got[i]), bits(want[i])) << "batch, " << nt << " tokens";
    }
  }
}

TEST(Q8_0Panels, StaysOutOfFilesAndRowFunctions) {
  EXPECT_EQ(file_dtype(DType::Q8_0_P), DType::Q8_0);
  EXPECT_EQ(find_file_dtype(static_cast<uint32_t>(DType::Q8_0_P)), nullptr);
  EXPECT_NE(find_dtype(static_cast<uint32_t>(DType::Q8_0_P)), nullptr);
  EXPECT_FALSE(dtype_from_name("q8_0_p").has_value());
  EXPECT_FALSE(rows_addressable(DType::Q8_0_P));
  EXPECT_EQ(row_bytes(DType::Q8_0_P, 2048), row_bytes(DType::Q8_0, 2048));
  EXPECT_EQ(storage_quantizer(DType::Q8_0_P), nullptr);
  std::vector<uint8_t> w(34);
  float out[32];
  try {
    dequantize_row(DType::Q8_0_P, w.data(), out, 32);
    FAIL() << "dequantize_row of a Q8_0_P row must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("q8_0_p"), std::string::npos) << e.what();
  }
  EXPECT_THROW(dtype_traits(DType::Q8_0_P).vec_dot(32, w.data(), w.data()), Error);
  EXPECT_FALSE(quant::q8_0_panels_fit(40, 64));
  EXPECT_FALSE(quant::q8_0_panels_fit(48, 48));
  EXPECT_TRUE(quant::q8_0_panels_fit(48, 64));
}

namespace {

std::vector<float> fixture_logits(const std::string& name, const EngineOptions& o, int64_t n_batch, bool* packed) {
  const auto ids = test::read_ids(test::ref_path(name, "seq.tok"));
  auto e = Engine::open(test::model_path(name), o);
  *packed = e->model().layer(0)[Role::ExpUp].type == DType::Q8_0_P;
  EXPECT_EQ(e->model().layer(0)[Role::AttnQ].type, *packed ? DType::Q8_0_P : DType::Q8_0) << name;
  // The token embedding is read by rows: it keeps the file's layout.
  EXPECT_EQ(e->model().global(Role::TokenEmbd).type, DType::Q8_0) << name;
  ThreadPool pool(2);
  Session s(e->model(), e->store(), static_cast<int64_t>(ids.size()));
  return s.eval(ids, pool, true, n_batch);
}

}  // namespace

// Packing at load changes the layout, never a result: resident (mapped and pread) and streamed runs
// of the Q8_0 fixtures, as one prompt batch and token by token (decode), give the same logits bit for
// bit with and without it.
TEST(Q8_0Panels, EngineLogitsIdenticalWithAndWithoutPacking) {
  for (const std::string name : {"tiny-qwen3moe-Q8_0", "tiny-mixtral-Q8_0"})
    for (int64_t n_batch : {int64_t{512}, int64_t{1}}) {
      EngineOptions plain;
      plain.repack = false;
      bool packed = true;
      const std::vector<float> want = fixture_logits(name, plain, n_batch, &packed);
      EXPECT_FALSE(packed);
      for (int mode = 0; mode < 3; ++mode) {
        EngineOptions o;
        o.mmap = mode == 1;
        o.force_offload = mode == 2;
        const std::vector<float> got = fixture_logits(name, o, n_batch, &packed);
        EXPECT_EQ(packed, quant::q8_0_panel_kernels_available()) << name;
        EXPECT_EQ(got, want) << name << " mode " << mode << " batch " << n_batch;
      }
    }
}
