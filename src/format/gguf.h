// GGUF v2/v3 reader and writer. The reader validates every count, offset and size against the file
// before trusting it; tensor data is reached through mmap (default) or pread.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tensor/dtype.h"

namespace moe::gguf {

enum class ValueType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};
const char* value_type_name(ValueType t);
size_t value_type_size(ValueType t);  // 0 for STRING/ARRAY

// One metadata value. Scalars are kept in the widest field of their kind; arrays of numbers keep
// their raw little-endian bytes so a file round-trips exactly.
struct Value {
  ValueType type = ValueType::U8;
  ValueType array_type = ValueType::U8;  // element type when type == ARRAY
  uint64_t u = 0;        // unsigned ints and bool
  int64_t i = 0;         // signed ints
  double f = 0;          // F32/F64
  std::string str;       // STRING
  uint64_t array_count = 0;
  std::vector<uint8_t> array_raw;          // numeric array elements, raw
  std::vector<std::string> array_strings;  // string array elements

  // Typed helpers; each throws moe::Error (naming `key`) when the value has another type.
  static Value make_u32(uint32_t v);
  static Value make_i32(int32_t v);
  static Value make_u64(uint64_t v);
  static Value make_f32(float v);
  static Value make_bool(bool v);
  static Value make_string(std::string v);
  static Value make_string_array(std::vector<std::string> v);
  static Value make_f32_array(const std::vector<float>& v);
  static Value make_i32_array(const std::vector<int32_t>& v);
};

struct TensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // ggml order: dims[0] is the contiguous (row) dimension
  DType type = DType::F32;
  uint64_t offset = 0;        // relative to the start of the data section
  uint64_t nbytes = 0;

  int64_t n_elements() const;
  int64_t n_rows() const;     // product of dims[1..]
};

enum class DataAccess { Mmap, Pread };

class File {
 public:
  // Opens and validates the header, metadata and tensor table. Throws moe::Error naming the file
  // and the field on any inconsistency.
  static std::unique_ptr<File> open(const std::string& path, DataAccess access = DataAccess::Mmap);
  // Parses an in-memory image (used by the fuzzer and tests); the buffer must outlive the File.
  static std::unique_ptr<File> parse_memory(const uint8_t* data, size_t size, const std::string& name);
  ~File();

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // absolute file offset of the data section
  uint64_t file_size() const { return file_size_; }

  // Metadata, in file order.
  const std::vector<std::pair<std::string, Value>>& metadata() const { return kv_; }
  const Value* find(const std::string& key) const;
  bool has(const std::string& key) const { return find(key) != nullptr; }

  // Typed getters. Integer getters accept any integer type whose value fits; float getters accept
  // F32/F64 (and integers). Missing keys throw unless an _or default variant is used.
  uint64_t get_uint(const std::string& key) const;
  uint64_t get_uint_or(const std::string& key, uint64_t def) const;
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  double get_float_or(const std::string& key, double def) const;
  bool get_bool_or(const std::string& key, bool def) const;
  std::string get_string(const std::string& key) const;
  std::string get_string_or(const std::string& key, const std::string& def) const;
  const std::vector<std::string>& get_string_array(const std::string& key) const;
  std::vector<float> get_float_array(const std::string& key) const;    // F32/F64 arrays
  std::vector<int64_t> get_int_array(const std::string& key) const;    // any integer array

  // Tensors, in file order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find_tensor(const std::string& name) const;

  // Pointer to tensor data (mmap mode only; throws in pread mode).
  const uint8_t* tensor_data(const TensorInfo& t) const;
  // Copies `size` bytes at `offset` within the tensor into dst (both modes; bounds-checked).
  void read_tensor_bytes(const TensorInfo& t, uint64_t offset, uint64_t size, void* dst) const;
  bool is_mapped() const { return base_ != nullptr; }
  // Pread mode: asks the kernel to drop the page cache it holds for the tensor's bytes once they have
  // been copied into memory of our own, so a memory cgroup is not charged for them twice. No-op when mapped.
  void drop_cached_tensor_bytes(const TensorInfo& t) const;
  // Drops this process's pages of mapped bytes [p, p + n) (whole pages inside the range) once they
  // have been copied elsewhere; a later access would map them again from the page cache. Mmap mode only.
  void release_mapped_bytes(const uint8_t* p, uint64_t n) const;

 private:
  File() = default;
  void parse(const uint8_t* data, size_t size);

  std::string path_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  uint64_t file_size_ = 0;
  std::vector<std::pair<std::string, Value>> kv_;
  std::map<std::string, size_t> kv_index_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
  const uint8_t* base_ = nullptr;  // whole file, when mapped or parsed from memory
  void* map_ = nullptr;
  size_t map_size_ = 0;
  int fd_ = -1;
};

// Builds a GGUF file. Tensor data is supplied either as bytes or by a callback that streams it, so
// large models can be written without holding them in memory (at most one tensor's bytes are held
// at a time for producers, a bounded chunk for copy_from). write() goes to PATH.tmp.<pid> and renames.
// "general.alignment" and set_alignment() are kept in sync: setting the key (it must be a U32 power of
// two) changes the alignment, and a non-default alignment is written as a U32 key.
class Writer {
 public:
  void set(const std::string& key, Value v);  // replaces an existing key in place
  void remove(const std::string& key);
  void set_alignment(uint32_t a);

  using Producer = std::function<void(uint8_t* dst, uint64_t nbytes)>;
  void add_tensor(const std::string& name, DType type, std::vector<int64_t> dims, std::vector<uint8_t> data);
  void add_tensor_stream(const std::string& name, DType type, std::vector<int64_t> dims, Producer producer);

  // Copies every key and tensor of `src` (data read from src on write, so `src` must outlive
  // write()). Keys already set are replaced in place; a tensor name already added is an error.
  void copy_from(const File& src);

  // Layout (as llama.cpp writes it): header, metadata in insertion order, tensor infos, zero padding
  // to the alignment, then each tensor's data padded to the alignment. Writes PATH.tmp.<pid>, fsyncs
  // and renames over PATH; on any error (including a throwing producer) the temporary file is
  // removed and PATH is left untouched.
  void write(const std::string& path, uint32_t version = 3) const;

  const std::vector<std::pair<std::string, Value>>& metadata() const { return kv_; }
  size_t tensor_count() const { return tensors_.size(); }
  uint32_t alignment() const { return alignment_; }

 private:
  struct PendingTensor {
    std::string name;
    DType type;
    std::vector<int64_t> dims;
    uint64_t nbytes;
    Producer producer;
    // Set by copy_from: data is streamed from this file in bounded chunks instead of a producer.
    const File* src = nullptr;
    TensorInfo src_info;
  };
  void add_pending(PendingTensor t);
  std::vector<std::pair<std::string, Value>> kv_;
  std::vector<PendingTensor> tensors_;
  uint32_t alignment_ = 32;
};

}  // namespace moe::gguf
