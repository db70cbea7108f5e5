#include "moe/cache_policy.h"

#include <list>
#include <unordered_map>

#include "base/error.h"

namespace moe {

namespace {

// Recency order with O(1) touch: most recent at the front.
class RecencyList {
 public:
  void touch(ExpertKey k) {
    auto it = pos_.find(k);
    if (it != pos_.end()) order_.erase(it->second);
    order_.push_front(k);
    pos_[k] = order_.begin();
  }
  void erase(ExpertKey k) {
    auto it = pos_.find(k);
    if (it == pos_.end()) return;
    order_.erase(it->second);
    pos_.erase(it);
  }
  bool contains(ExpertKey k) const { return pos_.count(k) != 0; }
  size_t size() const { return order_.size(); }
  // Least recent first.
  template <typename F>
  bool scan_lru(F&& f) const {
    for (auto it = order_.rbegin(); it != order_.rend(); ++it)
      if (f(*it)) return true;
    return false;
  }
  ExpertKey lru() const { return order_.back(); }
  void pop_lru() { erase(order_.back()); }

 private:
  std::list<ExpertKey> order_;
  std::unordered_map<ExpertKey, std::list<ExpertKey>::iterator> pos_;
};

class LruPolicy final : public CachePolicy {
 public:
  const char* name() const override { return "lru"; }
  void on_access(ExpertKey k) override { r_.touch(k); }
  void on_insert(ExpertKey k) override { r_.touch(k); }
  void on_evict(ExpertKey k) override { r_.erase(k); }
  bool choose_victim(const std::function<bool(ExpertKey)>& ok, ExpertKey& v) override {
    return r_.scan_lru([&](ExpertKey k) { return ok(k) ? (v = k, true) : false; });
  }

 private:
  RecencyList r_;
};

class LfuPolicy final : public CachePolicy {
 public:
  const char* name() const override { return "lfu"; }
  void on_access(ExpertKey k) override {
    ++count_[k];
    r_.touch(k);
  }
  void on_insert(ExpertKey k) override {
    ++count_[k];  // counts persist across evictions: frequency is a property of the expert
    r_.touch(k);
  }
  void on_evict(ExpertKey k) override { r_.erase(k); }
  bool choose_victim(const std::function<bool(ExpertKey)>& ok, ExpertKey& v) override {
    bool found = false;
    uint64_t best = 0;
    r_.scan_lru([&](ExpertKey k) {
      if (ok(k) && (!found || count_[k] < best)) {
        found = true;
        best = count_[k];
        v = k;
      }
      return false;
    });
    return found;
  }

 private:
  RecencyList r_;
  std::unordered_map<ExpertKey, uint64_t> count_;
};

// Adaptive Replacement Cache (Megiddo & Modha): T1 holds keys seen once recently, T2 keys seen at
// least twice; ghost lists B1/B2 remember recent evictions and steer the target size p of T1.
class ArcPolicy final : public CachePolicy {
 public:
  explicit ArcPolicy(size_t c) : c_(c) {}
  const char* name() const override { return "arc"; }
  void on_access(ExpertKey k) override {
    if (t1_.contains(k)) {
      t1_.erase(k);
      t2_.touch(k);
    } else {
      t2_.touch(k);
    }
  }
  void on_insert(ExpertKey k) override {
    if (b1_.contains(k)) {
      p_ = std::min<double>(static_cast<double>(c_), p_ + std::max(1.0, double(b2_.size()) / std::max<size_t>(1, b1_.size())));
      b1_.erase(k);
      t2_.touch(k);
    } else if (b2_.contains(k)) {
      p_ = std::max(0.0, p_ - std::max(1.0, double(b1_.size()) / std::max<size_t>(1, b2_.size())));
      b2_.erase(k);
      t2_.touch(k);
    } else {
      t1_.touch(k);
    }
    while (b1_.size() > c_) b1_.pop_lru();
    while (b2_.size() > c_) b2_.pop_lru();
  }
  void on_evict(ExpertKey k) override {
    if (t1_.contains(k)) {
      t1_.erase(k);
      b1_.touch(k);
    } else if (t2_.contains(k)) {
      t2_.erase(k);
      b2_.touch(k);
    }
  }
  bool choose_victim(const std::function<bool(ExpertKey)>& ok, ExpertKey& v) override {
    auto pick = [&](const RecencyList& l) { return l.scan_lru([&](ExpertKey k) { return ok(k) ? (v = k, true) : false; }); };
    // Evict from T1 when it exceeds its target, else from T2; fall back to the other list.
    if (t1_.size() > 0 && static_cast<double>(t1_.size()) >= std::max(1.0, p_)) return pick(t1_) || pick(t2_);
    return pick(t2_) || pick(t1_);
  }

 private:
  size_t c_;
  double p_ = 0.0;
  RecencyList t1_, t2_, b1_, b2_;
};

// LRU within a score that protects shallow layers: the victim is the least recently used expert of
// the deepest layer among the oldest candidates.
class LayerAwarePolicy final : public CachePolicy {
 public:
  LayerAwarePolicy(int n_expert, int n_layer) : n_expert_(n_expert), n_layer_(n_layer) {}
  const char* name() const override { return "layer"; }
  void on_access(ExpertKey k) override { last_[k] = ++tick_; }
  void on_insert(ExpertKey k) override { last_[k] = ++tick_; }
  void on_evict(ExpertKey k) override { last_.erase(k); }
  bool choose_victim(const std::function<bool(ExpertKey)>& ok, ExpertKey& v) override {
    bool found = false;
    double best = 0;
    for (const auto& [k, t] : last_) {
      if (!ok(k)) continue;
      const int layer = static_cast<int>(k / static_cast<ExpertKey>(n_expert_));
      // Age in accesses, discounted for shallow layers (up to 2x protection for layer 0).
      const double age = static_cast<double>(tick_ - t);
      const double score = age * (1.0 + static_cast<double>(layer) / std::max(1, n_layer_));
      if (!found || score > best || (score == best && k < v)) {
        found = true;
        best = score;
        v = k;
      }
    }
    return found;
  }

 private:
  int n_expert_, n_layer_;
  uint64_t tick_ = 0;
  std::unordered_map<ExpertKey, uint64_t> last_;
};

// Distance to the executing layer (HOBBIT-style): decoding sweeps the layers in order, so an expert of
// the layer that just ran is not needed again for a whole token, while one of the next layers is
// needed within microseconds. The victim is the expert whose layer comes up last, counting cyclically
// from the layer of the latest access; ties go to the less frequently, then less recently used.
// Unlike LRU, this does not degrade into a cyclic scan when one token's experts exceed the pool.
class LayerDistancePolicy final : public CachePolicy {
 public:
  LayerDistancePolicy(int n_expert, int n_layer) : n_expert_(n_expert), n_layer_(n_layer) {}
  const char* name() const override { return "distance"; }
  void on_access(ExpertKey k) override { touch(k); }
  void on_insert(ExpertKey k) override { touch(k); }
  void on_evict(ExpertKey k) override { last_.erase(k); }
  bool choose_victim(const std::function<bool(ExpertKey)>& ok, ExpertKey& v) override {
    bool found = false;
    int best_dist = -1;
    uint64_t best_count = 0, best_tick = 0;
    for (const auto& [k, st] : last_) {
      if (!ok(k)) continue;
      const int layer = static_cast<int>(k / static_cast<ExpertKey>(n_expert_));
      const int dist = ((layer - current_layer_) % n_layer_ + n_layer_) % n_layer_;
      const bool better = !found || dist > best_dist ||
                          (dist == best_dist && (st.count < best_count ||
                                                 (st.count == best_count && (st.tick < best_tick ||
                                                                             (st.tick == best_tick && k < v)))));
      if (better) {
        found = true;
        best_dist = dist;
        best_count = st.count;
        best_tick = st.tick;
        v = k;
      }
    }
    return found;
  }

 private:
  struct State {
    uint64_t tick = 0, count = 0;
  };
  void touch(ExpertKey k) {
    State& st = last_[k];
    st.tick = ++tick_;
    ++st.count;
    current_layer_ = static_cast<int>(k / static_cast<ExpertKey>(n_expert_));
  }
  int n_expert_, n_layer_;
  int current_layer_ = 0;
  uint64_t tick_ = 0;
  std::unordered_map<ExpertKey, State> last_;
};

}  // namespace

std::vector<std::string> cache_policy_names() { return {"distance", "lru", "lfu", "arc", "layer"}; }

std::unique_ptr<CachePolicy> make_cache_policy(const std::string& name, size_t capacity, int n_expert, int n_layer) {
  if (name == "lru") return std::make_unique<LruPolicy>();
  if (name == "lfu") return std::make_unique<LfuPolicy>();
  if (name == "arc") return std::make_unique<ArcPolicy>(capacity);
  if (name == "layer") return std::make_unique<LayerAwarePolicy>(n_expert, n_layer);
  if (name == "distance") return std::make_unique<LayerDistancePolicy>(n_expert, n_layer);
  fail("--cache-policy: unknown policy '{}' (known: distance, lru, lfu, arc, layer)", name);
}

}  // namespace moe
