// The routing policy end to end: no-op policies leave every fixture's logits bit-identical; a mask
// equals a file pruned to the same experts; streamed runs equal resident ones under every strategy;
// masked experts are never acquired, hinted or preloaded; two sessions with different policies in one
// process equal two processes; per-range policies in one step equal separate steps; the CLI's errors.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <mutex>
#include <set>

#include "base/error.h"
#include "cli_runner.h"
#include "fixture_util.h"
#include "format/gguf.h"
#include "model/weights.h"
#include "runtime/engine.h"
#include "runtime/session.h"

namespace moe {
namespace {

using test::model_path;
using test::read_ids;
using test::ref_path;

// Fixtures whose architecture this build loads (newer families join as they are supported).
std::unique_ptr<Model> load_or_skip(const std::string& name) {
  try {
    return Model::load(model_path(name));
  } catch (const Error& e) {
    return nullptr;
  }
}

std::vector<float> eval_all(const Model& m, ExpertStore& store, const std::vector<int32_t>& ids, ForwardOptions fo,
                            int64_t n_batch = 512) {
  ThreadPool pool(2);
  Session s(m, store, static_cast<int64_t>(ids.size()), std::move(fo));
  return s.eval(ids, pool, true, n_batch);
}

int first_moe_layer(const ModelSpec& s) {
  for (int il = 0; il < s.n_layer; ++il)
    if (s.layers[il].is_moe) return il;
  return -1;
}

class RoutingLabFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(RoutingLabFixture, DefaultAndNoOpPoliciesAreBitIdentical) {
  auto model = load_or_skip(GetParam());
  if (!model) GTEST_SKIP() << GetParam() << ": architecture not supported by this build";
  const int il = first_moe_layer(model->spec());
  if (il < 0) GTEST_SKIP() << "dense model";
  const auto ids = read_ids(ref_path(GetParam(), "seq.tok"));
  ResidentExpertStore store(*model);
  const auto want = eval_all(*model, store, ids, {});
  // The model's k spelled out: still the identity plan.
  ForwardOptions same_k;
  same_k.routing.experts = model->spec().layers[il].moe.n_expert_used;
  EXPECT_EQ(eval_all(*model, store, ids, same_k), want);
  // Policies that change nothing but run every policy step (scores, keys, selection, weights, drops,
  // steering, empty-slot compaction) must change no bit either, batched or token by token.
  ForwardOptions noop;
  noop.routing.min_weight = 1e-30;
  noop.routing.steer = {{il, 0, 1.0, false}};
  EXPECT_EQ(eval_all(*model, store, ids, noop), want);
  const std::vector<int32_t> head(ids.begin(), ids.begin() + 10);
  EXPECT_EQ(eval_all(*model, store, head, noop, 1), eval_all(*model, store, head, {}, 1));
}

// Writes `src` with experts `drop` (the same in every MoE layer) removed: their slices of the stacked
// expert tensors, their router rows and selection-bias entries (found through the arch's role table),
// per-expert biases and router-logit biases, and expert_count lowered.
void write_pruned(const Model& m, const std::set<int>& drop, const std::string& out) {
  const gguf::File& f = m.file();
  const ModelSpec& s = m.spec();
  gguf::Writer w;
  for (const auto& [key, v] : f.metadata()) w.set(key, v);
  const int E = s.layers[first_moe_layer(s)].moe.n_expert;
  w.set(s.arch + ".expert_count", gguf::Value::make_u32(static_cast<uint32_t>(E - static_cast<int>(drop.size()))));
  std::set<std::string> sliced;
  for (const TensorRoleDesc& r : m.arch().roles) {
    if (!r.per_layer) continue;
    const bool per_expert = r.placement == Placement::Expert || r.placement == Placement::ExpertBias ||
                            r.role == Role::Router || r.role == Role::RouterBias || r.role == Role::RouterLogitBias;
    if (!per_expert) continue;
    for (int il = 0; il < s.n_layer; ++il) {
      if (!s.layers[il].is_moe) continue;
      char name[128];
      std::snprintf(name, sizeof(name), r.gguf_name, il);
      sliced.insert(name);
    }
  }
  for (const gguf::TensorInfo& t : f.tensors()) {
    std::vector<uint8_t> bytes(t.nbytes);
    f.read_tensor_bytes(t, 0, t.nbytes, bytes.data());
    std::vector<int64_t> dims = t.dims;
    if (sliced.count(t.name)) {
      // The experts are the outermost dimension of every such tensor.
      ASSERT_EQ(dims.back(), E) << t.name;
      const uint64_t per = t.nbytes / static_cast<uint64_t>(E);
      std::vector<uint8_t> kept;
      for (int e = 0; e < E; ++e)
        if (!drop.count(e)) kept.insert(kept.end(), bytes.begin() + e * per, bytes.begin() + (e + 1) * per);
      bytes = std::move(kept);
      dims.back() = E - static_cast<int64_t>(drop.size());
    }
    w.add_tensor(t.name, t.type, dims, std::move(bytes));
  }
  w.write(out);
}

TEST_P(RoutingLabFixture, MaskEqualsAFilePrunedToTheSameExperts) {
  auto model = load_or_skip(GetParam());
  if (!model) GTEST_SKIP() << GetParam() << ": architecture not supported by this build";
  const ModelSpec& s = model->spec();
  const int il0 = first_moe_layer(s);
  if (il0 < 0) GTEST_SKIP() << "dense model";
  const MoeSpec& ms = s.layers[il0].moe;
  if (ms.n_group > 1) GTEST_SKIP() << "group-limited: a pruned file must drop the same count from every group";
  // Drop two experts, keeping at least k.
  if (ms.n_expert - 2 < ms.n_expert_used) GTEST_SKIP() << "too few experts to prune";
  const std::set<int> drop = {1, ms.n_expert - 2};
  const std::string pruned = (test::cli_temp_dir() / (GetParam() + ".pruned.gguf")).string();
  write_pruned(*model, drop, pruned);
  auto small = Model::load(pruned);
  const auto ids = read_ids(ref_path(GetParam(), "seq.tok"));
  ResidentExpertStore small_store(*small), store(*model);
  ForwardOptions masked;
  for (int il = 0; il < s.n_layer; ++il)
    if (s.layers[il].is_moe)
      for (int e : drop) masked.routing.mask_experts.push_back({il, e});
  const auto want = eval_all(*small, small_store, ids, {});
  const auto got = eval_all(*model, store, ids, masked);
  EXPECT_EQ(got, want) << "NMSE " << test::nmse(got, want);
  std::filesystem::remove(pruned);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, RoutingLabFixture, ::testing::ValuesIn(test::fixture_model_names()),
                         test::FixtureParamName());

// The strategies the offload and no-read tests run, for a model whose MoE layers have E experts, top-k.
std::vector<std::pair<std::string, RoutingPolicy>> strategies(const ModelSpec& s) {
  const int il = first_moe_layer(s);
  const int E = s.layers[il].moe.n_expert, k = s.layers[il].moe.n_expert_used;
  std::vector<std::pair<std::string, RoutingPolicy>> out;
  RoutingPolicy p;
  p.experts = std::min(E, k + 1);
  out.push_back({"top-k+1", p});
  p = {};
  p.experts = 1;
  out.push_back({"top-1", p});
  p = {};
  p.experts_per_layer = {{il, std::min(E, k + 2)}};
  out.push_back({"per-layer", p});
  p = {};
  p.top_p = 0.5;
  p.top_p_max_k = std::min(E, k + 2);
  out.push_back({"top-p", p});
  p = {};
  p.ratio_beta = 0.6;
  out.push_back({"ratio", p});
  p = {};
  p.min_weight = 0.3;
  out.push_back({"min-weight", p});
  p = {};
  p.random_drop = 0.5;
  p.random_seed = 3;
  out.push_back({"random-drop", p});
  p = {};
  for (int l = 0; l < s.n_layer; ++l)
    if (s.layers[l].is_moe) p.mask_experts.push_back({l, 0}), p.mask_experts.push_back({l, E - 1});
  out.push_back({"mask", p});
  p = {};
  p.steer = {{il, 1, 2.5, true}};
  out.push_back({"steer", p});
  p = {};
  p.sinkhorn = true;
  out.push_back({"sinkhorn", p});
  p = {};
  p.only_rank = 2;
  out.push_back({"only-rank", p});
  return out;
}

class RoutingLabOffload : public ::testing::TestWithParam<std::string> {};

TEST_P(RoutingLabOffload, StreamedEqualsResidentUnderEveryStrategy) {
  const std::string name = GetParam();
  const auto ids = read_ids(ref_path(name, "seq.tok"));
  const std::vector<int32_t> head(ids.begin(), ids.begin() + 12);
  auto resident = Engine::open(model_path(name), EngineOptions{});
  const ModelSpec& s = resident->model().spec();
  const uint64_t slot = BudgetedExpertStore::slot_bytes_for(resident->model().expert_layout());
  for (const auto& [label, policy] : strategies(s)) {
    ForwardOptions fo;
    fo.routing = policy;
    fo.lookahead_margin = 2;  // the gate predictor's hints follow the policy too
    const auto want = eval_all(resident->model(), resident->store(), ids, fo);
    const auto want_steps = eval_all(resident->model(), resident->store(), head, fo, 1);
    int slots = 0;
    const RoutingPlan plan(policy, routing_shape(s));
    for (int il = 0; il < s.n_layer; ++il)
      if (s.layers[il].is_moe)  // the pool always holds at least the model's k
        slots = std::max({slots, plan.slots(il, s.layers[il].moe.n_expert_used), s.layers[il].moe.n_expert_used});
    for (int extra : {0, 3}) {
      EngineOptions o;
      o.force_offload = true;
      o.n_ctx = 128;
      o.n_batch = 128;
      o.experts_per_token = policy_max_experts(policy);
      auto probe = Engine::open(model_path(name), o);
      o.mem_bytes = probe->plan().weights_resident + probe->plan().kv_bytes + probe->plan().buffer_bytes +
                    static_cast<uint64_t>(slots + extra) * slot;
      auto e = Engine::open(model_path(name), o);
      ASSERT_NE(e->offload_store(), nullptr);
      EXPECT_EQ(eval_all(e->model(), e->store(), ids, fo), want) << name << " " << label << " slots " << slots + extra;
      EXPECT_EQ(eval_all(e->model(), e->store(), head, fo, 1), want_steps) << name << " " << label;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, RoutingLabOffload,
                         ::testing::Values("tiny-qwen3moe", "tiny-mixtral-Q4_K_M", "tiny-deepseekmoe", "tiny-qwen2moe"),
                         test::FixtureParamName());

// Records every expert the forward pass acquires or hints.
class RecordingStore final : public ExpertStore {
 public:
  explicit RecordingStore(const Model& m) : inner_(m) {}
  ExpertWeights acquire(int layer, int expert, bool low_bit_ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    acquired.insert({layer, expert});
    return inner_.acquire(layer, expert, low_bit_ok);
  }
  void release(int layer, int expert, ExpertTier tier) override { inner_.release(layer, expert, tier); }
  void prefetch(int layer, const int32_t* experts, int n, bool speculative, const uint8_t*) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (int i = 0; i < n; ++i) hinted.insert({layer, experts[i]});
  }
  bool is_ready(int, int, bool) override { return true; }
  std::set<std::pair<int, int>> acquired, hinted;

 private:
  std::mutex mu_;
  ResidentExpertStore inner_;
};

TEST(RoutingLabNoReads, MaskedExpertsAreNeverAcquiredHintedOrPreloaded) {
  for (const std::string name : {"tiny-qwen3moe", "tiny-qwen2moe", "tiny-deepseekmoe"}) {
    auto model = Model::load(model_path(name));
    const ModelSpec& s = model->spec();
    const auto ids = read_ids(ref_path(name, "seq.tok"));
    // Mask each layer's most used experts (those the unmasked run acquires first), so the mask bites.
    RoutingPolicy policy;
    for (int il = 0; il < s.n_layer; ++il)
      if (s.layers[il].is_moe)
        for (int e = 0; e < s.layers[il].moe.n_expert; e += 2) policy.mask_experts.push_back({il, e});
    for (int variant = 0; variant < 3; ++variant) {
      RoutingPolicy p = policy;
      if (variant == 1) p.experts = 3;
      if (variant == 2) p.top_p = 0.9;
      RecordingStore store(*model);
      ForwardOptions fo;
      fo.routing = p;
      fo.lookahead_margin = 4;  // hints reach well past the selection
      eval_all(*model, store, ids, fo);
      eval_all(*model, store, std::vector<int32_t>(ids.begin(), ids.begin() + 6), fo, 1);
      ASSERT_FALSE(store.acquired.empty());
      ASSERT_FALSE(store.hinted.empty());
      for (const LayerExpert& m : p.mask_experts) {
        EXPECT_FALSE(store.acquired.count({m.layer, m.expert})) << name << " acquired " << m.layer << ":" << m.expert;
        EXPECT_FALSE(store.hinted.count({m.layer, m.expert})) << name << " hinted " << m.layer << ":" << m.expert;
      }
    }
    // The preload fills the pool with everything but the masked experts.
    EngineOptions o;
    o.force_offload = true;
    o.preload = true;
    o.n_ctx = 128;
    o.n_batch = 128;
    for (const LayerExpert& m : policy.mask_experts) o.preload_exclude.emplace_back(m.layer, m.expert);
    auto e = Engine::open(model_path(name), o);
    ASSERT_NE(e->offload_store(), nullptr);
    e->offload_store()->wait_preloaded();
    for (int il = 0; il < s.n_layer; ++il) {
      if (!s.layers[il].is_moe) continue;
      for (int x = 0; x < s.layers[il].moe.n_expert; ++x)
        EXPECT_EQ(e->offload_store()->is_ready(il, x, false), x % 2 == 1) << name << " " << il << ":" << x;
    }
  }
}

TEST(RoutingLabSessions, TwoPoliciesInOneProcessEqualTwoProcesses) {
  const std::string name = "tiny-qwen3moe";
  const std::string tokens = ref_path(name, "seq.tok");
  const auto ids = read_ids(tokens);
  const std::string a_out = (test::cli_temp_dir() / "two.a.f32").string();
  const std::string b_out = (test::cli_temp_dir() / "two.b.f32").string();
  auto r = test::run_cli({"logits", "-m", model_path(name), "--tokens", tokens, "-o", a_out, "--batch-invariant",
                          "--experts", "1", "-t", "2"});
  ASSERT_EQ(r.status, 0) << r.err;
  r = test::run_cli({"logits", "-m", model_path(name), "--tokens", tokens, "-o", b_out, "--batch-invariant",
                     "--route-top-p", "0.6", "--mask-experts", "0:3,1:5", "-t", "2"});
  ASSERT_EQ(r.status, 0) << r.err;
  // One engine, two sessions, evaluated in alternating chunks.
  auto engine = Engine::open(model_path(name), EngineOptions{});
  ForwardOptions fa, fb;
  fa.batch_invariant = fb.batch_invariant = true;
  fa.routing.experts = 1;
  fb.routing.top_p = 0.6;
  fb.routing.mask_experts = {{0, 3}, {1, 5}};
  const int64_t n = static_cast<int64_t>(ids.size());
  Session sa(engine->model(), engine->store(), n, fa), sb(engine->model(), engine->store(), n, fb);
  ThreadPool pool(2);
  std::vector<float> la, lb;
  for (int64_t b = 0; b < n; b += 13) {
    const std::vector<int32_t> chunk(ids.begin() + b, ids.begin() + std::min(n, b + 13));
    const auto& xa = sa.eval(chunk, pool, true);
    la.insert(la.end(), xa.begin(), xa.end());
    const auto& xb = sb.eval(chunk, pool, true);
    lb.insert(lb.end(), xb.begin(), xb.end());
  }
  EXPECT_EQ(la, test::read_f32(a_out));
  EXPECT_EQ(lb, test::read_f32(b_out));
  EXPECT_NE(la, lb);
}

TEST(RoutingLabRows, PerRangePoliciesInOneStepEqualSeparateSteps) {
  auto model = Model::load(model_path("tiny-olmoe"));
  const auto ids = read_ids(ref_path("tiny-olmoe", "seq.tok"));
  ResidentExpertStore store(*model);
  RoutingPolicy a, b;
  a.experts = 3;
  b.top_p = 0.5;
  b.steer = {{1, 2, 2.0, true}};
  ForwardOptions fo;
  fo.batch_invariant = true;
  // Reference: one session, the first 40 tokens under a, then the rest under b.
  ThreadPool pool(2);
  const int64_t n = static_cast<int64_t>(ids.size()), m = 40;
  fo.routing = a;
  Session ref(*model, store, n, fo);
  std::vector<float> want = ref.eval(std::vector<int32_t>(ids.begin(), ids.begin() + m), pool, true);
  ref.set_routing_policy(b);
  const auto& rest = ref.eval(std::vector<int32_t>(ids.begin() + m, ids.end()), pool, true);
  want.insert(want.end(), rest.begin(), rest.end());
  // One step, two ranges.
  fo.routing = {};
  Session one(*model, store, n, fo);
  const RoutingShape shape = routing_shape(model->spec());
  one.forward().set_row_policies({{0, m, std::make_shared<const RoutingPlan>(a, shape)},
                                  {m, n, std::make_shared<const RoutingPlan>(b, shape)}});
  EXPECT_EQ(one.eval(ids, pool, true), want);
  // Ranges that do not tile the step are an error.
  one.reset();
  one.forward().set_row_policies({{0, m, std::make_shared<const RoutingPlan>(a, shape)}});
  EXPECT_THROW(one.eval(ids, pool, true), Error);
}

TEST(RoutingLabEngine, KAboveTheModelsIsPlannedForTheExpertPool) {
  const std::string path = model_path("tiny-qwen3moe");  // k = 2
  EngineOptions o;
  o.force_offload = true;
  o.n_ctx = 64;
  o.n_batch = 64;
  o.experts_per_token = 4;
  auto probe = Engine::open(path, o);
  const uint64_t slot = probe->offload_store()->slot_bytes();
  const uint64_t fixed = probe->plan().weights_resident + probe->plan().kv_bytes + probe->plan().buffer_bytes;
  o.mem_bytes = fixed + 3 * slot;  // room for the model's k, not for 4
  try {
    Engine::open(path, o);
    ADD_FAILURE() << "a pool of 3 experts was accepted for 4 per token";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--mem"), std::string::npos) << e.what();
  }
  EngineOptions model_k = o;
  model_k.experts_per_token = 0;
  auto k_probe = Engine::open(path, model_k);
  EXPECT_LT(k_probe->plan().buffer_bytes, probe->plan().buffer_bytes) << "buffers are planned for the larger k";
}

void expect_cli_error(const std::vector<std::string>& extra, const std::string& needle) {
  std::vector<std::string> args = {"logits", "-m", model_path("tiny-qwen3moe"), "--tokens",
                                   ref_path("tiny-qwen3moe", "t1.tok"), "-o",
                                   (test::cli_temp_dir() / "err.f32").string()};
  args.insert(args.end(), extra.begin(), extra.end());
  const auto r = test::run_cli(args);
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one line: " << r.err;
}

TEST(RoutingLabCli, ClearErrors) {
  expect_cli_error({"--experts", "9"}, "--experts");
  expect_cli_error({"--experts", "0"}, "--experts");
  expect_cli_error({"--experts-per-layer", "5:1"}, "layer 5 is out of range");
  expect_cli_error({"--experts-per-layer", "1:0"}, "--experts-per-layer");
  expect_cli_error({"--mask-experts", "0:8"}, "expert 8 of layer 0 is out of range");
  expect_cli_error({"--mask-experts", "0-"}, "--mask-experts");
  expect_cli_error({"--route-top-p", "1.5"}, "--route-top-p");
  expect_cli_error({"--route-top-p", "0.5", "--experts", "3"}, "--experts");
  expect_cli_error({"--mask-experts", "0:1", "--force-experts", "0:1"}, "0:1");
  expect_cli_error({"--skip-below", "0.1", "--route-min-weight", "0.2"}, "--skip-below");
  expect_cli_error({"--steer-force"}, "--steer");
  expect_cli_error({"--routing-policy", "{\"experts\": 2, \"bogus\": 1}"}, "'bogus'");
  expect_cli_error({"--routing-policy", "{\"experts\": 2}", "--experts", "3"}, "--routing-policy");
  expect_cli_error({"--mask-experts-file", "/nonexistent/masks.txt"}, "/nonexistent/masks.txt");
}

TEST(RoutingLabCli, StatsReportExpertsPerTokenAndSavings) {
  const std::string json = (test::cli_temp_dir() / "stats.json").string();
  const std::string masks = (test::cli_temp_dir() / "masks.txt").string();
  test::write_text(masks, "# layer:expert\n0:0 0:1\n1:2\n");
  const auto r = test::run_cli({"logits", "-m", model_path("tiny-qwen3moe"), "--tokens",
                                ref_path("tiny-qwen3moe", "seq.tok"), "-o", (test::cli_temp_dir() / "s.f32").string(),
                                "--route-ratio", "0.5", "--mask-experts-file", masks, "--stats", "--stats-json", json});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("experts per token"), std::string::npos) << r.err;
  const auto j = nlohmann::json::parse(test::slurp(json));
  const double ept = j["routing"]["experts_per_token"].get<double>();
  EXPECT_GT(ept, 1.0);
  EXPECT_LT(ept, 2.0);
  EXPECT_EQ(j["routing"]["experts_per_token_per_layer"].size(), 2u);
  EXPECT_GT(j["routing"]["expert_evals_saved"].get<int64_t>(), 0);
  EXPECT_EQ(j["routing_policy"]["ratio_threshold"].get<double>(), 0.5);
  EXPECT_EQ(j["routing_policy"]["mask_experts"].size(), 3u);
}

}  // namespace
}  // namespace moe

namespace moe {
namespace {

TEST(RoutingLabCli, BenchCountsTheExpertsThePolicyRoutes) {
  auto bench = [](const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"bench", "-m", test::model_path("tiny-qwen3moe"), "-p", "8", "-n", "4", "-r", "1",
                                     "--bw-gib", "0", "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    const auto r = test::run_cli(args);
    EXPECT_EQ(r.status, 0) << r.err;
    return nlohmann::json::parse(r.out);
  };
  const auto def = bench({}), four = bench({"--experts", "4"});
  EXPECT_EQ(def["experts_per_token"].get<double>(), 2.0);
  EXPECT_EQ(four["experts_per_token"].get<double>(), 4.0);
  EXPECT_EQ(four["routing_policy"]["experts"].get<int>(), 4);
  // Two more experts per token in each of the 2 MoE layers: 4 more experts' bytes per token.
  auto model = Model::load(test::model_path("tiny-qwen3moe"));
  const uint64_t per_expert = model->byte_report().bytes_per_expert_max;
  EXPECT_EQ(four["weight_bytes_per_token"].get<uint64_t>(), def["weight_bytes_per_token"].get<uint64_t>() + 4 * per_expert);
}

}  // namespace
}  // namespace moe
