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
  // Multi-head latent attention (DeepSeek-V2/V3): q low-rank pair with its norm, the joint kv
  // down-projection (latent + rope key) and its norm, and the per-head absorbed k/v up-projections.
  AttnQA, AttnQANorm, AttnQB, AttnKvA, AttnKvANorm, AttnKB, AttnVB,
  AttnSinks,                                   // one logit per head joining the softmax (gpt-oss)
  RouterLogitBias,                             // ffn_gate_inp.bias: added to the router logits
  ExpGateBias, ExpUpBias, ExpDownBias,         // per-expert biases, [n_expert][rows]
  Count
};

// Where a tensor's bytes belong, for accounting and residency planning.
// ExpertBias: per-expert bias vectors; small, so always resident (the store hands them out with
// each expert's matrices), but stacked by expert like the matrices.
enum class Placement { Embedding, Attention, Router, Expert, SharedExpert, DenseFfn, Norm, Output, ExpertBias };
constexpr size_t kPlacementCount = 9;

struct TensorRoleDesc {
  Role role;
  const char* gguf_name;   // printf pattern; "%d" is the layer index for per-layer tensors
  bool per_layer;
  Placement placement;
  // Expected dims (ggml order) for this layer, or empty if the tensor does not exist in this layer.
  std::function<std::vector<int64_t>(const ModelSpec&, int layer)> shape;
  bool optional = false;   // may be absent even when shape() is non-empty
};

// A tensor the file holds but the forward pass never reads (a NextN/MTP layer, which llama.cpp loads
// and skips too). Listed so that writers can produce such files; loaders ignore these tensors.
struct UnusedTensorDesc {
  std::string name;
  std::vector<int64_t> dims;
  Placement placement;  // what it would be, for writers choosing a type
  Role role;            // the role it mirrors (Role::Count for tensors with no counterpart)
};

struct ArchDescriptor {
  std::string name;  // general.architecture
  // Fills arch-specific fields of the spec from metadata (generic keys are read before this).
  std::function<void(const gguf::File&, ModelSpec&)> load_spec;
  std::vector<TensorRoleDesc> roles;
  // Writes the arch-specific metadata keys for a spec (the inverse of load_spec); used by writers
  // that create models (synth, train, prune). Generic keys are written by save_model_spec.
  std::function<void(const ModelSpec&, gguf::Writer&)> save_spec;
  // Called last, after the generic derived values (YaRN factors) are set (optional).
  std::function<void(ModelSpec&)> post_load = nullptr;
  // Tensors of the spec's n_layer_nextn trailing layers (optional).
  std::function<std::vector<UnusedTensorDesc>(const ModelSpec&)> unused_tensors = nullptr;
};

const ArchDescriptor* find_arch(const std::string& name);
std::vector<std::string> supported_archs();
const char* role_name(Role r);
const char* placement_name(Placement p);
// Norms, biases, sinks and gate vectors: applied elementwise in fp32 (llama.cpp requires F32 too).
bool role_is_f32(Role r);

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
// ffn_gate_inp.bias and the gate/up/down expert biases (gpt-oss).
std::vector<TensorRoleDesc> expert_biases();
// The tensors of n_layer_nextn trailing NextN/MTP layers as DeepSeek-V3 and GLM-4.5 files hold them:
// every per-layer role of `roles` at layer indices n_layer.. (shaped as the last layer), plus the
// layer's nextn.eh_proj, nextn.enorm, nextn.hnorm and nextn.shared_head_norm.
std::vector<UnusedTensorDesc> nextn_layers(const ModelSpec& s, const std::vector<TensorRoleDesc>& roles);
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
const ArchDescriptor& arch_deepseek2();
const ArchDescriptor& arch_gptoss();
const ArchDescriptor& arch_glm4moe();

}  // namespace moe
