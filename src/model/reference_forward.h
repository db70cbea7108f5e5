// A naive fp32 reference forward pass: no threads, no SIMD, no KV cache, no activation quantization.
// Weights are dequantized to fp32 and every sum is a plain loop. It is deliberately written apart from
// the optimized path (its own routing, attention and FFN code) so that it can serve as the oracle
// for kernels, routing strategies and offload modes.
#pragma once
#include <cstdint>
#include <vector>

#include "model/weights.h"

namespace moe {

// Logits for every position of `tokens` (starting at position 0), [n_tokens][n_vocab].
std::vector<float> reference_forward(const Model& model, const std::vector<int32_t>& tokens);

}  // namespace moe
