// tokenize_ref: llama.cpp's tokenization of test strings, for pre-tokenizers the shared fixtures have no
// vocabulary of (tests/data/llamacpp/*.tok.out; see pretok_ref.sh). Built against a native llama.cpp
// build; nothing from it lands in the repo.
//
//   tokenize_ref VOCAB.gguf INPUTS OUT [--pre NAME]
//       INPUTS: strings separated by lines "__ggml_vocab_test__" (llama.cpp's test-tokenizer-0 format);
//       OUT: one line of space-separated ids per string (no BOS/EOS, special tokens not parsed).
//       --pre overrides tokenizer.ggml.pre (a kv override, as --override-kv tokenizer.ggml.pre=str:NAME).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "llama.h"

namespace {

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "tokenize_ref: %s\n", msg.c_str());
  std::exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4 && argc != 6) die("usage: tokenize_ref VOCAB.gguf INPUTS OUT [--pre NAME]");
  std::vector<llama_model_kv_override> kv;
  if (argc == 6) {
    if (std::strcmp(argv[4], "--pre") != 0) die("expected --pre");
    llama_model_kv_override o{};
    std::strncpy(o.key, "tokenizer.ggml.pre", sizeof(o.key) - 1);
    o.tag = LLAMA_KV_OVERRIDE_TYPE_STR;
    std::strncpy(o.val_str, argv[5], sizeof(o.val_str) - 1);
    kv.push_back(o);
    kv.push_back(llama_model_kv_override{});  // terminator: empty key
  }
  llama_backend_init();
  llama_model_params mp = llama_model_default_params();
  mp.vocab_only = true;
  if (!kv.empty()) mp.kv_overrides = kv.data();
  llama_model* model = llama_model_load_from_file(argv[1], mp);
  if (!model) die(std::string("cannot load ") + argv[1]);
  const llama_vocab* vocab = llama_model_get_vocab(model);
  std::ifstream in(argv[2], std::ios::binary);
  const std::string raw{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::ofstream out(argv[3]);
  for (size_t pos = 0; pos < raw.size();) {
    size_t next = raw.find(sep, pos);
    const std::string text = raw.substr(pos, next == std::string::npos ? std::string::npos : next - pos);
    pos = next == std::string::npos ? raw.size() : next + sep.size();
    std::vector<llama_token> ids(text.size() + 16);
    const int n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), ids.data(),
                                 static_cast<int32_t>(ids.size()), false, false);
    if (n < 0) die("tokenize failed");
    for (int i = 0; i < n; ++i) out << (i ? " " : "") << ids[i];
    out << "\n";
  }
  llama_model_free(model);
  return 0;
}
