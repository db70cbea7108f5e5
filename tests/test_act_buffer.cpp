// kernels::ActBuffer keeps what it holds bounded by its last use: the --mem plan counts at most twice the
// last need plus kActSlackBytes per buffer, and the executor keeps one buffer per expert of a layer.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/matmul.h"

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

}  // namespace
