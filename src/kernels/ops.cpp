#include "kernels/ops.h"

#include "kernels/cpu_features.h"
#include "kernels/exp_poly.h"
#include "tensor/dtype.h"

#include <algorithm>
#include <cmath>

namespace moe::kernels {

void rms_norm(const float* x, const float* w, float* y, int64_t n, float eps) {
  // Chosen once. A decoded token normalizes a few vectors per layer on one thread while the others
  // wait, so the scalar loop's chain of dependent double adds (about 4 cycles per element) showed up.
  static const auto impl = best_isa() == Isa::Avx512 ? rms_norm_avx512 : rms_norm_ref;
  impl(x, w, y, n, eps);
}

void rms_norm_ref(const float* x, const float* w, float* y, int64_t n, float eps) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]) * x[i];
  const float mean = static_cast<float>(sum / static_cast<double>(n));
  const float s = 1.0f / std::sqrt(mean + eps);
  if (w) {
    for (int64_t i = 0; i < n; ++i) y[i] = (x[i] * s) * w[i];
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * s;
  }
}

void rope_angles(float* cs, int64_t n_rot, int64_t pos, float freq_base, float freq_scale) {
  // Angles advance by repeated float multiplication, as ggml does, so positions match bit for bit.
  const float theta_scale = std::pow(freq_base, -2.0f / static_cast<float>(n_rot));
  float theta = static_cast<float>(pos);
  for (int64_t i = 0; i < n_rot / 2; ++i) {
    const float t = freq_scale * theta;
    cs[2 * i] = std::cos(t);
    cs[2 * i + 1] = std::sin(t);
    theta *= theta_scale;
  }
}

namespace {
float yarn_corr_dim(int64_t n_dims, int64_t n_ctx_orig, float n_rot, float base) {
  return static_cast<float>(n_dims) *
         std::log(static_cast<float>(n_ctx_orig) / (n_rot * 2 * static_cast<float>(M_PI))) / (2 * std::log(base));
}
}  // namespace

RopeParams rope_params(int64_t n_rot, float freq_base, float freq_scale, float ext_factor, float attn_factor,
                       int64_t n_ctx_orig, float beta_fast, float beta_slow) {
  RopeParams p;
  p.freq_base = freq_base;
  p.freq_scale = freq_scale;
  p.ext_factor = ext_factor;
  p.attn_factor = attn_factor;
  if (ext_factor != 0.0f) {
    const float start = std::floor(yarn_corr_dim(n_rot, n_ctx_orig, beta_fast, freq_base));
    const float end = std::ceil(yarn_corr_dim(n_rot, n_ctx_orig, beta_slow, freq_base));
    p.corr_low = std::max(0.0f, start);
    p.corr_high = std::min(static_cast<float>(n_rot - 1), end);
  }
  return p;
}

void rope_angles(float* cs, int64_t n_rot, int64_t pos, const RopeParams& p) {
  const float theta_scale = std::pow(p.freq_base, -2.0f / static_cast<float>(n_rot));
  float theta = static_cast<float>(pos);
  float mscale = p.attn_factor;
  if (p.ext_factor != 0.0f) mscale *= 1.0f + 0.1f * std::log(1.0f / p.freq_scale);
  for (int64_t i = 0; i < n_rot / 2; ++i) {
    const float interp = p.freq_scale * theta;
    float t = interp;
    if (p.ext_factor != 0.0f) {
      // ggml_rope_yarn_ramp at element index 2 i.
      const float y = (static_cast<float>(i) - p.corr_low) / std::max(0.001f, p.corr_high - p.corr_low);
      const float ramp_mix = (1.0f - std::min(1.0f, std::max(0.0f, y))) * p.ext_factor;
      t = interp * (1.0f - ramp_mix) + theta * ramp_mix;
    }
    cs[2 * i] = std::cos(t) * mscale;
    cs[2 * i + 1] = std::sin(t) * mscale;
    theta *= theta_scale;
  }
}

void rope_apply(float* x, const float* cs, int64_t n_rot, bool neox) {
  const int64_t half = n_rot / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float c = cs[2 * i], s = cs[2 * i + 1];
    const int64_t a = neox ? i : 2 * i;
    const int64_t b = neox ? i + half : 2 * i + 1;
    const float x0 = x[a], x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
  }
}

void rope(float* x, int64_t n_rot, int64_t pos, float freq_base, float freq_scale, bool neox) {
  float cs[1024];  // n_rot <= head_dim <= 1024, enforced by the spec loader
  rope_angles(cs, n_rot, pos, freq_base, freq_scale);
  rope_apply(x, cs, n_rot, neox);
}

void softmax(float* x, int64_t n) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const float e = std::exp(x[i] - mx);
    x[i] = e;
    sum += e;
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void swiglu_ref(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + exp_poly(-gate[i])) * up[i];
}

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
  static const auto impl = best_isa() == Isa::Avx512 ? swiglu_avx512 : swiglu_ref;
  impl(gate, up, out, n);
}

void swiglu_oai(const float* gate, const float* up, float* out, int64_t n, float alpha, float limit) {
  for (int64_t i = 0; i < n; ++i) {
    const float x = std::min(gate[i], limit);
    const float y = std::clamp(up[i], -limit, limit);
    out[i] = x / (1.0f + std::exp(alpha * (-x))) * (y + 1.0f);
  }
}

void add(float* y, const float* x, int64_t n) {
  static const auto impl = best_isa() == Isa::Avx512 ? add_avx512 : add_ref;
  impl(y, x, n);
}

void scale(float* y, float s, int64_t n) {
  static const auto impl = best_isa() == Isa::Avx512 ? scale_avx512 : scale_ref;
  impl(y, s, n);
}

void add_ref(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void scale_ref(float* y, float s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] *= s;
}

void axpy_ref(float* y, float a, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

float dot_f32_ref(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

void axpy(float* y, float a, const float* x, int64_t n) {
  // Chosen once: the AVX-512 body when the CPU has it (each element is one FMA either way).
  static const auto impl = best_isa() == Isa::Avx512 ? axpy_avx512 : axpy_ref;
  impl(y, a, x, n);
}

float dot_f32(const float* a, const float* b, int64_t n) {
  // The F32 entry of the dtype table already dispatches to the best ISA.
  static const VecDotFn impl = dtype_traits(DType::F32).vec_dot;
  return impl(n, a, b);
}

}  // namespace moe::kernels
