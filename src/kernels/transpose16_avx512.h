// A 16 x 16 transpose of 32-bit lanes in registers, shared by the AVX-512 kernels that need one (the
// panel GEMM's conversions, the fp32 GEMM's key transpose). Include only from files compiled for AVX-512.
#pragma once
#include <immintrin.h>

namespace moe::kernels {

// In place: r[i] lane j <-> r[j] lane i (32-bit lanes).
inline void transpose16(__m512i* r) {
  __m512i a[16], b[16];
  for (int i = 0; i < 16; i += 2) {
    a[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    a[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  // b[4m + c], 128-bit lane L: column 4L + c of rows 4m .. 4m+3.
  for (int m = 0; m < 16; m += 4) {
    b[m] = _mm512_unpacklo_epi64(a[m], a[m + 2]);
    b[m + 1] = _mm512_unpackhi_epi64(a[m], a[m + 2]);
    b[m + 2] = _mm512_unpacklo_epi64(a[m + 1], a[m + 3]);
    b[m + 3] = _mm512_unpackhi_epi64(a[m + 1], a[m + 3]);
  }
  // Output 4L + c gathers lane L of b[c], b[4 + c], b[8 + c], b[12 + c].
  for (int c = 0; c < 4; ++c) {
    const __m512i c1 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0x44), c2 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0xEE);
    const __m512i c3 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0x44), c4 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0xEE);
    r[c] = _mm512_shuffle_i32x4(c1, c3, 0x88);
    r[4 + c] = _mm512_shuffle_i32x4(c1, c3, 0xDD);
    r[8 + c] = _mm512_shuffle_i32x4(c2, c4, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(c2, c4, 0xDD);
  }
}

}  // namespace moe::kernels
