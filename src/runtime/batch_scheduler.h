// Continuous batching (design.md: runtime/ holds the batch scheduler; server/ puts HTTP on top of it).
// Sequences are submitted to a queue; a scheduler thread admits them into slots (each slot a KV cache of
// n_ctx positions) and runs forward steps in which every decoding sequence gives one token and waiting
// prompts are evaluated in chunks of whole 64-token blocks, so running streams keep flowing while new
// requests join. One step runs all its rows through one ForwardPass::run over SeqSpans: a step reads
// each expert it needs once.
//
// Row independence: a row's numbers never depend on the other rows of its step (model/forward.h), and
// a sequence's prompt chunks always start at multiples of 64 from position 0, which attends in the same
// query blocks as one batch. So under greedy decoding a sequence gives the same tokens alone or among
// others, and the same as `moe run` with the same settings.
//
// Scheduling (what runs when more sequences decode than fit one step, --slots > --parallel):
//   fcfs    round robin: the sequences that have waited longest since their last step, then the oldest.
//   expert  ExpertFlow-style: each sequence's next experts are predicted as those its last token used
//           (routing is local in time); the step takes the sequences that add the fewest new experts to
//           the union, so a step reads fewer distinct experts. A sequence that has waited max_wait steps
//           is taken first, so none starves.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/thread_pool.h"
#include "model/forward.h"
#include "runtime/engine.h"
#include "runtime/sampler.h"
#include "runtime/stop_matcher.h"
#include "tokenizer/tokenizer.h"

namespace moe {

enum class SchedulePolicy { Fcfs, ExpertAware };
const char* schedule_policy_name(SchedulePolicy p);

struct SchedulerOptions {
  int slots = 4;              // sequences generating at once (each has a KV cache of n_ctx)
  int parallel = 4;           // most sequences decoded in one step (<= slots)
  int64_t n_ctx = 2048;       // positions per slot
  int64_t step_tokens = 128;  // prompt tokens evaluated per step besides the decoded ones (multiple of 64)
  size_t max_queue = 64;      // sequences waiting for a slot; a submit beyond it is refused
  SchedulePolicy policy = SchedulePolicy::Fcfs;
  int max_wait = 4;           // expert policy: steps a decoding sequence may be passed over
  // Most experts per token a sequence's own routing policy may select (the engine's buffers and expert
  // pool are planned for it): 0 = the model's k, -1 = any number.
  int max_experts = 0;
};

// What one sequence asks for.
struct SequenceRequest {
  std::vector<int32_t> prompt;
  SamplerParams sampling{0.0f, 0, 1.0f, 0};  // temperature 0 = greedy
  int64_t max_tokens = -1;                    // < 0: until an end-of-generation token or a full context
  std::vector<std::string> stops;             // stop strings (matched on the text, never emitted)
  bool ignore_eos = false;
  int top_logprobs = -1;                      // < 0: no log-probabilities; else the chosen token's and this many more
  std::vector<std::pair<int32_t, float>> logit_bias;  // added to the logits before sampling
  bool trace = false;                         // record the routing of every evaluated token
  // The sequence's routing policy, compiled by compile_routing(); null: the scheduler's own (the
  // ForwardOptions' policy). Each step routes every sequence's rows under its own policy.
  std::shared_ptr<const RoutingPlan> routing;
};

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0;
};

// One sampled token as it is emitted.
struct GeneratedToken {
  int32_t id = 0;
  // The text this token makes final: possibly empty (bytes of an unfinished UTF-8 character or of a
  // possible stop string are held back) or more than its own piece (what was held back before).
  std::string text;
  // log-softmax of the logits (after logit_bias; before temperature, top-k and top-p), when asked for.
  float logprob = 0;
  std::vector<TokenLogprob> top;
};

enum class FinishReason { Stop, Length, Cancelled, Error };
const char* finish_reason_name(FinishReason r);  // "stop", "length", "cancelled", "error"

// The routing of one evaluated token: per MoE layer, its experts and weights (empty slots left out).
struct TraceRow {
  int64_t pos = 0;
  int32_t token = 0;
  std::vector<std::vector<std::pair<int32_t, float>>> layers;  // [moe layer index] -> (expert, weight)
};

struct SequenceUsage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  uint64_t routed_rows = 0;    // (token, MoE layer) pairs evaluated for this sequence
  uint64_t expert_slots = 0;   // experts those pairs used (non-empty routing slots)
  uint64_t store_hits = 0;     // acquires of experts this sequence used that found them in memory
  uint64_t store_misses = 0;   // ... that had to be read for this step (0 when every expert is resident)
  double queue_seconds = 0;    // submit to slot
  double first_token_seconds = 0;  // submit to first token
  double total_seconds = 0;        // submit to finish
  double experts_per_token() const { return routed_rows ? double(expert_slots) / double(routed_rows) : 0.0; }
  double store_hit_rate() const {
    return store_hits + store_misses ? double(store_hits) / double(store_hits + store_misses) : 1.0;
  }
};

struct SequenceResult {
  FinishReason reason = FinishReason::Stop;
  std::string error;  // FinishReason::Error
  std::string tail;   // text still held back at the end (flushed)
  SequenceUsage usage;
  std::vector<TraceRow> trace;
};

// Receives a sequence's output on the scheduler thread: keep it quick (queue it, return).
class SequenceSink {
 public:
  virtual ~SequenceSink() = default;
  virtual void on_token(const GeneratedToken& t) = 0;
  virtual void on_finish(const SequenceResult& r) = 0;  // exactly once
};

// How handles wake the scheduler thread (shared, so a handle may outlive its scheduler).
struct SchedulerSignal {
  std::mutex mu;
  std::condition_variable cv;
  uint64_t wakes = 0;
};

// A submitted sequence. cancel() may be called from any thread: a waiting sequence leaves the queue, a
// running one frees its slot before the next step; either way the sink gets on_finish(Cancelled).
class SequenceHandle {
 public:
  void cancel();
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }

 private:
  friend class BatchScheduler;
  std::atomic<bool> cancelled_{false};
  std::shared_ptr<SchedulerSignal> signal_;
};

// Thrown by submit() when the queue is full (a server answers 429).
struct QueueFull : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct SchedulerStats {
  size_t queued = 0;          // waiting for a slot
  int active = 0;             // in slots
  int slots = 0;
  uint64_t steps = 0;
  uint64_t prompt_tokens = 0;     // evaluated prompt tokens
  uint64_t generated_tokens = 0;  // emitted tokens
  uint64_t decode_rows = 0;       // decoded rows (tokens evaluated one per sequence and step)
  uint64_t finished[4] = {0, 0, 0, 0};  // by FinishReason
  double step_seconds = 0;        // time spent in forward steps
  // Steps that only decoded (no prompt rows): their rows, time, and over their MoE layers the distinct
  // experts each layer used (what a step must read) and the number of (step, layer) pairs.
  uint64_t decode_steps = 0;
  uint64_t decode_step_rows = 0;
  double decode_step_seconds = 0;
  uint64_t decode_step_distinct_experts = 0;
  uint64_t decode_step_moe_layers = 0;
  double recent_tok_s = 0;        // emitted tokens per second over the last few seconds
  double recent_prompt_tok_s = 0; // prompt tokens per second over the same window
};

class BatchScheduler {
 public:
  // `observers` watch every step (their on_* calls come from the scheduler thread; sequence ids are
  // slot indices). The engine, tokenizer, pool and observers must outlive the scheduler.
  BatchScheduler(Engine& engine, const Tokenizer* tok, ForwardOptions fo, ThreadPool& pool, SchedulerOptions o,
                 std::vector<ForwardObserver*> observers = {});
  ~BatchScheduler();  // finishes every sequence (Cancelled) and joins the thread

  // Queues sequences (e.g. the n choices of one request) all or none; throws QueueFull when they do not
  // fit the queue, moe::Error when one is invalid (empty prompt, prompt not shorter than n_ctx, token
  // ids outside the vocabulary).
  std::vector<std::shared_ptr<SequenceHandle>> submit(std::vector<SequenceRequest> reqs,
                                                      std::vector<std::shared_ptr<SequenceSink>> sinks);
  // A routing policy for SequenceRequest::routing: checked against the model (errors name the layer,
  // expert and setting) and against SchedulerOptions::max_experts.
  std::shared_ptr<const RoutingPlan> compile_routing(const RoutingPolicy& policy) const;
  const RoutingPolicy& default_routing() const { return default_plan_->policy(); }
  SchedulerStats stats() const;
  const SchedulerOptions& options() const { return opts_; }
  const Model& model() const { return engine_.model(); }

 private:
  friend class SequenceHandle;
  struct Active;
  struct Slot;
  class StepObserver;
  struct Queued {
    SequenceRequest req;
    std::shared_ptr<SequenceSink> sink;
    std::shared_ptr<SequenceHandle> handle;
    std::chrono::steady_clock::time_point submitted;
  };
  void loop();
  void admit(Queued q, size_t slot);
  bool step();  // false when nothing ran
  void sample(size_t slot, const float* logits);
  void finish(size_t slot, FinishReason reason, const std::string& error = {});
  void finish_queued(Queued& q, FinishReason reason);
  std::vector<size_t> choose_decoders(const std::vector<size_t>& ready);
  void count_tokens(uint64_t prompt, uint64_t generated);

  Engine& engine_;
  const Tokenizer* tok_;
  ThreadPool& pool_;
  SchedulerOptions opts_;
  ForwardPass forward_;
  std::shared_ptr<const RoutingPlan> default_plan_;  // the forward options' policy
  std::vector<RowPolicy> row_policies_;              // step(): each span's rows under its policy
  std::unique_ptr<StepObserver> step_observer_;
  std::vector<Slot> slots_;
  uint64_t step_no_ = 0;
  uint64_t admitted_no_ = 0;
  std::vector<float> biased_;  // sample(): logits plus logit_bias
  std::vector<std::pair<float, int32_t>> top_scratch_;
  std::vector<int8_t> step_hit_;  // per (layer, expert) of the step: -1 not acquired, 0 miss, 1 hit
  bool pure_decode_ = false;      // the step being run has no prompt rows
  uint64_t step_distinct_ = 0, step_moe_layers_ = 0;  // counted by the step observer for that step

  // sig_->mu guards the queue, stop_ and stats_.
  std::shared_ptr<SchedulerSignal> sig_;
  std::deque<Queued> queue_;
  bool stop_ = false;
  std::atomic<int> n_active_{0};
  SchedulerStats stats_;  // under mu_ (the counters the scheduler thread updates per step)
  std::deque<std::pair<std::chrono::steady_clock::time_point, std::pair<uint64_t, uint64_t>>> recent_;
  std::thread thread_;
};

// Picks up to `parallel` of the ready decoders. wait[i]: steps candidate i has waited since it last ran;
// experts[i]: its predicted experts as (layer * n_expert + expert) keys, sorted and unique. Fcfs: the
// longest waiting first (ties: the lower index, i.e. the older sequence). ExpertAware: those that waited
// max_wait or more, then the longest waiting one, then greedily the candidate adding the fewest keys to
// the union (ties: the longer waiting). Returns indices into the candidates, in the order picked.
std::vector<size_t> choose_batch(SchedulePolicy policy, size_t parallel, int max_wait, const std::vector<uint64_t>& wait,
                                 const std::vector<const std::vector<int32_t>*>& experts);

}  // namespace moe
