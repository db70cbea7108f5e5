// What the server counts for /metrics and the dashboard: tokens routed to each (layer, expert) as steps
// run (a forward observer, design.md seam 4), and HTTP requests by endpoint and status.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "model/forward_observer.h"
#include "model/spec.h"

namespace moe::server {

class LiveExpertLoad final : public ForwardObserver {
 public:
  explicit LiveExpertLoad(const ModelSpec& spec);
  void on_routing(const MoeLayerRouting& r) override;
  int n_layer() const { return n_layer_; }
  int n_expert() const { return n_expert_; }
  const std::vector<int>& moe_layers() const { return moe_layers_; }
  // Tokens routed to each expert so far, [n_layer][n_expert] (dense layers stay 0).
  std::vector<uint64_t> counts() const;

 private:
  int n_layer_ = 0, n_expert_ = 0;
  std::vector<int> moe_layers_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;
};

class RequestCounters {
 public:
  void add(const std::string& endpoint, int status);
  std::map<std::pair<std::string, int>, uint64_t> snapshot() const;
  uint64_t count_status_at_least(int status) const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> counts_;
};

}  // namespace moe::server
