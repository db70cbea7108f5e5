// Regex pre-tokenization for byte-level BPE vocabularies, on PCRE2 (UTF + Unicode properties).
// A pre-tokenizer is an ordered list of patterns; each pattern splits every piece produced by the
// previous one into its matches and the unmatched gaps between them (both kept, in order), the way
// llama.cpp's unicode_regex_split works.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moe::tok {

struct Span {
  uint32_t off;
  uint32_t len;
};

// What a tokenizer.ggml.pre name implies beyond its patterns.
struct PreTokenizerConfig {
  std::vector<std::string> patterns;
  bool ignore_merges = false;  // a whole pre-token that is itself a vocab entry is emitted as-is
  int force_add_bos = -1;      // -1: keep the model-type default; 0/1: llama.cpp's per-pre default
  bool drop_bos = false;       // the pre-type has no BOS token (chatglm)
};

// Looks up the pattern family for `pre` (tokenizer.ggml.pre; "" means "default"). Returns false for
// names we do not know.
bool pre_tokenizer_config(const std::string& pre, PreTokenizerConfig& out);

class PreTokenizer {
 public:
  // Compiles the patterns; throws moe::Error naming the pattern on a compile error.
  explicit PreTokenizer(const std::vector<std::string>& patterns);
  ~PreTokenizer();
  PreTokenizer(const PreTokenizer&) = delete;
  PreTokenizer& operator=(const PreTokenizer&) = delete;

  // Splits `text` (which must be valid UTF-8) into pieces covering it exactly, in order.
  void split(std::string_view text, std::vector<Span>& out) const;

 private:
  struct Compiled;
  std::vector<std::unique_ptr<Compiled>> patterns_;
};

}  // namespace moe::tok
