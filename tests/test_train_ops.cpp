// Finite-difference gradient checks for every primitive op of the trainer. The ops are templates;
// here they run in double, where central differences with h = 1e-6 are accurate to ~1e-9 relative,
// so a tolerance of 1e-6 catches any real error (a wrong term is off by O(1)).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "train/train_ops.h"

namespace moe::train {
namespace {

using Vec = std::vector<double>;

Vec random_vec(size_t n, std::mt19937_64& rng, double scale = 1.0) {
  std::normal_distribution<double> nd(0.0, scale);
  Vec v(n);
  for (double& x : v) x = nd(rng);
  return v;
}

// Checks d(loss)/d(x) for every element of x against central differences. `loss` reads x.
void expect_grad_matches(const char* what, Vec& x, const Vec& analytic, const std::function<double()>& loss,
                         double tol = 1e-6) {
  ASSERT_EQ(x.size(), analytic.size()) << what;
  const double h = 1e-6;
  double max_err = 0, max_ref = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i];
    x[i] = keep + h;
    const double lp = loss();
    x[i] = keep - h;
    const double lm = loss();
    x[i] = keep;
    const double fd = (lp - lm) / (2 * h);
    max_err = std::max(max_err, std::abs(fd - analytic[i]));
    max_ref = std::max(max_ref, std::abs(fd));
  }
  EXPECT_GT(max_ref, 1e-8) << what << ": gradient is identically zero, the check proves nothing";
  EXPECT_LE(max_err, tol * std::max(1.0, max_ref)) << what << ": max |fd - analytic| = " << max_err
                                                   << " (max |grad| " << max_ref << ")";
}

// Loss = sum(out * r) for a fixed random r, so d(loss)/d(out) = r.
double project(const Vec& out, const Vec& r) {
  double s = 0;
  for (size_t i = 0; i < out.size(); ++i) s += out[i] * r[i];
  return s;
}

TEST(TrainOps, LinearGradients) {
  std::mt19937_64 rng(1);
  const int64_t N = 5, in = 7, out = 6;
  Vec X = random_vec(N * in, rng), W = random_vec(out * in, rng), R = random_vec(N * out, rng);
  auto loss = [&] {
    Vec Y(N * out);
    linear_forward<double>(nullptr, X.data(), N, in, W.data(), out, Y.data());
    return project(Y, R);
  };
  Vec dX(X.size(), 0.0), dW(W.size(), 0.0);
  linear_backward<double>(nullptr, X.data(), N, in, W.data(), out, R.data(), dX.data(), dW.data());
  expect_grad_matches("linear dX", X, dX, loss);
  expect_grad_matches("linear dW", W, dW, loss);
}

TEST(TrainOps, LinearThreadedMatchesSerialBitwise) {
  std::mt19937_64 rng(2);
  const int64_t N = 150, in = 33, out = 70;  // several fixed row blocks, with tails
  std::vector<float> X(N * in), W(out * in), R(N * out);
  for (auto* v : {&X, &W, &R})
    for (float& x : *v) x = static_cast<float>(std::normal_distribution<double>()(rng));
  ThreadPool pool(2);
  std::vector<float> y1(N * out), y2(N * out), dx1(N * in, 0), dx2(N * in, 0), dw1(out * in, 0), dw2(out * in, 0);
  linear_forward<float>(nullptr, X.data(), N, in, W.data(), out, y1.data());
  linear_forward<float>(&pool, X.data(), N, in, W.data(), out, y2.data());
  linear_backward<float>(nullptr, X.data(), N, in, W.data(), out, R.data(), dx1.data(), dw1.data());
  linear_backward<float>(&pool, X.data(), N, in, W.data(), out, R.data(), dx2.data(), dw2.data());
  EXPECT_EQ(y1, y2);
  EXPECT_EQ(dx1, dx2);
  EXPECT_EQ(dw1, dw2);
}

// The float linear layers run on BLAS; the double loops (checked above by finite differences) are
// their reference. Backward accumulates, so start the gradients from nonzero values.
TEST(TrainOps, LinearFloatBlasMatchesDoubleReference) {
  std::mt19937_64 rng(3);
  const int64_t N = 131, in = 96, out = 75;
  Vec X = random_vec(N * in, rng), W = random_vec(out * in, rng), R = random_vec(N * out, rng),
      dX0 = random_vec(N * in, rng), dW0 = random_vec(out * in, rng);
  auto to_float = [](const Vec& v) { return std::vector<float>(v.begin(), v.end()); };
  Vec Y(N * out), dX = dX0, dW = dW0;
  linear_forward<double>(nullptr, X.data(), N, in, W.data(), out, Y.data());
  linear_backward<double>(nullptr, X.data(), N, in, W.data(), out, R.data(), dX.data(), dW.data());
  std::vector<float> Xf = to_float(X), Wf = to_float(W), Rf = to_float(R), Yf(N * out), dXf = to_float(dX0),
                     dWf = to_float(dW0);
  ThreadPool pool(2);
  linear_forward<float>(&pool, Xf.data(), N, in, Wf.data(), out, Yf.data());
  linear_backward<float>(&pool, Xf.data(), N, in, Wf.data(), out, Rf.data(), dXf.data(), dWf.data());
  auto max_rel = [](const Vec& ref, const std::vector<float>& got) {
    double err = 0, mag = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      err = std::max(err, std::abs(ref[i] - static_cast<double>(got[i])));
      mag = std::max(mag, std::abs(ref[i]));
    }
    return err / mag;
  };
  EXPECT_LT(max_rel(Y, Yf), 1e-5);
  EXPECT_LT(max_rel(dX, dXf), 1e-5);
  EXPECT_LT(max_rel(dW, dWf), 1e-5);
}

TEST(TrainOps, RmsNormGradients) {
  std::mt19937_64 rng(3);
  const int64_t rows = 4, n = 9;
  Vec x = random_vec(rows * n, rng), w = random_vec(n, rng), R = random_vec(rows * n, rng);
  auto loss = [&] {
    Vec y(rows * n), rs(rows);
    rmsnorm_forward<double>(x.data(), w.data(), y.data(), rs.data(), rows, n, 1e-5f);
    return project(y, R);
  };
  Vec y(rows * n), rs(rows), dx(x.size(), 0.0), dw(w.size(), 0.0);
  rmsnorm_forward<double>(x.data(), w.data(), y.data(), rs.data(), rows, n, 1e-5f);
  rmsnorm_backward<double>(x.data(), w.data(), rs.data(), R.data(), dx.data(), dw.data(), rows, n);
  expect_grad_matches("rmsnorm dx", x, dx, loss);
  expect_grad_matches("rmsnorm dw", w, dw, loss);
}

TEST(TrainOps, RopeGradients) {
  for (bool neox : {false, true}) {
    std::mt19937_64 rng(4);
    const int64_t n = 12;
    Vec x = random_vec(n, rng), cs(n), R = random_vec(n, rng);
    for (int64_t i = 0; i < n / 2; ++i) {
      cs[2 * i] = std::cos(0.3 * (i + 1));
      cs[2 * i + 1] = std::sin(0.3 * (i + 1));
    }
    auto loss = [&] {
      Vec y = x;
      rope_forward<double>(y.data(), cs.data(), n, neox);
      return project(y, R);
    };
    Vec dx = R;
    rope_backward<double>(dx.data(), cs.data(), n, neox);
    expect_grad_matches(neox ? "rope neox" : "rope normal", x, dx, loss);
  }
}

TEST(TrainOps, CausalGqaAttentionGradients) {
  std::mt19937_64 rng(5);
  const AttnShape a{2, 5, 4, 2, 3, 1.0 / std::sqrt(3.0)};
  const int64_t N = a.B * a.T, qd = a.n_head * a.hd, kvd = a.n_kv * a.hd;
  Vec q = random_vec(N * qd, rng), k = random_vec(N * kvd, rng), v = random_vec(N * kvd, rng),
      R = random_vec(N * qd, rng);
  auto loss = [&] {
    Vec P(a.B * a.n_head * a.T * a.T), out(N * qd);
    attention_forward<double>(nullptr, a, q.data(), k.data(), v.data(), P.data(), out.data());
    return project(out, R);
  };
  Vec P(a.B * a.n_head * a.T * a.T), out(N * qd), dq(q.size(), 0.0), dk(k.size(), 0.0), dv(v.size(), 0.0);
  attention_forward<double>(nullptr, a, q.data(), k.data(), v.data(), P.data(), out.data());
  attention_backward<double>(nullptr, a, q.data(), k.data(), v.data(), P.data(), out.data(), R.data(), dq.data(),
                             dk.data(), dv.data());
  expect_grad_matches("attention dq", q, dq, loss);
  expect_grad_matches("attention dk", k, dk, loss);
  expect_grad_matches("attention dv", v, dv, loss);
  // Causality: the first token's output depends on the first key/value only.
  Vec P2(P.size()), out2(out.size());
  Vec k2 = k;
  k2[kvd * 3] += 1.0;  // token 3 of sequence 0
  attention_forward<double>(nullptr, a, q.data(), k2.data(), v.data(), P2.data(), out2.data());
  for (int64_t i = 0; i < 3 * qd; ++i) EXPECT_EQ(out[i], out2[i]) << "future key changed position " << i / qd;
}

TEST(TrainOps, SwigluGradients) {
  std::mt19937_64 rng(6);
  const int64_t n = 11;
  Vec a = random_vec(n, rng, 2.0), u = random_vec(n, rng), R = random_vec(n, rng);
  auto loss = [&] {
    Vec h(n);
    swiglu_forward<double>(a.data(), u.data(), h.data(), n);
    return project(h, R);
  };
  Vec da(n, 0.0), du(n, 0.0);
  swiglu_backward<double>(a.data(), u.data(), R.data(), da.data(), du.data(), n);
  expect_grad_matches("swiglu da", a, da, loss);
  expect_grad_matches("swiglu du", u, du, loss);
}

TEST(TrainOps, SoftmaxAndLogsumexpGradients) {
  std::mt19937_64 rng(7);
  const int64_t n = 8;
  Vec z = random_vec(n, rng), R = random_vec(n, rng);
  auto loss = [&] {
    Vec p = z;
    const double lse = softmax_row<double>(p.data(), n);
    return project(p, R) + 0.7 * lse * lse;  // the z-loss term uses lse^2
  };
  Vec p = z;
  const double lse = softmax_row<double>(p.data(), n);
  Vec dz(n, 0.0);
  softmax_backward_row<double>(p.data(), R.data(), dz.data(), n);
  for (int64_t i = 0; i < n; ++i) dz[i] += 2 * 0.7 * lse * p[i];  // d lse / dz = p
  expect_grad_matches("softmax + lse^2", z, dz, loss);
}

TEST(TrainOps, CrossEntropyGradients) {
  std::mt19937_64 rng(8);
  const int64_t N = 3, V = 7;
  Vec z = random_vec(N * V, rng);
  const std::vector<int32_t> targets = {2, 6, 0};
  auto loss = [&] {
    Vec t = z;
    return cross_entropy_inplace<double>(nullptr, t.data(), targets.data(), N, V);
  };
  Vec g = z;
  const double l = cross_entropy_inplace<double>(nullptr, g.data(), targets.data(), N, V);
  EXPECT_GT(l, 0.0);
  expect_grad_matches("cross-entropy", z, g, loss);
}

}  // namespace
}  // namespace moe::train
