// `moe tokenize -m MODEL (-p TEXT | -f FILE) [--show-pieces] [--no-special] [--bos]`: prints the
// token ids of a text, one per line. Works on vocabulary-only GGUF files too: only the tokenizer
// metadata is read.
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "base/error.h"
#include "cli_util.h"
#include "commands.h"
#include "format/gguf.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace moe::cli {

namespace {

struct TokenizeArgs {
  std::string model;
  std::string prompt;
  std::string file;
  bool show_pieces = false;
  bool no_special = false;
  bool bos = false;
};

// Printable form of a piece: UTF-8 text stays as is; control characters, backslashes and bytes
// that are not (complete) UTF-8 are escaped.
std::string escape_piece(const std::string& p) {
  std::string out;
  size_t pos = 0;
  uint32_t cp;
  while (pos < p.size()) {
    const auto c = static_cast<unsigned char>(p[pos]);
    if (c >= 0x80) {
      const size_t len = tok::utf8_decode(p, pos, cp);
      if (len > 0) {
        out.append(p, pos, len);
        pos += len;
      } else {
        out += fmt::format("\\x{:02x}", c);
        ++pos;
      }
      continue;
    }
    switch (c) {
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\\': out += "\\\\"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          out += fmt::format("\\x{:02x}", c);
        } else {
          out += static_cast<char>(c);
        }
    }
    ++pos;
  }
  return out;
}

int run_tokenize(const TokenizeArgs& a) {
  std::string text = a.prompt;
  if (!a.file.empty()) {
    std::ifstream in(a.file, std::ios::binary);
    if (!in) fail("{}: cannot open the input file", a.file);
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  auto file = gguf::File::open(a.model);
  auto tok = Tokenizer::from_gguf(*file);
  const auto ids = tok->encode(text, a.bos, !a.no_special);
  std::string out;
  for (int32_t id : ids) {
    if (a.show_pieces) {
      out += fmt::format("{}\t{}\n", id, escape_piece(tok->token_to_piece(id)));
    } else {
      out += fmt::format("{}\n", id);
    }
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

}  // namespace

void register_tokenize(CLI::App& app, CommandSet& cmds) {
  auto args = std::make_shared<TokenizeArgs>();
  CLI::App* sub = app.add_subcommand("tokenize", "Print the token ids of a text (special tokens parsed, no BOS)");
  sub->add_option("-m,--model", args->model, "GGUF model or vocabulary file (default: the bundled model)");
  auto* p = sub->add_option("-p,--prompt", args->prompt, "text to tokenize");
  auto* f = sub->add_option("-f,--file", args->file, "file whose bytes are tokenized");
  p->excludes(f);
  f->excludes(p);
  sub->add_flag("--show-pieces", args->show_pieces, "print id<TAB>piece (escaped) instead of ids only");
  sub->add_flag("--no-special", args->no_special, "treat control-token text as plain text");
  sub->add_flag("--bos", args->bos, "add BOS/EOS as the vocabulary asks (tokenizer.ggml.add_bos_token)");
  sub->callback([p, f] {
    if (p->count() == 0 && f->count() == 0) throw CLI::RequiredError("-p or -f");
  });
  cmds.add(sub, [args] {
    if (args->model.empty()) args->model = default_model_path();
    return run_tokenize(*args);
  });
}

}  // namespace moe::cli
