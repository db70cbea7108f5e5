// The bundled default model (models/, trained by recipes/default_model.sh): `moe run` finds it with no
// -m; it is small enough to commit and an ordinary qwen3moe GGUF (no tensor llama.cpp would reject); it
// is really trained (low perplexity on text of its domains); and its greedy continuations are exactly
// llama.cpp's (tests/data/default_model_llamacpp_greedy.jsonl, recorded by
// bench/check_llamacpp_greedy.sh from llama.cpp's own CPU build).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli_runner.h"
#include "format/gguf.h"
#include "model/weights.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using test::run_cli;

// A random-weight model scores about the vocabulary size (4096); the trained one scores 4.4 on the
// scripture and 17 on the code below.
constexpr double kMaxPerplexity = 40.0;

// The path `moe info` (no -m) resolves, which must be the copy in this source tree's models/.
std::string default_model() {
  const test::CliResult r = run_cli({"info", "--json"});
  EXPECT_EQ(r.status, 0) << r.err;
  if (r.status != 0) return "";
  return nlohmann::json::parse(r.out)["file"].get<std::string>();
}

TEST(DefaultModel, FoundWithoutDashMAndSmallEnoughToShip) {
  const std::string path = default_model();
  ASSERT_FALSE(path.empty());
  EXPECT_EQ(fs::weakly_canonical(fs::path(path).parent_path()), fs::weakly_canonical(fs::path(MOE_SOURCE_DIR) / "models"));
  EXPECT_LE(fs::file_size(path), 25u << 20);
  auto m = Model::load(path);
  EXPECT_EQ(m->spec().arch, "qwen3moe");
  EXPECT_TRUE(m->file().has("tokenizer.ggml.model"));
  // llama.cpp's qwen3moe loader rejects unknown tensors such as a selection bias.
  for (const auto& t : m->file().tensors()) EXPECT_EQ(t.name.find("exp_probs_b"), std::string::npos) << t.name;
  for (const LayerSpec& L : m->spec().layers) {
    EXPECT_TRUE(L.is_moe);
    EXPECT_EQ(L.moe.n_expert, 8);
    EXPECT_EQ(L.moe.n_expert_used, 2);
  }
}

TEST(DefaultModel, GreedyContinuationsMatchLlamaCpp) {
  const std::string ref = std::string(MOE_SOURCE_DIR) + "/tests/data/default_model_llamacpp_greedy.jsonl";
  std::ifstream in(ref);
  ASSERT_TRUE(in) << ref;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    const auto prompt = j["prompt_ids"].get<std::vector<int32_t>>();
    const auto want = j["ids"].get<std::vector<int32_t>>();
    const fs::path tokens = test::cli_temp_dir() / ("default_prompt" + std::to_string(n) + ".txt");
    const fs::path ids_out = test::cli_temp_dir() / ("default_ids" + std::to_string(n) + ".txt");
    std::string text;
    for (int32_t id : prompt) text += std::to_string(id) + " ";
    test::write_text(tokens, text);
    const test::CliResult r = run_cli({"run", "--tokens", tokens.string(), "-n", std::to_string(want.size()), "--temp",
                                       "0", "--ids-out", ids_out.string()});
    ASSERT_EQ(r.status, 0) << r.err;
    std::vector<int32_t> got;
    std::ifstream ids(ids_out);
    for (int32_t id; ids >> id;) got.push_back(id);
    EXPECT_EQ(got, want) << "prompt " << j["prompt"];
    // Our tokenizer splits the prompt text as llama.cpp's did.
    const test::CliResult t = run_cli({"tokenize", "-p", j["prompt"].get<std::string>()});
    ASSERT_EQ(t.status, 0) << t.err;
    std::vector<int32_t> ours;
    std::istringstream ts(t.out);
    for (int32_t id; ts >> id;) ours.push_back(id);
    EXPECT_EQ(ours, prompt) << "prompt " << j["prompt"];
    ++n;
  }
  EXPECT_GE(n, 4);
}

// Text the model never saw in this exact form (a paraphrase in the style of each domain): a trained
// model finds it far more predictable than the 4096-way uniform guess a random model makes.
TEST(DefaultModel, TrainedPerplexityOnEachDomain) {
  const fs::path dir = test::cli_temp_dir();
  const std::vector<std::pair<std::string, std::string>> texts = {
      {"scripture",
       "And the LORD spake unto Moses, saying, Speak unto the children of Israel, and say unto them, When ye be "
       "come into the land which I give unto you, then shall ye keep a sabbath unto the LORD. And he said unto "
       "them, Go ye into all the world, and the people answered and said, All that the LORD hath spoken we will "
       "do.\n"},
      {"python",
       "def parse_header(line):\n    \"\"\"Split a header line into its name and value.\"\"\"\n    if not line:\n"
       "        return None, None\n    name, sep, value = line.partition(':')\n    if not sep:\n"
       "        raise ValueError('invalid header: %r' % (line,))\n    return name.strip().lower(), value.strip()\n"},
  };
  for (const auto& [name, text] : texts) {
    const fs::path f = dir / (name + ".txt");
    test::write_text(f, text);
    const fs::path js = dir / (name + ".json");
    const test::CliResult r = run_cli({"perplexity", "-f", f.string(), "--json", js.string()});
    ASSERT_EQ(r.status, 0) << r.err;
    std::ifstream jf(js);
    const auto j = nlohmann::json::parse(jf);
    const double ppl = j["files"][0]["ppl"].get<double>();
    EXPECT_LT(ppl, kMaxPerplexity) << name;
  }
}

}  // namespace
}  // namespace moe
