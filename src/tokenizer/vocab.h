// Internal vocabulary model shared by the tokenizer algorithms: token texts, attributes, scores,
// BPE merge ranks and the special-token bookkeeping, all derived from tokenizer.ggml.* metadata
// with llama.cpp's defaults and text-based special-token detection.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "tokenizer/pretokenizer.h"

namespace moe::gguf {
class File;
}

namespace moe::tok {

enum TokenAttr : uint32_t {
  kAttrUndefined = 0,
  kAttrUnknown = 1u << 0,
  kAttrUnused = 1u << 1,
  kAttrNormal = 1u << 2,
  kAttrControl = 1u << 3,
  kAttrUserDefined = 1u << 4,
  kAttrByte = 1u << 5,
  kAttrLstrip = 1u << 7,
  kAttrRstrip = 1u << 8,
};

enum class VocabKind { Spm, Bpe };

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

struct Vocab {
  VocabKind kind = VocabKind::Bpe;
  std::string model;  // tokenizer.ggml.model
  std::string pre;    // tokenizer.ggml.pre

  std::vector<std::string> text;
  std::vector<float> score;
  std::vector<uint32_t> attr;
  TokenMap to_id;  // when texts repeat, the last id wins

  // BPE merges: (left id, right id) -> rank when both halves are vocabulary entries, and a string
  // keyed fallback ("left\xff" "right") for merges whose halves are not.
  std::unordered_map<uint64_t, int32_t> merge_by_ids;
  TokenMap merge_by_text;

  int32_t bos = -1, eos = -1, eot = -1, eom = -1, unk = -1, pad = -1;
  int32_t fim_pad = -1, fim_rep = -1, fim_sep = -1;
  bool add_bos = false;
  bool add_eos = false;
  bool add_space_prefix = false;
  bool ignore_merges = false;

  // SentencePiece: ASCII bytes that occur in no token text. No merge can produce a token that
  // contains one, so they split the input into independent runs (a large speed-up on long text).
  std::vector<bool> spm_barrier = std::vector<bool>(128, false);

  PreTokenizerConfig pre_config;
  std::unique_ptr<PreTokenizer> pretokenizer;  // BPE only

  std::unordered_set<int32_t> eog;
  std::vector<int32_t> special_tokens;  // control/user-defined/unknown ids, longest text first
  std::vector<std::string> pieces;      // token_to_piece for every id
  std::string chat_template;

  int32_t n_vocab() const { return static_cast<int32_t>(text.size()); }
  int32_t find(std::string_view s) const {
    auto it = to_id.find(s);
    return it == to_id.end() ? -1 : it->second;
  }
  // Rank of merging the two adjacent symbols, or -1 when the pair is not a merge.
  int32_t merge_rank(int32_t left_id, int32_t right_id, std::string_view left, std::string_view right) const;
};

// Fills `v` from the GGUF metadata; throws moe::Error naming the offending key.
void load_vocab(const gguf::File& f, Vocab& v);

// Byte-level BPE of one pre-token (already mapped into the byte alphabet); appends ids.
void bpe_encode_word(const Vocab& v, std::string_view word, std::vector<int32_t>& out);
// SentencePiece BPE of one text fragment (spaces already escaped as U+2581); appends ids.
void spm_encode(const Vocab& v, std::string_view text, std::vector<int32_t>& out);

}  // namespace moe::tok
