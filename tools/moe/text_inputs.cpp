#include "text_inputs.h"

#include <filesystem>

#include "base/error.h"
#include "cli_util.h"
#include "engine_flags.h"
#include "generation.h"
#include "model/weights.h"
#include "runtime/engine.h"
#include "tokenizer/tokenizer.h"

namespace moe::cli {

namespace {
// Peak bytes per byte of text while one file is tokenized: see tokenize_peak_bytes.
constexpr uint64_t kTokenizeBytesPerTextByte = 8;
}  // namespace

uint64_t tokenize_peak_bytes(uint64_t text_bytes) { return kTokenizeBytesPerTextByte * text_bytes; }

std::vector<std::vector<int32_t>> tokenize_text_files(const std::string& model_path,
                                                      const std::vector<std::string>& files, const EngineFlags& flags) {
  const uint64_t mem = flags.mem.empty() ? 0 : parse_size(flags.mem, "--mem");
  std::vector<std::vector<int32_t>> ids(files.size());
  // A header view: maps the file and reads only the metadata; released with the tokenizer.
  auto header = load_model_for_generation(model_path);
  if (!header->file().has("tokenizer.ggml.model"))
    fail("{}: has no tokenizer (tokenizer.ggml.model), so text files cannot be scored", model_path);
  auto tok = Tokenizer::from_gguf(header->file());
  for (size_t f = 0; f < files.size(); ++f) {
    std::error_code ec;
    const uint64_t size = std::filesystem::file_size(files[f], ec);
    if (!ec && mem > 0) {
      const uint64_t held = current_rss_bytes(), need = tokenize_peak_bytes(size);
      if (held + need > mem)
        fail("{}: tokenizing its {} takes about {} of memory, and --mem {} leaves {} (split the file into smaller "
             "ones)",
             files[f], human_bytes(size), human_bytes(need), flags.mem, human_bytes(mem > held ? mem - held : 0));
    }
    ids[f] = tok->encode(read_text_file(files[f]), /*add_bos=*/false, /*parse_special=*/false);
    ids[f].shrink_to_fit();
  }
  return ids;
}

}  // namespace moe::cli
