// libFuzzer target for the C3PO reference-file parser (runtime/remix.h): any byte string must either
// give a valid RemixReferences or raise moe::Error; a parsed one is walked completely (its neighbours
// for an embedding and its re-mixed scores for every MoE layer) without touching memory it does not own.
#include <cstddef>
#include <cstdint>

#include "base/error.h"
#include "format/gguf.h"
#include "runtime/remix.h"

namespace {
volatile double g_sink;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto f = moe::gguf::File::parse_memory(data, size, "fuzz-input.remix.gguf");
    const moe::RemixReferences refs = moe::RemixReferences::parse(*f);
    // A parsed file is consistent: these must not throw or read out of bounds.
    std::vector<float> e(refs.embeddings.begin(), refs.embeddings.begin() + refs.n_embd);
    const moe::RemixNeighbors nb = moe::remix_neighbors(refs, e, 3);
    int moe_layers = 0;
    for (int n : refs.n_expert) moe_layers += n > 0;
    const auto mix = moe::remix_scores(refs, nb, moe_layers);
    double acc = 0;
    for (const auto& layer : mix->per_layer)
      for (float v : layer) acc += v;
    g_sink = acc;
  } catch (const moe::Error&) {
  }
  return 0;
}
