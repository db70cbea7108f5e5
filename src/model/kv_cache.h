// One sequence's KV cache: per layer, fp16 keys and values in the form that layer's attention reads.
//   Full:   every position of the context, head-major [kv head][pos][dim]. A decoded token reads
//           every position of one kv head per work item, so each head's keys and values are one
//           contiguous stream (position-major rows put 256 useful bytes in every 4 KiB and ran the
//           attention of a 4k context at a fraction of the memory bandwidth).
//   Window: a sliding-window layer keeps a ring of n_swa + 63 slots (slot = pos % capacity): the
//           window, plus room for a block of 64 queries whose keys are stored before they attend.
//   Latent: multi-head latent attention keeps, per position, one row of kv_lora_rank latent values
//           followed by the qk_rope rope key; the values are the first kv_lora_rank entries of that
//           same row (no separate V), as llama.cpp's MLA cache does.
// Attention is a function of (layer, a contiguous range of token rows, their first position, this
// cache), so a server can run several sequences, each with its own cache, in one forward step.
#pragma once
#include <cstdint>
#include <vector>

#include "base/direct_io.h"
#include "model/spec.h"

namespace moe {

struct KvLayerShape {
  int n_head_kv = 0;
  int64_t k_dim = 0;      // halves per key row
  int64_t v_dim = 0;      // halves per value row
  bool v_in_k = false;    // Latent: values are the first v_dim halves of the key rows
  int64_t window = 0;     // sliding window (0 = full attention)
  int64_t capacity = 0;   // slots per head (n_ctx, or the ring size)
  bool ring() const { return window > 0 && capacity > 0; }
  uint64_t bytes() const {
    return static_cast<uint64_t>(n_head_kv) * static_cast<uint64_t>(capacity) *
           static_cast<uint64_t>(k_dim + (v_in_k ? 0 : v_dim)) * sizeof(uint16_t);
  }
};

class KvCache {
 public:
  // Queries a window layer attends in one go (its ring holds the window plus this many - 1 slots).
  static constexpr int64_t kWindowBlock = 64;

  KvCache(const ModelSpec& spec, int64_t n_ctx);
  // The per-layer shapes a cache of n_ctx positions has, without allocating it.
  static std::vector<KvLayerShape> layout(const ModelSpec& spec, int64_t n_ctx);
  static uint64_t bytes_for(const ModelSpec& spec, int64_t n_ctx);
  // What a cache of n_ctx positions would take if every layer kept full per-head keys and values
  // (no window ring, MLA expanded to heads x (qk_nope + qk_rope) keys and heads x v_head values).
  static uint64_t expanded_bytes_for(const ModelSpec& spec, int64_t n_ctx);
  // Cache bytes one decoded token reads, over all layers, with `depth` positions in context.
  static double bytes_read_per_token(const ModelSpec& spec, double depth);

  int64_t n_ctx() const { return n_ctx_; }
  const KvLayerShape& shape(int layer) const { return layers_[static_cast<size_t>(layer)]; }
  // Slot 0 of kv head `head` in `layer`; slot s is s * k_stride (v_stride) halves further on.
  uint16_t* k(int layer, int head) { return k_[static_cast<size_t>(layer)] + static_cast<int64_t>(head) * head_elems_k(layer); }
  uint16_t* v(int layer, int head) {
    const KvLayerShape& sh = shape(layer);
    if (sh.v_in_k) return k(layer, head);
    return v_[static_cast<size_t>(layer)] + static_cast<int64_t>(head) * sh.capacity * sh.v_dim;
  }
  int64_t k_stride(int layer) const { return shape(layer).k_dim; }
  int64_t v_stride(int layer) const { return shape(layer).v_in_k ? shape(layer).k_dim : shape(layer).v_dim; }
  int64_t slot(int layer, int64_t pos) const {
    const KvLayerShape& sh = shape(layer);
    return sh.ring() ? pos % sh.capacity : pos;
  }
  // The first key position a query at `pos` sees in `layer`.
  int64_t first_visible(int layer, int64_t pos) const {
    const int64_t w = shape(layer).window;
    return w > 0 && pos - w + 1 > 0 ? pos - w + 1 : 0;
  }
  // Positions [lo, hi) as at most two runs of consecutive slots, in position order. Returns the count.
  struct Run {
    int64_t slot, pos, n;
  };
  int runs(int layer, int64_t lo, int64_t hi, Run out[2]) const;
  // Token rows at a time that `layer` can store before attending them (all of them unless a ring).
  int64_t block_rows(int layer) const;

  // Stores one position's keys and values (all kv heads, fp32 rows of n_head_kv * k_dim and
  // n_head_kv * v_dim); v_row is ignored for Latent layers.
  void store(int layer, int64_t pos, const float* k_row, const float* v_row);
  // Widens positions [p0, p1) to fp32, position-major rows of n_head_kv * dim: the row of position p
  // at k_rows + (p - p0) * width (likewise v_rows; null for Latent layers, whose values are in k_rows).
  void widen(int layer, int64_t p0, int64_t p1, float* k_rows, float* v_rows);
  size_t bytes() const { return bytes_; }

  // After n_past positions were stored, the largest m <= n such that the context can be cut back to m
  // positions and continued (a ring that has overwritten the window m needs cannot); 0 always works.
  int64_t max_truncation(int64_t n_past, int64_t n) const;

 private:
  int64_t head_elems_k(int layer) const { return shape(layer).capacity * shape(layer).k_dim; }
  int64_t n_ctx_;
  std::vector<KvLayerShape> layers_;
  std::vector<uint16_t*> k_, v_;  // per layer, into buf_
  AlignedBuffer buf_;             // large caches get 2 MiB pages where the kernel allows
  size_t bytes_ = 0;
};

}  // namespace moe
