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

// Rotary embedding of the first n_rot dims, with YaRN when the spec has it: dims below the low
// correction dim keep their unscaled frequency, dims above the high one are interpolated, with a linear
// ramp between, and cos/sin scale by attn_factor (1 + 0.1 ln(1 / freq_scale)).
void rotate(float* x, int64_t n_rot, int64_t pos, const ModelSpec& s, double base) {
  const int64_t half = n_rot / 2;
  const double fs = s.rope_freq_scale;
  double lo = 0, hi = 0, mscale = s.yarn.attn_factor;
  if (s.yarn.ext_factor != 0.0f) {
    auto corr = [&](double beta) {
      return n_rot * std::log(s.yarn.n_ctx_orig / (beta * 2 * M_PI)) / (2 * std::log(base));
    };
    lo = std::max(0.0, std::floor(corr(s.yarn.beta_fast)));
    hi = std::min(static_cast<double>(n_rot - 1), std::ceil(corr(s.yarn.beta_slow)));
    mscale *= 1.0 + 0.1 * std::log(1.0 / fs);
  }
  for (int64_t i = 0; i < half; ++i) {
    const double freq = std::pow(base, -2.0 * i / static_cast<double>(n_rot));
    double ang = fs * pos * freq;
    if (s.yarn.ext_factor != 0.0f) {
      const double ramp = (1.0 - std::clamp((i - lo) / std::max(0.001, hi - lo), 0.0, 1.0)) * s.yarn.ext_factor;
      ang = ang * (1.0 - ramp) + pos * freq * ramp;
    }
    const double c = std::cos(ang) * mscale, sn = std::sin(ang) * mscale;
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

// Routed expert `e`: gated FFN with the expert's biases (if any) and the layer's activation.
Vec expert_ffn(const MoeSpec& m, const LayerWeights& lw, const Vec& x, int e) {
  Vec g = matvec(lw[Role::ExpGate], x, e), u = matvec(lw[Role::ExpUp], x, e);
  auto bias = [&](Vec& y, Role r) {
    if (const WeightView& b = lw[r])
      for (size_t i = 0; i < y.size(); ++i) y[i] += reinterpret_cast<const float*>(b.data)[e * b.cols + static_cast<int64_t>(i)];
  };
  bias(g, Role::ExpGateBias);
  bias(u, Role::ExpUpBias);
  for (size_t i = 0; i < g.size(); ++i) {
    double a;
    if (m.activation == Activation::SwiGLUOai) {
      const double xg = std::min<double>(g[i], m.act_limit);
      const double yu = std::clamp<double>(u[i], -m.act_limit, m.act_limit);
      a = xg / (1.0 + std::exp(-m.act_alpha * xg)) * (yu + 1.0);
    } else {
      a = g[i] / (1.0 + std::exp(-static_cast<double>(g[i]))) * u[i];
    }
    g[i] = static_cast<float>(a);
  }
  Vec y = matvec(lw[Role::ExpDown], g, e);
  bias(y, Role::ExpDownBias);
  return y;
}

Vec moe_block(const ModelSpec& s, const MoeSpec& m, const LayerWeights& lw, const Vec& x) {
  Vec logits = matvec(lw[Role::Router], x);
  const int E = m.n_expert;
  if (const float* b = f32p(lw[Role::RouterLogitBias]))
    for (int e = 0; e < E; ++e) logits[e] += b[e];
  Vec score(E);
  if (m.gating == Gating::SoftmaxWeight) {
    score = logits;
  } else if (m.gating == Gating::Softmax) {
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
  if (m.gating == Gating::SoftmaxWeight) {
    // Softmax over the selected logits only.
    double mx = -INFINITY, z = 0.0;
    for (int j = 0; j < k; ++j) mx = std::max<double>(mx, score[order[j]]);
    for (int j = 0; j < k; ++j) z += std::exp(score[order[j]] - mx);
    for (int j = 0; j < k; ++j) w[j] = static_cast<float>(std::exp(score[order[j]] - mx) / z);
  } else {
    for (int j = 0; j < k; ++j) w[j] = score[order[j]];
  }
  double wsum = 0.0;
  for (int j = 0; j < k; ++j) wsum += w[j];
  Vec out(static_cast<size_t>(s.n_embd), 0.0f);
  for (int j = 0; j < k; ++j) {
    double wj = w[j];
    if (m.norm_topk) wj /= std::max(wsum, 6.103515625e-5);
    wj *= m.route_scale;
    Vec y = expert_ffn(m, lw, x, order[j]);
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

// Per-head queries, keys and values of every position (MLA: expanded to full heads, the textbook form
// of the attention that the optimized pass computes absorbed over cached latents).
struct HeadVectors {
  std::vector<Vec> q, k, v;  // [t]: n_head (q), n_kv (k, v) heads, each dk (q, k) or dv (v) long
  int n_kv = 0;
  int64_t dk = 0, dv = 0;
};

HeadVectors project_heads(const ModelSpec& s, const LayerWeights& lw, int il, const std::vector<Vec>& xn) {
  const int64_t n = static_cast<int64_t>(xn.size());
  const double base = s.layers[il].n_swa > 0 && s.rope_base_swa != 0.0f ? s.rope_base_swa : s.rope_base;
  HeadVectors hv;
  hv.q.resize(n);
  hv.k.resize(n);
  hv.v.resize(n);
  if (s.is_mla()) {
    const MlaSpec& m = s.mla;
    const int64_t qh = m.qk_nope + m.qk_rope;
    hv.n_kv = s.n_head;
    hv.dk = qh;
    hv.dv = m.v_head;
    const WeightView& kb = lw[Role::AttnKB];  // per head: kv_lora rows of qk_nope
    const WeightView& vb = lw[Role::AttnVB];  // per head: v_head rows of kv_lora
    for (int64_t t = 0; t < n; ++t) {
      Vec q;
      if (m.q_lora_rank > 0) {
        Vec qa = matvec(lw[Role::AttnQA], xn[t]);
        q = matvec(lw[Role::AttnQB], rmsnorm(qa, f32p(lw[Role::AttnQANorm]), 0, m.q_lora_rank, s.rms_eps));
      } else {
        q = matvec(lw[Role::AttnQ], xn[t]);
      }
      const Vec kva = matvec(lw[Role::AttnKvA], xn[t]);
      const Vec c = rmsnorm(kva, f32p(lw[Role::AttnKvANorm]), 0, m.kv_lora_rank, s.rms_eps);
      Vec kpe(kva.begin() + m.kv_lora_rank, kva.end());
      rotate(kpe.data(), m.qk_rope, t, s, base);
      hv.q[t] = q;
      hv.k[t].assign(static_cast<size_t>(s.n_head * qh), 0.0f);
      hv.v[t].assign(static_cast<size_t>(s.n_head * m.v_head), 0.0f);
      for (int h = 0; h < s.n_head; ++h) {
        rotate(hv.q[t].data() + h * qh + m.qk_nope, m.qk_rope, t, s, base);
        // k_nope[i] = sum_r W_kb[h][r][i] c[r]; the rope key is shared by every head.
        std::vector<double> acc(static_cast<size_t>(m.qk_nope), 0.0);
        for (int64_t r = 0; r < m.kv_lora_rank; ++r) {
          const Vec row = dequant_row(kb, r, h);
          for (int64_t i = 0; i < m.qk_nope; ++i) acc[i] += static_cast<double>(row[i]) * c[r];
        }
        for (int64_t i = 0; i < m.qk_nope; ++i) hv.k[t][h * qh + i] = static_cast<float>(acc[i]);
        std::copy(kpe.begin(), kpe.end(), hv.k[t].begin() + h * qh + m.qk_nope);
        const Vec vh = matvec(vb, c, h);
        std::copy(vh.begin(), vh.end(), hv.v[t].begin() + h * m.v_head);
      }
    }
    return hv;
  }
  const int64_t hd = s.head_dim;
  hv.n_kv = s.n_head_kv;
  hv.dk = hv.dv = hd;
  for (int64_t t = 0; t < n; ++t) {
    hv.q[t] = matvec(lw[Role::AttnQ], xn[t]);
    hv.k[t] = matvec(lw[Role::AttnK], xn[t]);
    hv.v[t] = matvec(lw[Role::AttnV], xn[t]);
    auto bias = [](Vec& y, const WeightView& b) {
      if (const float* p = f32p(b))
        for (size_t i = 0; i < y.size(); ++i) y[i] += p[i];
    };
    bias(hv.q[t], lw[Role::AttnQBias]);
    bias(hv.k[t], lw[Role::AttnKBias]);
    bias(hv.v[t], lw[Role::AttnVBias]);
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
    norm_heads(hv.q[t], s.n_head, lw[Role::AttnQNorm]);
    norm_heads(hv.k[t], s.n_head_kv, lw[Role::AttnKNorm]);
    for (int hh = 0; hh < s.n_head; ++hh) rotate(hv.q[t].data() + hh * hd, s.n_rot, t, s, base);
    for (int hh = 0; hh < s.n_head_kv; ++hh) rotate(hv.k[t].data() + hh * hd, s.n_rot, t, s, base);
  }
  return hv;
}

// Causal softmax attention (sliding window and sinks as the spec says), then the output projection.
std::vector<Vec> attention_layer(const ModelSpec& s, const LayerWeights& lw, int il, const std::vector<Vec>& xn) {
  const int64_t n = static_cast<int64_t>(xn.size());
  const HeadVectors hv = project_heads(s, lw, il, xn);
  const int group = s.n_head / hv.n_kv;
  const int64_t window = s.layers[il].n_swa;
  const float* sinks = s.attn_sinks ? f32p(lw[Role::AttnSinks]) : nullptr;
  std::vector<Vec> out(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) {
    Vec att(static_cast<size_t>(s.n_head * hv.dv));
    const int64_t j0 = window > 0 ? std::max<int64_t>(0, t - window + 1) : 0;
    for (int hh = 0; hh < s.n_head; ++hh) {
      const int hk = hh / group;
      std::vector<double> p(static_cast<size_t>(t + 1 - j0));
      double mx = sinks ? sinks[hh] : -INFINITY;
      for (int64_t j = j0; j <= t; ++j) {
        double dotp = 0.0;
        for (int64_t i = 0; i < hv.dk; ++i) dotp += static_cast<double>(hv.q[t][hh * hv.dk + i]) * hv.k[j][hk * hv.dk + i];
        p[j - j0] = dotp * s.kq_scale();
        mx = std::max(mx, p[j - j0]);
      }
      double sum = sinks ? std::exp(sinks[hh] - mx) : 0.0;
      for (auto& e : p) sum += (e = std::exp(e - mx));
      for (int64_t i = 0; i < hv.dv; ++i) {
        double acc = 0.0;
        for (int64_t j = j0; j <= t; ++j) acc += p[j - j0] / sum * hv.v[j][hk * hv.dv + i];
        att[hh * hv.dv + i] = static_cast<float>(acc);
      }
    }
    Vec o = matvec(lw[Role::AttnOut], att);
    if (const float* b = f32p(lw[Role::AttnOutBias]))
      for (int64_t i = 0; i < s.n_embd; ++i) o[i] += b[i];
    out[t] = std::move(o);
  }
  return out;
}

}  // namespace

std::vector<float> reference_forward(const Model& model, const std::vector<int32_t>& tokens) {
  const ModelSpec& s = model.spec();
  if (model.experts_deferred()) fail("reference forward: needs a model loaded with its experts in memory");
  const int64_t n = static_cast<int64_t>(tokens.size()), d = s.n_embd;
  std::vector<Vec> h(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) {
    if (tokens[t] < 0 || tokens[t] >= s.n_vocab) fail("token id {} outside the vocabulary", tokens[t]);
    h[t] = dequant_row(model.global(Role::TokenEmbd), tokens[t]);
    if (s.embedding_scale != 0.0f)
      for (float& v : h[t]) v *= s.embedding_scale;
  }
  for (int il = 0; il < s.n_layer; ++il) {
    const LayerWeights& lw = model.layer(il);
    std::vector<Vec> xn(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) xn[t] = rmsnorm(h[t], f32p(lw[Role::AttnNorm]), 0, d, s.rms_eps);
    const std::vector<Vec> q = attention_layer(s, lw, il, xn);
    const float rs = s.residual_scale != 0.0f ? s.residual_scale : 1.0f;
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t i = 0; i < d; ++i) h[t][i] += rs * q[t][i];
      const Vec fn = rmsnorm(h[t], f32p(lw[Role::FfnNorm]), 0, d, s.rms_eps);
      const LayerSpec& L = s.layers[il];
      Vec y = L.is_moe ? moe_block(s, L.moe, lw, fn) : swiglu_ffn(lw[Role::FfnGate], lw[Role::FfnUp], lw[Role::FfnDown], fn);
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
