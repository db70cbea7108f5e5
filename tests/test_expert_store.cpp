// The offloading expert store: bit-identical logits to resident runs for every policy and I/O mode,
// a clear error when the budget cannot hold one layer's experts, correct pinning under concurrency,
// and the eviction order of each cache policy.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>

#include "base/error.h"
#include "fixture_util.h"
#include "moe/cache_policy.h"
#include "runtime/engine.h"
#include "runtime/session.h"

namespace moe {
namespace {

std::vector<float> logits_with(Engine& e, const std::vector<int32_t>& ids, int64_t n_batch) {
  ThreadPool pool(2);
  Session s(e.model(), e.store(), static_cast<int64_t>(ids.size()));
  return s.eval(ids, pool, true, n_batch);
}

EngineOptions offload_opts(const std::string& policy, DirectReader::Mode io) {
  EngineOptions o;
  o.force_offload = true;
  o.cache_policy = policy;
  o.io_mode = io;
  o.n_ctx = 128;
  o.n_batch = 128;
  return o;
}

class OffloadFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(OffloadFixture, StreamingExpertsGivesBitIdenticalLogits) {
  const std::string name = GetParam();
  const auto ids = test::read_ids(test::ref_path(name, "seq.tok"));
  auto resident = Engine::open(test::model_path(name), EngineOptions{});
  ASSERT_EQ(resident->offload_store(), nullptr);
  const auto want = logits_with(*resident, ids, 512);
  const auto want_steps = logits_with(*resident, std::vector<int32_t>(ids.begin(), ids.begin() + 12), 1);

  const int k = resident->model().spec().layers.back().moe.n_expert_used;
  const uint64_t slot = BudgetedExpertStore::slot_bytes_for(resident->model().expert_layout());
  for (const std::string& policy : cache_policy_names()) {
    for (auto io : {DirectReader::Mode::IoUring, DirectReader::Mode::DirectPread, DirectReader::Mode::BufferedPread}) {
      for (int slots : {k, k + 3}) {
        EngineOptions o = offload_opts(policy, io);
        o.preload = slots > k;  // a preload racing the first evaluation must not change a bit either
        auto probe = Engine::open(test::model_path(name), o);  // unlimited pool, to learn the plan
        o.mem_bytes = probe->plan().weights_resident + probe->plan().kv_bytes + probe->plan().buffer_bytes +
                      static_cast<uint64_t>(slots) * slot;
        auto e = Engine::open(test::model_path(name), o);
        ASSERT_NE(e->offload_store(), nullptr);
        ASSERT_EQ(e->offload_store()->n_slots(), static_cast<size_t>(slots));
        EXPECT_EQ(logits_with(*e, ids, 512), want) << policy << " " << static_cast<int>(io) << " slots " << slots;
        EXPECT_EQ(logits_with(*e, std::vector<int32_t>(ids.begin(), ids.begin() + 12), 1), want_steps) << policy;
        const ExpertStoreStats st = e->offload_store()->stats();
        uint64_t misses = 0;
        for (auto m : st.misses) misses += m;
        EXPECT_GT(misses, 0u);
        EXPECT_GT(st.bytes_read, 0u);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, OffloadFixture,
                         ::testing::Values("tiny-qwen3moe", "tiny-mixtral-Q4_K_M", "tiny-deepseekmoe",
                                           "tiny-qwen2moe", "tiny-deepseek2-lite", "tiny-deepseek2-v3",
                                           "tiny-gptoss", "tiny-glm4moe"),
                         moe::test::FixtureParamName());

TEST(OffloadBudget, TooSmallForOneLayerIsAClearError) {
  EngineOptions o = offload_opts("lru", DirectReader::Mode::IoUring);
  auto probe = Engine::open(test::model_path("tiny-qwen3moe"), o);
  const uint64_t slot = BudgetedExpertStore::slot_bytes_for(probe->model().expert_layout());
  o.mem_bytes = probe->plan().weights_resident + probe->plan().kv_bytes + probe->plan().buffer_bytes + slot;  // k = 2
  try {
    Engine::open(test::model_path("tiny-qwen3moe"), o);
    FAIL() << "a pool of one expert was accepted for k = 2";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--mem"), std::string::npos) << e.what();
  }
  o.mem_bytes = 1 << 20;
  EXPECT_THROW(Engine::open(test::model_path("tiny-qwen3moe"), o), Error);
}

TEST(OffloadBudget, ParseSize) {
  EXPECT_EQ(parse_size("8G", "--mem"), 8ull << 30);
  EXPECT_EQ(parse_size("512M", "--mem"), 512ull << 20);
  EXPECT_EQ(parse_size("1.5GiB", "--mem"), 3ull << 29);
  EXPECT_EQ(parse_size("4096", "--mem"), 4096u);
  EXPECT_THROW(parse_size("lots", "--mem"), Error);
  EXPECT_THROW(parse_size("8Q", "--mem"), Error);
  EXPECT_THROW(parse_size("0", "--mem"), Error);
}

// Many threads acquire random experts (with hints in between) from a pool far smaller than the
// model; every acquired expert must hold exactly the resident bytes for as long as it is pinned.
TEST(OffloadConcurrency, PinnedExpertsAreNeverEvictedOrCorrupted) {
  auto resident = Model::load(test::model_path("tiny-qwen3moe"));
  auto deferred = Model::load(test::model_path("tiny-qwen3moe"), gguf::DataAccess::Pread, true);
  BudgetedExpertStore::Options so;
  so.pool_bytes = 4 * BudgetedExpertStore::slot_bytes_for(deferred->expert_layout());
  so.policy = "arc";
  BudgetedExpertStore store(deferred->expert_layout(), so);
  ResidentExpertStore truth(*resident);
  const int L = resident->spec().n_layer, E = resident->spec().layers[0].moe.n_expert;
  std::atomic<int> bad{0};
  std::mutex truth_mu;
  auto worker = [&](int seed) {
    std::mt19937 rng(seed);
    for (int it = 0; it < 150; ++it) {
      const int l = static_cast<int>(rng() % L), e = static_cast<int>(rng() % E);
      if (rng() % 3 == 0) {
        int32_t hint[2] = {static_cast<int32_t>(rng() % E), static_cast<int32_t>(rng() % E)};
        store.prefetch(static_cast<int>(rng() % L), hint, 2, true);
      }
      ExpertWeights got = store.acquire(l, e);
      ExpertWeights want;
      {
        std::lock_guard<std::mutex> lock(truth_mu);
        want = truth.acquire(l, e);
      }
      std::this_thread::yield();
      for (auto [g, w] : {std::pair{got.gate, want.gate}, {got.up, want.up}, {got.down, want.down}})
        if (std::memcmp(g.data, w.data, w.row_bytes * static_cast<size_t>(w.rows)) != 0) ++bad;
      store.release(l, e);
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) threads.emplace_back(worker, 100 + t);
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_THROW(store.release(0, 0), Error);  // nothing pinned any more
}

// preload() fills only empty slots, in the order given, and never evicts; what it reads is the
// expert's bytes, and acquiring a preloaded expert is a hit. Acquires racing a preload (promoting
// queued preload reads) get correct bytes too.
TEST(OffloadPreload, FillsEmptySlotsInOrderWithoutEvicting) {
  auto resident = Model::load(test::model_path("tiny-qwen3moe"));
  auto deferred = Model::load(test::model_path("tiny-qwen3moe"), gguf::DataAccess::Pread, true);
  ResidentExpertStore truth(*resident);
  const int L = resident->spec().n_layer, E = resident->spec().layers[0].moe.n_expert;
  auto same_bytes = [&](const ExpertWeights& got, int l, int e) {
    const ExpertWeights want = truth.acquire(l, e);
    for (auto [g, w] : {std::pair{got.gate, want.gate}, {got.up, want.up}, {got.down, want.down}})
      if (std::memcmp(g.data, w.data, w.row_bytes * static_cast<size_t>(w.rows)) != 0) return false;
    return true;
  };
  std::vector<std::pair<int, int>> order;
  for (int x = E - 1; x >= 0; --x)
    for (int l = 0; l < L; ++l) order.emplace_back(l, x);

  BudgetedExpertStore::Options so;
  const size_t n_slots = 7;
  so.pool_bytes = n_slots * BudgetedExpertStore::slot_bytes_for(deferred->expert_layout());
  BudgetedExpertStore store(deferred->expert_layout(), so);
  // One expert cached before the preload: it must stay.
  ASSERT_TRUE(same_bytes(store.acquire(0, 0), 0, 0));
  store.release(0, 0);
  EXPECT_EQ(store.preload(order), n_slots - 1);
  store.wait_preloaded();
  EXPECT_EQ(store.stats().preload_loads, n_slots - 1);
  EXPECT_TRUE(store.is_ready(0, 0, false)) << "preload evicted a cached expert";
  for (size_t i = 0; i < n_slots - 1; ++i)
    EXPECT_TRUE(store.is_ready(order[i].first, order[i].second, false)) << "order position " << i;
  EXPECT_FALSE(store.is_ready(order[n_slots - 1].first, order[n_slots - 1].second, false));
  EXPECT_EQ(store.preload(order), 0u) << "a full pool takes no preload";
  store.reset_stats();
  const auto [l1, e1] = order[3];
  EXPECT_TRUE(same_bytes(store.acquire(l1, e1), l1, e1));
  store.release(l1, e1);
  const ExpertStoreStats st = store.stats();
  EXPECT_EQ(st.hits[static_cast<size_t>(l1)], 1u);
  EXPECT_EQ(st.bytes_read, 0u);

  // A bigger pool preloading while two threads acquire: queued preload reads are promoted or served.
  so.pool_bytes = 40 * BudgetedExpertStore::slot_bytes_for(deferred->expert_layout());
  BudgetedExpertStore racing(deferred->expert_layout(), so);
  racing.preload(order);
  std::atomic<int> bad{0};
  auto worker = [&](int seed) {
    std::mt19937 rng(seed);
    for (int it = 0; it < 60; ++it) {
      const int l = static_cast<int>(rng() % L), e = static_cast<int>(rng() % E);
      if (!same_bytes(racing.acquire(l, e), l, e)) ++bad;
      racing.release(l, e);
    }
  };
  std::thread a(worker, 7), b(worker, 8);
  a.join();
  b.join();
  racing.wait_preloaded();
  EXPECT_EQ(bad.load(), 0);
}

// Hints that only push needed experts out of a full pool (and are never used themselves) stop being
// allowed to evict: the store drops them and counts them as throttled. Hints into free slots and the
// data served are unaffected.
TEST(OffloadPrefetch, WastefulSpeculationIsThrottled) {
  auto resident = Model::load(test::model_path("tiny-qwen3moe"));
  auto deferred = Model::load(test::model_path("tiny-qwen3moe"), gguf::DataAccess::Pread, true);
  BudgetedExpertStore::Options so;
  so.pool_bytes = 4 * BudgetedExpertStore::slot_bytes_for(deferred->expert_layout());
  so.policy = "lru";
  BudgetedExpertStore store(deferred->expert_layout(), so);
  ResidentExpertStore truth(*resident);
  const int E = resident->spec().layers[0].moe.n_expert;
  ASSERT_GE(E, 8);
  for (int round = 0; round < 60; ++round) {
    for (int e = 0; e < 4; ++e) {  // the working set: layer 0, experts 0..3, exactly the pool
      ExpertWeights got = store.acquire(0, e);
      const ExpertWeights want = truth.acquire(0, e);
      EXPECT_EQ(std::memcmp(got.gate.data, want.gate.data, want.gate.row_bytes * static_cast<size_t>(want.gate.rows)), 0);
      store.release(0, e);
    }
    const int32_t hint = static_cast<int32_t>(4 + round % (E - 4));  // a wrong guess, never acquired
    const uint64_t issued_before = store.stats().prefetch_issued;
    store.prefetch(1, &hint, 1, /*speculative=*/true);
    // Let an issued hint finish loading before the next round: a slot still Loading cannot be
    // evicted, so on a busy machine the demand misses would evict each other instead and the
    // counts below would depend on the I/O thread's timing.
    if (store.stats().prefetch_issued > issued_before) {
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (!store.is_ready(1, hint, false) && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      ASSERT_TRUE(store.is_ready(1, hint, false)) << "hint for expert " << hint << " never loaded";
    }
  }
  const ExpertStoreStats st = store.stats();
  EXPECT_GT(st.prefetch_throttled, 30u) << "issued " << st.prefetch_issued << ", wasted " << st.prefetch_wasted;
  EXPECT_LT(st.prefetch_issued, 30u);  // probes only, once the moving average fell
}

TEST(CachePolicies, EvictionOrder) {
  auto all = [](ExpertKey) { return true; };
  ExpertKey v = 0;
  {
    auto p = make_cache_policy("lru", 3, 8, 2);
    for (ExpertKey k : {1u, 2u, 3u}) p->on_insert(k);
    p->on_access(1);
    ASSERT_TRUE(p->choose_victim(all, v));
    EXPECT_EQ(v, 2u);
    ASSERT_TRUE(p->choose_victim([](ExpertKey k) { return k != 2; }, v));
    EXPECT_EQ(v, 3u);
  }
  {
    auto p = make_cache_policy("lfu", 3, 8, 2);
    for (ExpertKey k : {1u, 2u, 3u}) p->on_insert(k);
    p->on_access(1);
    p->on_access(1);
    p->on_access(3);
    ASSERT_TRUE(p->choose_victim(all, v));
    EXPECT_EQ(v, 2u);
  }
  {
    // ARC: a key seen twice (T2) outlives one-time keys (T1) when T1 is over its target.
    auto p = make_cache_policy("arc", 3, 8, 2);
    for (ExpertKey k : {1u, 2u, 3u}) p->on_insert(k);
    p->on_access(1);
    ASSERT_TRUE(p->choose_victim(all, v));
    EXPECT_NE(v, 1u);
  }
  {
    // Layer-aware: with equal recency, the deeper layer's expert goes first.
    auto p = make_cache_policy("layer", 2, 8, 4);
    p->on_insert(3 * 8 + 1);  // layer 3
    p->on_insert(0 * 8 + 1);  // layer 0, newer
    p->on_access(3 * 8 + 1);
    p->on_access(0 * 8 + 1);
    ASSERT_TRUE(p->choose_victim(all, v));
    EXPECT_EQ(v, 3u * 8 + 1);
  }
  {
    // Distance to the executing layer: while layer 2 runs, layer 1 (just executed) is needed last.
    auto p = make_cache_policy("distance", 3, 8, 4);
    p->on_insert(1 * 8 + 0);
    p->on_insert(3 * 8 + 0);
    p->on_insert(2 * 8 + 5);  // the current layer is now 2
    ASSERT_TRUE(p->choose_victim(all, v));
    EXPECT_EQ(v, 1u * 8 + 0);
    ASSERT_TRUE(p->choose_victim([](ExpertKey k) { return k != 8; }, v));
    EXPECT_EQ(v, 3u * 8 + 0);
  }
  EXPECT_THROW(make_cache_policy("fifo", 1, 1, 1), Error);
}

}  // namespace
}  // namespace moe
