// The transition-table prefetch predictor (EdgeMoE): exact predictions of a hand-built table, counts
// gathered from the forward pass's routing, an exact GGUF round trip, clear errors for a table of
// another model, bit-identical logits when it drives prefetching of streamed experts (next to the gate
// predictor, on every fixture model), and the `moe route-stats` / `--predictor transition` CLI path.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <functional>

#include "base/error.h"
#include "cli_runner.h"
#include "fixture_util.h"
#include "format/gguf.h"
#include "model/transitions.h"
#include "runtime/engine.h"
#include "runtime/session.h"

namespace moe {
namespace {

std::string temp_path(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / ("moe_test_transitions_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

std::vector<int32_t> predict(const TransitionTable& t, int layer, std::vector<int32_t> ids, std::vector<float> w,
                             int n) {
  std::vector<int32_t> out(static_cast<size_t>(n), -1);
  std::vector<double> scratch;
  const int m = t.predict(layer, ids.data(), w.empty() ? nullptr : w.data(), static_cast<int>(ids.size()), n,
                          out.data(), scratch);
  out.resize(static_cast<size_t>(m));
  return out;
}

using Ids = std::vector<int32_t>;

// Layers: 0 MoE (4 experts), 1 dense, 2 and 3 MoE (3 experts each).
TransitionTable hand_built() {
  TransitionTable t(TransitionShape{"test", {4, 0, 3, 3}, 0});
  const int32_t e0 = 0, e1 = 1, e2 = 2;
  for (int r = 0; r < 3; ++r) t.add_transition(0, &e0, 1, &e2, 1);  // 0 -> 2, three times
  t.add_transition(0, &e0, 1, &e1, 1);                               // 0 -> 1, once
  for (int r = 0; r < 2; ++r) t.add_transition(0, &e1, 1, &e0, 1);  // 1 -> 0, twice
  // Layer 2 usage: expert 0 twice, 1 once, 2 three times (u / U = 1/3, 1/6, 1/2).
  for (int32_t e : {2, 2, 2, 1, 0, 0}) t.add_usage(2, &e, 1);
  // Layer 2 -> 3: expert 0 goes to 0 and to 1 equally, and both are equally used at layer 3.
  t.add_transition(2, &e0, 1, &e1, 1);
  t.add_transition(2, &e0, 1, &e0, 1);
  for (int32_t e : {0, 1}) t.add_usage(3, &e, 1);
  return t;
}

TEST(TransitionTable, HandBuiltTablePredictsExactly) {
  const TransitionTable t = hand_built();
  EXPECT_EQ(t.next_moe_layer(0), 2);
  EXPECT_EQ(t.next_moe_layer(1), -1);
  EXPECT_EQ(t.next_moe_layer(2), 3);
  EXPECT_EQ(t.next_moe_layer(3), -1);
  EXPECT_EQ(t.count(0, 0, 2), 3u);
  EXPECT_EQ(t.count(0, 0, 1), 1u);
  EXPECT_EQ(t.count(0, 1, 0), 2u);
  EXPECT_EQ(t.count(0, 1, 1), 0u);
  EXPECT_EQ(t.usage(2, 2), 3u);

  // With P(j|i) = (c_ij + u_j/U) / (row_i + 1):
  // from 0: (1/3, 7/6, 7/2) / 5 -> 2, 1, 0.
  EXPECT_EQ(predict(t, 0, {0}, {}, 3), (Ids{2, 1, 0}));
  EXPECT_EQ(predict(t, 0, {0}, {}, 1), (Ids{2}));
  EXPECT_EQ(predict(t, 0, {0}, {}, 10), (Ids{2, 1, 0}));  // at most the layer's experts
  // from 1: (7/3, 1/6, 1/2) / 3 -> 0, 2, 1.
  EXPECT_EQ(predict(t, 0, {1}, {}, 3), (Ids{0, 2, 1}));
  // both, weights 1/4 and 3/4: (0.6, 0.1, 0.3) -> 0, 2; unweighted (0.84, 0.29, 0.87) -> 2, 0, 1.
  EXPECT_EQ(predict(t, 0, {0, 1}, {0.25f, 0.75f}, 2), (Ids{0, 2}));
  EXPECT_EQ(predict(t, 0, {0, 1}, {}, 3), (Ids{2, 0, 1}));
  // Expert 3 was never seen at layer 0: it falls back to layer 2's usage.
  EXPECT_EQ(predict(t, 0, {3}, {}, 3), (Ids{2, 0, 1}));
  // Equal scores keep the lower id first; experts with no evidence at all are not predicted.
  EXPECT_EQ(predict(t, 2, {0}, {}, 3), (Ids{0, 1}));
  EXPECT_EQ(predict(t, 2, {0}, {}, 1), (Ids{0}));
  EXPECT_EQ(predict(t, 2, {2}, {}, 3), (Ids{0, 1}));
  // The last MoE layer has nothing to predict.
  EXPECT_TRUE(predict(t, 3, {0}, {}, 3).empty());

  Ids popular(2);
  ASSERT_EQ(t.predict_popular(0, 2, popular.data()), 2);
  EXPECT_EQ(popular, (Ids{2, 0}));

  // Layer 0's usage was never counted (only pairs were): no load statistic.
  EXPECT_TRUE(std::isnan(t.load_cv(0)));
  // Layer 3's usage is (1, 1, 0): standard deviation sqrt(2)/3 over mean 2/3.
  EXPECT_NEAR(t.load_cv(3), std::sqrt(0.5), 1e-12);
}

TEST(TransitionTable, EvaluateScoresAHandMadeCall) {
  TransitionTable t = hand_built();
  // Two tokens: routed 0 -> 2 (the table's top guess) and 1 -> 1 (its last guess), k = 1 everywhere.
  std::vector<Routing> call(4);
  call[0] = Routing{2, 1, {0, 1}, {1.0f, 1.0f}};
  call[2] = Routing{2, 1, {2, 1}, {1.0f, 1.0f}};
  std::vector<TransitionAccuracy> acc;
  t.evaluate(call, acc);
  ASSERT_EQ(acc.size(), 4u);
  EXPECT_EQ(acc[0].tokens, 2u);
  EXPECT_EQ(acc[0].top1_hits, 1u);
  EXPECT_EQ(acc[0].topk_hits, 1u);
  EXPECT_EQ(acc[0].topk_total, 2u);
  EXPECT_EQ(acc[0].popular_top1_hits, 1u);  // layer 2's most used expert is 2
  EXPECT_EQ(acc[2].tokens, 0u);             // layer 3 has no routing in this call

  // Adding the call counts both tokens' usage and pairs.
  t.add(call);
  EXPECT_EQ(t.count(0, 0, 2), 4u);
  EXPECT_EQ(t.count(0, 1, 1), 1u);
  EXPECT_EQ(t.usage(0, 0), 1u);
  EXPECT_EQ(t.usage(2, 1), 2u);
}

TransitionTable table_from_run(const Model& model, ExpertStore& store, const std::vector<int32_t>& ids) {
  ThreadPool pool(2);
  TransitionTable table(transition_shape(model));
  RoutingCallRecorder rec(model.spec(), [&](const std::vector<Routing>& call) { table.add(call); });
  Session s(model, store, static_cast<int64_t>(ids.size()));
  s.forward().set_observer(&rec);
  s.eval(ids, pool, true, 512);
  return table;
}

int moe_layers(const ModelSpec& s) {
  int n = 0;
  for (const auto& L : s.layers) n += L.is_moe;
  return n;
}

TEST(TransitionTable, RecorderCountsEveryTopKPairOfEveryToken) {
  const std::string name = "tiny-qwen3moe";
  const auto ids = test::read_ids(test::ref_path(name, "seq.tok"));
  auto e = Engine::open(test::model_path(name), EngineOptions{});
  const TransitionTable t = table_from_run(e->model(), e->store(), ids);
  const ModelSpec& s = e->model().spec();
  ASSERT_GE(moe_layers(s), 2);
  const uint64_t n = ids.size();
  for (int l = 0; l < s.n_layer; ++l) {
    if (!s.layers[l].is_moe) continue;
    uint64_t used = 0;
    for (int i = 0; i < s.layers[l].moe.n_expert; ++i) used += t.usage(l, i);
    EXPECT_EQ(used, n * static_cast<uint64_t>(s.layers[l].moe.n_expert_used)) << "layer " << l;
    const int next = t.next_moe_layer(l);
    if (next < 0) continue;
    uint64_t pairs = 0;
    for (int i = 0; i < s.layers[l].moe.n_expert; ++i)
      for (int j = 0; j < s.layers[next].moe.n_expert; ++j) pairs += t.count(l, i, j);
    EXPECT_EQ(pairs, n * static_cast<uint64_t>(s.layers[l].moe.n_expert_used * s.layers[next].moe.n_expert_used));
  }
}

TEST(TransitionTable, SaveLoadRoundTripIsExact) {
  const std::string name = "tiny-olmoe";
  auto e = Engine::open(test::model_path(name), EngineOptions{});
  const TransitionTable t = table_from_run(e->model(), e->store(), test::read_ids(test::ref_path(name, "seq.tok")));
  const std::string path = temp_path("olmoe.transitions.gguf");
  t.save(path, "test");
  const TransitionTable u = TransitionTable::load(path);
  EXPECT_EQ(u.shape().arch, t.shape().arch);
  EXPECT_EQ(u.shape().n_expert, t.shape().n_expert);
  EXPECT_EQ(u.shape().router_fingerprint, t.shape().router_fingerprint);
  const ModelSpec& s = e->model().spec();
  uint64_t nonzero = 0;
  for (int l = 0; l < s.n_layer; ++l) {
    const int E = t.shape().n_expert[l];
    for (int i = 0; i < E; ++i) {
      EXPECT_EQ(u.usage(l, i), t.usage(l, i));
      const int next = t.next_moe_layer(l);
      for (int j = 0; next >= 0 && j < t.shape().n_expert[next]; ++j) {
        EXPECT_EQ(u.count(l, i, j), t.count(l, i, j));
        nonzero += t.count(l, i, j) != 0;
      }
    }
  }
  EXPECT_GT(nonzero, 0u);
  // The side file names the model it belongs to, readable by any GGUF tool.
  auto f = gguf::File::open(path);
  EXPECT_EQ(f->get_string("transitions.model"), t.shape().describe());
  EXPECT_NE(f->get_string("transitions.model").find("olmoe"), std::string::npos);
  // Saving what was loaded gives the same bytes.
  const std::string again = temp_path("olmoe.again.gguf");
  u.save(again, "test");
  EXPECT_EQ(test::slurp(path), test::slurp(again));

  // A table for this very model passes the check and is recognised as the same weights.
  const LoadedTransitions loaded = load_transition_table(path, e->model());
  EXPECT_TRUE(loaded.same_weights);
  // One of the same shape from other router weights loads, flagged so the CLI can warn.
  const std::string other = temp_path("olmoe.other.gguf");
  TransitionTable(TransitionShape{t.shape().arch, t.shape().n_expert, t.shape().router_fingerprint ^ 1}).save(other);
  EXPECT_FALSE(load_transition_table(other, e->model()).same_weights);
}

void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const Error& err) {
    const std::string msg = err.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

TEST(TransitionTable, AMismatchedModelOrFileIsAClearError) {
  auto qwen = Engine::open(test::model_path("tiny-qwen3moe"), EngineOptions{});
  auto olmoe = Engine::open(test::model_path("tiny-olmoe"), EngineOptions{});
  const TransitionTable t =
      table_from_run(qwen->model(), qwen->store(), test::read_ids(test::ref_path("tiny-qwen3moe", "seq.tok")));
  const std::string path = temp_path("qwen.transitions.gguf");
  t.save(path);
  expect_error([&] { load_transition_table(path, olmoe->model()); },
               {path, "qwen3moe", "olmoe", "tiny-olmoe.gguf", "route-stats"});

  // The forward pass refuses a table of another layout even when handed one directly.
  ForwardOptions fo;
  fo.lookahead_margin = 1;
  fo.predictor = PrefetchPredictor::Transition;
  fo.transitions = std::make_shared<TransitionTable>(t);
  expect_error([&] { ForwardPass fp(olmoe->model(), olmoe->store(), fo); }, {"qwen3moe", "olmoe"});
  fo.transitions = nullptr;
  expect_error([&] { ForwardPass fp(olmoe->model(), olmoe->store(), fo); }, {"no transition table"});

  // A model file is not a table; a missing file says how to make one; a damaged one names the key.
  expect_error([&] { TransitionTable::load(test::model_path("tiny-olmoe")); },
               {"tiny-olmoe.gguf", "not a transition table"});
  expect_error([&] { load_transition_table(temp_path("missing.gguf"), olmoe->model()); },
               {"missing.gguf", "route-stats"});
  gguf::Writer w;
  auto src = gguf::File::open(path);
  w.copy_from(*src);
  w.remove("transitions.counts.0");
  const std::string damaged = temp_path("damaged.gguf");
  w.write(damaged);
  expect_error([&] { TransitionTable::load(damaged); }, {damaged, "transitions.counts.0", "missing"});
  w.set("transitions.counts.0", gguf::Value::make_i32_array({1, 2}));
  w.write(damaged);
  expect_error([&] { TransitionTable::load(damaged); }, {damaged, "transitions.counts.0", "u64"});
}

// Streams experts through a tight pool with each predictor prefetching, and checks the logits are
// exactly the resident ones, batched and token by token, and that the predictor was scored.
class TransitionOffloadFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(TransitionOffloadFixture, PredictedPrefetchGivesBitIdenticalLogits) {
  const std::string name = GetParam();
  const auto ids = test::read_ids(test::ref_path(name, "seq.tok"));
  const std::vector<int32_t> steps(ids.begin(), ids.begin() + std::min<size_t>(ids.size(), 12));
  ThreadPool pool(2);
  auto resident = Engine::open(test::model_path(name), EngineOptions{});
  auto logits = [&](Engine& e, const std::vector<int32_t>& toks, int64_t n_batch, ForwardOptions fo,
                    PredictionStats* stats) {
    Session s(e.model(), e.store(), static_cast<int64_t>(toks.size()), std::move(fo));
    std::vector<float> out;
    if (n_batch >= static_cast<int64_t>(toks.size())) {
      out = s.eval(toks, pool, true, n_batch);
    } else {
      for (int32_t t : toks) {
        const auto& l = s.eval({t}, pool, true, 1);
        out.insert(out.end(), l.begin(), l.end());
      }
    }
    if (stats) *stats = s.forward().prediction_stats();
    return out;
  };
  const auto want = logits(*resident, ids, 512, {}, nullptr);
  const auto want_steps = logits(*resident, steps, 1, {}, nullptr);
  auto table = std::make_shared<const TransitionTable>(table_from_run(resident->model(), resident->store(), ids));
  const bool has_pairs = moe_layers(resident->model().spec()) >= 2;

  int k = 0;
  for (const auto& L : resident->model().spec().layers) k = std::max(k, L.moe.n_expert_used);
  const uint64_t slot = BudgetedExpertStore::slot_bytes_for(resident->model().expert_layout());
  for (const PrefetchPredictor predictor : {PrefetchPredictor::Gate, PrefetchPredictor::Transition}) {
    const char* pname = predictor == PrefetchPredictor::Gate ? "gate" : "transition";
    EngineOptions o;
    o.force_offload = true;
    o.n_ctx = 128;
    o.n_batch = 128;
    auto probe = Engine::open(test::model_path(name), o);
    o.mem_bytes = probe->plan().weights_resident + probe->plan().kv_bytes + probe->plan().buffer_bytes +
                  static_cast<uint64_t>(k + 3) * slot;
    auto e = Engine::open(test::model_path(name), o);
    ASSERT_NE(e->offload_store(), nullptr);
    ForwardOptions fo;
    fo.lookahead_margin = 1;
    fo.predictor = predictor;
    fo.transitions = table;
    PredictionStats batch{}, step{};
    EXPECT_EQ(logits(*e, ids, 512, fo, &batch), want) << pname;
    EXPECT_EQ(logits(*e, steps, 1, fo, &step), want_steps) << pname;
    for (const PredictionStats& ps : {batch, step}) {
      EXPECT_LE(ps.correct, ps.predicted) << pname;
      EXPECT_LE(ps.correct, ps.actual) << pname;
      EXPECT_GE(ps.precision(), 0.0);
      EXPECT_LE(ps.precision(), 1.0);
      EXPECT_GE(ps.recall(), 0.0);
      EXPECT_LE(ps.recall(), 1.0);
      if (has_pairs) {
        EXPECT_GT(ps.predicted, 0u) << pname;
        EXPECT_GT(ps.actual, 0u) << pname;
      }
    }
    // Scored on the very tokens the table was built from, it must get some right.
    if (has_pairs && predictor == PrefetchPredictor::Transition) {
      EXPECT_GT(batch.correct, 0u);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TransitionOffloadFixture, ::testing::ValuesIn(test::fixture_model_names()),
                         moe::test::FixtureParamName());

TEST(TransitionCli, RouteStatsWritesATableThatRunUses) {
  const std::string model = test::model_path("tiny-qwen3moe");
  const std::string text = temp_path("route.txt");
  test::write_text(text, "In the beginning was the word, and the word was with the experts. "
                         "def route(x): return top_k(softmax(x)) # the router decides\n"
                         "Fortune favours the prepared mind; prefetching favours the predicted expert.\n");
  const std::string table = temp_path("cli.transitions.gguf");
  const auto rs = test::run_cli({"route-stats", "-m", model, "-f", text, "-o", table, "-c", "16", "-t", "2"});
  ASSERT_EQ(rs.status, 0) << rs.err;
  EXPECT_NE(rs.out.find("load_cv"), std::string::npos) << rs.out;
  EXPECT_NE(rs.out.find("held-out"), std::string::npos) << rs.out;
  EXPECT_TRUE(std::filesystem::exists(table));

  const auto run = test::run_cli({"run", "-m", model, "--offload-all", "--predictor", "transition", "--transitions",
                                  table, "-p", "the word", "-n", "6", "--temp", "0", "--stats"});
  ASSERT_EQ(run.status, 0) << run.err;
  EXPECT_NE(run.err.find("prefetch (transition, margin 2) precision"), std::string::npos) << run.err;
  // Same tokens as a resident run: prediction only decides what is read ahead.
  const auto resident = test::run_cli({"run", "-m", model, "-p", "the word", "-n", "6", "--temp", "0"});
  ASSERT_EQ(resident.status, 0) << resident.err;
  EXPECT_EQ(run.out, resident.out);

  const auto wrong = test::run_cli({"run", "-m", test::model_path("tiny-olmoe"), "--offload-all", "--transitions",
                                    table, "-p", "hi", "-n", "2"});
  EXPECT_EQ(wrong.status, 1);
  EXPECT_NE(wrong.err.find("transition table was built for a different model"), std::string::npos) << wrong.err;
  const auto gate_with_table =
      test::run_cli({"run", "-m", model, "--predictor", "gate", "--transitions", table, "-p", "hi", "-n", "2"});
  EXPECT_EQ(gate_with_table.status, 1);
  EXPECT_NE(gate_with_table.err.find("only used by --predictor transition"), std::string::npos);
}

}  // namespace
}  // namespace moe
