#include "server/live_stats.h"

#include <algorithm>

namespace moe::server {

LiveExpertLoad::LiveExpertLoad(const ModelSpec& spec) : n_layer_(spec.n_layer) {
  for (int l = 0; l < spec.n_layer; ++l) {
    const LayerSpec& L = spec.layers[static_cast<size_t>(l)];
    if (!L.is_moe) continue;
    moe_layers_.push_back(l);
    n_expert_ = std::max(n_expert_, L.moe.n_expert);
  }
  const size_t n = static_cast<size_t>(std::max(1, n_layer_ * n_expert_));
  counts_ = std::make_unique<std::atomic<uint64_t>[]>(n);
  for (size_t i = 0; i < n; ++i) counts_[i].store(0, std::memory_order_relaxed);
}

void LiveExpertLoad::on_routing(const MoeLayerRouting& r) {
  if (r.layer < 0 || r.layer >= n_layer_) return;
  std::atomic<uint64_t>* row = counts_.get() + static_cast<size_t>(r.layer) * static_cast<size_t>(n_expert_);
  const Routing& rt = *r.routing;
  for (int64_t t = 0; t < r.tokens->n_tokens; ++t)
    for (int j = 0; j < rt.k; ++j) {
      const int32_t e = rt.id(t, j);
      if (e >= 0 && e < n_expert_) row[e].fetch_add(1, std::memory_order_relaxed);
    }
}

std::vector<uint64_t> LiveExpertLoad::counts() const {
  std::vector<uint64_t> out(static_cast<size_t>(n_layer_ * n_expert_));
  for (size_t i = 0; i < out.size(); ++i) out[i] = counts_[i].load(std::memory_order_relaxed);
  return out;
}

void RequestCounters::add(const std::string& endpoint, int status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++counts_[{endpoint, status}];
}

std::map<std::pair<std::string, int>, uint64_t> RequestCounters::snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return counts_;
}

uint64_t RequestCounters::count_status_at_least(int status) const {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t n = 0;
  for (const auto& [k, v] : counts_)
    if (k.second >= status) n += v;
  return n;
}

}  // namespace moe::server
