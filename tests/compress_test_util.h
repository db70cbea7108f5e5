// Helpers shared by the compression tests (prune, merge): all-position logits of a model through the inference
// engine, and the check of a compressed fixture against llama.cpp's logits on the same file.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "cli_runner.h"
#include "fixture_util.h"
#include "model/synth.h"
#include "model/weights.h"
#include "moe/executor.h"
#include "runtime/session.h"

namespace moe::test {

// All-position logits of `ids` (resident experts, 2 threads), optionally with an observer on the forward pass.
inline std::vector<float> eval_logits(const Model& model, const std::vector<int32_t>& ids,
                                      ForwardObserver* obs = nullptr) {
  ResidentExpertStore store(model);
  ThreadPool pool(2);
  Session s(model, store, static_cast<int64_t>(ids.size()) + 4);
  if (obs) s.forward().add_observer(obs);
  return s.eval(ids, pool, /*all_logits=*/true, 512);
}

// A DeepSeek-V3-like synthetic model (3 layers, MLA): sigmoid gate with selection bias, 4 groups of 4 experts,
// top-2 groups.
inline SynthConfig group_limited_synth() {
  SynthConfig cfg;
  cfg.arch = "deepseek2";
  cfg.spec = make_moe_shape(3, 128, 2, 2, 64, 16, 4, 32, 300, 1, 256, 1, 32);
  set_mla(cfg.spec, 0, 64, 32, 32, 32);
  for (LayerSpec& L : cfg.spec.layers) {
    L.moe.n_group = 4;
    L.moe.topk_group = 2;
    L.moe.has_selection_bias = true;
    L.moe.gating = Gating::Sigmoid;
    L.moe.norm_topk = true;
  }
  return cfg;
}

// The F16 fixtures (the compressed-fixture references are made from those).
inline std::vector<std::string> f16_fixture_names() {
  std::vector<std::string> out;
  for (const std::string& n : fixture_model_names())
    if (n.find("-Q") == std::string::npos) out.push_back(n);
  return out;
}

// Fixture `name` calibrated on the fixtures' t1.txt (one 64-token window), then compressed by
// `moe COMMAND -q -m FIXTURE --stats STATS ARGS... -o OUT` exactly as bench/llamacpp/<kind>_refs.sh does, and
// OUT's all-position logits over the first 24 ids of seq.tok compared with llama.cpp's on the same file (`ref`,
// NMSE <= 1e-5). Skips the calling test when the reference or the fixture is missing.
inline void expect_compressed_fixture_matches_llama(const std::string& name, const std::string& ref,
                                                    const std::string& command, const std::vector<std::string>& args) {
  namespace fs = std::filesystem;
  if (!fs::exists(ref)) GTEST_SKIP() << "no llama.cpp reference for " << name;
  const std::string model = model_path(name);
  if (!fs::exists(model)) GTEST_SKIP() << "fixture missing";
  const fs::path dir = cli_temp_dir();
  const std::string stats = (dir / (name + "." + command + ".stats.gguf")).string();
  const std::string out = (dir / (name + "." + command + ".gguf")).string();
  auto r = run_cli({"calibrate", "-q", "-m", model, "-f", fixtures_dir() + "/text/t1.txt", "--recon-types", "",
                    "--max-windows", "1", "-c", "64", "-o", stats});
  ASSERT_EQ(r.status, 0) << r.err;
  std::vector<std::string> cmd = {command, "-q", "-m", model, "--stats", stats};
  cmd.insert(cmd.end(), args.begin(), args.end());
  cmd.insert(cmd.end(), {"-o", out});
  r = run_cli(cmd);
  ASSERT_EQ(r.status, 0) << r.err;
  auto compressed = Model::load(out);
  auto ids = read_ids(ref_path(name, "seq.tok"));
  ids.resize(24);
  const auto got = eval_logits(*compressed, ids);
  const auto want = read_f32(ref);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_LE(nmse(got, want), 1e-5);
  fs::remove(stats);
  fs::remove(out);
}

}  // namespace moe::test
