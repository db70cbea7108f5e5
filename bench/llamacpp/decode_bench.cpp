// A minimal llama.cpp decode benchmark against the prebuilt libllama that node-llama-cpp ships, for
// comparisons node-llama-cpp cannot configure: weight repacking off (`use_extra_bufts`, llama.cpp's
// --no-repack) and mmap on or off. Built by bench/llamacpp/build_decode_bench.sh; not part of moe.cpp.
//
//   decode_bench MODEL THREADS N_PROMPT N_GEN [--no-mmap] [--repack]
// Evaluates N_PROMPT fixed-seed random tokens as one batch, then N_GEN greedy single-token steps.
// Prints one JSON object: pp_tok_s, tg_tok_s, load_s, peak_rss_bytes.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "llama.h"

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

long long peak_rss_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::atoll(line.c_str() + 6) * 1024;
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s MODEL THREADS N_PROMPT N_GEN [--no-mmap] [--repack]\n", argv[0]);
    return 2;
  }
  const char* path = argv[1];
  const int threads = std::atoi(argv[2]), n_prompt = std::atoi(argv[3]), n_gen = std::atoi(argv[4]);
  bool mmap = true, repack = false;
  for (int i = 5; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--no-mmap")) mmap = false;
    else if (!std::strcmp(argv[i], "--repack")) repack = true;
    else { std::fprintf(stderr, "unknown flag %s\n", argv[i]); return 2; }
  }
  // The CPU backend variants are separate shared objects next to libllama.
  if (const char* dir = std::getenv("GGML_BACKEND_DIR")) ggml_backend_load_all_from_path(dir);
  else ggml_backend_load_all();
  llama_backend_init();
  llama_log_set([](ggml_log_level level, const char* text, void*) {
    if (level >= GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
  }, nullptr);

  const double t0 = now_s();
  llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  mp.load_mode = mmap ? LLAMA_LOAD_MODE_MMAP : LLAMA_LOAD_MODE_NONE;
  mp.use_extra_bufts = repack;
  llama_model* model = llama_model_load_from_file(path, mp);
  if (!model) { std::fprintf(stderr, "%s: failed to load\n", path); return 1; }
  const double load_s = now_s() - t0;
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = static_cast<uint32_t>(n_prompt + n_gen + 16);
  cp.n_batch = cp.n_ubatch = static_cast<uint32_t>(std::max(n_prompt, 1));
  cp.n_threads = cp.n_threads_batch = threads;
  llama_context* ctx = llama_init_from_model(model, cp);
  if (!ctx) { std::fprintf(stderr, "failed to create a context\n"); return 1; }
  const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

  uint64_t s = 42;  // splitmix64: fixed-seed random prompt
  std::vector<llama_token> prompt(static_cast<size_t>(n_prompt));
  for (auto& t : prompt) {
    s += 0x9E3779B97F4A7C15ull;
    uint64_t z = s;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    t = static_cast<llama_token>((z ^ (z >> 31)) % static_cast<uint64_t>(n_vocab));
  }
  const double tp = now_s();
  if (llama_decode(ctx, llama_batch_get_one(prompt.data(), n_prompt))) { std::fprintf(stderr, "decode failed\n"); return 1; }
  const double pp_s = now_s() - tp;

  auto argmax = [&](const float* l) {
    int best = 0;
    for (int i = 1; i < n_vocab; ++i) if (l[i] > l[best]) best = i;
    return best;
  };
  llama_token tok = argmax(llama_get_logits_ith(ctx, -1));
  const double tg0 = now_s();
  for (int i = 0; i < n_gen; ++i) {
    if (llama_decode(ctx, llama_batch_get_one(&tok, 1))) { std::fprintf(stderr, "decode failed\n"); return 1; }
    tok = argmax(llama_get_logits_ith(ctx, -1));
  }
  const double tg_s = now_s() - tg0;
  std::printf("{\"pp_tok_s\": %.3f, \"tg_tok_s\": %.3f, \"load_s\": %.3f, \"peak_rss_bytes\": %lld, \"mmap\": %s, "
              "\"repack\": %s}\n",
              n_prompt / pp_s, n_gen / tg_s, load_s, peak_rss_bytes(), mmap ? "true" : "false",
              repack ? "true" : "false");
  llama_free(ctx);
  llama_model_free(model);
  llama_backend_free();
  return 0;
}
