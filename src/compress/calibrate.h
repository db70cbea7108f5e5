// `moe calibrate`: one pass of calibration text through the inference forward pass, collecting the
// statistics of compress/calib_stats.h with a ForwardObserver (design.md seam 4) — no second forward path.
// The observer asks for the router logits, every expert's unweighted outputs and the MoE block's residual
// and routed output; observing never changes the numbers.
//
// The reconstruction errors need each expert's outputs with its weights quantized to the candidate types.
// They are computed after the pass from a per-layer sample of token inputs kept by the observer (reservoir
// sampling, fixed seed, about recon_tokens per expert on average): the expert's matrices are dequantized to
// fp32, quantized to each candidate with the model-file quantizers and dequantized again, and the SwiGLU
// FFN is evaluated in fp32 (sgemm) with and without.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "base/thread_pool.h"
#include "compress/calib_stats.h"
#include "model/forward_observer.h"
#include "model/weights.h"

namespace moe::compress {

struct CalibrateOptions {
  int tcess_k = 1;                 // PreMoe keeps each token's top-k' router logits (its code: 1)
  std::vector<DType> recon_types;  // candidate types for the reconstruction errors (empty: none)
  int recon_tokens = 64;           // sampled tokens per expert, on average
  uint64_t seed = 1;
};

class CalibrationObserver final : public ForwardObserver {
 public:
  CalibrationObserver(const Model& model, const std::vector<std::string>& labels, const CalibrateOptions& o);

  // Tokens of the following steps count for this label (index into the labels given).
  void set_label(size_t label) { label_ = label; }

  ObserverNeeds needs() const override;
  void on_routing(const MoeLayerRouting& r) override;
  void on_expert_output(const ExpertOutputs& out) override;
  void on_moe_output(const MoeLayerOutput& out) override;

  CalibStats& stats() { return stats_; }

  // The reservoir of one MoE layer: sampled tokens' inputs and their routing.
  struct Sample {
    std::vector<float> x;        // [n][n_embd]
    std::vector<int32_t> ids;    // [n][k]
    std::vector<float> weights;  // [n][k]
    int k = 0;
    uint64_t seen = 0;
    size_t n() const { return k ? ids.size() / static_cast<size_t>(k) : 0; }
  };
  const Sample& sample(size_t moe_layer_index) const { return samples_[moe_layer_index]; }
  size_t layer_index(int layer) const;

 private:
  const Model& model_;
  CalibrateOptions opts_;
  CalibStats stats_;
  size_t label_ = 0;
  std::vector<int> layer_slot_;        // model layer -> index into stats_.layers (-1: dense)
  std::vector<Sample> samples_;
  std::vector<size_t> reservoir_cap_;  // per MoE layer
  std::mt19937_64 rng_;
  // The current layer's routing, as on_routing saw it (copied: views die with the call).
  int cur_layer_ = -1;
  int64_t cur_tokens_ = 0;
  int cur_k_ = 0;
  std::vector<int32_t> ids_;
  std::vector<float> w_, g_, residual_, easy_;  // [T][k] weights, renormalized scores, [T][d] h, [T][k] w*||E||
};

// Progress: fraction done and a short description.
using CalibrateProgress = std::function<void(double frac, const std::string& what)>;

// Adds the reconstruction errors (recon, recon_ref, recon_n) for obs's options, reading the experts'
// weights from `model_path` with pread (the model may be streaming its experts).
void add_reconstruction_errors(CalibrationObserver& obs, const Model& model, ThreadPool& pool,
                               const CalibrateProgress& progress = nullptr);

// The SwiGLU expert FFN in fp32: Y[n][d] = Wd (silu(Wg x) * (Wu x)), weights row-major [ff][d] and [d][ff].
void expert_ffn_f32(const float* X, int64_t n, int64_t d, int64_t ff, const float* Wg, const float* Wu,
                    const float* Wd, float* Y, float* scratch /* 2 * n * ff */);

// An expert's three matrices dequantized to fp32 (gate [ff][d], up [ff][d], down [d][ff]), read with pread.
struct ExpertF32 {
  std::vector<float> gate, up, down;
};
ExpertF32 read_expert_f32(const gguf::File& f, const Model& model, int layer, int expert);

}  // namespace moe::compress
