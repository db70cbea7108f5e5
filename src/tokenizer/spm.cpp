// SentencePiece-style BPE (tokenizer.ggml.model = "llama"): starting from single UTF-8 characters,
// repeatedly merge the adjacent pair whose concatenation is the highest-scoring vocabulary entry
// (leftmost on ties); symbols that are not tokens are re-split along the merges that built them and
// finally emitted as <0xNN> byte tokens.
#include <queue>

#include "tokenizer/unicode.h"
#include "tokenizer/vocab.h"

namespace moe::tok {

namespace {

struct Symbol {
  uint32_t start;
  uint32_t len;
  int32_t prev;
  int32_t next;
};

struct Pair {
  float score;
  int32_t left;
  int32_t right;
  uint32_t size;
};

struct PairOrder {
  bool operator()(const Pair& a, const Pair& b) const {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  }
};

class SpmSession {
 public:
  SpmSession(const Vocab& v, std::string_view text) : v_(v), text_(text) {}

  void run(std::vector<int32_t>& out) {
    for (size_t pos = 0; pos < text_.size();) {
      // Malformed UTF-8 bytes become one-byte symbols (and so <0xNN> tokens) instead of swallowing
      // the bytes after them; for valid text this is the usual one-symbol-per-character split.
      uint32_t cp;
      const size_t len = std::max<size_t>(utf8_decode(text_, pos, cp), 1);
      const int32_t idx = static_cast<int32_t>(sym_.size());
      sym_.push_back({static_cast<uint32_t>(pos), static_cast<uint32_t>(len), idx - 1,
                      pos + len == text_.size() ? -1 : idx + 1});
      pos += len;
    }
    if (sym_.empty()) return;
    for (int32_t i = 1; i < static_cast<int32_t>(sym_.size()); ++i) consider(i - 1, i);
    while (!queue_.empty()) {
      const Pair p = queue_.top();
      queue_.pop();
      Symbol& a = sym_[p.left];
      Symbol& b = sym_[p.right];
      if (a.len == 0 || b.len == 0 || a.len + b.len != p.size) continue;
      a.len += b.len;
      b.len = 0;
      a.next = b.next;
      if (b.next >= 0) sym_[b.next].prev = p.left;
      consider(a.prev, p.left);
      consider(p.left, a.next);
    }
    for (int32_t i = 0; i != -1; i = sym_[i].next) emit(sym_[i].start, sym_[i].len, out);
  }

 private:
  void consider(int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const std::string_view piece = text_.substr(sym_[l].start, sym_[l].len + sym_[r].len);
    const int32_t id = v_.find(piece);
    if (id < 0) return;
    queue_.push({v_.score[id], l, r, static_cast<uint32_t>(piece.size())});
  }

  void emit(uint32_t start, uint32_t len, std::vector<int32_t>& out) {
    const std::string_view piece = text_.substr(start, len);
    const int32_t id = v_.find(piece);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
    for (char c : piece) emit_byte(static_cast<uint8_t>(c), out);
  }

  void emit_byte(uint8_t b, std::vector<int32_t>& out) {
    static const char* hex = "0123456789ABCDEF";
    const char name[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
    int32_t id = v_.find(std::string_view(name, 6));
    if (id < 0) id = v_.find(std::string_view(reinterpret_cast<const char*>(&b), 1));
    if (id < 0) id = v_.unk;
    if (id >= 0) out.push_back(id);
  }

  const Vocab& v_;
  std::string_view text_;
  std::vector<Symbol> sym_;
  std::priority_queue<Pair, std::vector<Pair>, PairOrder> queue_;
};

}  // namespace

void spm_encode(const Vocab& v, std::string_view text, std::vector<int32_t>& out) {
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 128 || !v.spm_barrier[c]) continue;
    if (i > start) SpmSession(v, text.substr(start, i - start)).run(out);
    SpmSession(v, text.substr(i, 1)).run(out);
    start = i + 1;
  }
  if (start < text.size()) SpmSession(v, text.substr(start)).run(out);
}

}  // namespace moe::tok
