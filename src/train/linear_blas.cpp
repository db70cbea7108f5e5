// The trainer's float linear layers on BLAS (OpenBLAS sgemm): these three products are nearly all of
// training's arithmetic, and a tuned GEMM runs them several times faster than our dot/axpy loops.
// The double instantiation (used by the gradient-check tests) keeps the plain loops in train_ops.h,
// and tests/test_train_ops.cpp checks these against them.
//
// Threading: our pool splits the output into fixed row blocks and each block is one single-threaded
// sgemm, so `-t N` means N threads in all (no BLAS threads on top of ours). Every output element is
// computed by one call over a block that depends only on the sizes, so results are deterministic and
// the same for every thread count.
#include <cblas.h>

#include <mutex>

#include "train/train_ops.h"

namespace moe::train {

namespace {

// OpenBLAS's own threads would oversubscribe the cores our pool already uses.
void use_single_threaded_blas() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

// Fixed-size row blocks, whatever the thread count: sgemm's summation order can depend on the
// matrix sizes (small-matrix kernels, tails), so the blocking must not change with -t for results to
// be identical across thread counts and between the pooled and the serial (pool == nullptr) calls.
constexpr int64_t kTokenBlock = 64;
constexpr int64_t kOutBlock = 32;

}  // namespace

template <>
void linear_forward<float>(ThreadPool* pool, const float* X, int64_t N, int64_t in, const float* W, int64_t out,
                           float* Y) {
  if (N <= 0 || out <= 0) return;
  use_single_threaded_blas();
  const int64_t rows = kTokenBlock;
  const int64_t n_blocks = (N + rows - 1) / rows;
  parallel_chunks(pool, n_blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * rows, n = std::min(N, n0 + rows) - n0;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(out),
                  static_cast<int>(in), 1.0f, X + n0 * in, static_cast<int>(in), W, static_cast<int>(in), 0.0f,
                  Y + n0 * out, static_cast<int>(out));
    }
  });
}

template <>
void linear_backward<float>(ThreadPool* pool, const float* X, int64_t N, int64_t in, const float* W, int64_t out,
                            const float* dY, float* dX, float* dW) {
  if (N <= 0 || out <= 0) return;
  use_single_threaded_blas();
  if (dX) {  // dX[N][in] += dY[N][out] W[out][in], split over tokens
    const int64_t rows = kTokenBlock;
    const int64_t n_blocks = (N + rows - 1) / rows;
    parallel_chunks(pool, n_blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t n0 = b * rows, n = std::min(N, n0 + rows) - n0;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(n), static_cast<int>(in),
                    static_cast<int>(out), 1.0f, dY + n0 * out, static_cast<int>(out), W, static_cast<int>(in), 1.0f,
                    dX + n0 * in, static_cast<int>(in));
      }
    });
  }
  if (dW) {  // dW[out][in] += dY^T[out][N] X[N][in], split over output rows
    const int64_t rows = kOutBlock;
    const int64_t n_blocks = (out + rows - 1) / rows;
    parallel_chunks(pool, n_blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t o0 = b * rows, m = std::min(out, o0 + rows) - o0;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<int>(m), static_cast<int>(in),
                    static_cast<int>(N), 1.0f, dY + o0, static_cast<int>(out), X, static_cast<int>(in), 1.0f,
                    dW + o0 * in, static_cast<int>(in));
      }
    });
  }
}

}  // namespace moe::train
