// The trainer end to end on tiny models: whole-model gradients against finite differences (in
// double), overfitting one batch, a short training run, determinism across thread counts, resume ==
// uninterrupted, and agreement of the exported GGUF under the inference engine with the trainer's
// own forward pass.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "fixture_util.h"
#include "format/gguf.h"
#include "model/reference_forward.h"
#include "model/weights.h"
#include "moe/expert_store.h"
#include "runtime/session.h"
#include "train/trainer.h"

namespace moe::train {
namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("moe_test_train_" + std::to_string(getpid()) + "_" + name))
      .string();
}

ShapeOptions tiny_qwen3() {
  ShapeOptions s = preset_shape("qwen3moe");
  s.n_vocab = 64;
  s.n_layer = 2;
  s.n_embd = 16;
  s.n_head = 2;
  s.n_head_kv = 1;
  s.head_dim = 8;
  s.n_expert = 4;
  s.n_expert_used = 2;
  s.n_ff_exp = 12;
  s.tied_output = true;
  return s;
}

ShapeOptions tiny_deepseek() {
  ShapeOptions s = preset_shape("deepseek");
  s.n_vocab = 64;
  s.n_layer = 3;
  s.n_embd = 16;
  s.n_head = 2;
  s.n_head_kv = 2;
  s.head_dim = 8;
  s.n_dense_lead = 1;
  s.n_ff_dense = 20;
  s.n_expert = 6;
  s.n_expert_used = 2;
  s.n_ff_exp = 8;
  s.n_shared = 2;
  s.tied_output = false;
  return s;
}

std::vector<int32_t> random_tokens(size_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> v(n);
  for (auto& t : v) t = static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab));
  return v;
}

// A learnable stream: a random sequence (order_seed) of 12 fixed "words" of 2-5 tokens (the words
// themselves are the same for every stream, so two streams share one language).
std::vector<int32_t> word_stream(size_t n, int64_t vocab, uint64_t order_seed) {
  std::mt19937_64 wrng(1234);
  std::vector<std::vector<int32_t>> words(12);
  for (auto& w : words) {
    w.resize(2 + wrng() % 4);
    for (auto& t : w) t = static_cast<int32_t>(wrng() % static_cast<uint64_t>(vocab));
  }
  std::mt19937_64 rng(order_seed);
  std::vector<int32_t> out;
  while (out.size() < n) {
    const auto& w = words[rng() % words.size()];
    out.insert(out.end(), w.begin(), w.end());
  }
  out.resize(n);
  return out;
}

void check_model_gradients(const ShapeOptions& shape, const RouterLossOptions& ro, bool random_bias) {
  const ArchDescriptor& arch = *find_arch(shape.preset);
  const ModelSpec spec = canonical_spec(shape, arch);
  MoeTransformer<double> m(spec, arch);
  m.init_params(3);
  // Decisive routing (router weights far from zero) so that +-h never flips a top-k choice.
  for (const ParamTensor& t : m.layout().tensors())
    if (t.role == Role::Router)
      for (size_t i = 0; i < t.size; ++i) m.params()[t.offset + i] *= 40.0;
  if (random_bias) {
    std::mt19937_64 rng(11);
    for (auto& b : m.selection_bias())
      for (auto& x : b) x = std::normal_distribution<double>(0.0, 0.05)(rng);
  }
  const int64_t B = 2, T = 5;
  const auto tokens = random_tokens(B * (T + 1), shape.n_vocab, 5);
  std::vector<int32_t> in, tg;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      in.push_back(tokens[b * (T + 1) + t]);
      tg.push_back(tokens[b * (T + 1) + t + 1]);
    }
  ThreadPool pool(2);
  std::fill(m.grads().begin(), m.grads().end(), 0.0);
  const LossBreakdown l0 = m.forward(in.data(), tg.data(), B, T, ro, &pool);
  const auto load0 = m.expert_load();
  m.backward(&pool);
  const std::vector<double> grads = m.grads();
  if (ro.load_balance_coef != 0) {
    EXPECT_GT(l0.balance, 0.0);
  }
  if (ro.z_loss_coef != 0) {
    EXPECT_GT(l0.z, 0.0);
  }

  std::mt19937_64 rng(9);
  const double h = 1e-5;
  for (const ParamTensor& t : m.layout().tensors()) {
    double max_err = 0, max_g = 0;
    for (int s = 0; s < 6; ++s) {
      const size_t i = t.offset + static_cast<size_t>(rng() % t.size);
      double& p = m.params()[i];
      const double keep = p;
      p = keep + h;
      const double lp = m.forward(in.data(), tg.data(), B, T, ro, nullptr).total();
      ASSERT_EQ(m.expert_load(), load0) << t.name << ": routing changed under the perturbation";
      p = keep - h;
      const double lm = m.forward(in.data(), tg.data(), B, T, ro, nullptr).total();
      ASSERT_EQ(m.expert_load(), load0) << t.name << ": routing changed under the perturbation";
      p = keep;
      const double fd = (lp - lm) / (2 * h);
      max_err = std::max(max_err, std::abs(fd - grads[i]));
      max_g = std::max(max_g, std::abs(fd));
    }
    EXPECT_LE(max_err, 1e-8 + 1e-5 * max_g) << t.name << ": |fd - analytic| = " << max_err << ", |g| ~ " << max_g;
  }
}

TEST(TrainModel, Qwen3MoeGradientsMatchFiniteDifferences) {
  RouterLossOptions ro;
  ro.load_balance_coef = 0.05;
  ro.z_loss_coef = 0.01;
  check_model_gradients(tiny_qwen3(), ro, false);
}

TEST(TrainModel, DeepseekGradientsMatchFiniteDifferences) {
  RouterLossOptions ro;
  ro.load_balance_coef = 0.03;
  check_model_gradients(tiny_deepseek(), ro, true);
}

TEST(TrainModel, UntiedQwen3GradientsMatchFiniteDifferences) {
  ShapeOptions s = tiny_qwen3();
  s.tied_output = false;
  check_model_gradients(s, RouterLossOptions{}, true);
}

TrainOptions tiny_opts(int64_t steps) {
  TrainOptions o;
  o.batch = 4;
  o.seq_len = 16;
  o.seed = 7;
  o.optim.lr = 1e-2;
  o.optim.warmup_steps = 5;
  o.optim.total_steps = steps;
  o.optim.weight_decay = 0.0;
  return o;
}

TEST(TrainModel, OverfitsOneBatch) {
  const ShapeOptions shape = tiny_qwen3();
  const ArchDescriptor& arch = *find_arch(shape.preset);
  TrainOptions o = tiny_opts(80);
  o.batch = 2;
  // A stream of exactly one window: every step sees the same batch.
  const auto stream = random_tokens(static_cast<size_t>(o.seq_len + 1), shape.n_vocab, 3);
  Trainer tr(canonical_spec(shape, arch), arch, o);
  tr.init_params();
  ThreadPool pool(1);  // at this size, handing work to threads costs more than it saves
  double first = 0, last = 0;
  for (int s = 0; s < 80; ++s) {
    const double l = tr.step(stream, pool).loss.ce;
    if (s == 0) first = l;
    last = l;
  }
  EXPECT_NEAR(first, std::log(64.0), 1.0);  // about uniform at initialisation
  EXPECT_LT(last, 0.1 * first) << "first " << first << " last " << last;
}

TEST(TrainModel, ShortRunLossDropsAndValidationImproves) {
  const ShapeOptions shape = tiny_deepseek();
  const ArchDescriptor& arch = *find_arch(shape.preset);
  TrainOptions o = tiny_opts(60);
  o.router.load_balance_coef = 0.01;
  const auto stream = word_stream(4000, shape.n_vocab, 1);
  const auto valid = word_stream(600, shape.n_vocab, 2);  // same words, other order: the language is shared
  Trainer tr(canonical_spec(shape, arch), arch, o);
  tr.init_params();
  ThreadPool pool(1);
  const double v0 = tr.evaluate(valid, 8, pool);
  double first = 0, tail = 0;
  for (int s = 0; s < 60; ++s) {
    const double l = tr.step(stream, pool).loss.ce;
    if (s == 0) first = l;
    if (s >= 55) tail += l / 5;
  }
  const double v1 = tr.evaluate(valid, 8, pool);
  EXPECT_LT(tail, first - 1.0) << "first " << first << " last5 " << tail;
  EXPECT_LT(v1, v0 - 1.0) << "valid before " << v0 << " after " << v1;
}

TEST(TrainModel, DeterministicAcrossThreadCounts) {
  const ShapeOptions shape = tiny_qwen3();
  const ArchDescriptor& arch = *find_arch(shape.preset);
  TrainOptions o = tiny_opts(6);
  o.router.z_loss_coef = 1e-3;
  o.bias_update_rate = 1e-3;
  const auto stream = word_stream(2000, shape.n_vocab, 4);
  std::vector<std::vector<double>> losses(2);
  std::vector<std::vector<float>> params(2);
  for (int run = 0; run < 2; ++run) {
    Trainer tr(canonical_spec(shape, arch), arch, o);
    tr.init_params();
    ThreadPool pool(run == 0 ? 1 : 2);
    for (int s = 0; s < 6; ++s) losses[run].push_back(tr.step(stream, pool).loss.total());
    params[run] = tr.model().params();
  }
  EXPECT_EQ(losses[0], losses[1]);
  EXPECT_TRUE(params[0] == params[1]);
}

TEST(TrainModel, ResumeFromCheckpointMatchesUninterruptedRun) {
  const ShapeOptions shape = tiny_deepseek();
  const ArchDescriptor& arch = *find_arch(shape.preset);
  TrainOptions o = tiny_opts(8);
  o.router.load_balance_coef = 0.01;
  o.bias_update_rate = 1e-3;  // the selection bias must survive the checkpoint too
  o.optim.weight_decay = 0.1;
  const ModelSpec spec = canonical_spec(shape, arch);
  const auto stream = word_stream(3000, shape.n_vocab, 5);
  ThreadPool pool(2);

  std::vector<double> straight;
  Trainer a(spec, arch, o);
  a.init_params();
  for (int s = 0; s < 8; ++s) straight.push_back(a.step(stream, pool).loss.total());

  const std::string ckpt = temp_path("resume.gguf");
  std::vector<double> resumed;
  {
    Trainer b(spec, arch, o);
    b.init_params();
    for (int s = 0; s < 4; ++s) resumed.push_back(b.step(stream, pool).loss.total());
    b.save_checkpoint(ckpt);
  }
  Trainer c(spec, arch, o);
  c.load_checkpoint(ckpt);
  EXPECT_EQ(c.step_index(), 4);
  for (int s = 0; s < 4; ++s) resumed.push_back(c.step(stream, pool).loss.total());
  std::filesystem::remove(ckpt);
  EXPECT_EQ(straight, resumed);
  EXPECT_TRUE(a.model().params() == c.model().params());
  EXPECT_TRUE(a.model().selection_bias() == c.model().selection_bias());
}

// Trains a few steps, exports F32, and compares inference logits with the trainer's forward.
void check_inference_agrees(const ShapeOptions& shape) {
  const ArchDescriptor& arch = *find_arch(shape.preset);
  TrainOptions o = tiny_opts(5);
  const ModelSpec spec = canonical_spec(shape, arch);
  Trainer tr(spec, arch, o);
  tr.init_params();
  ThreadPool pool(2);
  const auto stream = word_stream(2000, shape.n_vocab, 6);
  for (int s = 0; s < 5; ++s) tr.step(stream, pool);
  const std::string path = temp_path(shape.preset + ".gguf");
  tr.export_model(path, DType::F32, "", "tiny");

  const auto ids = random_tokens(24, shape.n_vocab, 8);
  tr.model().forward(ids.data(), nullptr, 1, static_cast<int64_t>(ids.size()), RouterLossOptions{}, &pool);
  const std::vector<float> mine = tr.model().logits();

  auto model = Model::load(path);
  std::filesystem::remove(path);
  const std::vector<float> ref = reference_forward(*model, ids);
  ResidentExpertStore store(*model);
  Session sess(*model, store, static_cast<int64_t>(ids.size()));
  const std::vector<float> opt = sess.eval(ids, pool, true);
  // F32 weights: the naive fp32 reference differs only by summation order (~1e-12); the optimized
  // path also keeps K/V in fp16, which bounds it near 1e-7.
  const double e_ref = test::nmse(ref, mine), e_opt = test::nmse(opt, mine);
  std::printf("  %s: NMSE vs reference_forward %.3g, vs Session %.3g\n", shape.preset.c_str(), e_ref, e_opt);
  EXPECT_LT(e_ref, 1e-9);
  EXPECT_LT(e_opt, 1e-6);
}

TEST(TrainModel, ExportedQwen3MoeMatchesInference) { check_inference_agrees(tiny_qwen3()); }
TEST(TrainModel, ExportedDeepseekMatchesInference) { check_inference_agrees(tiny_deepseek()); }

TEST(TrainModel, SelectionBiasIsSavedAsExpProbsB) {
  const ShapeOptions shape = tiny_qwen3();
  const ArchDescriptor& arch = *find_arch(shape.preset);
  TrainOptions o = tiny_opts(3);
  o.bias_update_rate = 0.01;
  Trainer tr(canonical_spec(shape, arch), arch, o);
  tr.init_params();
  ThreadPool pool(1);
  const auto stream = word_stream(2000, shape.n_vocab, 6);
  for (int s = 0; s < 3; ++s) tr.step(stream, pool);
  const std::string path = temp_path("bias.gguf");
  tr.export_model(path, DType::F32, "", "");
  auto f = gguf::File::open(path);
  for (int il = 0; il < shape.n_layer; ++il) {
    const auto* t = f->find_tensor("blk." + std::to_string(il) + ".exp_probs_b.bias");
    ASSERT_NE(t, nullptr);
    ASSERT_EQ(t->dims, std::vector<int64_t>{shape.n_expert});
    std::vector<float> b(static_cast<size_t>(shape.n_expert));
    f->read_tensor_bytes(*t, 0, t->nbytes, b.data());
    EXPECT_EQ(b, tr.model().selection_bias()[il]);
    double mag = 0;
    for (float x : b) mag += std::abs(x);
    EXPECT_GT(mag, 0.0) << "the bias never moved";
  }
  // Once the inference side binds exp_probs_b for this arch, the logits must agree with it too.
  auto model = Model::load(path);
  std::filesystem::remove(path);
  if (!model->spec().layers[0].moe.has_selection_bias)
    GTEST_SKIP() << "inference does not bind blk.N.exp_probs_b.bias for " << shape.preset << " yet";
  const auto ids = random_tokens(16, shape.n_vocab, 8);
  tr.model().forward(ids.data(), nullptr, 1, static_cast<int64_t>(ids.size()), RouterLossOptions{}, &pool);
  EXPECT_LT(test::nmse(reference_forward(*model, ids), tr.model().logits()), 1e-9);
}

}  // namespace
}  // namespace moe::train
