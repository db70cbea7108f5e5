#include "compress/quantize_model.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>

#include "base/error.h"
#include "model/expert_split.h"

namespace moe::compress {

namespace {

constexpr int64_t kRowsPerChunk = 64;  // rows a worker converts at a time

int64_t n_rows_of(const std::vector<int64_t>& dims) {
  int64_t r = 1;
  for (size_t i = 1; i < dims.size(); ++i) r *= dims[i];
  return r;
}

}  // namespace

std::vector<MixTensor> mix_tensors(const gguf::File& f, const ArchDescriptor& arch, const ModelSpec& spec) {
  // Every name the role table can produce for this spec, with its role and layer.
  std::map<std::string, std::pair<Role, int>> by_name;
  for (const TensorRoleDesc& d : arch.roles) {
    const int n_iter = d.per_layer ? spec.n_layer : 1;
    for (int il = 0; il < n_iter; ++il) {
      char name[256];
      std::snprintf(name, sizeof name, d.gguf_name, il);
      by_name.emplace(d.per_layer ? std::string(name) : std::string(d.gguf_name),
                      std::make_pair(d.role, d.per_layer ? il : -1));
    }
  }
  std::vector<MixTensor> out;
  for (const gguf::TensorInfo& t : f.tensors()) {
    MixTensor m;
    m.name = t.name;
    m.dims = t.dims;
    m.type = t.type;
    if (auto it = by_name.find(t.name); it != by_name.end()) {
      m.role = it->second.first;
      m.layer = it->second.second;
    }
    out.push_back(std::move(m));
  }
  return out;
}

MixModel mix_model(const ModelSpec& spec) {
  MixModel m;
  m.arch = spec.arch;
  m.n_layer = spec.n_layer;
  for (const LayerSpec& L : spec.layers)
    if (L.is_moe) m.n_expert = std::max(m.n_expert, L.moe.n_expert);
  m.n_head = spec.n_head;
  m.n_head_kv = spec.n_head_kv;
  return m;
}

QuantizePlan plan_quantize(const gguf::File& f, const MixOptions& o, bool allow_requantize) {
  if (f.find(kExpertLayoutKey))
    fail("{}: {} is set: the experts are one tensor each, which moe quantize does not re-type; quantize the "
         "original (stacked) model instead",
         f.path(), kExpertLayoutKey);
  const std::string arch_name = f.get_string("general.architecture");
  const ArchDescriptor* arch = find_arch(arch_name);
  if (!arch) fail("{}: unknown architecture '{}'", f.path(), arch_name);
  const ModelSpec spec = load_model_spec(f, *arch);
  QuantizePlan p;
  p.tensors = mix_tensors(f, *arch, spec);
  sort_llama_order(p.tensors);
  MixPlan mp = plan_mix(mix_model(spec), p.tensors, o);
  p.types = std::move(mp.types);
  p.n_fallback = mp.n_fallback;
  for (size_t i = 0; i < p.tensors.size(); ++i) {
    const MixTensor& t = p.tensors[i];
    const gguf::TensorInfo* info = f.find_tensor(t.name);
    p.src.push_back(info);
    const DType to = p.types[i];
    if (to != t.type) {
      const DTypeTraits& tr = dtype_traits(to);
      if (!storage_quantizer(to) || !tr.vec_dot)
        fail("{}: tensor '{}': type {} is not a weight type moe.cpp can write", f.path(), t.name, tr.name);
      if (dtype_traits(t.type).is_quantized && !allow_requantize)
        fail("{}: tensor '{}' is already {}: re-quantizing loses precision twice; pass --allow-requantize to do "
             "it anyway",
             f.path(), t.name, dtype_traits(t.type).name);
    }
    p.bytes_in += info->nbytes;
    p.bytes_out += row_bytes(to, t.dims[0]) * static_cast<uint64_t>(n_rows_of(t.dims));
    p.n_elements += info->n_elements();
  }
  return p;
}

void split_experts(QuantizePlan& plan, const std::vector<size_t>& tensors, const std::vector<std::vector<DType>>& types) {
  std::vector<int> job(plan.tensors.size(), -1);
  for (size_t j = 0; j < tensors.size(); ++j) {
    const MixTensor& t = plan.tensors.at(tensors[j]);
    if (t.dims.size() != 3 || types.at(j).size() != static_cast<size_t>(t.dims[2]))
      fail("split experts: tensor '{}' is not stacked over {} experts", t.name, types.at(j).size());
    job[tensors[j]] = static_cast<int>(j);
  }
  QuantizePlan out;
  out.n_fallback = plan.n_fallback;
  out.bytes_in = plan.bytes_in;
  out.bytes_out = plan.bytes_out;
  out.n_elements = plan.n_elements;
  out.split_experts = true;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const uint64_t base = plan.src_offset.empty() ? 0 : plan.src_offset[i];
    if (job[i] < 0) {
      out.tensors.push_back(plan.tensors[i]);
      out.src.push_back(plan.src[i]);
      out.types.push_back(plan.types[i]);
      out.src_offset.push_back(base);
      continue;
    }
    const MixTensor& t = plan.tensors[i];
    const uint64_t matrix_in = row_bytes(t.type, t.dims[0]) * static_cast<uint64_t>(t.dims[1]);
    for (int64_t e = 0; e < t.dims[2]; ++e) {
      MixTensor m = t;
      m.name = split_expert_name(t.name, static_cast<int>(e));
      m.dims = {t.dims[0], t.dims[1]};
      out.tensors.push_back(std::move(m));
      out.src.push_back(plan.src[i]);
      out.types.push_back(types[static_cast<size_t>(job[i])][static_cast<size_t>(e)]);
      out.src_offset.push_back(base + static_cast<uint64_t>(e) * matrix_in);
    }
  }
  plan = std::move(out);
}

void convert_rows(const uint8_t* src, DType from, uint8_t* dst, DType to, int64_t cols, int64_t rows,
                  ThreadPool* pool) {
  const size_t rb_in = row_bytes(from, cols), rb_out = row_bytes(to, cols);
  if (from == to) {
    std::memcpy(dst, src, rb_in * static_cast<size_t>(rows));
    return;
  }
  const QuantizeFn quantize = storage_quantizer(to);
  if (!quantize) fail("convert: type {} has no quantizer", dtype_traits(to).name);
  auto work = [&](int64_t r0, int64_t r1, int) {
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
      dequantize_row(from, src + static_cast<size_t>(r) * rb_in, row.data(), cols);
      quantize(row.data(), dst + static_cast<size_t>(r) * rb_out, cols);
    }
  };
  if (pool) pool->parallel_for(rows, kRowsPerChunk, work);
  else work(0, rows, 0);
}

void write_quantized(const gguf::File& src, const QuantizePlan& plan, int ftype, const std::string& out,
                     ThreadPool& pool, const QuantizeProgress& progress,
                     const std::function<void(gguf::Writer&)>& extra_metadata) {
  gguf::Writer w;
  for (const auto& [key, value] : src.metadata()) w.set(key, value);
  if (src.alignment() != w.alignment()) w.set_alignment(static_cast<uint32_t>(src.alignment()));
  w.set("general.quantization_version", gguf::Value::make_u32(2));
  w.set("general.file_type", gguf::Value::make_u32(static_cast<uint32_t>(ftype)));
  if (plan.split_experts) w.set(kExpertLayoutKey, gguf::Value::make_string(kExpertLayoutPerExpert));
  if (extra_metadata) extra_metadata(w);

  struct State {
    uint64_t bytes_done = 0;
    int tensors_done = 0;
  };
  auto st = std::make_shared<State>();
  const int n_tensors = static_cast<int>(plan.tensors.size());
  const uint64_t bytes_total = plan.bytes_out;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const gguf::TensorInfo* info = plan.src[i];
    const DType to = plan.types[i];
    const MixTensor& t = plan.tensors[i];
    // The tensor's rows, from its slice of the source (a whole tensor, or one expert of a stacked one).
    const uint64_t base = plan.src_offset.empty() ? 0 : plan.src_offset[i];
    const int64_t rows = n_rows_of(t.dims);
    w.add_tensor_stream(t.name, to, t.dims, [&src, info, to, st, n_tensors, bytes_total, &pool, &progress, base,
                                             rows](uint8_t* dst, uint64_t nbytes) {
      const int64_t cols = info->dims[0];
      const size_t rb_in = row_bytes(info->type, cols), rb_out = row_bytes(to, cols);
      if (info->type == to) {
        src.read_tensor_bytes(*info, base, nbytes, dst);
      } else {
        // Bounded reads: a slab of rows at a time (a few MB), converted on the pool.
        const int64_t slab = std::max<int64_t>(1, static_cast<int64_t>((8u << 20) / std::max<size_t>(rb_in, 1)));
        std::vector<uint8_t> in(static_cast<size_t>(std::min(slab, rows)) * rb_in);
        for (int64_t r0 = 0; r0 < rows; r0 += slab) {
          const int64_t n = std::min(slab, rows - r0);
          src.read_tensor_bytes(*info, base + static_cast<uint64_t>(r0) * rb_in, static_cast<uint64_t>(n) * rb_in,
                                in.data());
          convert_rows(in.data(), info->type, dst + static_cast<size_t>(r0) * rb_out, to, cols, n, &pool);
        }
      }
      src.drop_cached_tensor_bytes(*info);
      st->bytes_done += nbytes;
      ++st->tensors_done;
      if (progress) progress(st->tensors_done, n_tensors, st->bytes_done, bytes_total);
    });
  }
  w.write(out);
}

}  // namespace moe::compress
