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
std::string human_bytes(uint64_t b);
// Resolves -t: 0 means "all cores".
int resolve_threads(int requested);

}  // namespace moe::cli
