#include "model/reference_forward.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "base/error.h"

namespace moe {

namespace {

using Vec = std::vector<float>;

Vec dequant_row(const WeightView& w, int64_t r, int64_t mat = 0) {
  Vec out(static_cast<size_t>(w.cols));
  dtype_traits(w.type).dequantize(w.row(r, mat), out.data(), w.cols);
  return out;
}

// y = W x for one matrix of a (possibly stacked) weight.
Vec matvec(const WeightView& w, const Vec& x, int64_t mat = 0) {
  Vec y(static_cast<size_t>(w.rows));
  for (int64_t r = 0; r < w.rows; ++r) {
    Vec row = dequant_row(w, r, mat);
    double acc = 0.0;
    for (int64_t c = 0; c < w.cols; ++c) acc += static_cast<double>(row[c]) * x[c];
    y[r] = static_cast<float>(acc);
  }
  return y;
}

Vec rmsnorm(const Vec& x, const float* w, int64_t off, int64_t n, float eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[off + i]) * x[off + i];
  const double inv = 1.0 / std::sqrt(ss / n + eps);
  Vec y(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(x[off + i] * inv * (w ? w[i] : 1.0f));
  return y;
}

const float* f32p(const WeightView& v) { return v ? reinterpret_cast<const float*>(v.data) : nullptr; }

void rotate(float* x, int64_t n_rot, int64_t pos, const ModelSpec& s) {
  const int64_t half = n_rot / 2;
  for (int64_t i = 0; i < half; ++i) {
    const double freq = std::pow(static_cast<double>(s.rope_base), -2.0 * i / static_cast<double>(n_rot));
    const double ang = s.rope_freq_scale * pos * freq;
    const double c = std::cos(ang), sn = std::sin(ang);
    const int64_t a = s.rope_style == RopeStyle::Neox ? i : 2 * i;
    const int64_t b = s.rope_style == RopeStyle::Neox ? i + half : 2 * i + 1;
    const double x0 = x[a], x1 = x[b];
    x[a] = static_cast<float>(x0 * c - x1 * sn);
    x[b] = static_cast<float>(x0 * sn + x1 * c);
  }
}

Vec swiglu_ffn(const WeightView& gate, const WeightView& up, const WeightView& down, const Vec& x, int64_t mat = 0) {
  Vec g = matvec(gate, x, mat), u = matvec(up, x, mat);
  for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(g[i] / (1.0 + std::exp(-static_cast<double>(g[i]))) * u[i]);
  return matvec(down, g, mat);
}

Vec moe_block(const ModelSpec& s, const MoeSpec& m, const LayerWeights& lw, const Vec& x) {
  Vec logits = matvec(lw[Role::Router], x);
  const int E = m.n_expert;
  Vec score(E);
  if (m.gating == Gating::Softmax) {
    const float mx = *std::max_element(logits.begin(), logits.end());
    double sum = 0.0;
    for (int e = 0; e < E; ++e) sum += std::exp(static_cast<double>(logits[e] - mx));
    for (int e = 0; e < E; ++e) score[e] = static_cast<float>(std::exp(static_cast<double>(logits[e] - mx)) / sum);
  } else {
    for (int e = 0; e < E; ++e) score[e] = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(logits[e]))));
  }
  Vec sel = score;
  if (const float* b = f32p(lw[Role::RouterBias]))
    for (int e = 0; e < E; ++e) sel[e] += b[e];
  if (m.n_group > 1) {
    const int per = E / m.n_group;
    std::vector<std::pair<float, int>> groups;
    for (int g = 0; g < m.n_group; ++g) {
      Vec v(sel.begin() + g * per, sel.begin() + (g + 1) * per);
      std::sort(v.rbegin(), v.rend());
      groups.push_back({v[0] + (per > 1 ? v[1] : 0.0f), g});
    }
    std::sort(groups.begin(), groups.end(), [](auto a, auto b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
    std::vector<bool> keep(m.n_group, false);
    for (int i = 0; i < m.topk_group; ++i) keep[groups[i].second] = true;
    for (int e = 0; e < E; ++e)
      if (!keep[e / per]) sel[e] = -INFINITY;
  }
  std::vector<int> order(E);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return sel[a] > sel[b]; });
  const int k = m.n_expert_used;
  Vec w(k);
  double wsum = 0.0;
  for (int j = 0; j < k; ++j) wsum += (w[j] = score[order[j]]);
  Vec out(static_cast<size_t>(s.n_embd), 0.0f);
  for (int j = 0; j < k; ++j) {
    double wj = w[j];
    if (m.norm_topk) wj /= std::max(wsum, 6.103515625e-5);
    wj *= m.route_scale;
    Vec y = swiglu_ffn(lw[Role::ExpGate], lw[Role::ExpUp], lw[Role::ExpDown], x, order[j]);
    for (int64_t i = 0; i < s.n_embd; ++i) out[i] += static_cast<float>(wj * y[i]);
  }
  if (m.n_shared > 0) {
    Vec y = swiglu_ffn(lw[Role::ShexpGate], lw[Role::ShexpUp], lw[Role::ShexpDown], x);
    double g = 1.0;
    if (m.shared_gate == SharedGate::Sigmoid) {
      const float* ws = f32p(lw[Role::ShexpRouter]);
      double z = 0.0;
      for (int64_t i = 0; i < s.n_embd; ++i) z += static_cast<double>(ws[i]) * x[i];
      g = 1.0 / (1.0 + std::exp(-z));
    }
    for (int64_t i = 0; i < s.n_embd; ++i) out[i] += static_cast<float>(g * y[i]);
  }
  return out;
}

}  // namespace

std::vector<float> reference_forward(const Model& model, const std::vector<int32_t>& tokens) {
  const ModelSpec& s = model.spec();
  if (model.experts_deferred()) fail("reference forward: needs a model loaded with its experts in memory");
  const int64_t n = static_cast<int64_t>(tokens.size()), d = s.n_embd, hd = s.head_dim;
  std::vector<Vec> h(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) {
    if (tokens[t] < 0 || tokens[t] >= s.n_vocab) fail("token id {} outside the vocabulary", tokens[t]);
    h[t] = dequant_row(model.global(Role::TokenEmbd), tokens[t]);
    if (s.embedding_scale != 0.0f)
      for (float& v : h[t]) v *= s.embedding_scale;
  }
  for (int il = 0; il < s.n_layer; ++il) {
    const LayerWeights& lw = model.layer(il);
    std::vector<Vec> q(n), k(n), v(n);
    for (int64_t t = 0; t < n; ++t) {
      Vec xn = rmsnorm(h[t], f32p(lw[Role::AttnNorm]), 0, d, s.rms_eps);
      q[t] = matvec(lw[Role::AttnQ], xn);
      k[t] = matvec(lw[Role::AttnK], xn);
      v[t] = matvec(lw[Role::AttnV], xn);
      auto bias = [](Vec& y, const WeightView& b) {
        if (const float* p = f32p(b))
          for (size_t i = 0; i < y.size(); ++i) y[i] += p[i];
      };
      bias(q[t], lw[Role::AttnQBias]);
      bias(k[t], lw[Role::AttnKBias]);
      bias(v[t], lw[Role::AttnVBias]);
      auto norm_heads = [&](Vec& y, int heads, const WeightView& w) {
        if (s.qk_norm == QkNorm::PerHead) {
          for (int hh = 0; hh < heads; ++hh) {
            Vec r = rmsnorm(y, f32p(w), hh * hd, hd, s.rms_eps);
            std::copy(r.begin(), r.end(), y.begin() + hh * hd);
          }
        } else if (s.qk_norm == QkNorm::Full) {
          y = rmsnorm(y, f32p(w), 0, static_cast<int64_t>(y.size()), s.rms_eps);
        }
      };
      norm_heads(q[t], s.n_head, lw[Role::AttnQNorm]);
      norm_heads(k[t], s.n_head_kv, lw[Role::AttnKNorm]);
      for (int hh = 0; hh < s.n_head; ++hh) rotate(q[t].data() + hh * hd, s.n_rot, t, s);
      for (int hh = 0; hh < s.n_head_kv; ++hh) rotate(k[t].data() + hh * hd, s.n_rot, t, s);
    }
    const int group = s.n_head / s.n_head_kv;
    for (int64_t t = 0; t < n; ++t) {
      Vec att(static_cast<size_t>(s.q_dim()));
      for (int hh = 0; hh < s.n_head; ++hh) {
        const int hk = hh / group;
        std::vector<double> p(static_cast<size_t>(t + 1));
        double mx = -INFINITY;
        for (int64_t j = 0; j <= t; ++j) {
          double dotp = 0.0;
          for (int64_t i = 0; i < hd; ++i) dotp += static_cast<double>(q[t][hh * hd + i]) * k[j][hk * hd + i];
          p[j] = dotp * s.kq_scale();
          mx = std::max(mx, p[j]);
        }
        double sum = 0.0;
        for (auto& e : p) sum += (e = std::exp(e - mx));
        for (int64_t i = 0; i < hd; ++i) {
          double acc = 0.0;
          for (int64_t j = 0; j <= t; ++j) acc += p[j] / sum * v[j][hk * hd + i];
          att[hh * hd + i] = static_cast<float>(acc);
        }
      }
      Vec o = matvec(lw[Role::AttnOut], att);
      if (const float* b = f32p(lw[Role::AttnOutBias]))
        for (int64_t i = 0; i < d; ++i) o[i] += b[i];
      q[t] = o;  // q[t] is no longer needed: keep token t's attention output there
    }
    const float rs = s.residual_scale != 0.0f ? s.residual_scale : 1.0f;
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t i = 0; i < d; ++i) h[t][i] += rs * q[t][i];
      Vec xn = rmsnorm(h[t], f32p(lw[Role::FfnNorm]), 0, d, s.rms_eps);
      const LayerSpec& L = s.layers[il];
      Vec y = L.is_moe ? moe_block(s, L.moe, lw, xn) : swiglu_ffn(lw[Role::FfnGate], lw[Role::FfnUp], lw[Role::FfnDown], xn);
      for (int64_t i = 0; i < d; ++i) h[t][i] += rs * y[i];
    }
  }
  std::vector<float> logits(static_cast<size_t>(n * s.n_vocab));
  for (int64_t t = 0; t < n; ++t) {
    Vec xn = rmsnorm(h[t], f32p(model.global(Role::OutputNorm)), 0, d, s.rms_eps);
    Vec y = matvec(model.global(Role::Output), xn);
    for (int64_t i = 0; i < s.n_vocab; ++i)
      logits[t * s.n_vocab + i] = s.logit_scale != 0.0f ? y[i] / s.logit_scale : y[i];
  }
  return logits;
}

}  // namespace moe
