// Continuous batching (runtime/batch_scheduler.h): sequences decoded together give the tokens they give
// alone (greedy), whatever the slots, the step's prompt budget, the scheduling policy or the expert
// store; cancellation frees a slot at once; the queue is bounded; usage, log-probabilities, stop
// strings and traces describe what ran.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <future>
#include <mutex>
#include <random>
#include <thread>

#include "base/error.h"
#include "fixture_util.h"
#include "runtime/batch_scheduler.h"
#include "runtime/engine.h"
#include "runtime/session.h"
#include "tokenizer/tokenizer.h"

namespace moe {
namespace {

// Collects a sequence's output; wait() blocks until it finished.
class Collect final : public SequenceSink {
 public:
  void on_token(const GeneratedToken& t) override {
    std::lock_guard<std::mutex> lock(mu_);
    tokens.push_back(t);
    ids.push_back(t.id);
    text += t.text;
    cv_.notify_all();
  }
  void on_finish(const SequenceResult& r) override {
    std::lock_guard<std::mutex> lock(mu_);
    result = r;
    text += r.tail;
    done = true;
    ++finishes;
    cv_.notify_all();
  }
  bool wait(double seconds = 60) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return done; });
  }
  bool wait_tokens(size_t n, double seconds = 60) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return done || ids.size() >= n; });
  }
  std::vector<GeneratedToken> tokens;
  std::vector<int32_t> ids;
  std::string text;
  SequenceResult result;
  bool done = false;
  int finishes = 0;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
};

std::vector<int32_t> random_prompt(int64_t n, int64_t n_vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(n_vocab));
  return t;
}

// Greedy decoding the way `moe run --temp 0` does it: the prompt in one batch, then token by token.
std::vector<int32_t> greedy_alone(Engine& e, const std::vector<int32_t>& prompt, int n, int64_t n_ctx,
                                  const RoutingPolicy& policy = {}) {
  ThreadPool pool(2);
  Session s(e.model(), e.store(), n_ctx);
  s.set_routing_policy(policy);
  std::vector<float> logits = s.eval(prompt, pool);
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    const int32_t next = argmax(logits.data(), e.model().spec().n_vocab);
    out.push_back(next);
    if (i + 1 < n) logits = s.eval({next}, pool);
  }
  return out;
}

struct RunCase {
  SchedulerOptions opts;
  std::string label;
};

void check_concurrent_equals_alone(Engine& e, const std::vector<RunCase>& cases) {
  const int64_t nv = e.model().spec().n_vocab;
  const int64_t lengths[] = {150, 9, 70, 1, 64, 200, 33};
  const int n_gen[] = {12, 20, 7, 15, 9, 5, 18};
  std::vector<std::vector<int32_t>> prompts, refs;
  for (int i = 0; i < 7; ++i) {
    prompts.push_back(random_prompt(lengths[i], nv, 40 + i));
    refs.push_back(greedy_alone(e, prompts.back(), n_gen[i], 256));
  }
  for (const RunCase& c : cases) {
    ThreadPool pool(2);
    BatchScheduler sched(e, nullptr, ForwardOptions{}, pool, c.opts);
    std::vector<std::shared_ptr<Collect>> sinks;
    std::vector<std::shared_ptr<SequenceHandle>> handles;
    for (int i = 0; i < 7; ++i) {
      SequenceRequest r;
      r.prompt = prompts[i];
      r.max_tokens = n_gen[i];
      auto sink = std::make_shared<Collect>();
      sinks.push_back(sink);
      auto h = sched.submit({r}, {sink});
      handles.push_back(h[0]);
    }
    for (int i = 0; i < 7; ++i) {
      ASSERT_TRUE(sinks[i]->wait()) << c.label;
      EXPECT_EQ(sinks[i]->result.reason, FinishReason::Length) << c.label;
      EXPECT_EQ(sinks[i]->ids, refs[i]) << c.label << ": sequence " << i << " (prompt " << lengths[i]
                                        << " tokens) differs from decoding it alone";
      EXPECT_EQ(sinks[i]->result.usage.completion_tokens, n_gen[i]);
      EXPECT_EQ(sinks[i]->result.usage.prompt_tokens, lengths[i]);
    }
    const SchedulerStats st = sched.stats();
    EXPECT_EQ(st.finished[static_cast<int>(FinishReason::Length)], 7u);
    uint64_t total_prompt = 0;
    for (auto l : lengths) total_prompt += static_cast<uint64_t>(l);
    EXPECT_EQ(st.prompt_tokens, total_prompt);
  }
}

SchedulerOptions opts(int slots, int parallel, int64_t step_tokens, SchedulePolicy p = SchedulePolicy::Fcfs) {
  SchedulerOptions o;
  o.slots = slots;
  o.parallel = parallel;
  o.n_ctx = 256;
  o.step_tokens = step_tokens;
  o.max_queue = 16;
  o.policy = p;
  o.max_wait = 2;
  return o;
}

class SchedulerGreedy : public ::testing::TestWithParam<std::string> {};

TEST_P(SchedulerGreedy, ConcurrentEqualsAlone) {
  auto e = Engine::open(test::model_path(GetParam()), EngineOptions{});
  check_concurrent_equals_alone(*e, {{opts(1, 1, 512), "one slot"},
                                     {opts(4, 4, 64), "4 slots, 64-token chunks"},
                                     {opts(7, 7, 192), "7 slots"},
                                     {opts(5, 2, 128), "5 slots, 2 per step, fcfs"},
                                     {opts(5, 2, 128, SchedulePolicy::ExpertAware), "5 slots, 2 per step, expert"}});
}

INSTANTIATE_TEST_SUITE_P(Fixtures, SchedulerGreedy,
                         ::testing::Values("tiny-qwen3moe-Q4_K_M", "tiny-olmoe", "tiny-qwen2moe", "tiny-deepseekmoe",
                                           "tiny-gptoss", "tiny-deepseek2-lite"),
                         test::FixtureParamName());

TEST(Scheduler, StreamedExpertsEqualAlone) {
  auto resident = Engine::open(test::model_path("tiny-qwen3moe-Q4_K_M"), EngineOptions{});
  EngineOptions o;
  o.force_offload = true;
  auto streamed = Engine::open(test::model_path("tiny-qwen3moe-Q4_K_M"), o);
  ASSERT_NE(streamed->offload_store(), nullptr);
  const int64_t nv = resident->model().spec().n_vocab;
  std::vector<std::vector<int32_t>> prompts, refs;
  for (int i = 0; i < 4; ++i) {
    prompts.push_back(random_prompt(30 + 40 * i, nv, 7 + i));
    refs.push_back(greedy_alone(*resident, prompts.back(), 10, 256));
  }
  ThreadPool pool(2);
  ForwardOptions fo;
  fo.lookahead_margin = 2;
  BatchScheduler sched(*streamed, nullptr, fo, pool, opts(4, 4, 64));
  std::vector<std::shared_ptr<Collect>> sinks;
  for (int i = 0; i < 4; ++i) {
    SequenceRequest r;
    r.prompt = prompts[i];
    r.max_tokens = 10;
    sinks.push_back(std::make_shared<Collect>());
    sched.submit({r}, {sinks.back()});
  }
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(sinks[i]->wait());
    EXPECT_EQ(sinks[i]->ids, refs[i]);
    const SequenceUsage& u = sinks[i]->result.usage;
    EXPECT_GT(u.store_hits + u.store_misses, 0u);
    EXPECT_GE(u.store_hit_rate(), 0.0);
    EXPECT_LE(u.store_hit_rate(), 1.0);
  }
}

// Per-sequence routing policies (a request's `moe` object): sequences routed under different policies
// share steps, and each gives the tokens it gives alone under its policy (`moe run` with the same
// routing flags); experts per token follow each sequence's own policy. Policies asking for more experts
// than the server planned for are refused.
TEST(Scheduler, PerSequenceRoutingPolicies) {
  for (const char* name : {"tiny-qwen3moe-Q4_K_M", "tiny-deepseek2-lite"}) {
    auto e = Engine::open(test::model_path(name), EngineOptions{});
    const ModelSpec& spec = e->model().spec();
    int first_moe = 0, last_moe = 0, k = 0, n_expert = 0;
    for (int il = spec.n_layer - 1; il >= 0; --il)
      if (spec.layers[il].is_moe) {
        first_moe = il;
        k = spec.layers[il].moe.n_expert_used;
        n_expert = spec.layers[il].moe.n_expert;
      }
    for (int il = 0; il < spec.n_layer; ++il)
      if (spec.layers[il].is_moe) last_moe = il;
    std::vector<RoutingPolicy> policies(6);
    policies[1].experts = 1;
    policies[2].top_p = 0.5;
    policies[2].top_p_max_k = k + 1;
    policies[3].mask_experts = {{first_moe, 0}, {last_moe, 1}, {last_moe, 2}};
    policies[4].steer = {{first_moe, 3, 4.0, true}};
    policies[5].random_drop = 0.4;
    policies[5].random_seed = 11;
    const int64_t nv = spec.n_vocab;
    const int64_t lengths[] = {90, 9, 70, 33, 64, 20};
    std::vector<std::vector<int32_t>> prompts, refs;
    for (size_t i = 0; i < policies.size(); ++i) {
      prompts.push_back(random_prompt(lengths[i], nv, 70 + static_cast<uint32_t>(i)));
      refs.push_back(greedy_alone(*e, prompts.back(), 10, 256, policies[i]));
    }
    // The policies do change the tokens (else this test could not tell them apart).
    EXPECT_NE(greedy_alone(*e, prompts[1], 10, 256), refs[1]) << name;
    ThreadPool pool(2);
    SchedulerOptions o = opts(6, 6, 64);
    o.max_experts = k + 1;  // top_p_max_k above
    BatchScheduler sched(*e, nullptr, ForwardOptions{}, pool, o);
    std::vector<std::shared_ptr<Collect>> sinks;
    for (size_t i = 0; i < policies.size(); ++i) {
      SequenceRequest r;
      r.prompt = prompts[i];
      r.max_tokens = 10;
      if (i > 0) r.routing = sched.compile_routing(policies[i]);
      sinks.push_back(std::make_shared<Collect>());
      sched.submit({r}, {sinks.back()});
    }
    for (size_t i = 0; i < policies.size(); ++i) {
      ASSERT_TRUE(sinks[i]->wait());
      EXPECT_EQ(sinks[i]->ids, refs[i]) << name << ": policy " << policies[i].to_json().dump()
                                        << " in a shared step differs from alone";
    }
    EXPECT_DOUBLE_EQ(sinks[0]->result.usage.experts_per_token(), k) << name;
    EXPECT_DOUBLE_EQ(sinks[1]->result.usage.experts_per_token(), 1.0) << name;
    EXPECT_LE(sinks[2]->result.usage.experts_per_token(), k + 1.0) << name;
    EXPECT_LT(sinks[5]->result.usage.experts_per_token(), k) << name;
    // More experts than planned for: refused unless the scheduler may use any number.
    RoutingPolicy wide;
    wide.experts = n_expert;
    RoutingPolicy open_top_p;
    open_top_p.top_p = 0.9;
    if (n_expert > k) {
      EXPECT_THROW(sched.compile_routing(wide), Error) << name;
      EXPECT_THROW(sched.compile_routing(open_top_p), Error) << name;
    }
    RoutingPolicy bad_mask;
    bad_mask.mask_experts = {{first_moe, n_expert}};
    EXPECT_THROW(sched.compile_routing(bad_mask), Error) << name;
    o.max_experts = -1;
    BatchScheduler any(*e, nullptr, ForwardOptions{}, pool, o);
    EXPECT_NO_THROW(any.compile_routing(wide)) << name;
    EXPECT_NO_THROW(any.compile_routing(open_top_p)) << name;
  }
}

// Usage: with the model's own top-k every token uses k experts in every MoE layer; traces hold every
// evaluated token's routing.
TEST(Scheduler, UsageAndTrace) {
  auto e = Engine::open(test::model_path("tiny-qwen3moe"), EngineOptions{});
  ThreadPool pool(2);
  BatchScheduler sched(*e, nullptr, ForwardOptions{}, pool, opts(2, 2, 64));
  const int64_t nv = e->model().spec().n_vocab;
  SequenceRequest r;
  r.prompt = random_prompt(70, nv, 3);
  r.max_tokens = 5;
  r.trace = true;
  auto a = std::make_shared<Collect>();
  sched.submit({r}, {a});
  ASSERT_TRUE(a->wait());
  const SequenceUsage& u = a->result.usage;
  int n_moe = 0;
  for (const auto& L : e->model().spec().layers) n_moe += L.is_moe;
  const int k = e->model().spec().layers[0].moe.n_expert_used;
  // 70 prompt tokens and 4 decoded ones (the 5th generated token is never evaluated).
  EXPECT_EQ(u.routed_rows, static_cast<uint64_t>((70 + 4) * n_moe));
  EXPECT_DOUBLE_EQ(u.experts_per_token(), k);
  EXPECT_DOUBLE_EQ(u.store_hit_rate(), 1.0);  // resident
  ASSERT_EQ(a->result.trace.size(), 74u);
  for (size_t i = 0; i < a->result.trace.size(); ++i) {
    const TraceRow& row = a->result.trace[i];
    EXPECT_EQ(row.pos, static_cast<int64_t>(i));
    EXPECT_EQ(row.token, i < 70 ? r.prompt[i] : a->ids[i - 70]);
    for (size_t l = 0; l < row.layers.size(); ++l)
      EXPECT_EQ(row.layers[l].size(), e->model().spec().layers[l].is_moe ? static_cast<size_t>(k) : 0u);
  }
}

TEST(Scheduler, CancelFreesTheSlotAtOnce) {
  auto e = Engine::open(test::model_path("tiny-qwen3moe"), EngineOptions{});
  ThreadPool pool(2);
  SchedulerOptions o = opts(1, 1, 64);
  o.n_ctx = 4096;
  BatchScheduler sched(*e, nullptr, ForwardOptions{}, pool, o);
  const int64_t nv = e->model().spec().n_vocab;
  SequenceRequest endless;
  endless.prompt = random_prompt(8, nv, 1);
  endless.max_tokens = 4000;
  auto a = std::make_shared<Collect>();
  auto ha = sched.submit({endless}, {a})[0];
  // A second sequence waits for the only slot; cancelling it in the queue finishes it.
  auto b = std::make_shared<Collect>();
  auto hb = sched.submit({endless}, {b})[0];
  ASSERT_TRUE(a->wait_tokens(3));
  EXPECT_FALSE(b->done);
  hb->cancel();
  ASSERT_TRUE(b->wait(10));
  EXPECT_EQ(b->result.reason, FinishReason::Cancelled);
  EXPECT_TRUE(b->ids.empty());
  // Cancelling the running one ends it within a step, and a new sequence gets the slot.
  const auto t0 = std::chrono::steady_clock::now();
  ha->cancel();
  ASSERT_TRUE(a->wait(10));
  EXPECT_EQ(a->result.reason, FinishReason::Cancelled);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 2.0);
  EXPECT_LT(a->ids.size(), 4000u);
  SequenceRequest shortr = endless;
  shortr.max_tokens = 3;
  auto c = std::make_shared<Collect>();
  sched.submit({shortr}, {c});
  ASSERT_TRUE(c->wait());
  EXPECT_EQ(c->ids.size(), 3u);
  EXPECT_EQ(a->finishes, 1);
  EXPECT_EQ(b->finishes, 1);
}

TEST(Scheduler, QueueIsBounded) {
  auto e = Engine::open(test::model_path("tiny-qwen3moe"), EngineOptions{});
  ThreadPool pool(1);
  SchedulerOptions o = opts(1, 1, 64);
  o.max_queue = 1;
  o.n_ctx = 4096;
  BatchScheduler sched(*e, nullptr, ForwardOptions{}, pool, o);
  SequenceRequest r;
  r.prompt = random_prompt(4, e->model().spec().n_vocab, 2);
  r.max_tokens = 2000;
  auto a = std::make_shared<Collect>(), b = std::make_shared<Collect>(), c = std::make_shared<Collect>();
  auto ha = sched.submit({r}, {a});
  ASSERT_TRUE(a->wait_tokens(1));
  auto hb = sched.submit({r}, {b});
  EXPECT_THROW(sched.submit({r}, {c}), QueueFull);
  // All-or-none: two sequences that do not both fit are both refused.
  hb[0]->cancel();
  ASSERT_TRUE(b->wait());
  EXPECT_THROW(sched.submit({r, r}, {c, std::make_shared<Collect>()}), QueueFull);
  EXPECT_EQ(c->finishes, 0);
  ha[0]->cancel();
  ASSERT_TRUE(a->wait());
}

TEST(Scheduler, InvalidSequencesAreRefused) {
  auto e = Engine::open(test::model_path("tiny-qwen3moe"), EngineOptions{});
  ThreadPool pool(1);
  BatchScheduler sched(*e, nullptr, ForwardOptions{}, pool, opts(1, 1, 64));
  SequenceRequest r;
  auto s = std::make_shared<Collect>();
  EXPECT_THROW(sched.submit({r}, {s}), Error);  // empty
  r.prompt.assign(256, 1);                       // == n_ctx
  EXPECT_THROW(sched.submit({r}, {s}), Error);
  r.prompt = {1, -3};
  EXPECT_THROW(sched.submit({r}, {s}), Error);
  EXPECT_THROW(BatchScheduler(*e, nullptr, ForwardOptions{}, pool, opts(2, 3, 64)), Error);
  EXPECT_THROW(BatchScheduler(*e, nullptr, ForwardOptions{}, pool, opts(2, 2, 100)), Error);
}

// Text: stop strings end generation and are not emitted; EOG ends it; log-probabilities are those of
// the logits.
TEST(Scheduler, TextStopsAndLogprobs) {
  // The trained model: its text is words (a random model's bytes need not form UTF-8).
  auto e = Engine::open(std::string(MOE_SOURCE_DIR) + "/models/tiny-qwen3moe-8x2-kjv-py-fortunes-F16.gguf", EngineOptions{});
  auto tok = Tokenizer::from_gguf(e->model().file());
  ThreadPool pool(2);
  BatchScheduler sched(*e, tok.get(), ForwardOptions{}, pool, opts(2, 2, 64));
  SequenceRequest r;
  r.prompt = tok->encode("And the LORD said unto", true, true);
  r.max_tokens = 16;
  r.ignore_eos = true;
  r.top_logprobs = 3;
  auto a = std::make_shared<Collect>();
  sched.submit({r}, {a});
  ASSERT_TRUE(a->wait());
  ASSERT_EQ(a->tokens.size(), 16u);
  for (const GeneratedToken& g : a->tokens) {
    ASSERT_EQ(g.top.size(), 3u);
    EXPECT_EQ(g.top[0].id, g.id);  // greedy: the most likely token
    EXPECT_FLOAT_EQ(g.top[0].logprob, g.logprob);
    EXPECT_LE(g.logprob, 0.0f);
    EXPECT_GE(g.top[0].logprob, g.top[1].logprob);
    EXPECT_GE(g.top[1].logprob, g.top[2].logprob);
  }
  EXPECT_EQ(a->text, tok->decode(a->ids));
  // A stop string taken from the middle of that text ends the same generation before it.
  ASSERT_GE(a->text.size(), 6u);
  const std::string stop = a->text.substr(a->text.size() / 2, 3);
  SequenceRequest rs = r;
  rs.stops = {stop};
  auto b = std::make_shared<Collect>();
  sched.submit({rs}, {b});
  ASSERT_TRUE(b->wait());
  EXPECT_EQ(b->result.reason, FinishReason::Stop);
  EXPECT_EQ(b->text, a->text.substr(0, a->text.find(stop)));
  EXPECT_LT(b->ids.size(), a->ids.size());
  // A logit bias that bans the greedy first token changes it.
  SequenceRequest rb = r;
  rb.max_tokens = 1;
  rb.logit_bias = {{a->ids[0], -1000.0f}};
  auto c = std::make_shared<Collect>();
  sched.submit({rb}, {c});
  ASSERT_TRUE(c->wait());
  ASSERT_EQ(c->ids.size(), 1u);
  EXPECT_NE(c->ids[0], a->ids[0]);
}

TEST(Scheduler, ChooseBatch) {
  const std::vector<int32_t> e0 = {1, 2, 3}, e1 = {7, 8, 9}, e2 = {1, 2, 4}, e3 = {2, 3, 5};
  const std::vector<const std::vector<int32_t>*> ex = {&e0, &e1, &e2, &e3};
  // FCFS: longest waiting first, ties by index.
  EXPECT_EQ(choose_batch(SchedulePolicy::Fcfs, 2, 4, {1, 3, 1, 2}, ex), (std::vector<size_t>{1, 3}));
  EXPECT_EQ(choose_batch(SchedulePolicy::Fcfs, 2, 4, {1, 1, 1, 1}, ex), (std::vector<size_t>{0, 1}));
  // Expert: the longest waiting, then whoever overlaps it most.
  EXPECT_EQ(choose_batch(SchedulePolicy::ExpertAware, 2, 4, {2, 1, 1, 1}, ex), (std::vector<size_t>{0, 2}));
  EXPECT_EQ(choose_batch(SchedulePolicy::ExpertAware, 3, 4, {2, 1, 1, 1}, ex), (std::vector<size_t>{0, 2, 3}));
  // ... but a sequence that waited max_wait steps goes first whatever its experts.
  EXPECT_EQ(choose_batch(SchedulePolicy::ExpertAware, 2, 4, {2, 4, 1, 1}, ex), (std::vector<size_t>{1, 0}));
  // Everyone fits: everyone runs.
  EXPECT_EQ(choose_batch(SchedulePolicy::ExpertAware, 4, 4, {0, 0, 0, 0}, ex).size(), 4u);
}

// With more decoding sequences than fit a step on a streamed model, the expert policy's steps need
// fewer distinct experts than FCFS's (trained model, whose routing is local in time).
TEST(Scheduler, ExpertPolicyReadsFewerExperts) {
  const std::string path = std::string(MOE_SOURCE_DIR) + "/models/tiny-qwen3moe-8x2-kjv-py-fortunes-F16.gguf";
  auto e = Engine::open(path, EngineOptions{});
  auto tok = Tokenizer::from_gguf(e->model().file());
  const char* texts[] = {"In the beginning God created", "def main(argv):\n    import os\n", "And the LORD said unto Moses",
                         "class Parser(object):\n    def __init__(self", "Fortune favours", "for i in range(10):\n",
                         "Blessed are the meek", "import sys\nimport re\n"};
  uint64_t keys[2] = {0, 0};
  for (int p = 0; p < 2; ++p) {
    ThreadPool pool(2);
    SchedulerOptions o = opts(8, 2, 512, p == 0 ? SchedulePolicy::Fcfs : SchedulePolicy::ExpertAware);
    o.max_wait = 6;
    // Counts the distinct (layer, expert) pairs of every step.
    class Distinct final : public ForwardObserver {
     public:
      void on_routing(const MoeLayerRouting& r) override {
        std::vector<int32_t> ids;
        for (int64_t t = 0; t < r.tokens->n_tokens; ++t)
          for (int j = 0; j < r.routing->k; ++j) ids.push_back(r.routing->id(t, j));
        std::sort(ids.begin(), ids.end());
        if (r.tokens->n_tokens <= 2) total += static_cast<uint64_t>(std::unique(ids.begin(), ids.end()) - ids.begin());
      }
      uint64_t total = 0;
    } distinct;
    BatchScheduler sched(*e, tok.get(), ForwardOptions{}, pool, o, {&distinct});
    std::vector<std::shared_ptr<Collect>> sinks;
    std::vector<SequenceRequest> reqs;
    std::vector<std::shared_ptr<SequenceSink>> ss;
    for (const char* t : texts) {
      SequenceRequest r;
      r.prompt = tok->encode(t, true, true);
      r.max_tokens = 40;
      r.ignore_eos = true;
      reqs.push_back(r);
      sinks.push_back(std::make_shared<Collect>());
      ss.push_back(sinks.back());
    }
    sched.submit(reqs, ss);
    for (auto& s : sinks) ASSERT_TRUE(s->wait());
    keys[p] = distinct.total;
  }
  EXPECT_LT(keys[1], keys[0]) << "expert-aware steps should touch fewer distinct experts than FCFS";
}

}  // namespace
}  // namespace moe
