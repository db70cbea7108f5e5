// kernels::ActBuffer keeps what it holds bounded by its last use: the --mem plan counts at most twice the
// last need plus kActSlackBytes per buffer, and the executor keeps one buffer per expert of a layer.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/matmul.h"
#include "kernels/quant_blocks.h"
#include "tensor/fp16.h"

namespace {

using moe::DType;
using moe::kernels::ActBuffer;
using moe::kernels::kActSlackBytes;

TEST(ActBuffer, GivesBackWhatALargeBatchTookWhenTheNextNeedsFarLess) {
  const int64_t n = 1024;
  std::vector<float> x(static_cast<size_t>(512 * n), 0.5f);
  ActBuffer act;
  act.convert(DType::Q8_0, x.data(), 512, n, n);  // a prompt batch: 512 rows
  const size_t big = act.held_bytes();
  EXPECT_GE(big, 512 * act.row_bytes());
  act.convert(DType::Q8_0, x.data(), 1, n, n);  // then one decoded token
  EXPECT_LE(act.held_bytes(), 2 * act.row_bytes() + kActSlackBytes);
  EXPECT_LT(act.held_bytes(), big);
  // Decode-sized calls in a row reuse the buffer rather than reallocating it.
  act.convert(DType::Q8_0, x.data(), 2, n, n);
  const uint8_t* first = act.row(0);
  act.convert(DType::Q8_0, x.data(), 1, n, n);
  act.convert(DType::Q8_0, x.data(), 2, n, n);
  EXPECT_EQ(act.row(0), first);
}

// A Q8_0 batch also holds each block's quant sum and float scale (for the panel GEMM): they count in
// what the buffer holds, shrink with it, and are what the quantized rows say.
TEST(ActBuffer, Q8_0BlockFactsCountInWhatItHoldsAndShrinkWithIt) {
  const int64_t n = 1024, nb = n / 32;
  std::vector<float> x(static_cast<size_t>(512 * n));
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(static_cast<int>(i * 7919 % 2001) - 1000) / 313.0f;
  ActBuffer act;
  act.convert(DType::Q8_0, x.data(), 512, n, n);
  const size_t facts_bytes = static_cast<size_t>(512 * nb) * (sizeof(int32_t) + sizeof(float));
  EXPECT_GE(act.held_bytes(), 512 * act.row_bytes() + facts_bytes);
  const moe::quant::Q8_0BlockFacts f = act.block_facts(3);
  ASSERT_NE(f.sums, nullptr);
  ASSERT_NE(f.scales, nullptr);
  const auto* blocks = reinterpret_cast<const moe::quant::BlockQ8_0*>(act.row(3));
  for (int64_t b = 0; b < nb; ++b) {
    int32_t sum = 0;
    for (int8_t q : blocks[b].qs) sum += q;
    EXPECT_EQ(f.sums[b], sum) << b;
    EXPECT_EQ(f.scales[b], moe::fp16_to_fp32(blocks[b].d)) << b;
  }
  act.convert(DType::Q8_0, x.data(), 2, n, n);  // a batched decode step's two tokens
  const size_t need = 2 * act.row_bytes() + static_cast<size_t>(2 * nb) * (sizeof(int32_t) + sizeof(float));
  EXPECT_LE(act.held_bytes(), 2 * need + kActSlackBytes);
  // One token too (Q8_0_P weights take the panel GEMM for a decoded token); other types have none.
  act.convert(DType::Q8_0, x.data() + 5 * n, 1, n, n);
  ASSERT_NE(act.block_facts(0).sums, nullptr);
  int32_t sum0 = 0;
  for (int8_t q : reinterpret_cast<const moe::quant::BlockQ8_0*>(act.row(0))[0].qs) sum0 += q;
  EXPECT_EQ(act.block_facts(0).sums[0], sum0);
  act.convert(DType::Q8_K, x.data(), 1, n, n);
  EXPECT_EQ(act.block_facts(0).sums, nullptr);
}

}  // namespace
