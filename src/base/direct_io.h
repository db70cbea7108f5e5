// Reads file extents into caller-owned aligned memory, bypassing the page cache (O_DIRECT) so the
// kernel neither hides I/O cost nor holds a second copy of what we cache ourselves. Several extents
// are submitted together through io_uring; where io_uring or O_DIRECT is unavailable it falls back
// to pread (still correct, just through the page cache).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moe {

struct ReadRequest {
  uint64_t offset;  // file offset; for direct reads: a multiple of DirectReader::alignment()
  uint64_t size;    // for direct reads: a multiple of alignment()
  void* dst;        // for direct reads: aligned to alignment()
};

class DirectReader {
 public:
  enum class Mode { IoUring, DirectPread, BufferedPread };
  // Opens `path`; `prefer` is the fastest mode to try (tests use the others).
  explicit DirectReader(const std::string& path, Mode prefer = Mode::IoUring);
  ~DirectReader();
  DirectReader(const DirectReader&) = delete;
  DirectReader& operator=(const DirectReader&) = delete;

  // Reads all requests; returns when every byte is in place. Throws moe::Error naming the file.
  void read(const std::vector<ReadRequest>& reqs);

  Mode mode() const { return mode_; }
  const char* mode_name() const;
  uint64_t alignment() const { return align_; }
  uint64_t file_size() const { return file_size_; }

 private:
  void read_pread(const ReadRequest& r);
  std::string path_;
  int fd_ = -1;
  Mode mode_;
  uint64_t align_ = 4096;
  uint64_t file_size_ = 0;
  struct Ring;
  std::unique_ptr<Ring> ring_;
};

// Memory aligned for direct I/O, freed on destruction (large buffers are anonymous mappings, returned
// to the system as soon as they are freed).
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(size_t size, size_t alignment);
  ~AlignedBuffer();
  AlignedBuffer(AlignedBuffer&& o) noexcept : p_(o.p_), size_(o.size_), mapped_bytes_(o.mapped_bytes_) {
    o.p_ = nullptr;
    o.size_ = o.mapped_bytes_ = 0;
  }
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept;
  uint8_t* data() const { return p_; }
  size_t size() const { return size_; }

 private:
  void free_memory();
  uint8_t* p_ = nullptr;
  size_t size_ = 0;
  size_t mapped_bytes_ = 0;  // non-zero when p_ is an anonymous mapping (large buffers)
};

}  // namespace moe
