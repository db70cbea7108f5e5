#include "kernels/q4k_repack.h"

#include <cstring>

#include "kernels/cpu_features.h"
#include "kernels/quant_blocks.h"

namespace moe::quant {
namespace {

// Quants. Q4_K: qs[32c + l] holds element 64c + l (low nibble) and 64c + 32 + l (high). Q4_K_R:
// qs[64h + k] holds element 128h + k (low) and 128h + 64 + k (high). Both are permutations of the same
// nibbles; the loops below are plain byte arithmetic the compiler vectorizes (a model repacks at load).
// Q4_K_R byte 64h + k, k < 32: elements 128h + k (Q4_K byte 64h + k, low) and 128h + 64 + k (Q4_K byte
// 64h + 32 + k, low); k >= 32: the same bytes' high nibbles (k' = k - 32).
void repack_quants(const uint8_t* in, uint8_t* out) {
  for (int h = 0; h < 2; ++h) {
    const uint8_t* a = in + 64 * h;  // chunk 2h: elements 128h + [0, 64)
    const uint8_t* b = a + 32;       // chunk 2h + 1: elements 128h + 64 + [0, 64)
    uint8_t* o = out + 64 * h;
    for (int k = 0; k < 32; ++k) {
      o[k] = static_cast<uint8_t>((a[k] & 0x0F) | (b[k] << 4));
      o[32 + k] = static_cast<uint8_t>((a[k] >> 4) | (b[k] & 0xF0));
    }
  }
}

void unrepack_quants(const uint8_t* in, uint8_t* out) {
  for (int h = 0; h < 2; ++h) {
    const uint8_t* o = in + 64 * h;
    uint8_t* a = out + 64 * h;
    uint8_t* b = a + 32;
    for (int k = 0; k < 32; ++k) {
      a[k] = static_cast<uint8_t>((o[k] & 0x0F) | (o[32 + k] << 4));
      b[k] = static_cast<uint8_t>((o[k] >> 4) | (o[32 + k] & 0xF0));
    }
  }
}

// Scales: Q4_K's 12-byte field <-> sixteen 6-bit values packed LSB first (scales 0..7, then mins).
void pack_scales(const uint8_t* q4k_field, uint8_t* out) {
  uint64_t lo = 0, hi = 0;  // bits 0..63 and 64..95 of the packed field
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    unpack_scale_min_k4(j, q4k_field, &sc, &m);
    const int fs = j, fm = 8 + j;
    const unsigned __int128 v = (static_cast<unsigned __int128>(sc) << (6 * fs)) |
                                (static_cast<unsigned __int128>(m) << (6 * fm));
    lo |= static_cast<uint64_t>(v);
    hi |= static_cast<uint64_t>(v >> 64);
  }
  std::memcpy(out, &lo, 8);
  std::memcpy(out + 8, &hi, 4);
}

void unpack_scales(const uint8_t* packed, uint8_t* q4k_field) {
  uint64_t lo = 0, hi = 0;
  std::memcpy(&lo, packed, 8);
  std::memcpy(&hi, packed + 8, 4);
  const unsigned __int128 all = (static_cast<unsigned __int128>(hi) << 64) | lo;
  uint8_t s[12] = {};
  // The inverse of unpack_scale_min_k4: values 0..3 in the low 6 bits of bytes 0..3 (scales) and 4..7
  // (mins); values 4..7 as a low nibble in bytes 8..11 and two high bits on top of bytes 0..7.
  for (int j = 0; j < 8; ++j) {
    const auto sc = static_cast<uint8_t>((all >> (6 * j)) & 63), m = static_cast<uint8_t>((all >> (6 * (8 + j))) & 63);
    if (j < 4) {
      s[j] = static_cast<uint8_t>(s[j] | sc);
      s[j + 4] = static_cast<uint8_t>(s[j + 4] | m);
    } else {
      s[j + 4] = static_cast<uint8_t>((sc & 0x0F) | ((m & 0x0F) << 4));
      s[j - 4] = static_cast<uint8_t>(s[j - 4] | ((sc >> 4) << 6));
      s[j] = static_cast<uint8_t>(s[j] | ((m >> 4) << 6));
    }
  }
  std::memcpy(q4k_field, s, 12);
}

void repack_block(const BlockQ4_K& in, BlockQ4_K& out) {
  out.d = in.d;
  out.dmin = in.dmin;
  pack_scales(in.scales, out.scales);
  repack_quants(in.qs, out.qs);
}

void unrepack_block(const BlockQ4_K& in, BlockQ4_K& out) {
  out.d = in.d;
  out.dmin = in.dmin;
  unpack_scales(in.scales, out.scales);
  unrepack_quants(in.qs, out.qs);
}

}  // namespace

void repack_q4k(const void* src, void* dst, int64_t n_blocks) {
  if (q4k_repacked_kernels_available()) {
    repack_q4k_avx512vbmi(src, dst, n_blocks);
    return;
  }
  repack_q4k_ref(src, dst, n_blocks);
}

// Block by block through a temporary, so src == dst works.
template <void (*Convert)(const BlockQ4_K&, BlockQ4_K&)>
void convert_blocks(const void* src, void* dst, int64_t n_blocks) {
  const auto* in = static_cast<const BlockQ4_K*>(src);
  auto* out = static_cast<BlockQ4_K*>(dst);
  for (int64_t b = 0; b < n_blocks; ++b) {
    BlockQ4_K t;
    Convert(in[b], t);
    out[b] = t;
  }
}

void repack_q4k_ref(const void* src, void* dst, int64_t n_blocks) { convert_blocks<repack_block>(src, dst, n_blocks); }

void unrepack_q4k(const void* src, void* dst, int64_t n_blocks) { convert_blocks<unrepack_block>(src, dst, n_blocks); }

void dequantize_q4_K_r(const void* src, float* dst, int64_t n) {
  const auto* in = static_cast<const BlockQ4_K*>(src);
  for (int64_t b = 0; b < n / kQKK; ++b) {
    BlockQ4_K t;
    unrepack_block(in[b], t);
    dequantize_q4_K(&t, dst + b * kQKK, kQKK);
  }
}

void quantize_q4_K_r(const float* src, void* dst, int64_t n) {
  quantize_q4_K(src, dst, n);
  repack_q4k(dst, dst, n / kQKK);
}

float vec_dot_q4_K_r_ref(int64_t n, const void* x, const void* y) {
  // Block by block, in the Q4_K reference's own summation order.
  const auto* xs = static_cast<const BlockQ4_K*>(x);
  const auto* ys = static_cast<const BlockQ8_K*>(y);
  float sum = 0;
  for (int64_t b = 0; b < n / kQKK; ++b) {
    BlockQ4_K t;
    unrepack_block(xs[b], t);
    sum += vec_dot_q4_K_ref(kQKK, &t, &ys[b]);
  }
  return sum;
}

bool q4k_repacked_kernels_available() {
  return best_isa() == Isa::Avx512 && cpu_features().has_avx512vbmi_kernels();
}

}  // namespace moe::quant
