// kernels/gemm_f32.h: the AVX-512 fp32 product and transpose give their scalar references' bits (one
// fused multiply-add chain per element, in order of k), over row counts that leave every tail tile,
// column counts with masked vectors, k across the kernel's k blocks, strides wider than the operands,
// both modes; and the product agrees with a double-precision evaluation.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/gemm_f32.h"
#include "test_data.h"

using namespace moe;
using test::float_bits;
using test::gaussian;

namespace {

struct Shape {
  int64_t m, n, k;
};

}  // namespace

TEST(GemmF32, AvxBodyMatchesReferenceBitwise) {
  if (!kernels::gemm_f32_fast_here()) GTEST_SKIP() << "no AVX-512 here: gemm_f32 runs the reference";
  for (const Shape& sh : std::vector<Shape>{{1, 1, 1},    {12, 32, 128}, {13, 33, 7},   {256, 256, 128}, {64, 128, 256},
                                            {5, 17, 300},  {11, 48, 513}, {37, 64, 64},  {24, 15, 1},     {3, 100, 0},
                                            {290, 40, 96}, {7, 1, 600}}) {
    for (bool accumulate : {false, true}) {
      const int64_t lda = sh.k + 3, ldb = sh.n + 5, ldc = sh.n + 7;
      const auto a = gaussian(sh.m * lda, 1);
      const auto b = gaussian(std::max<int64_t>(1, sh.k) * ldb, 2);
      const auto c0 = gaussian(sh.m * ldc, 3);
      std::vector<float> want(c0), got(c0);
      kernels::GemmF32 g{.m = sh.m, .n = sh.n, .k = sh.k, .a = a.data(), .lda = lda, .b = b.data(), .ldb = ldb,
                         .c = want.data(), .ldc = ldc, .accumulate = accumulate, .scale = 0.0883883f};
      kernels::gemm_f32_ref(g);
      g.c = got.data();
      kernels::gemm_f32_avx512(g);
      for (int64_t i = 0; i < sh.m; ++i)
        for (int64_t j = 0; j < ldc; ++j) {
          const size_t at = static_cast<size_t>(i * ldc + j);
          if (j >= sh.n) {
            ASSERT_EQ(float_bits(got[at]), float_bits(c0[at])) << "wrote past column n at " << i << "," << j;
            continue;
          }
          ASSERT_EQ(float_bits(got[at]), float_bits(want[at]))
              << sh.m << "x" << sh.n << "x" << sh.k << " accumulate " << accumulate << " at " << i << "," << j;
        }
    }
  }
}

TEST(GemmF32, ReferenceAgreesWithDoublePrecision) {
  const int64_t m = 9, n = 21, k = 130;
  const auto a = gaussian(m * k, 4), b = gaussian(k * n, 5), c0 = gaussian(m * n, 6);
  for (bool accumulate : {false, true}) {
    std::vector<float> c(c0);
    kernels::gemm_f32({.m = m, .n = n, .k = k, .a = a.data(), .lda = k, .b = b.data(), .ldb = n, .c = c.data(), .ldc = n,
                       .accumulate = accumulate, .scale = 0.5f});
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t kk = 0; kk < k; ++kk) s += static_cast<double>(a[i * k + kk]) * b[kk * n + j];
        const double want = accumulate ? c0[i * n + j] + s : 0.5 * s;
        EXPECT_NEAR(c[i * n + j], want, 1e-4) << i << "," << j << " accumulate " << accumulate;
      }
  }
}

TEST(GemmF32, TransposeMatchesReference) {
  for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {16, 16}, {17, 128}, {256, 128}, {5, 37}, {100, 64}}) {
    const int64_t lds = cols + 3, ldd = ((rows + 15) & ~int64_t{15}) + 16;
    const auto src = gaussian(rows * lds, 7);
    std::vector<float> want(static_cast<size_t>(cols * ldd), -1.0f), got(want);
    kernels::transpose_f32_ref(rows, cols, src.data(), lds, want.data(), ldd);
    kernels::transpose_f32(rows, cols, src.data(), lds, got.data(), ldd);
    for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(float_bits(got[i]), float_bits(want[i])) << rows << "x" << cols << " at " << i;
  }
}
