#include "model/kv_cache.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "base/error.h"
#include "tensor/fp16.h"

namespace moe {

std::vector<KvLayerShape> KvCache::layout(const ModelSpec& s, int64_t n_ctx) {
  if (n_ctx <= 0) fail("KV cache: context size {} must be positive", n_ctx);
  std::vector<KvLayerShape> out(static_cast<size_t>(s.n_layer));
  for (int il = 0; il < s.n_layer; ++il) {
    KvLayerShape& sh = out[static_cast<size_t>(il)];
    sh.n_head_kv = s.n_head_kv;
    sh.k_dim = s.head_dim;
    sh.v_dim = s.v_dim_head();
    sh.v_in_k = s.is_mla();
    sh.window = s.layers[static_cast<size_t>(il)].n_swa;
    sh.capacity = sh.window > 0 ? std::min(n_ctx, sh.window + kWindowBlock - 1) : n_ctx;
  }
  return out;
}

uint64_t KvCache::bytes_for(const ModelSpec& s, int64_t n_ctx) {
  uint64_t b = 0;
  for (const KvLayerShape& sh : layout(s, n_ctx)) b += sh.bytes();
  return b;
}

uint64_t KvCache::expanded_bytes_for(const ModelSpec& s, int64_t n_ctx) {
  const int64_t per_pos = s.is_mla() ? s.n_head * (s.mla.qk_nope + s.mla.qk_rope + s.mla.v_head)
                                     : s.n_head_kv * (s.head_dim + s.v_dim_head());
  return static_cast<uint64_t>(s.n_layer) * static_cast<uint64_t>(n_ctx) * static_cast<uint64_t>(per_pos) *
         sizeof(uint16_t);
}

double KvCache::bytes_read_per_token(const ModelSpec& s, double depth) {
  double b = 0;
  for (const KvLayerShape& sh : layout(s, std::numeric_limits<int32_t>::max())) {
    const double keys = sh.window > 0 ? std::min(depth, static_cast<double>(sh.window)) : depth;
    b += keys * sh.n_head_kv * static_cast<double>(sh.k_dim + (sh.v_in_k ? 0 : sh.v_dim)) * sizeof(uint16_t);
  }
  return b;
}

KvCache::KvCache(const ModelSpec& spec, int64_t n_ctx) : n_ctx_(n_ctx), layers_(layout(spec, n_ctx)) {
  size_t total = 0;
  for (const KvLayerShape& sh : layers_) total += static_cast<size_t>(sh.bytes());
  bytes_ = total;
  buf_ = AlignedBuffer(std::max<size_t>(total, 64), 64);
  std::memset(buf_.data(), 0, total);
  uint16_t* p = reinterpret_cast<uint16_t*>(buf_.data());
  for (const KvLayerShape& sh : layers_) {
    k_.push_back(p);
    p += static_cast<size_t>(sh.n_head_kv) * static_cast<size_t>(sh.capacity) * static_cast<size_t>(sh.k_dim);
    v_.push_back(sh.v_in_k ? nullptr : p);
    if (!sh.v_in_k)
      p += static_cast<size_t>(sh.n_head_kv) * static_cast<size_t>(sh.capacity) * static_cast<size_t>(sh.v_dim);
  }
}

int KvCache::runs(int layer, int64_t lo, int64_t hi, Run out[2]) const {
  const KvLayerShape& sh = shape(layer);
  if (hi <= lo) return 0;
  if (!sh.ring()) {
    out[0] = {lo, lo, hi - lo};
    return 1;
  }
  const int64_t s0 = lo % sh.capacity;
  const int64_t n0 = std::min(hi - lo, sh.capacity - s0);
  out[0] = {s0, lo, n0};
  if (n0 == hi - lo) return 1;
  out[1] = {0, lo + n0, hi - lo - n0};
  return 2;
}

int64_t KvCache::block_rows(int layer) const {
  const KvLayerShape& sh = shape(layer);
  if (sh.window <= 0 || sh.capacity >= n_ctx_) return std::numeric_limits<int64_t>::max();
  return sh.capacity - sh.window + 1;
}

void KvCache::store(int layer, int64_t pos, const float* k_row, const float* v_row) {
  const KvLayerShape& sh = shape(layer);
  const int64_t sl = slot(layer, pos);
  for (int h = 0; h < sh.n_head_kv; ++h) {
    fp32_to_fp16_row(k_row + h * sh.k_dim, k(layer, h) + sl * sh.k_dim, sh.k_dim);
    if (!sh.v_in_k) fp32_to_fp16_row(v_row + h * sh.v_dim, v(layer, h) + sl * sh.v_dim, sh.v_dim);
  }
}

void KvCache::widen(int layer, int64_t p0, int64_t p1, float* k_rows, float* v_rows) {
  const KvLayerShape& sh = shape(layer);
  const int64_t kw = sh.k_dim * sh.n_head_kv, vw = sh.v_dim * sh.n_head_kv;
  for (int h = 0; h < sh.n_head_kv; ++h)
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t sl = slot(layer, p);
      fp16_to_fp32_row(k(layer, h) + sl * sh.k_dim, k_rows + (p - p0) * kw + h * sh.k_dim, sh.k_dim);
      if (!sh.v_in_k && v_rows)
        fp16_to_fp32_row(v(layer, h) + sl * sh.v_dim, v_rows + (p - p0) * vw + h * sh.v_dim, sh.v_dim);
    }
}

int64_t KvCache::max_truncation(int64_t n_past, int64_t n) const {
  n = std::min(n, n_past);
  for (const KvLayerShape& sh : layers_) {
    if (!sh.ring() || n_past <= sh.capacity) continue;
    // The ring holds positions [n_past - capacity, n_past); continuing at m needs (m - window, m).
    if (n - sh.window + 1 < n_past - sh.capacity) return 0;
  }
  return std::max<int64_t>(n, 0);
}

}  // namespace moe
