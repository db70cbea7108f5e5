// The optimized forward pass: threaded, SIMD kernels through the dtype table, activations converted
// to each weight's vec_dot format as llama.cpp does, K/V cached in fp16. Works for a batched prompt
// and for token-by-token decoding alike.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "base/direct_io.h"
#include "base/thread_pool.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "model/forward_observer.h"
#include "model/kv_cache.h"
#include "model/weights.h"
#include "moe/executor.h"
#include "moe/expert_store.h"
#include "moe/router.h"
#include "moe/routing_policy.h"
#include "moe/transition_table.h"

namespace moe {

// What predicts the next MoE layer's experts for prefetching (techniques.md section 5).
enum class PrefetchPredictor {
  Gate,        // cross-layer gate (Fate): the next layer's router applied to this layer's MoE input
  Transition,  // transition table (EdgeMoE): P(next-layer expert | this layer's experts) from traces
};

struct ForwardOptions {
  // Reproduce llama.cpp's CPU attention numerics exactly, including its small-batch kernel that rounds
  // Q to fp16 and accumulates V in fp16. Off by default: our fp32 attention is more accurate.
  bool llama_compat_attention = false;
  // Prompt batches attend with the per-token arithmetic of decoding, so logits are bit-identical
  // however a prompt is split into batches. Off by default: batches then attend in blocks of queries
  // with sgemm (1.2x faster prefill on OLMoE shapes), which changes the fp32 summation order.
  bool batch_invariant = false;
  // Prefetch prediction: after each MoE layer's routing, hint the next MoE layer's predicted
  // top-(k + margin) experts to the store (by `predictor`). -1 = off.
  int lookahead_margin = -1;
  PrefetchPredictor predictor = PrefetchPredictor::Gate;
  // The table PrefetchPredictor::Transition ranks with (shared: sessions may share one table). It must
  // match the model's layout (model/transitions.h loads and checks one).
  std::shared_ptr<const TransitionTable> transitions = nullptr;
  // Weight each current expert's row of the table by its routing weight (else 1 each).
  bool transition_weighted = true;
  // Precision tiers: the threshold for low-bit copies (moe/executor.h). With it, the gate predictor also
  // predicts each hinted expert's weight and hints the low-bit copy for those predicted below
  // low_bit_below. The transition predictor (no weights) hints full precision, as without tiers.
  ExpertPrecision precision{};
  // Where the executor counts full / low-bit evaluations, and the routing policy the pairs its minimum
  // weight skipped (the Engine's); null = not counted.
  ExpertUseCounters* expert_use = nullptr;
  // How this pass routes (moe/routing_policy.h): the default is the model's gate, bit for bit. Checked
  // against the model when the pass is made; predictions and prefetch hints follow it too (a masked
  // expert is never hinted).
  RoutingPolicy routing{};
  // Where routed tokens and selected experts are counted per layer (the Engine's); null = not counted.
  RoutingUseCounters* routing_use = nullptr;
};

// The experts per layer of a model, as routing policies are checked against them.
RoutingShape routing_shape(const ModelSpec& spec);

// A token range of one step routed under its own policy (a batched server step mixing requests).
struct RowPolicy {
  int64_t t0 = 0, t1 = 0;
  std::shared_ptr<const RoutingPlan> plan;  // compiled for this pass's model
};

// How well prefetch prediction (either predictor) guessed the next layer's experts (per token and layer).
struct PredictionStats {
  uint64_t predicted = 0;  // experts hinted
  uint64_t actual = 0;     // experts then routed to
  uint64_t correct = 0;    // in both
  double precision() const { return predicted ? double(correct) / double(predicted) : 0.0; }
  double recall() const { return actual ? double(correct) / double(actual) : 0.0; }
};

// One sequence's rows in a batched step (a server step mixing requests): its tokens at positions
// [pos0, pos0 + n_tokens) of its own KV cache, which holds [0, pos0).
struct SeqSpan {
  KvCache* kv = nullptr;
  const int32_t* tokens = nullptr;
  int64_t n_tokens = 0;
  int64_t pos0 = 0;
  int32_t seq_id = 0;       // reported to observers for these rows
  float* logits = nullptr;  // null: none wanted; else [n_tokens][n_vocab] (all_logits) or the last row's [n_vocab]
  bool all_logits = false;
};

class ForwardPass : private ExpertOutputSink {
 public:
  ForwardPass(const Model& model, ExpertStore& store, ForwardOptions options = {});

  // Runs n_tokens tokens at positions [pos0, pos0 + n_tokens) with the cache holding [0, pos0).
  // Writes logits for every token ([n_tokens][n_vocab]) if all_logits, else for the last one only.
  void run(const int32_t* tokens, int64_t n_tokens, int64_t pos0, KvCache& kv, ThreadPool& pool, float* logits,
           bool all_logits);

  // Several sequences in one step: the matmuls, routing and experts run over all rows together (a
  // step reads each expert it needs once), attention once per sequence over its own rows and cache.
  // Every row's numbers are those it gets in a step of its own span alone: everything but attention
  // is computed row by row (matmul outputs are vec_dot's bits for any token count, activations are
  // quantized per row, experts are summed per token in slot order), and a span attends exactly as
  // run() over the same rows would. Spans must use distinct caches. A step that is refused (a bad
  // token, a full context) writes nothing to any cache.
  void run(const SeqSpan* spans, size_t n_spans, ThreadPool& pool);

  // Observers (model/forward_observer.h), called in the order added. set_observer replaces them all
  // with one (nullptr: none). An observer's needs() are read when it is added.
  void add_observer(ForwardObserver* obs);
  void remove_observer(ForwardObserver* obs);
  void set_observer(ForwardObserver* obs);
  // The sequence id reported to observers for this pass's tokens (a Session's id).
  void set_seq_id(int32_t id) { seq_id_ = id; }
  int32_t seq_id() const { return seq_id_; }
  // The routing policy (replaces ForwardOptions::routing; throws, keeping the old one, when it does not
  // fit the model).
  void set_routing_policy(const RoutingPolicy& policy);
  const RoutingPolicy& routing_policy() const { return plan_->policy(); }
  const RoutingPlan& routing_plan() const { return *plan_; }
  // Per-range policies for the following run() calls: ranges must tile the step's tokens [0, n) in
  // order. Empty (the default): every token routes under the pass's own policy.
  void set_row_policies(std::vector<RowPolicy> rows) { row_policies_ = std::move(rows); }
  const PredictionStats& prediction_stats() const { return pred_stats_; }
  void reset_prediction_stats() { pred_stats_ = {}; }

 private:
  // Attention (model/forward_attention.cpp): the layer's normalized input xn_ -> tmp_ (after the
  // output projection), for the step's n_tokens rows: each span's rows at its positions, in its cache.
  void attention(int il, int64_t n_tokens, ThreadPool& pool);
  // Query, key and value rows into q_, k_, v_ (standard attention) or the absorbed query and the
  // latent key rows (MLA); row t is at position step_positions_[t].
  void attention_inputs(int il, int64_t n_tokens, ThreadPool& pool);
  void mla_inputs(int il, int64_t n_tokens, ThreadPool& pool);
  // Stores rows [r0, r1) of k_/v_ in the cache and attends their queries to it (into att_). Row t is at
  // position pos0 + t (pos0 may be negative: a span's first position minus its first row); n_tokens is
  // the span's row count, which picks the arithmetic (blocked or per row, llama.cpp's fp16 path).
  void attend(int il, int64_t r0, int64_t r1, int64_t n_tokens, int64_t pos0, KvCache& kv, ThreadPool& pool);
  // Rows that attend one by one straight from their fp16 caches, each with its own cache and position:
  // the rows of one span in attend(), or the decoded rows of every span of a step in one parallel region.
  struct AttendRow {
    int64_t t;     // row of q_ / att_
    KvCache* kv;
    int64_t pos;   // its position (its keys are already stored)
    bool fp16;     // llama.cpp's fp16 small-batch arithmetic
  };
  void attend_rows(int il, const AttendRow* rows, size_t n_rows, ThreadPool& pool);
  // Each head's latent attention output through attn_v_b, into mla_out_.
  void mla_values(int il, int64_t n_tokens, ThreadPool& pool);
  // One stacked per-head matrix (attn_k_b / attn_v_b) applied to each head's slice of x.
  void per_head_matmul(const WeightView& w, const float* x, int64_t x_stride, int64_t x_head_stride,
                       int64_t n_tokens, float* y, int64_t y_stride, int64_t y_head_stride, ThreadPool& pool);
  kernels::RopeParams rope_params(int il) const;
  void ffn(int il, int64_t n_tokens, ThreadPool& pool);
  void project(const WeightView& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool);
  // Layer il's router logits for x (with the router's own bias, if it has one).
  void router_logits(int il, const float* x, int64_t n_tokens, float* out, ThreadPool& pool);
  // Several projections of the same input in one parallel region (one per decoded token and matrix
  // cost a barrier each); x is converted once per activation type the weights need.
  struct Projection {
    const WeightView* w;
    float* y;
  };
  void project_batch(const Projection* p, size_t n, const float* x, int64_t n_tokens, ThreadPool& pool);
  // Routes one MoE layer's logits ([n_tokens][n_expert], overwritten with scores) under the policies
  // in force; `count` adds to the routing and skip counters (not for predictions).
  void route_layer(int il, int64_t n_tokens, float* logits, const float* bias, Routing& out, bool count);
  // Whether every policy in force masks the expert (then no prediction may hint it).
  bool masked_everywhere(int layer, int expert) const;
  // Both predictors fill predicted_ (per token) and hint_ (their union), then hint the store.
  void predict_next_layer(int il, int64_t n_tokens, ThreadPool& pool);  // gate
  void predict_next_layer_transition(int il, int64_t n_tokens);         // table

  // ExpertOutputSink: hands the executor's expert outputs to the observers.
  void on_expert_output(int layer, int expert, const std::pair<int32_t, int32_t>* members, int64_t n_rows,
                        const float* rows, int64_t n_embd) override;

  const Model& model_;
  ExpertStore& store_;
  ForwardOptions options_;
  std::vector<ForwardObserver*> observers_;
  ObserverNeeds needs_;  // the union of the observers' needs
  int32_t seq_id_ = 0;
  // The step's spans, each with its first row.
  struct StepSpan {
    SeqSpan in;
    int64_t row0 = 0;
  };
  std::vector<StepSpan> spans_;
  std::vector<AttendRow> attend_rows_;  // attention(): the single-row spans' rows
  std::vector<AttendRow> attend_row_scratch_;  // attend(): a span's rows that attend one by one
  std::vector<int32_t> step_ids_;       // the step's token ids when it has several spans
  std::vector<float> out_logits_;       // several spans: their logit rows before they are copied out
  // The step being run, as observers see it.
  StepTokens step_;
  std::vector<int64_t> step_positions_;
  std::vector<int32_t> step_seq_ids_;
  std::vector<int32_t> obs_token_, obs_slot_;
  std::vector<float> obs_logits_, obs_routed_;
  std::shared_ptr<const RoutingPlan> plan_;
  std::vector<RowPolicy> row_policies_;
  RouteScratch route_scratch_;
  ExpertExecutor executor_;
  FfnScratch ffn_scratch_;
  Routing routing_;
  // Activations, [n_tokens][width].
  std::vector<float> x_, xn_, q_, k_, v_, att_, tmp_, router_logits_, shexp_out_, moe_out_;
  kernels::ActBuffer act_;
  kernels::ActBuffer batch_act_[3];  // project_batch: one per distinct activation type
  std::vector<kernels::MatmulJob> batch_jobs_;
  std::vector<int64_t> batch_chunks_;
  // Lookahead: per token, the experts predicted for layer predicted_layer_.
  int predicted_layer_ = -1;
  std::vector<std::vector<int32_t>> predicted_;
  std::vector<float> lookahead_logits_, lookahead_scores_;
  std::vector<int32_t> hint_;
  std::vector<uint8_t> hint_low_bit_ok_;  // per hint_ entry, when the gate predictor predicts tiers
  std::vector<float> hint_max_weight_;    // per hint_ entry: largest predicted weight (-1: margin)
  Routing predicted_routing_;             // the next layer's predicted routing (for tiers)
  std::vector<double> transition_scores_;
  PredictionStats pred_stats_;
  std::vector<float> rope_cs_;
  std::vector<float> mla_q_, mla_qa_, mla_out_;  // MLA: full per-head queries, q low-rank, v_b outputs
  std::vector<kernels::ActBuffer> head_act_;    // per_head_matmul: one per head
  struct AttnScratch {
    std::vector<float> scores, kf, acc, qr;
  };
  std::vector<AttnScratch> attn_scratch_;  // one per pool thread
  std::vector<float> k32_, v32_;           // the layer's cache widened to fp32 for a batch
};

}  // namespace moe
