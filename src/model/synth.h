// Random-weight models with a chosen shape, written as GGUF through the arch descriptor's role table
// (no per-arch tensor lists here). Tests use them to cover shapes the fixtures don't; `moe synth`
// uses them for benchmarks. Weights are drawn at scales that keep activations finite (1/sqrt(fan-in)).
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "model/spec.h"
#include "tensor/dtype.h"

namespace moe {

struct SynthConfig {
  std::string arch = "qwen3moe";
  ModelSpec spec;           // shape; rope style/qk-norm etc. come from the arch on load
  DType attn_type = DType::F16;
  DType expert_type = DType::F16;
  DType shared_type = DType::F16;  // shared experts and dense FFN layers
  DType embd_type = DType::F16;
  DType output_type = DType::F16;
  DType router_type = DType::F32;
  uint64_t seed = 1;
  bool with_vocab = true;  // write a byte-level placeholder vocabulary so text tools work
};

// Fills a ModelSpec with a uniform MoE shape (every layer MoE unless n_dense_lead > 0).
ModelSpec make_moe_shape(int n_layer, int64_t n_embd, int n_head, int n_head_kv, int64_t head_dim, int n_expert,
                         int k, int64_t n_ff_exp, int64_t n_vocab, int n_dense_lead = 0, int64_t n_ff_dense = 0,
                         int n_shared = 0, int64_t n_ff_shexp = 0);

// Writes the model atomically. `progress(done_bytes, total_bytes)` is called as tensors are written.
void write_synth_model(const std::string& path, const SynthConfig& cfg,
                       const std::function<void(uint64_t, uint64_t)>& progress = nullptr);

}  // namespace moe
