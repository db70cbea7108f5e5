// Quantized block layouts, byte-for-byte identical to the GGUF / ggml on-disk formats, plus the scalar
// reference kernels (dequantize, quantize, dot product) for every type. The SIMD kernels live in
// vec_dot_avx2.cpp / vec_dot_avx512.cpp and are reached through quant_dispatch.h.
//
// Element order inside a block follows ggml: for the 32-element "legacy" blocks the low nibbles hold
// elements 0..15 and the high nibbles elements 16..31; the K-quant super-blocks hold 256 elements.
#pragma once
#include <bit>
#include <cstddef>
#include <cstdint>

namespace moe::quant {

inline constexpr int kQK = 32;    // legacy block size (Q4_0 ... Q8_1)
inline constexpr int kQKK = 256;  // K-quant super-block size

struct BlockQ4_0 {
  uint16_t d;             // fp16 scale
  uint8_t qs[kQK / 2];    // value = (nibble - 8) * d
};
struct BlockQ4_1 {
  uint16_t d, m;          // fp16 scale and offset
  uint8_t qs[kQK / 2];    // value = nibble * d + m
};
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];          // bit j = 5th bit of element j
  uint8_t qs[kQK / 2];    // value = ((nibble | hbit << 4) - 16) * d
};
struct BlockQ5_1 {
  uint16_t d, m;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];    // value = (nibble | hbit << 4) * d + m
};
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[kQK];
};
struct BlockQ8_1 {
  uint16_t d;             // fp16 scale
  uint16_t s;             // fp16 of d * sum(qs)
  int8_t qs[kQK];
};
struct BlockQ2_K {
  uint8_t scales[kQKK / 16];  // low nibble: scale, high nibble: min, per 16 elements
  uint8_t qs[kQKK / 4];       // 2-bit quants, four 32-element groups per 32 bytes
  uint16_t d, dmin;
};
struct BlockQ3_K {
  uint8_t hmask[kQKK / 8];    // high bit of each quant
  uint8_t qs[kQKK / 4];       // low 2 bits
  uint8_t scales[12];         // 16 six-bit scales, packed
  uint16_t d;
};
struct BlockQ4_K {
  uint16_t d, dmin;
  uint8_t scales[12];         // 8 six-bit scales + 8 six-bit mins, packed
  uint8_t qs[kQKK / 2];
};
struct BlockQ5_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qh[kQKK / 8];
  uint8_t qs[kQKK / 2];
};
struct BlockQ6_K {
  uint8_t ql[kQKK / 2];       // low 4 bits
  uint8_t qh[kQKK / 4];       // high 2 bits
  int8_t scales[kQKK / 16];
  uint16_t d;
};
// MXFP4 (OCP microscaling): 32 four-bit e2m1 codes sharing one e8m0 exponent byte. Element j and
// j + 16 share byte qs[j] (low, high nibble), as in the legacy blocks. ggml stores the codes' values
// doubled (kMxfp4Values, integers -12..12) and halves the scale instead (e8m0_to_fp32_half), so the
// integer dot products with Q8_0 activations are exact.
struct BlockMXFP4 {
  uint8_t e;              // e8m0 exponent: scale 2^(e - 127), used as 2^(e - 128) with the doubled values
  uint8_t qs[kQK / 2];
};
struct BlockQ8_K {
  float d;                    // fp32 scale (activation-only format)
  int8_t qs[kQKK];
  int16_t bsums[kQKK / 16];   // sums of qs per 16 elements
};

static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ5_0) == 22);
static_assert(sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ8_1) == 36);
static_assert(sizeof(BlockQ2_K) == 84);
static_assert(sizeof(BlockQ3_K) == 110);
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176);
static_assert(sizeof(BlockQ6_K) == 210);
static_assert(sizeof(BlockQ8_K) == 292);
static_assert(sizeof(BlockMXFP4) == 17);

// Twice the e2m1 value of each 4-bit code (bit 3 is the sign; -0 decodes to 0).
inline constexpr int8_t kMxfp4Values[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// Half of the e8m0 scale 2^(e - 127), i.e. 2^(e - 128), as ggml's GGML_E8M0_TO_FP32_HALF computes it:
// e = 0 and 1 give the subnormals 2^-128 and 2^-127; e = 255 (NaN in the OCP format) gives 2^127.
constexpr float e8m0_to_fp32_half(uint8_t e) {
  return std::bit_cast<float>(e < 2 ? 0x00200000u << e : static_cast<uint32_t>(e - 1) << 23);
}
// The same as a table, for kernels that look the scale up per block.
struct E8m0HalfTable {
  float v[256];
  constexpr E8m0HalfTable() : v() {
    for (int e = 0; e < 256; ++e) v[e] = e8m0_to_fp32_half(static_cast<uint8_t>(e));
  }
};
inline constexpr E8m0HalfTable kE8m0Half{};

// Unpacks the j-th (0..7) six-bit scale and min of a Q4_K / Q5_K block.
inline void unpack_scale_min_k4(int j, const uint8_t* s, uint8_t* sc, uint8_t* mn) {
  if (j < 4) {
    *sc = s[j] & 63;
    *mn = s[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4));
    *mn = static_cast<uint8_t>((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

// Unpacks the 16 signed six-bit scales of a Q3_K block (range -32..31).
inline void unpack_scales_q3k(const uint8_t* s, int8_t out[16]) {
  for (int j = 0; j < 16; ++j) {
    const int low = j < 8 ? (s[j] & 0x0F) : (s[j - 8] >> 4);
    const int high = (s[8 + (j % 4)] >> (2 * (j / 4))) & 3;
    out[j] = static_cast<int8_t>((low | (high << 4)) - 32);
  }
}

// ---- scalar reference kernels -------------------------------------------------------------------
// All take n = element count (multiple of the block size).

void dequantize_f32(const void* src, float* dst, int64_t n);
void dequantize_f16(const void* src, float* dst, int64_t n);
void dequantize_bf16(const void* src, float* dst, int64_t n);
void quantize_f32(const float* src, void* dst, int64_t n);
void quantize_f16(const float* src, void* dst, int64_t n);
void quantize_bf16(const float* src, void* dst, int64_t n);
float vec_dot_f32_ref(int64_t n, const void* x, const void* y);
float vec_dot_f16_ref(int64_t n, const void* x, const void* y);
float vec_dot_bf16_ref(int64_t n, const void* x, const void* y);

#define MOE_DECLARE_QUANT_TYPE(tag)                                    \
  void dequantize_##tag(const void* src, float* dst, int64_t n);       \
  void quantize_##tag(const float* src, void* dst, int64_t n);

MOE_DECLARE_QUANT_TYPE(q4_0)
MOE_DECLARE_QUANT_TYPE(q4_1)
MOE_DECLARE_QUANT_TYPE(q5_0)
MOE_DECLARE_QUANT_TYPE(q5_1)
MOE_DECLARE_QUANT_TYPE(q8_0)
MOE_DECLARE_QUANT_TYPE(q8_1)
MOE_DECLARE_QUANT_TYPE(q2_K)
MOE_DECLARE_QUANT_TYPE(q3_K)
MOE_DECLARE_QUANT_TYPE(q4_K)
MOE_DECLARE_QUANT_TYPE(q5_K)
MOE_DECLARE_QUANT_TYPE(q6_K)
MOE_DECLARE_QUANT_TYPE(q8_K)
MOE_DECLARE_QUANT_TYPE(mxfp4)
#undef MOE_DECLARE_QUANT_TYPE

// Q8_0 has two quantizers. quantize_q8_0 mirrors llama.cpp's x86 activation path (scale 127/amax,
// round-half-even) and is what the forward pass uses; quantize_q8_0_storage mirrors llama.cpp's
// model-file quantizer (scale 1/d, round-half-away-from-zero) and is what writing a model uses.
void quantize_q8_0_storage(const float* src, void* dst, int64_t n);

float vec_dot_q4_0_ref(int64_t n, const void* x, const void* y);  // y: Q8_0
float vec_dot_q4_1_ref(int64_t n, const void* x, const void* y);  // y: Q8_1
float vec_dot_q5_0_ref(int64_t n, const void* x, const void* y);  // y: Q8_0
float vec_dot_q5_1_ref(int64_t n, const void* x, const void* y);  // y: Q8_1
float vec_dot_q8_0_ref(int64_t n, const void* x, const void* y);  // y: Q8_0
float vec_dot_q2_K_ref(int64_t n, const void* x, const void* y);  // y: Q8_K
float vec_dot_q3_K_ref(int64_t n, const void* x, const void* y);
float vec_dot_q4_K_ref(int64_t n, const void* x, const void* y);
float vec_dot_q5_K_ref(int64_t n, const void* x, const void* y);
float vec_dot_q6_K_ref(int64_t n, const void* x, const void* y);
float vec_dot_mxfp4_ref(int64_t n, const void* x, const void* y);  // y: Q8_0

}  // namespace moe::quant
