// A hand-made mixed-precision problem shared by the allocation tests (per tensor and per expert).
#pragma once
#include <functional>
#include <string>

#include "compress/calib_stats.h"
#include "compress/mixed_precision.h"

namespace moe::test {

struct HandMix {
  compress::CalibStats stats;
  compress::QuantizePlan plan;
};

// Two MoE layers of 4 experts, gate/up/down [256 x 32] per expert (row length 256, so every K type fits), F16 in
// the source and planned at Q4_K, then an F32 output norm; candidates Q2_K, Q4_K, Q8_0 whose base errors are 1,
// 0.1 and 0.001. Expert e of layer il is selected count(il, e) times with mean gate weight 0.5, and its error for
// candidate c and part p is recon(base error of c, il, e, p).
inline HandMix hand_mix(const std::function<double(int il, int e)>& count,
                        const std::function<double(double err, int il, int e, int p)>& recon) {
  HandMix h;
  h.stats.arch = "qwen3moe";
  h.stats.n_layer = 2;
  h.stats.recon_types = {DType::Q2_K, DType::Q4_K, DType::Q8_0};
  const double err[3] = {1.0, 0.1, 0.001};
  for (int il = 0; il < 2; ++il) {
    compress::LayerStats l;
    l.init(il, 4, 256, 0, 3);
    for (int e = 0; e < 4; ++e) {
      l.count[e] = count(il, e);
      l.weight_sum[e] = l.count[e] * 0.5;
      l.max_out[e] = 1;
      for (size_t c = 0; c < 3; ++c)
        for (int p = 0; p < compress::kReconParts; ++p) l.recon[(c * compress::kReconParts + p) * 4 + e] = recon(err[c], il, e, p);
    }
    h.stats.layers.push_back(l);
  }
  const Role roles[3] = {Role::ExpGate, Role::ExpUp, Role::ExpDown};
  const char* names[3] = {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"};
  for (int il = 0; il < 2; ++il)
    for (int p = 0; p < 3; ++p) {
      compress::MixTensor t;
      t.name = "blk." + std::to_string(il) + "." + names[p] + ".weight";
      t.role = roles[p];
      t.layer = il;
      t.dims = {256, 32, 4};
      t.type = DType::F16;
      h.plan.tensors.push_back(t);
      h.plan.types.push_back(DType::Q4_K);
      h.plan.src.push_back(nullptr);
      h.plan.bytes_out += row_bytes(DType::Q4_K, 256) * 32 * 4;
    }
  compress::MixTensor norm;
  norm.name = "output_norm.weight";
  norm.dims = {256};
  h.plan.tensors.push_back(norm);
  h.plan.types.push_back(DType::F32);
  h.plan.src.push_back(nullptr);
  h.plan.bytes_out += 1024;
  return h;
}

}  // namespace moe::test
