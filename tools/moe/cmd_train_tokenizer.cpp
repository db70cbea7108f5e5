// `moe train-tokenizer -o VOCAB.gguf --vocab-size N FILE...`: trains a byte-level BPE vocabulary
// (GPT-2 style) on the files and writes it as a vocabulary-only GGUF that `moe train --vocab` copies
// into the model and `moe tokenize -m` can use directly.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "commands.h"
#include "train/bpe_trainer.h"

namespace moe::cli {

namespace {

struct TrainTokenizerArgs {
  std::vector<std::string> files;
  std::string output;
  int64_t vocab_size = 4096;
  std::string pre = "gpt-2";
  int64_t min_count = 2;
};

int run_train_tokenizer(const TrainTokenizerArgs& a) {
  std::vector<std::string> texts;
  uint64_t bytes = 0;
  for (const std::string& path : a.files) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail("{}: cannot open the input file", path);
    std::stringstream ss;
    ss << in.rdbuf();
    texts.push_back(ss.str());
    bytes += texts.back().size();
  }
  const auto t0 = std::chrono::steady_clock::now();
  train::BpeTrainOptions opts;
  opts.vocab_size = a.vocab_size;
  opts.pre = a.pre;
  opts.min_pair_count = a.min_count;
  const train::BpeVocab v = train::train_bpe(texts, opts, [](int64_t done, int64_t want) {
    std::fprintf(stderr, "\rtrain-tokenizer: %lld / %lld merges", static_cast<long long>(done),
                 static_cast<long long>(want));
  });
  train::write_vocab_gguf(v, a.output);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "\ntrain-tokenizer: %zu tokens (%zu merges) from %llu bytes in %.1f s -> %s\n", v.tokens.size(),
               v.merges.size(), static_cast<unsigned long long>(bytes), secs, a.output.c_str());
  return 0;
}

}  // namespace

void register_train_tokenizer(CLI::App& app, CommandSet& cmds) {
  auto args = std::make_shared<TrainTokenizerArgs>();
  CLI::App* sub = app.add_subcommand("train-tokenizer", "Train a byte-level BPE vocabulary and write it as GGUF");
  sub->add_option("files", args->files, "training text files")->required();
  sub->add_option("-o,--output", args->output, "output vocabulary GGUF")->required();
  sub->add_option("--vocab-size", args->vocab_size, "vocabulary size including byte symbols and <|endoftext|>")
      ->capture_default_str();
  sub->add_option("--pre", args->pre, "pre-tokenizer (tokenizer.ggml.pre name)")->capture_default_str();
  sub->add_option("--min-count", args->min_count, "stop when the best pair occurs fewer times")->capture_default_str();
  cmds.add(sub, [args] { return run_train_tokenizer(*args); });
}

}  // namespace moe::cli
