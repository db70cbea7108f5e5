#include "run_samples.h"

#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "cli_util.h"
#include "generation.h"
#include "moe/routing_policy.h"

namespace moe::cli {

void add_samples_flags(CLI::App* sub, SamplesRequest& r, const std::string& group) {
  sub->add_option("--samples", r.n, "Generate N continuations side by side, each with its own k (--k-list) and seed "
                                    "(seed + i), with their mean log-probability")
      ->check(CLI::Range(1, 1024))
      ->group(group);
  sub->add_option_function<std::string>(
         "--k-list", [&r](const std::string& s) { r.k_list = parse_int_list(s, "--k-list"); },
         "Experts per token of sample i: the list's entry i mod its length (e.g. 1,2,3,4)")
      ->group(group);
  sub->add_option("--samples-json", r.json_out, "Also write the samples as JSON")->group(group);
  sub->add_option("--samples-width", r.width, "Width of the side-by-side view (default $COLUMNS or 160)")
      ->check(CLI::Range(20, 10000))
      ->group(group);
}

namespace {

// Splits UTF-8 text into display lines of at most `w` code points (breaking at newlines too).
std::vector<std::string> wrap(const std::string& text, int w) {
  std::vector<std::string> lines(1);
  int col = 0;
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    len = std::min(len, text.size() - i);
    if (c == '\n') {
      lines.emplace_back();
      col = 0;
      ++i;
      continue;
    }
    if (col == w) {
      lines.emplace_back();
      col = 0;
    }
    lines.back().append(text, i, len);
    ++col;
    i += len;
  }
  return lines;
}

int display_width(const std::string& s) {
  int n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

}  // namespace

std::string side_by_side(const std::vector<std::string>& headers, const std::vector<std::string>& texts, int width) {
  const int n = static_cast<int>(texts.size());
  if (n == 0) return "";
  const int col = std::max(8, (width - 3 * (n - 1)) / n);
  std::vector<std::vector<std::string>> cells(static_cast<size_t>(n));
  size_t rows = 0;
  for (int i = 0; i < n; ++i) {
    auto head = wrap(headers[static_cast<size_t>(i)], col);
    auto body = wrap(texts[static_cast<size_t>(i)], col);
    cells[static_cast<size_t>(i)] = head;
    cells[static_cast<size_t>(i)].push_back(std::string(static_cast<size_t>(col), '-'));
    cells[static_cast<size_t>(i)].insert(cells[static_cast<size_t>(i)].end(), body.begin(), body.end());
    rows = std::max(rows, cells[static_cast<size_t>(i)].size());
  }
  std::string out;
  for (size_t r = 0; r < rows; ++r) {
    std::string line;
    for (int i = 0; i < n; ++i) {
      const auto& c = cells[static_cast<size_t>(i)];
      const std::string cell = r < c.size() ? c[r] : "";
      line += cell;
      if (i + 1 < n) line += std::string(static_cast<size_t>(col - display_width(cell)), ' ') + " | ";
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  return out;
}

int run_samples(Engine& engine, Session& session, const Tokenizer* tok, const std::vector<int32_t>& prompt,
                const SamplerParams& sampling, int n_predict, bool ignore_eos, const std::vector<std::string>& stops,
                const SamplesRequest& req, ThreadPool& pool) {
  const RoutingPolicy base = session.routing_policy();
  if (!req.k_list.empty() && (base.experts > 0 || !base.experts_per_layer.empty() || base.top_p >= 0 ||
                              base.only_rank > 0))
    fail("run: --k-list sets each sample's experts per token; it cannot be combined with --experts, "
         "--experts-per-layer or --route-top-p");
  struct Sample {
    int k = 0;
    uint32_t seed = 0;
    GenerateResult r;
    double mean_logprob = 0;
  };
  std::vector<Sample> samples;
  for (int i = 0; i < req.n; ++i) {
    Sample s;
    RoutingPolicy p = base;
    if (!req.k_list.empty()) {
      p.experts = req.k_list[static_cast<size_t>(i) % req.k_list.size()];
      try {
        session.set_routing_policy(p);
      } catch (const Error& e) {
        fail("--k-list {}: {}", p.experts, e.what());
      }
    }
    s.k = p.experts;
    session.reset();
    const std::vector<float>& logits = session.eval(prompt, pool);
    SamplerParams sp = sampling;
    sp.seed = sampling.seed + static_cast<uint32_t>(i);
    s.seed = sp.seed;
    Sampler sampler(sp);
    GenerateParams gp;
    gp.n_predict = n_predict;
    gp.stops = stops;
    gp.ignore_eos = ignore_eos;
    gp.logprobs = true;
    s.r = generate(session, pool, sampler, tok, logits, gp, nullptr, nullptr);
    double sum = 0;
    for (float lp : s.r.logprobs) sum += lp;
    s.mean_logprob = s.r.logprobs.empty() ? 0.0 : sum / static_cast<double>(s.r.logprobs.size());
    std::fprintf(stderr, "moe run: sample %d/%d (k %s) done: %zu tokens\n", i + 1, req.n,
                 s.k > 0 ? std::to_string(s.k).c_str() : "model", s.r.ids.size());
    samples.push_back(std::move(s));
  }
  const int model_k = [&] {
    for (const auto& L : engine.model().spec().layers)
      if (L.is_moe) return L.moe.n_expert_used;
    return 0;
  }();
  std::vector<std::string> headers, texts;
  for (size_t i = 0; i < samples.size(); ++i) {
    const Sample& s = samples[i];
    headers.push_back(fmt::format("#{} k={} seed {} mean log-prob {:.3f} ({} tokens)", i + 1, s.k > 0 ? s.k : model_k,
                                  s.seed, s.mean_logprob, s.r.ids.size()));
    if (tok) {
      texts.push_back(s.r.text);
    } else {
      std::string ids;
      for (int32_t id : s.r.ids) ids += std::to_string(id) + " ";
      texts.push_back(ids);
    }
  }
  int width = req.width;
  if (width <= 0) {
    const char* cols = std::getenv("COLUMNS");
    width = cols ? std::max(40, std::atoi(cols)) : 160;
  }
  const std::string view = side_by_side(headers, texts, width);
  std::fwrite(view.data(), 1, view.size(), stdout);
  std::fflush(stdout);
  if (!req.json_out.empty()) {
    nlohmann::ordered_json j = nlohmann::ordered_json::array();
    for (const Sample& s : samples) {
      nlohmann::ordered_json e;
      e["k"] = s.k > 0 ? s.k : model_k;
      e["seed"] = s.seed;
      e["ids"] = s.r.ids;
      if (tok) e["text"] = s.r.text;
      e["logprobs"] = s.r.logprobs;
      e["mean_logprob"] = s.mean_logprob;
      e["stopped_by"] = stop_reason_name(s.r.reason);
      j.push_back(e);
    }
    const std::string body = j.dump(1) + "\n";
    write_file_atomic(req.json_out, body.data(), body.size());
  }
  return 0;
}

}  // namespace moe::cli
