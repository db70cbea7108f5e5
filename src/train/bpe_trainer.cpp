#include "train/bpe_trainer.h"

#include <algorithm>
#include <map>
#include <queue>
#include <unordered_map>

#include "base/error.h"
#include "format/gguf.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/unicode.h"

namespace moe::train {

namespace {

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}
int32_t pair_left(uint64_t k) { return static_cast<int32_t>(k >> 32); }
int32_t pair_right(uint64_t k) { return static_cast<int32_t>(k & 0xffffffffu); }

struct Word {
  std::vector<int32_t> symbols;
  int64_t count;
};

}  // namespace

BpeVocab train_bpe(const std::vector<std::string>& texts, const BpeTrainOptions& opts,
                   const std::function<void(int64_t, int64_t)>& progress) {
  const int64_t n_special = static_cast<int64_t>(opts.special_tokens.size());
  if (opts.vocab_size < 256 + n_special)
    fail("train-tokenizer: vocab size {} is below the 256 byte symbols plus {} special tokens", opts.vocab_size,
         n_special);
  tok::PreTokenizerConfig cfg;
  if (!tok::pre_tokenizer_config(opts.pre, cfg)) fail("train-tokenizer: unknown pre-tokenizer '{}'", opts.pre);
  tok::PreTokenizer pretok(cfg.patterns);

  // Count pre-tokens. An ordered map makes the word order (and so every tie) independent of hashing.
  std::map<std::string, int64_t> piece_counts;
  {
    std::unordered_map<std::string, int64_t> counts;
    std::vector<tok::Span> spans;
    for (const std::string& raw : texts) {
      // The tokenizer replaces invalid UTF-8 by U+FFFD before splitting; train on what it will see.
      const std::string text = tok::utf8_sanitize(raw);
      spans.clear();
      pretok.split(text, spans);
      for (const tok::Span& s : spans) ++counts[text.substr(s.off, s.len)];
    }
    piece_counts.insert(counts.begin(), counts.end());
  }

  BpeVocab v;
  v.pre = opts.pre;
  std::unordered_map<std::string, int32_t> id_of;
  for (int b = 0; b < 256; ++b) {
    v.tokens.push_back(tok::byte_to_symbol(static_cast<uint8_t>(b)));
    v.token_types.push_back(1);
    id_of[v.tokens.back()] = b;
  }

  std::vector<Word> words;
  words.reserve(piece_counts.size());
  for (const auto& [piece, count] : piece_counts) {
    Word w;
    w.count = count;
    for (unsigned char c : piece) w.symbols.push_back(c);
    words.push_back(std::move(w));
  }

  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> pair_words;  // may hold stale or repeated entries
  for (size_t wi = 0; wi < words.size(); ++wi) {
    const Word& w = words[wi];
    for (size_t i = 0; i + 1 < w.symbols.size(); ++i) {
      const uint64_t k = pair_key(w.symbols[i], w.symbols[i + 1]);
      pair_count[k] += w.count;
      auto& list = pair_words[k];
      if (list.empty() || list.back() != static_cast<int32_t>(wi)) list.push_back(static_cast<int32_t>(wi));
    }
  }

  // Max-heap on (count, then the pair's text, smaller first) with lazy invalidation: an entry whose
  // count is no longer current is re-queued with the current count when popped.
  struct Entry {
    int64_t count;
    uint64_t key;
  };
  auto before = [&](const Entry& x, const Entry& y) {  // true when x ranks below y
    if (x.count != y.count) return x.count < y.count;
    const std::string& xl = v.tokens[pair_left(x.key)];
    const std::string& yl = v.tokens[pair_left(y.key)];
    if (xl != yl) return xl > yl;
    return v.tokens[pair_right(x.key)] > v.tokens[pair_right(y.key)];
  };
  std::priority_queue<Entry, std::vector<Entry>, decltype(before)> heap(before);
  {
    // Push in key order so the heap's internal layout is deterministic too.
    std::vector<uint64_t> keys;
    for (const auto& [k, c] : pair_count) keys.push_back(k);
    std::sort(keys.begin(), keys.end());
    for (uint64_t k : keys) heap.push({pair_count[k], k});
  }

  const int64_t want_merges = opts.vocab_size - n_special - 256;
  int64_t n_merges = 0;
  std::vector<int32_t> merged;
  std::vector<uint64_t> increased;
  while (static_cast<int64_t>(v.tokens.size()) < opts.vocab_size - n_special && !heap.empty()) {
    const Entry top = heap.top();
    heap.pop();
    auto it = pair_count.find(top.key);
    const int64_t current = it == pair_count.end() ? 0 : it->second;
    if (current != top.count) {
      if (current > 0) heap.push({current, top.key});
      continue;
    }
    if (current < opts.min_pair_count) break;
    const int32_t a = pair_left(top.key), b = pair_right(top.key);
    const std::string text = v.tokens[a] + v.tokens[b];
    int32_t c;
    if (auto f = id_of.find(text); f != id_of.end()) {
      c = f->second;  // the same string reached by another merge order: reuse the token
    } else {
      c = static_cast<int32_t>(v.tokens.size());
      v.tokens.push_back(text);
      v.token_types.push_back(1);
      id_of[text] = c;
    }
    v.merges.push_back(v.tokens[a] + " " + v.tokens[b]);
    ++n_merges;

    // Rewrite every word holding the pair; update pair counts by removing the word's old pairs and
    // adding its new ones.
    std::vector<int32_t> list = std::move(pair_words[top.key]);
    pair_words.erase(top.key);
    std::sort(list.begin(), list.end());
    list.erase(std::unique(list.begin(), list.end()), list.end());
    increased.clear();
    for (int32_t wi : list) {
      Word& w = words[wi];
      bool has = false;
      for (size_t i = 0; i + 1 < w.symbols.size(); ++i)
        if (w.symbols[i] == a && w.symbols[i + 1] == b) {
          has = true;
          break;
        }
      if (!has) continue;
      for (size_t i = 0; i + 1 < w.symbols.size(); ++i) pair_count[pair_key(w.symbols[i], w.symbols[i + 1])] -= w.count;
      merged.clear();
      for (size_t i = 0; i < w.symbols.size(); ++i) {
        if (i + 1 < w.symbols.size() && w.symbols[i] == a && w.symbols[i + 1] == b) {
          merged.push_back(c);
          ++i;
        } else {
          merged.push_back(w.symbols[i]);
        }
      }
      w.symbols = merged;
      for (size_t i = 0; i + 1 < w.symbols.size(); ++i) {
        const uint64_t k = pair_key(w.symbols[i], w.symbols[i + 1]);
        pair_count[k] += w.count;
        if (w.symbols[i] == c || w.symbols[i + 1] == c) {
          increased.push_back(k);
          auto& pl = pair_words[k];
          if (pl.empty() || pl.back() != wi) pl.push_back(wi);
        }
      }
    }
    pair_count.erase(top.key);
    std::sort(increased.begin(), increased.end());
    increased.erase(std::unique(increased.begin(), increased.end()), increased.end());
    for (uint64_t k : increased)
      if (pair_count[k] > 0) heap.push({pair_count[k], k});
    if (progress && (n_merges % 256 == 0)) progress(n_merges, want_merges);
  }
  if (progress) progress(n_merges, want_merges);

  for (const std::string& s : opts.special_tokens) {
    if (id_of.count(s)) fail("train-tokenizer: special token '{}' is also a learned token", s);
    id_of[s] = static_cast<int32_t>(v.tokens.size());
    v.tokens.push_back(s);
    v.token_types.push_back(3);
  }
  v.eos_id = n_special > 0 ? id_of[opts.special_tokens[0]] : -1;
  return v;
}

void set_vocab_keys(const BpeVocab& v, gguf::Writer& w) {
  using gguf::Value;
  w.set("tokenizer.ggml.model", Value::make_string("gpt2"));
  w.set("tokenizer.ggml.pre", Value::make_string(v.pre));
  w.set("tokenizer.ggml.tokens", Value::make_string_array(v.tokens));
  w.set("tokenizer.ggml.token_type", Value::make_i32_array(v.token_types));
  w.set("tokenizer.ggml.merges", Value::make_string_array(v.merges));
  if (v.eos_id >= 0) {
    w.set("tokenizer.ggml.bos_token_id", Value::make_u32(static_cast<uint32_t>(v.eos_id)));
    w.set("tokenizer.ggml.eos_token_id", Value::make_u32(static_cast<uint32_t>(v.eos_id)));
  }
  w.set("tokenizer.ggml.add_bos_token", Value::make_bool(false));
}

void write_vocab_gguf(const BpeVocab& v, const std::string& path) {
  gguf::Writer w;
  w.set("general.name", gguf::Value::make_string("moe.cpp byte-level BPE vocabulary"));
  set_vocab_keys(v, w);
  w.write(path);
}

}  // namespace moe::train
