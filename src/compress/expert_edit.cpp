#include "compress/expert_edit.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>

#include "base/error.h"
#include "compress/quant_mix.h"
#include "compress/quantize_model.h"
#include "model/weights.h"

namespace moe::compress {

namespace {

int proj_of(Role r) {
  switch (r) {
    case Role::ExpGate: return 0;
    case Role::ExpUp: return 1;
    case Role::ExpDown: return 2;
    case Role::ExpGateBias: return 3;
    case Role::ExpUpBias: return 4;
    case Role::ExpDownBias: return 5;
    default: return -1;
  }
}

uint64_t rows_of(const std::vector<int64_t>& dims) {
  uint64_t r = 1;
  for (size_t i = 1; i < dims.size(); ++i) r *= static_cast<uint64_t>(dims[i]);
  return r;
}

}  // namespace

void write_expert_edit(const gguf::File& src, const ExpertEdit& edit, const std::string& out,
                       const std::function<void(gguf::Writer&)>& metadata,
                       const std::function<void(int done, int total)>& progress) {
  const std::string arch_name = src.get_string("general.architecture");
  const ArchDescriptor* arch = find_arch(arch_name);
  if (!arch) fail("{}: unknown architecture '{}'", src.path(), arch_name);
  const ModelSpec spec = load_model_spec(src, *arch);
  if (edit.copy_from.size() != static_cast<size_t>(spec.n_layer) || edit.router_from.size() != edit.copy_from.size())
    fail("expert edit: {} layers given, the model has {}", edit.copy_from.size(), spec.n_layer);

  // The output spec: the same for every layer (GGUF holds one expert count and one width).
  ModelSpec out_spec = spec;
  int n_out = -1;
  for (int il = 0; il < spec.n_layer; ++il) {
    const LayerSpec& L = spec.layers[il];
    const auto& cf = edit.copy_from[il];
    const auto& rf = edit.router_from[il];
    if (!L.is_moe) {
      if (!cf.empty()) fail("expert edit: layer {} is dense", il);
      continue;
    }
    if (cf.empty() || cf.size() != rf.size()) fail("expert edit: layer {}: {} experts and {} router rows", il, cf.size(), rf.size());
    if (n_out >= 0 && static_cast<int>(cf.size()) != n_out)
      fail("expert edit: layer {} keeps {} experts, another layer {}; GGUF stores one expert count", il, cf.size(), n_out);
    n_out = static_cast<int>(cf.size());
    for (size_t j = 0; j < cf.size(); ++j) {
      if (cf[j] < -1 || cf[j] >= L.moe.n_expert || rf[j] < 0 || rf[j] >= L.moe.n_expert)
        fail("expert edit: layer {}: output expert {} from source {} / router row {} (the layer has {})", il, j, cf[j],
             rf[j], L.moe.n_expert);
      if (cf[j] < 0 && !edit.matrix) fail("expert edit: layer {}: new matrices without a source", il);
    }
    LayerSpec& O = out_spec.layers[il];
    O.moe.n_expert = n_out;
    O.moe.n_expert_used = std::min(L.moe.n_expert_used, n_out);
    if (edit.n_ff > 0) O.moe.n_ff_exp = edit.n_ff;
  }
  if (n_out < 0) fail("{}: the model has no MoE layers", src.path());
  bool width_changes = false;
  for (const LayerSpec& L : spec.layers) width_changes |= L.is_moe && edit.n_ff > 0 && edit.n_ff != L.moe.n_ff_exp;

  gguf::Writer w;
  for (const auto& [key, value] : src.metadata()) w.set(key, value);
  if (src.alignment() != w.alignment()) w.set_alignment(static_cast<uint32_t>(src.alignment()));
  const std::string p = arch_name + ".";
  int k_out = 0;
  for (const LayerSpec& L : out_spec.layers)
    if (L.is_moe) k_out = std::max(k_out, L.moe.n_expert_used);
  w.set(p + "expert_count", gguf::Value::make_u32(static_cast<uint32_t>(n_out)));
  w.set(p + "expert_used_count", gguf::Value::make_u32(static_cast<uint32_t>(k_out)));
  if (width_changes) w.set(p + "expert_feed_forward_length", gguf::Value::make_u32(static_cast<uint32_t>(edit.n_ff)));
  if (metadata) metadata(w);

  const std::vector<MixTensor> tensors = mix_tensors(src, *arch, spec);
  auto done = std::make_shared<int>(0);
  const int total = static_cast<int>(tensors.size());
  for (const MixTensor& t : tensors) {
    const gguf::TensorInfo* info = src.find_tensor(t.name);
    const bool moe_layer = t.layer >= 0 && spec.layers[t.layer].is_moe;
    const TensorRoleDesc* desc = nullptr;
    if (t.role)
      for (const TensorRoleDesc& d : arch->roles)
        if (d.role == *t.role) desc = &d;
    const bool per_expert = moe_layer && desc &&
                            (desc->placement == Placement::Expert || desc->placement == Placement::ExpertBias ||
                             *t.role == Role::Router || *t.role == Role::RouterBias || *t.role == Role::RouterLogitBias);
    if (!per_expert) {
      w.add_tensor_stream(t.name, info->type, info->dims, [&src, info, done, total, progress](uint8_t* dst, uint64_t n) {
        src.read_tensor_bytes(*info, 0, n, dst);
        if (progress) progress(++*done, total);
      });
      continue;
    }
    const int il = t.layer;
    // The expert axis is the last one; the output's shape comes from the role table.
    std::vector<int64_t> out_dims = desc->shape(out_spec, il);
    const int64_t E_src = info->dims.back();
    if (E_src != spec.layers[il].moe.n_expert)
      fail("{}: tensor '{}': last dimension {} is not the expert count {}", src.path(), t.name, E_src,
           spec.layers[il].moe.n_expert);
    const int proj = proj_of(*t.role);
    const bool is_router = *t.role == Role::Router || *t.role == Role::RouterBias || *t.role == Role::RouterLogitBias;
    const std::vector<int>& from = is_router ? edit.router_from[il] : edit.copy_from[il];
    if (!is_router && proj < 0)
      for (int f : from)
        if (f < 0) fail("{}: tensor '{}': new matrices are only defined for gate, up, down and their biases", src.path(),
                                 t.name);
    const int64_t cols = out_dims[0];
    DType type = info->type;
    bool any_new = false;
    for (int f : from) any_new |= f < 0;
    if (any_new) type = fallback_type(file_dtype(info->type), cols);
    const uint64_t src_slice = info->nbytes / static_cast<uint64_t>(E_src);
    // Bytes of one expert's slice: everything but the last (expert) axis.
    const uint64_t out_slice = out_dims.size() == 1 ? row_bytes(type, 1)
                                                    : row_bytes(type, cols) * rows_of({out_dims.begin(), out_dims.end() - 1});
    if (out_dims.size() == 1 && dtype_traits(type).block_elems != 1)
      fail("{}: tensor '{}': a per-expert vector of block type {} cannot be split", src.path(), t.name,
           dtype_traits(type).name);
    for (int f : from)
      if (f >= 0 && src_slice != out_slice)
        fail("{}: tensor '{}': a copied expert has {} bytes, the output slot {}", src.path(), t.name, src_slice, out_slice);
    const ExpertEdit* ed = &edit;
    const std::vector<int> from_copy = from;
    w.add_tensor_stream(t.name, type, out_dims,
                        [&src, info, ed, from_copy, il, proj, type, cols, out_slice, src_slice, done, total,
                         progress](uint8_t* dst, uint64_t) {
                          for (size_t j = 0; j < from_copy.size(); ++j) {
                            uint8_t* o = dst + j * out_slice;
                            if (from_copy[j] >= 0) {
                              src.read_tensor_bytes(*info, static_cast<uint64_t>(from_copy[j]) * src_slice, src_slice, o);
                              continue;
                            }
                            const std::vector<float> m = ed->matrix(il, static_cast<int>(j), proj);
                            const int64_t rows = static_cast<int64_t>(m.size()) / cols;
                            if (rows * cols != static_cast<int64_t>(m.size()) ||
                                row_bytes(type, cols) * static_cast<uint64_t>(rows) != out_slice)
                              fail("expert edit: layer {} expert {}: new matrix of {} values does not fit its slot", il,
                                   j, m.size());
                            const QuantizeFn q = storage_quantizer(type);
                            const size_t rb = row_bytes(type, cols);
                            for (int64_t r = 0; r < rows; ++r) {
                              if (type == DType::F32) std::memcpy(o + r * rb, m.data() + r * cols, rb);
                              else q(m.data() + r * cols, o + r * rb, cols);
                            }
                          }
                          if (progress) progress(++*done, total);
                        });
  }
  w.write(out);
  // The output must load as an ordinary model of its arch (shapes through the role table, counts, widths):
  // an arch that derives another width from the expert width (deepseek's shared experts) fails here.
  try {
    Model::load(out, gguf::DataAccess::Mmap, /*defer_experts=*/true);
  } catch (const Error& e) {
    ::unlink(out.c_str());
    fail("{}: the edited model does not load back ({}); nothing was written", out, e.what());
  }
}

std::string mask_for_kept(const ModelSpec& spec, const std::vector<std::vector<int>>& keep) {
  std::string s = "# experts removed by the pruning, for --mask-experts-file (layer:expert)\n";
  for (int il = 0; il < spec.n_layer; ++il) {
    const LayerSpec& L = spec.layers[il];
    if (!L.is_moe || il >= static_cast<int>(keep.size())) continue;
    std::string kept, masked;
    for (int e = 0; e < L.moe.n_expert; ++e) {
      const bool k = std::find(keep[il].begin(), keep[il].end(), e) != keep[il].end();
      std::string& dst = k ? kept : masked;
      if (k) dst += (dst.empty() ? "" : ",") + std::to_string(e);
      else dst += (dst.empty() ? "" : ",") + std::to_string(il) + ":" + std::to_string(e);
    }
    s += "# layer " + std::to_string(il) + " keeps " + kept + "\n";
    if (!masked.empty()) s += masked + "\n";
  }
  return s;
}

}  // namespace moe::compress
