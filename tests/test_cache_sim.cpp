// The cache simulator replays a trace through the store's own bookkeeping (ExpertResidency): on a
// recorded run its hit and miss counts equal what the real BudgetedExpertStore reported, for every
// cache policy and several pool sizes, with prefetch off (batched prompt + token-by-token decode), and
// with the gate predictor when nothing order-sensitive happened. Also the residency's own rules.
#include <gtest/gtest.h>

#include <filesystem>

#include "analysis/cache_sim.h"
#include "analysis/trace_recorder.h"
#include "base/error.h"
#include "fixture_util.h"
#include "moe/cache_policy.h"
#include "moe/expert_residency.h"
#include "runtime/engine.h"
#include "runtime/session.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

fs::path tmp_dir() {
  static const fs::path d = [] {
    fs::path p = fs::temp_directory_path() / ("moe_test_cache_sim_" + std::to_string(::getpid()));
    fs::create_directories(p);
    return p;
  }();
  return d;
}

// An engine streaming experts through a pool of exactly `slots` experts.
std::unique_ptr<Engine> engine_with_slots(const std::string& name, const std::string& policy, size_t slots,
                                          DirectReader::Mode io) {
  EngineOptions o;
  o.force_offload = true;
  o.cache_policy = policy;
  o.io_mode = io;
  o.n_ctx = 128;
  o.n_batch = 128;
  auto probe = Engine::open(test::model_path(name), o);
  const uint64_t slot = probe->offload_store()->slot_bytes();
  o.mem_bytes = probe->plan().weights_resident + probe->plan().kv_bytes + probe->plan().buffer_bytes + slots * slot;
  auto e = Engine::open(test::model_path(name), o);
  if (e->offload_store()->n_slots() != slots) ADD_FAILURE() << "pool of " << e->offload_store()->n_slots() << " slots";
  return e;
}

struct Recorded {
  ExpertStoreStats stats;
  std::string trace;
};

// A 24-token prompt in one batch, then 24 tokens decoded one at a time (teacher-forced from seq.tok).
Recorded record_run(const std::string& name, const std::string& policy, size_t slots, ForwardOptions fo, int lookahead,
                    DirectReader::Mode io = DirectReader::Mode::IoUring) {
  auto engine = engine_with_slots(name, policy, slots, io);
  const auto ids = test::read_ids(test::ref_path(name, "seq.tok"));
  Recorded out;
  out.trace = (tmp_dir() / (name + "-" + policy + "-" + std::to_string(slots) + ".trace")).string();
  TraceFields f;
  f.lookahead = lookahead;
  TraceWriter w(out.trace, make_trace_header(engine->model(), f));
  w.add_input("", "prompt");
  TraceRecorder rec(w);
  ThreadPool pool(2);
  Session s(engine->model(), engine->store(), 128, fo);
  s.forward().add_observer(&rec);
  s.eval(std::vector<int32_t>(ids.begin(), ids.begin() + 24), pool, false, 128);
  for (size_t i = 24; i < 48 && i < ids.size(); ++i) s.eval({ids[i]}, pool, false, 1);
  w.finish();
  out.stats = engine->offload_store()->stats();
  return out;
}

CacheSimResult simulate(const std::string& trace, const CacheSimConfig& c) {
  TraceReader r(trace);
  CacheSimulator sim(r.header(), {c}, {});
  TraceStep s;
  while (r.next(s)) sim.add_step(s);
  auto res = sim.finish();
  return res.at(0);
}

class SimulatorEqualsStore : public ::testing::TestWithParam<std::string> {};

TEST_P(SimulatorEqualsStore, PrefetchOffEveryPolicyAndPool) {
  const std::string name = GetParam();
  auto probe = Model::load(test::model_path(name), gguf::DataAccess::Mmap, true);
  int k = 0;
  size_t total = 0;
  for (const LayerSpec& L : probe->spec().layers)
    if (L.is_moe) {
      k = std::max(k, L.moe.n_expert_used);
      total += static_cast<size_t>(L.moe.n_expert);
    }
  ForwardOptions fo;  // lookahead_margin -1: no prefetch
  for (const std::string& policy : cache_policy_names()) {
    for (size_t slots : {static_cast<size_t>(k), static_cast<size_t>(k) + 1, total / 2, total - 1}) {
      const Recorded rec = record_run(name, policy, slots, fo, 0);
      const CacheSimResult sim = simulate(rec.trace, {policy, slots, SimPredictor::None, 0});
      EXPECT_EQ(sim.hits, rec.stats.hits) << policy << " " << slots << " slots";
      EXPECT_EQ(sim.misses, rec.stats.misses) << policy << " " << slots << " slots";
      EXPECT_EQ(sim.order_sensitive, 0u);
      EXPECT_EQ(rec.stats.order_sensitive_evictions, 0u);
      uint64_t misses = 0;
      for (uint64_t m : sim.misses) misses += m;
      EXPECT_EQ(misses, rec.stats.loads) << "every miss is one read";
    }
  }
}

TEST_P(SimulatorEqualsStore, GatePredictorWhenNothingIsOrderSensitive) {
  const std::string name = GetParam();
  ForwardOptions fo;
  fo.lookahead_margin = 1;
  fo.predictor = PrefetchPredictor::Gate;
  int compared = 0;
  for (const char* policy : {"distance", "lru", "lfu"}) {
    for (size_t slots : {8, 12, 16}) {
      const Recorded rec = record_run(name, policy, slots, fo, 8);  // k + margin <= 8 on every fixture here
      const CacheSimResult sim = simulate(rec.trace, {policy, slots, SimPredictor::Gate, 1});
      if (sim.order_sensitive != 0) continue;  // the store may legitimately differ here
      ++compared;
      EXPECT_EQ(sim.hits, rec.stats.hits) << policy << " " << slots;
      EXPECT_EQ(sim.misses, rec.stats.misses) << policy << " " << slots;
      EXPECT_EQ(sim.prefetch_issued, rec.stats.prefetch_issued) << policy << " " << slots;
      EXPECT_EQ(sim.prefetch_used, rec.stats.prefetch_used) << policy << " " << slots;
    }
  }
  EXPECT_GT(compared, 0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, SimulatorEqualsStore,
                         ::testing::Values("tiny-qwen3moe", "tiny-deepseekmoe", "tiny-qwen2moe", "tiny-mixtral-Q4_K_M"),
                         test::FixtureParamName());

// Read timing does not matter with prefetch off: the same counts with three I/O modes.
TEST(SimulatorEqualsStore, IndependentOfTheIoMode) {
  ForwardOptions fo;
  std::vector<std::vector<uint64_t>> hits;
  for (auto io : {DirectReader::Mode::IoUring, DirectReader::Mode::DirectPread, DirectReader::Mode::BufferedPread})
    hits.push_back(record_run("tiny-olmoe", "arc", 5, fo, 0, io).stats.hits);
  EXPECT_EQ(hits[0], hits[1]);
  EXPECT_EQ(hits[0], hits[2]);
}

// The residency's rules: a declaration counts hits and misses once, protects what it declared, and
// acquires of declared experts change nothing the policy sees.
TEST(ExpertResidency, DeclarationCountsOnceAndProtects) {
  ExpertResidency::Config c;
  c.n_layer = 2;
  c.n_expert = 4;
  c.slot_bytes = {1, 0};
  c.pool_bytes = 2;
  c.policy = "lru";
  ExpertResidency r(c);
  std::vector<ExpertResidency::Action> act;
  const int32_t a[2] = {0, 1};
  r.hint(0, a, 2, false, nullptr, act);
  ASSERT_EQ(act.size(), 2u);
  EXPECT_EQ(r.counters().misses[0], 2u);
  for (const auto& x : act) r.loaded(x.slot);
  // Both slots are declared: a third expert cannot evict them until they are acquired.
  act.clear();
  const int32_t b[1] = {2};
  r.hint(1, b, 1, false, nullptr, act);
  EXPECT_TRUE(act.empty());
  EXPECT_EQ(r.counters().misses[1], 0u);
  for (int e : {1, 0}) {  // acquired in another order than declared: no new count
    ExpertResidency::AcquireAttempt at;
    EXPECT_EQ(r.acquire(0, e, false, at).kind, ExpertResidency::AcquireResult::Ready);
    r.release(0, e, ExpertTier::Full);
  }
  EXPECT_EQ(r.counters().hits[0], 0u);
  EXPECT_EQ(r.counters().misses[0], 2u);
  // Now expert 2 of layer 1 evicts the least recently *declared* (expert 0 was declared first).
  act.clear();
  r.hint(1, b, 1, false, nullptr, act);
  ASSERT_EQ(act.size(), 1u);
  EXPECT_EQ(r.find(0, 0), nullptr);
  EXPECT_NE(r.find(0, 1), nullptr);
  // Declaring a cached expert is a hit, counted once even if declared twice.
  r.loaded(act[0].slot);
  act.clear();
  const int32_t d[2] = {1, 1};
  r.hint(0, d, 2, false, nullptr, act);
  EXPECT_EQ(r.counters().hits[0], 1u);
  EXPECT_THROW(r.release(0, 3, ExpertTier::Full), Error);
}

}  // namespace
}  // namespace moe
