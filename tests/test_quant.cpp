// Tests for the dtype trait table, the quant block formats and the dot-product kernels.
//
// What is checked, and why each tolerance is what it is:
//  * SIMD vs scalar reference dot products. Every quantized kernel computes each block's integer dot
//    product exactly and multiplies it by the same float scales as the reference; only the order of
//    the float summation across blocks (and, for the SIMD path, across 8 or 16 lanes) differs. The
//    error is therefore bounded by a few ulps times sum_i |w_i * a_i| -- we allow 2e-6 of that sum
//    for quant types (measured worst ~3e-7). The float types (F32/F16/BF16) are compared to a
//    double-precision reference, so the SIMD fp32 accumulation error itself shows up: 1e-5 of the sum.
//  * Quantize -> dequantize error on Gaussian data, RMSE relative to the signal RMS, below a per-type
//    bound set about 25% above the value the format achieves (see kRoundTripBound).
//  * F16 / BF16 conversions at the edges (ties, subnormals, overflow, NaN, inf), exhaustively for all
//    65536 half values.
//  * Byte-exactness against llama.cpp: the fixture models were quantized by llama-quantize (no
//    imatrix); re-quantizing the F16 source tensors with our storage quantizers must give identical
//    bytes.
//  * Row-level kernels handle n = several multiples of the block size and write nothing past the row.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "test_data.h"
#include "base/error.h"
#include "format/gguf.h"
#include "kernels/cpu_features.h"
#include "kernels/quant_blocks.h"
#include "kernels/quant_dispatch.h"
#include "tensor/dtype.h"
#include "tensor/fp16.h"

using namespace moe;

namespace {

using test::gaussian;

const DType kWeightTypes[] = {DType::F32,  DType::F16,  DType::BF16, DType::Q4_0, DType::Q4_1,
                              DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q2_K, DType::Q3_K,
                              DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::MXFP4};

std::vector<uint8_t> quantize_with(QuantizeFn fn, DType t, const std::vector<float>& x) {
  std::vector<uint8_t> out(row_bytes(t, static_cast<int64_t>(x.size())));
  fn(x.data(), out.data(), static_cast<int64_t>(x.size()));
  return out;
}

std::vector<float> dequantize(DType t, const std::vector<uint8_t>& q, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  dtype_traits(t).dequantize(q.data(), out.data(), n);
  return out;
}

std::vector<Isa> simd_isas() {
  std::vector<Isa> v;
  if (cpu_features().has_avx2_kernels()) v.push_back(Isa::Avx2);
  if (cpu_features().has_avx512_kernels()) v.push_back(Isa::Avx512);
  return v;
}

}  // namespace

// ---- trait table ----------------------------------------------------------------------------------

TEST(QuantTraits, TableMatchesGgml) {
  struct Expect {
    DType t;
    const char* name;
    int64_t elems;
    size_t bytes;
    DType vdt;
  };
  const Expect expect[] = {
      {DType::F32, "f32", 1, 4, DType::F32},       {DType::F16, "f16", 1, 2, DType::F16},
      {DType::BF16, "bf16", 1, 2, DType::BF16},    {DType::Q4_0, "q4_0", 32, 18, DType::Q8_0},
      {DType::Q4_1, "q4_1", 32, 20, DType::Q8_1},  {DType::Q5_0, "q5_0", 32, 22, DType::Q8_0},
      {DType::Q5_1, "q5_1", 32, 24, DType::Q8_1},  {DType::Q8_0, "q8_0", 32, 34, DType::Q8_0},
      {DType::Q8_1, "q8_1", 32, 36, DType::Q8_1},  {DType::Q2_K, "q2_K", 256, 84, DType::Q8_K},
      {DType::Q3_K, "q3_K", 256, 110, DType::Q8_K}, {DType::Q4_K, "q4_K", 256, 144, DType::Q8_K},
      {DType::Q5_K, "q5_K", 256, 176, DType::Q8_K}, {DType::Q6_K, "q6_K", 256, 210, DType::Q8_K},
      {DType::Q8_K, "q8_K", 256, 292, DType::Q8_K}, {DType::MXFP4, "mxfp4", 32, 17, DType::Q8_0},
  };
  for (const auto& e : expect) {
    const DTypeTraits& tr = dtype_traits(e.t);
    EXPECT_EQ(tr.name, e.name);
    EXPECT_EQ(tr.block_elems, e.elems) << e.name;
    EXPECT_EQ(tr.block_bytes, e.bytes) << e.name;
    EXPECT_EQ(tr.vec_dot_type, e.vdt) << e.name;
    EXPECT_NE(tr.dequantize, nullptr) << e.name;
    EXPECT_NE(tr.quantize, nullptr) << e.name;
    const bool activation_only = e.t == DType::Q8_1 || e.t == DType::Q8_K;
    EXPECT_EQ(tr.vec_dot == nullptr, activation_only) << e.name;
    EXPECT_EQ(tr.vec_dot_ref == nullptr, activation_only) << e.name;
    EXPECT_EQ(dtype_from_name(e.name), e.t);
    EXPECT_EQ(find_dtype(static_cast<uint32_t>(e.t)), &tr);
  }
  EXPECT_EQ(dtype_from_name("Q4_k"), DType::Q4_K);
  EXPECT_EQ(dtype_from_name("q4_x"), std::nullopt);
  EXPECT_EQ(find_dtype(4), nullptr);  // removed Q4_2
  EXPECT_EQ(find_dtype(1000), nullptr);
  EXPECT_THROW(dtype_traits(static_cast<DType>(4)), Error);
  EXPECT_EQ(row_bytes(DType::Q4_K, 512), 288u);
  EXPECT_THROW(row_bytes(DType::Q4_K, 100), Error);
}

TEST(QuantTraits, CpuFeaturesAreSane) {
  const CpuFeatures& f = cpu_features();
  if (f.has_avx512_kernels()) { EXPECT_TRUE(f.has_avx2_kernels()); }
  // The dispatched kernel is the best ISA's one.
  const DTypeTraits& tr = dtype_traits(DType::Q4_K);
  EXPECT_EQ(tr.vec_dot, quant::vec_dot_for_isa(DType::Q4_K, best_isa()));
  if (best_isa() != Isa::Scalar) { EXPECT_NE(tr.vec_dot, tr.vec_dot_ref); }
}

// ---- SIMD vs reference ----------------------------------------------------------------------------

TEST(QuantVecDot, SimdMatchesReference) {
  const auto isas = simd_isas();
  if (isas.empty()) GTEST_SKIP() << "no SIMD kernels on this CPU";
  for (DType t : kWeightTypes) {
    const DTypeTraits& tr = dtype_traits(t);
    const DTypeTraits& at = dtype_traits(tr.vec_dot_type);
    const int64_t qk = std::max<int64_t>(tr.block_elems, at.block_elems);
    // Several lengths, including odd block counts (exercises the pairwise loops' tails) and, for the
    // float types, lengths that are not multiples of the vector width.
    std::vector<int64_t> lengths = {qk, 3 * qk, 8 * qk, 4096};
    if (qk == 1) lengths.insert(lengths.end(), {1, 7, 33, 77, 1000});
    for (int64_t n : lengths) {
      const auto w = gaussian(n, 17u + static_cast<uint32_t>(n));
      auto a = gaussian(n, 91u + static_cast<uint32_t>(n), 3.0f);
      const auto wq = quantize_with(storage_quantizer(t), t, w);
      const auto aq = quantize_with(at.quantize, tr.vec_dot_type, a);
      // Scale for the tolerance: sum |w_i * a_i| over the values the kernel actually sees.
      const auto wd = dequantize(t, wq, n);
      const auto ad = dequantize(tr.vec_dot_type, aq, n);
      double mag = 0;
      for (int64_t i = 0; i < n; ++i) mag += std::fabs(static_cast<double>(wd[i]) * ad[i]);
      const float ref = tr.vec_dot_ref(n, wq.data(), aq.data());
      const double rel = tr.is_quantized ? 2e-6 : 1e-5;
      for (Isa isa : isas) {
        const float got = quant::vec_dot_for_isa(t, isa)(n, wq.data(), aq.data());
        EXPECT_NEAR(got, ref, rel * mag + 1e-6) << tr.name << " n=" << n << " isa=" << isa_name(isa);
      }
      // The reference itself must agree with the dequantized dot product (checks the ref's decoding).
      // With Q8_1 activations the offset term uses the stored fp16 s = fp16(d * sum q) rather than
      // sum(fp16(d) * q), as llama.cpp does, so that pairing carries fp16 rounding: allow 1e-3.
      double deq = 0;
      for (int64_t i = 0; i < n; ++i) deq += static_cast<double>(wd[i]) * ad[i];
      const double deq_rel = tr.vec_dot_type == DType::Q8_1 ? 1e-3 : 1e-5;
      EXPECT_NEAR(ref, deq, deq_rel * mag + 1e-6) << tr.name << " n=" << n;
    }
  }
}

// ---- quantize -> dequantize error -----------------------------------------------------------------

TEST(QuantRoundTrip, ErrorBoundsOnGaussianData) {
  // RMSE / RMS(signal) on N(0,1) data. Measured values (this implementation == llama.cpp's
  // arithmetic): f16 2.07e-4, bf16 1.67e-3, q8_0 5.37e-3, q8_1 5.37e-3, q8_K 7.05e-3 (one scale per
  // 256 values), q6_K 1.78e-2, q5_K 3.62e-2, q5_1 3.80e-2, q5_0 4.34e-2, q4_K 7.14e-2, q4_1 7.85e-2,
  // q4_0 8.69e-2, q3_K 1.52e-1, q2_K 2.96e-1, mxfp4 1.14e-1 (4-bit floats under a power-of-two scale).
  // Bounds are ~25% above, so a broken scale search or an off-by-one in a layout (which costs far more
  // than 25%) fails.
  struct Bound {
    DType t;
    double max_rel_rmse;
  };
  const Bound kRoundTripBound[] = {
      {DType::F32, 0.0},      {DType::F16, 2.6e-4},  {DType::BF16, 2.1e-3},  {DType::Q8_0, 6.7e-3},
      {DType::Q8_1, 6.7e-3},  {DType::Q8_K, 8.8e-3}, {DType::Q6_K, 2.2e-2},  {DType::Q5_K, 4.5e-2},
      {DType::Q5_1, 4.75e-2}, {DType::Q5_0, 5.4e-2}, {DType::Q4_K, 8.9e-2},  {DType::Q4_1, 9.8e-2},
      {DType::Q4_0, 1.09e-1}, {DType::Q3_K, 1.9e-1}, {DType::Q2_K, 3.7e-1}, {DType::MXFP4, 1.43e-1},
  };
  const int64_t n = 64 * 256;
  const auto x = gaussian(n, 4242u);
  for (const auto& b : kRoundTripBound) {
    const DTypeTraits& tr = dtype_traits(b.t);
    const auto q = quantize_with(tr.quantize, b.t, x);
    const auto y = dequantize(b.t, q, n);
    double se = 0, ss = 0;
    for (int64_t i = 0; i < n; ++i) {
      se += (static_cast<double>(x[i]) - y[i]) * (static_cast<double>(x[i]) - y[i]);
      ss += static_cast<double>(x[i]) * x[i];
    }
    const double rel = std::sqrt(se / ss);
    EXPECT_LE(rel, b.max_rel_rmse) << tr.name;
    if (b.t == DType::F32) { EXPECT_EQ(rel, 0.0); }
    std::printf("[quant] %-5s relative RMSE %.3e (bound %.1e)\n", std::string(tr.name).c_str(), rel, b.max_rel_rmse);
  }
}

TEST(QuantRoundTrip, AllZeroAndConstantBlocks) {
  for (DType t : kWeightTypes) {
    const DTypeTraits& tr = dtype_traits(t);
    const int64_t n = 2 * std::max<int64_t>(256, tr.block_elems);
    std::vector<float> zeros(static_cast<size_t>(n), 0.0f);
    auto y = dequantize(t, quantize_with(storage_quantizer(t), t, zeros), n);
    for (float v : y) ASSERT_EQ(v, 0.0f) << tr.name;
    std::vector<float> c(static_cast<size_t>(n), 0.75f);
    y = dequantize(t, quantize_with(storage_quantizer(t), t, c), n);
    for (float v : y) ASSERT_NEAR(v, 0.75f, 0.75f * 0.02f) << tr.name;
  }
}

// ---- activation quantizers mirror llama.cpp's x86 path --------------------------------------------

TEST(QuantActivation, Q8_0UsesRoundHalfEvenAndStorageUsesRoundHalfAway) {
  // amax = 127 makes the multiplier exactly 1, so the ties below are exact.
  std::vector<float> x(32, 0.0f);
  x[0] = 127.0f;
  x[1] = 0.5f;
  x[2] = 1.5f;
  x[3] = 2.5f;
  x[4] = -0.5f;
  x[5] = -2.5f;
  quant::BlockQ8_0 act{}, sto{};
  dtype_traits(DType::Q8_0).quantize(x.data(), &act, 32);
  storage_quantizer(DType::Q8_0)(x.data(), &sto, 32);
  const int8_t want_act[] = {127, 0, 2, 2, 0, -2};
  const int8_t want_sto[] = {127, 1, 2, 3, -1, -3};
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(act.qs[i], want_act[i]) << i;
    EXPECT_EQ(sto.qs[i], want_sto[i]) << i;
  }
  EXPECT_EQ(act.d, fp32_to_fp16(1.0f));
  // Q8_1 stores d * sum(q) computed from the fp32 scale.
  quant::BlockQ8_1 a1{};
  dtype_traits(DType::Q8_1).quantize(x.data(), &a1, 32);
  EXPECT_EQ(a1.s, fp32_to_fp16(127.0f + 0 + 2 + 2 + 0 - 2));
}

TEST(QuantActivation, Q8_KSignedMaxMapsToMinus127) {
  std::vector<float> x(256, 0.0f);
  x[0] = -2.0f;   // signed max
  x[1] = 1.0f;    // 63.5 -> 64 (ties to even)
  x[2] = 0.984251968f;
  x[17] = 2.0f;   // -> 127 (positive side clamps to 127 too)
  quant::BlockQ8_K b{};
  dtype_traits(DType::Q8_K).quantize(x.data(), &b, 256);
  EXPECT_EQ(b.qs[0], -127);
  EXPECT_EQ(b.qs[1], 64);
  EXPECT_EQ(b.qs[17], 127);
  EXPECT_FLOAT_EQ(b.d, 1.0f / 63.5f);
  EXPECT_EQ(b.bsums[0], -127 + 64 + b.qs[2]);
  EXPECT_EQ(b.bsums[1], 127);
}

// ---- F16 / BF16 -----------------------------------------------------------------------------------

TEST(QuantFloat16, EdgeCases) {
  struct Case {
    float in;
    uint16_t out;
  };
  const Case cases[] = {
      {0.0f, 0x0000},
      {-0.0f, 0x8000},
      {1.0f, 0x3C00},
      {-2.0f, 0xC000},
      {65504.0f, 0x7BFF},
      {65519.99f, 0x7BFF},                  // just below the overflow tie
      {65520.0f, 0x7C00},                   // tie rounds to even -> inf
      {1e10f, 0x7C00},
      {-1e10f, 0xFC00},
      {INFINITY, 0x7C00},
      {-INFINITY, 0xFC00},
      {std::ldexp(1.0f, -24), 0x0001},      // smallest subnormal
      {std::ldexp(1.0f, -25), 0x0000},      // tie between 0 and 2^-24 -> even (0)
      {std::ldexp(1.5f, -25), 0x0001},
      {std::ldexp(3.0f, -25), 0x0002},      // tie between 1 and 2 -> even (2)
      {std::ldexp(1.0f, -14), 0x0400},      // smallest normal
      {std::ldexp(1023.5f, -24), 0x0400},   // subnormal rounding up into the normal range
      {1.0f + std::ldexp(1.0f, -11), 0x3C00},                          // tie -> even
      {1.0f + std::ldexp(3.0f, -11), 0x3C02},                          // tie -> even (up)
      {1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20), 0x3C01},  // above tie
      {1e-10f, 0x0000},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(fp32_to_fp16(c.in), c.out) << c.in;
    uint16_t row = 0;
    fp32_to_fp16_row(&c.in, &row, 1);
    EXPECT_EQ(row, c.out) << c.in;
  }
  EXPECT_TRUE(std::isnan(fp16_to_fp32(fp32_to_fp16(NAN))));
  EXPECT_EQ(fp32_to_fp16(NAN) & 0x7C00, 0x7C00);
  EXPECT_NE(fp32_to_fp16(NAN) & 0x03FF, 0);
}

TEST(QuantFloat16, AllHalfValuesRoundTripExactly) {
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
  std::vector<float> f(65536);
  fp16_to_fp32_row(all.data(), f.data(), 65536);
  std::vector<uint16_t> back(65536);
  fp32_to_fp16_row(f.data(), back.data(), 65536);
  for (uint32_t i = 0; i < 65536; ++i) {
    const float s = fp16_to_fp32(static_cast<uint16_t>(i));
    const bool nan = ((i >> 10) & 0x1F) == 0x1F && (i & 0x3FF) != 0;
    if (nan) {
      ASSERT_TRUE(std::isnan(s)) << i;
      ASSERT_TRUE(std::isnan(f[i])) << i;
      continue;
    }
    ASSERT_EQ(f32_bits(s), f32_bits(f[i])) << i;  // scalar == F16C
    ASSERT_EQ(fp32_to_fp16(s), i) << i;
    ASSERT_EQ(back[i], i) << i;
  }
}

TEST(QuantFloat16, ScalarMatchesRowConverterOnRandomBits) {
  // The row converter uses F16C when available; the scalar one is pure integer code. Random fp32 bit
  // patterns cover every rounding path (normal, subnormal, overflow, NaN).
  std::mt19937 rng(7);
  std::vector<float> x(1 << 16);
  for (auto& v : x) v = f32_from_bits(rng());
  for (int i = 0; i < 4096; ++i) x[i] = std::ldexp(static_cast<float>(rng() % 100000) / 7.0f, -30 + i % 40);
  std::vector<uint16_t> h(x.size());
  fp32_to_fp16_row(x.data(), h.data(), static_cast<int64_t>(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    const uint16_t s = fp32_to_fp16(x[i]);
    if (std::isnan(x[i])) {
      ASSERT_TRUE((h[i] & 0x7C00) == 0x7C00 && (h[i] & 0x3FF) != 0);
      ASSERT_TRUE((s & 0x7C00) == 0x7C00 && (s & 0x3FF) != 0);
    } else {
      ASSERT_EQ(s, h[i]) << std::hexfloat << x[i];
    }
  }
}

TEST(QuantBFloat16, EdgeCases) {
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(fp32_to_bf16(f32_from_bits(0x3F808000u)), 0x3F80);  // tie -> even (down)
  EXPECT_EQ(fp32_to_bf16(f32_from_bits(0x3F818000u)), 0x3F82);  // tie -> even (up)
  EXPECT_EQ(fp32_to_bf16(f32_from_bits(0x3F808001u)), 0x3F81);
  EXPECT_EQ(fp32_to_bf16(f32_from_bits(0x7F7FFFFFu)), 0x7F80);  // FLT_MAX rounds to inf
  EXPECT_EQ(fp32_to_bf16(INFINITY), 0x7F80);
  EXPECT_EQ(fp32_to_bf16(-INFINITY), 0xFF80);
  EXPECT_EQ(fp32_to_bf16(f32_from_bits(0x00018000u)), 0x0002);  // subnormal, tie -> even, no flush
  EXPECT_EQ(fp32_to_bf16(f32_from_bits(0x7F800001u)), 0x7FC0);  // signalling NaN made quiet
  EXPECT_TRUE(std::isnan(bf16_to_fp32(fp32_to_bf16(NAN))));
  for (uint32_t i = 0; i < 65536; ++i) {
    const float f = bf16_to_fp32(static_cast<uint16_t>(i));
    if (std::isnan(f)) continue;
    ASSERT_EQ(fp32_to_bf16(f), i);
  }
  std::vector<float> x = {1.0f, -3.5f, 1e-40f};
  std::vector<uint16_t> q(3);
  dtype_traits(DType::BF16).quantize(x.data(), q.data(), 3);
  std::vector<float> y(3);
  dtype_traits(DType::BF16).dequantize(q.data(), y.data(), 3);
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], -3.5f);
  EXPECT_EQ(f32_bits(y[2]), 0x00010000u);  // 1e-40 is 1.09 bf16 subnormal ulps: rounds to one ulp, not flushed
}

// ---- row kernels over several block multiples -----------------------------------------------------

TEST(QuantRows, HandleManyBlockMultiplesWithoutOverrun) {
  const DType all[] = {DType::F32,  DType::F16,  DType::BF16, DType::Q4_0, DType::Q4_1, DType::Q5_0,
                       DType::Q5_1, DType::Q8_0, DType::Q8_1, DType::Q2_K, DType::Q3_K, DType::Q4_K,
                       DType::Q5_K, DType::Q6_K, DType::Q8_K, DType::MXFP4};
  for (DType t : all) {
    const DTypeTraits& tr = dtype_traits(t);
    for (int64_t k : {1, 2, 3, 5, 8, 13}) {
      const int64_t n = k * std::max<int64_t>(tr.block_elems, 32);
      const auto x = gaussian(n, 5u + static_cast<uint32_t>(k));
      const size_t rb = row_bytes(t, n);
      std::vector<uint8_t> buf(rb + 64, 0xA5);
      tr.quantize(x.data(), buf.data(), n);
      for (size_t i = rb; i < buf.size(); ++i) ASSERT_EQ(buf[i], 0xA5) << tr.name << " quantize overran, n=" << n;
      // Quantizing block by block gives the same bytes as one call on the whole row.
      std::vector<uint8_t> pieces(rb);
      const int64_t be = tr.block_elems;
      for (int64_t b = 0; b < n / be; ++b) tr.quantize(x.data() + b * be, pieces.data() + b * tr.block_bytes, be);
      ASSERT_EQ(std::memcmp(pieces.data(), buf.data(), rb), 0) << tr.name << " n=" << n;
      std::vector<float> y(static_cast<size_t>(n) + 16, -7.0f);
      tr.dequantize(buf.data(), y.data(), n);
      for (int64_t i = n; i < n + 16; ++i) ASSERT_EQ(y[i], -7.0f) << tr.name << " dequantize overran";
      if (tr.vec_dot == nullptr) continue;
      const DTypeTraits& at = dtype_traits(tr.vec_dot_type);
      std::vector<uint8_t> act(row_bytes(tr.vec_dot_type, n));
      at.quantize(x.data(), act.data(), n);
      const float fast = tr.vec_dot(n, buf.data(), act.data());
      const float ref = tr.vec_dot_ref(n, buf.data(), act.data());
      // Result ~ sum x_i^2 = n; the product is positive and well conditioned.
      EXPECT_NEAR(fast, ref, 1e-5 * std::fabs(ref) + 1e-4) << tr.name << " n=" << n;
      EXPECT_GT(ref, 0.5 * static_cast<double>(n)) << tr.name << " n=" << n;
    }
  }
}

// ---- byte-exactness against llama-quantize output -------------------------------------------------

namespace {

std::vector<float> tensor_as_f32(const gguf::File& f, const gguf::TensorInfo& t) {
  const int64_t n = t.n_elements();
  std::vector<float> out(static_cast<size_t>(n));
  dtype_traits(t.type).dequantize(f.tensor_data(t), out.data(), n);
  return out;
}

void check_file_bytes_exact(const std::string& quant_name) {
  const std::string dir = std::string(MOE_FIXTURES_DIR) + "/models/";
  auto src = gguf::File::open(dir + "tiny-qwen3moe.gguf");
  auto dst = gguf::File::open(dir + quant_name);
  int compared = 0;
  std::map<std::string, int> by_type;
  for (const auto& qt : dst->tensors()) {
    const DTypeTraits& tr = dtype_traits(qt.type);
    if (!tr.is_quantized) continue;  // norms etc. are copied as F32
    ++by_type[std::string(tr.name)];
    const gguf::TensorInfo* st = src->find_tensor(qt.name);
    ASSERT_NE(st, nullptr) << qt.name;
    ASSERT_EQ(st->n_elements(), qt.n_elements()) << qt.name;
    const auto x = tensor_as_f32(*src, *st);
    std::vector<uint8_t> ours(qt.nbytes);
    ASSERT_EQ(row_bytes(qt.type, qt.n_elements()), qt.nbytes) << qt.name;
    storage_quantizer(qt.type)(x.data(), ours.data(), qt.n_elements());
    const uint8_t* theirs = dst->tensor_data(qt);
    size_t bad_blocks = 0, first_bad = SIZE_MAX;
    for (size_t b = 0; b < qt.nbytes / tr.block_bytes; ++b) {
      if (std::memcmp(ours.data() + b * tr.block_bytes, theirs + b * tr.block_bytes, tr.block_bytes) != 0) {
        if (first_bad == SIZE_MAX) first_bad = b;
        ++bad_blocks;
      }
    }
    EXPECT_EQ(bad_blocks, 0u) << quant_name << ": " << qt.name << " (" << tr.name << ") differs in " << bad_blocks
                              << " of " << qt.nbytes / tr.block_bytes << " blocks, first at " << first_bad;
    ++compared;
  }
  EXPECT_GT(compared, 5) << quant_name;
  std::string types;
  for (const auto& [name, count] : by_type) types += " " + name + "x" + std::to_string(count);
  std::printf("[quant] %s: %d quantized tensors compared:%s\n", quant_name.c_str(), compared, types.c_str());
}

}  // namespace

TEST(QuantLlamaCppExact, Q8_0File) { check_file_bytes_exact("tiny-qwen3moe-Q8_0.gguf"); }
TEST(QuantLlamaCppExact, Q4_0File) { check_file_bytes_exact("tiny-qwen3moe-Q4_0.gguf"); }
TEST(QuantLlamaCppExact, Q4_K_MFile) { check_file_bytes_exact("tiny-qwen3moe-Q4_K_M.gguf"); }
TEST(QuantLlamaCppExact, Q6_KFile) { check_file_bytes_exact("tiny-qwen3moe-Q6_K.gguf"); }
TEST(QuantLlamaCppExact, MixtralQ4_K_MFile) {
  const std::string dir = std::string(MOE_FIXTURES_DIR) + "/models/";
  // Same check on a second architecture with ff=512 (two super-blocks per row).
  auto src = gguf::File::open(dir + "tiny-mixtral.gguf");
  auto dst = gguf::File::open(dir + "tiny-mixtral-Q4_K_M.gguf");
  int compared = 0;
  for (const auto& qt : dst->tensors()) {
    const DTypeTraits& tr = dtype_traits(qt.type);
    if (!tr.is_quantized) continue;
    const gguf::TensorInfo* st = src->find_tensor(qt.name);
    ASSERT_NE(st, nullptr) << qt.name;
    const auto x = tensor_as_f32(*src, *st);
    std::vector<uint8_t> ours(qt.nbytes);
    storage_quantizer(qt.type)(x.data(), ours.data(), qt.n_elements());
    EXPECT_EQ(std::memcmp(ours.data(), dst->tensor_data(qt), qt.nbytes), 0) << qt.name << " (" << tr.name << ")";
    ++compared;
  }
  EXPECT_GT(compared, 5);
}
