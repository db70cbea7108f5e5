// The multi-sequence forward step (ForwardPass::run over SeqSpans): several sequences, each with its own
// KV cache and positions, in one step. A row's numbers must not depend on which other rows share its
// step: every sequence's logits equal, bit for bit, those of the same spans run alone, for prompt chunks
// and decoded tokens, mixed in any grouping, resident and streamed, and with --batch-invariant and
// --llama-compat numerics. Also: a prompt evaluated in chunks whose starts are multiples of 64 gives the
// bits of one batch (the server relies on this to equal `moe run`), and bad steps are refused whole.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "base/error.h"
#include "fixture_util.h"
#include "model/synth.h"
#include "model/weights.h"
#include "runtime/engine.h"
#include "runtime/session.h"

namespace moe {
namespace {

// A sequence's tokens and how it is cut into spans: span i covers [cuts[i], cuts[i+1]).
struct Plan {
  std::vector<int32_t> tokens;
  std::vector<int64_t> cuts;
};

// Logits of every row of every span, keyed by (sequence, position).
using Rows = std::map<std::pair<int, int64_t>, std::vector<float>>;

std::vector<int32_t> make_tokens(int64_t n, int64_t n_vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(n_vocab));
  return t;
}

// Each sequence alone: its spans in order, one span per step.
Rows run_alone(ForwardPass& fp, const Model& m, const std::vector<Plan>& plans, ThreadPool& pool) {
  Rows out;
  const int64_t nv = m.spec().n_vocab;
  for (size_t s = 0; s < plans.size(); ++s) {
    KvCache kv(m.spec(), 256);
    const Plan& p = plans[s];
    for (size_t i = 0; i + 1 < p.cuts.size(); ++i) {
      const int64_t a = p.cuts[i], n = p.cuts[i + 1] - a;
      std::vector<float> logits(static_cast<size_t>(n * nv));
      fp.run(p.tokens.data() + a, n, a, kv, pool, logits.data(), true);
      for (int64_t r = 0; r < n; ++r)
        out[{static_cast<int>(s), a + r}].assign(logits.begin() + r * nv, logits.begin() + (r + 1) * nv);
    }
  }
  return out;
}

// All sequences together: step j runs span j of every sequence that has one (so prompt chunks of some
// sequences share steps with decoded tokens of others), in an order that rotates with the step.
Rows run_mixed(ForwardPass& fp, const Model& m, const std::vector<Plan>& plans, ThreadPool& pool, bool all_logits) {
  Rows out;
  const int64_t nv = m.spec().n_vocab;
  std::vector<std::unique_ptr<KvCache>> kvs;
  for (size_t s = 0; s < plans.size(); ++s) kvs.push_back(std::make_unique<KvCache>(m.spec(), 256));
  size_t max_spans = 0;
  for (const Plan& p : plans) max_spans = std::max(max_spans, p.cuts.size() - 1);
  for (size_t j = 0; j < max_spans; ++j) {
    std::vector<SeqSpan> spans;
    std::vector<std::vector<float>> logits;
    std::vector<int> who;
    for (size_t q = 0; q < plans.size(); ++q) {
      const size_t s = (q + j) % plans.size();
      const Plan& p = plans[s];
      if (j + 1 >= p.cuts.size()) continue;
      SeqSpan sp;
      sp.kv = kvs[s].get();
      sp.pos0 = p.cuts[j];
      sp.n_tokens = p.cuts[j + 1] - p.cuts[j];
      sp.tokens = p.tokens.data() + sp.pos0;
      sp.seq_id = static_cast<int32_t>(s);
      sp.all_logits = all_logits;
      logits.emplace_back(static_cast<size_t>((all_logits ? sp.n_tokens : 1) * nv));
      spans.push_back(sp);
      who.push_back(static_cast<int>(s));
    }
    for (size_t i = 0; i < spans.size(); ++i) spans[i].logits = logits[i].data();
    fp.run(spans.data(), spans.size(), pool);
    for (size_t i = 0; i < spans.size(); ++i) {
      const int64_t first = all_logits ? 0 : spans[i].n_tokens - 1;
      for (int64_t r = first; r < spans[i].n_tokens; ++r) {
        const float* row = logits[i].data() + (r - first) * nv;
        out[{who[i], spans[i].pos0 + r}].assign(row, row + nv);
      }
    }
  }
  return out;
}

// Prompts of several lengths (longer than one 64-query block), cut into 64-aligned chunks and then
// decoded one token at a time; one sequence starts decoding at once.
std::vector<Plan> make_plans(int64_t n_vocab) {
  std::vector<Plan> plans;
  const int64_t prompt[] = {150, 70, 1, 64, 33};
  const int64_t decode = 6;
  for (int s = 0; s < 5; ++s) {
    Plan p;
    p.tokens = make_tokens(prompt[s] + decode, n_vocab, 100 + s);
    for (int64_t a = 0; a < prompt[s]; a += 64) p.cuts.push_back(a);
    for (int64_t t = prompt[s]; t <= prompt[s] + decode; ++t) p.cuts.push_back(t);
    plans.push_back(std::move(p));
  }
  return plans;
}

void expect_same(const Rows& alone, const Rows& mixed, const std::string& what) {
  ASSERT_FALSE(mixed.empty());
  for (const auto& [key, row] : mixed) {
    auto it = alone.find(key);
    ASSERT_NE(it, alone.end());
    ASSERT_EQ(std::memcmp(row.data(), it->second.data(), row.size() * sizeof(float)), 0)
        << what << ": sequence " << key.first << " position " << key.second << " differs with other rows in its step";
  }
}

class ForwardBatch : public ::testing::TestWithParam<std::string> {};

TEST_P(ForwardBatch, RowsEqualTheirSpansAlone) {
  auto model = Model::load(test::model_path(GetParam()));
  ResidentExpertStore store(*model);
  ThreadPool pool(2);
  const std::vector<Plan> plans = make_plans(model->spec().n_vocab);
  // The other numerics on two families (the attention paths they change are shared by all).
  const bool all_modes =
      GetParam() == "tiny-qwen3moe-Q4_K_M" || GetParam() == "tiny-olmoe" || GetParam() == "tiny-gptoss" ||
      GetParam() == "tiny-deepseek2-lite";
  for (int mode = 0; mode < (all_modes ? 3 : 1); ++mode) {
    ForwardOptions o;
    o.batch_invariant = mode == 1;
    o.llama_compat_attention = mode == 2;
    ForwardPass fp(*model, store, o);
    const Rows alone = run_alone(fp, *model, plans, pool);
    const std::string what = GetParam() + (mode == 1 ? " batch-invariant" : mode == 2 ? " llama-compat" : "");
    expect_same(alone, run_mixed(fp, *model, plans, pool, true), what + ", all logits");
    expect_same(alone, run_mixed(fp, *model, plans, pool, false), what + ", last logits");
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ForwardBatch,
                         ::testing::Values("tiny-qwen3moe", "tiny-qwen3moe-Q4_K_M", "tiny-qwen2moe", "tiny-olmoe",
                                           "tiny-deepseekmoe", "tiny-mixtral-Q8_0", "tiny-granitemoe",
                                           // sliding-window rings and sinks; MLA's latent cache (both layouts)
                                           "tiny-gptoss", "tiny-deepseek2-lite", "tiny-deepseek2-v3", "tiny-glm4moe"),
                         test::FixtureParamName());

// With 1, 2 and 3 threads the mixed step gives the same bits (work items never change the arithmetic).
TEST(ForwardBatch, ThreadCountDoesNotMatter) {
  auto model = Model::load(test::model_path("tiny-qwen3moe-Q4_K_M"));
  ResidentExpertStore store(*model);
  const std::vector<Plan> plans = make_plans(model->spec().n_vocab);
  ForwardPass fp(*model, store);
  ThreadPool one(1);
  const Rows ref = run_mixed(fp, *model, plans, one, true);
  for (int t : {2, 3}) {
    ThreadPool pool(t);
    expect_same(ref, run_mixed(fp, *model, plans, pool, true), std::to_string(t) + " threads");
  }
}

// Experts streamed through a small pool (with prefetch prediction over the whole step): same bits.
TEST(ForwardBatch, StreamedEqualsResident) {
  const std::string path = test::model_path("tiny-qwen3moe-Q4_K_M");
  auto resident = Engine::open(path, EngineOptions{});
  EngineOptions o;
  o.force_offload = true;
  o.mem_bytes = 0;
  auto streamed = Engine::open(path, o);
  ASSERT_NE(streamed->offload_store(), nullptr);
  ThreadPool pool(2);
  const std::vector<Plan> plans = make_plans(resident->model().spec().n_vocab);
  ForwardPass a(resident->model(), resident->store());
  ForwardOptions fo;
  fo.lookahead_margin = 2;
  ForwardPass b(streamed->model(), streamed->store(), fo);
  expect_same(run_alone(a, resident->model(), plans, pool), run_mixed(b, streamed->model(), plans, pool, true),
              "streamed");
}

// Other shapes: many experts with a larger k (more experts shared between rows), GQA, a Q4_K mix.
TEST(ForwardBatch, SynthShapes) {
  const std::string path =
      (std::filesystem::temp_directory_path() / ("moe_test_batch_" + std::to_string(getpid()) + ".gguf")).string();
  SynthConfig cfg;
  cfg.arch = "qwen3moe";
  cfg.spec = make_moe_shape(2, 256, 4, 1, 64, 16, 4, 256, 320);
  cfg.attn_type = DType::Q6_K;
  cfg.expert_type = DType::Q4_K;
  cfg.embd_type = DType::Q4_K;
  cfg.output_type = DType::Q6_K;
  cfg.seed = 7;
  write_synth_model(path, cfg);
  {
    auto model = Model::load(path);
    ResidentExpertStore store(*model);
    ThreadPool pool(2);
    const std::vector<Plan> plans = make_plans(model->spec().n_vocab);
    ForwardPass fp(*model, store);
    expect_same(run_alone(fp, *model, plans, pool), run_mixed(fp, *model, plans, pool, true), "synth q4k e16k4");
  }
  std::filesystem::remove(path);
}

// A prompt in chunks whose starts are multiples of 64 attends in the same query blocks as in one
// batch: bit-identical logits (the server's chunked prefill equals `moe run`'s single batch).
TEST(ForwardBatch, AlignedChunksEqualOneBatch) {
  for (const char* name : {"tiny-qwen3moe", "tiny-qwen3moe-Q4_K_M", "tiny-olmoe", "tiny-gptoss", "tiny-deepseek2-lite"}) {
    auto model = Model::load(test::model_path(name));
    ResidentExpertStore store(*model);
    ThreadPool pool(2);
    const int64_t nv = model->spec().n_vocab;
    const std::vector<int32_t> tokens = make_tokens(200, nv, 5);
    Session whole(*model, store, 256);
    const std::vector<float> ref = whole.eval(tokens, pool, true);
    for (int64_t chunk : {64, 128}) {
      Session parts(*model, store, 256);
      const std::vector<float> got = parts.eval(tokens, pool, true, chunk);
      ASSERT_EQ(got.size(), ref.size());
      EXPECT_EQ(std::memcmp(got.data(), ref.data(), ref.size() * sizeof(float)), 0) << name << " chunks of " << chunk;
    }
  }
}

TEST(ForwardBatch, BadStepsAreRefusedWhole) {
  auto model = Model::load(test::model_path("tiny-qwen3moe"));
  ResidentExpertStore store(*model);
  ThreadPool pool(1);
  ForwardPass fp(*model, store);
  KvCache a(model->spec(), 8), b(model->spec(), 8);
  const std::vector<int32_t> ok = {1, 2, 3};
  std::vector<float> la(static_cast<size_t>(model->spec().n_vocab)), lb(la.size());
  SeqSpan s1{&a, ok.data(), 3, 0, 1, la.data(), false};
  SeqSpan s2{&a, ok.data(), 1, 3, 2, lb.data(), false};
  SeqSpan both[2] = {s1, s2};
  EXPECT_THROW(fp.run(both, 2, pool), Error);  // one cache for two spans
  const std::vector<int32_t> bad = {1, 999999};
  both[1] = {&b, bad.data(), 2, 0, 2, lb.data(), false};
  try {
    fp.run(both, 2, pool);
    FAIL() << "an out-of-vocabulary token was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("999999"), std::string::npos);
  }
  both[1] = {&b, ok.data(), 3, 6, 2, lb.data(), false};  // [6, 9) > 8
  EXPECT_THROW(fp.run(both, 2, pool), Error);
  // Nothing above ran: the cache of the first span is still empty, so running it now equals a fresh run.
  fp.run(&s1, 1, pool);
  KvCache c(model->spec(), 8);
  std::vector<float> lc(la.size());
  fp.run(ok.data(), 3, 0, c, pool, lc.data(), false);
  EXPECT_EQ(std::memcmp(la.data(), lc.data(), la.size() * sizeof(float)), 0);
}

}  // namespace
}  // namespace moe
