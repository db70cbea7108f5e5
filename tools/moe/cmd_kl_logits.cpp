// `moe kl-logits A.f32 B.f32 --vocab N [--json]`: how far two logits files of the same tokens (from
// `moe logits`) are apart: KL(A||B) per token (mean, median, p99, max) and top-1 agreement. This is
// how the quality cost of --lowbit / --skip-below (or any other change) is reported: run `moe logits`
// with and without it and compare, the full-precision run as A.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "analysis/logit_compare.h"
#include "base/error.h"
#include "commands.h"

namespace moe::cli {

namespace {

struct KlArgs {
  std::string a, b;
  int64_t n_vocab = 0;
  bool json = false;
};

int run_kl_logits(const KlArgs& a) {
  const std::vector<float> x = read_logits_file(a.a, a.n_vocab);
  const std::vector<float> y = read_logits_file(a.b, a.n_vocab);
  if (x.size() != y.size())
    fail("{} holds {} rows of {} logits but {} holds {}; compare runs over the same tokens", a.a,
         x.size() / static_cast<size_t>(a.n_vocab), a.n_vocab, a.b, y.size() / static_cast<size_t>(a.n_vocab));
  const int64_t n = static_cast<int64_t>(x.size()) / a.n_vocab;
  const LogitComparison c = compare_logits(x.data(), y.data(), n, a.n_vocab);
  if (a.json) {
    nlohmann::ordered_json j;
    j["a"] = a.a;
    j["b"] = a.b;
    j["n_tokens"] = c.n_tokens;
    j["n_vocab"] = c.n_vocab;
    j["kl_mean"] = c.mean_kl;
    j["kl_median"] = c.median_kl;
    j["kl_p99"] = c.p99_kl;
    j["kl_max"] = c.max_kl;
    j["kl_max_token"] = c.max_kl_token;
    j["top1_agreement"] = c.top1_agreement;
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("%s vs %s: %lld tokens x %lld vocab\n", a.a.c_str(), a.b.c_str(), static_cast<long long>(c.n_tokens),
              static_cast<long long>(c.n_vocab));
  std::printf("KL(A||B) nats: mean %.6g  median %.6g  p99 %.6g  max %.6g (token %lld)\n", c.mean_kl, c.median_kl,
              c.p99_kl, c.max_kl, static_cast<long long>(c.max_kl_token));
  std::printf("top-1 agreement: %.2f%% (%lld of %lld)\n", 100 * c.top1_agreement,
              static_cast<long long>(c.top1_agreement * static_cast<double>(c.n_tokens) + 0.5),
              static_cast<long long>(c.n_tokens));
  return 0;
}

}  // namespace

void register_kl_logits(CLI::App& app, CommandSet& cmds) {
  auto a = std::make_shared<KlArgs>();
  CLI::App* sub = app.add_subcommand(
      "kl-logits", "KL divergence and top-1 agreement between two logits files of the same tokens (moe logits)");
  sub->add_option("A", a->a, "Reference logits (float32 [n_tokens][n_vocab]), e.g. full precision")->required();
  sub->add_option("B", a->b, "Logits to compare with A")->required();
  sub->add_option("--vocab", a->n_vocab, "Vocabulary size (logits per token)")->required()->check(CLI::Range(1, 1 << 30));
  sub->add_flag("--json", a->json, "Print the numbers as JSON");
  cmds.add(sub, [a] { return run_kl_logits(*a); });
}

}  // namespace moe::cli
