// Tests for the AVX-512 panel GEMM (kernels/gemm_panel_avx512.cpp) and the bit-exact contract of the
// AVX-512 kernels of Q4_0, Q8_0, Q4_K, Q4_K_R, Q5_K and Q6_K (quant_tile.h):
//  * every output of the panel GEMM equals the type's scalar reference vec_dot_ref on that (row, token)
//    pair BIT FOR BIT, for row counts that are not multiples of the 16-row panel, token counts that are
//    not multiples of the 8-token register tile, long rows, and with and without the activations' block
//    sums (Q8_0);
//  * so do the single-token row kernels (vec_dot and the tile for one token);
//  * on arbitrary bytes too: random quants, scales and mins cover the extremes of every integer range
//    (the exact block sums must not overflow or saturate anywhere), with finite fp16 scales;
//  * kernels::matmul for batches larger than the GEMM's token block, 1 and 2 threads, equals the
//    reference per pair.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "test_data.h"
#include "base/thread_pool.h"
#include "kernels/cpu_features.h"
#include "kernels/matmul.h"
#include "kernels/q4k_repack.h"
#include "kernels/quant_blocks.h"
#include "tensor/fp16.h"
#include "kernels/quant_tile.h"
#include "tensor/dtype.h"
#include "tensor/fp16.h"

using namespace moe;

namespace {

using test::gaussian;
const auto bits = test::float_bits;

std::vector<DType> panel_types() {
  std::vector<DType> t = {DType::Q4_0, DType::Q8_0, DType::Q4_K, DType::Q5_K, DType::Q6_K};
  if (quant::q4k_repacked_kernels_available()) t.push_back(DType::Q4_K_R);
  return t;
}

bool avx512_in_use() { return best_isa() == Isa::Avx512; }

struct Operands {
  int64_t n;
  size_t wrb, arb;
  std::vector<uint8_t> w, a;
};

// Quantized Gaussian weights and activations (the data the engine sees).
Operands gaussian_operands(DType t, int64_t n, int64_t rows, int64_t tokens, uint32_t seed) {
  const DTypeTraits& tr = dtype_traits(t);
  Operands o{n, row_bytes(t, n), row_bytes(tr.vec_dot_type, n), {}, {}};
  o.w.resize(o.wrb * rows);
  o.a.resize(o.arb * tokens);
  const std::vector<float> wf = gaussian(n * rows, seed), af = gaussian(n * tokens, seed + 1);
  for (int64_t r = 0; r < rows; ++r) tr.quantize(wf.data() + r * n, o.w.data() + r * o.wrb, n);
  for (int64_t i = 0; i < tokens; ++i) dtype_traits(tr.vec_dot_type).quantize(af.data() + i * n, o.a.data() + i * o.arb, n);
  return o;
}

void put_f16(uint8_t* p, float v) {
  const uint16_t h = fp32_to_fp16(v);
  std::memcpy(p, &h, 2);
}

// Arbitrary bytes in every block, then finite scales: every quant, sub-block scale and min value occurs.
// Activations: arbitrary int8 quants (-128 included) with consistent Q8_K block sums.
Operands random_operands(DType t, int64_t n, int64_t rows, int64_t tokens, uint32_t seed) {
  const DTypeTraits& tr = dtype_traits(t);
  Operands o{n, row_bytes(t, n), row_bytes(tr.vec_dot_type, n), {}, {}};
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> scale(-2.0f, 2.0f);
  o.w.resize(o.wrb * rows);
  o.a.resize(o.arb * tokens);
  for (auto& b : o.w) b = static_cast<uint8_t>(rng());
  for (auto& b : o.a) b = static_cast<uint8_t>(rng());
  const int64_t nb = n / tr.block_elems;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t* blk = o.w.data() + r * o.wrb + b * tr.block_bytes;
      switch (t) {
        case DType::Q4_0:
        case DType::Q8_0: put_f16(blk, scale(rng)); break;
        case DType::Q6_K: put_f16(blk + offsetof(quant::BlockQ6_K, d), scale(rng)); break;
        default:  // Q4_K, Q4_K_R, Q5_K: d, dmin first
          put_f16(blk, scale(rng));
          put_f16(blk + 2, scale(rng));
      }
    }
  for (int64_t i = 0; i < tokens; ++i)
    for (int64_t b = 0; b < n / dtype_traits(tr.vec_dot_type).block_elems; ++b) {
      if (tr.vec_dot_type == DType::Q8_0) {
        put_f16(o.a.data() + i * o.arb + b * sizeof(quant::BlockQ8_0), scale(rng));
      } else {
        auto& y = reinterpret_cast<quant::BlockQ8_K*>(o.a.data() + i * o.arb)[b];
        y.d = scale(rng);
        for (int j = 0; j < 16; ++j) {
          int s = 0;
          for (int k = 0; k < 16; ++k) s += y.qs[16 * j + k];
          y.bsums[j] = static_cast<int16_t>(s);
        }
      }
    }
  return o;
}

// Each (token, block)'s quant sum and float scale, as kernels::ActBuffer derives them for the GEMM.
struct Q8_0Facts {
  std::vector<int32_t> sums;
  std::vector<float> scales;
};
Q8_0Facts q8_0_block_facts(const Operands& o, int64_t tokens) {
  const int64_t nb = o.n / 32;
  Q8_0Facts f;
  for (int64_t i = 0; i < tokens; ++i)
    for (int64_t b = 0; b < nb; ++b) {
      const auto& y = reinterpret_cast<const quant::BlockQ8_0*>(o.a.data() + i * o.arb)[b];
      int32_t v = 0;
      for (int8_t q : y.qs) v += q;
      f.sums.push_back(v);
      f.scales.push_back(fp16_to_fp32(y.d));
    }
  return f;
}

// Runs the panel GEMM on rows x tokens and checks every output against vec_dot_ref, and that nothing
// outside the nr columns of each output row was written.
void expect_gemm_matches_reference(DType t, const Operands& o, int rows, int tokens, bool with_sums, const char* what) {
  const DTypeTraits& tr = dtype_traits(t);
  const int64_t os = rows + 3;
  std::vector<float> out(static_cast<size_t>(tokens * os), -7.0f);
  const Q8_0Facts f = tr.vec_dot_type == DType::Q8_0 ? q8_0_block_facts(o, tokens) : Q8_0Facts{};
  const quant::Q8_0BlockFacts facts = with_sums ? quant::Q8_0BlockFacts{f.sums.data(), f.scales.data()} : quant::Q8_0BlockFacts{};
  quant::panel_gemm_avx512(t, o.n, o.w.data(), o.wrb, rows, o.a.data(), o.arb, facts, tokens,
                           out.data(), os);
  for (int i = 0; i < tokens; ++i) {
    for (int r = 0; r < rows; ++r) {
      const float want = tr.vec_dot_ref(o.n, o.w.data() + r * o.wrb, o.a.data() + i * o.arb);
      ASSERT_EQ(bits(out[i * os + r]), bits(want))
          << what << " " << tr.name << " n=" << o.n << " rows=" << rows << " tokens=" << tokens << " r=" << r << " t=" << i;
    }
    for (int64_t r = rows; r < os; ++r) ASSERT_EQ(out[i * os + r], -7.0f) << "wrote past nr";
  }
}

}  // namespace

TEST(PanelGemm, MatchesScalarReferenceBitwise) {
  if (!avx512_in_use()) GTEST_SKIP() << "AVX-512 kernels not in use (CPU or MOE_ISA)";
  for (DType t : panel_types()) {
    ASSERT_TRUE(quant::has_panel_gemm(t)) << dtype_traits(t).name;
    const int64_t bs = dtype_traits(t).block_elems;
    for (int64_t n : {bs, 2 * bs, 3 * bs, 8 * bs, bs == 32 ? int64_t{4096 + 32} : int64_t{4096}, 65 * bs}) {
      const int max_rows = 33, max_tokens = 19;
      const Operands o = gaussian_operands(t, n, max_rows, max_tokens, static_cast<uint32_t>(n) * 7 + static_cast<uint32_t>(t));
      for (int rows : {1, 7, 16, 17, 33})
        for (int tokens : {2, 3, 8, 9, 16, 19}) expect_gemm_matches_reference(t, o, rows, tokens, true, "gaussian");
      expect_gemm_matches_reference(t, o, 33, 19, false, "gaussian, sums computed in the kernel");
    }
  }
}

TEST(PanelGemm, ArbitraryBytesStayExact) {
  if (!avx512_in_use()) GTEST_SKIP() << "AVX-512 kernels not in use (CPU or MOE_ISA)";
  for (DType t : panel_types()) {
    const int64_t bs = dtype_traits(t).block_elems;
    for (uint32_t seed = 0; seed < 4; ++seed) {
      const int64_t n = (bs == 32 ? 70 : 9) * bs;
      const Operands o = random_operands(t, n, 20, 11, seed * 13 + static_cast<uint32_t>(t));
      expect_gemm_matches_reference(t, o, 20, 11, true, "random bytes");
      // The single-token kernels: vec_dot and the tile for one token over every row count.
      const DTypeTraits& tr = dtype_traits(t);
      for (int r = 0; r < 20; ++r)
        for (int i = 0; i < 11; ++i)
          ASSERT_EQ(bits(tr.vec_dot(n, o.w.data() + r * o.wrb, o.a.data() + i * o.arb)),
                    bits(tr.vec_dot_ref(n, o.w.data() + r * o.wrb, o.a.data() + i * o.arb)))
              << tr.name << " vec_dot r=" << r << " t=" << i;
      for (int nr = 1; nr <= 9; ++nr) {
        std::vector<float> out(static_cast<size_t>(nr));
        tr.vec_dot_tile(n, o.w.data(), o.wrb, nr, o.a.data(), o.arb, 1, out.data(), nr);
        for (int r = 0; r < nr; ++r)
          ASSERT_EQ(bits(out[r]), bits(tr.vec_dot_ref(n, o.w.data() + r * o.wrb, o.a.data()))) << tr.name << " nr=" << nr;
      }
    }
  }
}

TEST(PanelGemm, MatmulBeyondOneTokenBlockMatchesReference) {
  if (!avx512_in_use()) GTEST_SKIP() << "AVX-512 kernels not in use (CPU or MOE_ISA)";
  // n = 2048: a Q8_K row is 2312 bytes, so the GEMM's token block is 112 tokens; 250 tokens cross it twice.
  const int64_t n = 2048, rows = 70, tokens = 250;
  for (DType t : panel_types()) {
    const DTypeTraits& tr = dtype_traits(t);
    const Operands o = gaussian_operands(t, n, rows, 1, 3 + static_cast<uint32_t>(t));
    const std::vector<float> x = gaussian(n * tokens, 17);
    kernels::ActBuffer act;
    act.convert(tr.vec_dot_type, x.data(), tokens, n, n);
    const kernels::MatrixRef m{o.w.data(), t, rows, n, o.wrb};
    for (int threads : {1, 2}) {
      ThreadPool pool(threads);
      std::vector<float> y(static_cast<size_t>(rows * tokens));
      kernels::matmul(m, act, y.data(), rows, pool);
      for (int64_t i = 0; i < tokens; ++i)
        for (int64_t r = 0; r < rows; ++r)
          ASSERT_EQ(bits(y[i * rows + r]), bits(tr.vec_dot_ref(n, o.w.data() + r * o.wrb, act.row(i))))
              << tr.name << " threads=" << threads << " r=" << r << " t=" << i;
    }
  }
}

// Batches of a few tokens (an expert's rows in a batched decode step) take the row kernels, shared by
// up to four tokens where the type has a few-token kernel, instead of the panel GEMM (quant_tile.h:
// kPanelMinTokens, kPanelMinTokensShared). Every count on both sides of both switches, with row counts
// that leave partial row groups, equals each token computed alone (what a server step's row
// independence needs, on every ISA) and, with the AVX-512 kernels, the scalar reference bit for bit.
TEST(PanelGemm, FewTokenMatmulMatchesReferenceOnBothSidesOfTheSwitch) {
  const bool exact = avx512_in_use();
  const int64_t n = 1024, rows = 37;
  for (DType t : panel_types()) {
    const DTypeTraits& tr = dtype_traits(t);
    const Operands o = gaussian_operands(t, n, rows, 1, 31 + static_cast<uint32_t>(t));
    const kernels::MatrixRef m{o.w.data(), t, rows, n, o.wrb};
    for (int64_t tokens = 2; tokens <= 17; ++tokens) {
      const std::vector<float> x = gaussian(n * tokens, 40 + static_cast<uint32_t>(tokens));
      kernels::ActBuffer act;
      act.convert(tr.vec_dot_type, x.data(), tokens, n, n);
      for (int threads : {1, 2}) {
        ThreadPool pool(threads);
        std::vector<float> y(static_cast<size_t>(rows * tokens), -7.0f);
        kernels::matmul(m, act, y.data(), rows, pool);
        for (int64_t i = 0; i < tokens; ++i) {
          kernels::ActBuffer one;
          one.convert(tr.vec_dot_type, x.data() + i * n, 1, n, n);
          std::vector<float> alone(static_cast<size_t>(rows));
          kernels::matmul(m, one, alone.data(), rows, pool);
          for (int64_t r = 0; r < rows; ++r) {
            ASSERT_EQ(bits(y[i * rows + r]), bits(alone[r]))
                << tr.name << " tokens=" << tokens << " threads=" << threads << " r=" << r << " t=" << i << " (alone)";
            if (exact) {
              ASSERT_EQ(bits(y[i * rows + r]), bits(tr.vec_dot_ref(n, o.w.data() + r * o.wrb, act.row(i))))
                  << tr.name << " tokens=" << tokens << " threads=" << threads << " r=" << r << " t=" << i;
            }
          }
        }
      }
    }
  }
}
