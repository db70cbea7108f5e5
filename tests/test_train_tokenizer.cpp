// The BPE trainer: the vocabulary it writes loads in our Tokenizer, round-trips held-out text
// exactly, compresses it with the learned merges, and is the same on every run.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>

#include "format/gguf.h"
#include "tokenizer/tokenizer.h"
#include "train/bpe_trainer.h"

namespace moe::train {
namespace {

const char* const kTrainText =
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness "
    "was upon the face of the deep. And the Spirit of God moved upon the face of the waters.\n"
    "def parse_header(self, line):\n    \"\"\"Parse one header line.\"\"\"\n    name, _, value = line.partition(':')\n"
    "    return name.strip().lower(), value.strip()\n\n"
    "def parse_body(self, lines):\n    return '\\n'.join(line.rstrip() for line in lines)\n"
    "A fool and his money are soon parted. The early bird gets the worm, but the second mouse gets the cheese.\n"
    "Caf\xc3\xa9 na\xc3\xafve \xe2\x80\x94 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e and emoji \xf0\x9f\x99\x82 too, "
    "numbers 12345 and 2024-01-01.\n";

const char* const kHeldOut =
    "And God said, Let the waters under the heaven be gathered together unto one place.\n"
    "def parse_line(self, line):\n    name, value = line.split(':')\n    return name.strip()\n"
    "The second bird gets the cheese \xe2\x80\x94 caf\xc3\xa9 \xf0\x9f\x99\x82 42\n";

std::vector<std::string> corpus() {
  std::vector<std::string> texts;
  for (int i = 0; i < 8; ++i) texts.push_back(kTrainText);
  return texts;
}

TEST(TrainTokenizer, VocabularyLoadsRoundTripsAndUsesMerges) {
  BpeTrainOptions o;
  o.vocab_size = 400;
  const BpeVocab v = train_bpe(corpus(), o);
  EXPECT_GT(v.merges.size(), 50u);
  EXPECT_LE(static_cast<int64_t>(v.tokens.size()), o.vocab_size);
  const std::string path =
      (std::filesystem::temp_directory_path() / ("moe_test_bpe_" + std::to_string(getpid()) + ".gguf")).string();
  write_vocab_gguf(v, path);
  auto f = gguf::File::open(path);
  auto tok = Tokenizer::from_gguf(*f);
  std::filesystem::remove(path);
  EXPECT_EQ(tok->model_type(), "gpt2");
  EXPECT_EQ(tok->pre_type(), "gpt-2");
  EXPECT_EQ(tok->n_vocab(), static_cast<int32_t>(v.tokens.size()));
  EXPECT_EQ(tok->eos(), v.eos_id);
  EXPECT_TRUE(tok->is_control(v.eos_id));
  EXPECT_FALSE(tok->add_bos());

  const std::string held_out = kHeldOut;
  const auto ids = tok->encode(held_out, false, false);
  EXPECT_EQ(tok->decode(ids), held_out);
  // Merges are used: far fewer tokens than bytes, and some ids beyond the 256 byte symbols.
  int merged = 0;
  for (int32_t id : ids) merged += id >= 256 ? 1 : 0;
  EXPECT_LT(ids.size() * 10, held_out.size() * 6) << ids.size() << " tokens for " << held_out.size() << " bytes";
  EXPECT_GT(merged * 3, static_cast<int>(ids.size()));
  // A word seen often in training becomes one token (with its leading space, GPT-2 style).
  const auto the = tok->encode(" the", false, false);
  EXPECT_EQ(the.size(), 1u);
  // The special token is recognised as text only when asked.
  EXPECT_EQ(tok->encode("<|endoftext|>", false, true), std::vector<int32_t>{v.eos_id});
}

TEST(TrainTokenizer, TrainingIsDeterministic) {
  BpeTrainOptions o;
  o.vocab_size = 350;
  const BpeVocab a = train_bpe(corpus(), o), b = train_bpe(corpus(), o);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.merges, b.merges);
}

TEST(TrainTokenizer, RejectsTooSmallVocabulary) {
  BpeTrainOptions o;
  o.vocab_size = 200;
  EXPECT_THROW(train_bpe(corpus(), o), std::exception);
}

}  // namespace
}  // namespace moe::train
