#include "kernels/matmul.h"

#include <algorithm>
#include <cstring>

#include "base/error.h"
#include "kernels/q8_0_panels.h"
#include "kernels/quant_tile.h"

namespace moe::kernels {

void ActBuffer::convert(DType type, const float* x, int64_t n_tokens, int64_t n, int64_t x_stride, const int32_t* rows) {
  const DTypeTraits& tr = dtype_traits(type);
  type_ = type;
  n_tokens_ = n_tokens;
  n_ = n;
  row_bytes_ = moe::row_bytes(type, n);
  const size_t need = row_bytes_ * static_cast<size_t>(n_tokens);
  // The panel GEMM of Q8_0 / Q4_0 weights starts each block's integer sum at -offset * sum(y) and scales
  // it by the block's scale as a float; deriving both here once saves every chunk of rows (a 768-row
  // expert matrix is 16 calls) from doing it again, which cost 7% of a Q8_0 prefill.
  // One token too: Q8_0_P weights take the panel GEMM for every token count (q8_0_panels.h).
  const bool facts = type == DType::Q8_0;
  const size_t n_facts = facts ? static_cast<size_t>(n_tokens * (n / 32)) : 0;
  const size_t need_all = need + n_facts * (sizeof(int32_t) + sizeof(float));
  // A buffer that once held a large batch gives the memory back when it holds far less: the executor
  // keeps one buffer per expert of a layer, and with skewed routing the largest batch each buffer ever
  // saw added up to 5x what any one layer needs (OLMoE-1B-7B, 512-token prompt: 83 MB against 15 MB),
  // memory the --mem plan cannot bound. Now each holds at most twice what it last needed, plus 64 KiB.
  if (held_bytes() > 2 * need_all + kActSlackBytes) {
    std::vector<uint8_t>().swap(data_);
    std::vector<int32_t>().swap(block_sums_);
    std::vector<float>().swap(block_scales_);
  }
  if (data_.size() < need) data_.resize(need);
  for (int64_t t = 0; t < n_tokens; ++t) {
    uint8_t* dst = data_.data() + static_cast<size_t>(t) * row_bytes_;
    const float* src = x + (rows ? rows[t] : t) * x_stride;
    if (type == DType::F32) {
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
    } else {
      tr.quantize(src, dst, n);
    }
  }
  block_sums_.resize(n_facts);
  block_scales_.resize(n_facts);
  if (facts) quant::derive_q8_0_block_facts(data_.data(), row_bytes_, n_tokens, n / 32, block_sums_.data(), block_scales_.data());
}

namespace {

// Token block of the panel GEMM: its activations (about 256 KB) stay in L2 while the chunk's panels
// sweep them.
int64_t gemm_token_block(size_t act_row_bytes) {
  return std::max<int64_t>(16, static_cast<int64_t>((256 << 10) / std::max<size_t>(1, act_row_bytes))) & ~int64_t{7};
}

// Rows per call of the few-token path: 16 rows of a 2048-wide Q4_K matrix are 18 KB, in L1 while every
// token passes over them.
constexpr int64_t kFewTokenRowGroup = 16;

bool uses_panel_gemm(const DTypeTraits& tr) {
  return tr.type == DType::Q8_0_P || (tr.vec_dot_tile && quant::has_panel_gemm(tr.type));
}

// Q8_0_P (kernels/q8_0_panels.h): its rows exist only as 16-row panels, so every token count, one
// token included, takes the panel GEMM, which reads them where they lie (nothing to convert).
void matmul_q8_0_panels(const MatrixRef& w, const ActBuffer& act, float* y, int64_t y_stride, int64_t r0, int64_t r1) {
  if (!quant::q8_0_panel_kernels_available())
    fail("matmul: q8_0_p weights need the AVX-512 panel kernels, which this process does not run");
  const int64_t nt = act.n_tokens(), tb = gemm_token_block(act.row_bytes());
  for (int64_t t0 = 0; t0 < nt; t0 += tb) {
    const int mt = static_cast<int>(std::min(tb, nt - t0));
    quant::q8_0_panels_gemm_avx512(w.cols, w.data, r0, r1, act.row(t0), act.row_bytes(), act.block_facts(t0), mt,
                                   y + t0 * y_stride, y_stride);
  }
}

}  // namespace

int64_t row_quantum(DType t) { return t == DType::Q8_0_P ? quant::kQ8PanelRows : 4; }

void matmul_rows(const MatrixRef& w, const ActBuffer& act, float* y, int64_t y_stride, int64_t r0, int64_t r1) {
  if (w.type == DType::Q8_0_P) return matmul_q8_0_panels(w, act, y, y_stride, r0, r1);
  const DTypeTraits& tr = dtype_traits(w.type);
  // Types whose tile prepares one token's activations once and then streams the rows one by one.
  if (tr.tile_one_token && act.n_tokens() == 1 && r1 > r0) {
    tr.vec_dot_tile(w.cols, w.data + static_cast<size_t>(r0) * w.row_bytes, w.row_bytes, static_cast<int>(r1 - r0),
                    act.row(0), act.row_bytes(), 1, y + r0, y_stride);
    return;
  }
  // A few tokens (an expert's rows in a batched decode step): the tile kernels take them all at once,
  // row group by row group, with their row or few-token kernels rather than the panel GEMM, whose weight
  // conversion would cost more than it saves (quant_tile.h: panel_min_tokens). From there on the panel
  // GEMM, over the whole chunk of rows with the activations' block facts derived once.
  const bool panel = uses_panel_gemm(tr) && act.n_tokens() >= quant::panel_min_tokens(w.type);
  if (act.n_tokens() > 1 && act.n_tokens() < quant::kPanelMinTokensShared && tr.vec_dot_tile && !panel) {
    for (int64_t r = r0; r < r1; r += kFewTokenRowGroup) {
      const int mr = static_cast<int>(std::min(kFewTokenRowGroup, r1 - r));
      tr.vec_dot_tile(w.cols, w.data + static_cast<size_t>(r) * w.row_bytes, w.row_bytes, mr, act.row(0),
                      act.row_bytes(), static_cast<int>(act.n_tokens()), y + r, y_stride);
    }
    return;
  }
  if (panel) {
    const int64_t nt = act.n_tokens(), tb = gemm_token_block(act.row_bytes());
    for (int64_t t0 = 0; t0 < nt; t0 += tb) {
      const int mt = static_cast<int>(std::min(tb, nt - t0));
      quant::panel_gemm_avx512(w.type, w.cols, w.data + static_cast<size_t>(r0) * w.row_bytes, w.row_bytes,
                               static_cast<int>(r1 - r0), act.row(t0), act.row_bytes(), act.block_facts(t0), mt,
                               y + t0 * y_stride + r0, y_stride);
    }
    return;
  }
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
  if (w.type == DType::Q8_0_P && !quant::q8_0_panels_fit(w.rows, w.cols))
    fail("matmul: a q8_0_p matrix of {} x {} is not whole 16-row panels", w.rows, w.cols);
  if (act.type() != dtype_traits(w.type).vec_dot_type)
    fail("matmul: activations are {} but {} weights need {}", dtype_traits(act.type()).name,
         dtype_traits(w.type).name, dtype_traits(dtype_traits(w.type).vec_dot_type).name);
}

// Rows per chunk of a batch of tokens: a few tens of KB of weights, a multiple of 4 so chunks do not
// split the tile kernels' row groups. The panel GEMM converts 16 rows at a time, and each chunk reads
// its token block once per panel: chunks of about 128 KB of weights, whole panels.
int64_t matmul_row_grain(const MatrixRef& w) {
  const size_t rb = std::max<size_t>(1, w.row_bytes);
  // Q8_0_P batches run on pairs of panels (gemm_panel_avx512.cpp): whole pairs, rounded up.
  if (w.type == DType::Q8_0_P) {
    constexpr int64_t kPair = 2 * quant::kQ8PanelRows;
    return (static_cast<int64_t>((128 << 10) / rb) + kPair - 1) & ~(kPair - 1);
  }
  if (uses_panel_gemm(dtype_traits(w.type))) return std::max<int64_t>(16, static_cast<int64_t>((128 << 10) / rb)) & ~int64_t{15};
  // F32 (routers): every chunk streams all the batch's fp32 activations (8 KB a token at 2048 wide)
  // from L3, so chunks of 128 KB of rows rather than 32.
  if (w.type == DType::F32) return std::max<int64_t>(4, static_cast<int64_t>((128 << 10) / rb)) & ~int64_t{3};
  return std::max<int64_t>(4, static_cast<int64_t>(32768 / rb)) & ~int64_t{3};
}

// The shortest chunk a decoded token's rows are cut into: about 64 KB of weights. Decoding streams each
// matrix once and every chunk is a new stream for the hardware prefetcher to pick up, so chunks start
// long (guided claims) and only the last ones, where threads would otherwise wait for each other, are
// this short. Decode computes each row on its own (the single-token path of matmul_rows),
// so the bits do not depend on where chunks are cut.
int64_t decode_min_rows(size_t row_bytes, int64_t quantum) {
  return std::max<int64_t>(quantum, static_cast<int64_t>(65536 / std::max<size_t>(1, row_bytes))) & ~(quantum - 1);
}

void matmul(const MatrixRef& w, const ActBuffer& act, float* y, int64_t y_stride, ThreadPool& pool) {
  check_operands(w, act);
  if (act.n_tokens() == 1) {
    const int64_t q = row_quantum(w.type);
    pool.parallel_for_guided(w.rows, decode_min_rows(w.row_bytes, q), q,
                             [&](int64_t r0, int64_t r1, int) { matmul_rows(w, act, y, y_stride, r0, r1); });
    return;
  }
  pool.parallel_for(w.rows, matmul_row_grain(w),
                    [&](int64_t r0, int64_t r1, int) { matmul_rows(w, act, y, y_stride, r0, r1); });
}

void matmul_batch(const MatmulJob* jobs, size_t n_jobs, ThreadPool& pool, std::vector<int64_t>& chunk_scratch) {
  // chunk_scratch: per job, the index of its first chunk (prefix sums), then the total.
  chunk_scratch.resize(n_jobs + 1);
  bool one_token = true;
  size_t max_row_bytes = 1;
  int64_t quantum = 4;
  for (size_t i = 0; i < n_jobs; ++i) {
    one_token = one_token && jobs[i].act->n_tokens() == 1;
    max_row_bytes = std::max(max_row_bytes, jobs[i].w.row_bytes);
    quantum = std::max(quantum, row_quantum(jobs[i].w.type));
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
    pool.parallel_for_guided(rows, decode_min_rows(max_row_bytes, quantum), quantum, [&](int64_t r0, int64_t r1, int) {
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
    const int64_t g = matmul_row_grain(jobs[i].w);
    total += (jobs[i].w.rows + g - 1) / g;
  }
  chunk_scratch[n_jobs] = total;
  pool.parallel_for(total, 1, [&](int64_t c0, int64_t c1, int) {
    for (int64_t c = c0; c < c1; ++c) {
      const size_t i = static_cast<size_t>(std::upper_bound(chunk_scratch.begin(), chunk_scratch.end(), c) -
                                           chunk_scratch.begin()) - 1;
      const MatmulJob& j = jobs[i];
      const int64_t g = matmul_row_grain(j.w);
      const int64_t r0 = (c - chunk_scratch[i]) * g;
      matmul_rows(j.w, *j.act, j.y, j.y_stride, r0, std::min(j.w.rows, r0 + g));
    }
  });
}

}  // namespace moe::kernels
