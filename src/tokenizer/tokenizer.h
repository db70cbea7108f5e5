// Text <-> token ids for GGUF vocabularies, matching llama.cpp's tokenizer:
//  - byte-level BPE (tokenizer.ggml.model "gpt2") with the regex pre-tokenizer named by
//    tokenizer.ggml.pre, and
//  - SentencePiece BPE (tokenizer.ggml.model "llama") with byte fallback.
// Special (control / user-defined) token texts found in the input are emitted as single ids before
// the rest is tokenized; control tokens only when parse_special is set, user-defined ones always.
//
// Invalid UTF-8 input never fails. Byte-level BPE replaces every byte that is not part of a
// well-formed UTF-8 sequence with U+FFFD before tokenizing (llama.cpp does the same for malformed
// sequences; unlike llama.cpp we also treat overlong forms and surrogates as malformed).
// SentencePiece vocabularies keep such bytes and emit them as <0xNN> byte tokens (one symbol per
// malformed byte, so decode() gives the input back; llama.cpp lets a bad lead byte swallow the
// bytes after it).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moe::gguf {
class File;
}

namespace moe {

namespace tok {
struct Vocab;
}

class Tokenizer {
 public:
  // Reads tokenizer.ggml.*; throws moe::Error naming the key when the vocabulary is missing,
  // malformed or of an unsupported kind.
  static std::unique_ptr<Tokenizer> from_gguf(const gguf::File& f);
  ~Tokenizer();

  // add_bos follows llama_tokenize's add_special: when true, BOS is prepended if the vocabulary
  // says tokenizer.ggml.add_bos_token and EOS appended if it says add_eos_token.
  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const;

  // The bytes a token prints as. Control, unknown and user-defined tokens print their text;
  // unused/undefined tokens print nothing; ids out of range print nothing.
  std::string token_to_piece(int32_t id) const;
  // Concatenated pieces. For SentencePiece vocabularies with add_space_prefix, the leading space
  // of the first token is dropped (the one encode() added). Byte-level BPE decodes exactly, so
  // decode(encode(s)) == s for valid UTF-8 s without special-token text.
  std::string decode(const std::vector<int32_t>& ids) const;

  int32_t n_vocab() const;
  int32_t bos() const;
  int32_t eos() const;
  int32_t eot() const;
  bool is_eog(int32_t id) const;
  bool add_bos() const;
  const std::string& chat_template() const;

  // Introspection used by the CLI and tests.
  const std::string& model_type() const;       // tokenizer.ggml.model
  const std::string& pre_type() const;         // tokenizer.ggml.pre
  const std::string& token_text(int32_t id) const;  // raw vocabulary entry
  bool is_control(int32_t id) const;

 private:
  Tokenizer();
  std::unique_ptr<tok::Vocab> v_;
};

// Turns a stream of generated ids into text without ever emitting part of a UTF-8 character:
// bytes of an incomplete sequence are held back until the rest arrives. Bytes that cannot form
// valid UTF-8 are emitted as U+FFFD.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok);
  std::string push(int32_t id);
  std::string flush();  // whatever is still held back, with incomplete sequences as U+FFFD

 private:
  const Tokenizer& tok_;
  std::string pending_;
};

}  // namespace moe
