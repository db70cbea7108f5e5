// libFuzzer target for the calibration-statistics reader (compress/calib_stats.h, what `moe prune`, `moe quantize
// --mixed` read with --stats): any byte string must either parse into statistics whose every vector has the
// size its counts promise, or raise moe::Error.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "base/error.h"
#include "compress/calib_stats.h"
#include "format/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto f = moe::gguf::File::parse_memory(data, size, "fuzz-input.stats.gguf");
    const moe::compress::CalibStats s = moe::compress::parse_stats(*f);
    for (const moe::compress::LayerStats& l : s.layers) {
      const size_t E = static_cast<size_t>(l.n_expert);
      if (l.count.size() != E || l.logit_gram.size() != E * E || l.tcess.size() != s.labels.size() * E ||
          l.recon.size() != s.recon_types.size() * moe::compress::kReconParts * E)
        std::abort();
      for (size_t c = 0; c < s.recon_types.size(); ++c)
        for (int e = 0; e < l.n_expert; ++e) (void)l.recon_at(c, 3, e);
    }
    (void)s.find_layer(0);
  } catch (const moe::Error&) {
  }
  return 0;
}
