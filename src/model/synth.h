// Random-weight models with a chosen shape, written as GGUF through the arch descriptor's role table
// (no per-arch tensor lists here). Tests use them to cover shapes the fixtures don't; `moe synth`
// uses them for benchmarks. Weights are drawn at scales that keep activations finite (1/sqrt(fan-in)).
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "model/arch.h"
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

  // Additions for `moe synth` (additive: the defaults keep the old behaviour and the old bytes).
  // Finer per-role type choice (e.g. llama.cpp's Q4_K_M mix: Q6_K for some attn_v / ffn_down).
  // Called for every matrix (n_dims >= 2) with the placement type as `def`; layer is -1 for globals.
  std::function<DType(Role, int layer, DType def)> type_override;
  // When a row length is not a multiple of the chosen type's block: use llama.cpp's fallback
  // (Q4_K->Q5_0, Q5_K->Q5_1, Q6_K->Q8_0, Q2_K/Q3_K->Q4_0, then F16) instead of going straight to F16.
  bool llama_fallback = false;
  int file_type = -1;        // general.file_type (llama_ftype) to write; -1 = derived as before
  // One RNG stream per row (a cheap near-normal draw) instead of one stream per tensor: rows are then
  // generated and quantized in parallel on `threads` threads, and the bytes do not depend on `threads`.
  bool row_streams = false;
  int threads = 1;
  // With row_streams: generate and quantize only this many distinct rows per tensor and fill the
  // others with copies picked by a hash of (seed, row). 0 = every row distinct. For bandwidth
  // benchmarks the bytes only need to be valid and not all equal; the reference K-quant
  // quantizers run at a few MB/s, so this is what makes a 17 GB model take minutes instead of hours.
  int64_t unique_rows = 0;
};

// Fills a ModelSpec with a uniform MoE shape (every layer MoE unless n_dense_lead > 0).
ModelSpec make_moe_shape(int n_layer, int64_t n_embd, int n_head, int n_head_kv, int64_t head_dim, int n_expert,
                         int k, int64_t n_ff_exp, int64_t n_vocab, int n_dense_lead = 0, int64_t n_ff_dense = 0,
                         int n_shared = 0, int64_t n_ff_shexp = 0);

// MLA attention (deepseek2) in the layout current converters write: one kv head whose key is the latent
// plus the rope key and whose value is the latent; n_rot = rope.
void set_mla(ModelSpec& s, int64_t q_lora, int64_t kv_lora, int64_t qk_nope, int64_t qk_rope, int64_t v_head);
// YaRN rope scaling by `factor` from an original context of n_ctx_orig.
void set_yarn(ModelSpec& s, float factor, int64_t n_ctx_orig);

// Writes the model atomically. `progress(done_bytes, total_bytes)` is called as tensors are written.
void write_synth_model(const std::string& path, const SynthConfig& cfg,
                       const std::function<void(uint64_t, uint64_t)>& progress = nullptr);

}  // namespace moe
