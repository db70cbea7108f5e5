#include "model/lowbit_experts.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <mutex>
#include <vector>

#include "base/error.h"

namespace moe {

namespace {

constexpr uint32_t kFormatVersion = 1;
constexpr const char* kVersionKey = "lowbit.version";
constexpr const char* kTypeKey = "lowbit.type";
constexpr const char* kArchKey = "lowbit.base.architecture";
constexpr const char* kLayersKey = "lowbit.base.n_layer";
constexpr const char* kExpertsKey = "lowbit.base.n_expert";
constexpr const char* kSizeKey = "lowbit.base.file_size";
constexpr const char* kFingerprintKey = "lowbit.base.fingerprint";
constexpr const char* kFileKey = "lowbit.base.file";
constexpr uint64_t kSampleBytes = 4096;  // of each expert tensor, for the fingerprint
constexpr int64_t kRowsPerChunk = 32;    // rows a worker reads and quantizes at a time

constexpr Role kExpertRoles[3] = {Role::ExpGate, Role::ExpUp, Role::ExpDown};

// The model's routed-expert tensors, in layer order (gate, up, down per MoE layer).
std::vector<const WeightView*> expert_tensors(const Model& model) {
  std::vector<const WeightView*> out;
  for (int il = 0; il < model.spec().n_layer; ++il) {
    if (!model.spec().layers[static_cast<size_t>(il)].is_moe) continue;
    for (Role r : kExpertRoles) {
      const WeightView& v = model.layer(il)[r];
      if (v) out.push_back(&v);
    }
  }
  return out;
}

struct Fnv {
  uint64_t h = 1469598103934665603ull;
  void bytes(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) {
      h ^= b[i];
      h *= 1099511628211ull;
    }
  }
  template <typename T>
  void value(T v) {
    bytes(&v, sizeof v);
  }
};

int max_experts(const Model& model) {
  int n = 0;
  for (const LayerSpec& L : model.spec().layers)
    if (L.is_moe) n = std::max(n, L.moe.n_expert);
  return n;
}

std::string dims_str(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

}  // namespace

std::string LowBitBase::describe() const {
  return fmt::format("{}: {}, {} layers, {} experts, {} bytes, fingerprint {:016x}",
                     file_name.empty() ? "?" : file_name, arch, n_layer, n_expert, file_size, fingerprint);
}

LowBitBase low_bit_base(const Model& model) {
  LowBitBase b;
  const gguf::File& f = model.file();
  b.arch = model.spec().arch;
  b.n_layer = model.spec().n_layer;
  b.n_expert = max_experts(model);
  b.file_size = f.file_size();
  b.file_name = std::filesystem::path(f.path()).filename().string();
  Fnv h;
  std::vector<uint8_t> sample;
  for (const WeightView* v : expert_tensors(model)) {
    const gguf::TensorInfo& t = *v->info;
    h.bytes(t.name.data(), t.name.size());
    h.value(static_cast<uint32_t>(t.type));
    for (int64_t d : t.dims) h.value(d);
    sample.resize(static_cast<size_t>(std::min(kSampleBytes, t.nbytes)));
    f.read_tensor_bytes(t, 0, sample.size(), sample.data());
    h.bytes(sample.data(), sample.size());
  }
  h.value(b.file_size);
  b.fingerprint = h.h;
  return b;
}

void check_low_bit_type(const Model& model, DType type) {
  const DTypeTraits& tr = dtype_traits(type);
  if (!storage_quantizer(type) || !tr.vec_dot)
    fail("low-bit type {}: not a weight type with a quantizer (use e.g. q2_K, q3_K, q4_K, q4_0, q8_0)", tr.name);
  const auto tensors = expert_tensors(model);
  if (tensors.empty()) fail("{}: the model has no routed experts to quantize", model.file().path());
  for (const WeightView* v : tensors)
    if (v->cols % tr.block_elems != 0)
      fail("{}: tensor '{}': rows of {} elements are not a multiple of the {} block size {}; pick a type with "
           "smaller blocks (q4_0, q5_0, q8_0 use 32)",
           model.file().path(), v->info->name, v->cols, tr.name, tr.block_elems);
}

void write_low_bit_experts(const Model& model, DType type, const std::string& out_path, ThreadPool& pool,
                           const LowBitProgress& progress) {
  check_low_bit_type(model, type);
  const DTypeTraits& tr = dtype_traits(type);
  const QuantizeFn quantize = storage_quantizer(type);
  const LowBitBase base = low_bit_base(model);
  // Expert bytes are read with pread from a second handle: nothing of the model is mapped or kept.
  auto src = gguf::File::open(model.file().path(), gguf::DataAccess::Pread);
  const auto tensors = expert_tensors(model);
  int64_t rows_total = 0;
  for (const WeightView* v : tensors) rows_total += v->rows * v->n_mat;

  gguf::Writer w;
  w.set(kVersionKey, gguf::Value::make_u32(kFormatVersion));
  w.set(kTypeKey, gguf::Value::make_string(std::string(tr.name)));
  w.set(kArchKey, gguf::Value::make_string(base.arch));
  w.set(kLayersKey, gguf::Value::make_u32(static_cast<uint32_t>(base.n_layer)));
  w.set(kExpertsKey, gguf::Value::make_u32(static_cast<uint32_t>(base.n_expert)));
  w.set(kSizeKey, gguf::Value::make_u64(base.file_size));
  w.set(kFingerprintKey, gguf::Value::make_u64(base.fingerprint));
  w.set(kFileKey, gguf::Value::make_string(base.file_name));

  auto rows_done = std::make_shared<std::atomic<int64_t>>(0);
  auto tensors_done = std::make_shared<int>(0);
  const int n_tensors = static_cast<int>(tensors.size());
  for (const WeightView* v : tensors) {
    const gguf::TensorInfo* info = src->find_tensor(v->info->name);
    if (!info) fail("{}: tensor '{}' disappeared while reading", src->path(), v->info->name);
    const DType src_type = v->type;
    const int64_t cols = v->cols, n_rows = v->rows * v->n_mat;
    const size_t src_rb = row_bytes(src_type, cols), dst_rb = row_bytes(type, cols);
    const gguf::File* file = src.get();
    w.add_tensor_stream(info->name, type, info->dims, [=, &pool, &progress](uint8_t* dst, uint64_t nbytes) {
      if (nbytes != dst_rb * static_cast<uint64_t>(n_rows))
        fail("{}: tensor '{}': {} output bytes, expected {}", out_path, info->name, nbytes, dst_rb * n_rows);
      struct Scratch {
        std::vector<uint8_t> in;
        std::vector<float> row;
      };
      std::vector<Scratch> scratch(static_cast<size_t>(pool.size()));
      std::mutex error_mu;
      std::string error;
      pool.parallel_for(n_rows, kRowsPerChunk, [&](int64_t r0, int64_t r1, int ti) {
        try {
          Scratch& s = scratch[static_cast<size_t>(ti)];
          s.in.resize(src_rb * static_cast<size_t>(r1 - r0));
          s.row.resize(static_cast<size_t>(cols));
          file->read_tensor_bytes(*info, static_cast<uint64_t>(r0) * src_rb, s.in.size(), s.in.data());
          for (int64_t r = r0; r < r1; ++r) {
            dequantize_row(src_type, s.in.data() + static_cast<size_t>(r - r0) * src_rb, s.row.data(), cols);
            quantize(s.row.data(), dst + static_cast<size_t>(r) * dst_rb, cols);
          }
          const int64_t done = rows_done->fetch_add(r1 - r0) + (r1 - r0);
          if (ti == 0 && progress) progress(*tensors_done, n_tensors, done, rows_total);
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> lock(error_mu);
          if (error.empty()) error = e.what();
        }
      });
      if (!error.empty()) throw Error(error);
      // Read once: its page cache would only crowd the memory (and a cgroup's limit) until reclaimed.
      file->drop_cached_tensor_bytes(*info);
      ++*tensors_done;
      if (progress) progress(*tensors_done, n_tensors, rows_done->load(), rows_total);
    });
  }
  w.write(out_path);
  // Readahead past a tensor's end may have cached the start of one processed before: drop them all again.
  for (const WeightView* v : tensors)
    if (const gguf::TensorInfo* info = src->find_tensor(v->info->name)) src->drop_cached_tensor_bytes(*info);
}

uint64_t low_bit_file_expert_bytes(const std::string& path) {
  if (!std::filesystem::exists(path))
    fail("{}: no low-bit expert file there; make one with `moe quantize-experts -m MODEL --type q2_K -o {}`", path,
         path);
  auto f = gguf::File::open(path, gguf::DataAccess::Pread);
  uint64_t bytes = 0;
  for (const auto& t : f->tensors()) bytes += t.nbytes;
  return bytes;
}

LowBitExperts open_low_bit_experts(const std::string& path, const Model& model, gguf::DataAccess access) {
  const std::string& model_path = model.file().path();
  if (!std::filesystem::exists(path))
    fail("{}: no low-bit expert file there; make one with `moe quantize-experts -m {} --type q2_K -o {}`", path,
         model_path, path);
  LowBitExperts out;
  out.file = gguf::File::open(path, access);
  const gguf::File& f = *out.file;
  if (!f.has(kVersionKey))
    fail("{}: not a low-bit expert file (no '{}' key); make one with `moe quantize-experts -m {} --type q2_K -o "
         "FILE`",
         path, kVersionKey, model_path);
  if (f.get_uint(kVersionKey) != kFormatVersion)
    fail("{}: {}: version {} is not supported (expected {})", path, kVersionKey, f.get_uint(kVersionKey),
         kFormatVersion);
  LowBitBase stored;
  stored.arch = f.get_string(kArchKey);
  stored.n_layer = static_cast<int>(f.get_uint(kLayersKey));
  stored.n_expert = static_cast<int>(f.get_uint(kExpertsKey));
  stored.file_size = f.get_uint(kSizeKey);
  stored.fingerprint = f.get_uint(kFingerprintKey);
  stored.file_name = f.get_string_or(kFileKey, "");
  const LowBitBase actual = low_bit_base(model);
  if (!stored.same_model(actual))
    fail("{}: low-bit experts were made from another model ({}), not from {} ({}); make them with `moe "
         "quantize-experts -m {} --type {} -o FILE`",
         path, stored.describe(), model_path, actual.describe(), model_path, f.get_string_or(kTypeKey, "q2_K"));
  const std::string type_name = f.get_string(kTypeKey);
  const auto type = dtype_from_name(type_name);
  if (!type) fail("{}: {}: unknown type '{}'", path, kTypeKey, type_name);
  out.type = *type;

  ExpertLayout full = model.expert_layout();
  out.layout.path = path;
  out.layout.n_expert = full.n_expert;
  out.layout.n_expert_used = full.n_expert_used;
  out.layout.layers.resize(full.layers.size());
  for (int il = 0; il < model.spec().n_layer; ++il) {
    if (!model.spec().layers[static_cast<size_t>(il)].is_moe) continue;
    for (int i = 0; i < 3; ++i) {
      const WeightView& v = model.layer(il)[kExpertRoles[i]];
      const gguf::TensorInfo* t = f.find_tensor(v.info->name);
      if (!t) fail("{}: tensor '{}' is missing (the model has it)", path, v.info->name);
      if (t->dims != v.info->dims)
        fail("{}: tensor '{}': shape {} does not match the model's {}", path, t->name, dims_str(t->dims),
             dims_str(v.info->dims));
      if (t->type != out.type)
        fail("{}: tensor '{}': type {} is not the file's {} ({})", path, t->name, dtype_traits(t->type).name,
             kTypeKey, type_name);
      ExpertTensorLayout& l = out.layout.layers[static_cast<size_t>(il)][static_cast<size_t>(i)];
      l.data = f.is_mapped() ? f.tensor_data(*t) : nullptr;
      l.file_offset = f.data_offset() + t->offset;
      l.shape = {nullptr, t->type, v.rows, v.cols, row_bytes(t->type, v.cols)};
      l.bias = full.layers[static_cast<size_t>(il)][static_cast<size_t>(i)].bias;  // biases stay the model's
      out.bytes += t->nbytes;
    }
  }
  check_low_bit_layout(full, out.layout);
  return out;
}

}  // namespace moe
