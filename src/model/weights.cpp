#include "model/weights.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <thread>

#include "base/error.h"
#include "kernels/q4k_repack.h"
#include "kernels/q8_0_panels.h"
#include "kernels/quant_blocks.h"
#include "model/expert_split.h"

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
  if (const gguf::Value* layout = f.find(kExpertLayoutKey)) {
    if (layout->type != gguf::ValueType::STRING || layout->str != kExpertLayoutPerExpert)
      fail("{}: {}: expected the string \"{}\" (the only expert layout besides GGUF's stacked one)", path,
           kExpertLayoutKey, kExpertLayoutPerExpert);
    m->experts_split_ = true;
  }
  // Where the tensor's bytes live: nowhere yet (deferred experts), the mapping, or memory we own.
  auto bind_data = [&](const gguf::TensorInfo* t, const std::string& name, bool deferred) -> const uint8_t* {
    if (deferred) return nullptr;  // served by an ExpertStore
    if (f.is_mapped()) return f.tensor_data(*t);
    // pread mode: the tensor is read once into memory we own (no page cache mapping kept).
    uint8_t* buf = m->alloc_owned(t->nbytes, name);
    f.read_tensor_bytes(*t, 0, t->nbytes, buf);
    f.drop_cached_tensor_bytes(*t);
    return buf;
  };
  // ggml drops trailing dims of size 1, so compare after trimming both.
  auto trim = [](std::vector<int64_t> v) {
    while (v.size() > 1 && v.back() == 1) v.pop_back();
    return v;
  };

  for (const TensorRoleDesc& d : m->arch_->roles) {
    const int n_iter = d.per_layer ? s.n_layer : 1;
    for (int il = 0; il < n_iter; ++il) {
      std::vector<int64_t> want = d.shape(s, il);
      if (want.empty()) continue;
      const std::string name = tensor_name(d, il);
      const gguf::TensorInfo* t = f.find_tensor(name);
      if (d.placement == Placement::Expert && want.size() == 3) {
        const std::string first = split_expert_name(name, 0);
        if (m->experts_split_) {
          if (t)
            fail("{}: tensor '{}' is stacked, but {} is {}: expected '{}' and one tensor per expert", path, name,
                 kExpertLayoutKey, kExpertLayoutPerExpert, first);
          m->bind_split_experts(d, il, name, want, [&](const gguf::TensorInfo* te, const std::string& n) {
            return bind_data(te, n, defer_experts);
          });
          continue;
        }
        if (f.find_tensor(first))
          fail("{}: tensor '{}' is a per-expert tensor, but {} is not {}{}", path, first, kExpertLayoutKey,
               kExpertLayoutPerExpert, t ? fmt::format(" (and the stacked '{}' is there too)", name) : "");
      }
      if (!t) {
        if (d.optional) continue;
        fail("{}: tensor '{}' ({}) is missing", path, name, role_name(d.role));
      }
      if (trim(t->dims) != trim(want))
        fail("{}: tensor '{}': shape {} does not match the expected {}", path, name, dims_str(t->dims), dims_str(want));
      if (role_is_f32(d.role) && t->type != DType::F32)
        fail("{}: tensor '{}': type {} is not supported for this role (expected f32)", path, name,
             dtype_traits(t->type).name);
      WeightView v;
      v.data = bind_data(t, name, defer_experts && d.placement == Placement::Expert);
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

void Model::bind_split_experts(const TensorRoleDesc& d, int il, const std::string& name,
                               const std::vector<int64_t>& want,
                               const std::function<const uint8_t*(const gguf::TensorInfo*, const std::string&)>& data) {
  const gguf::File& f = *file_;
  const int64_t n = want[2];
  const std::vector<int64_t> want2 = {want[0], want[1]};
  auto trim = [](std::vector<int64_t> v) {
    while (v.size() > 1 && v.back() == 1) v.pop_back();
    return v;
  };
  auto views = std::make_unique<WeightView[]>(static_cast<size_t>(n));
  for (int64_t e = 0; e < n; ++e) {
    const std::string en = split_expert_name(name, static_cast<int>(e));
    const gguf::TensorInfo* t = f.find_tensor(en);
    if (!t)
      fail("{}: tensor '{}' ({}, expert {} of {} in the per-expert layout) is missing", f.path(), en, role_name(d.role),
           e, n);
    if (trim(t->dims) != trim(want2))
      fail("{}: tensor '{}': shape {} does not match the expected {}", f.path(), en, dims_str(t->dims),
           dims_str(want2));
    WeightView& v = views[static_cast<size_t>(e)];
    v.data = data(t, en);
    v.type = t->type;
    v.cols = want[0];
    v.rows = want[1];
    v.row_bytes = row_bytes(t->type, v.cols);
    v.info = t;
  }
  if (const std::string extra = split_expert_name(name, static_cast<int>(n)); f.find_tensor(extra))
    fail("{}: tensor '{}': layer {} has only {} experts", f.path(), extra, il, n);
  WeightView agg = views[0];
  agg.data = nullptr;
  agg.n_mat = n;
  agg.split = views.get();
  layers_[il].t[static_cast<size_t>(d.role)] = agg;
  split_views_.push_back(std::move(views));
  split_counts_.push_back(n);
}

void Model::require_stacked_experts(const std::string& command) const {
  if (experts_split_)
    fail("{}: {} = {}: {} reads GGUF's stacked expert tensors; run it on the original (stacked) model", file_->path(),
         kExpertLayoutKey, kExpertLayoutPerExpert, command);
}

uint8_t* Model::alloc_owned(uint64_t bytes, const std::string& tensor) {
  try {
    owned_.emplace_back(static_cast<size_t>(bytes), 64);
  } catch (const Error& e) {
    fail("{}: tensor '{}': {}", file_->path(), tensor, e.what());
  }
  return owned_.back().data();
}

namespace {

// One in-memory layout change (kernels/q4k_repack.h, kernels/q8_0_panels.h): which matrices it applies
// to, and the unit it converts (a Q4_K block, 16 rows of a Q8_0 matrix) so that threads can share it out.
struct Relayout {
  DType from, to;
  uint64_t unit_bytes(const WeightView& v) const {
    return to == DType::Q8_0_P ? v.row_bytes * quant::kQ8PanelRows : sizeof(quant::BlockQ4_K);
  }
  bool applies(const WeightView& v) const {
    return v.type == from && (to != DType::Q8_0_P || quant::q8_0_panels_fit(v.rows, v.cols));
  }
  void convert(const uint8_t* src, uint8_t* dst, uint64_t units, const WeightView& v) const {
    if (to == DType::Q8_0_P)
      quant::pack_q8_0_panels(src, dst, static_cast<int64_t>(units), v.cols);
    else
      quant::repack_q4k(src, dst, static_cast<int64_t>(units));
  }
};

}  // namespace

uint64_t Model::repack(const RepackChoice& choice, int n_threads) {
  std::vector<Relayout> layouts;
  if (choice.q4k) layouts.push_back({DType::Q4_K, DType::Q4_K_R});
  if (choice.q8_0_panels) layouts.push_back({DType::Q8_0, DType::Q8_0_P});
  // Every view to change (the tied output head shares the embedding's bytes): repack each byte range
  // once, retype and repoint every view. Q8_0_P rows are not contiguous, so the token embedding (read
  // row by row) and whatever shares its bytes keep the file's layout.
  const uint8_t* embedding = globals_[Role::TokenEmbd].data;
  struct Target {
    WeightView* v;
    const Relayout* how;
  };
  std::vector<Target> views;
  auto consider = [&](WeightView& v, bool row_reads) {
    if (!v) return;
    for (const Relayout& how : layouts)
      if (how.applies(v) && !(how.to == DType::Q8_0_P && (row_reads || (v.data && v.data == embedding)))) {
        views.push_back({&v, &how});
        return;
      }
  };
  for (size_t r = 0; r < globals_.t.size(); ++r) consider(globals_.t[r], static_cast<Role>(r) == Role::TokenEmbd);
  for (LayerWeights& l : layers_)
    for (WeightView& v : l.t)
      if (!v.split) consider(v, false);
  for (size_t i = 0; i < split_views_.size(); ++i)
    for (int64_t e = 0; e < split_counts_[i]; ++e) consider(split_views_[i][static_cast<size_t>(e)], false);
  struct Range {
    const uint8_t* src;
    uint8_t* dst;
    uint64_t units, unit;
    const WeightView* v;
    const Relayout* how;
  };
  std::vector<Range> ranges;
  std::map<const uint8_t*, uint8_t*> moved;  // source bytes -> repacked bytes
  for (const Target& t : views) {
    WeightView* v = t.v;
    v->type = t.how->to;
    if (v->data == nullptr) continue;  // a deferred expert: repacked by the store after each read
    auto it = moved.find(v->data);
    if (it == moved.end()) {
      const uint64_t bytes = v->matrix_bytes() * static_cast<uint64_t>(v->n_mat);
      uint8_t* dst = nullptr;
      if (file_->is_mapped()) {
        // Into memory of our own: writing the private file mapping instead would make every page a
        // copy-on-write fault with a TLB shootdown, which measured ten times slower than this copy.
        dst = alloc_owned(bytes, v->info->name);
      } else {
        for (auto& o : owned_)
          if (o.data() == v->data) dst = o.data();
        if (dst == nullptr) fail("{}: tensor '{}': repack: bytes not owned by the model", file_->path(), v->info->name);
      }
      const uint64_t unit = t.how->unit_bytes(*v);
      ranges.push_back({v->data, dst, bytes / unit, unit, v, t.how});
      it = moved.emplace(v->data, dst).first;
    }
    v->data = it->second;
  }
  // Each thread repacks a contiguous share of all units.
  uint64_t total = 0, total_bytes = 0;
  for (const Range& r : ranges) {
    total += r.units;
    total_bytes += r.units * r.unit;
  }
  const int nt = std::max(1, n_threads);
  auto work = [&](int ti) {
    const uint64_t b0 = total * static_cast<uint64_t>(ti) / nt, b1 = total * static_cast<uint64_t>(ti + 1) / nt;
    uint64_t base = 0;
    for (const Range& r : ranges) {
      const uint64_t lo = std::max(b0, base), hi = std::min(b1, base + r.units);
      if (lo < hi) {
        const size_t off = static_cast<size_t>((lo - base) * r.unit);
        r.how->convert(r.src + off, r.dst + off, hi - lo, *r.v);
        // Drop the mapped source pages as we go, so the copy never holds the model twice.
        if (file_->is_mapped()) file_->release_mapped_bytes(r.src + off, (hi - lo) * r.unit);
      }
      base += r.units;
    }
  };
  std::vector<std::thread> threads;
  for (int ti = 1; ti < nt; ++ti) threads.emplace_back(work, ti);
  work(0);
  for (auto& t : threads) t.join();
  // A split tensor's view carries expert 0's type.
  for (LayerWeights& l : layers_)
    for (WeightView& v : l.t)
      if (v.split) v.type = v.split[0].type;
  return total_bytes;
}

ExpertLayout Model::expert_layout() const {
  ExpertLayout out;
  out.path = file_->path();
  const ModelSpec& s = spec_;
  out.layers.resize(s.n_layer);
  out.n_expert_used.assign(s.n_layer, 0);
  const Role roles[3] = {Role::ExpGate, Role::ExpUp, Role::ExpDown};
  const Role bias_roles[3] = {Role::ExpGateBias, Role::ExpUpBias, Role::ExpDownBias};
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
      if (v.split) {
        t.data = nullptr;
        for (int64_t e = 0; e < v.n_mat; ++e) {
          const WeightView& x = v.split[e];
          t.per_expert.push_back({x.data, file_->data_offset() + x.info->offset, x.type, x.row_bytes});
        }
      }
      // Biases are resident whatever happens to the matrices ([n_expert][rows] f32, checked at load).
      if (const WeightView& b = layers_[il][bias_roles[i]]) t.bias = reinterpret_cast<const float*>(b.data);
    }
  }
  return out;
}

Model::ByteReport Model::byte_report() const {
  ByteReport r;
  const ModelSpec& s = spec_;
  auto add = [&](const TensorRoleDesc& d, const WeightView& v) {
    uint64_t bytes = v.split ? v.total_bytes() : v.info->nbytes;
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
  // Active bytes per token: everything except the unused experts (and their biases), and only one
  // embedding row.
  uint64_t active = r.total - r.by_placement[static_cast<size_t>(Placement::Expert)] -
                    r.by_placement[static_cast<size_t>(Placement::ExpertBias)] -
                    r.by_placement[static_cast<size_t>(Placement::Embedding)];
  active += globals_[Role::TokenEmbd].row_bytes;
  if (s.tied_output) active += globals_[Role::Output].info->nbytes;
  for (int il = 0; il < s.n_layer; ++il) {
    const LayerSpec& L = s.layers[il];
    if (!L.is_moe) continue;
    // The largest expert, and (per-expert layouts: sizes differ) the mean one for the active bytes.
    uint64_t per_expert = 0, sum = 0;
    for (int64_t e = 0; e < L.moe.n_expert; ++e) {
      uint64_t b = 0;
      for (Role role : {Role::ExpGate, Role::ExpUp, Role::ExpDown})
        if (const WeightView& v = layers_[il][role]) b += v.matrix(e).matrix_bytes();
      r.bytes_per_expert_max = std::max(r.bytes_per_expert_max, b);
      sum += b;
    }
    per_expert = L.moe.n_expert > 0 ? sum / static_cast<uint64_t>(L.moe.n_expert) : 0;
    for (Role role : {Role::ExpGateBias, Role::ExpUpBias, Role::ExpDownBias})
      if (const WeightView& v = layers_[il][role]) per_expert += v.row_bytes;
    active += per_expert * static_cast<uint64_t>(L.moe.n_expert_used);
  }
  r.active_bytes_per_token = active;
  // Tensors the file holds but no role binds (NextN/MTP layers): never read.
  uint64_t in_file = 0;
  for (const gguf::TensorInfo& t : file_->tensors()) in_file += t.nbytes;
  r.unused = in_file > r.total ? in_file - r.total : 0;
  return r;
}

}  // namespace moe
