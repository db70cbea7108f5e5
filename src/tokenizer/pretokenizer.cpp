#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/pretokenizer.h"

#include <pcre2.h>

#include <initializer_list>

#include "base/error.h"

namespace moe::tok {

namespace {

// Pattern families (the split patterns llama.cpp uses for each tokenizer.ggml.pre). The
// contraction alternations are spelled out with character classes instead of (?i:...) because
// that is what the reference applies; under PCRE2 the two are equivalent for these letters.
const char* const kGpt2 =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const char* const kLlama3 =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* const kQwen2 =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* const kQwen35 =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}"
    "| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* const kStarcoderWords =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
const char* const kBloom = " ?[^(\\s|.,!?\xe2\x80\xa6\xe3\x80\x82\xef\xbc\x8c\xe3\x80\x81\xe0\xa5\xa4\xdb\x94\xd8\x8c)]+";
// Upper/lower-case letter runs written with look-aheads over \p{L}; non-ASCII letters count as
// both cases, matching the reference implementation.
const char* const kTekken =
    "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+"
    "((?=[\\p{L}])([^A-Z]))*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* const kGpt4o =
    "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?"
    "|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?"
    "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
// Kimi-K2 (tokenization_kimi.py's regex, as llama.cpp's hand-written splitter applies it): runs of Han
// characters; otherwise letter runs (any case; Han excluded) with one optional leading non-letter,
// non-digit and a contraction; digits in threes; punctuation; whitespace. "Han" is llama.cpp's list of
// CJK ideograph blocks (unified, extensions A-F, compatibility), not the Unicode script.
#define MOE_KIMI_HAN                                                                                       \
  "[\\x{4e00}-\\x{9fff}\\x{3400}-\\x{4dbf}\\x{20000}-\\x{2a6df}\\x{2a700}-\\x{2b73f}\\x{2b740}-\\x{2b81f}" \
  "\\x{2b820}-\\x{2ceaf}\\x{2ceb0}-\\x{2ebef}\\x{f900}-\\x{faff}\\x{2f800}-\\x{2fa1f}]"
const char* const kKimiK2 =
    MOE_KIMI_HAN "+|[^\\r\\n\\p{L}\\p{N}]?(?:(?!" MOE_KIMI_HAN ")\\p{L})+"
    "(?:'[sS]|'[tT]|'[mM]|'[dD]|'[rR][eE]|'[vV][eE]|'[lL][lL])?"
    "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
#undef MOE_KIMI_HAN
// CJK ranges used by the DeepSeek splitters: 一-龥, ࠀ-一, 가-퟿.
const char* const kDeepseekCjk = "[\xe4\xb8\x80-\xe9\xbe\xa5\xe0\xa0\x80-\xe4\xb8\x80\xea\xb0\x80-\xed\x9f\xbf]+";

bool in(const std::string& s, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (s == n) return true;
  return false;
}

}  // namespace

bool pre_tokenizer_config(const std::string& pre, PreTokenizerConfig& out) {
  out = PreTokenizerConfig{};
  if (pre.empty() || pre == "default") {
    out.patterns = {"[\\p{P}\\$\\+<=>\\^~\\|]+", kStarcoderWords, "\\p{N}+", "[0-9][0-9][0-9]"};
  } else if (in(pre, {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                      "jina-v5-nano"})) {
    out.patterns = {kLlama3};
    out.ignore_merges = true;
    out.force_add_bos = 1;
  } else if (in(pre, {"dbrx", "smaug-bpe"})) {
    out.patterns = {kLlama3};
  } else if (in(pre, {"glm4", "chatglm-bpe"})) {
    out.patterns = {kLlama3};
    out.drop_bos = true;
  } else if (pre == "deepseek-llm") {
    out.patterns = {
        "[\r\n]",
        // \s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+
        "\\s?[A-Za-z\\x{b5}\\x{c0}-\\x{d6}\\x{d8}-\\x{f6}\\x{f8}-\\x{1ba}\\x{1bc}-\\x{1bf}\\x{1c4}-\\x{293}\\x{295}-\\x{2af}"
        "\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37b}-\\x{37d}\\x{37f}\\x{386}\\x{388}-\\x{38a}\\x{38c}\\x{38e}-\\x{3a1}"
        "\\x{3a3}-\\x{3f5}\\x{3f7}-\\x{481}\\x{48a}-\\x{52f}\\x{531}-\\x{556}\\x{10a0}-\\x{10c5}\\x{13a0}-\\x{13f5}"
        "\\x{13f8}-\\x{13fd}\\x{1c90}-\\x{1cba}\\x{1cbd}-\\x{1cbf}\\x{1d00}-\\x{1d2b}\\x{1d6b}-\\x{1d77}\\x{1d79}-\\x{1d9a}"
        "\\x{1e00}-\\x{1f15}\\x{1f18}-\\x{1f1d}\\x{1f20}-\\x{1f45}\\x{1f48}-\\x{1f4d}\\x{1f50}-\\x{1f57}\\x{1f59}\\x{1f5b}"
        "\\x{1f5d}\\x{1f5f}-\\x{1f7d}\\x{1f80}-\\x{1fb4}\\x{1fb6}-\\x{1fbc}\\x{1fbe}\\x{1fc2}-\\x{1fc4}\\x{1fc6}-\\x{1fcc}"
        "\\x{1fd0}-\\x{1fd3}\\x{1fd6}-\\x{1fdb}\\x{1fe0}-\\x{1fec}\\x{1ff2}-\\x{1ff4}\\x{1ff6}-\\x{1ffc}\\x{2102}\\x{2107}"
        "\\x{210a}-\\x{2113}\\x{2115}\\x{2119}-\\x{211d}\\x{2124}\\x{2126}\\x{2128}\\x{212a}-\\x{212d}\\x{212f}-\\x{2134}"
        "\\x{2139}\\x{213c}-\\x{213f}\\x{2145}-\\x{2149}\\x{214e}\\x{2183}\\x{2184}\\x{2c00}-\\x{2c7b}\\x{2c7e}-\\x{2ce4}"
        "\\x{2ceb}-\\x{2cee}\\x{2cf2}\\x{2cf3}\\x{a640}-\\x{a66d}\\x{a680}-\\x{a69b}\\x{a722}-\\x{a76f}\\x{a771}-\\x{a787}"
        "\\x{a78b}-\\x{a78e}\\x{ab70}-\\x{abbf}\\x{fb00}-\\x{fb06}\\x{fb13}-\\x{fb17}\\x{ff21}-\\x{ff3a}\\x{ff41}-\\x{ff5a}"
        "\\x{10400}-\\x{1044f}\\x{104b0}-\\x{104d3}\\x{104d8}-\\x{104fb}\\x{10c80}-\\x{10cb2}\\x{10cc0}-\\x{10cf2}"
        "\\x{118a0}-\\x{118df}\\x{1e900}-\\x{1e943}]+",
        // \s?[!-/:-~！-／：-～‘-‟　-。]+
        "\\s?[!-/:-~\\x{ff01}-\\x{ff0f}\\x{ff1a}-\\x{ff5e}\\x{2018}-\\x{201f}\\x{3000}-\\x{3002}]+",
        "\\s+$",
        kDeepseekCjk,
        "\\p{N}+",
    };
  } else if (pre == "deepseek-coder") {
    out.patterns = {"[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", kDeepseekCjk, "\\p{N}"};
  } else if (in(pre, {"deepseek-v3", "hunyuan-dense", "joyai-llm"})) {
    out.patterns = {
        "\\p{N}{1,3}",
        // [一-龥぀-ゟ゠-ヿ]+
        "[\\x{4e00}-\\x{9fa5}\\x{3040}-\\x{309f}\\x{30a0}-\\x{30ff}]+",
        "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
        "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
    };
  } else if (pre == "falcon") {
    out.patterns = {"[\\p{P}\\$\\+<=>\\^~\\|`]+", kStarcoderWords, "[0-9][0-9][0-9]"};
  } else if (in(pre, {"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b",
                      "mellum2"})) {
    out.patterns = {"\\p{N}", kStarcoderWords};
  } else if (in(pre, {"gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
                      "mellum", "modern-bert", "mpt", "olmo", "jais", "trillion", "granite-docling",
                      "exaone4"})) {
    out.patterns = {kGpt2};
  } else if (in(pre, {"qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "stablelm2", "megrez", "hunyuan",
                      "solar-open"})) {
    out.patterns = {kQwen2};
  } else if (pre == "qwen35") {
    out.patterns = {kQwen35};
  } else if (in(pre, {"poro-chat", "bloom", "gpt3-finnish"})) {
    out.patterns = {kBloom};
  } else if (pre == "viking") {
    out.patterns = {kBloom, "\\p{N}"};
  } else if (pre == "tekken") {
    out.patterns = {kTekken};
    out.ignore_merges = true;
    out.force_add_bos = 1;
  } else if (in(pre, {"gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"})) {
    out.patterns = {kGpt4o};
  } else if (pre == "kimi-k2") {
    out.patterns = {kKimiK2};
  } else {
    return false;
  }
  return true;
}

struct PreTokenizer::Compiled {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Compiled() {
    if (code) pcre2_code_free(code);
  }
};

PreTokenizer::PreTokenizer(const std::vector<std::string>& patterns) {
  for (const auto& p : patterns) {
    int err = 0;
    PCRE2_SIZE erroff = 0;
    auto c = std::make_unique<Compiled>();
    c->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(),
                            PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY | PCRE2_NO_UTF_CHECK, &err, &erroff,
                            nullptr);
    if (!c->code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof(msg));
      fail("pre-tokenizer pattern '{}' does not compile at offset {}: {}", p, erroff,
           reinterpret_cast<const char*>(msg));
    }
    c->jit = pcre2_jit_compile(c->code, PCRE2_JIT_COMPLETE) == 0;
    patterns_.push_back(std::move(c));
  }
}

PreTokenizer::~PreTokenizer() = default;

namespace {

struct MatchData {
  pcre2_match_data* md = nullptr;
  MatchData() { md = pcre2_match_data_create(4, nullptr); }
  ~MatchData() { pcre2_match_data_free(md); }
};

}  // namespace

void PreTokenizer::split(std::string_view text, std::vector<Span>& out) const {
  out.clear();
  if (text.empty()) return;
  out.push_back({0, static_cast<uint32_t>(text.size())});
  if (patterns_.empty()) return;

  thread_local MatchData md;
  std::vector<Span> next;
  for (const auto& pat : patterns_) {
    next.clear();
    next.reserve(out.size() * 2);
    for (const Span& sp : out) {
      const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data() + sp.off);
      const PCRE2_SIZE len = sp.len;
      PCRE2_SIZE gap_start = 0;  // start of text not yet emitted
      PCRE2_SIZE search = 0;
      while (search < len) {
        int rc = pat->jit ? pcre2_jit_match(pat->code, subject, len, search, PCRE2_NO_UTF_CHECK, md.md, nullptr)
                          : PCRE2_ERROR_JIT_BADOPTION;
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT || rc == PCRE2_ERROR_JIT_BADOPTION) {
          rc = pcre2_match(pat->code, subject, len, search, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md.md, nullptr);
        }
        if (rc < 0) break;  // no match (or a resource limit): the rest stays as one gap
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.md);
        const PCRE2_SIZE m0 = ov[0], m1 = ov[1];
        if (m1 == m0) {
          // Empty match: none of our patterns produce one, but never loop on it.
          search = m1 + 1;
          while (search < len && (subject[search] & 0xC0) == 0x80) ++search;
          continue;
        }
        if (m0 > gap_start) next.push_back({sp.off + static_cast<uint32_t>(gap_start), static_cast<uint32_t>(m0 - gap_start)});
        next.push_back({sp.off + static_cast<uint32_t>(m0), static_cast<uint32_t>(m1 - m0)});
        gap_start = search = m1;
      }
      if (gap_start < len) next.push_back({sp.off + static_cast<uint32_t>(gap_start), static_cast<uint32_t>(len - gap_start)});
    }
    out.swap(next);
  }
}

}  // namespace moe::tok
