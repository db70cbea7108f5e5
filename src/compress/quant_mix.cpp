#include "compress/quant_mix.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <regex>

#include "base/error.h"

namespace moe::compress {

namespace {

// llama_ftype numbers (llama.h).
enum Ftype : int {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ8_0 = 7, kQ5_0 = 8, kQ5_1 = 9, kQ2_K = 10, kQ3_K_S = 11,
  kQ3_K_M = 12, kQ3_K_L = 13, kQ4_K_S = 14, kQ4_K_M = 15, kQ5_K_S = 16, kQ5_K_M = 17, kQ6_K = 18, kBF16 = 32,
  kMXFP4_MOE = 38,
};

const QuantMix kMixes[] = {
    {"Q4_0", kQ4_0, DType::Q4_0},     {"Q4_1", kQ4_1, DType::Q4_1},     {"Q5_0", kQ5_0, DType::Q5_0},
    {"Q5_1", kQ5_1, DType::Q5_1},     {"Q8_0", kQ8_0, DType::Q8_0},     {"Q2_K", kQ2_K, DType::Q2_K},
    {"Q3_K_S", kQ3_K_S, DType::Q3_K}, {"Q3_K_M", kQ3_K_M, DType::Q3_K}, {"Q3_K_L", kQ3_K_L, DType::Q3_K},
    {"Q4_K_S", kQ4_K_S, DType::Q4_K}, {"Q4_K_M", kQ4_K_M, DType::Q4_K}, {"Q5_K_S", kQ5_K_S, DType::Q5_K},
    {"Q5_K_M", kQ5_K_M, DType::Q5_K}, {"Q6_K", kQ6_K, DType::Q6_K},     {"F16", kF16, DType::F16},
    {"BF16", kBF16, DType::BF16},     {"F32", kF32, DType::F32},      {"MXFP4_MOE", kMXFP4_MOE, DType::MXFP4},
};

std::string upper(std::string_view s) {
  std::string u;
  for (char c : s) u += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return u;
}

bool use_more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

bool is_quantized(DType t) { return dtype_traits(t).is_quantized; }

// The state llama-quant.cpp keeps while it walks the tensors (its quantize_state_impl counters).
struct Counters {
  int n_attn_v = 0, i_attn_v = 0;
  int i_ffn_down = 0;
  bool tied_embeddings = true;
};

// llama_tensor_get_type_impl for the file types we have.
DType mix_rule(const MixModel& m, const MixTensor& t, TensorCategory cat, DType new_type, int ftype,
               const MixOptions& o, Counters& c) {
  const int n_expert = std::max(1, m.n_expert);
  const int n_gqa = m.n_head_kv > 0 ? m.n_head / m.n_head_kv : 1;
  // llama.cpp's "70B" size class, which gives attn_v more bits; only a Llama arch with 80 layers and GQA has it
  // among the archs we load.
  const bool is_70b = m.arch == "llama" && m.n_layer == 80 && m.n_head != m.n_head_kv;
  // FFN tensors of a MoE model take their layer from the name; dense models count them.
  auto ffn_layer = [&](int& counter) { return n_expert > 1 ? t.layer : counter; };

  if (cat == TensorCategory::Output || (c.tied_embeddings && cat == TensorCategory::TokenEmbd)) {
    if (o.output_type) return *o.output_type;
    if (ftype == kMXFP4_MOE) return DType::Q8_0;
    if (t.dims[0] % dtype_traits(new_type).block_elems != 0) return DType::Q8_0;
    if (new_type != DType::Q8_0) return DType::Q6_K;
    return new_type;
  }
  // MXFP4_MOE (gpt-oss): the stacked expert matrices (a third dimension above 1) MXFP4, every other
  // matrix Q8_0.
  if (ftype == kMXFP4_MOE) return t.dims.size() > 2 && t.dims[2] > 1 ? DType::MXFP4 : DType::Q8_0;
  switch (cat) {
    case TensorCategory::TokenEmbd:
      return o.embd_type ? *o.embd_type : new_type;
    case TensorCategory::AttnV: {
      if (ftype == kQ2_K) new_type = n_gqa >= 4 ? DType::Q4_K : DType::Q3_K;
      else if (ftype == kQ3_K_M) new_type = c.i_attn_v < 2 ? DType::Q5_K : DType::Q4_K;
      else if (ftype == kQ3_K_L) new_type = DType::Q5_K;
      else if ((ftype == kQ4_K_M || ftype == kQ5_K_M) && use_more_bits(c.i_attn_v, c.n_attn_v)) new_type = DType::Q6_K;
      else if (ftype == kQ4_K_S && c.i_attn_v < 4) new_type = DType::Q5_K;
      if (is_70b && (new_type == DType::Q3_K || new_type == DType::Q4_K)) new_type = DType::Q5_K;
      if (m.n_expert == 8) new_type = DType::Q8_0;  // "trades just ~128MB" on Mixtral
      ++c.i_attn_v;
      return new_type;
    }
    case TensorCategory::AttnK:
      return m.n_expert == 8 ? DType::Q8_0 : new_type;
    case TensorCategory::FfnDown: {
      const int i = ffn_layer(c.i_ffn_down), n = m.n_layer;
      if (ftype == kQ2_K) new_type = DType::Q3_K;
      else if (ftype == kQ3_K_M) new_type = i < n / 16 ? DType::Q5_K : DType::Q4_K;
      else if (ftype == kQ3_K_L) new_type = DType::Q5_K;
      else if (ftype == kQ4_K_M) { if (use_more_bits(i, n)) new_type = DType::Q6_K; }
      else if (ftype == kQ5_K_M && use_more_bits(i, n)) new_type = DType::Q6_K;
      else if (ftype == kQ4_K_S && i < n / 8) new_type = DType::Q5_K;
      ++c.i_ffn_down;
      return new_type;
    }
    case TensorCategory::AttnOut:
      if (m.n_expert == 8) {
        if (ftype == kQ2_K || ftype == kQ3_K_S || ftype == kQ3_K_M || ftype == kQ4_K_S || ftype == kQ4_K_M)
          new_type = DType::Q5_K;
      } else {
        if (ftype == kQ2_K) new_type = DType::Q3_K;
        else if (ftype == kQ3_K_M) new_type = DType::Q4_K;
        else if (ftype == kQ3_K_L) new_type = DType::Q5_K;
      }
      return new_type;
    default:
      return new_type;
  }
}

}  // namespace

const QuantMix* find_quant_mix(std::string_view name) {
  std::string u = upper(name);
  if (u == "Q3_K") u = "Q3_K_M";
  if (u == "Q4_K") u = "Q4_K_M";
  if (u == "Q5_K") u = "Q5_K_M";
  for (const QuantMix& m : kMixes)
    if (u == m.name) return &m;
  return nullptr;
}

std::string quant_mix_names() {
  std::string s;
  for (const QuantMix& m : kMixes) s += (s.empty() ? "" : ", ") + std::string(m.name);
  return s;
}

TensorCategory tensor_category(Role r) {
  switch (r) {
    case Role::Output: return TensorCategory::Output;
    case Role::TokenEmbd: return TensorCategory::TokenEmbd;
    case Role::AttnV: return TensorCategory::AttnV;
    case Role::AttnK: return TensorCategory::AttnK;
    case Role::AttnQ: return TensorCategory::AttnQ;
    case Role::AttnOut: return TensorCategory::AttnOut;
    case Role::FfnUp: case Role::ExpUp: case Role::ShexpUp: return TensorCategory::FfnUp;
    case Role::FfnGate: case Role::ExpGate: case Role::ShexpGate: case Role::Router: case Role::ShexpRouter:
      return TensorCategory::FfnGate;
    case Role::FfnDown: case Role::ExpDown: case Role::ShexpDown: return TensorCategory::FfnDown;
    default: return TensorCategory::Other;
  }
}

void sort_llama_order(std::vector<MixTensor>& tensors) {
  std::stable_sort(tensors.begin(), tensors.end(), [](const MixTensor& a, const MixTensor& b) {
    // llama.cpp parses "blk.%d." from the name; global tensors get -1.
    auto layer_of = [](const std::string& s) {
      int l = -1;
      if (std::sscanf(s.c_str(), "blk.%d.", &l) != 1) l = -1;
      return l;
    };
    const int la = layer_of(a.name), lb = layer_of(b.name);
    if (la != lb) return la < lb;
    return a.name < b.name;
  });
}

bool allows_quantization(const MixTensor& t, const MixOptions& o) {
  if (!t.role || t.dims.size() < 2) return false;
  if (*t.role == Role::Router) return false;  // llama.cpp never quantizes ffn_gate_inp
  if (*t.role == Role::Output && o.leave_output) return false;
  // Only matrices named *.weight are candidates (biases and norms are 1-D in every arch we have).
  const std::string& n = t.name;
  return n.size() >= 6 && n.compare(n.size() - 6, 6, "weight") == 0 && n.find("_norm.weight") == std::string::npos;
}

DType fallback_type(DType target, int64_t row_length, bool* fell_back) {
  if (fell_back) *fell_back = false;
  const int64_t block = dtype_traits(target).block_elems;
  if (row_length % block == 0) return target;
  if (fell_back) *fell_back = true;
  DType t = target;
  switch (target) {
    case DType::Q2_K: case DType::Q3_K: t = DType::Q4_0; break;
    case DType::Q4_K: t = DType::Q5_0; break;
    case DType::Q5_K: t = DType::Q5_1; break;
    case DType::Q6_K: t = DType::Q8_0; break;
    default: break;  // a 32-block type has no smaller block: F16 below
  }
  if (row_length % dtype_traits(t).block_elems != 0) t = DType::F16;
  return t;
}

MixPlan plan_mix(const MixModel& m, const std::vector<MixTensor>& tensors, const MixOptions& o) {
  if (!o.mix) fail("quantize: no file type given");
  std::vector<std::pair<std::regex, DType>> patterns;
  for (const auto& p : o.tensor_types) {
    try {
      patterns.emplace_back(std::regex(p.pattern), p.type);
    } catch (const std::regex_error& e) {
      fail("--tensor-type {}: not a valid regular expression ({})", p.pattern, e.what());
    }
  }
  Counters c;
  for (const MixTensor& t : tensors) {
    if (t.role && tensor_category(*t.role) == TensorCategory::AttnV) ++c.n_attn_v;
    if (t.role && *t.role == Role::Output) c.tied_embeddings = false;
  }
  MixPlan plan;
  plan.types.reserve(tensors.size());
  const DType base = o.mix->base;
  for (const MixTensor& t : tensors) {
    if (!allows_quantization(t, o)) {
      plan.types.push_back(t.type);
      continue;
    }
    const TensorCategory cat = tensor_category(*t.role);
    if (o.embd_type && cat == TensorCategory::TokenEmbd) {
      plan.types.push_back(*o.embd_type);
      continue;
    }
    if (o.output_type && cat == TensorCategory::Output) {
      plan.types.push_back(*o.output_type);
      continue;
    }
    // A role override is ours (`--expert-type`): it applies whatever the base type. Patterns follow
    // llama-quantize, which reads them only when the base type is quantized.
    DType type = base;
    bool manual = false;
    for (const RoleTypeOverride& r : o.role_types) {
      if (std::find(r.roles.begin(), r.roles.end(), *t.role) != r.roles.end()) {
        type = r.type;
        manual = true;
        break;
      }
    }
    if (manual || is_quantized(base)) {
      for (size_t i = 0; !manual && i < patterns.size(); ++i) {
        if (std::regex_search(t.name, patterns[i].first)) {
          type = patterns[i].second;
          manual = true;
        }
      }
      if (!manual && !o.pure) type = mix_rule(m, t, cat, type, o.mix->ftype, o, c);
      bool fell_back = false;
      type = fallback_type(type, t.dims[0], &fell_back);
      plan.n_fallback += fell_back;
    }
    plan.types.push_back(type);
  }
  return plan;
}

}  // namespace moe::compress
