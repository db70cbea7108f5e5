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
#include "model/forward_observer.h"
#include "model/weights.h"
#include "moe/executor.h"
#include "moe/expert_store.h"
#include "moe/router.h"
#include "moe/transition_table.h"

namespace moe {

// Per-layer K and V for positions [0, n_ctx), fp16, head-major: [layer][kv head][pos][head_dim]. A
// decoded token reads every position of one kv head per work item, so each head's keys and values
// are one contiguous stream (position-major rows put 256 useful bytes in every 4 KiB and ran the
// attention of a 4k context at a fraction of the memory bandwidth).
class KvCache {
 public:
  KvCache(const ModelSpec& spec, int64_t n_ctx);
  int64_t n_ctx() const { return n_ctx_; }
  int64_t head_dim() const { return head_dim_; }
  // Position 0 of kv head `head` in `layer`; position p is head_dim() halves further on.
  uint16_t* k(int layer, int head) { return base(k_, layer, head); }
  uint16_t* v(int layer, int head) { return base(v_, layer, head); }
  // Stores the K and V rows (all kv heads, fp32) of one position.
  void store(int layer, int64_t pos, const float* k_row, const float* v_row);
  // Widens the fp16 K and V rows of positions [p0, p1) to fp32 rows of kv_dim (position-major).
  void widen(int layer, int64_t p0, int64_t p1, float* k_rows, float* v_rows);
  size_t bytes() const { return k_.size() + v_.size(); }

 private:
  uint16_t* base(const AlignedBuffer& b, int layer, int head) {
    return reinterpret_cast<uint16_t*>(b.data()) + ((static_cast<int64_t>(layer) * n_head_kv_ + head) * n_ctx_) * head_dim_;
  }
  int64_t n_ctx_, head_dim_, n_head_kv_;
  AlignedBuffer k_, v_;  // large caches get 2 MiB pages where the kernel allows
};

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
  // Precision tiers: thresholds for low-bit copies and skipped experts (moe/executor.h). With either,
  // the gate predictor also predicts each hinted expert's weight: it drops hints predicted below
  // skip_below and hints the low-bit copy for those predicted below low_bit_below. The transition
  // predictor (no weights) hints full precision, as without tiers.
  ExpertPrecision precision{};
  // Where the executor counts full / low-bit / skipped evaluations (the Engine's); null = not counted.
  ExpertUseCounters* expert_use = nullptr;
};

// How well prefetch prediction (either predictor) guessed the next layer's experts (per token and layer).
struct PredictionStats {
  uint64_t predicted = 0;  // experts hinted
  uint64_t actual = 0;     // experts then routed to
  uint64_t correct = 0;    // in both
  double precision() const { return predicted ? double(correct) / double(predicted) : 0.0; }
  double recall() const { return actual ? double(correct) / double(actual) : 0.0; }
};

class ForwardPass : private ExpertOutputSink {
 public:
  ForwardPass(const Model& model, ExpertStore& store, ForwardOptions options = {});

  // Runs n_tokens tokens at positions [pos0, pos0 + n_tokens) with the cache holding [0, pos0).
  // Writes logits for every token ([n_tokens][n_vocab]) if all_logits, else for the last one only.
  void run(const int32_t* tokens, int64_t n_tokens, int64_t pos0, KvCache& kv, ThreadPool& pool, float* logits,
           bool all_logits);

  // Observers (model/forward_observer.h), called in the order added. set_observer replaces them all
  // with one (nullptr: none). An observer's needs() are read when it is added.
  void add_observer(ForwardObserver* obs);
  void remove_observer(ForwardObserver* obs);
  void set_observer(ForwardObserver* obs);
  // The sequence id reported to observers for this pass's tokens (a Session's id).
  void set_seq_id(int32_t id) { seq_id_ = id; }
  int32_t seq_id() const { return seq_id_; }
  const PredictionStats& prediction_stats() const { return pred_stats_; }
  void reset_prediction_stats() { pred_stats_ = {}; }

 private:
  void attention(int il, int64_t n_tokens, int64_t pos0, KvCache& kv, ThreadPool& pool);
  void ffn(int il, int64_t n_tokens, int64_t pos0, ThreadPool& pool);
  void project(const WeightView& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool);
  // Several projections of the same input in one parallel region (one per decoded token and matrix
  // cost a barrier each); x is converted once per activation type the weights need.
  struct Projection {
    const WeightView* w;
    float* y;
  };
  void project_batch(const Projection* p, size_t n, const float* x, int64_t n_tokens, ThreadPool& pool);
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
  // The step being run, as observers see it.
  StepTokens step_;
  std::vector<int64_t> step_positions_;
  std::vector<int32_t> step_seq_ids_;
  std::vector<int32_t> obs_token_, obs_slot_;
  std::vector<float> obs_logits_, obs_routed_;
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
  std::vector<float> lookahead_logits_;
  std::vector<int32_t> hint_;
  std::vector<uint8_t> hint_low_bit_ok_;  // per hint_ entry, when the gate predictor predicts tiers
  std::vector<float> hint_max_weight_;    // per hint_ entry: largest predicted weight (-1: margin)
  Routing predicted_routing_;             // the next layer's predicted routing (for tiers)
  std::vector<double> transition_scores_;
  PredictionStats pred_stats_;
  std::vector<float> rope_cs_;
  struct AttnScratch {
    std::vector<float> scores, kf, acc, qr;
  };
  std::vector<AttnScratch> attn_scratch_;  // one per pool thread
  std::vector<float> k32_, v32_;           // the layer's cache widened to fp32 for a batch
};

}  // namespace moe
