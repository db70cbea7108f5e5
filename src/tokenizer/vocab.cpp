#include "tokenizer/vocab.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <initializer_list>

#include "base/error.h"
#include "format/gguf.h"
#include "tokenizer/unicode.h"

namespace moe::tok {

namespace {

// GGUF token types (tokenizer.ggml.token_type values).
enum GgufTokenType : int32_t {
  kTypeUndefined = 0,
  kTypeNormal = 1,
  kTypeUnknown = 2,
  kTypeControl = 3,
  kTypeUserDefined = 4,
  kTypeUnused = 5,
  kTypeByte = 6,
};

uint32_t attr_from_type(int32_t t) {
  switch (t) {
    case kTypeUnknown: return kAttrUnknown;
    case kTypeUnused: return kAttrUnused;
    case kTypeNormal: return kAttrNormal;
    case kTypeControl: return kAttrControl;
    case kTypeUserDefined: return kAttrUserDefined;
    case kTypeByte: return kAttrByte;
    default: return kAttrUndefined;
  }
}

bool one_of(const std::string& s, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (s == n) return true;
  return false;
}

// Reads element i of a numeric array as a double (the raw bytes are little-endian).
double numeric_element(const gguf::Value& val, size_t i) {
  const uint8_t* p = val.array_raw.data() + i * gguf::value_type_size(val.array_type);
  switch (val.array_type) {
    case gguf::ValueType::F32: { float x; std::memcpy(&x, p, 4); return x; }
    case gguf::ValueType::F64: { double x; std::memcpy(&x, p, 8); return x; }
    case gguf::ValueType::I32: { int32_t x; std::memcpy(&x, p, 4); return x; }
    case gguf::ValueType::U32: { uint32_t x; std::memcpy(&x, p, 4); return x; }
    case gguf::ValueType::I8: return static_cast<int8_t>(*p);
    case gguf::ValueType::U8: return *p;
    case gguf::ValueType::I16: { int16_t x; std::memcpy(&x, p, 2); return x; }
    case gguf::ValueType::U16: { uint16_t x; std::memcpy(&x, p, 2); return x; }
    case gguf::ValueType::I64: { int64_t x; std::memcpy(&x, p, 8); return static_cast<double>(x); }
    case gguf::ValueType::U64: { uint64_t x; std::memcpy(&x, p, 8); return static_cast<double>(x); }
    default: return 0;
  }
}

const gguf::Value* numeric_array(const gguf::File& f, const std::string& key, size_t min_count,
                                 std::initializer_list<gguf::ValueType> allowed) {
  const gguf::Value* v = f.find(key);
  if (!v) return nullptr;
  bool ok = v->type == gguf::ValueType::ARRAY;
  if (ok) {
    ok = false;
    for (auto t : allowed) ok = ok || v->array_type == t;
  }
  if (!ok) fail("{}: {}: expected a numeric array, found {}", f.path(), key, gguf::value_type_name(v->type));
  const size_t esz = gguf::value_type_size(v->array_type);
  if (v->array_count < min_count || v->array_raw.size() < v->array_count * esz) {
    fail("{}: {}: has {} element(s), expected at least {} (one per token)", f.path(), key, v->array_count,
         min_count);
  }
  return v;
}

// Reads an optional token-id key; ids outside the vocabulary leave `id` unchanged (llama.cpp warns
// and keeps its default). Defaults that are themselves out of range are disabled first.
void read_special_id(const gguf::File& f, const std::string& key, int32_t n_vocab, int32_t& id) {
  if (id >= n_vocab) id = -1;
  const gguf::Value* v = f.find(key);
  if (!v) return;
  int64_t x = -1;
  switch (v->type) {
    case gguf::ValueType::U8: case gguf::ValueType::U16: case gguf::ValueType::U32: case gguf::ValueType::U64:
      x = v->u > static_cast<uint64_t>(INT32_MAX) ? -1 : static_cast<int64_t>(v->u);
      break;
    case gguf::ValueType::I8: case gguf::ValueType::I16: case gguf::ValueType::I32: case gguf::ValueType::I64:
      x = v->i;
      break;
    default:
      fail("{}: {}: expected an integer token id, found {}", f.path(), key, gguf::value_type_name(v->type));
  }
  if (x >= 0 && x < n_vocab) id = static_cast<int32_t>(x);
}

bool read_bool(const gguf::File& f, const std::string& key, bool& out) {
  const gguf::Value* v = f.find(key);
  if (!v) return false;
  if (v->type != gguf::ValueType::BOOL) {
    fail("{}: {}: expected a bool, found {}", f.path(), key, gguf::value_type_name(v->type));
  }
  out = v->u != 0;
  return true;
}

std::string piece_for(const Vocab& v, int32_t id) {
  const std::string& t = v.text[id];
  const uint32_t a = v.attr[id];
  if (a & (kAttrControl | kAttrUnknown | kAttrUserDefined)) return t;
  if (a & kAttrNormal) {
    if (v.kind == VocabKind::Bpe) return symbols_to_bytes(t);
    std::string out;
    out.reserve(t.size());
    for (size_t i = 0; i < t.size();) {
      if (t.compare(i, 3, "\xE2\x96\x81") == 0) {
        out += ' ';
        i += 3;
      } else {
        out += t[i++];
      }
    }
    return out;
  }
  if (a & kAttrByte) {
    // "<0xNN>"
    if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
      return std::string(1, static_cast<char>(std::strtol(t.substr(3, 2).c_str(), nullptr, 16)));
    }
    return v.kind == VocabKind::Bpe ? symbols_to_bytes(t) : t;
  }
  return {};  // unused / undefined tokens print nothing
}

}  // namespace

int32_t Vocab::merge_rank(int32_t left_id, int32_t right_id, std::string_view left, std::string_view right) const {
  if (left_id >= 0 && right_id >= 0) {
    auto it = merge_by_ids.find((static_cast<uint64_t>(static_cast<uint32_t>(left_id)) << 32) |
                                static_cast<uint32_t>(right_id));
    return it == merge_by_ids.end() ? -1 : it->second;
  }
  if (merge_by_text.empty()) return -1;
  std::string key;
  key.reserve(left.size() + right.size() + 1);
  key.append(left).push_back('\xff');
  key.append(right);
  auto it = merge_by_text.find(key);
  return it == merge_by_text.end() ? -1 : it->second;
}

void load_vocab(const gguf::File& f, Vocab& v) {
  const std::string& path = f.path();
  const gguf::Value* model = f.find("tokenizer.ggml.model");
  if (!model) fail("{}: tokenizer.ggml.model: missing (the file has no tokenizer)", path);
  if (model->type != gguf::ValueType::STRING) {
    fail("{}: tokenizer.ggml.model: expected a string, found {}", path, gguf::value_type_name(model->type));
  }
  v.model = model->str;
  if (const gguf::Value* pre = f.find("tokenizer.ggml.pre"); pre && pre->type == gguf::ValueType::STRING) {
    v.pre = pre->str;
  }

  if (v.model == "llama") {
    v.kind = VocabKind::Spm;
    v.bos = 1, v.eos = 2, v.unk = 0;
    v.add_space_prefix = true;
    v.add_bos = true;
  } else if (v.model == "gpt2") {
    v.kind = VocabKind::Bpe;
    v.bos = 11, v.eos = 11;  // llama.cpp's defaults for BPE files without ids
    if (!pre_tokenizer_config(v.pre, v.pre_config)) {
      fail("{}: tokenizer.ggml.pre: unsupported pre-tokenizer '{}'", path, v.pre);
    }
    v.ignore_merges = v.pre_config.ignore_merges;
    if (v.pre_config.force_add_bos >= 0) v.add_bos = v.pre_config.force_add_bos != 0;
    if (v.pre_config.drop_bos) v.bos = -1;
  } else {
    fail("{}: tokenizer.ggml.model: unsupported tokenizer '{}' (supported: gpt2, llama)", path, v.model);
  }
  read_bool(f, "tokenizer.ggml.add_space_prefix", v.add_space_prefix);

  // Token texts, scores and types.
  const gguf::Value* tokens = f.find("tokenizer.ggml.tokens");
  if (!tokens) fail("{}: tokenizer.ggml.tokens: missing", path);
  if (tokens->type != gguf::ValueType::ARRAY || tokens->array_type != gguf::ValueType::STRING) {
    fail("{}: tokenizer.ggml.tokens: expected an array of strings", path);
  }
  const size_t n = tokens->array_strings.size();
  if (n == 0) fail("{}: tokenizer.ggml.tokens: empty vocabulary", path);
  if (n > static_cast<size_t>(INT32_MAX)) fail("{}: tokenizer.ggml.tokens: {} tokens is too many", path, n);
  const auto nv = static_cast<int32_t>(n);
  const gguf::Value* scores =
      numeric_array(f, "tokenizer.ggml.scores", n, {gguf::ValueType::F32, gguf::ValueType::I32});
  const gguf::Value* types = numeric_array(f, "tokenizer.ggml.token_type", n, {gguf::ValueType::I32});

  v.text.resize(n);
  v.score.assign(n, 0.0f);
  v.attr.assign(n, kAttrNormal);
  v.to_id.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    std::string t = tokens->array_strings[i];
    if (t.empty()) t = "[EMPTY_" + std::to_string(i) + "]";
    v.to_id[t] = static_cast<int32_t>(i);
    v.text[i] = std::move(t);
    if (scores) v.score[i] = static_cast<float>(numeric_element(*scores, i));
    if (types) v.attr[i] = attr_from_type(static_cast<int32_t>(numeric_element(*types, i)));
  }

  if (v.kind == VocabKind::Spm) {
    std::vector<bool> seen(128, false);
    for (const auto& t : v.text)
      for (char c : t)
        if (static_cast<unsigned char>(c) < 128) seen[static_cast<unsigned char>(c)] = true;
    for (int c = 0; c < 128; ++c) v.spm_barrier[c] = !seen[c];
  }

  // BPE merges, ranked by position; the first occurrence of a pair keeps its rank.
  if (v.kind == VocabKind::Bpe) {
    const gguf::Value* merges = f.find("tokenizer.ggml.merges");
    if (!merges) fail("{}: tokenizer.ggml.merges: missing (required by a gpt2 tokenizer)", path);
    if (merges->type != gguf::ValueType::ARRAY || merges->array_type != gguf::ValueType::STRING) {
      fail("{}: tokenizer.ggml.merges: expected an array of strings", path);
    }
    v.merge_by_ids.reserve(merges->array_strings.size());
    for (size_t r = 0; r < merges->array_strings.size(); ++r) {
      const std::string& m = merges->array_strings[r];
      const size_t sp = m.size() > 1 ? m.find(' ', 1) : std::string::npos;
      std::string left, right;
      if (sp != std::string::npos) {
        left = m.substr(0, sp);
        right = m.substr(sp + 1);
      }
      const int32_t li = v.find(left), ri = v.find(right);
      if (li >= 0 && ri >= 0) {
        v.merge_by_ids.emplace((static_cast<uint64_t>(static_cast<uint32_t>(li)) << 32) | static_cast<uint32_t>(ri),
                               static_cast<int32_t>(r));
      } else {
        v.merge_by_text.emplace(left + '\xff' + right, static_cast<int32_t>(r));
      }
    }
    v.pretokenizer = std::make_unique<PreTokenizer>(v.pre_config.patterns);
  }

  // Special token ids and BOS/EOS policy.
  read_special_id(f, "tokenizer.ggml.bos_token_id", nv, v.bos);
  read_special_id(f, "tokenizer.ggml.eos_token_id", nv, v.eos);
  read_special_id(f, "tokenizer.ggml.eot_token_id", nv, v.eot);
  read_special_id(f, "tokenizer.ggml.eom_token_id", nv, v.eom);
  read_special_id(f, "tokenizer.ggml.unknown_token_id", nv, v.unk);
  read_special_id(f, "tokenizer.ggml.padding_token_id", nv, v.pad);
  read_special_id(f, "tokenizer.ggml.fim_pad_token_id", nv, v.fim_pad);
  read_special_id(f, "tokenizer.ggml.fim_rep_token_id", nv, v.fim_rep);
  read_special_id(f, "tokenizer.ggml.fim_sep_token_id", nv, v.fim_sep);
  read_bool(f, "tokenizer.ggml.add_bos_token", v.add_bos);
  read_bool(f, "tokenizer.ggml.add_eos_token", v.add_eos);

  // Text-based detection of end-of-turn and FIM tokens (converters do not always write the ids).
  // A detected token is forced to be a control token, as llama.cpp does. llama.cpp takes whichever
  // candidate its hash map yields first; we take the first name in each list that exists, so
  // "<|im_end|>" wins over "<|endoftext|>" for ChatML vocabularies.
  int32_t fim_pre = -1, fim_suf = -1, fim_mid = -1;
  auto detect = [&](int32_t& slot, std::initializer_list<const char*> names) {
    if (slot != -1) return;
    for (const char* name : names) {
      const int32_t id = v.find(name);
      if (id >= 0) {
        slot = id;
        v.attr[id] |= kAttrControl;
        return;
      }
    }
  };
  detect(v.eot, {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
                 "_<EOT>", "[EOT]", "<\xEF\xBD\x9C" "end\xE2\x96\x81" "of\xE2\x96\x81" "sentence\xEF\xBD\x9C>",
                 "<end_of_utterance>"});
  detect(v.eom, {"<|eom_id|>"});
  detect(fim_pre, {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "begin\xEF\xBD\x9C>",
                   "<PRE>", "\xE2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>"});
  detect(fim_suf, {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "hole\xEF\xBD\x9C>",
                   "<SUF>", "\xE2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>"});
  detect(fim_mid, {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "end\xEF\xBD\x9C>",
                   "<MID>", "\xE2\x96\x81<MID>", "<|code_middle|>", "<|middle|>"});
  detect(v.fim_pad, {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"});
  detect(v.fim_rep, {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"});
  detect(v.fim_sep, {"<|file_sep|>"});

  // End-of-generation set.
  for (int32_t id : {v.fim_pad, v.fim_rep, v.fim_sep})
    if (id >= 0) v.eog.insert(id);
  for (int32_t id = 0; id < nv; ++id) {
    if (one_of(v.text[id], {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
                            "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
                            "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
                            "<\xEF\xBD\x9C" "end\xE2\x96\x81" "of\xE2\x96\x81" "sentence\xEF\xBD\x9C>", "[e~["})) {
      v.eog.insert(id);
      v.attr[id] |= kAttrControl;
    }
    // gpt-oss channel markers always render as text.
    if (one_of(v.text[id], {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"})) v.attr[id] = kAttrUserDefined;
  }
  for (int32_t id : {v.eos, v.eot, v.eom})
    if (id >= 0) v.eog.insert(id);
  {
    // Harmony / solar-open style vocabularies: "<|end|>" ends a message, not the generation.
    bool has_return = false, has_call = false, has_flush = false, has_tool_response = false;
    int32_t end_id = -1, s_id = -1;
    for (int32_t id : v.eog) {
      const std::string& t = v.text[id];
      if (t == "<|return|>") has_return = true;
      else if (t == "<|call|>" || t == "<|calls|>") has_call = true;
      else if (t == "<|flush|>") has_flush = true;
      else if (t == "<|end|>") end_id = id;
      else if (t == "<|tool_response>") has_tool_response = true;
      else if (t == "</s>") s_id = id;
    }
    if (end_id >= 0 && ((has_return && has_call) || (has_call && has_flush))) {
      v.eog.erase(end_id);
      v.attr[end_id] = kAttrUserDefined;
    }
    if (has_tool_response && s_id >= 0) {
      v.eog.erase(s_id);
      v.attr[s_id] = kAttrNormal;
    }
  }

  // Special tokens matched before pre-tokenization, longest text first.
  for (int32_t id = 0; id < nv; ++id) {
    if (v.attr[id] & (kAttrControl | kAttrUserDefined | kAttrUnknown)) v.special_tokens.push_back(id);
  }
  std::stable_sort(v.special_tokens.begin(), v.special_tokens.end(),
                   [&](int32_t a, int32_t b) { return v.text[a].size() > v.text[b].size(); });

  v.pieces.resize(n);
  for (int32_t id = 0; id < nv; ++id) v.pieces[id] = piece_for(v, id);

  // Per-model strip attributes (set after the caches, as in llama.cpp).
  std::string name;
  if (const gguf::Value* nm = f.find("general.name"); nm && nm->type == gguf::ValueType::STRING) name = nm->str;
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  std::string arch;
  if (const gguf::Value* a = f.find("general.architecture"); a && a->type == gguf::ValueType::STRING) arch = a->str;
  auto set_flag = [&](const char* t, uint32_t flag, bool on) {
    const int32_t id = v.find(t);
    if (id < 0) return;
    v.attr[id] = on ? (v.attr[id] | flag) : (v.attr[id] & ~flag);
  };
  if (v.pre.find("jina-v2-") != std::string::npos || arch == "nomic-bert-moe" || arch == "jina-bert-v3") {
    set_flag("<mask>", kAttrLstrip, true);
  } else if (name.find("phi-3") != std::string::npos || name.find("phi3") != std::string::npos) {
    for (int32_t id : v.special_tokens) v.attr[id] |= kAttrRstrip;
    set_flag("</s>", kAttrRstrip, true);
    for (const char* t : {"<unk>", "<s>", "<|endoftext|>"}) set_flag(t, kAttrRstrip, false);
  }

  if (const gguf::Value* ct = f.find("tokenizer.chat_template"); ct && ct->type == gguf::ValueType::STRING) {
    v.chat_template = ct->str;
  }
}

}  // namespace moe::tok
