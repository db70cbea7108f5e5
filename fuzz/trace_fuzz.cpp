// libFuzzer target for routing traces: any byte string must either parse or raise moe::Error, and every
// step a parsed trace yields must go through the analysis and the cache simulator (one of each policy,
// a tight pool) without touching memory outside what the parser validated.
#include <cstddef>
#include <cstdint>
#include <memory>

#include "analysis/cache_sim.h"
#include "analysis/route_analysis.h"
#include "analysis/trace_format.h"
#include "base/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::unique_ptr<moe::RouteAnalysis> analysis;
  std::unique_ptr<moe::CacheSimulator> sim;
  try {
    moe::TraceReader::parse_all(data, size, "fuzz-input.trace", [&](const moe::TraceHeader& h, const moe::TraceStep& s) {
      if (!analysis) {
        moe::AnalyzeOptions o;
        o.segment_lengths = {2, 4};
        o.token_text = [](int32_t id) { return std::string(1, static_cast<char>('a' + id % 26)); };
        analysis = std::make_unique<moe::RouteAnalysis>(h, o);
        analysis->begin_trace(h, "fuzz-input.trace");
        int k = 1;
        for (int x : h.n_expert_used) k = std::max(k, x);
        std::vector<moe::CacheSimConfig> configs;
        for (const char* p : {"distance", "lru", "lfu", "arc", "layer", "belady"})
          configs.push_back({p, static_cast<size_t>(k), moe::SimPredictor::None, 0});
        if (h.fields.lookahead > 0) configs.push_back({"lru", static_cast<size_t>(k) + 2, moe::SimPredictor::Gate, 0});
        sim = std::make_unique<moe::CacheSimulator>(h, configs, std::vector<uint64_t>{});
      }
      analysis->sync_inputs(h);
      analysis->add_step(s);
      sim->add_step(s);
    });
    if (analysis) {
      analysis->finish();
      sim->finish();
    }
  } catch (const moe::Error&) {
  }
  return 0;
}
