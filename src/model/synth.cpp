#include "model/synth.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "base/error.h"
#include "base/rng.h"
#include "format/gguf.h"
#include "model/arch.h"
#include "base/thread_pool.h"

namespace moe {

namespace {

// Synthetic weights come from the portable generator so files are identical across platforms.
struct Rng : SplitMix64 {
  float normal() { return static_cast<float>(SplitMix64::normal()); }
};

uint64_t hash_name(const std::string& s, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// llama.cpp's fallback when a row length is not a multiple of the target's block (llama-quant.cpp).
DType llama_fallback_type(DType t) {
  switch (t) {
    case DType::Q2_K: case DType::Q3_K: return DType::Q4_0;
    case DType::Q4_K: return DType::Q5_0;
    case DType::Q5_K: return DType::Q5_1;
    case DType::Q6_K: return DType::Q8_0;
    default: return DType::F16;
  }
}

DType type_for(const SynthConfig& c, Placement p, Role role, int layer, size_t n_dims, int64_t cols) {
  DType t;
  switch (p) {
    case Placement::Embedding: t = c.embd_type; break;
    case Placement::Output: t = c.output_type; break;
    case Placement::Attention: t = c.attn_type; break;
    case Placement::Router: t = c.router_type; break;
    case Placement::Expert: t = c.expert_type; break;
    case Placement::SharedExpert: case Placement::DenseFfn: t = c.shared_type; break;
    default: t = DType::F32;
  }
  // Norms, biases, sinks and gate vectors stay fp32, as llama.cpp keeps them.
  if (n_dims < 2 || role_is_f32(role)) return DType::F32;
  if (c.type_override) t = c.type_override(role, layer, t);
  if (cols % dtype_traits(t).block_elems != 0) {
    if (!c.llama_fallback) return DType::F16;
    t = llama_fallback_type(t);
    if (cols % dtype_traits(t).block_elems != 0) return DType::F16;
  }
  return t;
}

// Row-stream mode: a cheap near-normal draw (Irwin-Hall sum of four 16-bit uniforms, unit variance)
// from one splitmix64 output, seeded per row so rows can be produced in any order on any thread.
inline float fast_normal(Rng& rng) {
  const uint64_t z = rng.next();
  const float s = static_cast<float>((z & 0xFFFF) + ((z >> 16) & 0xFFFF) + ((z >> 32) & 0xFFFF) + (z >> 48));
  // Sum of four U(0, 65535): mean 131070, variance 4 * (65536^2 - 1) / 12.
  return (s - 131070.0f) * (1.0f / 37837.23f);
}

}  // namespace

ModelSpec make_moe_shape(int n_layer, int64_t n_embd, int n_head, int n_head_kv, int64_t head_dim, int n_expert, int k,
                         int64_t n_ff_exp, int64_t n_vocab, int n_dense_lead, int64_t n_ff_dense, int n_shared,
                         int64_t n_ff_shexp) {
  ModelSpec s;
  s.n_layer = n_layer;
  s.n_embd = n_embd;
  s.n_head = n_head;
  s.n_head_kv = n_head_kv;
  s.head_dim = head_dim;
  s.n_rot = head_dim;
  s.n_vocab = n_vocab;
  s.n_ctx_train = 4096;
  s.layers.resize(n_layer);
  for (int il = 0; il < n_layer; ++il) {
    LayerSpec& L = s.layers[il];
    L.is_moe = il >= n_dense_lead && n_expert > 0;
    L.n_ff_dense = n_ff_dense;
    L.moe.n_expert = n_expert;
    L.moe.n_expert_used = k;
    L.moe.n_ff_exp = n_ff_exp;
    L.moe.n_shared = n_shared;
    L.moe.n_ff_shexp = n_ff_shexp;
  }
  return s;
}

void set_mla(ModelSpec& s, int64_t q_lora, int64_t kv_lora, int64_t qk_nope, int64_t qk_rope, int64_t v_head) {
  s.mla = {q_lora, kv_lora, qk_nope, qk_rope, v_head};
  s.n_head_kv = 1;
  s.head_dim = kv_lora + qk_rope;
  s.head_dim_v = kv_lora;
  s.n_rot = qk_rope;
}

void set_yarn(ModelSpec& s, float factor, int64_t n_ctx_orig) {
  s.rope_freq_scale = 1.0f / factor;
  s.yarn.ext_factor = 1.0f;
  s.yarn.n_ctx_orig = n_ctx_orig;
}

void write_synth_model(const std::string& path, const SynthConfig& cfg,
                       const std::function<void(uint64_t, uint64_t)>& progress) {
  const ArchDescriptor* arch = find_arch(cfg.arch);
  if (!arch) fail("synth: unknown architecture '{}'", cfg.arch);
  const ModelSpec& s = cfg.spec;
  gguf::Writer w;
  save_model_spec(s, *arch, w);
  if (cfg.with_vocab) {
    // A byte-level vocabulary: the 256 byte symbols, then placeholder tokens up to n_vocab, with the
    // last token as end-of-text.
    if (s.n_vocab < 257) fail("synth: vocab size {} is too small for the byte-level vocabulary (needs >= 257)", s.n_vocab);
    std::vector<std::string> tokens;
    std::vector<int32_t> types;
    for (int b = 0; b < 256; ++b) {
      // GPT-2 byte-to-unicode mapping for the 256 byte symbols.
      int cp = b;
      if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))) {
        int n = 0;
        for (int x = 0; x < b; ++x)
          if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) ++n;
        cp = 256 + n;
      }
      std::string u;
      if (cp < 0x80) u += static_cast<char>(cp);
      else {
        u += static_cast<char>(0xC0 | (cp >> 6));
        u += static_cast<char>(0x80 | (cp & 0x3F));
      }
      tokens.push_back(u);
      types.push_back(1);
    }
    for (int64_t i = 256; i < s.n_vocab - 1; ++i) {
      tokens.push_back("<synth_" + std::to_string(i) + ">");
      types.push_back(4);  // user-defined
    }
    tokens.push_back("<|endoftext|>");
    types.push_back(3);  // control
    w.set("tokenizer.ggml.model", gguf::Value::make_string("gpt2"));
    w.set("tokenizer.ggml.pre", gguf::Value::make_string("gpt-2"));
    w.set("tokenizer.ggml.tokens", gguf::Value::make_string_array(tokens));
    w.set("tokenizer.ggml.token_type", gguf::Value::make_i32_array(types));
    w.set("tokenizer.ggml.merges", gguf::Value::make_string_array({}));
    w.set("tokenizer.ggml.bos_token_id", gguf::Value::make_u32(static_cast<uint32_t>(s.n_vocab - 1)));
    w.set("tokenizer.ggml.eos_token_id", gguf::Value::make_u32(static_cast<uint32_t>(s.n_vocab - 1)));
    w.set("tokenizer.ggml.add_bos_token", gguf::Value::make_bool(false));
  }
  w.set("general.file_type", gguf::Value::make_u32(cfg.file_type >= 0 ? static_cast<uint32_t>(cfg.file_type)
                                                                      : (cfg.expert_type == DType::F16 ? 1 : 0)));

  // The spec the loader will see (arch hooks decide e.g. qk-norm shape) comes from the descriptor.
  ModelSpec shaped = s;
  shaped.arch = arch->name;

  uint64_t total = 0;
  struct Planned {
    std::string name;
    DType type;
    std::vector<int64_t> dims;
    Placement placement;
    Role role;
  };
  std::vector<Planned> plan;
  // Optional roles are written only when the spec asks for them.
  auto wanted = [&](const TensorRoleDesc& d, int il) {
    if (!d.optional) return true;
    switch (d.role) {
      case Role::Output: return !s.tied_output;
      case Role::RouterBias: return s.layers[il].moe.has_selection_bias;
      case Role::AttnQNorm: case Role::AttnKNorm: return s.qk_norm != QkNorm::None;
      case Role::AttnOutBias: return s.attn_out_bias;
      default: return false;
    }
  };
  for (const TensorRoleDesc& d : arch->roles) {
    const int n_iter = d.per_layer ? s.n_layer : 1;
    for (int il = 0; il < n_iter; ++il) {
      std::vector<int64_t> dims = d.shape(shaped, il);
      if (dims.empty()) continue;
      if (!wanted(d, il)) continue;
      if (d.role == Role::Output && s.tied_output) continue;
      char name[256];
      std::snprintf(name, sizeof name, d.gguf_name, il);
      const DType t = type_for(cfg, d.placement, d.role, d.per_layer ? il : -1, dims.size(), dims[0]);
      int64_t rows = 1;
      for (size_t i = 1; i < dims.size(); ++i) rows *= dims[i];
      total += row_bytes(t, dims[0]) * static_cast<uint64_t>(rows);
      plan.push_back({d.per_layer ? std::string(name) : std::string(d.gguf_name), t, dims, d.placement, d.role});
    }
  }
  // Trailing next-token-prediction layers: in the file (as real checkpoints ship them), never read.
  if (s.n_layer_nextn > 0 && arch->unused_tensors) {
    for (const UnusedTensorDesc& u : arch->unused_tensors(shaped)) {
      const Role role = u.role == Role::Count ? (u.dims.size() < 2 ? Role::AttnNorm : Role::AttnQ) : u.role;
      const DType t = type_for(cfg, u.placement, role, s.n_layer, u.dims.size(), u.dims[0]);
      int64_t rows = 1;
      for (size_t i = 1; i < u.dims.size(); ++i) rows *= u.dims[i];
      total += row_bytes(t, u.dims[0]) * static_cast<uint64_t>(rows);
      plan.push_back({u.name, t, u.dims, u.placement, role});
    }
  }
  auto done = std::make_shared<uint64_t>(0);
  std::shared_ptr<ThreadPool> pool;
  if (cfg.row_streams && cfg.threads > 1) pool = std::make_shared<ThreadPool>(cfg.threads);
  for (const Planned& p : plan) {
    if (cfg.row_streams) {
      const uint64_t seed = hash_name(p.name, cfg.seed);
      const Planned pc = p;
      const int64_t unique_rows = cfg.unique_rows;
      w.add_tensor_stream(p.name, p.type, p.dims,
                          [pc, seed, done, total, progress, pool, unique_rows](uint8_t* dst, uint64_t nbytes) {
        const int64_t cols = pc.dims[0];
        int64_t rows = 1;
        for (size_t i = 1; i < pc.dims.size(); ++i) rows *= pc.dims[i];
        const bool is_norm = pc.placement == Placement::Norm;
        const bool is_vector = pc.dims.size() == 1 || role_is_f32(pc.role);
        const float sd = pc.placement == Placement::Embedding ? 1.0f : 1.0f / std::sqrt(static_cast<float>(cols));
        const QuantizeFn quantize = storage_quantizer(pc.type);
        const size_t rb = row_bytes(pc.type, cols);
        auto produce = [&](int64_t r0, int64_t r1, int) {
          std::vector<float> row(static_cast<size_t>(cols));
          for (int64_t r = r0; r < r1; ++r) {
            Rng rng{seed ^ (static_cast<uint64_t>(r) * 0xD1B54A32D192ED03ull)};
            for (int64_t c = 0; c < cols; ++c) {
              const float z = fast_normal(rng);
              row[c] = is_norm ? 1.0f + 0.1f * z : (is_vector ? 0.1f * z : sd * z);
            }
            uint8_t* out = dst + static_cast<size_t>(r) * rb;
            if (pc.type == DType::F32) std::memcpy(out, row.data(), rb);
            else quantize(row.data(), out, cols);
          }
        };
        const int64_t n_unique = unique_rows > 0 ? std::min(rows, unique_rows) : rows;
        if (pool) pool->parallel_for(n_unique, 16, produce);
        else produce(0, n_unique, 0);
        for (int64_t r = n_unique; r < rows; ++r) {
          uint64_t h = (seed + static_cast<uint64_t>(r)) * 0x9E3779B97F4A7C15ull;
          h ^= h >> 29;
          std::memcpy(dst + static_cast<size_t>(r) * rb, dst + static_cast<size_t>(h % n_unique) * rb, rb);
        }
        *done += nbytes;
        if (progress) progress(*done, total);
      });
      continue;
    }
    const uint64_t seed = hash_name(p.name, cfg.seed);
    const Planned pc = p;
    w.add_tensor_stream(p.name, p.type, p.dims, [pc, seed, done, total, progress](uint8_t* dst, uint64_t nbytes) {
      Rng rng{seed};
      const int64_t cols = pc.dims[0];
      int64_t rows = 1;
      for (size_t i = 1; i < pc.dims.size(); ++i) rows *= pc.dims[i];
      const bool is_norm = pc.placement == Placement::Norm;
      const bool is_vector = pc.dims.size() == 1 || role_is_f32(pc.role);
      const float sd = pc.placement == Placement::Embedding ? 1.0f : 1.0f / std::sqrt(static_cast<float>(cols));
      std::vector<float> row(static_cast<size_t>(cols));
      const QuantizeFn quantize = storage_quantizer(pc.type);
      const size_t rb = row_bytes(pc.type, cols);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; ++c) {
          const float z = rng.normal();
          row[c] = is_norm ? 1.0f + 0.1f * z : (is_vector ? 0.1f * z : sd * z);
        }
        uint8_t* out = dst + static_cast<size_t>(r) * rb;
        if (pc.type == DType::F32) std::memcpy(out, row.data(), rb);
        else quantize(row.data(), out, cols);
      }
      *done += nbytes;
      if (progress) progress(*done, total);
    });
  }
  w.write(path);
}

}  // namespace moe
