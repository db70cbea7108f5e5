// `moe synth --shape gpt-oss-20b` writes the model as the real file ships (ggml-org's gpt-oss-20b-mxfp4.gguf:
// llama.cpp's MXFP4_MOE mix, MXFP4 experts and Q8_0 elsewhere) unless --type says otherwise, and llama.cpp
// loads and runs it: a small model of the shape against llama.cpp's logits and greedy continuation,
// committed under tests/data/llamacpp/ (bench/llamacpp/gptoss_mxfp4_ref.sh), with the fixture suite's
// tolerances for quantized files.
#include <gtest/gtest.h>
#include <cstdio>
#include <string>
#include <vector>

#include "cli_runner.h"
#include "fixture_util.h"
#include "format/gguf.h"
#include "model/weights.h"
#include "moe/expert_store.h"
#include "runtime/sampler.h"
#include "runtime/session.h"

namespace moe {
namespace {

const std::string kDir = std::string(MOE_SOURCE_DIR) + "/tests/data/llamacpp/";

// Keep in step with bench/llamacpp/gptoss_mxfp4_ref.sh.
std::vector<std::string> synth_args(const std::string& out) {
  return {"synth",     "--shape", "gpt-oss-20b", "--layers", "4",  "--embd",  "256", "--vocab", "272", "--heads",
          "8",         "--kv-heads", "2",       "--head-dim", "48", "--experts", "6", "--top-k", "3",  "--ff",
          "96",        "--window", "5",         "--seed",    "35", "-q",      "-o",  out};
}

std::vector<float> eval_all(const Model& m, const std::vector<int32_t>& ids) {
  ThreadPool pool(2);
  ResidentExpertStore store(m);
  Session s(m, store, static_cast<int64_t>(ids.size()));
  return s.eval(ids, pool, true);
}

TEST(Mxfp4GptOss, SynthShapeShipsAsMxfp4MoeAndMatchesLlamaCpp) {
  const std::string path = (test::cli_temp_dir() / "gptoss_mxfp4_like.gguf").string();
  const test::CliResult r = test::run_cli(synth_args(path));
  ASSERT_EQ(r.status, 0) << r.err;

  // The mix: every expert matrix MXFP4, the router F32, every other matrix Q8_0; file type MXFP4_MOE.
  {
    auto f = gguf::File::open(path);
    EXPECT_EQ(f->get_uint("general.file_type"), 38u);
    int mxfp4 = 0, q8 = 0;
    for (const auto& t : f->tensors()) {
      if (t.dims.size() < 2) {
        EXPECT_EQ(t.type, DType::F32) << t.name;
        continue;
      }
      const bool expert = t.name.find("_exps.weight") != std::string::npos;
      const bool router = t.name.find("ffn_gate_inp") != std::string::npos;
      const bool bias = t.name.find(".bias") != std::string::npos;  // expert biases: [ff, n_expert], F32
      const DType want = expert ? DType::MXFP4 : (router || bias) ? DType::F32 : DType::Q8_0;
      EXPECT_EQ(t.type, want) << t.name;
      mxfp4 += t.type == DType::MXFP4;
      q8 += t.type == DType::Q8_0;
    }
    EXPECT_EQ(mxfp4, 4 * 3);    // gate, up, down of 4 layers
    EXPECT_EQ(q8, 2 + 4 * 4);  // token_embd, output, q/k/v/o of 4 layers
  }

  auto model = Model::load(path);
  const int64_t V = model->spec().n_vocab;
  const auto ids = test::read_ids(kDir + "arch_tokens.txt");
  const auto llama = test::read_f32(kDir + "gptoss-mxfp4-like.MXFP4_MOE.logits.f32");
  const auto llama_f32 = test::read_f32(kDir + "gptoss-mxfp4-like.F32.logits.f32");
  ASSERT_EQ(llama.size(), ids.size() * static_cast<size_t>(V));
  const auto ours = eval_all(*model, ids);

  // The same model as F32 (same seed, same draws): our logits on it are the unquantized reference.
  const std::string f32_path = (test::cli_temp_dir() / "gptoss_mxfp4_like_f32.gguf").string();
  std::vector<std::string> f32_args = synth_args(f32_path);
  f32_args.insert(f32_args.end() - 3, {"--type", "F32"});
  ASSERT_EQ(test::run_cli(f32_args).status, 0);
  const auto ours_f32 = eval_all(*Model::load(f32_path), ids);
  std::remove(f32_path.c_str());

  const double e = test::nmse(ours, llama), top1 = test::top1_agreement(ours, llama, V);
  const double ours_vs_f32 = test::nmse(ours, llama_f32), llama_vs_f32 = test::nmse(llama, llama_f32);
  std::printf("[mxfp4] gpt-oss-20b shape, 4 layers, MXFP4_MOE: NMSE vs llama.cpp %.3e, top-1 %.1f%%; vs the F32 "
              "model ours %.3e, llama.cpp %.3e; our F32 vs llama.cpp's F32 %.3e\n",
              e, 100 * top1, ours_vs_f32, llama_vs_f32, test::nmse(ours_f32, llama_f32));
  EXPECT_LE(e, 2e-3);
  EXPECT_GE(top1, 0.97);
  EXPECT_LE(ours_vs_f32, 1.1 * llama_vs_f32);
  EXPECT_LE(test::nmse(ours_f32, llama_f32), 1e-5);  // the F32 file is the same model to llama.cpp

  // Greedy continuation of the first 20 tokens, token by token, with llama.cpp's attention numerics.
  const auto want = test::read_ids(kDir + "gptoss-mxfp4-like.greedy24.tok");
  ASSERT_EQ(want.size(), 24u);
  ForwardOptions compat;
  compat.llama_compat_attention = true;
  ThreadPool pool(2);
  ResidentExpertStore store(*model);
  Session s(*model, store, 64, compat);
  const std::vector<int32_t> prompt(ids.begin(), ids.begin() + 20);
  const std::vector<float>* logits = &s.eval(prompt, pool);
  std::vector<int32_t> got;
  for (int i = 0; i < 24; ++i) {
    got.push_back(argmax(logits->data(), V));
    logits = &s.eval({got.back()}, pool);
  }
  EXPECT_EQ(got, want);
  std::remove(path.c_str());
}

TEST(Mxfp4GptOss, TypeFlagOverridesTheShapesDefault) {
  const std::string path = (test::cli_temp_dir() / "gptoss_q8.gguf").string();
  std::vector<std::string> args = synth_args(path);
  args.insert(args.end() - 3, {"--type", "Q8_0"});
  ASSERT_EQ(test::run_cli(args).status, 0);
  auto f = gguf::File::open(path);
  EXPECT_EQ(f->find_tensor("blk.0.ffn_up_exps.weight")->type, DType::Q8_0);
  EXPECT_EQ(f->get_uint("general.file_type"), 7u);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace moe
