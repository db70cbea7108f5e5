// Scalar reference kernels for the float types and the 32-element "legacy" quant blocks
// (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1).
//
// The quantizers reproduce llama.cpp's arithmetic operation for operation (same scale formulas, same
// rounding rule, same clamping) so that files we write are byte-identical to llama-quantize output and
// activations we quantize are bit-identical to what llama.cpp's x86 backend feeds its dot products.
// This file is built for baseline x86-64 with -ffp-contract=off semantics (ISO C++), matching the plain
// C build of ggml's reference quantizers: no fused multiply-adds may sneak in.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/quant_blocks.h"
#include "kernels/quant_common.h"
#include "kernels/quant_tile.h"
#include "tensor/fp16.h"

namespace moe::quant {

// ---- float types --------------------------------------------------------------------------------

void dequantize_f32(const void* src, float* dst, int64_t n) { std::memcpy(dst, src, sizeof(float) * n); }
void quantize_f32(const float* src, void* dst, int64_t n) { std::memcpy(dst, src, sizeof(float) * n); }
void dequantize_f16(const void* src, float* dst, int64_t n) {
  fp16_to_fp32_row(static_cast<const uint16_t*>(src), dst, n);
}
void quantize_f16(const float* src, void* dst, int64_t n) {
  fp32_to_fp16_row(src, static_cast<uint16_t*>(dst), n);
}
void dequantize_bf16(const void* src, float* dst, int64_t n) {
  bf16_to_fp32_row(static_cast<const uint16_t*>(src), dst, n);
}
void quantize_bf16(const float* src, void* dst, int64_t n) {
  fp32_to_bf16_row(src, static_cast<uint16_t*>(dst), n);
}

// The float dot products accumulate in double: the reference is meant to be the most accurate answer
// the SIMD kernels are compared against, not a bit-pattern to reproduce.
float vec_dot_f32_ref(int64_t n, const void* xv, const void* yv) {
  const float* x = static_cast<const float*>(xv);
  const float* y = static_cast<const float*>(yv);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * y[i];
  return static_cast<float>(s);
}
float vec_dot_f16_ref(int64_t n, const void* xv, const void* yv) {
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  const uint16_t* y = static_cast<const uint16_t*>(yv);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(fp16_to_fp32(x[i])) * fp16_to_fp32(y[i]);
  return static_cast<float>(s);
}
float vec_dot_bf16_ref(int64_t n, const void* xv, const void* yv) {
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  const uint16_t* y = static_cast<const uint16_t*>(yv);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(bf16_to_fp32(x[i])) * bf16_to_fp32(y[i]);
  return static_cast<float>(s);
}

// ---- helpers ------------------------------------------------------------------------------------

namespace {

// Largest |x| in the block together with the signed value that attains it (first occurrence wins).
struct SignedMax {
  float amax = 0.0f;
  float value = 0.0f;
};
SignedMax signed_abs_max(const float* x, int n) {
  SignedMax r;
  for (int j = 0; j < n; ++j) {
    const float a = std::fabs(x[j]);
    if (r.amax < a) {
      r.amax = a;
      r.value = x[j];
    }
  }
  return r;
}

void min_max(const float* x, int n, float* mn, float* mx) {
  float lo = 3.402823466e+38f, hi = -3.402823466e+38f;
  for (int j = 0; j < n; ++j) {
    if (x[j] < lo) lo = x[j];
    if (x[j] > hi) hi = x[j];
  }
  *mn = lo;
  *mx = hi;
}

// Packs element pairs (j, j+16) into nibbles and, for 5-bit types, the fifth bits into a 32-bit mask.
void pack_nibbles(const uint8_t q[kQK], uint8_t qs[kQK / 2]) {
  for (int j = 0; j < kQK / 2; ++j) qs[j] = static_cast<uint8_t>((q[j] & 0x0F) | ((q[j + kQK / 2] & 0x0F) << 4));
}
void pack_high_bits(const uint8_t q[kQK], uint8_t qh[4]) {
  uint32_t bits = 0;
  for (int j = 0; j < kQK; ++j) bits |= static_cast<uint32_t>((q[j] >> 4) & 1u) << j;
  std::memcpy(qh, &bits, 4);
}
uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

}  // namespace

// ---- Q4_0 ---------------------------------------------------------------------------------------

void quantize_q4_0(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<BlockQ4_0*>(dst);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float* x = src + b * kQK;
    // The element of largest magnitude maps exactly onto -8, so the full signed range is used.
    const float d = signed_abs_max(x, kQK).value / -8;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    uint8_t q[kQK];
    for (int j = 0; j < kQK; ++j) {
      // Truncating (x*id + 8.5) rounds half up around the offset 8, as the reference does.
      q[j] = static_cast<uint8_t>(std::min(15, static_cast<int>(static_cast<int8_t>(x[j] * id + 8.5f))));
    }
    out[b].d = fp32_to_fp16(d);
    pack_nibbles(q, out[b].qs);
  }
}

void dequantize_q4_0(const void* src, float* dst, int64_t n) {
  const auto* in = static_cast<const BlockQ4_0*>(src);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float d = fp16_to_fp32(in[b].d);
    for (int j = 0; j < kQK / 2; ++j) {
      dst[b * kQK + j] = static_cast<float>((in[b].qs[j] & 0x0F) - 8) * d;
      dst[b * kQK + j + 16] = static_cast<float>((in[b].qs[j] >> 4) - 8) * d;
    }
  }
}

float vec_dot_q4_0_ref(int64_t n, const void* xv, const void* yv) {
  const auto* x = static_cast<const BlockQ4_0*>(xv);
  const auto* y = static_cast<const BlockQ8_0*>(yv);
  float sum = 0;
  for (int64_t b = 0; b < n / kQK; ++b) {
    int sumi = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      sumi += ((x[b].qs[j] & 0x0F) - 8) * y[b].qs[j];
      sumi += ((x[b].qs[j] >> 4) - 8) * y[b].qs[j + 16];
    }
    sum += static_cast<float>(sumi) * (fp16_to_fp32(x[b].d) * fp16_to_fp32(y[b].d));
  }
  return sum;
}

// ---- Q4_1 ---------------------------------------------------------------------------------------

void quantize_q4_1(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<BlockQ4_1*>(dst);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float* x = src + b * kQK;
    float mn, mx;
    min_max(x, kQK, &mn, &mx);
    const float d = (mx - mn) / 15;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    uint8_t q[kQK];
    for (int j = 0; j < kQK; ++j) {
      q[j] = static_cast<uint8_t>(std::min(15, static_cast<int>(static_cast<int8_t>((x[j] - mn) * id + 0.5f))));
    }
    out[b].d = fp32_to_fp16(d);
    out[b].m = fp32_to_fp16(mn);
    pack_nibbles(q, out[b].qs);
  }
}

void dequantize_q4_1(const void* src, float* dst, int64_t n) {
  const auto* in = static_cast<const BlockQ4_1*>(src);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float d = fp16_to_fp32(in[b].d), m = fp16_to_fp32(in[b].m);
    for (int j = 0; j < kQK / 2; ++j) {
      dst[b * kQK + j] = static_cast<float>(in[b].qs[j] & 0x0F) * d + m;
      dst[b * kQK + j + 16] = static_cast<float>(in[b].qs[j] >> 4) * d + m;
    }
  }
}

float vec_dot_q4_1_ref(int64_t n, const void* xv, const void* yv) {
  const auto* x = static_cast<const BlockQ4_1*>(xv);
  const auto* y = static_cast<const BlockQ8_1*>(yv);
  float sum = 0;
  for (int64_t b = 0; b < n / kQK; ++b) {
    int sumi = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      sumi += (x[b].qs[j] & 0x0F) * y[b].qs[j];
      sumi += (x[b].qs[j] >> 4) * y[b].qs[j + 16];
    }
    // The offset m contributes m * sum(y) = m * s, where s already carries the activation scale.
    sum += static_cast<float>(sumi) * (fp16_to_fp32(x[b].d) * fp16_to_fp32(y[b].d)) +
           fp16_to_fp32(x[b].m) * fp16_to_fp32(y[b].s);
  }
  return sum;
}

// ---- Q5_0 ---------------------------------------------------------------------------------------

void quantize_q5_0(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<BlockQ5_0*>(dst);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float* x = src + b * kQK;
    const float d = signed_abs_max(x, kQK).value / -16;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    uint8_t q[kQK];
    for (int j = 0; j < kQK; ++j) {
      q[j] = static_cast<uint8_t>(std::min(31, static_cast<int>(static_cast<int8_t>(x[j] * id + 16.5f))));
    }
    out[b].d = fp32_to_fp16(d);
    pack_nibbles(q, out[b].qs);
    pack_high_bits(q, out[b].qh);
  }
}

void dequantize_q5_0(const void* src, float* dst, int64_t n) {
  const auto* in = static_cast<const BlockQ5_0*>(src);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float d = fp16_to_fp32(in[b].d);
    const uint32_t qh = load_u32(in[b].qh);
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = (in[b].qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (in[b].qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      dst[b * kQK + j] = static_cast<float>(lo - 16) * d;
      dst[b * kQK + j + 16] = static_cast<float>(hi - 16) * d;
    }
  }
}

float vec_dot_q5_0_ref(int64_t n, const void* xv, const void* yv) {
  const auto* x = static_cast<const BlockQ5_0*>(xv);
  const auto* y = static_cast<const BlockQ8_0*>(yv);
  float sum = 0;
  for (int64_t b = 0; b < n / kQK; ++b) {
    const uint32_t qh = load_u32(x[b].qh);
    int sumi = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = (x[b].qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (x[b].qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      sumi += (lo - 16) * y[b].qs[j] + (hi - 16) * y[b].qs[j + 16];
    }
    sum += static_cast<float>(sumi) * (fp16_to_fp32(x[b].d) * fp16_to_fp32(y[b].d));
  }
  return sum;
}

// ---- Q5_1 ---------------------------------------------------------------------------------------

void quantize_q5_1(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<BlockQ5_1*>(dst);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float* x = src + b * kQK;
    float mn, mx;
    min_max(x, kQK, &mn, &mx);
    const float d = (mx - mn) / 31;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    uint8_t q[kQK];
    // No clamp here (the reference has none): (x - min) * id never exceeds 31 + rounding.
    for (int j = 0; j < kQK; ++j) q[j] = static_cast<uint8_t>(static_cast<int>((x[j] - mn) * id + 0.5f));
    out[b].d = fp32_to_fp16(d);
    out[b].m = fp32_to_fp16(mn);
    pack_nibbles(q, out[b].qs);
    pack_high_bits(q, out[b].qh);
  }
}

void dequantize_q5_1(const void* src, float* dst, int64_t n) {
  const auto* in = static_cast<const BlockQ5_1*>(src);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float d = fp16_to_fp32(in[b].d), m = fp16_to_fp32(in[b].m);
    const uint32_t qh = load_u32(in[b].qh);
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = (in[b].qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (in[b].qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      dst[b * kQK + j] = static_cast<float>(lo) * d + m;
      dst[b * kQK + j + 16] = static_cast<float>(hi) * d + m;
    }
  }
}

float vec_dot_q5_1_ref(int64_t n, const void* xv, const void* yv) {
  const auto* x = static_cast<const BlockQ5_1*>(xv);
  const auto* y = static_cast<const BlockQ8_1*>(yv);
  float sum = 0;
  for (int64_t b = 0; b < n / kQK; ++b) {
    const uint32_t qh = load_u32(x[b].qh);
    int sumi = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = (x[b].qs[j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (x[b].qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      sumi += lo * y[b].qs[j] + hi * y[b].qs[j + 16];
    }
    sum += static_cast<float>(sumi) * (fp16_to_fp32(x[b].d) * fp16_to_fp32(y[b].d)) +
           fp16_to_fp32(x[b].m) * fp16_to_fp32(y[b].s);
  }
  return sum;
}

// ---- Q8_0 / Q8_1 --------------------------------------------------------------------------------

namespace {

float abs_max(const float* x, int n) {
  float amax = 0.0f;
  for (int j = 0; j < n; ++j) amax = std::max(amax, std::fabs(x[j]));
  return amax;
}

// Activation quantization as llama.cpp's AVX/AVX2 quantize_row_q8_0/q8_1 do it: the multiplier is
// 127/amax (not 1/d), products are rounded half-to-even, and the result saturates to int8.
// Returns the block's fp32 scale and the integer sum of its quants.
float quantize_block_q8_activation(const float* x, int8_t* qs, int* sum) {
  const float amax = abs_max(x, kQK);
  const float d = amax / 127.f;
  const float id = amax != 0.0f ? 127.f / amax : 0.0f;
  int s = 0;
  for (int j = 0; j < kQK; ++j) {
    const int v = std::clamp(round_half_even_to_int(x[j] * id), -128, 127);
    qs[j] = static_cast<int8_t>(v);
    s += v;
  }
  *sum = s;
  return d;
}

}  // namespace

void quantize_q8_0(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<BlockQ8_0*>(dst);
  for (int64_t b = 0; b < n / kQK; ++b) {
    int sum;
    out[b].d = fp32_to_fp16(quantize_block_q8_activation(src + b * kQK, out[b].qs, &sum));
  }
}

void quantize_q8_0_storage(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<BlockQ8_0*>(dst);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float* x = src + b * kQK;
    const float d = abs_max(x, kQK) / 127;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    out[b].d = fp32_to_fp16(d);
    for (int j = 0; j < kQK; ++j) out[b].qs[j] = static_cast<int8_t>(std::round(x[j] * id));
  }
}

void dequantize_q8_0(const void* src, float* dst, int64_t n) {
  const auto* in = static_cast<const BlockQ8_0*>(src);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float d = fp16_to_fp32(in[b].d);
    for (int j = 0; j < kQK; ++j) dst[b * kQK + j] = static_cast<float>(in[b].qs[j]) * d;
  }
}

float vec_dot_q8_0_ref(int64_t n, const void* xv, const void* yv) {
  const auto* x = static_cast<const BlockQ8_0*>(xv);
  const auto* y = static_cast<const BlockQ8_0*>(yv);
  float sum = 0;
  for (int64_t b = 0; b < n / kQK; ++b) {
    int sumi = 0;
    for (int j = 0; j < kQK; ++j) sumi += x[b].qs[j] * y[b].qs[j];
    sum += static_cast<float>(sumi) * (fp16_to_fp32(x[b].d) * fp16_to_fp32(y[b].d));
  }
  return sum;
}

void quantize_q8_1(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<BlockQ8_1*>(dst);
  for (int64_t b = 0; b < n / kQK; ++b) {
    int sum;
    const float d = quantize_block_q8_activation(src + b * kQK, out[b].qs, &sum);
    out[b].d = fp32_to_fp16(d);
    out[b].s = fp32_to_fp16(d * static_cast<float>(sum));  // uses the unrounded fp32 scale, as llama.cpp
  }
}

void dequantize_q8_1(const void* src, float* dst, int64_t n) {
  const auto* in = static_cast<const BlockQ8_1*>(src);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float d = fp16_to_fp32(in[b].d);
    for (int j = 0; j < kQK; ++j) dst[b * kQK + j] = static_cast<float>(in[b].qs[j]) * d;
  }
}

void derive_q8_0_block_facts(const uint8_t* act, size_t as, int64_t nt, int64_t nb, int32_t* sums, float* scales) {
  for (int64_t t = 0; t < nt; ++t) {
    const auto* blocks = reinterpret_cast<const BlockQ8_0*>(act + static_cast<size_t>(t) * as);
    for (int64_t b = 0; b < nb; ++b) {
      int32_t sum = 0;
      for (int8_t q : blocks[b].qs) sum += q;
      sums[t * nb + b] = sum;
      scales[t * nb + b] = fp16_to_fp32(blocks[b].d);
    }
  }
}

}  // namespace moe::quant
