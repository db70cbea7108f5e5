// Tokenizer tests: llama.cpp's vocabulary test vectors, the fixture models' reference token ids,
// round trips, pre-tokenizer properties on unseen text, streaming decode and malformed input.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "fixture_util.h"
#include "format/gguf.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace {

const std::string kFixtures = MOE_FIXTURES_DIR;

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return {};
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::istringstream is(s);
  long long x;
  while (is >> x) ids.push_back(static_cast<int32_t>(x));
  return ids;
}

// Test strings are separated by "\n__ggml_vocab_test__\n"; the file ends with a separator, so the
// piece after it is empty and not a test (the same split llama.cpp's test-tokenizer-0 uses).
std::vector<std::string> split_inputs(const std::string& raw) {
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < raw.size()) {
    const size_t next = raw.find(sep, pos);
    if (next == std::string::npos) {
      out.push_back(raw.substr(pos));
      break;
    }
    out.push_back(raw.substr(pos, next - pos));
    pos = next + sep.size();
  }
  return out;
}

std::vector<std::string> split_lines(const std::string& raw) {
  std::vector<std::string> out;
  std::istringstream is(raw);
  std::string line;
  while (std::getline(is, line)) out.push_back(line);
  return out;
}

struct Loaded {
  std::unique_ptr<moe::gguf::File> file;
  std::unique_ptr<moe::Tokenizer> tok;
};

// Tokenizers are loaded once per file and shared across tests (loading the large vocabularies
// takes a while).
const moe::Tokenizer& load(const std::string& path) {
  static std::map<std::string, Loaded> cache;
  auto it = cache.find(path);
  if (it == cache.end()) {
    Loaded l;
    l.file = moe::gguf::File::open(path);
    l.tok = moe::Tokenizer::from_gguf(*l.file);
    it = cache.emplace(path, std::move(l)).first;
  }
  return *it->second.tok;
}

std::string vocab_path(const std::string& name) { return kFixtures + "/vocab/ggml-vocab-" + name + ".gguf"; }

const std::vector<std::string> kVocabs = {"qwen2", "llama-bpe", "llama-spm", "gpt-2",
                                          "deepseek-llm", "deepseek-coder", "phi-3"};
const std::vector<std::string> kByteLevel = {"qwen2", "llama-bpe", "gpt-2", "deepseek-llm", "deepseek-coder"};
const std::vector<std::string> kModels = {"tiny-qwen3moe", "tiny-qwen2moe", "tiny-mixtral", "tiny-olmoe",
                                          "tiny-deepseekmoe", "tiny-granitemoe", "tiny-qwen3moe-Q8_0",
                                          "tiny-qwen3moe-Q4_0", "tiny-qwen3moe-Q4_K_M", "tiny-qwen3moe-Q6_K",
                                          "tiny-mixtral-Q8_0", "tiny-mixtral-Q4_K_M",
                                          // each with its family's pre-tokenizer: gpt-4o, glm4, deepseek-llm,
                                          // deepseek-v3 (the same vocabulary otherwise)
                                          "tiny-gptoss", "tiny-gptoss-MXFP4_MOE", "tiny-glm4moe",
                                          "tiny-deepseek2-lite", "tiny-deepseek2-v3"};

std::string ids_str(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += " " + std::to_string(id);
  return s;
}

std::vector<int32_t> cat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// ---------------------------------------------------------------------------------------------
// (a) llama.cpp's vocabulary test vectors

class TokenizerVocab : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerVocab, MatchesReferenceVectors) {
  const std::string path = vocab_path(GetParam());
  const auto& tok = load(path);
  const auto inputs = split_inputs(slurp(path + ".inp"));
  const auto expected = split_lines(slurp(path + ".out"));
  ASSERT_FALSE(inputs.empty());
  ASSERT_EQ(inputs.size(), expected.size()) << path;
  size_t passed = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const auto got = tok.encode(inputs[i], /*add_bos=*/false, /*parse_special=*/false);
    const auto want = parse_ids(expected[i]);
    if (got == want) {
      ++passed;
    } else {
      ADD_FAILURE() << GetParam() << " #" << i << " [" << inputs[i] << "]\n want" << ids_str(want) << "\n got "
                    << ids_str(got);
    }
  }
  std::printf("[ vocab    ] %-15s %zu/%zu passed\n", GetParam().c_str(), passed, inputs.size());
}

// (c) byte-level vocabularies decode exactly; SentencePiece ones too (byte fallback covers every
// character and decode() drops the prefix space encode() added).
TEST_P(TokenizerVocab, RoundTripsEveryTestString) {
  const std::string path = vocab_path(GetParam());
  const auto& tok = load(path);
  for (const auto& s : split_inputs(slurp(path + ".inp"))) {
    EXPECT_EQ(tok.decode(tok.encode(s, false, false)), s) << GetParam();
  }
}

INSTANTIATE_TEST_SUITE_P(All, TokenizerVocab, ::testing::ValuesIn(kVocabs),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

// ---------------------------------------------------------------------------------------------
// (b) fixture models: t1..t5 tokenized with parse_special, no BOS

class TokenizerModel : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerModel, MatchesReferenceTokens) {
  const auto& tok = load(moe::test::model_path(GetParam()));
  int passed = 0;
  for (int n = 1; n <= 5; ++n) {
    const std::string text = slurp(kFixtures + "/text/t" + std::to_string(n) + ".txt");
    const auto want = parse_ids(slurp(kFixtures + "/ref/" + GetParam() + ".t" + std::to_string(n) + ".tok"));
    ASSERT_FALSE(want.empty());
    const auto got = tok.encode(text, false, true);
    EXPECT_EQ(got, want) << GetParam() << " t" << n;
    EXPECT_EQ(tok.decode(got), text) << GetParam() << " t" << n;
    passed += got == want;
  }
  std::printf("[ model    ] %-22s %d/5 reference texts\n", GetParam().c_str(), passed);
}

TEST_P(TokenizerModel, SpecialIds) {
  const auto& tok = load(moe::test::model_path(GetParam()));
  EXPECT_EQ(tok.n_vocab(), 429);
  // (The glm4 pre-tokenizer's default has no BOS, but the file's bos_token_id wins, as in llama.cpp.)
  EXPECT_EQ(tok.bos(), 426);
  EXPECT_EQ(tok.eos(), 428);
  EXPECT_FALSE(tok.add_bos());
  EXPECT_TRUE(tok.is_eog(428));  // <|im_end|>
  EXPECT_TRUE(tok.is_eog(426));  // <|endoftext|>
  EXPECT_FALSE(tok.is_eog(427));  // <|im_start|>
  EXPECT_FALSE(tok.is_eog(100));
  EXPECT_EQ(tok.token_to_piece(427), "<|im_start|>");
  // add_bos is honoured only when the vocabulary asks for it (this one does not).
  EXPECT_EQ(tok.encode("hi", true, true), tok.encode("hi", false, true));
}

INSTANTIATE_TEST_SUITE_P(All, TokenizerModel, ::testing::ValuesIn(kModels), [](const auto& info) {
  std::string n = info.param;
  for (char& c : n)
    if (c == '-') c = '_';
  return n;
});

// ---------------------------------------------------------------------------------------------
// (d) unseen strings

const std::vector<std::string> kExtraStrings = {
    "Grüße aus Köln — ça va? Ελληνικά, русский, עברית, العربية, हिन्दी, ไทย, 日本語のテキスト, 한국어",
    "Family: \xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7\xE2\x80\x8D\xF0\x9F\x91\xA6 "
    "flags \xF0\x9F\x87\xAF\xF0\x9F\x87\xB5 skin \xF0\x9F\x91\x8B\xF0\x9F\x8F\xBD keycap 1\xEF\xB8\x8F\xE2\x83\xA3",
    "combining: e\xCC\x81 a\xCC\x8A\xCC\x81 Zalgo: Z\xCD\x91\xCD\x97" "a\xCC\xB7l\xCD\x9Cg\xCC\xA2o",
    "line one\r\nline two\r\n\r\n\tindented\t\ttabs\n",
    std::string(37, ' ') + "spaces" + std::string(64, ' ') + "end" + std::string(5, ' '),
    "digits 3141592653589793238462643383279502884197 and 1,000,000.50 and ٠١٢٣ and ²³",
    "int main(int argc, char** argv) {\n    return argv[0][0] == '#' ? 1 : 0; // ok?\n}\n",
    "def f(x):\n\treturn {'a': [1, 2], \"b\": None}  # comment\n",
    "Don't I'LL we'Re THEY'VE it'S you'd I'm 'quoted' ''double''",
    "inline specials <|im_start|>assistant<|im_end|> and <|endoftext|> inside",
    "mixed\u00A0nbsp\u2003emspace\u3000ideographic\u2028linesep end",
    "\xEF\xBB\xBF BOM and \xE2\x80\x8B zero-width",
    "",
    " ",
    "\n\n\n",
    "a",
};

TEST(TokenizerExtra, ByteLevelRoundTrip) {
  for (const auto& name : kByteLevel) {
    const auto& tok = load(vocab_path(name));
    for (const auto& s : kExtraStrings) {
      const auto ids = tok.encode(s, false, false);
      EXPECT_EQ(tok.decode(ids), s) << name << " [" << s << "]";
    }
  }
  const auto& tiny = load(kFixtures + "/models/tiny-qwen3moe.gguf");
  for (const auto& s : kExtraStrings) {
    EXPECT_EQ(tiny.decode(tiny.encode(s, false, false)), s);
    EXPECT_EQ(tiny.decode(tiny.encode(s, false, true)), s);  // specials decode to their text
  }
}

TEST(TokenizerExtra, SentencePieceRoundTrip) {
  for (const char* name : {"llama-spm", "phi-3"}) {
    const auto& tok = load(vocab_path(name));
    for (const auto& s : kExtraStrings) {
      EXPECT_EQ(tok.decode(tok.encode(s, false, false)), s) << name << " [" << s << "]";
    }
  }
}

// Special tokens split the text: what is between them is tokenized on its own.
TEST(TokenizerExtra, SpecialTokensPartitionTheInput) {
  const auto& tok = load(kFixtures + "/models/tiny-qwen3moe.gguf");
  const std::string a = "Hello there, ", b = "\nhow are you?";
  EXPECT_EQ(tok.encode(a + "<|im_end|>" + b, false, true), cat({tok.encode(a, false, true), {428}, tok.encode(b, false, true)}));
  EXPECT_EQ(tok.encode("<|im_start|><|im_start|>", false, true), (std::vector<int32_t>{427, 427}));
  // Without parse_special, control-token text is ordinary text.
  const auto plain = tok.encode("<|im_start|>user", false, false);
  for (int32_t id : plain) EXPECT_FALSE(tok.is_control(id));
  EXPECT_EQ(tok.decode(plain), "<|im_start|>user");
  // Same with a big vocabulary: Qwen2's control tokens only with parse_special.
  const auto& qwen = load(vocab_path("qwen2"));
  const int32_t im_start = 151644, im_end = 151645;
  ASSERT_EQ(qwen.token_text(im_start), "<|im_start|>");
  ASSERT_EQ(qwen.token_text(im_end), "<|im_end|>");
  EXPECT_EQ(qwen.encode("<|im_start|>system\nHi<|im_end|>\n", false, true),
            cat({{im_start}, qwen.encode("system\nHi", false, false), {im_end}, qwen.encode("\n", false, false)}));
  EXPECT_TRUE(qwen.is_eog(im_end));
  EXPECT_EQ(qwen.eot(), im_end);
  // SentencePiece: a special token restarts the leading-space rule for the text after it.
  const auto& spm = load(vocab_path("llama-spm"));
  EXPECT_EQ(spm.encode("Hi</s>there", false, true), cat({spm.encode("Hi", false, true), {2}, spm.encode("there", false, true)}));
}

// Pre-tokenizer properties: pieces the split regex must separate tokenize independently.
TEST(TokenizerExtra, DigitGrouping) {
  const std::string digits = "3141592653";
  {  // Llama 3: \p{N}{1,3} -> groups of three from the left
    const auto& t = load(vocab_path("llama-bpe"));
    EXPECT_EQ(t.encode(digits, false, false),
              cat({t.encode("314", false, false), t.encode("159", false, false), t.encode("265", false, false),
                   t.encode("3", false, false)}));
    EXPECT_EQ(t.encode("314", false, false).size(), 1u);
  }
  {  // Qwen2: every digit on its own
    const auto& t = load(vocab_path("qwen2"));
    std::vector<int32_t> want;
    for (char c : digits) want.push_back(t.encode(std::string(1, c), false, false).at(0));
    EXPECT_EQ(t.encode(digits, false, false), want);
  }
  {  // DeepSeek coder: single digits too; DeepSeek LLM: \p{N}+ then BPE inside the run
    const auto& t = load(vocab_path("deepseek-coder"));
    EXPECT_EQ(t.encode("12345", false, false).size(), 5u);
  }
}

TEST(TokenizerExtra, WhitespaceRuns) {
  for (const auto& name : kByteLevel) {
    const auto& t = load(vocab_path(name));
    if (name == "deepseek-llm" || name == "deepseek-coder") continue;  // different split rules
    // \s+(?!\S): a run of spaces before a word leaves its last space to the word.
    const std::string run(9, ' ');
    EXPECT_EQ(t.encode("a" + run + " b", false, false),
              cat({t.encode("a", false, false), t.encode(run, false, false), t.encode(" b", false, false)}))
        << name;
  }
  {  // Llama 3 / Qwen2: \s*[\r\n]+ keeps a CRLF run together, separate from what follows.
    const auto& t = load(vocab_path("llama-bpe"));
    EXPECT_EQ(t.encode("x\r\n\r\ny", false, false),
              cat({t.encode("x", false, false), t.encode("\r\n\r\n", false, false), t.encode("y", false, false)}));
  }
}

TEST(TokenizerExtra, Contractions) {
  // GPT-2's contractions are case-sensitive; Llama 3's are not.
  const auto& g = load(vocab_path("gpt-2"));
  EXPECT_EQ(g.encode("it's", false, false), cat({g.encode("it", false, false), g.encode("'s", false, false)}));
  EXPECT_EQ(g.encode("IT'S", false, false), cat({g.encode("IT", false, false), g.encode("'", false, false), g.encode("S", false, false)}));
  const auto& l = load(vocab_path("llama-bpe"));
  EXPECT_EQ(l.encode("IT'S", false, false), cat({l.encode("IT", false, false), l.encode("'S", false, false)}));
}

// ---------------------------------------------------------------------------------------------
// (e) streaming

void expect_stream_ok(const moe::Tokenizer& tok, const std::vector<int32_t>& ids, const std::string& want) {
  moe::StreamDecoder sd(tok);
  std::string all;
  for (int32_t id : ids) {
    const std::string part = sd.push(id);
    EXPECT_TRUE(moe::tok::utf8_is_valid(part)) << "invalid UTF-8 emitted after id " << id;
    all += part;
  }
  const std::string rest = sd.flush();
  EXPECT_TRUE(moe::tok::utf8_is_valid(rest));
  all += rest;
  EXPECT_EQ(all, want);
}

TEST(TokenizerStream, NeverSplitsCharacters) {
  const std::string text = "caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x99\x82\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9 ok";
  // The tiny vocabulary has no multi-byte merges, so every non-ASCII character spans tokens.
  const auto& tiny = load(kFixtures + "/models/tiny-qwen3moe.gguf");
  const auto ids = tiny.encode(text, false, false);
  EXPECT_GT(ids.size(), 20u);
  expect_stream_ok(tiny, ids, text);
  // SentencePiece byte fallback: emoji arrive as <0xF0><0x9F>... byte tokens. The stream keeps the
  // leading space the decoder would drop at the start of a prompt.
  const auto& spm = load(vocab_path("llama-spm"));
  expect_stream_ok(spm, spm.encode(text, false, false), " " + text);
  for (const char* name : {"qwen2", "llama-bpe"}) {
    const auto& t = load(vocab_path(name));
    expect_stream_ok(t, t.encode(text, false, false), text);
  }
}

TEST(TokenizerStream, BrokenSequencesBecomeReplacementChars) {
  const auto& spm = load(vocab_path("llama-spm"));
  const int32_t b_e6 = 3 + 0xE6, b_97 = 3 + 0x97;  // <0xE6>, <0x97>
  ASSERT_EQ(spm.token_text(b_e6), "<0xE6>");
  moe::StreamDecoder sd(spm);
  EXPECT_EQ(sd.push(b_e6), "");
  EXPECT_EQ(sd.push(b_97), "");
  const int32_t a = spm.encode("a", false, false).back();
  std::string out = sd.push(a);
  out += sd.flush();
  EXPECT_TRUE(moe::tok::utf8_is_valid(out));
  EXPECT_EQ(out, "\xEF\xBF\xBD\xEF\xBF\xBD" + spm.token_to_piece(a));
  moe::StreamDecoder sd2(spm);
  EXPECT_EQ(sd2.push(b_e6), "");
  EXPECT_EQ(sd2.flush(), "\xEF\xBF\xBD");
}

// ---------------------------------------------------------------------------------------------
// (g) malformed input

TEST(TokenizerBadInput, EmptyString) {
  for (const auto& name : kVocabs) {
    const auto& t = load(vocab_path(name));
    EXPECT_TRUE(t.encode("", false, true).empty()) << name;
    EXPECT_EQ(t.decode({}), "");
  }
  const auto& spm = load(vocab_path("llama-spm"));
  EXPECT_EQ(spm.encode("", true, false), std::vector<int32_t>{1});  // add_bos_token = true
}

TEST(TokenizerBadInput, InvalidUtf8) {
  const std::vector<std::string> bad = {
      "\xFF", "abc\x80", "\xE6\x97", "\xE6\x97 tail", "\xC0\xAF overlong", "\xED\xA0\x80 surrogate",
      "\xF4\x90\x80\x80 too big", std::string("nul\0byte", 8), "\xF0\x9F\x99", "ok \xF0\x9F\x99\x82 \xF0",
  };
  for (const auto& name : kByteLevel) {
    const auto& t = load(vocab_path(name));
    for (const auto& s : bad) {
      const auto ids = t.encode(s, false, true);
      // Documented behaviour: each malformed byte becomes U+FFFD.
      EXPECT_EQ(t.decode(ids), moe::tok::utf8_sanitize(s)) << name;
    }
  }
  // The replacement is exactly what the same text with U+FFFD written in tokenizes to.
  const auto& q = load(vocab_path("qwen2"));
  EXPECT_EQ(q.encode("a\xFF" "b", false, false), q.encode("a\xEF\xBF\xBD" "b", false, false));
  // SentencePiece keeps the raw bytes via <0xNN> tokens.
  const auto& spm = load(vocab_path("llama-spm"));
  for (const auto& s : bad) EXPECT_EQ(spm.decode(spm.encode(s, false, false)), s);
  EXPECT_EQ(spm.encode("\xFF", false, false), (std::vector<int32_t>{29871, 3 + 0xFF}));
}

TEST(TokenizerBadInput, OutOfRangeIds) {
  const auto& t = load(vocab_path("gpt-2"));
  EXPECT_EQ(t.token_to_piece(-1), "");
  EXPECT_EQ(t.token_to_piece(t.n_vocab()), "");
  EXPECT_EQ(t.decode({-5, 1000000}), "");
}

TEST(TokenizerBadInput, UnsupportedVocabNamesTheKey) {
  moe::gguf::Writer w;
  w.set("tokenizer.ggml.model", moe::gguf::Value::make_string("bert-ish"));
  w.set("tokenizer.ggml.tokens", moe::gguf::Value::make_string_array({"a", "b"}));
  const std::string path = ::testing::TempDir() + "/moe_tok_bad.gguf";
  w.write(path);
  auto f = moe::gguf::File::open(path);
  try {
    moe::Tokenizer::from_gguf(*f);
    FAIL() << "expected an error";
  } catch (const moe::Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.ggml.model"), std::string::npos) << e.what();
  }
  moe::gguf::Writer w2;
  w2.set("tokenizer.ggml.model", moe::gguf::Value::make_string("gpt2"));
  w2.set("tokenizer.ggml.pre", moe::gguf::Value::make_string("no-such-pre"));
  w2.set("tokenizer.ggml.tokens", moe::gguf::Value::make_string_array({"a", "b"}));
  w2.set("tokenizer.ggml.merges", moe::gguf::Value::make_string_array({"a b"}));
  w2.write(path);
  auto f2 = moe::gguf::File::open(path);
  try {
    moe::Tokenizer::from_gguf(*f2);
    FAIL() << "expected an error";
  } catch (const moe::Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.ggml.pre"), std::string::npos) << e.what();
  }
  std::remove(path.c_str());
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// CLI: `moe tokenize` on a model and on a vocabulary-only file.

namespace {

std::string run_cli(const std::string& args) {
  std::string out;
  FILE* p = popen((std::string(MOE_CLI_PATH) + " " + args + " 2>&1").c_str(), "r");
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}

TEST(TokenizerCli, PrintsReferenceIds) {
  const std::string out = run_cli("tokenize -m " + kFixtures + "/models/tiny-olmoe.gguf -f " + kFixtures + "/text/t4.txt");
  EXPECT_EQ(parse_ids(out), parse_ids(slurp(kFixtures + "/ref/tiny-olmoe.t4.tok")));
}

TEST(TokenizerCli, ShowPiecesOnVocabOnlyFile) {
  const std::string out = run_cli("tokenize -m " + vocab_path("llama-spm") + " -p 'Hi there' --show-pieces");
  // "▁Hi" = 6324, "▁there" = 727 in the Llama 2 vocabulary.
  EXPECT_EQ(out, "6324\t Hi\n727\t there\n");
  const std::string esc = run_cli("tokenize -m " + vocab_path("gpt-2") + " -p \"$(printf 'a\\tb')\" --show-pieces");
  EXPECT_NE(esc.find("\\t"), std::string::npos) << esc;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// (e) pre-tokenizers no fixture vocabulary uses, against llama.cpp's tokenization of the fixtures'
// vocabularies with tokenizer.ggml.pre rewritten (tests/data/llamacpp/pretok-*, pretok_ref.sh).

namespace {

class TokenizerPreOverride : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerPreOverride, KimiK2MatchesLlamaCpp) {
  const std::string vocab = GetParam();
  auto src = moe::gguf::File::open(vocab_path(vocab));
  moe::gguf::Writer w;
  w.copy_from(*src);
  w.set("tokenizer.ggml.pre", moe::gguf::Value::make_string("kimi-k2"));
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("moe_tok_kimi_" + vocab + "_" + std::to_string(::getpid()) + ".gguf"))
                               .string();
  w.write(path);
  const auto& tok = load(path);
  std::filesystem::remove(path);
  const std::string data = std::string(MOE_SOURCE_DIR) + "/tests/data/llamacpp/pretok-kimi-k2.";
  const auto inputs = split_inputs(slurp(data + "inp"));
  const auto expected = split_lines(slurp(data + vocab + ".out"));
  ASSERT_GE(inputs.size(), 70u);
  ASSERT_EQ(inputs.size(), expected.size());
  size_t passed = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const auto got = tok.encode(inputs[i], false, false);
    const auto want = parse_ids(expected[i]);
    if (got == want) {
      ++passed;
    } else {
      ADD_FAILURE() << vocab << " #" << i << " [" << inputs[i] << "]\n want" << ids_str(want) << "\n got "
                    << ids_str(got);
    }
    EXPECT_EQ(tok.decode(got), inputs[i]) << vocab << " #" << i;
  }
  std::printf("[ kimi-k2  ] %-15s %zu/%zu passed\n", vocab.c_str(), passed, inputs.size());
}

INSTANTIATE_TEST_SUITE_P(Vocabs, TokenizerPreOverride, ::testing::Values("llama-bpe", "qwen2"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

}  // namespace
