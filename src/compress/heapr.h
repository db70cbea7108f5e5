// HEAPr (techniques.md section 6): second-order importance of each expert neuron (row j of gate and up,
// column j of down): S_{e,j} = mean_t(u_{t,j}^2) * w_j^T M_e w_j with M_e = mean_t g_t g_t^T, where u is
// the activation entering down, w_j column j of W_down and g_t the gradient of the next-token loss at the
// expert's output for a token routed to it. w_j^T M_e w_j = mean_t (w_j . g_t)^2, so nothing of size
// d x d is formed.
//
// The gradient comes from the trainer's backward pass (train/train_model.h, MoeTransformer<float> with an
// expert-gradient hook): the model's weights are dequantized into it and each calibration window runs
// forward and backward once (the weights are not updated). The trainer covers the families it can train:
// qwen3moe, Mixtral-style llama with experts, and deepseek (v1, ungated shared experts). Others (olmoe's
// full-projection q/k norm, qwen2moe's gated shared expert, granitemoe's scales, sigmoid or
// group-limited gates) are refused with the trainer's reason.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "base/thread_pool.h"
#include "compress/calib_stats.h"

namespace moe::compress {

// Fills stats.layers[*].heapr (and heapr_tokens) from windows of token ids (each window: its tokens are
// the inputs, the next ones the targets; at least 2 tokens).
void add_heapr_scores(CalibStats& stats, const std::string& model_path,
                      const std::vector<std::vector<int32_t>>& windows, ThreadPool& pool,
                      const std::function<void(double, const std::string&)>& progress = nullptr);

}  // namespace moe::compress
