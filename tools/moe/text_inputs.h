// Text inputs of the commands that score or route files (`perplexity`, `route-stats`): every file is
// tokenized before the engine opens, with a tokenizer that is released again, so under --mem the
// tokenizer's tables and the text never share the budget with the model; only the token ids stay
// (and are counted: they are part of what the process holds when the engine opens).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moe::cli {

struct EngineFlags;

// Token ids of each file (no BOS, special tokens not parsed), in order. With --mem, a file whose
// tokenization would not fit in what the budget leaves is an error naming the file, before it is read.
std::vector<std::vector<int32_t>> tokenize_text_files(const std::string& model_path,
                                                      const std::vector<std::string>& files, const EngineFlags& flags);

// Bytes of memory tokenizing `text_bytes` of text takes at its peak (the text, the tokenizer's
// pre-token pieces and the ids), measured on Python source and the KJV Bible.
uint64_t tokenize_peak_bytes(uint64_t text_bytes);

}  // namespace moe::cli
