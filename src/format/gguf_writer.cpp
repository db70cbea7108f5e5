// GGUF writer: llama.cpp's layout, streamed to a temporary file that is fsynced and renamed into
// place, so a reader never sees a half-written model and a failed write leaves nothing behind.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "base/error.h"
#include "format/gguf.h"

namespace moe::gguf {

namespace {

constexpr uint32_t kDefaultAlignment = 32;
constexpr const char* kAlignmentKey = "general.alignment";
constexpr uint64_t kCopyChunk = 4u << 20;  // copy_from streams tensor data in chunks of this size

bool is_pow2(uint64_t a) { return a != 0 && (a & (a - 1)) == 0; }

// Checks a tensor description and returns its byte size.
uint64_t tensor_nbytes(const std::string& name, DType type, const std::vector<int64_t>& dims) {
  if (name.empty()) fail("gguf writer: tensor name: expected a non-empty name, found ''");
  if (dims.empty() || dims.size() > 4) {
    fail("gguf writer: tensor '{}' dims: expected 1..4 dimensions, found {}", name, dims.size());
  }
  int64_t n = 1;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] < 1) fail("gguf writer: tensor '{}' dims[{}]: expected >= 1, found {}", name, i, dims[i]);
    if (__builtin_mul_overflow(n, dims[i], &n)) {
      fail("gguf writer: tensor '{}' dims: element count overflows int64", name);
    }
  }
  const DTypeTraits* tr = find_file_dtype(static_cast<uint32_t>(type));
  if (tr == nullptr)
    fail("gguf writer: tensor '{}' type: unknown type {} (in-memory layouts such as q4_K_r cannot be written)", name,
         static_cast<uint32_t>(type));
  if (dims[0] % tr->block_elems != 0) {
    fail("gguf writer: tensor '{}' dims[0]: expected a multiple of the {} block size {}, found {}", name,
         tr->name, tr->block_elems, dims[0]);
  }
  uint64_t rb = 0, total = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(dims[0] / tr->block_elems), tr->block_bytes, &rb) ||
      __builtin_mul_overflow(static_cast<uint64_t>(row_bytes(type, dims[0])), static_cast<uint64_t>(n / dims[0]),
                             &total)) {
    fail("gguf writer: tensor '{}' dims: byte size overflows 64 bits", name);
  }
  return total;
}

// Buffered output to a file descriptor with a running byte count.
class Out {
 public:
  Out(int fd, const std::string& path) : fd_(fd), path_(path) { buf_.reserve(kBuf); }

  uint64_t written() const { return written_ + buf_.size(); }

  void write(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    if (n >= kBuf) {  // large spans bypass the buffer
      flush();
      raw_write(b, n);
      written_ += n;
      return;
    }
    if (buf_.size() + n > kBuf) flush();
    buf_.insert(buf_.end(), b, b + n);
  }

  template <typename T>
  void put(T v) {
    write(&v, sizeof(v));
  }

  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    write(s.data(), s.size());
  }

  void pad(uint64_t alignment) {
    static const uint8_t zeros[256] = {};
    uint64_t n = (alignment - written() % alignment) % alignment;
    while (n > 0) {
      const size_t k = static_cast<size_t>(std::min<uint64_t>(n, sizeof(zeros)));
      write(zeros, k);
      n -= k;
    }
  }

  void flush() {
    raw_write(buf_.data(), buf_.size());
    written_ += buf_.size();
    buf_.clear();
  }

  // Called after each tensor: starts writing it to disk, and waits for the one before it and drops it
  // from the page cache. The output then never holds more than about two tensors in memory, which a
  // memory cgroup would count (dirty pages can only be freed by writeback). Best effort.
  void release_written() {
    flush();
    (void)::sync_file_range(fd_, static_cast<off_t>(started_), static_cast<off_t>(written_ - started_),
                            SYNC_FILE_RANGE_WRITE);
    if (started_ > dropped_) {
      (void)::sync_file_range(fd_, static_cast<off_t>(dropped_), static_cast<off_t>(started_ - dropped_),
                              SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
      (void)::posix_fadvise(fd_, static_cast<off_t>(dropped_), static_cast<off_t>(started_ - dropped_),
                            POSIX_FADV_DONTNEED);
      dropped_ = started_;
    }
    started_ = written_;
  }

 private:
  static constexpr size_t kBuf = 1u << 20;

  void raw_write(const uint8_t* p, size_t n) {
    while (n > 0) {
      const ssize_t r = ::write(fd_, p, std::min<size_t>(n, 1u << 30));
      if (r < 0) {
        if (errno == EINTR) continue;
        fail("{}: write: {}", path_, std::strerror(errno));
      }
      p += r;
      n -= static_cast<size_t>(r);
    }
  }

  int fd_;
  const std::string& path_;
  std::vector<uint8_t> buf_;
  uint64_t written_ = 0;
  uint64_t started_ = 0;  // [0, started_) is being written back
  uint64_t dropped_ = 0;  // [0, dropped_) is on disk and out of the page cache
};

// Writes one scalar of numeric type t, checking that the stored value fits it.
void put_scalar(Out& out, const std::string& path, const std::string& key, const Value& v) {
  auto range = [&](auto lo, auto hi, auto x) {
    if (x < lo || x > hi) fail("{}: key '{}': value {} does not fit type {}", path, key, x, value_type_name(v.type));
  };
  switch (v.type) {
    case ValueType::U8: range(0ull, 0xFFull, (unsigned long long)v.u); out.put<uint8_t>(v.u); break;
    case ValueType::BOOL: range(0ull, 1ull, (unsigned long long)v.u); out.put<uint8_t>(v.u); break;
    case ValueType::U16: range(0ull, 0xFFFFull, (unsigned long long)v.u); out.put<uint16_t>(v.u); break;
    case ValueType::U32: range(0ull, 0xFFFFFFFFull, (unsigned long long)v.u); out.put<uint32_t>(v.u); break;
    case ValueType::U64: out.put<uint64_t>(v.u); break;
    case ValueType::I8: range(-128ll, 127ll, (long long)v.i); out.put<int8_t>(v.i); break;
    case ValueType::I16: range(-32768ll, 32767ll, (long long)v.i); out.put<int16_t>(v.i); break;
    case ValueType::I32:
      range((long long)INT32_MIN, (long long)INT32_MAX, (long long)v.i);
      out.put<int32_t>(v.i);
      break;
    case ValueType::I64: out.put<int64_t>(v.i); break;
    case ValueType::F32: out.put<float>(static_cast<float>(v.f)); break;
    case ValueType::F64: out.put<double>(v.f); break;
    default: fail("{}: key '{}': unexpected scalar type {}", path, key, static_cast<uint32_t>(v.type));
  }
}

void check_value(const std::string& key, const Value& v) {
  const uint32_t t = static_cast<uint32_t>(v.type);
  if (t > static_cast<uint32_t>(ValueType::F64)) fail("gguf writer: key '{}': unknown value type {}", key, t);
  if (v.type != ValueType::ARRAY) return;
  const uint32_t et = static_cast<uint32_t>(v.array_type);
  if (v.array_type == ValueType::ARRAY) fail("gguf writer: key '{}': nested arrays are not supported", key);
  if (et > static_cast<uint32_t>(ValueType::F64)) {
    fail("gguf writer: key '{}': unknown array element type {}", key, et);
  }
  if (v.array_type == ValueType::STRING) {
    if (v.array_count != v.array_strings.size()) {
      fail("gguf writer: key '{}': array_count {} does not match {} strings", key, v.array_count,
           v.array_strings.size());
    }
    return;
  }
  const uint64_t esz = value_type_size(v.array_type);
  if (v.array_count > v.array_raw.size() / esz || v.array_count * esz != v.array_raw.size()) {
    fail("gguf writer: key '{}': array_count {} of {} needs {} bytes, found {}", key, v.array_count,
         value_type_name(v.array_type), v.array_count * esz, v.array_raw.size());
  }
}

void put_value(Out& out, const std::string& path, const std::string& key, const Value& v) {
  out.put<uint32_t>(static_cast<uint32_t>(v.type));
  if (v.type == ValueType::STRING) {
    out.put_string(v.str);
  } else if (v.type == ValueType::ARRAY) {
    out.put<uint32_t>(static_cast<uint32_t>(v.array_type));
    out.put<uint64_t>(v.array_count);
    if (v.array_type == ValueType::STRING) {
      for (const std::string& s : v.array_strings) out.put_string(s);
    } else {
      if (v.array_type == ValueType::BOOL) {
        for (uint8_t b : v.array_raw) {
          if (b > 1) fail("{}: key '{}': bool array element {} is not 0 or 1", path, key, b);
        }
      }
      out.write(v.array_raw.data(), v.array_raw.size());
    }
  } else {
    put_scalar(out, path, key, v);
  }
}

std::string dir_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

void Writer::set(const std::string& key, Value v) {
  if (key.empty()) fail("gguf writer: key: expected a non-empty key, found ''");
  check_value(key, v);
  if (key == kAlignmentKey) {
    if (v.type != ValueType::U32) {
      fail("gguf writer: key '{}': expected type u32, found {}", key, value_type_name(v.type));
    }
    if (!is_pow2(v.u) || v.u > 0xFFFFFFFFull) {
      fail("gguf writer: key '{}': expected a nonzero power of two, found {}", key, v.u);
    }
    alignment_ = static_cast<uint32_t>(v.u);
  }
  for (auto& kv : kv_) {
    if (kv.first == key) {
      kv.second = std::move(v);
      return;
    }
  }
  kv_.emplace_back(key, std::move(v));
}

void Writer::remove(const std::string& key) {
  std::erase_if(kv_, [&](const auto& kv) { return kv.first == key; });
  if (key == kAlignmentKey) alignment_ = kDefaultAlignment;
}

void Writer::set_alignment(uint32_t a) {
  if (!is_pow2(a)) fail("gguf writer: alignment: expected a nonzero power of two, found {}", a);
  const bool present = std::any_of(kv_.begin(), kv_.end(), [](const auto& kv) { return kv.first == kAlignmentKey; });
  if (a != kDefaultAlignment || present) {
    set(kAlignmentKey, Value::make_u32(a));
  } else {
    alignment_ = a;
  }
}

void Writer::add_pending(PendingTensor t) {
  for (const PendingTensor& p : tensors_) {
    if (p.name == t.name) fail("gguf writer: tensor '{}': duplicate tensor name", t.name);
  }
  tensors_.push_back(std::move(t));
}

void Writer::add_tensor(const std::string& name, DType type, std::vector<int64_t> dims, std::vector<uint8_t> data) {
  const uint64_t nbytes = tensor_nbytes(name, type, dims);
  if (data.size() != nbytes) {
    fail("gguf writer: tensor '{}' data: expected {} bytes for its shape and type, found {}", name, nbytes,
         data.size());
  }
  auto shared = std::make_shared<std::vector<uint8_t>>(std::move(data));
  Producer p = [shared](uint8_t* dst, uint64_t n) {
    if (n > 0) std::memcpy(dst, shared->data(), n);
  };
  add_pending(PendingTensor{name, type, std::move(dims), nbytes, std::move(p), nullptr, {}});
}

void Writer::add_tensor_stream(const std::string& name, DType type, std::vector<int64_t> dims, Producer producer) {
  if (!producer) fail("gguf writer: tensor '{}': expected a producer, found an empty function", name);
  const uint64_t nbytes = tensor_nbytes(name, type, dims);
  add_pending(PendingTensor{name, type, std::move(dims), nbytes, std::move(producer), nullptr, {}});
}

void Writer::copy_from(const File& src) {
  for (const auto& [key, value] : src.metadata()) set(key, value);
  if (src.alignment() != alignment_) set_alignment(static_cast<uint32_t>(src.alignment()));
  for (const TensorInfo& t : src.tensors()) {
    const uint64_t nbytes = tensor_nbytes(t.name, t.type, t.dims);
    if (nbytes != t.nbytes) {
      fail("{}: tensor '{}': expected {} bytes for its shape, found {}", src.path(), t.name, nbytes, t.nbytes);
    }
    add_pending(PendingTensor{t.name, t.type, t.dims, nbytes, nullptr, &src, t});
  }
}

void Writer::write(const std::string& path, uint32_t version) const {
  if (version != 2 && version != 3) fail("{}: header version: expected 2 or 3, found {}", path, version);
  const uint64_t align = alignment_;

  // Data offsets: each tensor starts at an aligned offset after the previous one.
  std::vector<uint64_t> offsets;
  offsets.reserve(tensors_.size());
  uint64_t cur = 0;
  for (const PendingTensor& t : tensors_) {
    offsets.push_back(cur);
    const uint64_t padded = (t.nbytes + align - 1) / align * align;
    if (padded < t.nbytes || cur > std::numeric_limits<uint64_t>::max() - padded) {
      fail("{}: tensor '{}': data section size overflows 64 bits", path, t.name);
    }
    cur += padded;
  }

  const std::string tmp = fmt::format("{}.tmp.{}", path, static_cast<long>(::getpid()));
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("{}: create: {}", tmp, std::strerror(errno));
  bool fd_open = true;
  try {
    Out out(fd, tmp);
    out.write("GGUF", 4);
    out.put<uint32_t>(version);
    out.put<uint64_t>(tensors_.size());
    out.put<uint64_t>(kv_.size());
    for (const auto& [key, value] : kv_) {
      out.put_string(key);
      put_value(out, path, key, value);
    }
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const PendingTensor& t = tensors_[i];
      out.put_string(t.name);
      out.put<uint32_t>(static_cast<uint32_t>(t.dims.size()));
      for (int64_t d : t.dims) out.put<int64_t>(d);
      out.put<uint32_t>(static_cast<uint32_t>(t.type));
      out.put<uint64_t>(offsets[i]);
    }
    out.pad(align);

    const uint64_t data_start = out.written();
    std::vector<uint8_t> buf;  // reused; holds one tensor (producer) or one chunk (copy)
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const PendingTensor& t = tensors_[i];
      if (out.written() - data_start != offsets[i]) {
        fail("{}: tensor '{}': internal layout error (offset {} vs {})", path, t.name, out.written() - data_start,
             offsets[i]);
      }
      if (t.src != nullptr) {
        if (t.src->is_mapped()) {
          // Straight from the mapping: no copy, the kernel pages it in as it is written.
          const uint8_t* p = t.src->tensor_data(t.src_info);
          for (uint64_t off = 0; off < t.nbytes; off += kCopyChunk) {
            out.write(p + off, static_cast<size_t>(std::min(kCopyChunk, t.nbytes - off)));
          }
        } else {
          buf.resize(static_cast<size_t>(std::min(kCopyChunk, t.nbytes)));
          for (uint64_t off = 0; off < t.nbytes; off += kCopyChunk) {
            const uint64_t n = std::min(kCopyChunk, t.nbytes - off);
            t.src->read_tensor_bytes(t.src_info, off, n, buf.data());
            out.write(buf.data(), static_cast<size_t>(n));
          }
        }
      } else {
        buf.assign(static_cast<size_t>(t.nbytes), 0);
        t.producer(buf.data(), t.nbytes);
        out.write(buf.data(), buf.size());
      }
      out.pad(align);
      out.release_written();
    }
    out.flush();
    if (::fsync(fd) != 0) fail("{}: fsync: {}", tmp, std::strerror(errno));
    fd_open = false;
    if (::close(fd) != 0) fail("{}: close: {}", tmp, std::strerror(errno));
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      fail("{}: rename from {}: {}", path, tmp, std::strerror(errno));
    }
  } catch (...) {
    if (fd_open) ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  // Make the rename itself durable; best effort (some filesystems refuse fsync on directories).
  const int dfd = ::open(dir_of(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace moe::gguf
