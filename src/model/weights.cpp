#include "model/weights.h"

#include <cstdio>
#include <cstdlib>

#include "base/error.h"

namespace moe {

namespace {

std::string tensor_name(const TensorRoleDesc& d, int il) {
  if (!d.per_layer) return d.gguf_name;
  char buf[256];
  std::snprintf(buf, sizeof buf, d.gguf_name, il);
  return buf;
}

std::string dims_str(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

// Norms, biases and gate vectors are applied elementwise in fp32; llama.cpp requires them as F32 too.
bool must_be_f32(Role r) {
  switch (r) {
    case Role::OutputNorm: case Role::AttnNorm: case Role::FfnNorm: case Role::AttnQNorm: case Role::AttnKNorm:
    case Role::AttnQBias: case Role::AttnKBias: case Role::AttnVBias: case Role::AttnOutBias: case Role::RouterBias:
      return true;
    default:
      return false;
  }
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::string& path, gguf::DataAccess access) {
  return load(path, access, false);
}

std::unique_ptr<Model> Model::load(const std::string& path, gguf::DataAccess access, bool defer_experts) {
  auto m = std::unique_ptr<Model>(new Model());
  m->experts_deferred_ = defer_experts;
  m->file_ = gguf::File::open(path, access);
  const gguf::File& f = *m->file_;
  const std::string arch_name = f.get_string("general.architecture");
  m->arch_ = find_arch(arch_name);
  if (!m->arch_) {
    std::string known;
    for (const auto& a : supported_archs()) known += (known.empty() ? "" : ", ") + a;
    fail("{}: general.architecture: '{}' is not supported (supported: {})", path, arch_name, known);
  }
  m->spec_ = load_model_spec(f, *m->arch_);
  const ModelSpec& s = m->spec_;
  m->layers_.resize(s.n_layer);

  for (const TensorRoleDesc& d : m->arch_->roles) {
    const int n_iter = d.per_layer ? s.n_layer : 1;
    for (int il = 0; il < n_iter; ++il) {
      std::vector<int64_t> want = d.shape(s, il);
      if (want.empty()) continue;
      const std::string name = tensor_name(d, il);
      const gguf::TensorInfo* t = f.find_tensor(name);
      if (!t) {
        if (d.optional) continue;
        fail("{}: tensor '{}' ({}) is missing", path, name, role_name(d.role));
      }
      // ggml drops trailing dims of size 1, so compare after trimming both.
      auto trim = [](std::vector<int64_t> v) {
        while (v.size() > 1 && v.back() == 1) v.pop_back();
        return v;
      };
      if (trim(t->dims) != trim(want))
        fail("{}: tensor '{}': shape {} does not match the expected {}", path, name, dims_str(t->dims), dims_str(want));
      if (must_be_f32(d.role) && t->type != DType::F32)
        fail("{}: tensor '{}': type {} is not supported for this role (expected f32)", path, name,
             dtype_traits(t->type).name);
      WeightView v;
      if (defer_experts && d.placement == Placement::Expert) {
        v.data = nullptr;  // served by an ExpertStore
      } else if (f.is_mapped()) {
        v.data = f.tensor_data(*t);
      } else {
        // pread mode: the tensor is read once into memory we own (no page cache mapping kept).
        auto* buf = static_cast<uint8_t*>(std::aligned_alloc(64, (t->nbytes + 63) / 64 * 64));
        if (!buf) fail("{}: tensor '{}': cannot allocate {} bytes", path, name, t->nbytes);
        m->owned_.emplace_back(buf, [](uint8_t* p) { std::free(p); });
        f.read_tensor_bytes(*t, 0, t->nbytes, buf);
        v.data = buf;
      }
      v.type = t->type;
      v.cols = t->dims[0];
      v.rows = t->dims.size() > 1 ? t->dims[1] : 1;
      v.n_mat = t->dims.size() > 2 ? t->dims[2] : 1;
      v.row_bytes = row_bytes(t->type, v.cols);
      v.info = t;
      LayerWeights& lw = d.per_layer ? m->layers_[il] : m->globals_;
      lw.t[static_cast<size_t>(d.role)] = v;
    }
  }
  if (!m->globals_[Role::Output]) m->globals_.t[static_cast<size_t>(Role::Output)] = m->globals_[Role::TokenEmbd];
  for (int il = 0; il < s.n_layer; ++il) {
    if (m->layers_[il][Role::AttnOutBias]) m->spec_.attn_out_bias = true;
    if (m->layers_[il][Role::RouterBias]) m->spec_.layers[il].moe.has_selection_bias = true;
  }
  return m;
}

ExpertLayout Model::expert_layout() const {
  ExpertLayout out;
  out.path = file_->path();
  const ModelSpec& s = spec_;
  out.layers.resize(s.n_layer);
  out.n_expert_used.assign(s.n_layer, 0);
  const Role roles[3] = {Role::ExpGate, Role::ExpUp, Role::ExpDown};
  for (int il = 0; il < s.n_layer; ++il) {
    if (!s.layers[il].is_moe) continue;
    out.n_expert = std::max(out.n_expert, s.layers[il].moe.n_expert);
    out.n_expert_used[il] = s.layers[il].moe.n_expert_used;
    for (int i = 0; i < 3; ++i) {
      const WeightView& v = layers_[il][roles[i]];
      ExpertTensorLayout& t = out.layers[il][i];
      t.data = v.data;
      t.file_offset = file_->data_offset() + v.info->offset;
      t.shape = {nullptr, v.type, v.rows, v.cols, v.row_bytes};
    }
  }
  return out;
}

Model::ByteReport Model::byte_report() const {
  ByteReport r;
  const ModelSpec& s = spec_;
  auto add = [&](const TensorRoleDesc& d, const WeightView& v) {
    uint64_t bytes = v.info->nbytes;
    r.by_placement[static_cast<size_t>(d.placement)] += bytes;
    r.total += bytes;
  };
  for (const TensorRoleDesc& d : arch_->roles) {
    if (!d.per_layer) {
      const WeightView& v = globals_[d.role];
      if (v && !(d.role == Role::Output && s.tied_output)) add(d, v);
      continue;
    }
    for (int il = 0; il < s.n_layer; ++il)
      if (const WeightView& v = layers_[il][d.role]) add(d, v);
  }
  // Active bytes per token: everything except the unused experts, and only one embedding row.
  uint64_t active = r.total - r.by_placement[static_cast<size_t>(Placement::Expert)] -
                    r.by_placement[static_cast<size_t>(Placement::Embedding)];
  active += globals_[Role::TokenEmbd].row_bytes;
  if (s.tied_output) active += globals_[Role::Output].info->nbytes;
  for (int il = 0; il < s.n_layer; ++il) {
    const LayerSpec& L = s.layers[il];
    if (!L.is_moe) continue;
    uint64_t per_expert = 0;
    for (Role role : {Role::ExpGate, Role::ExpUp, Role::ExpDown})
      if (const WeightView& v = layers_[il][role]) per_expert += v.matrix_bytes();
    r.bytes_per_expert_max = std::max(r.bytes_per_expert_max, per_expert);
    active += per_expert * static_cast<uint64_t>(L.moe.n_expert_used);
  }
  r.active_bytes_per_token = active;
  return r;
}

}  // namespace moe
