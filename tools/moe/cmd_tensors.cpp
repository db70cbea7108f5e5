// `moe tensors -m FILE [--hash]`: every tensor of a GGUF file (any arch): name, type, shape, bytes and, with
// --hash, an FNV-1a 64 hash of its data. Two files' listings diff to show which tensors differ, e.g. a
// `moe quantize` output against llama-quantize's (bench/llamacpp/quantize_refs.sh records these).
#include <cstdio>
#include <vector>

#include "base/hash.h"
#include "commands.h"
#include "format/gguf.h"

namespace moe::cli {

namespace {

struct TensorsArgs {
  std::string model;
  bool hash = false;
};

int run_tensors(const TensorsArgs& a) {
  auto f = gguf::File::open(a.model, gguf::DataAccess::Pread);
  std::vector<uint8_t> buf;
  for (const gguf::TensorInfo& t : f->tensors()) {
    std::string dims;
    for (size_t i = 0; i < t.dims.size(); ++i) dims += (i ? "x" : "") + std::to_string(t.dims[i]);
    std::printf("%s\t%s\t%s\t%llu", t.name.c_str(), std::string(dtype_traits(t.type).name).c_str(), dims.c_str(),
                static_cast<unsigned long long>(t.nbytes));
    if (a.hash) {
      Fnv1a64 h;
      constexpr uint64_t kChunk = 4u << 20;
      buf.resize(static_cast<size_t>(std::min<uint64_t>(kChunk, t.nbytes)));
      for (uint64_t off = 0; off < t.nbytes; off += kChunk) {
        const uint64_t n = std::min(kChunk, t.nbytes - off);
        f->read_tensor_bytes(t, off, n, buf.data());
        h.bytes(buf.data(), static_cast<size_t>(n));
      }
      std::printf("\t%016llx", static_cast<unsigned long long>(h.h));
    }
    std::printf("\n");
  }
  return 0;
}

}  // namespace

void register_tensors(CLI::App& app, CommandSet& cmds) {
  auto a = std::make_shared<TensorsArgs>();
  CLI::App* sub = app.add_subcommand("tensors", "List a GGUF file's tensors (name, type, shape, bytes, data hash)");
  sub->add_option("-m,--model", a->model, "GGUF file")->required();
  sub->add_flag("--hash", a->hash, "Add an FNV-1a 64 hash of each tensor's data");
  cmds.add(sub, [a] { return run_tensors(*a); });
}

}  // namespace moe::cli
