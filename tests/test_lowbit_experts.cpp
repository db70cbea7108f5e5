// Precision tiers for offloaded experts (techniques.md section 5): the low-bit side file written by
// `moe quantize-experts`, the engine's --lowbit / --lowbit-below / --skip-below, and `moe kl-logits`.
//  - a threshold of 0 never changes a bit, resident or streamed, on every fixture model;
//  - with every expert below the threshold, a streamed run equals a resident run of a model whose
//    expert tensors are the side file's (built here with gguf::Writer);
//  - a side file for another model, bad types, bad thresholds: clear errors;
//  - skipping everything equals a model whose experts output zero, and loads nothing;
//  - the pool holds both sizes within its budget and serves the exact bytes of the copy it says.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "analysis/logit_compare.h"
#include "base/error.h"
#include "cli_runner.h"
#include "fixture_util.h"
#include "format/gguf.h"
#include "model/lowbit_experts.h"
#include "model/synth.h"
#include "runtime/engine.h"
#include "runtime/session.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using test::model_path;
using test::run_cli;

std::string temp_file(const std::string& name) { return (test::cli_temp_dir() / name).string(); }

// The default low-bit type: q2_K, or q4_0 where an expert row is not a multiple of q2_K's 256-value
// blocks (the deepseek2 / gpt-oss / glm4moe fixtures have experts 64 or 128 wide).
std::string default_low_bit_type(const std::string& model) {
  auto m = Model::load(model_path(model), gguf::DataAccess::Mmap, true);
  for (const auto& layer : m->expert_layout().layers)
    for (const auto& t : layer)
      if (t.shape.cols % 256 != 0) return "q4_0";
  return "q2_K";
}

// One side file per (model, type), made once per process with the library call.
const std::string& side_file(const std::string& model, std::string type = "") {
  if (type.empty()) type = default_low_bit_type(model);
  static std::map<std::string, std::string> made;
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  const std::string key = model + "." + type;
  auto it = made.find(key);
  if (it != made.end()) return it->second;
  const std::string path = temp_file(key + ".lowbit.gguf");
  auto m = Model::load(model_path(model), gguf::DataAccess::Mmap, true);
  ThreadPool pool(2);
  write_low_bit_experts(*m, *dtype_from_name(type), path, pool);
  return made.emplace(key, path).first->second;
}

// A copy of the model whose tensors are replaced by the side file's (same names), or whose expert
// down projections are zero (side_path empty).
std::string merged_model(const std::string& model, const std::string& side_path, const std::string& out_name) {
  const std::string out = temp_file(out_name);
  if (fs::exists(out)) return out;
  auto src = gguf::File::open(model_path(model), gguf::DataAccess::Pread);
  std::unique_ptr<gguf::File> side;
  if (!side_path.empty()) side = gguf::File::open(side_path, gguf::DataAccess::Pread);
  gguf::Writer w;
  for (const auto& [k, v] : src->metadata()) w.set(k, v);
  for (const auto& t : src->tensors()) {
    const gguf::TensorInfo* s = side ? side->find_tensor(t.name) : nullptr;
    const gguf::File* from = s ? side.get() : src.get();
    const gguf::TensorInfo info = s ? *s : t;
    const bool zero = !side && t.name.find("ffn_down_exps") != std::string::npos;
    w.add_tensor_stream(info.name, info.type, info.dims, [from, info, zero](uint8_t* dst, uint64_t n) {
      if (zero) std::memset(dst, 0, n);
      else from->read_tensor_bytes(info, 0, n, dst);
    });
  }
  w.write(out);
  return out;
}

std::vector<int32_t> fixture_ids(const std::string& model) {
  return test::read_ids(test::ref_path(test::base_model_name(model), "seq.tok"));
}

std::vector<float> logits_with(Engine& e, const std::vector<int32_t>& ids, int64_t n_batch, ForwardOptions fo = {}) {
  ThreadPool pool(2);
  fo.expert_use = &e.expert_use();
  Session s(e.model(), e.store(), static_cast<int64_t>(ids.size()), fo);
  return s.eval(ids, pool, true, n_batch);
}

ForwardOptions tiers(float low_bit_below, float skip_below = 0, int margin = -1) {
  ForwardOptions fo;
  fo.precision.low_bit_below = low_bit_below;
  fo.routing.min_weight = skip_below;  // --skip-below is the routing policy's minimum weight
  fo.lookahead_margin = margin;
  return fo;
}

EngineOptions resident_opts(const std::string& low_bit = "") {
  EngineOptions o;
  o.n_ctx = 128;
  o.n_batch = 128;
  o.low_bit_path = low_bit;
  return o;
}

// Streams experts through a pool of `slots` full-size slots (0 = room for everything).
std::unique_ptr<Engine> streamed(const std::string& path, const std::string& low_bit, int slots,
                                 const std::string& policy = "distance") {
  EngineOptions o = resident_opts(low_bit);
  o.force_offload = true;
  o.cache_policy = policy;
  if (slots > 0) {
    auto probe = Engine::open(path, o);
    o.mem_bytes = probe->plan().weights_resident + probe->plan().kv_bytes + probe->plan().buffer_bytes +
                  static_cast<uint64_t>(slots) * probe->offload_store()->slot_bytes();
  }
  auto e = Engine::open(path, o);
  EXPECT_NE(e->offload_store(), nullptr);
  return e;
}

int max_k(const Model& m) {
  int k = 0;
  for (const auto& L : m.spec().layers) k = std::max(k, L.moe.n_expert_used);
  return k;
}

// --- (a) threshold 0: bit-identical on every fixture ---------------------------------------------

class LowBitFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(LowBitFixture, ThresholdZeroIsBitIdenticalResidentAndStreamed) {
  const std::string name = GetParam();
  const auto ids = fixture_ids(name);
  auto plain = Engine::open(model_path(name), resident_opts());
  const auto want = logits_with(*plain, ids, 512);
  const auto want_steps = logits_with(*plain, std::vector<int32_t>(ids.begin(), ids.begin() + 10), 1);

  auto res = Engine::open(model_path(name), resident_opts(side_file(name)));
  ASSERT_TRUE(res->has_low_bit());
  EXPECT_EQ(logits_with(*res, ids, 512, tiers(0)), want);
  EXPECT_EQ(logits_with(*res, std::vector<int32_t>(ids.begin(), ids.begin() + 10), 1, tiers(0)), want_steps);
  EXPECT_EQ(res->expert_use().low_bit_evals.load(), 0u);
  EXPECT_GT(res->expert_use().full_evals.load(), 0u);

  auto st = streamed(model_path(name), side_file(name), max_k(plain->model()) + 2);
  EXPECT_EQ(logits_with(*st, ids, 512, tiers(0, 0, 2)), want);
  EXPECT_EQ(logits_with(*st, std::vector<int32_t>(ids.begin(), ids.begin() + 10), 1, tiers(0, 0, 2)), want_steps);
  EXPECT_EQ(st->offload_store()->stats().low_bit_loads, 0u);

  // The copies are really there: everything low-bit changes the logits.
  EXPECT_NE(logits_with(*res, ids, 512, tiers(1e9f)), want);
}

INSTANTIATE_TEST_SUITE_P(AllFixtures, LowBitFixture, ::testing::ValuesIn(test::fixture_model_names()),
                         moe::test::FixtureParamName());

// --- (b) all low-bit: streamed equals the merged model --------------------------------------------

class LowBitMerged : public ::testing::TestWithParam<std::string> {};

TEST_P(LowBitMerged, AllLowBitStreamedEqualsResidentMergedModel) {
  const std::string name = GetParam();
  const auto ids = fixture_ids(name);
  const std::vector<int32_t> steps(ids.begin(), ids.begin() + 12);
  const std::string merged = merged_model(name, side_file(name), name + ".merged.gguf");
  auto ref = Engine::open(merged, resident_opts());
  const auto want = logits_with(*ref, ids, 512);
  const auto want_steps = logits_with(*ref, steps, 1);

  // Resident with the side file mapped: every low-weight case uses the low-bit copy.
  auto res = Engine::open(model_path(name), resident_opts(side_file(name)));
  EXPECT_EQ(logits_with(*res, ids, 512, tiers(1e9f)), want);
  EXPECT_EQ(res->expert_use().full_evals.load(), 0u);

  const int k = max_k(ref->model());
  for (const std::string policy : {"distance", "arc"}) {
    for (int slots : {k, k + 3}) {
      auto st = streamed(model_path(name), side_file(name), slots, policy);
      ASSERT_TRUE(st->has_low_bit());
      EXPECT_EQ(logits_with(*st, ids, 512, tiers(1e9f, 0, 2)), want) << policy << " slots " << slots;
      EXPECT_EQ(logits_with(*st, steps, 1, tiers(1e9f, 0, 2)), want_steps) << policy << " slots " << slots;
      const ExpertStoreStats s = st->offload_store()->stats();
      EXPECT_GT(s.low_bit_loads, 0u);
      EXPECT_EQ(s.bytes_read, s.low_bit_bytes_read) << "a full-precision copy was read";
      EXPECT_LE(st->offload_store()->pool_bytes_held(), st->offload_store()->pool_bytes());
      EXPECT_EQ(st->expert_use().full_evals.load(), 0u);
      EXPECT_GT(st->expert_use().low_bit_evals.load(), 0u);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LowBitMerged,
                         ::testing::Values("tiny-qwen3moe", "tiny-mixtral-Q4_K_M", "tiny-deepseekmoe",
                                           "tiny-qwen2moe", "tiny-deepseek2-v3", "tiny-gptoss"),
                         moe::test::FixtureParamName());

// Between the extremes: an expert is full precision when any of its tokens weighs W or more.
TEST(LowBitTiers, ThresholdSplitsByTheHeaviestTokenOfEachExpert) {
  const std::string name = "tiny-qwen3moe";  // top-2, renormalized: the second weight is <= 0.5
  const auto ids = fixture_ids(name);
  auto res = Engine::open(model_path(name), resident_opts(side_file(name)));
  logits_with(*res, ids, 1, tiers(0.5f));
  const uint64_t full = res->expert_use().full_evals, low = res->expert_use().low_bit_evals;
  const uint64_t routed = ids.size() * 2 * 2;  // tokens x k x MoE layers
  EXPECT_EQ(full + low, routed);
  // Token by token, exactly the first choice (weight >= 0.5) is full precision, unless tied.
  EXPECT_GE(full, routed / 2);
  EXPECT_LT(full, routed);
  // One batch: an expert is low-bit only if none of the batch's tokens weighs 0.5 on it.
  res->reset_stats();
  logits_with(*res, ids, 512, tiers(0.5f));
  EXPECT_LT(res->expert_use().low_bit_evals.load(), low);
}

// --- the pool with two sizes ------------------------------------------------------------------------

TEST(LowBitPool, MixedTiersStayWithinBudgetAndServeExactBytes) {
  const std::string name = "tiny-qwen3moe";
  auto resident = Model::load(model_path(name));
  auto deferred = Model::load(model_path(name), gguf::DataAccess::Pread, true);
  LowBitExperts mapped = open_low_bit_experts(side_file(name), *resident, gguf::DataAccess::Mmap);
  LowBitExperts on_disk = open_low_bit_experts(side_file(name), *deferred, gguf::DataAccess::Pread);
  ResidentExpertStore truth(resident->expert_layout(), mapped.layout);
  BudgetedExpertStore::Options so;
  so.pool_bytes = 5 * BudgetedExpertStore::slot_bytes_for(deferred->expert_layout());
  so.policy = "lru";
  so.low_bit = on_disk.layout;
  BudgetedExpertStore store(deferred->expert_layout(), so);
  ASSERT_TRUE(store.has_low_bit());
  ASSERT_LT(store.low_bit_slot_bytes(), store.slot_bytes());
  const int L = resident->spec().n_layer, E = resident->spec().layers[0].moe.n_expert;
  std::atomic<int> bad{0}, low_served{0}, over_budget{0};
  std::mutex truth_mu;
  auto worker = [&](int seed) {
    std::mt19937 rng(seed);
    for (int it = 0; it < 200; ++it) {
      const int l = static_cast<int>(rng() % L), e = static_cast<int>(rng() % E);
      if (rng() % 3 == 0) {
        int32_t hint[2] = {static_cast<int32_t>(rng() % E), static_cast<int32_t>(rng() % E)};
        uint8_t low[2] = {static_cast<uint8_t>(rng() % 2), static_cast<uint8_t>(rng() % 2)};
        store.prefetch(static_cast<int>(rng() % L), hint, 2, true, low);
      }
      const bool low_ok = rng() % 2 == 0;
      ExpertWeights got = store.acquire(l, e, low_ok);
      if (!low_ok && got.tier != ExpertTier::Full) ++bad;
      low_served += got.tier == ExpertTier::LowBit;
      ExpertWeights want;
      {
        std::lock_guard<std::mutex> lock(truth_mu);
        want = truth.acquire(l, e, got.tier == ExpertTier::LowBit);
      }
      std::this_thread::yield();
      for (auto [g, w] : {std::pair{got.gate, want.gate}, {got.up, want.up}, {got.down, want.down}})
        if (g.type != w.type || std::memcmp(g.data, w.data, w.row_bytes * static_cast<size_t>(w.rows)) != 0) ++bad;
      if (store.pool_bytes_held() > store.pool_bytes()) ++over_budget;
      store.release(l, e, got.tier);
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) threads.emplace_back(worker, 300 + t);
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(over_budget.load(), 0);
  EXPECT_GT(low_served.load(), 0);
  const ExpertStoreStats s = store.stats();
  EXPECT_GT(s.low_bit_loads, 0u);
  EXPECT_GT(s.loads, s.low_bit_loads);
  EXPECT_THROW(store.release(0, 0, ExpertTier::LowBit), Error);  // nothing pinned any more
}

// A low-bit acquire takes the full copy when it is already in the pool.
TEST(LowBitPool, ResidentFullCopyWinsOverLoadingTheLowBitOne) {
  const std::string name = "tiny-qwen3moe";
  auto deferred = Model::load(model_path(name), gguf::DataAccess::Pread, true);
  LowBitExperts on_disk = open_low_bit_experts(side_file(name), *deferred, gguf::DataAccess::Pread);
  BudgetedExpertStore::Options so;
  so.pool_bytes = 4 * BudgetedExpertStore::slot_bytes_for(deferred->expert_layout());
  so.low_bit = on_disk.layout;
  BudgetedExpertStore store(deferred->expert_layout(), so);
  ExpertWeights w = store.acquire(1, 3, false);
  EXPECT_EQ(w.tier, ExpertTier::Full);
  store.release(1, 3, w.tier);
  w = store.acquire(1, 3, true);
  EXPECT_EQ(w.tier, ExpertTier::Full);
  store.release(1, 3, w.tier);
  w = store.acquire(1, 4, true);
  EXPECT_EQ(w.tier, ExpertTier::LowBit);
  EXPECT_EQ(w.gate.type, DType::Q2_K);
  store.release(1, 4, w.tier);
  EXPECT_EQ(store.stats().low_bit_loads, 1u);
  EXPECT_EQ(store.stats().loads, 2u);
}

// --- (f) skipping -----------------------------------------------------------------------------------

TEST(SkipBelow, AboveEveryWeightEqualsZeroExpertsAndLoadsNothing) {
  const std::string name = "tiny-qwen3moe";
  const auto ids = fixture_ids(name);
  auto zero = Engine::open(merged_model(name, "", name + ".zero-experts.gguf"), resident_opts());
  const auto want = logits_with(*zero, ids, 512);
  auto res = Engine::open(model_path(name), resident_opts());
  EXPECT_EQ(logits_with(*res, ids, 512, tiers(0, 2.0f)), want);
  const uint64_t routed = ids.size() * 2 * 2;
  EXPECT_EQ(res->expert_use().skipped_evals.load(), routed);
  EXPECT_EQ(res->expert_use().full_evals.load(), 0u);

  auto st = streamed(model_path(name), "", 3);
  EXPECT_EQ(logits_with(*st, ids, 512, tiers(0, 2.0f, 0)), want);
  EXPECT_EQ(logits_with(*st, std::vector<int32_t>(ids.begin(), ids.begin() + 8), 1, tiers(0, 2.0f, 0)),
            logits_with(*zero, std::vector<int32_t>(ids.begin(), ids.begin() + 8), 1));
  EXPECT_EQ(st->offload_store()->stats().bytes_read, 0u) << "a skipped expert was read";

  // A threshold between: the second choice (<= 0.5) is skipped for some tokens, never the first.
  res->reset_stats();
  const auto some = logits_with(*res, ids, 1, tiers(0, 0.3f));
  const uint64_t skipped = res->expert_use().skipped_evals;
  EXPECT_GT(skipped, 0u);
  EXPECT_LE(skipped, routed / 2);
  EXPECT_EQ(skipped + res->expert_use().full_evals.load(), routed);
  EXPECT_NE(some, logits_with(*res, ids, 1));
}

// --- (c), (d) the side file --------------------------------------------------------------------------

TEST(LowBitSideFile, QuantizeExpertsWritesOnlyExpertTensorsOfTheType) {
  const std::string out = temp_file("cli.q4k.lowbit.gguf"), out1 = temp_file("cli.q4k.t1.lowbit.gguf");
  const auto r = run_cli({"quantize-experts", "-m", model_path("tiny-qwen3moe"), "--type", "q4_K", "-o", out});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("moe quantize-experts: wrote"), std::string::npos) << r.err;
  auto model = Model::load(model_path("tiny-qwen3moe"));
  auto f = gguf::File::open(out);
  ASSERT_EQ(f->tensors().size(), 3u * static_cast<size_t>(model->spec().n_layer));
  for (const auto& t : f->tensors()) {
    EXPECT_NE(t.name.find("_exps.weight"), std::string::npos) << t.name;
    EXPECT_EQ(t.type, DType::Q4_K) << t.name;
    const gguf::TensorInfo* m = model->file().find_tensor(t.name);
    ASSERT_NE(m, nullptr) << t.name;
    EXPECT_EQ(t.dims, m->dims) << t.name;
  }
  EXPECT_EQ(f->get_string("lowbit.type"), "q4_K");
  EXPECT_EQ(f->get_string("lowbit.base.architecture"), "qwen3moe");
  EXPECT_EQ(f->get_uint("lowbit.base.file_size"), model->file().file_size());
  EXPECT_FALSE(f->has("general.architecture"));  // not a model: model loaders reject it by name
  // Quantized from the model's own data: each row is what the storage quantizer makes of it.
  const gguf::TensorInfo& t0 = f->tensors()[0];
  const WeightView& src = model->layer(0)[Role::ExpGate];
  std::vector<float> row(static_cast<size_t>(src.cols));
  std::vector<uint8_t> q(row_bytes(DType::Q4_K, src.cols));
  dequantize_row(src.type, src.row(5, 3), row.data(), src.cols);
  storage_quantizer(DType::Q4_K)(row.data(), q.data(), src.cols);
  EXPECT_EQ(std::memcmp(f->tensor_data(t0) + (3 * src.rows + 5) * q.size(), q.data(), q.size()), 0);
  // The bytes do not depend on the thread count.
  ASSERT_EQ(run_cli({"quantize-experts", "-m", model_path("tiny-qwen3moe"), "--type", "q4_K", "-o", out1, "-t", "1",
                     "-q"})
                .status,
            0);
  EXPECT_EQ(test::slurp(out), test::slurp(out1));
}

TEST(LowBitSideFile, BadTypesAndRowWidthsAreClearErrors) {
  const std::string out = temp_file("bad.lowbit.gguf");
  auto r = run_cli({"quantize-experts", "-m", model_path("tiny-qwen3moe"), "--type", "q9_X", "-o", out});
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--type q9_X"), std::string::npos) << r.err;
  r = run_cli({"quantize-experts", "-m", model_path("tiny-qwen3moe"), "--type", "q8_K", "-o", out});
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("q8_K"), std::string::npos) << r.err;
  // Rows of 64 and 96 elements: not a multiple of the 256 of Q2_K, fine for Q4_0.
  SynthConfig cfg;
  cfg.spec = make_moe_shape(1, 64, 2, 1, 32, 4, 2, 96, 300);
  const std::string narrow = temp_file("narrow.gguf");
  write_synth_model(narrow, cfg);
  r = run_cli({"quantize-experts", "-m", narrow, "--type", "q2_K", "-o", out});
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("blk.0.ffn_gate_exps.weight"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("256"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
  r = run_cli({"quantize-experts", "-m", narrow, "--type", "q4_0", "-o", out, "-q"});
  EXPECT_EQ(r.status, 0) << r.err;
}

TEST(LowBitSideFile, SideFileOfAnotherModelIsAClearError) {
  const std::string side = side_file("tiny-qwen3moe");
  // Another arch, and the same shapes at another precision (only the fingerprint tells them apart).
  for (const std::string other : {"tiny-olmoe", "tiny-qwen3moe-Q8_0"}) {
    for (bool offload : {false, true}) {
      EngineOptions o = resident_opts(side);
      o.force_offload = offload;
      try {
        Engine::open(model_path(other), o);
        ADD_FAILURE() << "accepted a side file of tiny-qwen3moe for " << other;
      } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find(side), std::string::npos) << msg;
        EXPECT_NE(msg.find("another model"), std::string::npos) << msg;
        EXPECT_NE(msg.find(other), std::string::npos) << msg;
      }
    }
  }
  // A GGUF that is not a side file at all, and a missing one.
  EXPECT_THROW(Engine::open(model_path("tiny-qwen3moe"), resident_opts(model_path("tiny-olmoe"))), Error);
  try {
    Engine::open(model_path("tiny-qwen3moe"), resident_opts(temp_file("missing.lowbit.gguf")));
    ADD_FAILURE() << "a missing side file was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.lowbit.gguf"), std::string::npos) << e.what();
  }
}

// --- flags and statistics through the CLI -------------------------------------------------------------

void expect_error(const test::CliResult& r, const std::string& must_contain) {
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "not one line:\n" << r.err;
  EXPECT_NE(r.err.find(must_contain), std::string::npos) << r.err;
}

TEST(LowBitCli, BadFlagsAreClearErrors) {
  const std::string m = model_path("tiny-qwen3moe"), side = side_file("tiny-qwen3moe");
  const std::string tok = test::ref_path("tiny-qwen3moe", "seq.tok"), out = temp_file("flags.f32");
  auto logits = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"logits", "-m", m, "--tokens", tok, "-o", out};
    args.insert(args.end(), extra.begin(), extra.end());
    return run_cli(args);
  };
  expect_error(logits({"--lowbit", side, "--lowbit-below=-0.1"}), "--lowbit-below -0.1");
  expect_error(logits({"--lowbit", side, "--lowbit-below", "0.2", "--skip-below", "0.3"}), "--skip-below 0.3");
  expect_error(logits({"--skip-below=-1"}), "--skip-below -1");
  expect_error(logits({"--lowbit", side}), "needs --lowbit-below");
  expect_error(logits({"--lowbit-below", "0.3"}), "needs --lowbit");
  expect_error(logits({"--lowbit", temp_file("nope.gguf"), "--lowbit-below", "0.3"}), "nope.gguf");
  EXPECT_FALSE(fs::exists(out));
}

TEST(LowBitCli, StatsCountTiersAndSkips) {
  const std::string m = model_path("tiny-qwen3moe"), side = side_file("tiny-qwen3moe");
  const std::string tok = test::ref_path("tiny-qwen3moe", "seq.tok");
  const std::string json = temp_file("tiers.json"), out = temp_file("tiers.f32");
  auto r = run_cli({"logits", "-m", m, "--tokens", tok, "-o", out, "-b", "1", "--lowbit", side, "--lowbit-below",
                    "0.6", "--skip-below", "0.2", "--offload-all", "--stats", "--stats-json", json});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("low-bit q2_K"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("by tier"), std::string::npos) << r.err;
  const auto j = nlohmann::json::parse(test::slurp(json));
  const uint64_t routed = test::read_ids(tok).size() * 2 * 2;
  EXPECT_EQ(j["expert_evals_full"].get<uint64_t>() + j["expert_evals_low_bit"].get<uint64_t>() +
                j["expert_evals_skipped"].get<uint64_t>(),
            routed);
  EXPECT_GT(j["expert_evals_low_bit"].get<uint64_t>(), 0u);
  EXPECT_GT(j["expert_evals_skipped"].get<uint64_t>(), 0u);
  EXPECT_GT(j["bytes_read_low_bit"].get<uint64_t>(), 0u);
  EXPECT_EQ(j["bytes_read_full"].get<uint64_t>() + j["bytes_read_low_bit"].get<uint64_t>(),
            j["bytes_read"].get<uint64_t>());
  EXPECT_EQ(j["low_bit_type"], "q2_K");
}

// --- (e) KL ---------------------------------------------------------------------------------------------

TEST(KlLogits, ZeroForIdenticalAndHandComputedForATinyPair) {
  // Token 0: p = (1/2, 1/2), q = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3). Token 1: equal.
  const std::vector<float> a = {0.0f, 0.0f, 1.0f, -2.0f};
  const std::vector<float> b = {0.0f, static_cast<float>(std::log(3.0)), 1.0f, -2.0f};
  const double kl0 = 0.5 * std::log(4.0 / 3.0);
  const LogitComparison c = compare_logits(a.data(), b.data(), 2, 2);
  EXPECT_NEAR(c.kl[0], kl0, 1e-7);
  EXPECT_EQ(c.kl[1], 0.0);
  EXPECT_NEAR(c.mean_kl, kl0 / 2, 1e-7);
  EXPECT_NEAR(c.max_kl, kl0, 1e-7);
  EXPECT_EQ(c.max_kl_token, 0);
  EXPECT_NEAR(c.p99_kl, kl0, 1e-7);
  EXPECT_EQ(c.top1_agreement, 0.5);  // token 0: arg-max 0 (first of a tie) vs 1

  const std::string fa = temp_file("kl_a.f32"), fb = temp_file("kl_b.f32");
  test::write_text(fa, std::string(reinterpret_cast<const char*>(a.data()), a.size() * sizeof(float)));
  test::write_text(fb, std::string(reinterpret_cast<const char*>(b.data()), b.size() * sizeof(float)));
  auto r = run_cli({"kl-logits", fa, fb, "--vocab", "2", "--json"});
  ASSERT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["n_tokens"], 2);
  EXPECT_NEAR(j["kl_mean"].get<double>(), kl0 / 2, 1e-7);
  EXPECT_NEAR(j["kl_max"].get<double>(), kl0, 1e-7);
  EXPECT_EQ(j["top1_agreement"].get<double>(), 0.5);
  r = run_cli({"kl-logits", fa, fa, "--vocab", "2", "--json"});
  j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["kl_mean"].get<double>(), 0.0);
  EXPECT_EQ(j["kl_max"].get<double>(), 0.0);
  EXPECT_EQ(j["top1_agreement"].get<double>(), 1.0);
  r = run_cli({"kl-logits", fa, fb, "--vocab", "2"});
  EXPECT_NE(r.out.find("top-1 agreement: 50.00%"), std::string::npos) << r.out;
  // Sizes that do not fit the vocabulary, or differ, are errors naming the file.
  expect_error(run_cli({"kl-logits", fa, fb, "--vocab", "3"}), fa);
  test::write_text(fb, std::string(reinterpret_cast<const char*>(b.data()), 2 * sizeof(float)));
  expect_error(run_cli({"kl-logits", fa, fb, "--vocab", "2"}), fb);
}

}  // namespace
}  // namespace moe
