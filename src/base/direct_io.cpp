#include "base/direct_io.h"

#include <fcntl.h>
#include <liburing.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "base/error.h"

namespace moe {

struct DirectReader::Ring {
  io_uring ring{};
  bool ok = false;
  ~Ring() {
    if (ok) io_uring_queue_exit(&ring);
  }
};

namespace {
constexpr unsigned kRingDepth = 64;
}

DirectReader::DirectReader(const std::string& path, Mode prefer) : path_(path), mode_(prefer) {
  if (prefer != Mode::BufferedPread) fd_ = ::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd_ < 0) {
    // Some filesystems (tmpfs) refuse O_DIRECT: fall back to buffered reads.
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) fail("{}: cannot open: {}", path, std::strerror(errno));
    mode_ = Mode::BufferedPread;
  }
  struct stat st {};
  if (::fstat(fd_, &st) != 0) fail("{}: cannot stat: {}", path, std::strerror(errno));
  file_size_ = static_cast<uint64_t>(st.st_size);
  if (st.st_blksize > 0 && (st.st_blksize & (st.st_blksize - 1)) == 0)
    align_ = std::max<uint64_t>(512, std::min<uint64_t>(4096, static_cast<uint64_t>(st.st_blksize)));
  if (mode_ == Mode::IoUring) {
    ring_ = std::make_unique<Ring>();
    if (io_uring_queue_init(kRingDepth, &ring_->ring, 0) == 0) {
      ring_->ok = true;
    } else {
      ring_.reset();
      mode_ = Mode::DirectPread;  // io_uring unavailable (e.g. seccomp): keep O_DIRECT via pread
    }
  }
}

DirectReader::~DirectReader() {
  ring_.reset();
  if (fd_ >= 0) ::close(fd_);
}

const char* DirectReader::mode_name() const {
  switch (mode_) {
    case Mode::IoUring: return "io_uring+O_DIRECT";
    case Mode::DirectPread: return "pread+O_DIRECT";
    case Mode::BufferedPread: return "pread";
  }
  return "?";
}

void DirectReader::read_pread(const ReadRequest& r) {
  uint64_t done = 0;
  while (done < r.size) {
    ssize_t n = ::pread(fd_, static_cast<uint8_t*>(r.dst) + done, r.size - done, static_cast<off_t>(r.offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("{}: read of {} bytes at offset {} failed: {}", path_, r.size, r.offset, std::strerror(errno));
    }
    if (n == 0) {
      // Direct reads may extend past EOF up to the alignment; the tail is zero-filled.
      std::memset(static_cast<uint8_t*>(r.dst) + done, 0, r.size - done);
      return;
    }
    done += static_cast<uint64_t>(n);
  }
}

void DirectReader::read(const std::vector<ReadRequest>& reqs) {
  for (const auto& r : reqs) {
    if (r.offset > file_size_) fail("{}: read at offset {} is past the end of the file ({} bytes)", path_, r.offset, file_size_);
    if (mode_ != Mode::BufferedPread &&
        (r.offset % align_ || r.size % align_ || reinterpret_cast<uintptr_t>(r.dst) % align_))
      fail("{}: direct read at offset {} of {} bytes is not {}-byte aligned", path_, r.offset, r.size, align_);
  }
  if (mode_ != Mode::IoUring) {
    for (const auto& r : reqs) read_pread(r);
    return;
  }
  // Submit in waves of the ring depth; short reads (past EOF) are completed with pread.
  size_t next = 0;
  while (next < reqs.size()) {
    const size_t wave = std::min<size_t>(kRingDepth, reqs.size() - next);
    for (size_t i = 0; i < wave; ++i) {
      const ReadRequest& r = reqs[next + i];
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_->ring);
      io_uring_prep_read(sqe, fd_, r.dst, static_cast<unsigned>(r.size), r.offset);
      io_uring_sqe_set_data64(sqe, next + i);
    }
    int rc = io_uring_submit(&ring_->ring);
    if (rc < 0) fail("{}: io_uring submit failed: {}", path_, std::strerror(-rc));
    for (size_t i = 0; i < wave; ++i) {
      io_uring_cqe* cqe = nullptr;
      rc = io_uring_wait_cqe(&ring_->ring, &cqe);
      if (rc < 0) fail("{}: io_uring wait failed: {}", path_, std::strerror(-rc));
      const size_t idx = static_cast<size_t>(io_uring_cqe_get_data64(cqe));
      const int res = cqe->res;
      io_uring_cqe_seen(&ring_->ring, cqe);
      const ReadRequest& r = reqs[idx];
      if (res < 0) fail("{}: read of {} bytes at offset {} failed: {}", path_, r.size, r.offset, std::strerror(-res));
      if (static_cast<uint64_t>(res) < r.size) {
        ReadRequest rest{r.offset + static_cast<uint64_t>(res), r.size - static_cast<uint64_t>(res),
                         static_cast<uint8_t*>(r.dst) + res};
        read_pread(rest);
      }
    }
    next += wave;
  }
}

namespace {

// Large buffers are mapped directly, so freeing one returns its pages at once: a pool that frees
// buffers of one size and allocates another (expert slots of two precisions) must not leave freed
// memory in the allocator's heap, where it would still count in the process's RSS.
constexpr size_t kMapThreshold = 256u << 10;
constexpr size_t kHugePageBytes = 2u << 20;

size_t page_size() { return static_cast<size_t>(::sysconf(_SC_PAGESIZE)); }

}  // namespace

AlignedBuffer::AlignedBuffer(size_t size, size_t alignment) : size_(size) {
  const size_t rounded = (size + alignment - 1) / alignment * alignment;
  if (rounded >= kMapThreshold && alignment <= page_size()) {
    void* m = ::mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) fail("cannot map {} bytes of aligned memory: {}", size, std::strerror(errno));
    p_ = static_cast<uint8_t*>(m);
    mapped_bytes_ = rounded;
    // Weights and expert slots are streamed through once per token: 2 MiB pages (where the kernel's
    // transparent huge pages allow them) cut the TLB misses and page faults of those sweeps.
    if (rounded >= kHugePageBytes) (void)::madvise(m, rounded, MADV_HUGEPAGE);
    return;
  }
  p_ = static_cast<uint8_t*>(std::aligned_alloc(alignment, std::max<size_t>(rounded, alignment)));
  if (!p_) fail("cannot allocate {} bytes of aligned memory", size);
}

void AlignedBuffer::free_memory() {
  if (mapped_bytes_) ::munmap(p_, mapped_bytes_);
  else std::free(p_);
  p_ = nullptr;
  size_ = mapped_bytes_ = 0;
}

AlignedBuffer::~AlignedBuffer() { free_memory(); }

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& o) noexcept {
  if (this != &o) {
    free_memory();
    p_ = o.p_;
    size_ = o.size_;
    mapped_bytes_ = o.mapped_bytes_;
    o.p_ = nullptr;
    o.size_ = o.mapped_bytes_ = 0;
  }
  return *this;
}

}  // namespace moe
