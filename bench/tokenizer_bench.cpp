// Tokenizer throughput: encodes ~10 MB of text (the fixture texts repeated deterministically) with
// the Qwen2 byte-level BPE vocabulary and the Llama 2 SentencePiece vocabulary; reports MB/s of
// input text. Run: moe_microbench --benchmark_filter=Tokenize
#include <benchmark/benchmark.h>

#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "format/gguf.h"
#include "tokenizer/tokenizer.h"

#ifndef MOE_FIXTURES_DIR
#define MOE_FIXTURES_DIR "../shared/fixtures"
#endif

namespace {

std::string fixtures_dir() {
  if (const char* env = std::getenv("MOE_FIXTURES")) return env;
  return MOE_FIXTURES_DIR;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// ~10 MB built from the five fixture texts in a fixed rotating order.
const std::string& corpus() {
  static const std::string text = [] {
    std::string parts[5];
    for (int i = 0; i < 5; ++i) parts[i] = slurp(fixtures_dir() + "/text/t" + std::to_string(i + 1) + ".txt");
    std::string out;
    out.reserve(10u << 20);
    for (size_t k = 0; out.size() < (10u << 20); ++k) {
      out += parts[(k * 3) % 5];
      out += (k % 7 == 0) ? "\n\n" : " ";
    }
    return out;
  }();
  return text;
}

void run(benchmark::State& state, const char* vocab, bool parse_special) {
  const std::string path = fixtures_dir() + "/vocab/ggml-vocab-" + vocab + ".gguf";
  std::unique_ptr<moe::gguf::File> f;
  std::unique_ptr<moe::Tokenizer> tok;
  try {
    f = moe::gguf::File::open(path);
    tok = moe::Tokenizer::from_gguf(*f);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  const std::string& text = corpus();
  size_t n_tokens = 0;
  for (auto _ : state) {
    auto ids = tok->encode(text, false, parse_special);
    n_tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.counters["tokens"] = static_cast<double>(n_tokens);
  state.counters["MB"] = static_cast<double>(text.size()) / 1e6;
}

void BM_Tokenize_Qwen2(benchmark::State& s) { run(s, "qwen2", true); }
void BM_Tokenize_LlamaSpm(benchmark::State& s) { run(s, "llama-spm", true); }
BENCHMARK(BM_Tokenize_Qwen2)->Unit(benchmark::kMillisecond)->Iterations(2);
BENCHMARK(BM_Tokenize_LlamaSpm)->Unit(benchmark::kMillisecond)->Iterations(2);

}  // namespace
