// llama.cpp's per-tensor type rules for its file types ("mixes": Q4_K_M, Q3_K_L, ...), restated from
// llama-quant.cpp (facts, not code) so that `moe quantize` writes the same tensor types, and therefore the
// same bytes, as `llama-quantize` does for the same input and file type. `moe synth` uses the same table.
//
// Categories come from the arch's role table (design.md seam 1), not from tensor names. llama.cpp decides by
// name substrings; the two agree for every role we have (ffn_up/ffn_up_exps/ffn_up_shexp are all "ffn up",
// the router is never quantized, ...). The rules that depend on counters (attn_v's "first two" in Q3_K_M,
// use_more_bits over the attn_v index) count in llama.cpp's tensor order, which sort_llama_order() gives.
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "model/arch.h"
#include "tensor/dtype.h"

namespace moe::compress {

// A file type as llama-quantize names it: a uniform type or one of its K-quant mixes.
struct QuantMix {
  const char* name;  // llama-quantize's name, e.g. "Q4_K_M"
  int ftype;         // llama_ftype, written as general.file_type
  DType base;        // the default tensor type
};

// Case-insensitive; accepts llama-quantize's aliases (Q3_K = Q3_K_M, Q4_K = Q4_K_M, Q5_K = Q5_K_M).
// nullptr for unknown names. Types llama.cpp has and we do not (IQ*, TQ*) and Q2_K_S (which
// needs an importance matrix) are not in the table.
const QuantMix* find_quant_mix(std::string_view name);
std::string quant_mix_names();  // "Q4_0, Q4_1, ..." for messages

enum class TensorCategory { Output, TokenEmbd, AttnV, AttnK, AttnQ, AttnOut, FfnUp, FfnGate, FfnDown, Other };
TensorCategory tensor_category(Role r);

// One tensor as the planner sees it.
struct MixTensor {
  std::string name;
  std::optional<Role> role;  // nullopt: not a role of the arch (kept as it is)
  int layer = -1;            // -1 for global tensors
  std::vector<int64_t> dims;
  DType type = DType::F32;   // its type in the input
};

// What the rules read from the model's hyperparameters.
struct MixModel {
  std::string arch;
  int n_layer = 0;    // block_count
  int n_expert = 0;   // expert_count (0 for dense models)
  int n_head = 1, n_head_kv = 1;
};

// A per-role type chosen by the user (`--expert-type q8_0`), like llama-quantize's --tensor-type with a
// pattern matching exactly those roles.
struct RoleTypeOverride {
  std::vector<Role> roles;
  DType type;
};
// llama-quantize's --tensor-type PATTERN=TYPE: the first pattern found in the name (std::regex_search) wins.
struct PatternTypeOverride {
  std::string pattern;
  DType type;
};

struct MixOptions {
  const QuantMix* mix = nullptr;
  std::optional<DType> output_type;  // --output-tensor-type
  std::optional<DType> embd_type;    // --token-embedding-type
  std::vector<RoleTypeOverride> role_types;       // checked before tensor_types
  std::vector<PatternTypeOverride> tensor_types;
  bool pure = false;          // --pure: the base type everywhere (no mix rules)
  bool leave_output = false;  // --leave-output-tensor
};

struct MixPlan {
  std::vector<DType> types;  // per input tensor, same order
  int n_fallback = 0;        // tensors whose rows did not fit the chosen type's block size
};

// Sorts as llama.cpp's loader orders weights: global tensors first, then by layer number, by name within each.
void sort_llama_order(std::vector<MixTensor>& tensors);

// Whether llama-quantize may change the tensor's type (matrices only; never norms, biases or the router).
bool allows_quantization(const MixTensor& t, const MixOptions& o);

// llama.cpp's fallback when a row length does not divide into the type's blocks (Q4_K -> Q5_0, Q5_K -> Q5_1,
// Q6_K -> Q8_0, Q2_K/Q3_K -> Q4_0, then F16 when even that does not fit).
DType fallback_type(DType target, int64_t row_length, bool* fell_back = nullptr);

// The type of every tensor. `tensors` must be in llama order (sort_llama_order) for the counter rules.
MixPlan plan_mix(const MixModel& model, const std::vector<MixTensor>& tensors, const MixOptions& o);

}  // namespace moe::compress
