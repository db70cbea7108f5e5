// The model writer for pruning and merging (design.md: "pruning and merging edit a model through the arch's
// role table"): every tensor whose role is indexed by routed expert (placements Expert and ExpertBias, the router's rows,
// and selection-bias entries, whose last axis is the expert) is rebuilt from a list of output experts per
// layer; everything else (attention, shared experts, dense layers, norms, embeddings) is copied byte for byte.
// The expert count, k (never above the experts left) and, when the width changes, the expert width are
// updated in the metadata; the result is an ordinary GGUF of the same arch.
//
// An output expert is either a copy of a source expert (its bytes, unchanged) or new fp32 matrices from a
// callback (merging, neuron pruning), quantized to the source tensor's type with the model-file quantizers
// (llama.cpp's fallback when a new row length does not fit the type's blocks). Streaming: one tensor in memory.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "format/gguf.h"
#include "model/arch.h"
#include "model/spec.h"

namespace moe::compress {

struct ExpertEdit {
  // Per model layer (empty for dense layers): for each output expert, the source expert whose bytes are
  // copied, or -1 for new matrices from `matrix`.
  std::vector<std::vector<int>> copy_from;
  // Per model layer: for each output expert, the source expert whose router row and selection-bias entry it
  // takes.
  std::vector<std::vector<int>> router_from;
  // New matrices: proj 0 = gate [n_ff][n_embd], 1 = up [n_ff][n_embd], 2 = down [n_embd][n_ff], row-major fp32;
  // for archs with per-expert biases also 3 = gate bias [n_ff], 4 = up bias [n_ff], 5 = down bias [n_embd].
  std::function<std::vector<float>(int layer, int out_expert, int proj)> matrix;
  int64_t n_ff = 0;  // output expert width (0: unchanged)
};

// Writes `out` atomically. `metadata` may add provenance keys. Throws on an inconsistent edit (counts that
// differ between layers, an expert index out of range, new matrices without a callback).
void write_expert_edit(const gguf::File& src, const ExpertEdit& edit, const std::string& out,
                       const std::function<void(gguf::Writer&)>& metadata = nullptr,
                       const std::function<void(int done, int total)>& progress = nullptr);

// The mask entries (route lab syntax, `--mask-experts-file`) that switch off, at run time, every expert that
// `keep` drops: "L:E" per removed expert, comma-separated, one line per layer with a comment naming the kept ones.
std::string mask_for_kept(const ModelSpec& spec, const std::vector<std::vector<int>>& keep);

}  // namespace moe::compress
