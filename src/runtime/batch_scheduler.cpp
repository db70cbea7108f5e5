#include "runtime/batch_scheduler.h"

#include <algorithm>
#include <cmath>

#include "base/error.h"

namespace moe {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// Prompt chunks are whole blocks of this many tokens (the forward pass's attention query block), so a
// chunked prompt attends exactly as one batch does.
constexpr int64_t kChunkAlign = 64;

// How far back recent tok/s looks.
constexpr double kRateWindowSeconds = 5.0;

}  // namespace

const char* schedule_policy_name(SchedulePolicy p) { return p == SchedulePolicy::Fcfs ? "fcfs" : "expert"; }

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::Error: return "error";
  }
  return "?";
}

void SequenceHandle::cancel() {
  if (cancelled_.exchange(true, std::memory_order_acq_rel)) return;
  if (!signal_) return;
  std::lock_guard<std::mutex> lock(signal_->mu);
  ++signal_->wakes;
  signal_->cv.notify_all();
}

struct BatchScheduler::Active {
  Active(SequenceRequest r, const Tokenizer* tok) : req(std::move(r)), sampler(req.sampling), stop(req.stops) {
    if (tok) decoder = std::make_unique<StreamDecoder>(*tok);
  }
  SequenceRequest req;
  std::shared_ptr<SequenceSink> sink;
  std::shared_ptr<SequenceHandle> handle;
  Sampler sampler;
  std::unique_ptr<StreamDecoder> decoder;
  StopMatcher stop;
  int64_t prompt_done = 0;  // prompt tokens evaluated
  int64_t n_past = 0;       // positions in the KV cache
  int32_t pending = -1;     // the sampled token still to evaluate (>= 0: decoding)
  int64_t generated = 0;
  uint64_t admitted_no = 0;
  uint64_t last_step = 0;
  bool in_step = false;
  Clock::time_point submitted;
  bool got_first = false;
  SequenceUsage usage;
  std::vector<int32_t> experts;    // predicted next experts: its last row's, as layer * n_expert + expert
  std::vector<int32_t> next_experts, step_keys;  // being collected during a step
  std::vector<TraceRow> trace;
};

struct BatchScheduler::Slot {
  std::unique_ptr<KvCache> kv;
  std::unique_ptr<Active> seq;
  std::vector<float> logits;
};

// Attributes each step's routing to its sequences: experts per token, the experts each used (for store
// hits and for the expert-aware policy's prediction), and traces.
class BatchScheduler::StepObserver final : public ForwardObserver {
 public:
  explicit StepObserver(BatchScheduler& s) : s_(s) {}
  void on_step_begin(const StepTokens& t) override {
    trace_row_.assign(static_cast<size_t>(t.n_tokens), -1);
    for (int64_t r = 0; r < t.n_tokens; ++r) {
      Active* a = active(t.seq_ids[r]);
      if (!a || !a->req.trace) continue;
      TraceRow row;
      row.pos = t.positions[r];
      row.token = t.ids[r];
      row.layers.resize(static_cast<size_t>(s_.model().spec().n_layer));
      trace_row_[static_cast<size_t>(r)] = static_cast<int64_t>(a->trace.size());
      a->trace.push_back(std::move(row));
    }
  }
  void on_routing(const MoeLayerRouting& v) override {
    const StepTokens& t = *v.tokens;
    const Routing& rt = *v.routing;
    if (s_.pure_decode_) {
      distinct_.clear();
      for (int64_t r = 0; r < t.n_tokens; ++r)
        for (int j = 0; j < rt.k; ++j)
          if (rt.id(r, j) >= 0) distinct_.push_back(rt.id(r, j));
      std::sort(distinct_.begin(), distinct_.end());
      s_.step_distinct_ += static_cast<uint64_t>(std::unique(distinct_.begin(), distinct_.end()) - distinct_.begin());
      ++s_.step_moe_layers_;
    }
    const int32_t n_expert = static_cast<int32_t>(s_.engine_.model().expert_layout().n_expert);
    for (int64_t r = 0; r < t.n_tokens; ++r) {
      Active* a = active(t.seq_ids[r]);
      if (!a) continue;
      const bool last_row = r + 1 == t.n_tokens || t.seq_ids[r + 1] != t.seq_ids[r];
      ++a->usage.routed_rows;
      const int64_t trow = trace_row_[static_cast<size_t>(r)];
      for (int j = 0; j < rt.k; ++j) {
        const int32_t e = rt.id(r, j);
        if (e < 0) continue;
        ++a->usage.expert_slots;
        const int32_t key = v.layer * n_expert + e;
        a->step_keys.push_back(key);
        if (last_row) a->next_experts.push_back(key);
        if (trow >= 0) a->trace[static_cast<size_t>(trow)].layers[static_cast<size_t>(v.layer)].push_back({e, rt.weight(r, j)});
      }
    }
  }

 private:
  Active* active(int32_t slot) {
    if (slot < 0 || static_cast<size_t>(slot) >= s_.slots_.size()) return nullptr;
    return s_.slots_[static_cast<size_t>(slot)].seq.get();
  }
  BatchScheduler& s_;
  std::vector<int64_t> trace_row_;
  std::vector<int32_t> distinct_;
};

BatchScheduler::BatchScheduler(Engine& engine, const Tokenizer* tok, ForwardOptions fo, ThreadPool& pool,
                               SchedulerOptions o, std::vector<ForwardObserver*> observers)
    : engine_(engine), tok_(tok), pool_(pool), opts_(o), forward_(engine.model(), engine.store(), std::move(fo)),
      sig_(std::make_shared<SchedulerSignal>()) {
  if (opts_.slots < 1) fail("scheduler: --slots {} must be at least 1", opts_.slots);
  if (opts_.parallel < 1 || opts_.parallel > opts_.slots)
    fail("scheduler: --parallel {} must be between 1 and the number of slots ({})", opts_.parallel, opts_.slots);
  if (opts_.step_tokens < kChunkAlign || opts_.step_tokens % kChunkAlign != 0)
    fail("scheduler: --step-tokens {} must be a positive multiple of {}", opts_.step_tokens, kChunkAlign);
  if (opts_.n_ctx < 2) fail("scheduler: a context of {} positions per slot is too small", opts_.n_ctx);
  if (opts_.max_wait < 1) fail("scheduler: --max-wait {} must be at least 1", opts_.max_wait);
  default_plan_ = std::make_shared<const RoutingPlan>(forward_.routing_plan());
  slots_.resize(static_cast<size_t>(opts_.slots));
  for (Slot& s : slots_) {
    s.kv = std::make_unique<KvCache>(engine.model().spec(), opts_.n_ctx);
    s.logits.resize(static_cast<size_t>(engine.model().spec().n_vocab));
  }
  step_observer_ = std::make_unique<StepObserver>(*this);
  forward_.add_observer(step_observer_.get());
  for (ForwardObserver* obs : observers) forward_.add_observer(obs);
  const ExpertLayout& layout = engine.model().expert_layout();
  step_hit_.assign(static_cast<size_t>(std::max(1, layout.n_layer() * layout.n_expert)), -1);
  if (BudgetedExpertStore* st = engine.offload_store()) {
    const int n_expert = layout.n_expert;
    st->set_acquire_listener([this, n_expert](int layer, int expert, bool hit) {
      step_hit_[static_cast<size_t>(layer * n_expert + expert)] = hit ? 1 : 0;
    });
  }
  stats_.slots = opts_.slots;
  thread_ = std::thread([this] { loop(); });
}

BatchScheduler::~BatchScheduler() {
  {
    std::lock_guard<std::mutex> lock(sig_->mu);
    stop_ = true;
    ++sig_->wakes;
    sig_->cv.notify_all();
  }
  thread_.join();
  if (BudgetedExpertStore* st = engine_.offload_store()) st->set_acquire_listener(nullptr);
}

std::shared_ptr<const RoutingPlan> BatchScheduler::compile_routing(const RoutingPolicy& policy) const {
  const ModelSpec& spec = model().spec();
  int model_k = 0;
  for (const LayerSpec& L : spec.layers)
    if (L.is_moe) model_k = std::max(model_k, L.moe.n_expert_used);
  if (opts_.max_experts >= 0) {
    const int limit = std::max(model_k, opts_.max_experts);
    const int need = policy_max_experts(policy);
    // Errors start with the policy key that asks for the experts (a server names it as the parameter).
    if (need < 0)
      fail("top_p: without top_p_max_k it may select every expert, but this server plans for at most {} experts per "
           "token (moe serve --max-experts)",
           limit);
    if (need > limit) {
      const char* key = policy.top_p >= 0 ? "top_p_max_k" : policy.experts == need ? "experts" : "experts_per_layer";
      fail("{}: {} experts per token, but this server plans for at most {} (moe serve --max-experts)", key, need, limit);
    }
  }
  return std::make_shared<const RoutingPlan>(policy, routing_shape(spec));
}

std::vector<std::shared_ptr<SequenceHandle>> BatchScheduler::submit(std::vector<SequenceRequest> reqs,
                                                                    std::vector<std::shared_ptr<SequenceSink>> sinks) {
  if (reqs.size() != sinks.size()) fail("scheduler: {} requests but {} sinks", reqs.size(), sinks.size());
  const int64_t n_vocab = model().spec().n_vocab;
  for (const SequenceRequest& r : reqs) {
    if (r.prompt.empty()) fail("the prompt is empty");
    if (static_cast<int64_t>(r.prompt.size()) >= opts_.n_ctx)
      fail("the prompt has {} tokens but the context is {} per sequence", r.prompt.size(), opts_.n_ctx);
    for (int32_t id : r.prompt)
      if (id < 0 || id >= n_vocab) fail("prompt token id {} is outside the vocabulary [0, {})", id, n_vocab);
  }
  std::vector<std::shared_ptr<SequenceHandle>> handles;
  const auto now = Clock::now();
  std::lock_guard<std::mutex> lock(sig_->mu);
  if (stop_) fail("scheduler: shutting down");
  const size_t free_slots = static_cast<size_t>(std::max(0, opts_.slots - n_active_.load()));
  if (queue_.size() + reqs.size() > opts_.max_queue + free_slots)
    throw QueueFull(fmt::format("{} sequences are waiting for a slot (the queue holds {})", queue_.size(),
                                opts_.max_queue));
  for (size_t i = 0; i < reqs.size(); ++i) {
    auto h = std::make_shared<SequenceHandle>();
    h->signal_ = sig_;
    handles.push_back(h);
    queue_.push_back({std::move(reqs[i]), std::move(sinks[i]), h, now});
  }
  stats_.queued = queue_.size();
  ++sig_->wakes;
  sig_->cv.notify_all();
  return handles;
}

SchedulerStats BatchScheduler::stats() const {
  std::lock_guard<std::mutex> lock(sig_->mu);
  SchedulerStats s = stats_;
  s.active = n_active_.load();
  // Rates over the window ending now (they fall to 0 when nothing runs).
  const auto now = Clock::now();
  if (!recent_.empty()) {
    auto base = recent_.front();
    for (const auto& e : recent_) {
      if (seconds_between(e.first, now) > kRateWindowSeconds) base = e;
    }
    const double dt = std::max(1e-3, std::min(kRateWindowSeconds, seconds_between(base.first, now)));
    s.recent_prompt_tok_s = static_cast<double>(stats_.prompt_tokens - base.second.first) / dt;
    s.recent_tok_s = static_cast<double>(stats_.generated_tokens - base.second.second) / dt;
  }
  return s;
}

void BatchScheduler::count_tokens(uint64_t prompt, uint64_t generated) {
  std::lock_guard<std::mutex> lock(sig_->mu);
  stats_.prompt_tokens += prompt;
  stats_.generated_tokens += generated;
}

void BatchScheduler::loop() {
  uint64_t seen = 0;
  for (;;) {
    std::vector<Queued> cancelled, admitted;
    {
      std::unique_lock<std::mutex> lock(sig_->mu);
      sig_->cv.wait(lock, [&] {
        return stop_ || sig_->wakes != seen || n_active_.load() > 0 ||
               (!queue_.empty() && n_active_.load() < opts_.slots);
      });
      seen = sig_->wakes;
      if (stop_) break;
      for (auto it = queue_.begin(); it != queue_.end();) {
        if (it->handle->cancelled()) {
          cancelled.push_back(std::move(*it));
          it = queue_.erase(it);
        } else {
          ++it;
        }
      }
      int free_slots = opts_.slots - n_active_.load();
      while (free_slots-- > 0 && !queue_.empty()) {
        admitted.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      stats_.queued = queue_.size();
    }
    for (Queued& q : cancelled) finish_queued(q, FinishReason::Cancelled);
    for (Queued& q : admitted) {
      size_t slot = 0;
      while (slots_[slot].seq) ++slot;
      admit(std::move(q), slot);
    }
    for (size_t i = 0; i < slots_.size(); ++i)
      if (slots_[i].seq && slots_[i].seq->handle->cancelled()) finish(i, FinishReason::Cancelled);
    step();
  }
  for (size_t i = 0; i < slots_.size(); ++i)
    if (slots_[i].seq) finish(i, FinishReason::Cancelled);
  std::deque<Queued> rest;
  {
    std::lock_guard<std::mutex> lock(sig_->mu);
    rest.swap(queue_);
  }
  for (Queued& q : rest) finish_queued(q, FinishReason::Cancelled);
}

void BatchScheduler::admit(Queued q, size_t slot) {
  auto a = std::make_unique<Active>(std::move(q.req), tok_);
  a->sink = std::move(q.sink);
  a->handle = std::move(q.handle);
  a->submitted = q.submitted;
  a->admitted_no = ++admitted_no_;
  a->last_step = step_no_;
  a->usage.prompt_tokens = static_cast<int64_t>(a->req.prompt.size());
  a->usage.queue_seconds = seconds_between(q.submitted, Clock::now());
  slots_[slot].seq = std::move(a);
  ++n_active_;
}

void BatchScheduler::finish_queued(Queued& q, FinishReason reason) {
  SequenceResult r;
  r.reason = reason;
  r.usage.prompt_tokens = static_cast<int64_t>(q.req.prompt.size());
  r.usage.queue_seconds = r.usage.total_seconds = seconds_between(q.submitted, Clock::now());
  {
    std::lock_guard<std::mutex> lock(sig_->mu);
    ++stats_.finished[static_cast<int>(reason)];
  }
  q.sink->on_finish(r);
}

void BatchScheduler::finish(size_t slot, FinishReason reason, const std::string& error) {
  Active& a = *slots_[slot].seq;
  SequenceResult r;
  r.reason = reason;
  r.error = error;
  if (a.decoder && reason != FinishReason::Cancelled && reason != FinishReason::Error && !a.stop.stopped()) {
    r.tail = a.stop.push(a.decoder->flush());
    if (a.stop.stopped()) r.reason = FinishReason::Stop;
    r.tail += a.stop.flush();
  }
  a.usage.completion_tokens = a.generated;
  a.usage.total_seconds = seconds_between(a.submitted, Clock::now());
  r.usage = a.usage;
  r.trace = std::move(a.trace);
  {
    std::lock_guard<std::mutex> lock(sig_->mu);
    ++stats_.finished[static_cast<int>(r.reason)];
  }
  std::shared_ptr<SequenceSink> sink = std::move(a.sink);
  slots_[slot].seq.reset();
  --n_active_;
  sink->on_finish(r);
}

std::vector<size_t> BatchScheduler::choose_decoders(const std::vector<size_t>& ready) {
  std::vector<uint64_t> wait;
  std::vector<const std::vector<int32_t>*> experts;
  for (size_t i : ready) {
    const Active& a = *slots_[i].seq;
    wait.push_back(step_no_ - a.last_step);
    experts.push_back(&a.experts);
  }
  std::vector<size_t> picked =
      choose_batch(opts_.policy, static_cast<size_t>(opts_.parallel), opts_.max_wait, wait, experts);
  for (size_t& p : picked) p = ready[p];
  return picked;
}

bool BatchScheduler::step() {
  // Decoding sequences (one row each), oldest first; then prompts, oldest first.
  std::vector<size_t> ready, prefill;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const Active* a = slots_[i].seq.get();
    if (!a) continue;
    if (a->pending >= 0) ready.push_back(i);
    else if (a->prompt_done < static_cast<int64_t>(a->req.prompt.size())) prefill.push_back(i);
  }
  auto older = [&](size_t x, size_t y) { return slots_[x].seq->admitted_no < slots_[y].seq->admitted_no; };
  std::sort(ready.begin(), ready.end(), older);
  std::sort(prefill.begin(), prefill.end(), older);
  const std::vector<size_t> decoders = choose_decoders(ready);

  std::vector<SeqSpan> spans;
  std::vector<size_t> span_slot;
  for (size_t i : decoders) {
    Active& a = *slots_[i].seq;
    SeqSpan sp;
    sp.kv = slots_[i].kv.get();
    sp.tokens = &a.pending;
    sp.n_tokens = 1;
    sp.pos0 = a.n_past;
    sp.seq_id = static_cast<int32_t>(i);
    sp.logits = slots_[i].logits.data();
    spans.push_back(sp);
    span_slot.push_back(i);
  }
  int64_t budget = opts_.step_tokens;
  for (size_t i : prefill) {
    Active& a = *slots_[i].seq;
    const int64_t n_prompt = static_cast<int64_t>(a.req.prompt.size());
    const int64_t rest = n_prompt - a.prompt_done;
    const int64_t take = rest <= budget ? rest : budget / kChunkAlign * kChunkAlign;
    if (take <= 0) break;
    SeqSpan sp;
    sp.kv = slots_[i].kv.get();
    sp.tokens = a.req.prompt.data() + a.prompt_done;
    sp.n_tokens = take;
    sp.pos0 = a.prompt_done;
    sp.seq_id = static_cast<int32_t>(i);
    sp.logits = a.prompt_done + take == n_prompt ? slots_[i].logits.data() : nullptr;
    spans.push_back(sp);
    span_slot.push_back(i);
    budget -= take;
  }
  if (spans.empty()) return false;

  for (size_t i : span_slot) {
    Active& a = *slots_[i].seq;
    a.in_step = true;
    a.step_keys.clear();
    a.next_experts.clear();
  }
  // Each span's rows route under its sequence's policy; a step where all use the default routes as one.
  row_policies_.clear();
  bool own_policy = false;
  for (size_t s = 0; s < spans.size(); ++s) own_policy |= slots_[span_slot[s]].seq->req.routing != nullptr;
  if (own_policy) {
    int64_t row = 0;
    for (size_t s = 0; s < spans.size(); ++s) {
      const auto& plan = slots_[span_slot[s]].seq->req.routing;
      row_policies_.push_back({row, row + spans[s].n_tokens, plan ? plan : default_plan_});
      row += spans[s].n_tokens;
    }
  }
  forward_.set_row_policies(row_policies_);
  std::fill(step_hit_.begin(), step_hit_.end(), int8_t{-1});
  pure_decode_ = !decoders.empty() && spans.size() == decoders.size();
  step_distinct_ = step_moe_layers_ = 0;
  const auto t0 = Clock::now();
  try {
    forward_.run(spans.data(), spans.size(), pool_);
  } catch (const std::exception& e) {
    // Nothing of a refused step was written; a step that failed midway (an expert read error) left
    // its sequences' caches unusable. Either way those sequences end with the error.
    for (size_t i : span_slot)
      if (slots_[i].seq) finish(i, FinishReason::Error, e.what());
    return true;
  }
  const double dt = seconds_between(t0, Clock::now());
  ++step_no_;
  const bool resident = engine_.offload_store() == nullptr;
  uint64_t prompt_rows = 0, decode_rows = 0;
  for (size_t s = 0; s < spans.size(); ++s) {
    Active& a = *slots_[span_slot[s]].seq;
    a.in_step = false;
    a.last_step = step_no_;
    if (spans[s].tokens == &a.pending) {
      ++decode_rows;
      a.n_past += 1;
    } else {
      prompt_rows += static_cast<uint64_t>(spans[s].n_tokens);
      a.prompt_done += spans[s].n_tokens;
      a.n_past = a.prompt_done;
    }
    // Store hits of the experts this sequence used in the step (an expert serving several sequences
    // was one acquire, a hit or a miss for each of them).
    std::sort(a.step_keys.begin(), a.step_keys.end());
    a.step_keys.erase(std::unique(a.step_keys.begin(), a.step_keys.end()), a.step_keys.end());
    for (int32_t key : a.step_keys) {
      const int8_t h = step_hit_[static_cast<size_t>(key)];
      if (h == 1 || (h < 0 && resident)) ++a.usage.store_hits;
      else if (h == 0) ++a.usage.store_misses;
    }
    std::sort(a.next_experts.begin(), a.next_experts.end());
    a.next_experts.erase(std::unique(a.next_experts.begin(), a.next_experts.end()), a.next_experts.end());
    a.experts.swap(a.next_experts);
  }
  {
    std::lock_guard<std::mutex> lock(sig_->mu);
    ++stats_.steps;
    stats_.step_seconds += dt;
    if (pure_decode_) {
      ++stats_.decode_steps;
      stats_.decode_step_rows += decode_rows;
      stats_.decode_step_seconds += dt;
      stats_.decode_step_distinct_experts += step_distinct_;
      stats_.decode_step_moe_layers += step_moe_layers_;
    }
    stats_.decode_rows += decode_rows;
    stats_.prompt_tokens += prompt_rows;
    const auto now = Clock::now();
    recent_.push_back({now, {stats_.prompt_tokens, stats_.generated_tokens}});
    while (recent_.size() > 2 && seconds_between(recent_[1].first, now) > kRateWindowSeconds) recent_.pop_front();
  }
  for (size_t s = 0; s < spans.size(); ++s)
    if (spans[s].logits && slots_[span_slot[s]].seq) sample(span_slot[s], spans[s].logits);
  return true;
}

void BatchScheduler::sample(size_t slot, const float* logits) {
  Active& a = *slots_[slot].seq;
  const int64_t n_vocab = model().spec().n_vocab;
  const float* l = logits;
  if (!a.req.logit_bias.empty()) {
    biased_.assign(logits, logits + n_vocab);
    for (const auto& [id, bias] : a.req.logit_bias)
      if (id >= 0 && id < n_vocab) biased_[static_cast<size_t>(id)] += bias;
    l = biased_.data();
  }
  const int32_t id = a.sampler.sample(l, n_vocab);
  if (!a.got_first) {
    a.got_first = true;
    a.usage.first_token_seconds = seconds_between(a.submitted, Clock::now());
  }
  if (tok_ && !a.req.ignore_eos && tok_->is_eog(id)) {
    finish(slot, FinishReason::Stop);
    return;
  }
  GeneratedToken g;
  g.id = id;
  if (a.req.top_logprobs >= 0) {
    const float mx = *std::max_element(l, l + n_vocab);
    double sum = 0.0;
    for (int64_t i = 0; i < n_vocab; ++i) sum += std::exp(static_cast<double>(l[i]) - mx);
    const double lse = mx + std::log(sum);
    g.logprob = static_cast<float>(l[id] - lse);
    const size_t n_top = std::min<size_t>(static_cast<size_t>(a.req.top_logprobs), static_cast<size_t>(n_vocab));
    if (n_top > 0) {
      top_scratch_.clear();
      for (int64_t i = 0; i < n_vocab; ++i) top_scratch_.push_back({l[i], static_cast<int32_t>(i)});
      std::partial_sort(top_scratch_.begin(), top_scratch_.begin() + static_cast<std::ptrdiff_t>(n_top),
                        top_scratch_.end(), [](const auto& x, const auto& y) {
                          return x.first > y.first || (x.first == y.first && x.second < y.second);
                        });
      for (size_t i = 0; i < n_top; ++i)
        g.top.push_back({top_scratch_[i].second, static_cast<float>(top_scratch_[i].first - lse)});
    }
  }
  if (a.decoder) g.text = a.stop.push(a.decoder->push(id));
  ++a.generated;
  count_tokens(0, 1);
  a.sink->on_token(g);
  if (a.stop.stopped()) {
    finish(slot, FinishReason::Stop);
    return;
  }
  if ((a.req.max_tokens >= 0 && a.generated >= a.req.max_tokens) || a.n_past >= opts_.n_ctx) {
    finish(slot, FinishReason::Length);
    return;
  }
  a.pending = id;
}

std::vector<size_t> choose_batch(SchedulePolicy policy, size_t parallel, int max_wait, const std::vector<uint64_t>& wait,
                                 const std::vector<const std::vector<int32_t>*>& experts) {
  const size_t n = wait.size();
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return wait[a] > wait[b]; });
  if (n <= parallel || policy == SchedulePolicy::Fcfs) {
    order.resize(std::min(n, parallel));
    return order;
  }
  std::vector<size_t> picked;
  std::vector<uint8_t> used(n, 0);
  std::vector<int32_t> uni, merged;
  auto take = [&](size_t i) {
    picked.push_back(i);
    used[i] = 1;
    merged.clear();
    std::set_union(uni.begin(), uni.end(), experts[i]->begin(), experts[i]->end(), std::back_inserter(merged));
    uni.swap(merged);
  };
  for (size_t i : order)
    if (picked.size() < parallel && wait[i] >= static_cast<uint64_t>(max_wait)) take(i);
  if (picked.empty()) take(order[0]);
  while (picked.size() < parallel) {
    size_t best = n;
    size_t best_cost = 0;
    for (size_t i : order) {
      if (used[i]) continue;
      // Keys of i not yet in the union (both sorted).
      size_t cost = 0;
      auto u = uni.begin();
      for (int32_t key : *experts[i]) {
        while (u != uni.end() && *u < key) ++u;
        if (u == uni.end() || *u != key) ++cost;
      }
      if (best == n || cost < best_cost) {
        best = i;
        best_cost = cost;
      }
    }
    take(best);
  }
  return picked;
}

}  // namespace moe
