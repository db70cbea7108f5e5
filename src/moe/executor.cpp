#include "moe/executor.h"

#include <algorithm>
#include <cstring>

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
                         const Routing& routing, ExpertStore& store, ThreadPool& pool, float* out) {
  const int E = spec.n_expert;
  const int k = routing.k;
  by_expert_.resize(E);
  for (auto& v : by_expert_) v.clear();
  // Per (token, slot) weighted expert outputs, summed in slot order at the end. Every slot is written
  // below (no zero fill: at 512 tokens x 8 slots that was 32 MiB of memset per layer).
  slots_.resize(static_cast<size_t>(n_tokens * k * n_embd));
  uint64_t skipped = 0;
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int j = 0; j < k; ++j) {
      // A skipped pair gets a zero slot, so the sum over slots is unchanged by it.
      if (precision_.skip_below > 0.0f && routing.weight(t, j) < precision_.skip_below) {
        ++skipped;
        std::fill_n(slots_.data() + (t * k + j) * n_embd, n_embd, 0.0f);
        continue;
      }
      by_expert_[routing.id(t, j)].push_back({static_cast<int32_t>(t), j});
    }

  // Tell the store everything this layer needs before computing the first expert, so an offloading
  // store reads the later experts while the earlier ones compute. An expert may come from its low-bit
  // copy when none of its tokens weighs low_bit_below or more.
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

  uint64_t evals[2] = {0, 0}, acquires[2] = {0, 0};
  for (size_t i_need = 0; i_need < needed_.size(); ++i_need) {
    const int e = needed_[i_need];
    const auto& members = by_expert_[e];
    const int64_t m = static_cast<int64_t>(members.size());
    xg_.resize(static_cast<size_t>(m * n_embd));
    for (int64_t i = 0; i < m; ++i)
      std::memcpy(xg_.data() + i * n_embd, x + members[i].first * n_embd, static_cast<size_t>(n_embd) * sizeof(float));
    ExpertWeights w = store.acquire(layer, e, low_bit_ok_[i_need] != 0);
    down_.resize(static_cast<size_t>(m * n_embd));
    swiglu_ffn(w.gate, w.up, w.down, xg_.data(), m, down_.data(), pool, ffn_);
    store.release(layer, e, w.tier);
    evals[static_cast<int>(w.tier)] += static_cast<uint64_t>(m);
    ++acquires[static_cast<int>(w.tier)];
    for (int64_t i = 0; i < m; ++i) {
      const auto [t, j] = members[i];
      const float wt = routing.weight(t, j);
      float* dst = slots_.data() + (static_cast<int64_t>(t) * k + j) * n_embd;
      const float* src = down_.data() + i * n_embd;
      for (int64_t c = 0; c < n_embd; ++c) dst[c] = src[c] * wt;
    }
  }
  if (counters_) {
    counters_->full_evals += evals[0];
    counters_->low_bit_evals += evals[1];
    counters_->skipped_evals += skipped;
    counters_->full_acquires += acquires[0];
    counters_->low_bit_acquires += acquires[1];
  }
  for (int64_t t = 0; t < n_tokens; ++t) {
    float* o = out + t * n_embd;
    std::memcpy(o, slots_.data() + t * k * n_embd, static_cast<size_t>(n_embd) * sizeof(float));
    for (int j = 1; j < k; ++j) kernels::add(o, slots_.data() + (t * k + j) * n_embd, n_embd);
  }
}

}  // namespace moe
