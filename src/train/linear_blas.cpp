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

#include "kernels/blas.h"
#include "train/train_ops.h"

namespace moe::train {

namespace {

// Fixed-size row blocks, whatever the thread count: sgemm's summation order can depend on the
// matrix sizes (small-matrix kernels, tails), so the blocking must not change with -t for results to
// be identical across thread counts and between the pooled and the serial (pool == nullptr) calls.
constexpr int64_t kTokenBlock = 64;
constexpr int64_t kOutBlock = 32;

// Runs fn(first_row, n_rows) over [0, rows) in blocks of `block` rows, the blocks spread over the pool.
template <typename Fn>
void for_each_block(ThreadPool* pool, int64_t rows, int64_t block, const Fn& fn) {
  parallel_chunks(pool, (rows + block - 1) / block, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) fn(b * block, std::min(rows, (b + 1) * block) - b * block);
  });
}

int i32(int64_t v) { return static_cast<int>(v); }

}  // namespace

template <>
void linear_forward<float>(ThreadPool* pool, const float* X, int64_t N, int64_t in, const float* W, int64_t out,
                           float* Y) {
  if (N <= 0 || out <= 0) return;
  kernels::use_single_threaded_blas();
  for_each_block(pool, N, kTokenBlock, [&](int64_t n0, int64_t n) {  // Y[n][o] = X[n] . W[o]
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, i32(n), i32(out), i32(in), 1.0f, X + n0 * in, i32(in), W,
                i32(in), 0.0f, Y + n0 * out, i32(out));
  });
}

template <>
void linear_backward<float>(ThreadPool* pool, const float* X, int64_t N, int64_t in, const float* W, int64_t out,
                            const float* dY, float* dX, float* dW) {
  if (N <= 0 || out <= 0) return;
  kernels::use_single_threaded_blas();
  if (dX)  // dX[N][in] += dY[N][out] W[out][in], split over tokens
    for_each_block(pool, N, kTokenBlock, [&](int64_t n0, int64_t n) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, i32(n), i32(in), i32(out), 1.0f, dY + n0 * out, i32(out),
                  W, i32(in), 1.0f, dX + n0 * in, i32(in));
    });
  if (dW)  // dW[out][in] += dY^T[out][N] X[N][in], split over output rows
    for_each_block(pool, out, kOutBlock, [&](int64_t o0, int64_t m) {
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, i32(m), i32(in), i32(N), 1.0f, dY + o0, i32(out), X,
                  i32(in), 1.0f, dW + o0 * in, i32(in));
    });
}

}  // namespace moe::train
