// Small helpers shared by the scalar quantizers.
#pragma once
#include <cstdint>
#include <cstring>

namespace moe::quant {

// Rounds to the nearest integer, ties to even, for |v| < 2^22. Adding 1.5 * 2^23 pushes the value into a
// binade whose unit in the last place is 1, so the FPU's default rounding does the work; the integer is
// then read from the low mantissa bits. This is the rounding llama.cpp's K-quant code uses, and unlike
// lrintf it needs neither SSE4.1 nor a libm call.
inline int round_half_even_to_int(float v) {
  const float shifted = v + 12582912.f;
  uint32_t bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  return static_cast<int>(bits & 0x007FFFFFu) - 0x00400000;
}

}  // namespace moe::quant
