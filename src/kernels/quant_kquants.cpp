// Scalar reference kernels for the K-quant super-blocks (Q2_K ... Q6_K) and the Q8_K activation format.
//
// The weight quantizers reproduce llama.cpp's model-file quantizers (no importance matrix), including
// their iterative scale searches, so that the bytes we write equal llama-quantize's. Every floating
// point expression below keeps the operand order of that arithmetic on purpose; reordering a sum or
// product can flip a rounding decision and change a quant. Do not "simplify" them.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/quant_blocks.h"
#include "kernels/quant_common.h"
#include "tensor/fp16.h"

namespace moe::quant {
namespace {

constexpr float kGroupEps = 1e-15f;  // below this a group is treated as all zero

int clampi(int v, int lo, int hi) { return std::max(lo, std::min(hi, v)); }

// Symmetric search used by Q6_K: quants in [-nmax, nmax-1], weighted least squares with weight x^2,
// trying 18 scales around the plain amax-based one. L receives quants offset by +nmax.
float search_symmetric_scale(int n, int nmax, const float* x, int8_t* L) {
  float amax = 0, vmax = 0;
  for (int i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    if (a > amax) {
      amax = a;
      vmax = x[i];
    }
  }
  if (amax < kGroupEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  float iscale = -nmax / vmax;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = clampi(round_half_even_to_int(iscale * x[i]), -nmax, nmax - 1);
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int step = -9; step <= 9; ++step) {
    if (step == 0) continue;
    iscale = -(nmax + 0.1f * step) / vmax;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = clampi(round_half_even_to_int(iscale * x[i]), -nmax, nmax - 1);
      const float w = x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        L[i] = static_cast<int8_t>(nmax + clampi(round_half_even_to_int(iscale * x[i]), -nmax, nmax - 1));
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// Symmetric search used by Q3_K: start from the amax scale, then greedily move single quants while the
// weighted (x^2) least-squares objective improves, at most 5 sweeps. L receives quants offset by +nmax.
float search_q3_scale(int n, int nmax, const float* x, int8_t* L) {
  float amax = 0, vmax = 0;
  for (int i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    if (a > amax) {
      amax = a;
      vmax = x[i];
    }
  }
  if (amax < kGroupEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  const float iscale = -nmax / vmax;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = clampi(round_half_even_to_int(iscale * x[i]), -nmax, nmax - 1);
    L[i] = static_cast<int8_t>(l);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  for (int sweep = 0; sweep < 5; ++sweep) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      float slx = sumlx - w * x[i] * L[i];
      if (slx > 0) {
        float sl2 = suml2 - w * L[i] * L[i];
        const int nl = clampi(round_half_even_to_int(x[i] * sl2 / slx), -nmax, nmax - 1);
        if (nl != L[i]) {
          slx += w * x[i] * nl;
          sl2 += w * nl * nl;
          if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = static_cast<int8_t>(nl);
            sumlx = slx;
            suml2 = sl2;
            ++changed;
          }
        }
      }
    }
    if (changed == 0) break;
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(L[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// Asymmetric (scale + min) search used by Q2_K, Q4_K and Q5_K: x ~ scale * L + min with L in [0, nmax]
// and min <= 0, minimising the weighted squared (or absolute, use_mad) error over nstep+1 candidate
// scales. Returns the scale; *neg_min receives -min.
float search_affine_scale(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* neg_min,
                          uint8_t* Laux, float rmin, float rdelta, int nstep, bool use_mad) {
  float mn = x[0], mx = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < mn) mn = x[i];
    if (x[i] > mx) mx = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (mn > 0) mn = 0;
  if (mx == mn) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *neg_min = -mn;
    return 0.f;
  }
  float iscale = nmax / (mx - mn);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = round_half_even_to_int(iscale * (x[i] - mn));
    L[i] = static_cast<uint8_t>(clampi(l, 0, nmax));
    float diff = scale * L[i] + mn - x[i];
    diff = use_mad ? std::fabs(diff) : diff * diff;
    best_error += weights[i] * diff;
  }
  if (nstep < 1) {
    *neg_min = -mn;
    return scale;
  }
  for (int step = 0; step <= nstep; ++step) {
    iscale = (rmin + rdelta * step + nmax) / (mx - mn);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = clampi(round_half_even_to_int(iscale * (x[i] - mn)), 0, nmax);
      Laux[i] = static_cast<uint8_t>(l);
      const float w = weights[i];
      sum_l += w * l;
      sum_l2 += w * l * l;
      sum_xl += w * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float err = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * Laux[i] + this_min - x[i];
        diff = use_mad ? std::fabs(diff) : diff * diff;
        err += weights[i] * diff;
      }
      if (err < best_error) {
        for (int i = 0; i < n; ++i) L[i] = Laux[i];
        best_error = err;
        scale = this_scale;
        mn = this_min;
      }
    }
  }
  *neg_min = -mn;
  return scale;
}

// Packs 2-bit values of a 256-element super-block: byte (g*32 + l) holds elements g*128 + l + 32*k
// in bits 2k..2k+1.
void pack_2bit(const uint8_t* L, uint8_t* qs) {
  for (int g = 0; g < kQKK; g += 128) {
    for (int l = 0; l < 32; ++l) {
      qs[g / 4 + l] = static_cast<uint8_t>(L[g + l] | (L[g + l + 32] << 2) | (L[g + l + 64] << 4) | (L[g + l + 96] << 6));
    }
  }
}

// Weights used by the Q4_K / Q5_K searches: rms of the group plus |x|.
void affine_weights_32(const float* x, float* w) {
  float sum_x2 = 0;
  for (int l = 0; l < 32; ++l) sum_x2 += x[l] * x[l];
  const float av_x = std::sqrt(sum_x2 / 32);
  for (int l = 0; l < 32; ++l) w[l] = av_x + std::fabs(x[l]);
}

// Shared by Q4_K and Q5_K: quantizes eight 32-element groups to (scale, min), packs the 6-bit scales
// and mins, writes d / dmin, and leaves the final per-element quants (0..nmax) in L.
void quantize_affine_superblock(const float* x, int nmax, float rmin, int nstep, uint16_t* d_out,
                                uint16_t* dmin_out, uint8_t scales_out[12], uint8_t L[kQKK]) {
  uint8_t Laux[32];
  float weights[32];
  float mins[8], scales[8];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    affine_weights_32(x + 32 * j, weights);
    scales[j] = search_affine_scale(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin, 0.1f, nstep, false);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  for (int j = 0; j < 8; ++j) {
    uint8_t ls = static_cast<uint8_t>(round_half_even_to_int(inv_scale * scales[j]));
    uint8_t lm = static_cast<uint8_t>(round_half_even_to_int(inv_min * mins[j]));
    ls = std::min<uint8_t>(63, ls);
    lm = std::min<uint8_t>(63, lm);
    if (j < 4) {
      scales_out[j] = ls;
      scales_out[j + 4] = lm;
    } else {
      scales_out[j + 4] = static_cast<uint8_t>((ls & 0x0F) | ((lm & 0x0F) << 4));
      scales_out[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
      scales_out[j] |= static_cast<uint8_t>((lm >> 4) << 6);
    }
  }
  *d_out = fp32_to_fp16(max_scale / 63.f);
  *dmin_out = fp32_to_fp16(max_min / 63.f);
  // Re-quantize every element against the scales as they will be decoded.
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    unpack_scale_min_k4(j, scales_out, &sc, &m);
    const float d = fp16_to_fp32(*d_out) * sc;
    if (d == 0.0f) continue;
    const float dm = fp16_to_fp32(*dmin_out) * m;
    for (int i = 0; i < 32; ++i) {
      L[32 * j + i] = static_cast<uint8_t>(clampi(round_half_even_to_int((x[32 * j + i] + dm) / d), 0, nmax));
    }
  }
}

}  // namespace

// ---- Q2_K ---------------------------------------------------------------------------------------

void quantize_q2_K(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<BlockQ2_K*>(dst);
  const float q4scale = 15.f;
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const float* x = src + b * kQKK;
    BlockQ2_K& y = out[b];
    uint8_t L[kQKK], Laux[16];
    float weights[16], mins[16], scales[16];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 16; ++j) {
      for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
      scales[j] = search_affine_scale(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, true);
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    if (max_scale > 0) {
      const float iscale = q4scale / max_scale;
      for (int j = 0; j < 16; ++j) y.scales[j] = static_cast<uint8_t>(round_half_even_to_int(iscale * scales[j]));
      y.d = fp32_to_fp16(max_scale / q4scale);
    } else {
      for (int j = 0; j < 16; ++j) y.scales[j] = 0;
      y.d = fp32_to_fp16(0.f);
    }
    if (max_min > 0) {
      const float iscale = q4scale / max_min;
      for (int j = 0; j < 16; ++j) {
        y.scales[j] = static_cast<uint8_t>(y.scales[j] | (round_half_even_to_int(iscale * mins[j]) << 4));
      }
      y.dmin = fp32_to_fp16(max_min / q4scale);
    } else {
      y.dmin = fp32_to_fp16(0.f);
    }
    for (int j = 0; j < 16; ++j) {
      const float d = fp16_to_fp32(y.d) * (y.scales[j] & 0x0F);
      if (d == 0.0f) continue;
      const float dm = fp16_to_fp32(y.dmin) * (y.scales[j] >> 4);
      for (int i = 0; i < 16; ++i) {
        L[16 * j + i] = static_cast<uint8_t>(clampi(round_half_even_to_int((x[16 * j + i] + dm) / d), 0, 3));
      }
    }
    pack_2bit(L, y.qs);
  }
}

void dequantize_q2_K(const void* src, float* dst, int64_t n) {
  const auto* in = static_cast<const BlockQ2_K*>(src);
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const BlockQ2_K& x = in[b];
    const float d = fp16_to_fp32(x.d), dmin = fp16_to_fp32(x.dmin);
    float* y = dst + b * kQKK;
    for (int e = 0; e < kQKK; ++e) {
      const int q = (x.qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
      const uint8_t sc = x.scales[e / 16];
      const float dl = d * (sc & 0x0F), ml = dmin * (sc >> 4);
      y[e] = dl * q - ml;
    }
  }
}

float vec_dot_q2_K_ref(int64_t n, const void* xv, const void* yv) {
  const auto* xs = static_cast<const BlockQ2_K*>(xv);
  const auto* ys = static_cast<const BlockQ8_K*>(yv);
  float sum = 0;
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const BlockQ2_K& x = xs[b];
    const BlockQ8_K& y = ys[b];
    int summ = 0;
    for (int j = 0; j < 16; ++j) summ += y.bsums[j] * (x.scales[j] >> 4);
    int isum = 0;
    for (int e = 0; e < kQKK; ++e) {
      const int q = (x.qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
      isum += (x.scales[e / 16] & 0x0F) * q * y.qs[e];
    }
    const float dall = y.d * fp16_to_fp32(x.d);
    const float dmin = y.d * fp16_to_fp32(x.dmin);
    sum += dall * static_cast<float>(isum) - dmin * static_cast<float>(summ);
  }
  return sum;
}

// ---- Q3_K ---------------------------------------------------------------------------------------

void quantize_q3_K(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<BlockQ3_K*>(dst);
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const float* x = src + b * kQKK;
    BlockQ3_K& y = out[b];
    int8_t L[kQKK];
    float scales[16];
    float max_scale = 0, amax = 0;
    for (int j = 0; j < 16; ++j) {
      scales[j] = search_q3_scale(16, 4, x + 16 * j, L + 16 * j);
      const float a = std::fabs(scales[j]);
      if (a > amax) {
        amax = a;
        max_scale = scales[j];
      }
    }
    std::memset(y.scales, 0, sizeof y.scales);
    if (max_scale != 0.0f) {
      const float iscale = -32.f / max_scale;
      for (int j = 0; j < 16; ++j) {
        // The rounded value passes through int8 before clamping, as in the reference.
        int8_t l = static_cast<int8_t>(round_half_even_to_int(iscale * scales[j]));
        l = static_cast<int8_t>(std::max<int>(-32, std::min<int>(31, l)) + 32);
        if (j < 8) {
          y.scales[j] = static_cast<uint8_t>(l & 0x0F);
        } else {
          y.scales[j - 8] = static_cast<uint8_t>(y.scales[j - 8] | ((l & 0x0F) << 4));
        }
        l = static_cast<int8_t>(l >> 4);
        y.scales[j % 4 + 8] = static_cast<uint8_t>(y.scales[j % 4 + 8] | (l << (2 * (j / 4))));
      }
      y.d = fp32_to_fp16(1 / iscale);
    } else {
      y.d = fp32_to_fp16(0.f);
    }
    int8_t sc[16];
    unpack_scales_q3k(y.scales, sc);
    for (int j = 0; j < 16; ++j) {
      const float d = fp16_to_fp32(y.d) * sc[j];
      if (d == 0.0f) continue;
      for (int i = 0; i < 16; ++i) {
        L[16 * j + i] = static_cast<int8_t>(clampi(round_half_even_to_int(x[16 * j + i] / d), -4, 3) + 4);
      }
    }
    // High bit of element j goes to hmask[j % 32], bit j / 32; the low two bits are packed like Q2_K.
    std::memset(y.hmask, 0, sizeof y.hmask);
    uint8_t low[kQKK];
    for (int j = 0; j < kQKK; ++j) {
      int v = L[j];
      if (v > 3) {
        y.hmask[j % 32] = static_cast<uint8_t>(y.hmask[j % 32] | (1u << (j / 32)));
        v -= 4;
      }
      low[j] = static_cast<uint8_t>(v);
    }
    pack_2bit(low, y.qs);
  }
}

namespace {
// Signed 3-bit quant (-4..3) of element e of a Q3_K block.
inline int q3k_value(const BlockQ3_K& x, int e) {
  const int low = (x.qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
  const int high = (x.hmask[e % 32] >> (e / 32)) & 1;
  return low - (high ? 0 : 4);
}
}  // namespace

void dequantize_q3_K(const void* src, float* dst, int64_t n) {
  const auto* in = static_cast<const BlockQ3_K*>(src);
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const BlockQ3_K& x = in[b];
    int8_t sc[16];
    unpack_scales_q3k(x.scales, sc);
    const float d_all = fp16_to_fp32(x.d);
    for (int e = 0; e < kQKK; ++e) dst[b * kQKK + e] = (d_all * sc[e / 16]) * q3k_value(x, e);
  }
}

float vec_dot_q3_K_ref(int64_t n, const void* xv, const void* yv) {
  const auto* xs = static_cast<const BlockQ3_K*>(xv);
  const auto* ys = static_cast<const BlockQ8_K*>(yv);
  float sum = 0;
  for (int64_t b = 0; b < n / kQKK; ++b) {
    int8_t sc[16];
    unpack_scales_q3k(xs[b].scales, sc);
    int isum = 0;
    for (int e = 0; e < kQKK; ++e) isum += sc[e / 16] * q3k_value(xs[b], e) * ys[b].qs[e];
    sum += (fp16_to_fp32(xs[b].d) * ys[b].d) * static_cast<float>(isum);
  }
  return sum;
}

// ---- Q4_K ---------------------------------------------------------------------------------------

void quantize_q4_K(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<BlockQ4_K*>(dst);
  for (int64_t b = 0; b < n / kQKK; ++b) {
    BlockQ4_K& y = out[b];
    uint8_t L[kQKK];
    std::memset(y.scales, 0, sizeof y.scales);
    quantize_affine_superblock(src + b * kQKK, 15, -1.f, 20, &y.d, &y.dmin, y.scales, L);
    for (int c = 0; c < 4; ++c) {
      for (int l = 0; l < 32; ++l) y.qs[32 * c + l] = static_cast<uint8_t>(L[64 * c + l] | (L[64 * c + l + 32] << 4));
    }
  }
}

namespace {
inline int q4k_value(const BlockQ4_K& x, int e) {
  const uint8_t byte = x.qs[32 * (e / 64) + e % 32];
  return (e % 64) < 32 ? (byte & 0x0F) : (byte >> 4);
}
inline int q5k_value(const BlockQ5_K& x, int e) {
  const uint8_t byte = x.qs[32 * (e / 64) + e % 32];
  const int low = (e % 64) < 32 ? (byte & 0x0F) : (byte >> 4);
  return low | (((x.qh[e % 32] >> (e / 32)) & 1) << 4);
}
}  // namespace

void dequantize_q4_K(const void* src, float* dst, int64_t n) {
  const auto* in = static_cast<const BlockQ4_K*>(src);
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const BlockQ4_K& x = in[b];
    const float d = fp16_to_fp32(x.d), dmin = fp16_to_fp32(x.dmin);
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      unpack_scale_min_k4(j, x.scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      for (int l = 0; l < 32; ++l) dst[b * kQKK + 32 * j + l] = d1 * q4k_value(x, 32 * j + l) - m1;
    }
  }
}

float vec_dot_q4_K_ref(int64_t n, const void* xv, const void* yv) {
  const auto* xs = static_cast<const BlockQ4_K*>(xv);
  const auto* ys = static_cast<const BlockQ8_K*>(yv);
  float sum = 0;
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const BlockQ4_K& x = xs[b];
    const BlockQ8_K& y = ys[b];
    int isum = 0, summ = 0;
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      unpack_scale_min_k4(j, x.scales, &sc, &m);
      int s = 0;
      for (int l = 0; l < 32; ++l) s += q4k_value(x, 32 * j + l) * y.qs[32 * j + l];
      isum += sc * s;
      summ += m * (y.bsums[2 * j] + y.bsums[2 * j + 1]);
    }
    sum += (fp16_to_fp32(x.d) * y.d) * static_cast<float>(isum) - (fp16_to_fp32(x.dmin) * y.d) * static_cast<float>(summ);
  }
  return sum;
}

// ---- Q5_K ---------------------------------------------------------------------------------------

void quantize_q5_K(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<BlockQ5_K*>(dst);
  for (int64_t b = 0; b < n / kQKK; ++b) {
    BlockQ5_K& y = out[b];
    uint8_t L[kQKK];
    std::memset(y.scales, 0, sizeof y.scales);
    quantize_affine_superblock(src + b * kQKK, 31, -0.5f, 15, &y.d, &y.dmin, y.scales, L);
    std::memset(y.qh, 0, sizeof y.qh);
    for (int c = 0; c < 4; ++c) {
      for (int l = 0; l < 32; ++l) {
        int lo = L[64 * c + l], hi = L[64 * c + l + 32];
        if (lo > 15) {
          lo -= 16;
          y.qh[l] = static_cast<uint8_t>(y.qh[l] | (1u << (2 * c)));
        }
        if (hi > 15) {
          hi -= 16;
          y.qh[l] = static_cast<uint8_t>(y.qh[l] | (2u << (2 * c)));
        }
        y.qs[32 * c + l] = static_cast<uint8_t>(lo | (hi << 4));
      }
    }
  }
}

void dequantize_q5_K(const void* src, float* dst, int64_t n) {
  const auto* in = static_cast<const BlockQ5_K*>(src);
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const BlockQ5_K& x = in[b];
    const float d = fp16_to_fp32(x.d), dmin = fp16_to_fp32(x.dmin);
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      unpack_scale_min_k4(j, x.scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      for (int l = 0; l < 32; ++l) dst[b * kQKK + 32 * j + l] = d1 * q5k_value(x, 32 * j + l) - m1;
    }
  }
}

float vec_dot_q5_K_ref(int64_t n, const void* xv, const void* yv) {
  const auto* xs = static_cast<const BlockQ5_K*>(xv);
  const auto* ys = static_cast<const BlockQ8_K*>(yv);
  float sum = 0;
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const BlockQ5_K& x = xs[b];
    const BlockQ8_K& y = ys[b];
    int isum = 0, summ = 0;
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      unpack_scale_min_k4(j, x.scales, &sc, &m);
      int s = 0;
      for (int l = 0; l < 32; ++l) s += q5k_value(x, 32 * j + l) * y.qs[32 * j + l];
      isum += sc * s;
      summ += m * (y.bsums[2 * j] + y.bsums[2 * j + 1]);
    }
    sum += (fp16_to_fp32(x.d) * y.d) * static_cast<float>(isum) - (fp16_to_fp32(x.dmin) * y.d) * static_cast<float>(summ);
  }
  return sum;
}

// ---- Q6_K ---------------------------------------------------------------------------------------

void quantize_q6_K(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<BlockQ6_K*>(dst);
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const float* x = src + b * kQKK;
    BlockQ6_K& y = out[b];
    int8_t L[kQKK];
    float scales[16];
    float max_scale = 0, max_abs_scale = 0;
    for (int j = 0; j < 16; ++j) {
      scales[j] = search_symmetric_scale(16, 32, x + 16 * j, L + 16 * j);
      const float a = std::fabs(scales[j]);
      if (a > max_abs_scale) {
        max_abs_scale = a;
        max_scale = scales[j];
      }
    }
    if (max_abs_scale < kGroupEps) {
      std::memset(&y, 0, sizeof y);
      continue;
    }
    const float iscale = -128.f / max_scale;
    y.d = fp32_to_fp16(1 / iscale);
    for (int j = 0; j < 16; ++j) y.scales[j] = static_cast<int8_t>(std::min(127, round_half_even_to_int(iscale * scales[j])));
    for (int j = 0; j < 16; ++j) {
      const float d = fp16_to_fp32(y.d) * y.scales[j];
      if (d == 0.0f) continue;
      for (int i = 0; i < 16; ++i) {
        L[16 * j + i] = static_cast<int8_t>(clampi(round_half_even_to_int(x[16 * j + i] / d), -32, 31) + 32);
      }
    }
    for (int g = 0; g < 2; ++g) {
      const int8_t* Lg = L + 128 * g;
      uint8_t* ql = y.ql + 64 * g;
      uint8_t* qh = y.qh + 32 * g;
      for (int l = 0; l < 32; ++l) {
        ql[l] = static_cast<uint8_t>((Lg[l] & 0x0F) | ((Lg[l + 64] & 0x0F) << 4));
        ql[l + 32] = static_cast<uint8_t>((Lg[l + 32] & 0x0F) | ((Lg[l + 96] & 0x0F) << 4));
        qh[l] = static_cast<uint8_t>((Lg[l] >> 4) | ((Lg[l + 32] >> 4) << 2) | ((Lg[l + 64] >> 4) << 4) | ((Lg[l + 96] >> 4) << 6));
      }
    }
  }
}

namespace {
// Unsigned 6-bit quant (0..63) of element e of a Q6_K block; the value is (q - 32) * d * scale[e/16].
inline int q6k_value(const BlockQ6_K& x, int e) {
  const int g = e / 128, w = e % 128, k = w / 32, l = w % 32;
  const uint8_t lbyte = x.ql[64 * g + l + 32 * (k & 1)];
  const int low = (k < 2) ? (lbyte & 0x0F) : (lbyte >> 4);
  const int high = (x.qh[32 * g + l] >> (2 * k)) & 3;
  return low | (high << 4);
}
}  // namespace

void dequantize_q6_K(const void* src, float* dst, int64_t n) {
  const auto* in = static_cast<const BlockQ6_K*>(src);
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const float d = fp16_to_fp32(in[b].d);
    for (int e = 0; e < kQKK; ++e) dst[b * kQKK + e] = d * in[b].scales[e / 16] * (q6k_value(in[b], e) - 32);
  }
}

float vec_dot_q6_K_ref(int64_t n, const void* xv, const void* yv) {
  const auto* xs = static_cast<const BlockQ6_K*>(xv);
  const auto* ys = static_cast<const BlockQ8_K*>(yv);
  float sum = 0;
  for (int64_t b = 0; b < n / kQKK; ++b) {
    int isum = 0;
    for (int e = 0; e < kQKK; ++e) isum += xs[b].scales[e / 16] * (q6k_value(xs[b], e) - 32) * ys[b].qs[e];
    sum += (fp16_to_fp32(xs[b].d) * ys[b].d) * static_cast<float>(isum);
  }
  return sum;
}

// ---- Q8_K (activations) -------------------------------------------------------------------------

void quantize_q8_K(const float* src, void* dst, int64_t n) {
  auto* out = static_cast<BlockQ8_K*>(dst);
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const float* x = src + b * kQKK;
    BlockQ8_K& y = out[b];
    float amax = 0, vmax = 0;
    for (int j = 0; j < kQKK; ++j) {
      const float a = std::fabs(x[j]);
      if (a > amax) {
        amax = a;
        vmax = x[j];
      }
    }
    if (amax == 0.0f) {
      std::memset(&y, 0, sizeof y);  // llama.cpp leaves bsums untouched here; zero is the sane value
      continue;
    }
    // The signed maximum maps to -127 exactly, so every quant lies in [-127, 127].
    const float iscale = -127.f / vmax;
    for (int j = 0; j < kQKK; ++j) y.qs[j] = static_cast<int8_t>(std::min(127, round_half_even_to_int(iscale * x[j])));
    for (int j = 0; j < 16; ++j) {
      int s = 0;
      for (int i = 0; i < 16; ++i) s += y.qs[16 * j + i];
      y.bsums[j] = static_cast<int16_t>(s);
    }
    y.d = 1 / iscale;
  }
}

void dequantize_q8_K(const void* src, float* dst, int64_t n) {
  const auto* in = static_cast<const BlockQ8_K*>(src);
  for (int64_t b = 0; b < n / kQKK; ++b) {
    for (int j = 0; j < kQKK; ++j) dst[b * kQKK + j] = in[b].d * in[b].qs[j];
  }
}

}  // namespace moe::quant
