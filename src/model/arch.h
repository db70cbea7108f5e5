// The tensor-role table: one descriptor per architecture (design.md seam 1). Each arch file declares
// its metadata keys, its tensor roles with GGUF names and shapes, and its block structure. Loaders,
// `moe info`, the offload planner, quantizers and pruners all read this table; generic code never
// branches on the arch name.
#pragma once
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "model/spec.h"

namespace moe {
namespace gguf { class File; class Writer; }

enum class Role {
  TokenEmbd, OutputNorm, Output,
  AttnNorm, AttnQ, AttnK, AttnV, AttnOut, AttnQBias, AttnKBias, AttnVBias, AttnOutBias, AttnQNorm, AttnKNorm,
  FfnNorm,
  FfnGate, FfnUp, FfnDown,                     // dense FFN
  Router, RouterBias,                          // ffn_gate_inp, exp_probs_b
  ExpGate, ExpUp, ExpDown,                     // routed experts, stacked [n_expert] in one tensor
  ShexpGate, ShexpUp, ShexpDown, ShexpRouter,  // shared experts and their sigmoid gate
  Count
};

// Where a tensor's bytes belong, for accounting and residency planning.
enum class Placement { Embedding, Attention, Router, Expert, SharedExpert, DenseFfn, Norm, Output };

struct TensorRoleDesc {
  Role role;
  const char* gguf_name;   // printf pattern; "%d" is the layer index for per-layer tensors
  bool per_layer;
  Placement placement;
  // Expected dims (ggml order) for this layer, or empty if the tensor does not exist in this layer.
  std::function<std::vector<int64_t>(const ModelSpec&, int layer)> shape;
  bool optional = false;   // may be absent even when shape() is non-empty
};

struct ArchDescriptor {
  std::string name;  // general.architecture
  // Fills arch-specific fields of the spec from metadata (generic keys are read before this).
  std::function<void(const gguf::File&, ModelSpec&)> load_spec;
  std::vector<TensorRoleDesc> roles;
  // Writes the arch-specific metadata keys for a spec (the inverse of load_spec); used by writers
  // that create models (synth, train, prune). Generic keys are written by save_model_spec.
  std::function<void(const ModelSpec&, gguf::Writer&)> save_spec;
};

const ArchDescriptor* find_arch(const std::string& name);
std::vector<std::string> supported_archs();
const char* role_name(Role r);
const char* placement_name(Placement p);

// Builds a ModelSpec from metadata: the generic LLM keys, then the arch hook. Throws naming the key.
ModelSpec load_model_spec(const gguf::File& f, const ArchDescriptor& arch);

// Writes general.architecture and the generic LLM keys, then the arch hook.
void save_model_spec(const ModelSpec& spec, const ArchDescriptor& arch, gguf::Writer& w);

// Helpers shared by the arch files: standard role rows.
namespace roles {
std::vector<TensorRoleDesc> common_attention(bool with_qkv_bias, QkNorm qk_norm);
std::vector<TensorRoleDesc> common_io(bool output_optional);
std::vector<TensorRoleDesc> dense_ffn();
std::vector<TensorRoleDesc> routed_experts();
std::vector<TensorRoleDesc> shared_experts(bool with_gate);
std::vector<TensorRoleDesc> concat(std::initializer_list<std::vector<TensorRoleDesc>> groups);
}  // namespace roles

// Registration (one line per arch in arch_registry.cpp).
const ArchDescriptor& arch_qwen3moe();
const ArchDescriptor& arch_qwen3();
const ArchDescriptor& arch_qwen2moe();
const ArchDescriptor& arch_llama();
const ArchDescriptor& arch_olmoe();
const ArchDescriptor& arch_deepseek();
const ArchDescriptor& arch_granitemoe();

}  // namespace moe
