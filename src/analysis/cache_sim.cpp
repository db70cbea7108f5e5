#include "analysis/cache_sim.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "base/error.h"
#include "moe/cache_policy.h"

namespace moe {

const char* sim_predictor_name(SimPredictor p) {
  switch (p) {
    case SimPredictor::None: return "none";
    case SimPredictor::Gate: return "gate";
    case SimPredictor::Transition: return "transition";
  }
  return "?";
}

uint64_t CacheSimResult::total_hits() const {
  uint64_t n = 0;
  for (uint64_t x : hits) n += x;
  return n;
}

uint64_t CacheSimResult::total_misses() const {
  uint64_t n = 0;
  for (uint64_t x : misses) n += x;
  return n;
}

double CacheSimResult::hit_rate() const {
  const uint64_t h = total_hits(), m = total_misses();
  return h + m ? static_cast<double>(h) / static_cast<double>(h + m) : NAN;
}

double CacheSimResult::gen_hit_rate() const {
  return gen_hits + gen_misses ? static_cast<double>(gen_hits) / static_cast<double>(gen_hits + gen_misses) : NAN;
}

std::vector<size_t> default_slot_grid(const TraceHeader& h) {
  size_t total = 0, k = 1;
  for (int m = 0; m < h.n_moe(); ++m) {
    total += static_cast<size_t>(h.n_expert[m]);
    k = std::max(k, static_cast<size_t>(h.n_expert_used[m]));
  }
  std::set<size_t> grid = {k, total};
  for (double f : {1.0 / 16, 1.0 / 12, 1.0 / 8, 1.0 / 6, 1.0 / 4, 1.0 / 3, 1.0 / 2, 2.0 / 3, 3.0 / 4, 7.0 / 8})
    grid.insert(std::max(k, static_cast<size_t>(std::llround(f * static_cast<double>(total)))));
  // Small models: also every multiple of k per MoE layer up to 2k (the paper's knee).
  for (size_t per = 1; per <= 4; ++per) grid.insert(std::min(total, std::max(k, per * k * static_cast<size_t>(h.n_moe()) / 2)));
  return {grid.begin(), grid.end()};
}

// One configuration's replay state: the store's bookkeeping, counters for generated steps, bytes.
struct CacheSimulator::Run {
  CacheSimConfig config;
  std::unique_ptr<ExpertResidency> residency;
  std::vector<ExpertResidency::Action> actions;
  uint64_t gen_hits = 0, gen_misses = 0, loads = 0, bytes = 0, gen_bytes = 0, order_sensitive = 0;
};

CacheSimulator::CacheSimulator(const TraceHeader& h, std::vector<CacheSimConfig> configs, std::vector<uint64_t> read_bytes,
                               const TransitionTable* table)
    : header_(h), read_bytes_(std::move(read_bytes)), table_(table) {
  if (read_bytes_.size() != static_cast<size_t>(h.n_moe())) read_bytes_.assign(static_cast<size_t>(h.n_moe()), 0);
  int k_max = 0;
  for (int m = 0; m < h.n_moe(); ++m) {
    n_expert_max_ = std::max(n_expert_max_, h.n_expert[m]);
    k_max = std::max(k_max, h.n_expert_used[m]);
  }
  const std::vector<std::string> policies = cache_policy_names();
  for (const CacheSimConfig& c : configs) {
    if (c.slots < static_cast<size_t>(k_max))
      fail("simulate: a pool of {} experts is smaller than the {} one layer needs per token", c.slots, k_max);
    if (c.policy == "belady") {
      if (c.predictor != SimPredictor::None) fail("simulate: Belady's policy is simulated without a predictor");
      belady_.push_back(c);
      continue;
    }
    if (std::find(policies.begin(), policies.end(), c.policy) == policies.end())
      fail("simulate: unknown cache policy '{}' (known: distance, lru, lfu, arc, layer, belady)", c.policy);
    if (c.predictor == SimPredictor::Gate) {
      if (h.fields.lookahead <= 0)
        fail("simulate: the gate predictor replays the trace's lookahead rankings; record them with --lookahead R "
             "(moe trace) or --trace-lookahead R");
      for (int m = 0; m + 1 < h.n_moe(); ++m)
        if (std::min(h.n_expert[m + 1], h.n_expert_used[m + 1] + c.margin) > h.fields.lookahead)
          fail("simulate: margin {} needs the top {} of the next layer, the trace records {}", c.margin,
               h.n_expert_used[m + 1] + c.margin, h.fields.lookahead);
    }
    if (c.predictor == SimPredictor::Transition && !table_) fail("simulate: the transition predictor needs a table");
    auto run = std::make_unique<Run>();
    run->config = c;
    ExpertResidency::Config rc;
    rc.n_layer = h.n_layer;
    rc.n_expert = n_expert_max_;
    rc.slot_bytes = {1, 0};
    rc.pool_bytes = c.slots;
    rc.policy = c.policy;
    run->residency = std::make_unique<ExpertResidency>(rc);
    runs_.push_back(std::move(run));
  }
}

CacheSimulator::~CacheSimulator() = default;

void CacheSimulator::add_step(const TraceStep& s) {
  bool generated = s.n_tokens() > 0;
  for (const TraceToken& t : s.tokens) generated = generated && (t.flags & TraceToken::kGenerated);
  for (auto& run : runs_) replay(*run, s, generated);
  if (!belady_.empty()) {
    for (int m = 0; m < header_.n_moe(); ++m) {
      std::vector<uint8_t> need(static_cast<size_t>(header_.n_expert[m]), 0);
      for (size_t t = 0; t < s.n_tokens(); ++t)
        for (uint32_t i = s.begin(t, m); i < s.end(t, m); ++i)
          need[static_cast<size_t>(s.experts[i])] = 1;
      groups_.push_back(static_cast<uint32_t>(accesses_.size()));
      gen_.push_back(generated ? 1 : 0);
      for (size_t e = 0; e < need.size(); ++e)
        if (need[e])
          accesses_.push_back(static_cast<uint32_t>(header_.moe_layers[m] * n_expert_max_ + static_cast<int>(e)));
    }
  }
}

void CacheSimulator::replay(Run& run, const TraceStep& s, bool generated) {
  ExpertResidency& R = *run.residency;
  const int M = header_.n_moe();
  const CacheSimConfig& c = run.config;
  auto apply = [&]() {
    // Reads complete at once.
    for (const ExpertResidency::Action& a : run.actions) {
      if (a.kind != ExpertResidency::Action::Read) continue;
      R.loaded(a.slot);
      ++run.loads;
      const int mi = header_.moe_index(R.layer_of(a.key));
      const uint64_t b = mi >= 0 ? read_bytes_[static_cast<size_t>(mi)] : 0;
      run.bytes += b;
      if (generated) run.gen_bytes += b;
    }
    run.actions.clear();
  };
  for (int m = 0; m < M; ++m) {
    const int layer = header_.moe_layers[m];
    // 1. The predictor's hint for the next MoE layer (ForwardPass::ffn runs it before the executor).
    if (c.predictor != SimPredictor::None && m + 1 < M) {
      const int want = std::min(header_.n_expert[m + 1], header_.n_expert_used[m + 1] + c.margin);
      hint_.clear();
      for (size_t t = 0; t < s.n_tokens(); ++t) {
        const int32_t* top = nullptr;
        int n = 0;
        if (c.predictor == SimPredictor::Gate) {
          const uint32_t b = s.lookahead_offsets[s.at(t, m)];
          n = std::min(want, static_cast<int>(s.lookahead_offsets[s.at(t, m) + 1] - b));
          top = s.lookahead.data() + b;
        } else {
          top_.resize(static_cast<size_t>(want));
          const uint32_t b = s.begin(t, m);
          n = table_->predict(layer, s.experts.data() + b, s.weights.data() + b, static_cast<int>(s.end(t, m) - b), want,
                              top_.data(), scores_);
          top = top_.data();
        }
        for (int j = 0; j < n; ++j)
          if (std::find(hint_.begin(), hint_.end(), top[j]) == hint_.end()) hint_.push_back(top[j]);
      }
      R.hint(header_.moe_layers[m + 1], hint_.data(), static_cast<int>(hint_.size()), true, nullptr, run.actions);
      apply();
    }
    // 2. The declaration: the layer's distinct experts, ascending.
    std::vector<uint8_t> need(static_cast<size_t>(header_.n_expert[m]), 0);
    for (size_t t = 0; t < s.n_tokens(); ++t)
      for (uint32_t i = s.begin(t, m); i < s.end(t, m); ++i)
        need[static_cast<size_t>(s.experts[i])] = 1;
    needed_.clear();
    for (size_t e = 0; e < need.size(); ++e)
      if (need[e]) needed_.push_back(static_cast<int32_t>(e));
    if (needed_.empty()) continue;
    const auto before = R.counters();
    const uint64_t hits0 = before.hits[static_cast<size_t>(layer)], misses0 = before.misses[static_cast<size_t>(layer)];
    R.hint(layer, needed_.data(), static_cast<int>(needed_.size()), false, nullptr, run.actions);
    apply();
    // 3. Acquires, as ExpertExecutor::compute_ready_first: everything in the pool first (in the
    // declaration's order), then the rest one at a time.
    std::vector<int32_t> later;
    bool undeclared_hinted = false;
    for (int32_t e : needed_) {
      const ExpertResidency::Slot* sl = R.find(layer, e);
      if (!sl || sl->state != ExpertResidency::SlotState::Ready) {
        later.push_back(e);
        continue;
      }
      undeclared_hinted = undeclared_hinted || (sl->hinted && !sl->declared);
      ExpertResidency::AcquireAttempt at;
      const ExpertResidency::AcquireResult r = R.acquire(layer, e, false, at);
      if (r.kind != ExpertResidency::AcquireResult::Ready) fail("simulate: internal: a ready expert was not served");
      R.release(layer, e, ExpertTier::Full);
    }
    for (int32_t e : later) {
      ExpertResidency::AcquireAttempt at;
      for (int tries = 0;; ++tries) {
        const ExpertResidency::AcquireResult r = R.acquire(layer, e, false, at);
        if (r.kind == ExpertResidency::AcquireResult::Ready) break;
        if (r.kind == ExpertResidency::AcquireResult::Read) {
          R.loaded(r.slot);
          ++run.loads;
          run.bytes += read_bytes_[static_cast<size_t>(m)];
          if (generated) run.gen_bytes += read_bytes_[static_cast<size_t>(m)];
          continue;
        }
        if (tries > 2) fail("simulate: no slot for expert {} of layer {} with nothing pinned", e, layer);
      }
      R.release(layer, e, ExpertTier::Full);
    }
    // An undeclared expert that a hint was still reading could, in the store, be acquired after a miss
    // that the declaration could not place: timing-dependent, so flagged.
    if (undeclared_hinted && !later.empty()) ++run.order_sensitive;
    if (generated) {
      const auto& after = R.counters();
      run.gen_hits += after.hits[static_cast<size_t>(layer)] - hits0;
      run.gen_misses += after.misses[static_cast<size_t>(layer)] - misses0;
    }
  }
}

void CacheSimulator::belady(CacheSimResult& out) const {
  const size_t A = accesses_.size();
  out.hits.assign(static_cast<size_t>(header_.n_layer), 0);
  out.misses.assign(static_cast<size_t>(header_.n_layer), 0);
  const size_t n_keys = static_cast<size_t>(header_.n_layer) * static_cast<size_t>(n_expert_max_);
  // Next use of each access's key (kNever - key when none: farthest of all, and distinct).
  constexpr uint64_t kNever = std::numeric_limits<uint64_t>::max();
  std::vector<uint64_t> next(A);
  {
    std::vector<uint64_t> seen(n_keys, kNever);
    for (size_t i = A; i-- > 0;) {
      next[i] = seen[accesses_[i]] == kNever ? kNever - accesses_[i] : seen[accesses_[i]];
      seen[accesses_[i]] = i;
    }
  }
  std::set<std::pair<uint64_t, uint32_t>> by_next;  // cached keys by next use
  std::vector<uint64_t> when(n_keys, 0);
  std::vector<uint8_t> cached(n_keys, 0);
  size_t g = 0;
  for (size_t i = 0; i < A; ++i) {
    while (g + 1 < groups_.size() && groups_[g + 1] <= i) ++g;
    const uint64_t group_end = g + 1 < groups_.size() ? groups_[g + 1] : A;
    const uint32_t key = accesses_[i];
    const size_t layer = key / static_cast<uint32_t>(n_expert_max_);
    const bool gen = gen_[g] != 0;
    if (cached[key]) {
      ++out.hits[layer];
      if (gen) ++out.gen_hits;
      by_next.erase({when[key], key});
    } else {
      ++out.misses[layer];
      ++out.loads;
      const int mi = header_.moe_index(static_cast<int>(layer));
      const uint64_t b = mi >= 0 ? read_bytes_[static_cast<size_t>(mi)] : 0;
      out.bytes_read += b;
      if (gen) {
        ++out.gen_misses;
        out.gen_bytes_read += b;
      }
      if (by_next.size() >= out.config.slots) {
        // The farthest next use, but not an expert this layer-step still needs (the store protects
        // declared experts too), unless every cached one is.
        auto victim = std::prev(by_next.end());
        for (auto it = by_next.rbegin(); it != by_next.rend(); ++it)
          if (it->first >= group_end) {
            victim = std::prev(it.base());
            break;
          }
        cached[victim->second] = 0;
        by_next.erase(victim);
      }
      cached[key] = 1;
    }
    when[key] = next[i];
    by_next.insert({next[i], key});
  }
}

std::vector<CacheSimResult> CacheSimulator::finish() {
  std::vector<CacheSimResult> out;
  for (auto& run : runs_) {
    CacheSimResult r;
    r.config = run->config;
    const ExpertResidency::Counters& c = run->residency->counters();
    r.hits = c.hits;
    r.misses = c.misses;
    r.gen_hits = run->gen_hits;
    r.gen_misses = run->gen_misses;
    r.loads = run->loads;
    r.bytes_read = run->bytes;
    r.gen_bytes_read = run->gen_bytes;
    r.prefetch_issued = c.prefetch_issued;
    r.prefetch_used = c.prefetch_used;
    r.prefetch_wasted = c.prefetch_wasted;
    r.prefetch_throttled = c.prefetch_throttled;
    r.order_sensitive = c.order_sensitive_evictions + run->order_sensitive;
    out.push_back(std::move(r));
  }
  for (const CacheSimConfig& c : belady_) {
    CacheSimResult r;
    r.config = c;
    belady(r);
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace moe
