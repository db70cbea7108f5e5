#include "tokenizer/tokenizer.h"

#include <algorithm>

#include "base/error.h"
#include "format/gguf.h"
#include "tokenizer/unicode.h"
#include "tokenizer/vocab.h"

namespace moe {

namespace {

using tok::Vocab;

// A piece of the input: either raw text (a byte range of the input) or an already-resolved token.
struct Fragment {
  int32_t token;  // -1 for raw text
  uint32_t off;
  uint32_t len;
};

bool is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; }

// Splits raw text around special-token occurrences. Special tokens are taken longest text first;
// each one is searched in every raw fragment left by the longer ones, left to right.
void partition_special(const Vocab& v, std::string_view text, bool parse_special, std::vector<Fragment>& frags) {
  frags.clear();
  if (text.empty()) return;
  frags.push_back({-1, 0, static_cast<uint32_t>(text.size())});
  std::vector<Fragment> next;
  for (int32_t id : v.special_tokens) {
    const uint32_t a = v.attr[id];
    if (!parse_special && (a & (tok::kAttrControl | tok::kAttrUnknown))) continue;
    const std::string& st = v.text[id];
    bool changed = false;
    next.clear();
    for (const Fragment& fr : frags) {
      if (fr.token >= 0) {
        next.push_back(fr);
        continue;
      }
      uint32_t off = fr.off, len = fr.len;
      while (len > 0) {
        const std::string_view window = text.substr(off, len);
        const size_t m = window.find(st);
        if (m == std::string_view::npos) break;
        changed = true;
        uint32_t left_len = static_cast<uint32_t>(m);
        if (a & tok::kAttrLstrip) {
          while (left_len > 0 && is_ascii_space(text[off + left_len - 1])) --left_len;
        }
        if (left_len > 0) next.push_back({-1, off, left_len});
        next.push_back({id, 0, 0});
        uint32_t r_off = off + static_cast<uint32_t>(m + st.size());
        uint32_t r_len = off + len - r_off;
        if (a & tok::kAttrRstrip) {
          while (r_len > 0 && is_ascii_space(text[r_off])) ++r_off, --r_len;
        }
        off = r_off;
        len = r_len;
      }
      if (len > 0) next.push_back({-1, off, len});
    }
    if (changed) frags.swap(next);
  }
}

void escape_spaces(std::string_view in, std::string& out) {
  for (char c : in) {
    if (c == ' ') {
      out += "\xE2\x96\x81";
    } else {
      out += c;
    }
  }
}

}  // namespace

Tokenizer::Tokenizer() : v_(std::make_unique<Vocab>()) {}
Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const gguf::File& f) {
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  tok::load_vocab(f, *t->v_);
  return t;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos, bool parse_special) const {
  const Vocab& v = *v_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (add_bos && v.add_bos && v.bos >= 0) out.push_back(v.bos);

  std::vector<Fragment> frags;
  partition_special(v, text, parse_special, frags);

  if (v.kind == tok::VocabKind::Spm) {
    bool prev_special = true;  // the first raw fragment gets the space prefix too
    std::string buf;
    for (const Fragment& fr : frags) {
      if (fr.token >= 0) {
        out.push_back(fr.token);
        prev_special = true;
        continue;
      }
      buf.clear();
      if (v.add_space_prefix && prev_special) buf += "\xE2\x96\x81";
      escape_spaces(text.substr(fr.off, fr.len), buf);
      tok::spm_encode(v, buf, out);
      prev_special = false;
    }
  } else {
    std::vector<tok::Span> words;
    std::string clean, word;
    for (const Fragment& fr : frags) {
      if (fr.token >= 0) {
        out.push_back(fr.token);
        continue;
      }
      std::string_view raw = text.substr(fr.off, fr.len);
      if (!tok::utf8_is_valid(raw)) {
        clean = tok::utf8_sanitize(raw);
        raw = clean;
      }
      v.pretokenizer->split(raw, words);
      for (const tok::Span& w : words) {
        word.clear();
        tok::bytes_to_symbols(raw.substr(w.off, w.len), word);
        tok::bpe_encode_word(v, word, out);
      }
    }
  }

  if (add_bos && v.add_eos && v.eos >= 0) out.push_back(v.eos);
  return out;
}

std::string Tokenizer::token_to_piece(int32_t id) const {
  if (id < 0 || id >= v_->n_vocab()) return {};
  return v_->pieces[id];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  bool first = true;
  for (int32_t id : ids) {
    if (id < 0 || id >= v_->n_vocab()) continue;
    const std::string& p = v_->pieces[id];
    if (first && v_->add_space_prefix && !p.empty() && p[0] == ' ') {
      out.append(p, 1);
    } else {
      out += p;
    }
    first = false;
  }
  return out;
}

int32_t Tokenizer::n_vocab() const { return v_->n_vocab(); }
int32_t Tokenizer::bos() const { return v_->bos; }
int32_t Tokenizer::eos() const { return v_->eos; }
int32_t Tokenizer::eot() const { return v_->eot; }
bool Tokenizer::is_eog(int32_t id) const { return id >= 0 && v_->eog.count(id) > 0; }
bool Tokenizer::add_bos() const { return v_->add_bos; }
const std::string& Tokenizer::chat_template() const { return v_->chat_template; }
const std::string& Tokenizer::model_type() const { return v_->model; }
const std::string& Tokenizer::pre_type() const { return v_->pre; }
const std::string& Tokenizer::token_text(int32_t id) const {
  static const std::string empty;
  return (id < 0 || id >= v_->n_vocab()) ? empty : v_->text[id];
}
bool Tokenizer::is_control(int32_t id) const {
  return id >= 0 && id < v_->n_vocab() && (v_->attr[id] & tok::kAttrControl);
}

StreamDecoder::StreamDecoder(const Tokenizer& tok) : tok_(tok) {}

std::string StreamDecoder::push(int32_t id) {
  pending_ += tok_.token_to_piece(id);
  const size_t hold = tok::utf8_incomplete_tail(pending_);
  const size_t ready = pending_.size() - hold;
  if (ready == 0) return {};
  std::string out = tok::utf8_sanitize(std::string_view(pending_).substr(0, ready));
  pending_.erase(0, ready);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out = tok::utf8_sanitize(pending_);
  pending_.clear();
  return out;
}

}  // namespace moe
