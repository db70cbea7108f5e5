// The user's path through the CLI: `moe train-tokenizer`, then `moe train` on a tiny shape with a
// checkpoint, then the result loads as an ordinary model with its vocabulary, and --resume continues.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "format/gguf.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

int run(const std::string& cmd) { return std::system((cmd + " > /dev/null 2>&1").c_str()); }

TEST(TrainCli, TokenizerThenTrainThenLoadAndResume) {
  const fs::path dir = fs::temp_directory_path() / ("moe_test_train_cli_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::string text = (dir / "text.txt").string();
  {
    std::ofstream out(text);
    for (int i = 0; i < 200; ++i)
      out << "And the evening and the morning were the day " << i % 7 << ".\n"
          << "def f(x):\n    return x * " << i % 5 << "\n";
  }
  const std::string moe = MOE_CLI_PATH;
  const std::string vocab = (dir / "vocab.gguf").string(), model = (dir / "model.gguf").string(),
                    ckpt = (dir / "ckpt.gguf").string();
  ASSERT_EQ(run(moe + " train-tokenizer --vocab-size 300 -o " + vocab + " " + text), 0);
  const std::string train = moe + " train --preset deepseek --vocab " + vocab + " --train " + text + " --valid " +
                            text + " --layers 2 --embd 32 --heads 2 --heads-kv 2 --head-dim 16 --experts 4 --top-k 2" +
                            " --ff-exp 16 --ff-dense 32 --shared 1 --batch 2 --seq 16 --eval-every 2" +
                            " --eval-windows 2 -t 1 --checkpoint " + ckpt + " --checkpoint-every 2 --resume -o " + model;
  ASSERT_EQ(run(train + " --steps 2"), 0);
  ASSERT_EQ(run(train + " --steps 4"), 0);  // resumes at step 2
  auto ck = gguf::File::open(ckpt);
  EXPECT_EQ(ck->get_uint("train.step"), 4u);

  auto m = Model::load(model);
  EXPECT_EQ(m->spec().arch, "deepseek");
  EXPECT_EQ(m->spec().n_layer, 2);
  EXPECT_FALSE(m->spec().layers[0].is_moe);  // the preset's leading dense layer
  EXPECT_TRUE(m->spec().layers[1].is_moe);
  EXPECT_EQ(m->spec().layers[1].moe.n_shared, 1);
  auto tok = Tokenizer::from_gguf(m->file());
  EXPECT_EQ(tok->n_vocab(), m->spec().n_vocab);
  EXPECT_EQ(tok->decode(tok->encode("the morning", false, false)), "the morning");
  fs::remove_all(dir);
}

// The dense baseline preset writes an ordinary qwen3 (dense) model; a bad preset is a usage error.
TEST(TrainCli, DenseBaselinePresetAndBadPreset) {
  const fs::path dir = fs::temp_directory_path() / ("moe_test_train_dense_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::string text = (dir / "text.txt").string();
  {
    std::ofstream out(text);
    for (int i = 0; i < 100; ++i) out << "In the beginning was the word " << i % 9 << ".\n";
  }
  const std::string moe = MOE_CLI_PATH;
  const std::string vocab = (dir / "vocab.gguf").string(), model = (dir / "dense.gguf").string();
  ASSERT_EQ(run(moe + " train-tokenizer --vocab-size 280 -o " + vocab + " " + text), 0);
  const std::string common = " --vocab " + vocab + " --train " + text +
                             " --layers 2 --embd 32 --heads 2 --heads-kv 1 --head-dim 16 --batch 2 --seq 16 -t 1" +
                             " --steps 2 --eval-every 0 -o " + model;
  ASSERT_EQ(run(moe + " train --preset qwen3 --ff-dense 48" + common), 0);
  auto m = Model::load(model);
  EXPECT_EQ(m->spec().arch, "qwen3");
  for (const LayerSpec& L : m->spec().layers) {
    EXPECT_FALSE(L.is_moe);
    EXPECT_EQ(L.n_ff_dense, 48);
  }
  const int status = run(moe + " train --preset nonsense" + common);
  EXPECT_TRUE(WIFEXITED(status)) << "a bad --preset must exit, not crash";
  EXPECT_NE(WEXITSTATUS(status), 0);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace moe
