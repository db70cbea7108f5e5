// UTF-8 helpers for the tokenizers: lenient decoding, the GPT-2 byte<->code point alphabet used by
// byte-level BPE vocabularies, and completeness checks for streaming output.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace moe::tok {

// Length of the UTF-8 sequence announced by lead byte `c` (1 for continuation/invalid bytes), the
// same clamp-free rule SentencePiece-style splitting uses.
inline size_t utf8_seq_len(unsigned char c) {
  if (c < 0xC0) return 1;
  if (c < 0xE0) return 2;
  if (c < 0xF0) return 3;
  return 4;
}

// Decodes one well-formed code point at s[pos]. Returns the number of bytes consumed, or 0 when the
// bytes there are not a well-formed sequence (truncated, bad continuation, overlong, surrogate,
// above U+10FFFF).
size_t utf8_decode(std::string_view s, size_t pos, uint32_t& cp);

void utf8_append(std::string& out, uint32_t cp);

// Copy of `s` where every byte that does not belong to a well-formed UTF-8 sequence is replaced by
// U+FFFD (EF BF BD), one replacement per offending byte. Returns `s` unchanged when already valid.
std::string utf8_sanitize(std::string_view s);
bool utf8_is_valid(std::string_view s);

// Number of bytes at the end of `s` that form an incomplete (but so far plausible) UTF-8 sequence:
// the caller should hold them back until more bytes arrive. 0 when `s` ends on a boundary.
size_t utf8_incomplete_tail(std::string_view s);

// GPT-2 byte-level alphabet: each byte maps to one printable code point (UTF-8 encoded).
const std::string& byte_to_symbol(uint8_t b);
// Inverse mapping for one code point; returns -1 when the code point is not in the alphabet.
int symbol_to_byte(uint32_t cp);

// Encodes raw bytes into the byte-level alphabet.
void bytes_to_symbols(std::string_view bytes, std::string& out);
// Decodes byte-level alphabet text back into bytes. Code points outside the alphabet are copied
// through as their own UTF-8 bytes.
std::string symbols_to_bytes(std::string_view text);

}  // namespace moe::tok
