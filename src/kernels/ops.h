// Elementwise and row kernels used by the forward pass. Their arithmetic follows ggml's CPU backend
// where that matters for matching llama.cpp (e.g. RMSNorm sums in double, rope angles advance by
// repeated multiplication in float).
#pragma once
#include <cstdint>

namespace moe::kernels {

// y = x / sqrt(mean(x^2) + eps) * w   (w may be null). y may alias x. Best ISA: the sum of squares
// (in double) is added in another order than rms_norm_ref's, which moves the float mean by at most
// one rounding.
void rms_norm(const float* x, const float* w, float* y, int64_t n, float eps);

// Rotary embedding of one head vector of length head_dim in place, rotating the first n_rot dims.
// neox: pairs (i, i + n_rot/2); otherwise pairs (2i, 2i+1).
void rope(float* x, int64_t n_rot, int64_t pos, float freq_base, float freq_scale, bool neox);
// Precomputes cos/sin for one position: cs[2*i] = cos, cs[2*i+1] = sin, i < n_rot/2.
void rope_angles(float* cs, int64_t n_rot, int64_t pos, float freq_base, float freq_scale);

// Rope with YaRN scaling (ggml's rope_yarn): dims below corr_low are extrapolated (unscaled), dims
// above corr_high interpolated (x freq_scale), with a linear ramp between; cos and sin are multiplied
// by attn_factor * (1 + 0.1 ln(1 / freq_scale)). With ext_factor 0 and attn_factor 1 this is
// rope_angles above, bit for bit.
struct RopeParams {
  float freq_base = 10000.0f;
  float freq_scale = 1.0f;
  float ext_factor = 0.0f;
  float attn_factor = 1.0f;
  float corr_low = 0.0f, corr_high = 0.0f;  // correction dims (ggml_rope_yarn_corr_dims)
};
// ggml_rope_yarn_corr_dims for n_rot rotated dims, the original context and the two betas.
RopeParams rope_params(int64_t n_rot, float freq_base, float freq_scale, float ext_factor, float attn_factor,
                       int64_t n_ctx_orig, float beta_fast, float beta_slow);
void rope_angles(float* cs, int64_t n_rot, int64_t pos, const RopeParams& p);
void rope_apply(float* x, const float* cs, int64_t n_rot, bool neox);

// In-place softmax over n values (max-subtracted, sum in double).
void softmax(float* x, int64_t n);

inline float silu(float x);
// out[i] = gate[i] / (1 + exp(-gate[i])) * up[i], exp being kernels/exp_poly.h's (within 2 ulp; the
// same bits on every ISA). Vectorised: with the C library's expf one element at a time it was 3-4% of a
// prefill. (silu() itself keeps std::exp: llama.cpp's sigmoid-as-silu rounding, model/forward.cpp.)
void swiglu(const float* gate, const float* up, float* out, int64_t n);
void swiglu_ref(const float* gate, const float* up, float* out, int64_t n);
void swiglu_avx512(const float* gate, const float* up, float* out, int64_t n);
// gpt-oss's clamped SwiGLU (ggml's swiglu_oai): x = min(gate, limit), y = clamp(up, -limit, limit),
// out = x / (1 + exp(-alpha x)) * (y + 1).
void swiglu_oai(const float* gate, const float* up, float* out, int64_t n, float alpha, float limit);

void add(float* y, const float* x, int64_t n);            // y += x (best ISA, same bits)
void scale(float* y, float s, int64_t n);                 // y *= s (best ISA, same bits)
void axpy(float* y, float a, const float* x, int64_t n);  // y += a*x (best ISA)
float dot_f32(const float* a, const float* b, int64_t n);  // best ISA
// Plain scalar references, and the AVX-512 body (only call it where the CPU has AVX-512F).
void axpy_ref(float* y, float a, const float* x, int64_t n);
float dot_f32_ref(const float* a, const float* b, int64_t n);
void rms_norm_ref(const float* x, const float* w, float* y, int64_t n, float eps);
void add_ref(float* y, const float* x, int64_t n);
void scale_ref(float* y, float s, int64_t n);
void axpy_avx512(float* y, float a, const float* x, int64_t n);
void rms_norm_avx512(const float* x, const float* w, float* y, int64_t n, float eps);
void add_avx512(float* y, const float* x, int64_t n);
void scale_avx512(float* y, float s, int64_t n);

}  // namespace moe::kernels

#include <cmath>
namespace moe::kernels {
inline float silu(float x) { return x / (1.0f + std::exp(-x)); }
}  // namespace moe::kernels
