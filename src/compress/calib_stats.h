// Calibration statistics (`moe calibrate` writes them, `moe prune`, `moe merge` and `moe quantize --mixed`
// read them): per MoE layer and expert, what one pass over calibration text showed. Stored as a GGUF file
// (metadata + F32 tensors), so it has the same validating reader as models; load_stats() then checks every
// shape, count and value and names the file and tensor of anything wrong.
//
// Per MoE layer (E experts, F neurons per expert, L labels, C candidate types):
//   count       [E]        tokens routed to the expert (selections; empty slots skipped)
//   weight_sum  [E]        sum of the final routing weights it received
//   reap        [E]        sum over its tokens of g * ||E(x)||, g the gate score renormalized over the
//                          token's selected experts (REAP: divide by count for the mean)
//   easy_ep     [E]        sum over its tokens of w * ||E(x)|| * max(0, 1 - cos(h, h + r)) (EASY-EP)
//   max_out     [E]        max |E(x)| over its tokens and output elements (super experts)
//   out_norm    [E]        sum of ||E(x)||
//   logit_gram  [E x E]    sum over all tokens of z_i z_j, the router logits (M-SMoE's similarity)
//   tcess       [E x L]    per label, sum over its tokens of the top-k' logits (others zero) (PreMoe)
//   recon       [C x 4 x E] mean ||E'(x) - E(x)||^2 over sampled tokens with the expert's gate, up, down,
//                          or all three matrices quantized to candidate c (index 0..2 = gate/up/down, 3 = all)
//   recon_ref   [E]        mean ||E(x)||^2 over the same tokens; recon_n [E] how many tokens were sampled
//   heapr       [F x E]    HEAPr neuron scores mean(u^2) * mean((w_j . g)^2) (only with --heapr)
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tensor/dtype.h"

namespace moe {
class Model;
namespace gguf { class File; }
}  // namespace moe

namespace moe::compress {

inline constexpr int kReconParts = 4;  // gate, up, down, all

struct LayerStats {
  int layer = 0;
  int n_expert = 0;
  int64_t n_ff = 0;
  std::vector<double> count, weight_sum, reap, easy_ep, max_out, out_norm;
  std::vector<double> logit_gram;  // [E][E]
  std::vector<double> tcess;       // [L][E]
  std::vector<double> recon;       // [C][4][E]
  std::vector<double> recon_ref, recon_n;
  std::vector<double> heapr;       // [E][F] (empty when not computed)

  void init(int layer, int n_expert, int64_t n_ff, size_t n_labels, size_t n_types);
  double recon_at(size_t type, int part, int e) const {
    return recon[(type * kReconParts + static_cast<size_t>(part)) * static_cast<size_t>(n_expert) + static_cast<size_t>(e)];
  }
};

struct CalibStats {
  std::string arch;
  std::string model_file;         // file name the stats were made from (for messages)
  uint64_t fingerprint = 0;       // low_bit_base(model).fingerprint of that file
  int n_layer = 0;                // all layers of the model
  int64_t n_embd = 0;
  uint64_t tokens = 0;            // calibration tokens routed
  std::vector<std::string> labels;
  std::vector<double> label_tokens;  // per label
  int tcess_k = 1;
  std::vector<DType> recon_types;
  uint64_t recon_tokens = 0;      // sampling cap per expert
  uint64_t heapr_tokens = 0;      // tokens of the HEAPr pass (0: no HEAPr scores)
  std::vector<LayerStats> layers; // MoE layers, ascending

  const LayerStats* find_layer(int layer) const;
  size_t label_index(const std::string& label) const;  // throws naming the known labels
};

void save_stats(const CalibStats& s, const std::string& path);  // atomic
CalibStats load_stats(const std::string& path);
// Parses an opened GGUF (tests and the fuzz target use an in-memory one).
CalibStats parse_stats(const gguf::File& f);
// Throws unless the stats describe this model's MoE layers (arch, layers, experts per layer, widths).
// Returns false (and the caller may warn) when only the weights' fingerprint differs, e.g. stats made on
// the F16 file used for its quantized copy.
bool check_stats_match(const CalibStats& s, const Model& model, const std::string& stats_path);

}  // namespace moe::compress
