// Forward and backward of the primitive ops the trainer is built from. Each op is a template over the
// scalar type: training runs in float, and the gradient-check tests run the very same code in double,
// where finite differences are accurate enough for tight tolerances.
//
// Conventions: matrices are row-major in ggml order, W[out][in] (a GGUF tensor with dims {in, out}).
// Backward functions ACCUMULATE into parameter gradients and into input gradients (callers zero them),
// so several consumers of one activation can add their contributions.
//
// Determinism: every output element is written by exactly one thread, in a fixed summation order, so
// results do not depend on the thread count or on scheduling.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "base/thread_pool.h"

namespace moe::train {

// Runs fn(begin, end) over [0, n) in chunks, on the pool when given (nullptr: on the caller).
inline void parallel_chunks(ThreadPool* pool, int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (!pool || pool->size() == 1 || n <= grain) {
    fn(0, n);
    return;
  }
  pool->parallel_for(n, grain, [&](int64_t b, int64_t e, int) { fn(b, e); });
}

// Four independent accumulators: the compiler can vectorize without reassociating a single sum.
template <typename Real>
inline Real dot(const Real* a, const Real* b, int64_t n) {
  Real s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; ++i) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

template <typename Real>
inline void axpy(Real* y, Real a, const Real* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// float versions with explicit 4-wide vectors (GCC/Clang vector extensions, SSE2 at the baseline
// ISA): -O2 does not vectorize the reductions by itself, and these two loops are nearly all the
// trainer's time. The summation order is fixed, so results stay deterministic.
typedef float F32x4 __attribute__((vector_size(16)));

inline F32x4 load4(const float* p) {
  F32x4 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

template <>
inline float dot<float>(const float* a, const float* b, int64_t n) {
  F32x4 s0 = {0, 0, 0, 0}, s1 = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    s0 += load4(a + i) * load4(b + i);
    s1 += load4(a + i + 4) * load4(b + i + 4);
  }
  float tail = 0;
  for (; i < n; ++i) tail += a[i] * b[i];
  const F32x4 s = s0 + s1;
  return ((s[0] + s[1]) + (s[2] + s[3])) + tail;
}

template <>
inline void axpy<float>(float* y, float a, const float* x, int64_t n) {
  const F32x4 av = {a, a, a, a};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const F32x4 r = load4(y + i) + av * load4(x + i);
    __builtin_memcpy(y + i, &r, sizeof r);
  }
  for (; i < n; ++i) y[i] += a * x[i];
}

// ---- linear: Y[n][o] = sum_i X[n][i] W[o][i] ----

template <typename Real>
void linear_forward(ThreadPool* pool, const Real* X, int64_t N, int64_t in, const Real* W, int64_t out, Real* Y) {
  // Token blocks outermost so a block of X rows stays in cache while every W row streams past it.
  constexpr int64_t kBlock = 8;
  const int64_t n_blocks = (N + kBlock - 1) / kBlock;
  parallel_chunks(pool, n_blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t n0 = blk * kBlock, n1 = std::min(N, n0 + kBlock);
      for (int64_t o = 0; o < out; ++o) {
        const Real* w = W + o * in;
        for (int64_t n = n0; n < n1; ++n) Y[n * out + o] = dot(X + n * in, w, in);
      }
    }
  });
}

// dX[n] += sum_o dY[n][o] W[o];  dW[o] += sum_n dY[n][o] X[n]. Either output may be null.
template <typename Real>
void linear_backward(ThreadPool* pool, const Real* X, int64_t N, int64_t in, const Real* W, int64_t out,
                     const Real* dY, Real* dX, Real* dW) {
  if (dX) {
    parallel_chunks(pool, N, 4, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        Real* dx = dX + n * in;
        const Real* dy = dY + n * out;
        for (int64_t o = 0; o < out; ++o)
          if (dy[o] != Real(0)) axpy(dx, dy[o], W + o * in, in);
      }
    });
  }
  if (dW) {
    parallel_chunks(pool, out, 8, [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o) {
        Real* dw = dW + o * in;
        for (int64_t n = 0; n < N; ++n) {
          const Real g = dY[n * out + o];
          if (g != Real(0)) axpy(dw, g, X + n * in, in);
        }
      }
    });
  }
}

// float runs on BLAS (linear_blas.cpp); the generic loops above serve double and are its reference.
template <>
void linear_forward<float>(ThreadPool* pool, const float* X, int64_t N, int64_t in, const float* W, int64_t out,
                           float* Y);
template <>
void linear_backward<float>(ThreadPool* pool, const float* X, int64_t N, int64_t in, const float* W, int64_t out,
                            const float* dY, float* dX, float* dW);

// ---- RMSNorm over rows of length n: y = x / sqrt(mean(x^2) + eps) * w ----
// The sum of squares is taken in double and the scale formed in the row type, as the inference
// kernel (kernels::rms_norm) does, so the trainer's float forward matches inference closely.

template <typename Real>
void rmsnorm_forward(const Real* x, const Real* w, Real* y, Real* rstd, int64_t rows, int64_t n, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const Real* xr = x + r * n;
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(xr[i]) * xr[i];
    const Real mean = static_cast<Real>(sum / static_cast<double>(n));
    const Real s = Real(1) / std::sqrt(mean + static_cast<Real>(eps));
    rstd[r] = s;
    for (int64_t i = 0; i < n; ++i) y[r * n + i] = (xr[i] * s) * w[i];
  }
}

// dx += r*w*g - x * r^3/n * sum(g*w*x);  dw += g*x*r.
template <typename Real>
void rmsnorm_backward(const Real* x, const Real* w, const Real* rstd, const Real* dy, Real* dx, Real* dw, int64_t rows,
                      int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const Real* xr = x + r * n;
    const Real* g = dy + r * n;
    const Real s = rstd[r];
    Real gwx = 0;
    for (int64_t i = 0; i < n; ++i) gwx += g[i] * w[i] * xr[i];
    const Real c = gwx * s * s * s / static_cast<Real>(n);
    for (int64_t i = 0; i < n; ++i) {
      dx[r * n + i] += s * w[i] * g[i] - c * xr[i];
      dw[i] += g[i] * xr[i] * s;
    }
  }
}

// ---- RoPE on one head vector. cs holds (cos, sin) pairs for n_rot/2 frequencies of one position. ----

template <typename Real>
void rope_forward(Real* x, const Real* cs, int64_t n_rot, bool neox) {
  const int64_t half = n_rot / 2;
  for (int64_t i = 0; i < half; ++i) {
    const Real c = cs[2 * i], s = cs[2 * i + 1];
    const int64_t a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
    const Real x0 = x[a], x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
  }
}

// The rotation is orthogonal: the backward pass rotates the gradient by the transpose (in place).
template <typename Real>
void rope_backward(Real* dx, const Real* cs, int64_t n_rot, bool neox) {
  const int64_t half = n_rot / 2;
  for (int64_t i = 0; i < half; ++i) {
    const Real c = cs[2 * i], s = cs[2 * i + 1];
    const int64_t a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
    const Real g0 = dx[a], g1 = dx[b];
    dx[a] = g0 * c + g1 * s;
    dx[b] = -g0 * s + g1 * c;
  }
}

// ---- causal attention with GQA over B sequences of T tokens ----
// q: [B*T][n_head*hd], k, v: [B*T][n_kv*hd], P: [B][n_head][T][T] (row i holds keys 0..i),
// out: [B*T][n_head*hd].

struct AttnShape {
  int64_t B, T;
  int n_head, n_kv;
  int64_t hd;
  double scale;
};

template <typename Real>
void attention_forward(ThreadPool* pool, const AttnShape& a, const Real* q, const Real* k, const Real* v, Real* P,
                       Real* out) {
  const int64_t qd = a.n_head * a.hd, kvd = a.n_kv * a.hd;
  const int group = a.n_head / a.n_kv;
  parallel_chunks(pool, a.B * a.n_head, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t b = item / a.n_head;
      const int h = static_cast<int>(item % a.n_head), hk = h / group;
      for (int64_t i = 0; i < a.T; ++i) {
        const Real* qi = q + (b * a.T + i) * qd + h * a.hd;
        Real* p = P + ((b * a.n_head + h) * a.T + i) * a.T;
        Real mx = -INFINITY;
        for (int64_t j = 0; j <= i; ++j) {
          p[j] = dot(qi, k + (b * a.T + j) * kvd + hk * a.hd, a.hd) * static_cast<Real>(a.scale);
          mx = std::max(mx, p[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j <= i; ++j) {
          p[j] = std::exp(p[j] - mx);
          sum += p[j];
        }
        const Real inv = static_cast<Real>(1.0 / sum);
        Real* o = out + (b * a.T + i) * qd + h * a.hd;
        std::fill(o, o + a.hd, Real(0));
        for (int64_t j = 0; j <= i; ++j) {
          p[j] *= inv;
          axpy(o, p[j], v + (b * a.T + j) * kvd + hk * a.hd, a.hd);
        }
        std::fill(p + i + 1, p + a.T, Real(0));
      }
    }
  });
}

// Accumulates dq, dk, dv. One work item per (sequence, kv head) so the kv-head gradients shared by
// a GQA group are written by a single thread.
template <typename Real>
void attention_backward(ThreadPool* pool, const AttnShape& a, const Real* q, const Real* k, const Real* v,
                        const Real* P, const Real* out, const Real* dout, Real* dq, Real* dk, Real* dv) {
  const int64_t qd = a.n_head * a.hd, kvd = a.n_kv * a.hd;
  const int group = a.n_head / a.n_kv;
  const Real scale = static_cast<Real>(a.scale);
  parallel_chunks(pool, a.B * a.n_kv, 1, [&](int64_t i0, int64_t i1) {
    std::vector<Real> ds(static_cast<size_t>(a.T));
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t b = item / a.n_kv;
      const int hk = static_cast<int>(item % a.n_kv);
      for (int h = hk * group; h < (hk + 1) * group; ++h) {
        for (int64_t i = 0; i < a.T; ++i) {
          const int64_t qrow = (b * a.T + i) * qd + h * a.hd;
          const Real* p = P + ((b * a.n_head + h) * a.T + i) * a.T;
          const Real* go = dout + qrow;
          const Real od = dot(go, out + qrow, a.hd);  // sum_j P_ij (dO_i . v_j)
          for (int64_t j = 0; j <= i; ++j) {
            const int64_t krow = (b * a.T + j) * kvd + hk * a.hd;
            const Real dp = dot(go, v + krow, a.hd);
            ds[j] = p[j] * (dp - od) * scale;
            axpy(dv + krow, p[j], go, a.hd);
          }
          for (int64_t j = 0; j <= i; ++j) {
            const int64_t krow = (b * a.T + j) * kvd + hk * a.hd;
            axpy(dq + qrow, ds[j], k + krow, a.hd);
            axpy(dk + krow, ds[j], q + qrow, a.hd);
          }
        }
      }
    }
  });
}

// ---- SwiGLU activation: h = silu(a) * u ----

template <typename Real>
inline Real sigmoid(Real x) {
  return Real(1) / (Real(1) + std::exp(-x));
}

template <typename Real>
void swiglu_forward(const Real* a, const Real* u, Real* h, int64_t n) {
  for (int64_t i = 0; i < n; ++i) h[i] = a[i] / (Real(1) + std::exp(-a[i])) * u[i];
}

// da += dh * u * silu'(a);  du += dh * silu(a), with silu'(a) = s(a) * (1 + a * (1 - s(a))).
template <typename Real>
void swiglu_backward(const Real* a, const Real* u, const Real* dh, Real* da, Real* du, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const Real s = sigmoid(a[i]);
    da[i] += dh[i] * u[i] * s * (Real(1) + a[i] * (Real(1) - s));
    du[i] += dh[i] * a[i] * s;
  }
}

// ---- softmax rows and cross-entropy ----

// In place; returns log(sum(exp(x))) for the z-loss.
template <typename Real>
Real softmax_row(Real* x, int64_t n) {
  Real mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const Real inv = static_cast<Real>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
  return mx + static_cast<Real>(std::log(sum));
}

// dz += p * (dp - sum(p * dp)) for one row of a softmax with output p.
template <typename Real>
void softmax_backward_row(const Real* p, const Real* dp, Real* dz, int64_t n) {
  Real s = 0;
  for (int64_t i = 0; i < n; ++i) s += p[i] * dp[i];
  for (int64_t i = 0; i < n; ++i) dz[i] += p[i] * (dp[i] - s);
}

// Mean cross-entropy over N rows of logits; the logits are replaced by d(loss)/d(logits) in place
// (softmax minus one-hot, over N), which is all the backward pass needs.
template <typename Real>
double cross_entropy_inplace(ThreadPool* pool, Real* logits, const int32_t* targets, int64_t N, int64_t V) {
  std::vector<double> row_loss(static_cast<size_t>(N));
  parallel_chunks(pool, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      Real* z = logits + n * V;
      const int32_t t = targets[n];
      const Real z_target = z[t];
      row_loss[n] = static_cast<double>(softmax_row(z, V)) - static_cast<double>(z_target);
      const Real inv_n = Real(1) / static_cast<Real>(N);
      for (int64_t i = 0; i < V; ++i) z[i] *= inv_n;
      z[t] -= inv_n;
    }
  });
  double loss = 0;
  for (double l : row_loss) loss += l;  // fixed order: deterministic
  return loss / static_cast<double>(N);
}

}  // namespace moe::train
