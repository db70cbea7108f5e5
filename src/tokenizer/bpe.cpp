// Byte-level BPE: merges adjacent symbols of one pre-token by rank, lowest rank first and leftmost
// first among equal ranks, until no adjacent pair is a merge.
#include <queue>

#include "tokenizer/unicode.h"
#include "tokenizer/vocab.h"

namespace moe::tok {

namespace {

struct Symbol {
  uint32_t start;
  uint32_t len;  // 0 once merged into its left neighbour
  int32_t id;    // vocabulary id of the symbol's text, -1 when it is not a token
  int32_t prev;
  int32_t next;
};

struct Candidate {
  int32_t rank;
  int32_t left;
  int32_t right;
  uint32_t size;  // combined byte length when queued; a mismatch means the entry is stale
};

struct CandidateOrder {
  bool operator()(const Candidate& a, const Candidate& b) const {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  }
};

struct Scratch {
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;
};

}  // namespace

void bpe_encode_word(const Vocab& v, std::string_view word, std::vector<int32_t>& out) {
  if (word.empty()) return;
  if (v.ignore_merges) {
    const int32_t id = v.find(word);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }

  thread_local Scratch s;
  auto& sym = s.symbols;
  auto& heap = s.heap;
  sym.clear();
  heap.clear();

  for (size_t pos = 0; pos < word.size();) {
    const size_t len = std::min(utf8_seq_len(static_cast<unsigned char>(word[pos])), word.size() - pos);
    const int32_t idx = static_cast<int32_t>(sym.size());
    sym.push_back({static_cast<uint32_t>(pos), static_cast<uint32_t>(len), v.find(word.substr(pos, len)), idx - 1,
                   pos + len == word.size() ? -1 : idx + 1});
    pos += len;
  }

  CandidateOrder order;
  auto consider = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const Symbol& a = sym[l];
    const Symbol& b = sym[r];
    const int32_t rank =
        v.merge_rank(a.id, b.id, word.substr(a.start, a.len), word.substr(b.start, b.len));
    if (rank < 0) return;
    heap.push_back({rank, l, r, a.len + b.len});
    std::push_heap(heap.begin(), heap.end(), order);
  };
  for (int32_t i = 1; i < static_cast<int32_t>(sym.size()); ++i) consider(i - 1, i);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), order);
    const Candidate c = heap.back();
    heap.pop_back();
    Symbol& a = sym[c.left];
    Symbol& b = sym[c.right];
    if (a.len == 0 || b.len == 0 || a.len + b.len != c.size) continue;
    a.len += b.len;
    b.len = 0;
    a.id = v.find(word.substr(a.start, a.len));
    a.next = b.next;
    if (b.next >= 0) sym[b.next].prev = c.left;
    consider(a.prev, c.left);
    consider(c.left, a.next);
  }

  for (int32_t i = 0; i != -1; i = sym[i].next) {
    const Symbol& x = sym[i];
    if (x.id >= 0) {
      out.push_back(x.id);
      continue;
    }
    // Not a token: fall back to single-byte entries where they exist (llama.cpp drops the rest).
    for (uint32_t k = 0; k < x.len; ++k) {
      const int32_t id = v.find(word.substr(x.start + k, 1));
      if (id >= 0) out.push_back(id);
    }
  }
}

}  // namespace moe::tok
