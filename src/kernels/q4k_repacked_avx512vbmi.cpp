#pragma GCC optimize("fp-contract=off")  // the kernels follow the scalar reference's float operations
// Kernels for Q4_K_R, the in-memory Q4_K layout repacked for AVX-512 (q4k_repack.h describes it).
// Compiled with VBMI and GFNI on top of the AVX-512 set (file name ends in _avx512vbmi.cpp); only
// reached after cpu_features().has_avx512vbmi_kernels().
//
// Decoding a repacked block needs no lane shuffles for the quants (the nibbles are already in the
// activations' order; the high nibble comes out of one vgf2p8affineqb) and three ops for the sixteen
// 6-bit scales and mins (one pshufb, one vpmultishiftqb, one mask). The decoded K4Weights are exactly
// those the Q4_K decoder produces for the original block, and the kernel templates are shared, so every
// result is bit-identical to the Q4_K kernels on the block before repacking.
#include "kernels/k_quant_tile_avx512.h"
#include "kernels/q4k_repack.h"

namespace moe::quant {
namespace avx512t {
namespace {

struct K4RepackedDecoder {
  static constexpr size_t kBlockBytes = sizeof(BlockQ4_K);
  static void decode(const uint8_t* blk, K4Weights& k) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    // GF(2) affine map taking bits 4..7 of every byte to bits 0..3 (row i of the matrix, byte 7 - i of
    // the qword, selects the input bit for output bit i): the high nibble in one instruction.
    const __m512i hi_nibble = _mm512_set1_epi64(0x1020408000000000LL);
    const __m128i min_idx = _mm_setr_epi8(8, -128, 9, -128, 10, -128, 11, -128, 12, -128, 13, -128, 14, -128, 15, -128);
    // Bytes 4..19 (the 12 packed bytes and 4 quant bytes, all inside the block): qword 0 <- bytes 4..11
    // (values 0..7 at bits 0, 6, .., 42), qword 1 <- bytes 10..17 (values 8..15 at the same offsets).
    const __m128i packed =
        _mm_shuffle_epi8(ld128(blk + 4), _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 6, 7, 8, 9, 10, 11, 12, 13));
    const __m128i shifts = _mm_set1_epi64x(0x2A241E18120C0600LL);  // bytes 0, 6, 12, .., 42
    const __m128i sc = _mm_and_si128(_mm_multishift_epi64_epi8(shifts, packed), _mm_set1_epi8(63));
    k.mins16 = _mm_shuffle_epi8(sc, min_idx);
    const __m512i scz = _mm512_castsi128_si512(sc);  // only bytes 0..7 are indexed below
    const __mmask64 even = 0x5555555555555555ULL;     // int16 lanes: scale byte, then a zero byte
    #pragma GCC unroll 8
    for (int h = 0; h < 2; ++h) {
      const __m512i q = ld512(blk + 16 + 64 * h);
      k.v[2 * h] = _mm512_and_si512(q, m4);
      k.v[2 * h + 1] = _mm512_gf2p8affine_epi64_epi8(q, hi_nibble, 0);
      #pragma GCC unroll 8
      for (int i = 0; i < 2; ++i) {
        const char s0 = static_cast<char>(4 * h + 2 * i), s1 = static_cast<char>(4 * h + 2 * i + 1);
        const __m512i idx = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi8(s0)), _mm256_set1_epi8(s1), 1);
        k.s[2 * h + i] = _mm512_maskz_permutexvar_epi8(even, idx, scz);
      }
    }
    uint16_t dh, dmh;
    std::memcpy(&dh, blk, 2);
    std::memcpy(&dmh, blk + 2, 2);
    k.dx = h2f(dh);
    k.dmx = h2f(dmh);
  }
};

const KQuantKernels kQ4KR = MOE_K4_KERNELS(DType::Q4_K_R, K4RepackedDecoder);

}  // namespace
}  // namespace avx512t

void repack_q4k_avx512vbmi(const void* src, void* dst, int64_t n_blocks) {
  using namespace avx512t;
  const __m256i m4 = _mm256_set1_epi8(0x0F), m4h = _mm256_set1_epi8(static_cast<char>(0xF0));
  const uint64_t low6 = 0x3F3F3F3F3F3F3F3FULL;
  for (int64_t b = 0; b < n_blocks; ++b) {
    const auto* in = static_cast<const uint8_t*>(src) + b * sizeof(BlockQ4_K);
    auto* out = static_cast<uint8_t*>(dst) + b * sizeof(BlockQ4_K);
    // Scales: the Q4_K decoder's [sc0..sc7, m0..m7] bytes, each byte's low six bits gathered by pext.
    alignas(16) uint64_t v[2];
    _mm_store_si128(reinterpret_cast<__m128i*>(v), k4_unpack_scales(in + 4));
    const uint64_t sc48 = _pext_u64(v[0], low6), m48 = _pext_u64(v[1], low6);
    const uint64_t packed_lo = sc48 | (m48 << 48), packed_hi = m48 >> 16;
    __m256i q[4];
    for (int i = 0; i < 4; ++i) q[i] = ld256(in + 16 + 32 * i);
    for (int h = 0; h < 2; ++h) {
      const __m256i a = q[2 * h], c = q[2 * h + 1];  // Q4_K bytes 64h + [0, 32) and 64h + 32 + [0, 32)
      const __m256i lo = _mm256_or_si256(_mm256_and_si256(a, m4), _mm256_slli_epi16(_mm256_and_si256(c, m4), 4));
      const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(a, 4), m4), _mm256_and_si256(c, m4h));
      q[2 * h] = lo;
      q[2 * h + 1] = hi;
    }
    std::memmove(out, in, 4);  // d, dmin
    std::memcpy(out + 4, &packed_lo, 8);
    std::memcpy(out + 12, &packed_hi, 4);
    for (int i = 0; i < 4; ++i) _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16 + 32 * i), q[i]);
  }
}

TileKernels tile_kernels_q4k_repacked_avx512vbmi() {
  using namespace avx512t;
  return {drive_k<kQ4KR>, single_k<kQ4KR>};
}

}  // namespace moe::quant
