#include "kernels/matmul.h"

#include <algorithm>
#include <cstring>

#include "base/error.h"

namespace moe::kernels {

void ActBuffer::convert(DType type, const float* x, int64_t n_tokens, int64_t n, int64_t x_stride) {
  const DTypeTraits& tr = dtype_traits(type);
  type_ = type;
  n_tokens_ = n_tokens;
  n_ = n;
  row_bytes_ = moe::row_bytes(type, n);
  const size_t need = row_bytes_ * static_cast<size_t>(n_tokens);
  // A buffer that once held a large batch gives the memory back when it holds far less: the executor
  // keeps one buffer per expert of a layer, and with skewed routing the largest batch each buffer ever
  // saw added up to 5x what any one layer needs (OLMoE-1B-7B, 512-token prompt: 83 MB against 15 MB),
  // memory the --mem plan cannot bound. Now each holds at most twice what it last needed, plus 64 KiB.
  if (data_.capacity() > 2 * need + kActSlackBytes) std::vector<uint8_t>().swap(data_);
  if (data_.size() < need) data_.resize(need);
  for (int64_t t = 0; t < n_tokens; ++t) {
    uint8_t* dst = data_.data() + static_cast<size_t>(t) * row_bytes_;
    if (type == DType::F32) {
      std::memcpy(dst, x + t * x_stride, static_cast<size_t>(n) * sizeof(float));
    } else {
      tr.quantize(x + t * x_stride, dst, n);
    }
  }
}

void matmul_rows(const MatrixRef& w, const ActBuffer& act, float* y, int64_t y_stride, int64_t r0, int64_t r1) {
  const DTypeTraits& tr = dtype_traits(w.type);
  // One token (decode) streams weights from DRAM: one row at a time keeps the hardware prefetcher on a
  // single stream, which measured faster than the 4-row tile (bit-identical either way).
  if (tr.vec_dot_tile && act.n_tokens() > 1) {
    // Token blocks of 64 keep the activations of one block in L2 while the chunk's rows sweep them; the
    // kernel walks a group of 16 rows per token sub-group, re-reading those rows from L1/L2.
    constexpr int64_t kTokenBlock = 64, kRowGroup = 16;
    const int64_t nt = act.n_tokens();
    for (int64_t t0 = 0; t0 < nt; t0 += kTokenBlock) {
      const int mt = static_cast<int>(std::min(kTokenBlock, nt - t0));
      for (int64_t r = r0; r < r1; r += kRowGroup) {
        const int mr = static_cast<int>(std::min(kRowGroup, r1 - r));
        tr.vec_dot_tile(w.cols, w.data + static_cast<size_t>(r) * w.row_bytes, w.row_bytes, mr, act.row(t0),
                        act.row_bytes(), mt, y + t0 * y_stride + r, y_stride);
      }
    }
    return;
  }
  const VecDotFn dot = tr.vec_dot;
  // Token-inner loop: a weight row stays in cache while it meets every token.
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* wr = w.data + static_cast<size_t>(r) * w.row_bytes;
    for (int64_t t = 0; t < act.n_tokens(); ++t) y[t * y_stride + r] = dot(w.cols, wr, act.row(t));
  }
}

void check_operands(const MatrixRef& w, const ActBuffer& act) {
  if (act.n() != w.cols) fail("matmul: activation length {} != weight columns {}", act.n(), w.cols);
  if (act.type() != dtype_traits(w.type).vec_dot_type)
    fail("matmul: activations are {} but {} weights need {}", dtype_traits(act.type()).name,
         dtype_traits(w.type).name, dtype_traits(dtype_traits(w.type).vec_dot_type).name);
}

namespace {

// Rows per chunk of a batch of tokens: a few tens of KB of weights, a multiple of 4 so chunks do not
// split the tile kernels' row groups.
int64_t row_grain(const MatrixRef& w) {
  return std::max<int64_t>(4, static_cast<int64_t>(32768 / std::max<size_t>(1, w.row_bytes))) & ~int64_t{3};
}

}  // namespace

// The shortest chunk a decoded token's rows are cut into: about 64 KB of weights. Decoding streams each
// matrix once and every chunk is a new stream for the hardware prefetcher to pick up, so chunks start
// long (guided claims) and only the last ones, where threads would otherwise wait for each other, are
// this short. Decode computes each row on its own (the single-token path of matmul_rows),
// so the bits do not depend on where chunks are cut.
int64_t decode_min_rows(size_t row_bytes) {
  return std::max<int64_t>(4, static_cast<int64_t>(65536 / std::max<size_t>(1, row_bytes))) & ~int64_t{3};
}

void matmul(const MatrixRef& w, const ActBuffer& act, float* y, int64_t y_stride, ThreadPool& pool) {
  check_operands(w, act);
  if (act.n_tokens() == 1) {
    pool.parallel_for_guided(w.rows, decode_min_rows(w.row_bytes), 4,
                             [&](int64_t r0, int64_t r1, int) { matmul_rows(w, act, y, y_stride, r0, r1); });
    return;
  }
  pool.parallel_for(w.rows, row_grain(w),
                    [&](int64_t r0, int64_t r1, int) { matmul_rows(w, act, y, y_stride, r0, r1); });
}

void matmul_batch(const MatmulJob* jobs, size_t n_jobs, ThreadPool& pool, std::vector<int64_t>& chunk_scratch) {
  // chunk_scratch: per job, the index of its first chunk (prefix sums), then the total.
  chunk_scratch.resize(n_jobs + 1);
  bool one_token = true;
  size_t max_row_bytes = 1;
  for (size_t i = 0; i < n_jobs; ++i) {
    one_token = one_token && jobs[i].act->n_tokens() == 1;
    max_row_bytes = std::max(max_row_bytes, jobs[i].w.row_bytes);
  }
  if (one_token) {
    // A decoded token: the jobs' rows laid end to end, cut by guided claims that may span jobs.
    // chunk_scratch holds each job's first row in that order, then the total.
    int64_t rows = 0;
    for (size_t i = 0; i < n_jobs; ++i) {
      check_operands(jobs[i].w, *jobs[i].act);
      chunk_scratch[i] = rows;
      rows += jobs[i].w.rows;
    }
    chunk_scratch[n_jobs] = rows;
    pool.parallel_for_guided(rows, decode_min_rows(max_row_bytes), 4, [&](int64_t r0, int64_t r1, int) {
      size_t i = static_cast<size_t>(std::upper_bound(chunk_scratch.begin(), chunk_scratch.end(), r0) -
                                     chunk_scratch.begin()) - 1;
      for (int64_t r = r0; r < r1; ++i) {
        const MatmulJob& j = jobs[i];
        const int64_t end = std::min(r1, chunk_scratch[i + 1]);
        matmul_rows(j.w, *j.act, j.y, j.y_stride, r - chunk_scratch[i], end - chunk_scratch[i]);
        r = end;
      }
    });
    return;
  }
  int64_t total = 0;
  for (size_t i = 0; i < n_jobs; ++i) {
    check_operands(jobs[i].w, *jobs[i].act);
    chunk_scratch[i] = total;
    const int64_t g = row_grain(jobs[i].w);
    total += (jobs[i].w.rows + g - 1) / g;
  }
  chunk_scratch[n_jobs] = total;
  pool.parallel_for(total, 1, [&](int64_t c0, int64_t c1, int) {
    for (int64_t c = c0; c < c1; ++c) {
      const size_t i = static_cast<size_t>(std::upper_bound(chunk_scratch.begin(), chunk_scratch.end(), c) -
                                           chunk_scratch.begin()) - 1;
      const MatmulJob& j = jobs[i];
      const int64_t g = row_grain(j.w);
      const int64_t r0 = (c - chunk_scratch[i]) * g;
      matmul_rows(j.w, *j.act, j.y, j.y_stride, r0, std::min(j.w.rows, r0 + g));
    }
  });
}

}  // namespace moe::kernels
