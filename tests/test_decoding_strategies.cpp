// Decoding strategies on top of the routing policy: SCMoE's contrastive scores and its weak pass, DES
// samples (each sample equals a separate run with its k and seed), C3PO re-mixing (the reference file,
// its validation, and that re-mixing changes exactly the last N MoE layers' routing), and nPMI.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <numeric>

#include <nlohmann/json.hpp>

#include "analysis/expert_npmi.h"
#include "base/error.h"
#include "cli_runner.h"
#include "fixture_util.h"
#include "format/gguf.h"
#include "model/weights.h"
#include "runtime/remix.h"
#include "runtime/sampler.h"
#include "runtime/scmoe.h"
#include "runtime/session.h"

namespace moe {
namespace {

using test::model_path;
using test::read_ids;
using test::ref_path;

TEST(Scmoe, ScoresContrastPlausibleTokens) {
  // Strong log-probs (up to a constant): token 0 best, token 1 close, token 2 far below alpha.
  const std::vector<float> ls = {2.0f, 1.5f, -5.0f, 1.0f}, lw = {2.0f, 0.0f, 3.0f, 1.0f};
  ScmoeParams p;
  p.alpha = 0.1;
  p.beta = 0.5;
  std::vector<float> out(4);
  scmoe_scores(ls.data(), lw.data(), 4, p, out.data());
  auto logsm = [](const std::vector<float>& l, int v) {
    double z = 0;
    for (float x : l) z += std::exp(static_cast<double>(x));
    return l[static_cast<size_t>(v)] - std::log(z);
  };
  EXPECT_EQ(out[2], -INFINITY);  // log p_s < max + log 0.1
  for (int v : {0, 1, 3}) EXPECT_NEAR(out[static_cast<size_t>(v)], 1.5 * logsm(ls, v) - 0.5 * logsm(lw, v), 1e-5);
  // The weak pass agrees on token 0, disagrees on token 1: the contrast picks token 1.
  EXPECT_GT(out[1], out[0]);
  // beta = 0 is the strong pass's own argmax.
  p.beta = 0;
  scmoe_scores(ls.data(), lw.data(), 4, p, out.data());
  EXPECT_EQ(std::max_element(out.begin(), out.end()) - out.begin(), 0);
  EXPECT_THROW((ScmoeParams{0.0, 0.5, 2}).check(), Error);
  EXPECT_THROW((ScmoeParams{0.1, 0.5, 0}).check(), Error);
}

TEST(Scmoe, WeakPolicyIsOneExpertByRankKeepingMasks) {
  RoutingPolicy strong;
  strong.experts = 3;
  strong.mask_experts = {{0, 1}};
  const RoutingPolicy weak = scmoe_weak_policy(strong, 2);
  EXPECT_EQ(weak.only_rank, 2);
  EXPECT_EQ(weak.experts, 0);
  EXPECT_EQ(weak.mask_experts, strong.mask_experts);
}

TEST(Scmoe, RunDiffersFromGreedyAndWeakPassHasItsOwnCache) {
  const std::string m = model_path("tiny-qwen3moe"), tokens = ref_path("tiny-qwen3moe", "t1.tok");
  const auto greedy = test::run_cli({"run", "-m", m, "--tokens", tokens, "-n", "16", "--temp", "0"});
  const auto sc = test::run_cli({"run", "-m", m, "--tokens", tokens, "-n", "16", "--temp", "0", "--scmoe",
                                 "--scmoe-beta", "2"});
  ASSERT_EQ(greedy.status, 0) << greedy.err;
  ASSERT_EQ(sc.status, 0) << sc.err;
  EXPECT_NE(greedy.out, sc.out);
  // The same decoding by hand: two sessions, contrastive argmax.
  auto model = Model::load(m);
  ResidentExpertStore store(*model);
  ThreadPool pool(2);
  ForwardOptions weak;
  weak.routing = scmoe_weak_policy({}, 2);
  Session s(*model, store, 64), w(*model, store, 64, weak);
  const auto prompt = read_ids(tokens);
  std::vector<float> ls = s.eval(prompt, pool), lw = w.eval(prompt, pool), sc_scores(ls.size());
  ScmoeParams p;
  p.beta = 2;
  std::string want;
  for (int i = 0; i < 16; ++i) {
    scmoe_scores(ls.data(), lw.data(), model->spec().n_vocab, p, sc_scores.data());
    const int32_t next = argmax(sc_scores.data(), model->spec().n_vocab);
    want += std::to_string(next) + "\n";
    ls = s.eval({next}, pool);
    lw = w.eval({next}, pool);
  }
  EXPECT_EQ(sc.out, want);
  const auto bad = test::run_cli({"run", "-m", m, "--tokens", tokens, "-n", "4", "--scmoe-rank", "3"});
  EXPECT_EQ(bad.status, 1);
  EXPECT_NE(bad.err.find("--scmoe"), std::string::npos) << bad.err;
}

TEST(DynamicExperts, EachSampleEqualsASeparateRunWithItsK) {
  const std::string m = model_path("tiny-olmoe"), tokens = ref_path("tiny-olmoe", "t1.tok");
  const std::string json = (test::cli_temp_dir() / "samples.json").string();
  const auto r = test::run_cli({"run", "-m", m, "--tokens", tokens, "-n", "10", "--temp", "0.9", "--seed", "5",
                                "--samples", "4", "--k-list", "1,3", "--samples-json", json, "--samples-width", "120"});
  ASSERT_EQ(r.status, 0) << r.err;
  // Side by side: one header row naming every sample's k and mean log-prob.
  const std::string first = r.out.substr(0, r.out.find('\n'));
  for (const char* s : {"#1 k=1", "#2 k=3", "#3 k=1", "#4 k=3", "mean log-prob"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << r.out;
  EXPECT_NE(first.find(" | "), std::string::npos) << first;
  const auto j = nlohmann::json::parse(test::slurp(json));
  ASSERT_EQ(j.size(), 4u);
  for (int i = 0; i < 4; ++i) {
    const int k = i % 2 == 0 ? 1 : 3;
    EXPECT_EQ(j[i]["k"].get<int>(), k);
    const std::string ids = (test::cli_temp_dir() / ("sample" + std::to_string(i) + ".ids")).string();
    const auto one = test::run_cli({"run", "-m", m, "--tokens", tokens, "-n", "10", "--temp", "0.9", "--seed",
                                    std::to_string(5 + i), "--experts", std::to_string(k), "--ids-out", ids});
    ASSERT_EQ(one.status, 0) << one.err;
    EXPECT_EQ(j[i]["ids"].get<std::vector<int32_t>>(), read_ids(ids)) << "sample " << i;
    double sum = 0;
    for (double lp : j[i]["logprobs"]) {
      EXPECT_LE(lp, 0.0);
      sum += lp;
    }
    EXPECT_NEAR(j[i]["mean_logprob"].get<double>(), sum / j[i]["logprobs"].size(), 1e-5);
  }
  const auto bad = test::run_cli({"run", "-m", m, "--tokens", tokens, "--samples", "2", "--k-list", "1,9"});
  EXPECT_EQ(bad.status, 1);
  EXPECT_NE(bad.err.find("--k-list 9"), std::string::npos) << bad.err;
  const auto both = test::run_cli({"run", "-m", m, "--tokens", tokens, "--samples", "2", "--k-list", "1", "--experts", "2"});
  EXPECT_EQ(both.status, 1);
}

// A small reference file from the fixture model's own texts.
std::string build_refs(const std::string& name) {
  const std::string out = (test::cli_temp_dir() / (name + ".refs.gguf")).string();
  if (std::filesystem::exists(out)) return out;
  const auto r = test::run_cli({"remix-build", "-m", model_path(name), "-f", test::fixtures_dir() + "/text/t1.txt",
                                "-f", test::fixtures_dir() + "/text/t2.txt", "-o", out, "--snippet-len", "8",
                                "--stride", "4", "--keep", "all"});
  if (r.status != 0) throw std::runtime_error(r.err);
  return out;
}

TEST(Remix, ReferenceFileRoundTripsAndMatchesItsModel) {
  const std::string path = build_refs("tiny-qwen3moe");
  const RemixReferences refs = RemixReferences::read(path);
  auto model = Model::load(model_path("tiny-qwen3moe"));
  EXPECT_GT(refs.count(), 4);
  EXPECT_TRUE(refs.check_model(*model, path));
  EXPECT_EQ(refs.n_embd, model->spec().n_embd);
  for (int l = 0; l < model->spec().n_layer; ++l) {
    ASSERT_EQ(refs.scores[static_cast<size_t>(l)].size(), static_cast<size_t>(refs.count() * 8));
    // Softmax scores: each reference's vector sums 1.
    double s = 0;
    for (int e = 0; e < 8; ++e) s += refs.scores[static_cast<size_t>(l)][static_cast<size_t>(e)];
    EXPECT_NEAR(s, 1.0, 1e-5);
  }
  auto other = Model::load(model_path("tiny-mixtral"));  // 4 experts
  EXPECT_THROW(refs.check_model(*other, path), Error);
  // Nearest neighbours of a reference's own embedding: itself first, cosine 1.
  const std::vector<float> e0(refs.embeddings.begin(), refs.embeddings.begin() + refs.n_embd);
  const RemixNeighbors nb = remix_neighbors(refs, e0, 3);
  ASSERT_EQ(nb.ids.size(), 3u);
  EXPECT_NEAR(nb.cosine[0], 1.0, 1e-6);
  EXPECT_NEAR(nb.weights[0] + nb.weights[1] + nb.weights[2], 1.0, 1e-9);
}

void expect_bad_refs(const std::function<void(gguf::Writer&)>& edit, const std::string& needle) {
  const RemixReferences refs = RemixReferences::read(build_refs("tiny-qwen3moe"));
  auto f = gguf::File::open(build_refs("tiny-qwen3moe"));
  gguf::Writer w;
  w.copy_from(*f);
  edit(w);
  const std::string bad = (test::cli_temp_dir() / "bad.refs.gguf").string();
  w.write(bad);
  try {
    RemixReferences::read(bad);
    ADD_FAILURE() << "accepted: " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
  }
}

TEST(Remix, MalformedFilesAreClearErrors) {
  expect_bad_refs([](gguf::Writer& w) { w.set("moe.remix.version", gguf::Value::make_u32(7)); }, "moe.remix.version");
  expect_bad_refs([](gguf::Writer& w) { w.remove("moe.remix.sources"); }, "moe.remix.sources");
  expect_bad_refs([](gguf::Writer& w) { w.set("moe.remix.count", gguf::Value::make_u32(1000000)); }, "moe.remix.sources");
  expect_bad_refs([](gguf::Writer& w) { w.set("moe.remix.count", gguf::Value::make_u32(0)); }, "moe.remix.count");
  expect_bad_refs(
      [](gguf::Writer& w) {
        w.set("moe.remix.model.n_expert", gguf::Value::make_i32_array({8, 6}));
      },
      "remix.scores.1");
  // A NaN in the scores.
  {
    auto f = gguf::File::open(build_refs("tiny-qwen3moe"));
    gguf::Writer w;
    for (const auto& [k, v] : f->metadata()) w.set(k, v);
    for (const auto& t : f->tensors()) {
      std::vector<uint8_t> b(t.nbytes);
      f->read_tensor_bytes(t, 0, t.nbytes, b.data());
      if (t.name == "remix.scores.0") {
        const float nan = NAN;
        std::memcpy(b.data() + 4, &nan, 4);
      }
      w.add_tensor(t.name, t.type, t.dims, std::move(b));
    }
    const std::string bad = (test::cli_temp_dir() / "nan.refs.gguf").string();
    w.write(bad);
    EXPECT_THROW(RemixReferences::read(bad), Error);
  }
  const std::string junk = (test::cli_temp_dir() / "junk.refs.gguf").string();
  test::write_text(junk, "not a gguf file at all");
  EXPECT_THROW(RemixReferences::read(junk), Error);
  const auto r = test::run_cli({"run", "-m", model_path("tiny-qwen3moe"), "--tokens", ref_path("tiny-qwen3moe", "t1.tok"),
                                "-n", "2", "--remix", junk, "--remix-layers", "1"});
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find(junk), std::string::npos) << r.err;
}

// Records each layer's routing of the last token of the last step.
class LastRouting final : public ForwardObserver {
 public:
  void on_routing(const MoeLayerRouting& r) override {
    const Routing& x = *r.routing;
    const int64_t t = x.n_tokens - 1;
    std::vector<std::pair<int32_t, float>> v;
    for (int j = 0; j < x.k; ++j) v.push_back({x.id(t, j), x.weight(t, j)});
    last[r.layer] = v;
  }
  std::map<int, std::vector<std::pair<int32_t, float>>> last;
};

TEST(Remix, ReplacesTheRoutingOfTheLastNMoeLayersOnly) {
  auto model = Model::load(model_path("tiny-deepseekmoe"));  // layer 0 dense, layers 1-2 MoE
  const RemixReferences refs = RemixReferences::read(build_refs("tiny-deepseekmoe"));
  ResidentExpertStore store(*model);
  ThreadPool pool(2);
  const auto prompt = read_ids(ref_path("tiny-deepseekmoe", "t2.tok"));
  // Batch-invariant: eval_with_remix evaluates the last token again on its own, and only then does a
  // single token attend with the prompt batch's exact arithmetic.
  ForwardOptions invariant;
  invariant.batch_invariant = true;
  Session plain(*model, store, 128, invariant), mixed(*model, store, 128, invariant);
  LastRouting a, b;
  plain.forward().add_observer(&a);
  plain.eval(prompt, pool);
  RemixNeighbors nb;
  mixed.forward().add_observer(&b);
  eval_with_remix(mixed, prompt, pool, refs, 1, 3, &nb);
  ASSERT_EQ(nb.ids.size(), 3u);
  EXPECT_EQ(a.last[1], b.last[1]) << "layer 1 is not among the last 1 MoE layers";
  // Layer 2 routes by the mixed vector: its top-k of the similarity-weighted average.
  const auto mix = remix_scores(refs, nb, 1);
  ASSERT_TRUE(mix->per_layer[1].empty());
  const std::vector<float>& v = mix->per_layer[2];
  ASSERT_EQ(v.size(), 8u);
  std::vector<int32_t> order(8);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) { return v[x] > v[y]; });
  ASSERT_EQ(b.last[2].size(), 2u);
  EXPECT_EQ(b.last[2][0].first, order[0]);
  EXPECT_EQ(b.last[2][1].first, order[1]);
  EXPECT_FLOAT_EQ(b.last[2][0].second, v[static_cast<size_t>(order[0])]);  // deepseek: no renorm
  // The CLI path prints the neighbours it used.
  const auto r = test::run_cli({"run", "-m", model_path("tiny-deepseekmoe"), "--tokens",
                                ref_path("tiny-deepseekmoe", "t2.tok"), "-n", "4", "--temp", "0", "--remix",
                                build_refs("tiny-deepseekmoe"), "--remix-layers", "1"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("remix: last 1 MoE layers from"), std::string::npos) << r.err;
  const auto other = test::run_cli({"logits", "-m", model_path("tiny-deepseekmoe"), "--tokens",
                                    ref_path("tiny-deepseekmoe", "t2.tok"), "-o",
                                    (test::cli_temp_dir() / "x.f32").string(), "--routing-policy",
                                    "{\"remix\": {\"refs\": \"r.gguf\", \"layers\": 1}}"});
  EXPECT_EQ(other.status, 1);
  EXPECT_NE(other.err.find("moe run"), std::string::npos) << other.err;
}

TEST(Remix, EvalReportsNoneRemixAndRandomReferences) {
  const std::string json = (test::cli_temp_dir() / "remix-eval.json").string();
  const auto r = test::run_cli({"remix-eval", "-m", model_path("tiny-qwen3moe"), "--refs", build_refs("tiny-qwen3moe"),
                                "-f", test::fixtures_dir() + "/text/t5.txt", "--snippet-len", "8", "--remix-layers",
                                "1", "--json", json});
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(test::slurp(json));
  ASSERT_EQ(j["files"].size(), 1u);
  for (const char* k : {"nll_none", "nll_remix", "nll_random_refs", "acc_none", "acc_remix"})
    EXPECT_TRUE(j["files"][0].contains(k)) << k;
  EXPECT_NE(j["files"][0]["nll_none"].get<double>(), j["files"][0]["nll_remix"].get<double>());
}

TEST(ExpertNpmi, HandComputed) {
  // Two classes of 4 tokens each, one layer of 2 experts: expert 0 only ever in class 0.
  const std::vector<std::vector<std::vector<uint64_t>>> counts = {{{4, 1}}, {{0, 4}}};
  const auto n = expert_npmi(counts, {4, 4});
  // p(x0,e0) = 4/8, p(x0) = 1/2, p(e0) = 4/8: log2(0.5 / 0.25) / -log2(0.5) = 1.
  EXPECT_NEAR(n[0][0][0], 1.0, 1e-12);
  EXPECT_EQ(n[1][0][0], -1.0);
  // p(x1,e1) = 4/8, p(e1) = 5/8: log2(0.5 / (0.5 * 0.625)) / 1.
  EXPECT_NEAR(n[1][0][1], std::log2(1.0 / 0.625), 1e-12);
  EXPECT_THROW(expert_npmi(counts, {4}), Error);
}

TEST(PerplexityJson, CarriesRoutingStatsAccuracyAndNpmi) {
  const std::string json = (test::cli_temp_dir() / "ppl.json").string();
  const auto r = test::run_cli({"perplexity", "-m", model_path("tiny-qwen3moe"), "-f",
                                test::fixtures_dir() + "/text/t1.txt", "-f", test::fixtures_dir() + "/text/t2.txt",
                                "-c", "32", "--json", json, "--route-top-p", "0.3", "--scmoe"});
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(test::slurp(json));
  EXPECT_EQ(j["routing_policy"]["top_p"].get<double>(), 0.3);
  EXPECT_LT(j["routing"]["experts_per_token"].get<double>(), 2.0);
  EXPECT_GT(j["routing"]["expert_evals_saved_frac"].get<double>(), 0.0);
  for (const auto& f : j["files"]) {
    EXPECT_TRUE(f.contains("accuracy"));
    EXPECT_TRUE(f.contains("scmoe_accuracy"));
    EXPECT_EQ(f["experts_per_token_per_layer"].size(), 2u);
    EXPECT_EQ(f["npmi"].size(), 2u);
    EXPECT_EQ(f["npmi"][0].size(), 8u);
  }
}

}  // namespace
}  // namespace moe
