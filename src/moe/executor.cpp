#include "moe/executor.h"

#include <algorithm>
#include <cstring>

#include "base/error.h"
#include "kernels/ops.h"

namespace moe {

void swiglu_ffn(const kernels::MatrixRef& gate, const kernels::MatrixRef& up, const kernels::MatrixRef& down,
                const float* x, int64_t n_tokens, float* out, ThreadPool& pool, FfnScratch& s) {
  const int64_t n_in = gate.cols, n_ff = gate.rows, n_out = down.rows;
  s.gate.resize(static_cast<size_t>(n_tokens * n_ff));
  s.up.resize(static_cast<size_t>(n_tokens * n_ff));
  const DType gate_act = dtype_traits(gate.type).vec_dot_type;
  const DType up_act = dtype_traits(up.type).vec_dot_type;
  s.act_in.convert(gate_act, x, n_tokens, n_in, n_in);
  kernels::matmul(gate, s.act_in, s.gate.data(), n_ff, pool);
  const kernels::ActBuffer* up_in = &s.act_in;
  if (up_act != gate_act) {
    s.act_up.convert(up_act, x, n_tokens, n_in, n_in);
    up_in = &s.act_up;
  }
  kernels::matmul(up, *up_in, s.up.data(), n_ff, pool);
  kernels::swiglu(s.gate.data(), s.up.data(), s.gate.data(), n_tokens * n_ff);
  s.act_down.convert(dtype_traits(down.type).vec_dot_type, s.gate.data(), n_tokens, n_ff, n_ff);
  kernels::matmul(down, s.act_down, out, n_out, pool);
}

void ExpertExecutor::run(int layer, const MoeSpec& spec, const float* x, int64_t n_tokens, int64_t n_embd,
                         const Routing& routing, ExpertStore& store, ThreadPool& pool, float* out,
                         ExpertOutputSink* sink) {
  const int E = spec.n_expert;
  const int k = routing.k;
  spec_ = &spec;
  by_expert_.resize(E);
  for (auto& v : by_expert_) v.clear();
  // Which row of down_ holds each (token, slot)'s expert output (-1: an empty slot, no expert).
  slot_row_.assign(static_cast<size_t>(n_tokens * k), -1);
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int j = 0; j < k; ++j) {
      const int32_t id = routing.id(t, j);
      if (id < 0) continue;
      if (id >= E) fail("layer {}: token {} was routed to expert {}, but the layer has {}", layer, t, id, E);
      by_expert_[id].push_back({static_cast<int32_t>(t), j});
    }

  // Tell the store everything this layer needs before computing the first expert, so an offloading
  // store reads the later experts while the earlier ones compute. This declaration (ascending expert
  // ids) is where the store counts hits and shows its cache policy the uses, so the ready-first order
  // of the acquires below changes nothing it decides (moe/expert_residency.h). An expert may come from
  // its low-bit copy when none of its tokens weighs low_bit_below or more.
  needed_.clear();
  low_bit_ok_.clear();
  for (int e = 0; e < E; ++e) {
    if (by_expert_[e].empty()) continue;
    bool low = precision_.low_bit_below > 0.0f;
    for (const auto& [t, j] : by_expert_[e])
      if (!(routing.weight(t, j) < precision_.low_bit_below)) low = false;
    needed_.push_back(e);
    low_bit_ok_.push_back(low ? 1 : 0);
  }
  store.prefetch(layer, needed_.data(), static_cast<int>(needed_.size()), /*speculative=*/false,
                 low_bit_ok_.data());

  // Each needed expert's tokens as consecutive rows (outputs: the same rows of down_); its activations
  // are quantized straight from x's rows (no gathered float copy: 32 MB a layer at 512 tokens).
  row0_.resize(needed_.size() + 1);
  row0_[0] = 0;
  for (size_t i = 0; i < needed_.size(); ++i)
    row0_[i + 1] = row0_[i] + static_cast<int64_t>(by_expert_[needed_[i]].size());
  const int64_t rows = row0_[needed_.size()];
  down_.resize(static_cast<size_t>(rows * n_embd));
  row_token_.clear();
  for (const int32_t e : needed_)
    for (const auto& [t, j] : by_expert_[e]) {
      slot_row_[static_cast<size_t>(t) * k + j] = static_cast<int64_t>(row_token_.size());
      row_token_.push_back(t);
    }
  x_ = x;
  evals_[0] = evals_[1] = acquires_[0] = acquires_[1] = 0;
  compute_ready_first(layer, n_embd, store, pool);
  if (sink)
    for (size_t i = 0; i < needed_.size(); ++i)
      sink->on_expert_output(layer, needed_[i], by_expert_[needed_[i]].data(),
                             static_cast<int64_t>(by_expert_[needed_[i]].size()),
                             down_.data() + row0_[i] * n_embd, n_embd);
  if (counters_) {
    counters_->full_evals += evals_[0];
    counters_->low_bit_evals += evals_[1];
    counters_->full_acquires += acquires_[0];
    counters_->low_bit_acquires += acquires_[1];
  }
  // Per token, each slot's output row weighted in place (observers have seen it) and summed in slot
  // order: the same operations in the same order as copying weighted rows into per-slot buffers and
  // summing those, without the buffers (32 MB a layer written and read again at 512 tokens). An empty
  // slot adds zeros, as its zero-filled buffer did (-0 + 0 is +0). On every thread; below 64 rows
  // (decoding) on the calling one.
  constexpr int64_t kCopyGrain = 64;
  if (zeros_.size() < static_cast<size_t>(n_embd)) zeros_.assign(static_cast<size_t>(n_embd), 0.0f);
  pool.parallel_for(n_tokens, kCopyGrain / k + 1, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      float* o = out + t * n_embd;
      for (int j = 0; j < k; ++j) {
        const int64_t r = slot_row_[static_cast<size_t>(t * k + j)];
        float* row = r >= 0 ? down_.data() + r * n_embd : nullptr;
        if (row) kernels::scale(row, routing.weight(t, j), n_embd);
        const float* src = row ? row : zeros_.data();
        if (j == 0)
          std::memcpy(o, src, static_cast<size_t>(n_embd) * sizeof(float));
        else
          kernels::add(o, src, n_embd);
      }
    }
  });
}

// Experts already in memory are computed together while the store is still reading the others, so a
// miss stalls only for the part of its read that outlasts that work; then whatever has arrived since,
// and so on. With nothing ready, the first pending expert is waited for and computed alone: an
// offloading store's budget holds one layer's worth of a decoded token's experts, not a whole prefill
// batch's, so only experts already in memory are pinned together.
void ExpertExecutor::compute_ready_first(int layer, int64_t n_embd, ExpertStore& store, ThreadPool& pool) {
  pending_.resize(needed_.size());
  for (size_t i = 0; i < needed_.size(); ++i) pending_[i] = static_cast<int32_t>(i);
  while (!pending_.empty()) {
    batch_.clear();
    size_t kept = 0;
    for (const int32_t i : pending_) {
      if (store.is_ready(layer, needed_[i], low_bit_ok_[i] != 0))
        batch_.push_back(i);
      else
        pending_[kept++] = i;
    }
    pending_.resize(kept);
    if (batch_.empty()) {
      batch_.push_back(pending_.front());
      pending_.erase(pending_.begin());
    }
    compute_fused(layer, n_embd, store, pool);
  }
}

// The batch_ experts (positions in needed_) with the same arithmetic as swiglu_ffn per expert, so the
// same bits whichever batch an expert lands in, but their gate and up products share one parallel
// region and their down products another: a decoded token's experts are small matrices, and
// per-matrix regions left threads idle at every matrix's end.
void ExpertExecutor::compute_fused(int layer, int64_t n_embd, ExpertStore& store, ThreadPool& pool) {
  const size_t n_needed = needed_.size();
  weights_.resize(n_needed);
  if (act_in_.size() < n_needed) {
    act_in_.resize(n_needed);
    act_up_.resize(n_needed);
    act_down_.resize(n_needed);
  }
  for (const int32_t i : batch_) {
    weights_[i] = store.acquire(layer, needed_[i], low_bit_ok_[i] != 0);
    evals_[static_cast<int>(weights_[i].tier)] += static_cast<uint64_t>(row0_[i + 1] - row0_[i]);
    ++acquires_[static_cast<int>(weights_[i].tier)];
  }
  const int64_t n_ff = weights_[batch_[0]].gate.rows;
  gate_.resize(static_cast<size_t>(row0_[n_needed] * n_ff));
  up_.resize(static_cast<size_t>(row0_[n_needed] * n_ff));
  // A decoded token's experts all take the same single row: the batch's first expert's quantized
  // activations serve every later expert whose weights want the same type (the same bytes it would
  // compute).
  const int32_t first_token = by_expert_[needed_[batch_[0]]][0].first;
  bool one_token = true;
  for (const int32_t i : batch_)
    one_token = one_token && row0_[i + 1] - row0_[i] == 1 && by_expert_[needed_[i]][0].first == first_token;
  // Many tokens: every expert's gate/up activations are quantized on every thread first (on the
  // calling thread alone they were 4% of a 512-token prefill's wall time).
  const auto convert_inputs = [&](size_t i, bool gate, bool up) {
    const ExpertWeights& w = weights_[i];
    const int64_t m = row0_[i + 1] - row0_[i];
    const DType gate_act = dtype_traits(w.gate.type).vec_dot_type, up_act = dtype_traits(w.up.type).vec_dot_type;
    const int32_t* tokens = row_token_.data() + row0_[i];
    if (gate) act_in_[i].convert(gate_act, x_, m, n_embd, n_embd, tokens);
    if (up && up_act != gate_act) act_up_[i].convert(up_act, x_, m, n_embd, n_embd, tokens);
  };
  if (!one_token)
    pool.parallel_for(static_cast<int64_t>(batch_.size()), 1, [&](int64_t b0, int64_t b1, int) {
      for (int64_t b = b0; b < b1; ++b) convert_inputs(static_cast<size_t>(batch_[static_cast<size_t>(b)]), true, true);
    });
  jobs_.clear();
  for (size_t b = 0; b < batch_.size(); ++b) {
    const size_t i = static_cast<size_t>(batch_[b]);
    const ExpertWeights& w = weights_[i];
    const DType gate_act = dtype_traits(w.gate.type).vec_dot_type, up_act = dtype_traits(w.up.type).vec_dot_type;
    const bool reuse = one_token && b > 0;  // jobs_[0] / jobs_[1]: the batch's first expert's gate / up
    const bool gate_reused = reuse && jobs_[0].act->type() == gate_act;
    const bool up_reused = up_act == gate_act ? gate_reused : reuse && jobs_[1].act->type() == up_act;
    if (one_token) convert_inputs(i, !gate_reused, !up_reused);
    const kernels::ActBuffer* gate_in = gate_reused ? jobs_[0].act : &act_in_[i];
    const kernels::ActBuffer* up_in = gate_in;
    if (up_act != gate_act) up_in = up_reused ? jobs_[1].act : &act_up_[i];
    jobs_.push_back({w.gate, gate_in, gate_.data() + row0_[i] * n_ff, n_ff});
    jobs_.push_back({w.up, up_in, up_.data() + row0_[i] * n_ff, n_ff});
  }
  // SwiGLU and the down projections' activations of the batch's b-th expert (elementwise, so the same
  // values whichever thread runs it).
  const MoeSpec& spec = *spec_;
  auto activate = [&](size_t b) {
    const size_t i = static_cast<size_t>(batch_[b]);
    const ExpertWeights& w = weights_[i];
    const int64_t m = row0_[i + 1] - row0_[i];
    float* g = gate_.data() + row0_[i] * n_ff;
    float* u = up_.data() + row0_[i] * n_ff;
    for (int64_t r = 0; r < m; ++r) {
      if (w.gate_bias) kernels::add(g + r * n_ff, w.gate_bias, n_ff);
      if (w.up_bias) kernels::add(u + r * n_ff, w.up_bias, n_ff);
    }
    if (spec.activation == Activation::SwiGLUOai)
      kernels::swiglu_oai(g, u, g, m * n_ff, spec.act_alpha, spec.act_limit);
    else
      kernels::swiglu(g, u, g, m * n_ff);
    act_down_[i].convert(dtype_traits(w.down.type).vec_dot_type, g, m, n_ff, n_ff);
  };
  const size_t nb = batch_.size();
  for (const int32_t i : batch_)
    if (weights_[i].down.cols != n_ff)
      fail("expert {} of layer {}: down projection has {} columns, gate has {} rows", needed_[i], layer,
           weights_[i].down.cols, n_ff);
  // Few tokens per expert (a decoded token, or a batched decode step's rows spread over many experts):
  // every matrix is computed row by row with the one-token kernels, so the dataflow region serves them
  // as it serves one token.
  // (Under 8 tokens each: the bound the batched-decode measurements of docs/server.md were taken with.)
  constexpr int64_t kDataflowMaxTokens = 8;
  bool few_tokens = true;
  for (const int32_t i : batch_) few_tokens = few_tokens && row0_[i + 1] - row0_[i] < kDataflowMaxTokens;
  if (few_tokens && nb >= 2 * static_cast<size_t>(pool.size())) {
    compute_decode_dataflow(nb, n_embd, pool, activate);
  } else {
    kernels::matmul_batch(jobs_.data(), jobs_.size(), pool, chunk_scratch_);
    pool.parallel_for(static_cast<int64_t>(nb), 1, [&](int64_t b0, int64_t b1, int) {
      for (int64_t b = b0; b < b1; ++b) activate(static_cast<size_t>(b));
    });
    jobs_.clear();
    for (const int32_t i : batch_)
      jobs_.push_back({weights_[i].down, &act_down_[i], down_.data() + row0_[i] * n_embd, n_embd});
    kernels::matmul_batch(jobs_.data(), jobs_.size(), pool, chunk_scratch_);
  }
  // Down-projection biases: part of E_e(x), so observers and the weighting see them (ggml's add_id
  // before the routing weights multiply).
  for (const int32_t i : batch_)
    if (const float* bias = weights_[i].down_bias)
      for (int64_t r = row0_[i]; r < row0_[i + 1]; ++r) kernels::add(down_.data() + r * n_embd, bias, n_embd);
  for (const int32_t i : batch_) store.release(layer, needed_[i], weights_[i].tier);
}

// A decoded token's experts (or a batched decode step's, a few tokens each) in one parallel region instead
// of three. Work is handed out in order: the gate and up products of every expert (jobs_, one whole matrix
// per claim, one stream each), then the down products' rows laid end to end and cut by guided claims, which
// shrink towards the end so that neither thread waits long for the other's last piece. The thread that
// finishes the second of an expert's gate/up pair runs its SwiGLU at once, and down rows wait for their
// expert's activations (by then usually long done, since every gate/up task was claimed before any down
// row, and a claimed task is being run, so the wait always ends). A decoded row is computed on its own
// whatever the chunk, so the bits are those of separate matmuls; what goes is two barriers per layer and
// the idle tails before them.
template <class Activate>
void ExpertExecutor::compute_decode_dataflow(size_t nb, int64_t n_embd, ThreadPool& pool, Activate& activate) {
  size_t max_row_bytes = 1;
  int64_t quantum = 4;
  for (size_t j = 0; j < jobs_.size(); ++j)
    kernels::check_operands(jobs_[j].w, *jobs_[j].act);
  for (size_t b = 0; b < nb; ++b) {
    const ExpertWeights& w = weights_[static_cast<size_t>(batch_[b])];
    if (w.down.rows != n_embd) fail("expert down projection has {} rows, the model width is {}", w.down.rows, n_embd);
    max_row_bytes = std::max(max_row_bytes, w.down.row_bytes);
    quantum = std::max(quantum, kernels::row_quantum(w.down.type));
  }
  if (!pair_state_ || pair_state_capacity_ < nb) {
    pair_state_ = std::make_unique<std::atomic<int>[]>(nb);
    pair_state_capacity_ = nb;
  }
  for (size_t b = 0; b < nb; ++b) pair_state_[b].store(0, std::memory_order_relaxed);
  constexpr int kActivated = 3;  // 0, 1, 2: gate/up products done; 3: activations ready
  // Claims in one index space: [0, 2 nb) are gate/up matrices, then 2 nb + the down rows.
  const int64_t n_pair_tasks = static_cast<int64_t>(2 * nb);
  const int64_t down_rows = static_cast<int64_t>(nb) * n_embd;
  struct {
    alignas(64) std::atomic<int64_t> next{0};
  } pair_tasks;
  ThreadPool::GuidedRange down(down_rows, kernels::decode_min_rows(max_row_bytes, quantum), quantum, pool.size());
  auto claim = [&](int64_t& begin, int64_t& end) {
    if (pair_tasks.next.load(std::memory_order_relaxed) < n_pair_tasks) {
      const int64_t t = pair_tasks.next.fetch_add(1, std::memory_order_relaxed);
      if (t < n_pair_tasks) {
        begin = t;
        end = t + 1;
        return true;
      }
    }
    if (!down.claim(begin, end)) return false;
    begin += n_pair_tasks;
    end += n_pair_tasks;
    return true;
  };
  auto work = [&](int64_t t0, int64_t t1, int) {
    if (t0 < n_pair_tasks) {
      const kernels::MatmulJob& j = jobs_[static_cast<size_t>(t0)];
      kernels::matmul_rows(j.w, *j.act, j.y, j.y_stride, 0, j.w.rows);
      const size_t b = static_cast<size_t>(t0 / 2);
      if (pair_state_[b].fetch_add(1, std::memory_order_acq_rel) == 1) {
        activate(b);
        pair_state_[b].store(kActivated, std::memory_order_release);
      }
      return;
    }
    for (int64_t r = t0 - n_pair_tasks, r1 = t1 - n_pair_tasks; r < r1;) {
      const size_t b = static_cast<size_t>(r / n_embd);
      const int64_t lo = r - static_cast<int64_t>(b) * n_embd;
      const int64_t hi = std::min(r1 - static_cast<int64_t>(b) * n_embd, n_embd);
      while (pair_state_[b].load(std::memory_order_acquire) != kActivated) cpu_relax();
      const size_t i = static_cast<size_t>(batch_[b]);
      kernels::matmul_rows(weights_[i].down, act_down_[i], down_.data() + row0_[i] * n_embd, n_embd, lo, hi);
      r += hi - lo;
    }
  };
  pool.parallel_claims(n_pair_tasks + down_rows, claim, work);
}

}  // namespace moe
