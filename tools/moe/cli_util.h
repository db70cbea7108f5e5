// Small helpers shared by the CLI commands.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moe::cli {

// Reads whitespace-separated token ids; errors name the file and the offending word.
std::vector<int32_t> read_token_file(const std::string& path);
// Writes bytes to path atomically (temp file + rename).
void write_file_atomic(const std::string& path, const void* data, size_t size);

// Writes a file atomically in pieces, for outputs too large to hold in memory (`moe logits`): PATH.tmp.<pid>
// until commit() fsyncs and renames it over PATH; destroyed without commit(), the temporary is removed.
// Written bytes are flushed to disk and dropped from the page cache every few MiB, so the output never
// accumulates in memory (a memory cgroup counts dirty page cache, which only writeback can free).
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  void write(const void* data, size_t size);
  void commit();

 private:
  void drop_written(bool wait);
  std::string path_, tmp_;
  int fd_ = -1;
  uint64_t written_ = 0;
  uint64_t dropped_ = 0;  // bytes [0, dropped_) are on disk and out of the page cache
};
std::string human_bytes(uint64_t b);
// The bundled default model (models/, trained by recipes/default_model.sh).
inline constexpr const char* kDefaultModelFile = "tiny-qwen3moe-8x2-kjv-py-fortunes-F16.gguf";
// The model to use when -m is not given: $MOE_MODEL if set, else the first of <exe>/../../models/,
// <exe>/../share/moe/models/ and <source tree>/models/ that holds kDefaultModelFile. The error lists
// where it looked.
std::string default_model_path();
// Resolves -t: 0 means "all cores".
int resolve_threads(int requested);

}  // namespace moe::cli
