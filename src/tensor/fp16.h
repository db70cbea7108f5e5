// Half-precision (IEEE binary16) and bfloat16 conversions.
//
// The scalar conversions are pure integer bit manipulation so they are exact on any x86-64 (no F16C
// needed) and do not depend on MXCSR flush-to-zero settings. Narrowing always rounds to nearest, ties to
// even, which is what both F16C (vcvtps2ph with imm 0) and llama.cpp's bf16 converter do, so activations
// converted here match llama.cpp bit for bit. NaNs stay NaN (made quiet, sign and top payload bits kept),
// infinities stay infinite, and binary16 subnormals are produced and consumed exactly.
#pragma once
#include <cstdint>
#include <cstring>

namespace moe {

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float f32_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  if (exp == 0x1F) return f32_from_bits(sign | 0x7F800000u | (mant << 13));  // inf / NaN (payload kept)
  if (exp != 0) return f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return f32_from_bits(sign);  // signed zero
  // Subnormal half: value = mant * 2^-24. Normalise the mantissa into an fp32 normal number.
  int e = -1;
  do {
    mant <<= 1;
    ++e;
  } while ((mant & 0x400u) == 0);
  mant &= 0x3FFu;
  return f32_from_bits(sign | static_cast<uint32_t>(112 - e) << 23 | (mant << 13));
}

inline uint16_t fp32_to_fp16(float f) {
  const uint32_t x = f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7FFFFFFFu;
  if (ax > 0x7F800000u) {  // NaN: keep the top payload bits, force the quiet bit
    return static_cast<uint16_t>(sign | 0x7E00u | ((ax >> 13) & 0x3FFu));
  }
  if (ax >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds to >= 65536: inf
  if (ax < 0x38800000u) {
    // Result is a binary16 subnormal (or zero): value / 2^-24 rounded to an integer, ties to even.
    if (ax < 0x33000000u) return sign;  // below half of the smallest subnormal (ties at exactly 2^-25 go to 0)
    const uint32_t e = ax >> 23;              // 102..112
    const uint32_t m = (ax & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126u - e;          // 14..24
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return static_cast<uint16_t>(sign | q);  // q may carry into the smallest normal, which is correct
  }
  // Normal range: rebias the exponent and round the 13 dropped mantissa bits, ties to even. A carry out
  // of the mantissa correctly bumps the exponent (and can reach inf only above the threshold handled above).
  uint32_t h = ((ax >> 13) - (112u << 10));
  const uint32_t rem = ax & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

inline float bf16_to_fp32(uint16_t h) { return f32_from_bits(static_cast<uint32_t>(h) << 16); }

inline uint16_t fp32_to_bf16(float f) {
  const uint32_t x = f32_bits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  // Round to nearest even on the low 16 bits; overflow correctly rounds up to infinity. Subnormals are
  // rounded like any other value (no flush).
  return static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

// Row converters. They use F16C when the CPU has it (identical results; the scalar path is exact).
void fp16_to_fp32_row(const uint16_t* src, float* dst, int64_t n);
void fp32_to_fp16_row(const float* src, uint16_t* dst, int64_t n);
void bf16_to_fp32_row(const uint16_t* src, float* dst, int64_t n);
void fp32_to_bf16_row(const float* src, uint16_t* dst, int64_t n);

}  // namespace moe
