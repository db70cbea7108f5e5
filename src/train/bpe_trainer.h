// Trains a byte-level BPE vocabulary (GPT-2 style) from text: the text is split by a llama.cpp
// pre-tokenizer (tokenizer.ggml.pre, default "gpt-2"), every piece becomes a sequence of the 256
// byte symbols (GPT-2's byte-to-unicode mapping), and the most frequent adjacent pair is merged
// until the vocabulary has the requested size. The result is written as tokenizer.ggml.* keys, so
// our Tokenizer (and llama.cpp) encode with it by applying the merges in rank order.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace moe::gguf {
class Writer;
}

namespace moe::train {

struct BpeTrainOptions {
  int64_t vocab_size = 4096;       // including the 256 byte symbols and the special tokens
  std::string pre = "gpt-2";       // pre-tokenizer name, as tokenizer.ggml.pre
  int64_t min_pair_count = 2;      // stop merging when the best pair is rarer than this
  std::vector<std::string> special_tokens = {"<|endoftext|>"};  // appended last, as control tokens
};

struct BpeVocab {
  std::vector<std::string> tokens;   // vocabulary entries in byte-symbol form
  std::vector<int32_t> token_types;  // 1 normal, 3 control
  std::vector<std::string> merges;   // "left right", by rank
  std::string pre;
  int32_t eos_id = -1;               // the first special token (also used as BOS)
};

// Deterministic: pieces are counted, then processed in sorted order, and ties between equally
// frequent pairs are broken by the pair's text. `progress(merges_done, merges_wanted)` is optional.
BpeVocab train_bpe(const std::vector<std::string>& texts, const BpeTrainOptions& opts,
                   const std::function<void(int64_t, int64_t)>& progress = nullptr);

// Sets the tokenizer.ggml.* keys (model gpt2, pre, tokens, token_type, merges, bos/eos, no BOS added).
void set_vocab_keys(const BpeVocab& v, gguf::Writer& w);

// Writes a vocabulary-only GGUF (no tensors), atomically.
void write_vocab_gguf(const BpeVocab& v, const std::string& path);

}  // namespace moe::train
