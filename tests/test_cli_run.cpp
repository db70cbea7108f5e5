// End-to-end tests of `moe run` and `moe chat`: the built CLI (MOE_CLI_PATH) is run as a child
// process on the fixture models and its stdout, stderr and exit status are checked.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "cli_runner.h"
#include "fixture_util.h"
#include "format/gguf.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace {

namespace fs = std::filesystem;
using moe::test::model_path;
using moe::test::read_ids;
using moe::test::ref_path;

const std::string kModel = "tiny-qwen3moe";

using moe::test::CliResult;
using moe::test::run_cli;
using moe::test::slurp;
inline fs::path temp_dir() { return moe::test::cli_temp_dir(); }
inline void write(const fs::path& p, const std::string& s) { moe::test::write_text(p, s); }

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

// Expect a clean failure: exit status 1 or 2 (never a crash) and a one-line message.
void expect_one_line_error(const CliResult& r, const std::string& must_contain) {
  EXPECT_TRUE(r.status == 1 || r.status == 2) << "status " << r.status << "\n" << r.err;
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.back(), '\n');
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "more than one line:\n" << r.err;
  EXPECT_NE(r.err.find(must_contain), std::string::npos) << r.err;
}

std::unique_ptr<moe::Tokenizer> fixture_tokenizer() {
  auto f = moe::gguf::File::open(model_path(kModel));
  return moe::Tokenizer::from_gguf(*f);
}

// A copy of the fixture model with a Qwen-style ChatML template in tokenizer.chat_template.
const std::string& chatml_model() {
  static const std::string path = [] {
    const std::string p = (temp_dir() / "tiny-qwen3moe-chatml.gguf").string();
    auto src = moe::gguf::File::open(model_path(kModel));
    moe::gguf::Writer w;
    w.copy_from(*src);
    w.set("tokenizer.chat_template",
          moe::gguf::Value::make_string(
              "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
              "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' "
              "}}{% endif %}"));
    w.write(p);
    return p;
  }();
  return path;
}

class CliEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(temp_dir(), ec);
  }
};
const auto* const kEnv = ::testing::AddGlobalTestEnvironment(new CliEnvironment);

// The text `moe run` prints for these ids: the tokenizer's pieces, streamed (bytes that do not form
// valid UTF-8 come out as U+FFFD, as StreamDecoder defines).
std::string streamed_text(const std::vector<int32_t>& ids) {
  const auto tok = fixture_tokenizer();
  moe::StreamDecoder dec(*tok);
  std::string s;
  for (int32_t id : ids) s += dec.push(id);
  return s + dec.flush();
}

std::string t1_path() { return moe::test::fixtures_dir() + "/text/t1.txt"; }

TEST(CliRun, TokenPromptGreedyMatchesLlamaCpp) {
  const std::string ids_out = (temp_dir() / "greedy.ids").string();
  const auto r = run_cli({"run", "-m", model_path(kModel), "--tokens", ref_path(kModel, "t1.tok"), "--temp", "0",
                          "-n", "24", "--ids-out", ids_out, "-t", "2"});
  ASSERT_EQ(r.status, 0) << r.err;
  const auto expected = read_ids(ref_path(kModel, "t1.greedy24.tok"));
  ASSERT_EQ(expected.size(), 24u);
  EXPECT_EQ(read_ids(ids_out), expected);
  // The ids also stream to stdout, one per line.
  std::vector<int32_t> printed;
  std::istringstream ss(r.out);
  for (int32_t v; ss >> v;) printed.push_back(v);
  EXPECT_EQ(printed, expected);
  // Statistics line on stderr.
  EXPECT_NE(r.err.find("prompt 30 tokens"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("generated 24 tokens"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("time to first token"), std::string::npos) << r.err;
}

TEST(CliRun, TextPromptPrintsTheDecodedContinuation) {
  const auto r = run_cli({"run", "-m", model_path(kModel), "-f", t1_path(), "--temp", "0", "-n", "24"});
  ASSERT_EQ(r.status, 0) << r.err;
  const auto ids = read_ids(ref_path(kModel, "t1.greedy24.tok"));
  const auto expected = streamed_text(ids);
  EXPECT_EQ(r.out, expected);  // stdout is not a terminal: no trailing newline is added
  // As far as the ids decode to valid UTF-8, the output is exactly the tokenizer's decode().
  const auto tok = fixture_tokenizer();
  size_t k = ids.size();
  while (k > 0 && !moe::tok::utf8_is_valid(tok->decode({ids.begin(), ids.begin() + k}))) --k;
  ASSERT_GT(k, 0u);
  const std::string valid_prefix = tok->decode({ids.begin(), ids.begin() + k});
  EXPECT_EQ(r.out.substr(0, valid_prefix.size()), valid_prefix);
  EXPECT_NE(r.err.find("tok/s"), std::string::npos);

  // -p TEXT and -f FILE with the same text agree.
  const std::string text = "The quick brown fox";
  write(temp_dir() / "fox.txt", text);
  const auto a = run_cli({"run", "-m", model_path(kModel), "-p", text, "--temp", "0", "-n", "8"});
  const auto b = run_cli({"run", "-m", model_path(kModel), "-f", (temp_dir() / "fox.txt").string(), "--temp", "0",
                          "-n", "8"});
  ASSERT_EQ(a.status, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
}

TEST(CliRun, StopStringTruncatesAndIsNotPrinted) {
  const std::string full = streamed_text(read_ids(ref_path(kModel, "t1.greedy24.tok")));
  // ASCII stop strings of several lengths (the longer ones span tokens) from the second half.
  for (size_t len : {2u, 5u}) {
    size_t i = full.size() / 2;
    auto ascii = [&](size_t at) {
      for (size_t j = at; j < at + len; ++j)
        if (j >= full.size() || static_cast<unsigned char>(full[j]) >= 0x80) return false;
      return true;
    };
    while (i + len <= full.size() && !ascii(i)) ++i;
    ASSERT_LE(i + len, full.size()) << full;
    const std::string stop = full.substr(i, len);
    const auto r = run_cli({"run", "-m", model_path(kModel), "-f", t1_path(), "--temp", "0", "-n", "24", "--stop",
                            "never-generated-text", "--stop", stop});
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out, full.substr(0, full.find(stop))) << "stop '" << stop << "'";
    EXPECT_NE(r.err.find("stopped by stop string"), std::string::npos) << r.err;
  }
}

TEST(CliRun, EmptyPromptIsAnError) {
  expect_one_line_error(run_cli({"run", "-m", model_path(kModel), "-p", ""}), "prompt is empty");
  write(temp_dir() / "empty.txt", "");
  expect_one_line_error(run_cli({"run", "-m", model_path(kModel), "-f", (temp_dir() / "empty.txt").string()}),
                        "empty.txt");
}

TEST(CliRun, VocabOnlyFileIsAnError) {
  const std::string vocab = moe::test::fixtures_dir() + "/vocab/ggml-vocab-qwen2.gguf";
  const auto r = run_cli({"run", "-m", vocab, "-p", "hello"});
  expect_one_line_error(r, "ggml-vocab-qwen2.gguf");
  EXPECT_NE(r.err.find("vocabulary-only"), std::string::npos) << r.err;
  expect_one_line_error(run_cli({"chat", "-m", vocab}, "hi\n"), "vocabulary-only");
}

TEST(CliRun, PromptLongerThanTheContextIsAnError) {
  const auto r = run_cli({"run", "-m", model_path(kModel), "-f", t1_path(), "-c", "16"});
  expect_one_line_error(r, "30 tokens");
  EXPECT_NE(r.err.find("context size is 16"), std::string::npos) << r.err;
}

TEST(CliRun, BadFlagAndMissingFileAreErrors) {
  const auto r = run_cli({"run", "-m", model_path(kModel), "-p", "hi", "--bogus-flag"});
  EXPECT_NE(r.status, 0);
  EXPECT_NE(first_line(r.err).find("--bogus-flag"), std::string::npos) << r.err;
  expect_one_line_error(run_cli({"run", "-m", (temp_dir() / "missing.gguf").string(), "-p", "hi"}), "missing.gguf");
  expect_one_line_error(run_cli({"run", "-m", model_path(kModel), "-f", (temp_dir() / "nope.txt").string()}),
                        "nope.txt");
  expect_one_line_error(run_cli({"run", "-m", model_path(kModel), "-p", "a", "--tokens", ref_path(kModel, "t1.tok")}),
                        "exactly one");
}

TEST(CliRun, InvalidUtf8PromptIsAcceptedWithAWarning) {
  write(temp_dir() / "bad.txt", std::string("caf\xc3 \xff\xfe ok \xe2\x82", 12));
  const auto r = run_cli({"run", "-m", model_path(kModel), "-f", (temp_dir() / "bad.txt").string(), "--temp", "0",
                          "-n", "4"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("not valid UTF-8"), std::string::npos) << r.err;
}

TEST(CliRun, ContextFullStopsGeneration) {
  const auto r = run_cli({"run", "-m", model_path(kModel), "-f", t1_path(), "--temp", "0", "-n", "100", "-c", "40",
                          "--ignore-eos"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("context is full"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("generated 11 tokens"), std::string::npos) << r.err;  // 40 - 30 evaluated + 1 sampled
}

// Parses the --verbose per-turn lines of `moe chat`.
struct TurnStats {
  int evaluated, reused, conversation;
};
std::vector<TurnStats> turn_stats(const std::string& err) {
  std::vector<TurnStats> v;
  const std::regex re(R"(turn \d+: evaluated (\d+) new tokens \((\d+) reused from the cache, conversation (\d+) tokens\))");
  for (auto it = std::sregex_iterator(err.begin(), err.end(), re); it != std::sregex_iterator(); ++it)
    v.push_back({std::stoi((*it)[1]), std::stoi((*it)[2]), std::stoi((*it)[3])});
  return v;
}

TEST(CliChat, TwoTurnsReuseTheCache) {
  const auto r = run_cli({"chat", "-m", chatml_model(), "--temp", "0", "-n", "12", "--verbose", "--system",
                          "You are a tiny test model."},
                         "Hello there, how are you today?\nTell me about experts.\n");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("template chatml"), std::string::npos) << r.err;
  const auto turns = turn_stats(r.err);
  ASSERT_EQ(turns.size(), 2u) << r.err;
  EXPECT_EQ(turns[0].reused, 0);
  EXPECT_EQ(turns[0].evaluated, turns[0].conversation);
  // The second turn evaluates only (about) its own tokens: the cached conversation is re-used.
  EXPECT_GT(turns[1].reused, turns[0].conversation - 2);
  EXPECT_LT(turns[1].evaluated * 2, turns[1].conversation);
  EXPECT_EQ(turns[1].reused + turns[1].evaluated, turns[1].conversation);
  // One answer per turn, each ending with a newline; no prompt marker when stdin is not a terminal.
  EXPECT_GE(std::count(r.out.begin(), r.out.end(), '\n'), 2);
  EXPECT_EQ(r.out.find("> "), std::string::npos);
}

TEST(CliChat, GreedyAnswerMatchesRunOnTheRenderedPrompt) {
  // The first answer of a chat is the continuation of the rendered ChatML prompt.
  const auto chat = run_cli({"chat", "-m", chatml_model(), "--temp", "0", "-n", "10"}, "Hi\n");
  ASSERT_EQ(chat.status, 0) << chat.err;
  write(temp_dir() / "chatml_prompt.txt", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  const auto run = run_cli({"run", "-m", chatml_model(), "-f", (temp_dir() / "chatml_prompt.txt").string(), "--temp",
                            "0", "-n", "10"});
  ASSERT_EQ(run.status, 0) << run.err;
  EXPECT_EQ(chat.out, run.out + "\n");
}

TEST(CliChat, NoTemplateFallsBackToPlainCompletion) {
  const auto r = run_cli({"chat", "-m", model_path(kModel), "--temp", "0", "-n", "4"}, "one\ntwo\n");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("plain completion"), std::string::npos) << r.err;
}

TEST(CliChat, OverflowingConversationDropsOldTurnsWithoutCrashing) {
  std::string input;
  for (int i = 0; i < 6; ++i) input += "Please say something about mixture of experts number " + std::to_string(i) + "\n";
  const auto r = run_cli({"chat", "-m", chatml_model(), "--temp", "0", "-n", "16", "-c", "64", "--ignore-eos",
                          "--verbose"},
                         input);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(turn_stats(r.err).size(), 6u) << r.err;
  EXPECT_NE(r.err.find("dropped"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("context is full"), std::string::npos) << r.out;

  // A single message larger than the whole context is refused, and the chat goes on.
  const auto big = run_cli({"chat", "-m", chatml_model(), "--temp", "0", "-n", "2", "-c", "32", "--verbose"},
                           std::string(400, 'x') + "\nhi\n");
  ASSERT_EQ(big.status, 0) << big.err;
  EXPECT_NE(big.err.find("does not fit"), std::string::npos) << big.err;
  EXPECT_EQ(turn_stats(big.err).size(), 1u) << big.err;
}

TEST(CliChat, UnknownTemplateNameIsAnError) {
  expect_one_line_error(run_cli({"chat", "-m", model_path(kModel), "--chat-template", "nosuch"}, ""), "nosuch");
}

}  // namespace
