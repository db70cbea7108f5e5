#include "cli_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "base/error.h"
#include "base/thread_pool.h"

namespace moe::cli {

std::vector<int32_t> read_token_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot open token file: {}", path, std::strerror(errno));
  std::vector<int32_t> ids;
  std::string word;
  while (in >> word) {
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(word.c_str(), &end, 10);
    if (errno || *end != '\0' || v < 0 || v > INT32_MAX)
      fail("{}: token {}: '{}' is not a valid token id", path, ids.size() + 1, word);
    ids.push_back(static_cast<int32_t>(v));
  }
  if (ids.empty()) fail("{}: no token ids in file", path);
  return ids;
}

void write_file_atomic(const std::string& path, const void* data, size_t size) {
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) fail("{}: cannot create: {}", tmp, std::strerror(errno));
  const auto* p = static_cast<const uint8_t*>(data);
  size_t done = 0;
  while (done < size) {
    ssize_t w = ::write(fd, p + done, size - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      fail("{}: write failed: {}", tmp, std::strerror(e));
    }
    done += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    fail("{}: cannot flush: {}", tmp, std::strerror(errno));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    fail("{}: cannot rename into place: {}", path, std::strerror(e));
  }
}

namespace {
// Written bytes are pushed to disk and dropped from the page cache in steps of this size.
constexpr uint64_t kWritebackStep = 8ull << 20;
}  // namespace

AtomicFileWriter::AtomicFileWriter(std::string path) : path_(std::move(path)) {
  tmp_ = path_ + ".tmp." + std::to_string(getpid());
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("{}: cannot create: {}", tmp_, std::strerror(errno));
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFileWriter::write(const void* data, size_t size) {
  if (fd_ < 0) fail("{}: write after commit", path_);
  const auto* p = static_cast<const uint8_t*>(data);
  size_t done = 0;
  while (done < size) {
    const ssize_t w = ::write(fd_, p + done, size - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("{}: write failed: {}", tmp_, std::strerror(errno));
    }
    done += static_cast<size_t>(w);
  }
  written_ += size;
  if (written_ - dropped_ >= 2 * kWritebackStep) drop_written(false);
}

// Starts writeback of what was written since the last call and waits for, then drops, the step before
// it: at most about two steps of the output are in the page cache at any time.
void AtomicFileWriter::drop_written(bool wait) {
  const uint64_t upto = wait ? written_ : written_ - kWritebackStep;
  (void)::sync_file_range(fd_, static_cast<off_t>(dropped_), static_cast<off_t>(written_ - dropped_),
                          SYNC_FILE_RANGE_WRITE);
  if (upto <= dropped_) return;
  (void)::sync_file_range(fd_, static_cast<off_t>(dropped_), static_cast<off_t>(upto - dropped_),
                          SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
  (void)::posix_fadvise(fd_, static_cast<off_t>(dropped_), static_cast<off_t>(upto - dropped_), POSIX_FADV_DONTNEED);
  dropped_ = upto;
}

void AtomicFileWriter::commit() {
  if (fd_ < 0) fail("{}: committed twice", path_);
  if (::fsync(fd_) != 0) fail("{}: cannot flush: {}", tmp_, std::strerror(errno));
  drop_written(true);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    ::unlink(tmp_.c_str());
    fail("{}: cannot flush: {}", tmp_, std::strerror(errno));
  }
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp_.c_str());
    fail("{}: cannot rename into place: {}", path_, std::strerror(e));
  }
}

std::string human_bytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", v, units[u]);
  return buf;
}

int resolve_threads(int requested) {
  if (requested < 0 || requested > 1024) fail("-t: thread count {} out of range [0, 1024]", requested);
  return requested == 0 ? default_thread_count() : requested;
}

std::string default_model_path() {
  namespace fs = std::filesystem;
  if (const char* env = std::getenv("MOE_MODEL"); env && *env) return env;
  std::vector<fs::path> dirs;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    dirs.push_back(exe.parent_path() / ".." / ".." / "models");  // build/bin/moe in the source tree
    dirs.push_back(exe.parent_path() / ".." / "share" / "moe" / "models");  // installed
  }
#ifdef MOE_SOURCE_DIR
  dirs.push_back(fs::path(MOE_SOURCE_DIR) / "models");
#endif
  std::string looked;
  std::vector<fs::path> seen;
  for (const fs::path& d : dirs) {
    const fs::path p = fs::weakly_canonical(d / kDefaultModelFile, ec);
    if (ec || std::find(seen.begin(), seen.end(), p) != seen.end()) continue;
    seen.push_back(p);
    if (fs::is_regular_file(p, ec)) return p.string();
    looked += (looked.empty() ? "" : ", ") + p.string();
  }
  fail("no -m given, and the default model {} was not found (looked in: {}); pass -m MODEL or set MOE_MODEL",
       kDefaultModelFile, looked.empty() ? std::string("nowhere") : looked);
}

}  // namespace moe::cli
