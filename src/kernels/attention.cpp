#include "kernels/attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>

#include "kernels/blas.h"

namespace moe::kernels {

void causal_attention_block(const CausalBlock& b, std::vector<float>& scratch) {
  use_single_threaded_blas();
  const int64_t nk = b.n_past + b.m;  // keys seen by the last query of the block
  const size_t need = static_cast<size_t>(b.m * nk + b.m);
  if (scratch.size() < need) scratch.resize(need);
  float* s = scratch.data();
  float* inv = s + b.m * nk;
  const auto i32 = [](int64_t v) { return static_cast<int>(v); };
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, i32(b.m), i32(nk), i32(b.head_dim), b.scale, b.q,
              i32(b.q_stride), b.k, i32(b.kv_stride), 0.0f, s, i32(nk));
  // Row-wise softmax over the visible keys; the masked tail is zeroed so the second product can run
  // over all nk keys for every row. The normalisation is applied after it, as 1 / sum in double.
  for (int64_t i = 0; i < b.m; ++i) {
    float* row = s + i * nk;
    const int64_t n_keys = b.n_past + i + 1;
    const float mx = *std::max_element(row, row + n_keys);
    double sum = 0.0;
    for (int64_t j = 0; j < n_keys; ++j) {
      row[j] = std::exp(row[j] - mx);
      sum += row[j];
    }
    std::fill(row + n_keys, row + nk, 0.0f);
    inv[i] = static_cast<float>(1.0 / sum);
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, i32(b.m), i32(b.head_dim), i32(nk), 1.0f, s, i32(nk), b.v,
              i32(b.kv_stride), 0.0f, b.out, i32(b.out_stride));
  for (int64_t i = 0; i < b.m; ++i) {
    float* o = b.out + i * b.out_stride;
    const float r = inv[i];
    for (int64_t d = 0; d < b.head_dim; ++d) o[d] *= r;
  }
}

}  // namespace moe::kernels
