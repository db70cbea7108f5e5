// GGUF reader: header, metadata and tensor-table parsing with every count, size and offset checked
// against the bytes that actually exist before it is used; tensor data through mmap or pread.
#include "format/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "base/error.h"

namespace moe::gguf {

namespace {

constexpr uint64_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;
// Never reserve more elements than this up front: a hostile count must not turn into a huge
// allocation even when it is (barely) consistent with a very large file. Vectors grow as bytes
// are actually consumed.
constexpr uint64_t kMaxReserve = 1u << 16;

// Thrown (pread mode only) when parsing needs bytes past the prefix loaded so far; open() then
// loads a larger prefix and starts over. Never escapes this file.
struct NeedMore {
  uint64_t upto;
};

std::string printable(std::string_view s, size_t max_len = 48) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < max_len; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\'') {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  if (s.size() > max_len) out += "...";
  return out;
}

bool is_valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(ValueType::F64); }

// Bounds-checked little-endian reader over a prefix of the file. `avail` bytes are in memory;
// `file_size` is the logical size used for all validation so that errors do not depend on how much
// of the file happens to be loaded.
class Cursor {
 public:
  Cursor(const std::string& file, const uint8_t* buf, uint64_t avail, uint64_t file_size)
      : file_(file), buf_(buf), avail_(avail), size_(file_size) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }
  const std::string& file() const { return file_; }

  // Ensures n bytes exist at the current position; `what` names the field for the error.
  template <typename What>
  void need(uint64_t n, What&& what) {
    if (n > left()) {
      fail("{}: {}: expected {} more byte(s) at offset {}, found only {} before the end of the file (size {})",
           file_, what(), n, pos_, left(), size_);
    }
    if (pos_ + n > avail_) throw NeedMore{pos_ + n};
  }

  template <typename T, typename What>
  T read(What&& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, buf_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  const uint8_t* take(uint64_t n) {
    const uint8_t* p = buf_ + pos_;
    pos_ += n;
    return p;
  }

  // A GGUF string: u64 length then bytes. The length is checked against what is left first.
  template <typename What>
  std::string read_string(What&& what) {
    const uint64_t len = read<uint64_t>([&] { return what() + " length"; });
    if (len > left()) {
      fail("{}: {}: string length {} exceeds the {} byte(s) left in the file at offset {}", file_, what(), len,
           left(), pos_);
    }
    need(len, what);
    const uint8_t* p = take(len);
    return std::string(reinterpret_cast<const char*>(p), len);
  }

 private:
  const std::string& file_;
  const uint8_t* buf_;
  uint64_t avail_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }  // caller checks overflow

}  // namespace

// ---------------------------------------------------------------------------------------------
// Value types

const char* value_type_name(ValueType t) {
  switch (t) {
    case ValueType::U8: return "u8";
    case ValueType::I8: return "i8";
    case ValueType::U16: return "u16";
    case ValueType::I16: return "i16";
    case ValueType::U32: return "u32";
    case ValueType::I32: return "i32";
    case ValueType::F32: return "f32";
    case ValueType::BOOL: return "bool";
    case ValueType::STRING: return "string";
    case ValueType::ARRAY: return "array";
    case ValueType::U64: return "u64";
    case ValueType::I64: return "i64";
    case ValueType::F64: return "f64";
  }
  return "unknown";
}

size_t value_type_size(ValueType t) {
  switch (t) {
    case ValueType::U8:
    case ValueType::I8:
    case ValueType::BOOL: return 1;
    case ValueType::U16:
    case ValueType::I16: return 2;
    case ValueType::U32:
    case ValueType::I32:
    case ValueType::F32: return 4;
    case ValueType::U64:
    case ValueType::I64:
    case ValueType::F64: return 8;
    case ValueType::STRING:
    case ValueType::ARRAY: return 0;
  }
  return 0;
}

namespace {

bool is_unsigned_type(ValueType t) {
  return t == ValueType::U8 || t == ValueType::U16 || t == ValueType::U32 || t == ValueType::U64;
}
bool is_signed_type(ValueType t) {
  return t == ValueType::I8 || t == ValueType::I16 || t == ValueType::I32 || t == ValueType::I64;
}
bool is_float_type(ValueType t) { return t == ValueType::F32 || t == ValueType::F64; }

std::string describe_type(const Value& v) {
  if (v.type == ValueType::ARRAY) return fmt::format("array of {}", value_type_name(v.array_type));
  return value_type_name(v.type);
}

// Decodes one little-endian scalar of numeric type t at p into the Value's fields.
void decode_scalar(ValueType t, const uint8_t* p, Value& v) {
  auto rd = [p](auto tag) {
    decltype(tag) x;
    std::memcpy(&x, p, sizeof(x));
    return x;
  };
  switch (t) {
    case ValueType::U8: v.u = rd(uint8_t{}); break;
    case ValueType::BOOL: v.u = rd(uint8_t{}); break;
    case ValueType::U16: v.u = rd(uint16_t{}); break;
    case ValueType::U32: v.u = rd(uint32_t{}); break;
    case ValueType::U64: v.u = rd(uint64_t{}); break;
    case ValueType::I8: v.i = rd(int8_t{}); break;
    case ValueType::I16: v.i = rd(int16_t{}); break;
    case ValueType::I32: v.i = rd(int32_t{}); break;
    case ValueType::I64: v.i = rd(int64_t{}); break;
    case ValueType::F32: v.f = rd(float{}); break;
    case ValueType::F64: v.f = rd(double{}); break;
    default: break;
  }
}

}  // namespace

Value Value::make_u32(uint32_t v) {
  Value r;
  r.type = ValueType::U32;
  r.u = v;
  return r;
}
Value Value::make_i32(int32_t v) {
  Value r;
  r.type = ValueType::I32;
  r.i = v;
  return r;
}
Value Value::make_u64(uint64_t v) {
  Value r;
  r.type = ValueType::U64;
  r.u = v;
  return r;
}
Value Value::make_f32(float v) {
  Value r;
  r.type = ValueType::F32;
  r.f = v;
  return r;
}
Value Value::make_bool(bool v) {
  Value r;
  r.type = ValueType::BOOL;
  r.u = v ? 1 : 0;
  return r;
}
Value Value::make_string(std::string v) {
  Value r;
  r.type = ValueType::STRING;
  r.str = std::move(v);
  return r;
}
Value Value::make_string_array(std::vector<std::string> v) {
  Value r;
  r.type = ValueType::ARRAY;
  r.array_type = ValueType::STRING;
  r.array_count = v.size();
  r.array_strings = std::move(v);
  return r;
}
Value Value::make_f32_array(const std::vector<float>& v) {
  Value r;
  r.type = ValueType::ARRAY;
  r.array_type = ValueType::F32;
  r.array_count = v.size();
  r.array_raw.resize(v.size() * sizeof(float));
  if (!v.empty()) std::memcpy(r.array_raw.data(), v.data(), r.array_raw.size());
  return r;
}
Value Value::make_i32_array(const std::vector<int32_t>& v) {
  Value r;
  r.type = ValueType::ARRAY;
  r.array_type = ValueType::I32;
  r.array_count = v.size();
  r.array_raw.resize(v.size() * sizeof(int32_t));
  if (!v.empty()) std::memcpy(r.array_raw.data(), v.data(), r.array_raw.size());
  return r;
}

// ---------------------------------------------------------------------------------------------
// TensorInfo

int64_t TensorInfo::n_elements() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;  // validated not to overflow when read from a file
  return n;
}

int64_t TensorInfo::n_rows() const {
  int64_t n = 1;
  for (size_t i = 1; i < dims.size(); ++i) n *= dims[i];
  return n;
}

// ---------------------------------------------------------------------------------------------
// Parsing

namespace {

// Reads one metadata value of type `t` (already validated, not ARRAY) for key `key`.
Value read_scalar_value(Cursor& c, ValueType t, const std::string& key) {
  auto where = [&] { return fmt::format("key '{}' value ({})", printable(key), value_type_name(t)); };
  Value v;
  v.type = t;
  if (t == ValueType::STRING) {
    v.str = c.read_string(where);
    return v;
  }
  const size_t n = value_type_size(t);
  c.need(n, where);
  const uint64_t at = c.pos();
  decode_scalar(t, c.take(n), v);
  if (t == ValueType::BOOL && v.u > 1) {
    fail("{}: {}: expected a bool of 0 or 1 at offset {}, found {}", c.file(), where(), at, v.u);
  }
  return v;
}

Value read_array_value(Cursor& c, const std::string& key) {
  auto where = [&] { return fmt::format("key '{}' array", printable(key)); };
  Value v;
  v.type = ValueType::ARRAY;
  const uint64_t type_at = c.pos();
  const uint32_t et = c.read<uint32_t>([&] { return where() + " element type"; });
  if (et == static_cast<uint32_t>(ValueType::ARRAY)) {
    fail("{}: {}: element type at offset {}: nested arrays are not supported", c.file(), where(), type_at);
  }
  if (!is_valid_value_type(et)) {
    fail("{}: {}: element type at offset {}: expected a GGUF value type 0..12, found {}", c.file(), where(),
         type_at, et);
  }
  v.array_type = static_cast<ValueType>(et);
  const uint64_t count = c.read<uint64_t>([&] { return where() + " count"; });
  v.array_count = count;
  if (v.array_type == ValueType::STRING) {
    // Every string takes at least its 8-byte length, so the count is bounded by the bytes left.
    if (count > c.left() / 8) {
      fail("{}: {}: count {} of strings needs at least {} bytes, but only {} are left at offset {}", c.file(),
           where(), count, count > UINT64_MAX / 8 ? std::string("2^64+") : std::to_string(count * 8), c.left(),
           c.pos());
    }
    v.array_strings.reserve(std::min<uint64_t>(count, kMaxReserve));
    for (uint64_t i = 0; i < count; ++i) {
      v.array_strings.push_back(
          c.read_string([&] { return fmt::format("key '{}' array element {}", printable(key), i); }));
    }
    return v;
  }
  const uint64_t esz = value_type_size(v.array_type);
  if (count > c.left() / esz) {
    fail("{}: {}: count {} of {} ({} bytes each) exceeds the {} byte(s) left at offset {}", c.file(), where(),
         count, value_type_name(v.array_type), esz, c.left(), c.pos());
  }
  const uint64_t nbytes = count * esz;
  c.need(nbytes, where);
  const uint64_t at = c.pos();
  const uint8_t* p = c.take(nbytes);
  if (v.array_type == ValueType::BOOL) {
    for (uint64_t i = 0; i < count; ++i) {
      if (p[i] > 1) {
        fail("{}: key '{}' array element {}: expected a bool of 0 or 1 at offset {}, found {}", c.file(),
             printable(key), i, at + i, p[i]);
      }
    }
  }
  v.array_raw.assign(p, p + nbytes);
  return v;
}

}  // namespace

void File::parse(const uint8_t* data, size_t size) {
  // `size` bytes are in memory; file_size_ is the logical size (larger only in pread mode while the
  // header prefix is being loaded).
  Cursor c(path_, data, size, file_size_);
  kv_.clear();
  kv_index_.clear();
  tensors_.clear();
  tensor_index_.clear();
  alignment_ = kDefaultAlignment;

  // Header.
  c.need(4, [] { return std::string("header magic"); });
  const uint8_t* magic = c.take(4);
  if (std::memcmp(magic, "GGUF", 4) != 0) {
    fail("{}: header magic: expected 'GGUF', found '{}'", path_,
         printable(std::string_view(reinterpret_cast<const char*>(magic), 4)));
  }
  version_ = c.read<uint32_t>([] { return std::string("header version"); });
  if (version_ == 1) {
    fail("{}: header version: expected 2 or 3, found 1 (GGUF v1 is obsolete; re-convert the model)", path_);
  }
  if (version_ != 2 && version_ != 3) {
    if ((version_ & 0xFFFF) == 0 && version_ != 0) {
      fail("{}: header version: expected 2 or 3, found {} (0x{:08x}; a big-endian file?)", path_, version_,
           version_);
    }
    fail("{}: header version: expected 2 or 3, found {}", path_, version_);
  }
  const uint64_t n_tensors = c.read<uint64_t>([] { return std::string("header tensor count"); });
  const uint64_t n_kv = c.read<uint64_t>([] { return std::string("header metadata count"); });
  // Each key needs >= 8 (length) + 1 (nonempty name) + 4 (type) + 1 (smallest value) bytes; each
  // tensor info >= 8 + 1 + 4 (n_dims) + 8 (one dim) + 4 (type) + 8 (offset).
  constexpr uint64_t kMinKvBytes = 14, kMinTensorBytes = 33;
  if (n_kv > c.left() / kMinKvBytes) {
    fail("{}: header metadata count: {} key(s) cannot fit in the {} byte(s) left after the header", path_, n_kv,
         c.left());
  }
  if (n_tensors > c.left() / kMinTensorBytes) {
    fail("{}: header tensor count: {} tensor(s) cannot fit in the {} byte(s) left after the header", path_,
         n_tensors, c.left());
  }

  // Metadata.
  kv_.reserve(std::min<uint64_t>(n_kv, kMaxReserve));
  for (uint64_t i = 0; i < n_kv; ++i) {
    const uint64_t key_at = c.pos();
    std::string key = c.read_string([&] { return fmt::format("metadata #{} key", i); });
    if (key.empty()) fail("{}: metadata #{} key at offset {}: expected a non-empty key, found ''", path_, i, key_at);
    if (kv_index_.count(key)) {
      fail("{}: key '{}' (metadata #{} at offset {}): duplicate key, first seen as metadata #{}", path_,
           printable(key), i, key_at, kv_index_[key]);
    }
    const uint64_t type_at = c.pos();
    const uint32_t t = c.read<uint32_t>([&] { return fmt::format("key '{}' type", printable(key)); });
    if (!is_valid_value_type(t)) {
      fail("{}: key '{}' type at offset {}: expected a GGUF value type 0..12, found {}", path_, printable(key),
           type_at, t);
    }
    Value v = static_cast<ValueType>(t) == ValueType::ARRAY ? read_array_value(c, key)
                                                            : read_scalar_value(c, static_cast<ValueType>(t), key);
    kv_index_.emplace(key, kv_.size());
    kv_.emplace_back(std::move(key), std::move(v));
  }

  if (const Value* a = find("general.alignment")) {
    if (a->type != ValueType::U32) {
      fail("{}: key 'general.alignment': expected type u32, found {}", path_, describe_type(*a));
    }
    if (a->u == 0 || (a->u & (a->u - 1)) != 0) {
      fail("{}: key 'general.alignment': expected a nonzero power of two, found {}", path_, a->u);
    }
    alignment_ = a->u;
  }

  // Tensor infos.
  tensors_.reserve(std::min<uint64_t>(n_tensors, kMaxReserve));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    const uint64_t name_at = c.pos();
    TensorInfo ti;
    ti.name = c.read_string([&] { return fmt::format("tensor #{} name", i); });
    if (ti.name.empty()) {
      fail("{}: tensor #{} name at offset {}: expected a non-empty name, found ''", path_, i, name_at);
    }
    const std::string pname = printable(ti.name);
    if (tensor_index_.count(ti.name)) {
      fail("{}: tensor '{}' (#{} at offset {}): duplicate tensor name, first seen as tensor #{}", path_, pname, i,
           name_at, tensor_index_[ti.name]);
    }
    const uint32_t n_dims = c.read<uint32_t>([&] { return fmt::format("tensor '{}' n_dims", pname); });
    if (n_dims < 1 || n_dims > kMaxDims) {
      fail("{}: tensor '{}' n_dims: expected 1..{}, found {}", path_, pname, kMaxDims, n_dims);
    }
    int64_t n_elems = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const int64_t dim = c.read<int64_t>([&] { return fmt::format("tensor '{}' dims[{}]", pname, d); });
      if (dim < 1) fail("{}: tensor '{}' dims[{}]: expected >= 1, found {}", path_, pname, d, dim);
      if (__builtin_mul_overflow(n_elems, dim, &n_elems)) {
        fail("{}: tensor '{}' dims: element count overflows int64 at dims[{}] = {}", path_, pname, d, dim);
      }
      ti.dims.push_back(dim);
    }
    const uint32_t raw_type = c.read<uint32_t>([&] { return fmt::format("tensor '{}' type", pname); });
    const DTypeTraits* tr = find_file_dtype(raw_type);
    if (tr == nullptr) {
      fail("{}: tensor '{}' type: expected a supported ggml type, found unknown/unsupported type {}", path_, pname,
           raw_type);
    }
    ti.type = tr->type;
    if (ti.dims[0] % tr->block_elems != 0) {
      fail("{}: tensor '{}' dims[0]: expected a multiple of the {} block size {}, found {}", path_, pname, tr->name,
           tr->block_elems, ti.dims[0]);
    }
    uint64_t rb = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(ti.dims[0] / tr->block_elems),
                               static_cast<uint64_t>(tr->block_bytes), &rb)) {
      fail("{}: tensor '{}' dims[0]: row of {} {} elements overflows the byte size", path_, pname, ti.dims[0],
           tr->name);
    }
    rb = row_bytes(ti.type, ti.dims[0]);
    if (__builtin_mul_overflow(rb, static_cast<uint64_t>(ti.n_rows()), &ti.nbytes)) {
      fail("{}: tensor '{}' dims: byte size {} x {} rows overflows 64 bits", path_, pname, rb, ti.n_rows());
    }
    ti.offset = c.read<uint64_t>([&] { return fmt::format("tensor '{}' offset", pname); });
    if (ti.offset % alignment_ != 0) {
      fail("{}: tensor '{}' offset: expected a multiple of the alignment {}, found {}", path_, pname, alignment_,
           ti.offset);
    }
    tensor_index_.emplace(ti.name, tensors_.size());
    tensors_.push_back(std::move(ti));
  }

  // Data section: starts at the first aligned offset after the tensor table.
  const uint64_t header_end = c.pos();
  const uint64_t padded = header_end > UINT64_MAX - alignment_ ? UINT64_MAX : align_up(header_end, alignment_);
  if (n_tensors == 0) {
    data_offset_ = std::min(padded, file_size_);  // writers differ on padding an empty data section
  } else {
    if (padded > file_size_) {
      fail("{}: data section: expected it to start at offset {} (header end {} aligned to {}), but the file has "
           "only {} bytes",
           path_, padded, header_end, alignment_, file_size_);
    }
    data_offset_ = padded;
  }
  const uint64_t data_size = file_size_ - data_offset_;
  for (const TensorInfo& ti : tensors_) {
    if (ti.offset > data_size || ti.nbytes > data_size - ti.offset) {
      fail("{}: tensor '{}' offset: expected {} bytes at data offset {} to lie within the {}-byte data section "
           "(file offset {}), but they run past the end of the file",
           path_, printable(ti.name), ti.nbytes, ti.offset, data_size, data_offset_);
    }
  }
}

std::unique_ptr<File> File::parse_memory(const uint8_t* data, size_t size, const std::string& name) {
  std::unique_ptr<File> f(new File());
  f->path_ = name;
  f->file_size_ = size;
  static const uint8_t kEmpty[1] = {0};
  if (data == nullptr) data = kEmpty;  // size must then be 0; keeps pointer arithmetic defined
  f->parse(data, size);
  f->base_ = data;
  return f;
}

namespace {

// Reads exactly n bytes at off; returns false on EOF, throws on I/O error.
bool pread_full(int fd, void* dst, uint64_t n, uint64_t off, const std::string& path) {
  auto* p = static_cast<uint8_t*>(dst);
  while (n > 0) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, 1u << 30));
    const ssize_t r = ::pread(fd, p, chunk, static_cast<off_t>(off));
    if (r < 0) {
      if (errno == EINTR) continue;
      fail("{}: read at offset {}: {}", path, off, std::strerror(errno));
    }
    if (r == 0) return false;
    p += r;
    n -= static_cast<uint64_t>(r);
    off += static_cast<uint64_t>(r);
  }
  return true;
}

}  // namespace

std::unique_ptr<File> File::open(const std::string& path, DataAccess access) {
  std::unique_ptr<File> f(new File());
  f->path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: open: {}", path, std::strerror(errno));
  f->fd_ = fd;  // closed by ~File from here on
  struct stat st {};
  if (::fstat(fd, &st) != 0) fail("{}: stat: {}", path, std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail("{}: open: expected a regular file", path);
  f->file_size_ = static_cast<uint64_t>(st.st_size);
  if (f->file_size_ < 4) {
    fail("{}: header magic: expected 4 bytes 'GGUF', found a {}-byte file", path, f->file_size_);
  }

  if (access == DataAccess::Mmap) {
    void* m = ::mmap(nullptr, f->file_size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) fail("{}: mmap of {} bytes: {}", path, f->file_size_, std::strerror(errno));
    f->map_ = m;
    f->map_size_ = f->file_size_;
    f->parse(static_cast<const uint8_t*>(m), f->map_size_);
    f->base_ = static_cast<const uint8_t*>(m);
    ::close(f->fd_);  // the mapping keeps the file alive
    f->fd_ = -1;
    return f;
  }

  // Pread: load a prefix, grow it until the whole header parses. Metadata values are copied out,
  // so the prefix is dropped afterwards.
  uint64_t want = std::min<uint64_t>(f->file_size_, 1u << 20);
  std::vector<uint8_t> buf;
  for (;;) {
    buf.resize(want);
    if (!pread_full(fd, buf.data(), want, 0, path)) {
      fail("{}: read: file shrank below {} bytes while reading its header", path, want);
    }
    try {
      f->parse(buf.data(), buf.size());
      break;
    } catch (const NeedMore& more) {
      uint64_t next = std::max<uint64_t>(more.upto, want * 2);
      want = std::min<uint64_t>(next, f->file_size_);
    }
  }
  return f;
}

void File::release_mapped_bytes(const uint8_t* p, uint64_t n) const {
  const auto* base = static_cast<const uint8_t*>(map_);
  if (map_ == nullptr || p < base || n > map_size_ || static_cast<uint64_t>(p - base) > map_size_ - n)
    fail("{}: release_mapped_bytes: range is not inside the file mapping", path_);
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t start = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + n) / page * page;
  // Advice only: a failure leaves the pages mapped, which costs memory but not correctness.
  if (end > start) (void)::madvise(reinterpret_cast<void*>(start), end - start, MADV_DONTNEED);
}

File::~File() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
  if (fd_ >= 0) ::close(fd_);
}

// ---------------------------------------------------------------------------------------------
// Getters

const Value* File::find(const std::string& key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

namespace {

[[noreturn]] void missing(const std::string& file, const std::string& key, const char* expected) {
  fail("{}: key '{}': expected {}, found no such key", file, key, expected);
}

[[noreturn]] void wrong_type(const std::string& file, const std::string& key, const char* expected,
                             const Value& v) {
  fail("{}: key '{}': expected {}, found {}", file, key, expected, describe_type(v));
}

}  // namespace

uint64_t File::get_uint(const std::string& key) const {
  const Value* v = find(key);
  if (!v) missing(path_, key, "an unsigned integer");
  if (is_unsigned_type(v->type)) return v->u;
  if (is_signed_type(v->type)) {
    if (v->i < 0) fail("{}: key '{}': expected a non-negative integer, found {}", path_, key, v->i);
    return static_cast<uint64_t>(v->i);
  }
  wrong_type(path_, key, "an unsigned integer", *v);
}

uint64_t File::get_uint_or(const std::string& key, uint64_t def) const {
  return has(key) ? get_uint(key) : def;
}

int64_t File::get_int(const std::string& key) const {
  const Value* v = find(key);
  if (!v) missing(path_, key, "an integer");
  if (is_signed_type(v->type)) return v->i;
  if (is_unsigned_type(v->type)) {
    if (v->u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail("{}: key '{}': expected an integer that fits int64, found {}", path_, key, v->u);
    }
    return static_cast<int64_t>(v->u);
  }
  wrong_type(path_, key, "an integer", *v);
}

double File::get_float(const std::string& key) const {
  const Value* v = find(key);
  if (!v) missing(path_, key, "a number");
  if (is_float_type(v->type)) return v->f;
  if (is_signed_type(v->type)) return static_cast<double>(v->i);
  if (is_unsigned_type(v->type)) return static_cast<double>(v->u);
  wrong_type(path_, key, "a number", *v);
}

double File::get_float_or(const std::string& key, double def) const {
  return has(key) ? get_float(key) : def;
}

bool File::get_bool_or(const std::string& key, bool def) const {
  const Value* v = find(key);
  if (!v) return def;
  if (v->type != ValueType::BOOL) wrong_type(path_, key, "a bool", *v);
  return v->u != 0;
}

std::string File::get_string(const std::string& key) const {
  const Value* v = find(key);
  if (!v) missing(path_, key, "a string");
  if (v->type != ValueType::STRING) wrong_type(path_, key, "a string", *v);
  return v->str;
}

std::string File::get_string_or(const std::string& key, const std::string& def) const {
  return has(key) ? get_string(key) : def;
}

const std::vector<std::string>& File::get_string_array(const std::string& key) const {
  const Value* v = find(key);
  if (!v) missing(path_, key, "an array of strings");
  if (v->type != ValueType::ARRAY || v->array_type != ValueType::STRING) {
    wrong_type(path_, key, "an array of strings", *v);
  }
  return v->array_strings;
}

std::vector<float> File::get_float_array(const std::string& key) const {
  const Value* v = find(key);
  if (!v) missing(path_, key, "an array of f32/f64");
  if (v->type != ValueType::ARRAY || !is_float_type(v->array_type)) {
    wrong_type(path_, key, "an array of f32/f64", *v);
  }
  std::vector<float> out(v->array_count);
  const size_t esz = value_type_size(v->array_type);
  for (uint64_t i = 0; i < v->array_count; ++i) {
    Value tmp;
    decode_scalar(v->array_type, v->array_raw.data() + i * esz, tmp);
    out[i] = static_cast<float>(tmp.f);
  }
  return out;
}

std::vector<int64_t> File::get_int_array(const std::string& key) const {
  const Value* v = find(key);
  if (!v) missing(path_, key, "an array of integers");
  const bool is_u = v->type == ValueType::ARRAY && is_unsigned_type(v->array_type);
  const bool is_s = v->type == ValueType::ARRAY && is_signed_type(v->array_type);
  if (!is_u && !is_s) wrong_type(path_, key, "an array of integers", *v);
  std::vector<int64_t> out(v->array_count);
  const size_t esz = value_type_size(v->array_type);
  for (uint64_t i = 0; i < v->array_count; ++i) {
    Value tmp;
    decode_scalar(v->array_type, v->array_raw.data() + i * esz, tmp);
    if (is_u) {
      if (tmp.u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        fail("{}: key '{}' element {}: expected an integer that fits int64, found {}", path_, key, i, tmp.u);
      }
      out[i] = static_cast<int64_t>(tmp.u);
    } else {
      out[i] = tmp.i;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Tensors

const TensorInfo* File::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {

void check_tensor_range(const std::string& path, uint64_t data_offset, uint64_t file_size, const TensorInfo& t,
                        uint64_t offset, uint64_t size) {
  const uint64_t data_size = file_size - data_offset;
  if (t.offset > data_size || t.nbytes > data_size - t.offset) {
    fail("{}: tensor '{}': expected {} bytes at data offset {} within the {}-byte data section, found it out of "
         "range (is this TensorInfo from another file?)",
         path, printable(t.name), t.nbytes, t.offset, data_size);
  }
  if (offset > t.nbytes || size > t.nbytes - offset) {
    fail("{}: tensor '{}': read of {} bytes at offset {}: expected a range inside its {} bytes", path,
         printable(t.name), size, offset, t.nbytes);
  }
}

}  // namespace

const uint8_t* File::tensor_data(const TensorInfo& t) const {
  if (base_ == nullptr) {
    fail("{}: tensor '{}': tensor_data needs the file mapped, but it was opened in pread mode", path_,
         printable(t.name));
  }
  check_tensor_range(path_, data_offset_, file_size_, t, 0, 0);
  return base_ + data_offset_ + t.offset;
}

void File::read_tensor_bytes(const TensorInfo& t, uint64_t offset, uint64_t size, void* dst) const {
  check_tensor_range(path_, data_offset_, file_size_, t, offset, size);
  if (size == 0) return;
  const uint64_t abs = data_offset_ + t.offset + offset;
  if (base_ != nullptr) {
    std::memcpy(dst, base_ + abs, size);
    return;
  }
  if (!pread_full(fd_, dst, size, abs, path_)) {
    fail("{}: tensor '{}': expected {} bytes at file offset {}, found the file truncated since it was opened",
         path_, printable(t.name), size, abs);
  }
}

void File::drop_cached_tensor_bytes(const TensorInfo& t) const {
  if (fd_ < 0) return;
  // Advice only: pages that stay cached cost memory, not correctness.
  (void)::posix_fadvise(fd_, static_cast<off_t>(data_offset_ + t.offset), static_cast<off_t>(t.nbytes),
                        POSIX_FADV_DONTNEED);
}

}  // namespace moe::gguf
