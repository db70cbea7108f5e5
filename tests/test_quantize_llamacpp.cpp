// `moe quantize` against llama.cpp's quantizer: the same F16 input and file type must give the same tensor
// types and byte-identical tensor data.
//  - LlamaQuantizeRefs: every case of tests/data/llamacpp/quantize_refs.tsv (bench/llamacpp/quantize_refs.sh
//    ran llama-quantize on the fixtures' F16 models for every file type, on synth files of other shapes for
//    the mixes, and with overrides), compared tensor by tensor (type and FNV-1a 64 of the data);
//  - QuantizedFixtures: the fixtures' own llama-quantize outputs (Q8_0, Q4_0, Q4_K_M, Q6_K) byte for byte;
//  - the planner on hand-checkable cases (counters, fallbacks, llama's tensor order) and the CLI's errors.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "base/hash.h"
#include "cli_runner.h"
#include "compress/quant_mix.h"
#include "compress/quantize_model.h"
#include "fixture_util.h"
#include "format/gguf.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using compress::MixTensor;
using test::run_cli;

const std::string kRefs = std::string(MOE_SOURCE_DIR) + "/tests/data/llamacpp/quantize_refs.tsv";

struct RefCase {
  std::string name;
  std::string input;        // fixture model name or synth shape name
  std::string type;
  std::vector<std::string> flags;  // our flags for override cases
  std::map<std::string, std::pair<std::string, std::string>> tensors;  // name -> (type, hash)
};

std::vector<std::string> split_words(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> w;
  for (std::string x; in >> x;) w.push_back(x);
  return w;
}

struct Refs {
  std::map<std::string, std::string> synth_flags;  // shape name -> moe synth flags
  std::map<std::string, RefCase> cases;
  std::vector<std::string> order;
};

const Refs& refs() {
  static const Refs r = [] {
    Refs r;
    std::ifstream in(kRefs);
    std::map<std::string, std::vector<std::string>> overrides;  // case -> {input, type, llama flags, our flags}
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("# synth ", 0) == 0) {
        const size_t colon = line.find(": ");
        r.synth_flags[line.substr(8, colon - 8)] = line.substr(colon + 2);
      } else if (line.rfind("# override ", 0) == 0) {
        std::vector<std::string> f;
        std::string rest = line.substr(11);
        for (size_t p; (p = rest.find('|')) != std::string::npos; rest = rest.substr(p + 1)) f.push_back(rest.substr(0, p));
        f.push_back(rest);
        if (f.size() == 5) overrides[f[0]] = {f[1], f[2], f[3], f[4]};
      } else if (!line.empty() && line[0] != '#') {
        std::istringstream ls(line);
        std::string c, name, type, hash;
        std::getline(ls, c, '\t');
        std::getline(ls, name, '\t');
        std::getline(ls, type, '\t');
        std::getline(ls, hash, '\t');
        auto [it, fresh] = r.cases.try_emplace(c);
        RefCase& rc = it->second;
        if (fresh) {
          r.order.push_back(c);
          rc.name = c;
          if (auto o = overrides.find(c); o != overrides.end()) {
            rc.input = o->second[0];
            rc.type = o->second[1];
            rc.flags = split_words(o->second[3]);
          } else {
            rc.input = c.substr(0, c.find('/'));
            rc.type = c.substr(c.find('/') + 1);
          }
        }
        rc.tensors[name] = {type, hash};
      }
    }
    return r;
  }();
  return r;
}

std::vector<std::string> case_names() { return refs().order; }

std::string input_path(const std::string& input) {
  const std::string fixture = test::model_path(input);
  if (fs::exists(fixture)) return fixture;
  const auto it = refs().synth_flags.find(input);
  if (it == refs().synth_flags.end()) return "";
  const std::string path = (test::cli_temp_dir() / (input + ".gguf")).string();
  if (!fs::exists(path)) {
    std::vector<std::string> args = {"synth"};
    for (const std::string& w : split_words(it->second)) args.push_back(w);
    for (const char* w : {"--type", "F16", "--seed", "1", "-q", "-o"}) args.push_back(w);
    args.push_back(path);
    const auto r = run_cli(args);
    if (r.status != 0) ADD_FAILURE() << "moe synth failed: " << r.err;
  }
  return path;
}

std::map<std::string, std::pair<std::string, std::string>> hashes_of(const std::string& path) {
  auto f = gguf::File::open(path, gguf::DataAccess::Mmap);
  std::map<std::string, std::pair<std::string, std::string>> out;
  for (const gguf::TensorInfo& t : f->tensors()) {
    Fnv1a64 h;
    h.bytes(f->tensor_data(t), t.nbytes);
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h.h));
    out[t.name] = {std::string(dtype_traits(t.type).name), hex};
  }
  return out;
}

class LlamaQuantizeRefs : public testing::TestWithParam<std::string> {};

TEST_P(LlamaQuantizeRefs, SameTypesAndBytes) {
  const RefCase& rc = refs().cases.at(GetParam());
  const std::string in = input_path(rc.input);
  ASSERT_FALSE(in.empty()) << "no input for " << rc.input;
  std::string safe = rc.name;
  for (char& c : safe)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  const std::string out = (test::cli_temp_dir() / (safe + ".gguf")).string();
  std::vector<std::string> args = {"quantize", "-q", "-t", "2", "-m", in, "-o", out, "--type", rc.type};
  args.insert(args.end(), rc.flags.begin(), rc.flags.end());
  const auto r = run_cli(args);
  ASSERT_EQ(r.status, 0) << r.err;
  const auto ours = hashes_of(out);
  EXPECT_EQ(ours.size(), rc.tensors.size());
  int diffs = 0;
  for (const auto& [name, want] : rc.tensors) {
    auto it = ours.find(name);
    if (it == ours.end()) {
      ADD_FAILURE() << name << ": missing";
      continue;
    }
    EXPECT_EQ(it->second.first, want.first) << name << ": type";
    if (it->second.second != want.second && ++diffs <= 5) ADD_FAILURE() << name << ": data differs";
  }
  EXPECT_EQ(diffs, 0);
  fs::remove(out);
}

INSTANTIATE_TEST_SUITE_P(Cases, LlamaQuantizeRefs, testing::ValuesIn(case_names()), test::FixtureParamName());

TEST(LlamaQuantizeRefs, CoverTheShapesThatMatter) {
  // The reference file must keep covering every mix on shapes where the rules differ.
  const Refs& r = refs();
  ASSERT_GE(r.cases.size(), 100u);
  for (const char* shape : {"synth-llama-8x-gqa5", "synth-olmoe-64x-17l", "synth-deepseek-128x-shared",
                            "synth-qwen2moe-16x-gqa4", "synth-qwen3-dense-12l"})
    for (const char* t : {"Q2_K", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_M"})
      EXPECT_TRUE(r.cases.count(std::string(shape) + "/" + t)) << shape << "/" << t;
}

// The fixtures' own llama-quantize outputs, byte for byte (every tensor's data).
class QuantizedFixtures : public testing::TestWithParam<std::pair<std::string, std::string>> {};

TEST_P(QuantizedFixtures, ByteIdenticalTensorData) {
  const auto& [model, type] = GetParam();
  const std::string out = (test::cli_temp_dir() / (model + "-" + type + ".ours.gguf")).string();
  const auto r = run_cli({"quantize", "-q", "-m", test::model_path(model), "-o", out, "--type", type});
  ASSERT_EQ(r.status, 0) << r.err;
  auto ours = gguf::File::open(out);
  auto ref = gguf::File::open(test::model_path(model + "-" + type));
  ASSERT_EQ(ours->tensors().size(), ref->tensors().size());
  for (const gguf::TensorInfo& t : ref->tensors()) {
    const gguf::TensorInfo* o = ours->find_tensor(t.name);
    ASSERT_NE(o, nullptr) << t.name;
    EXPECT_EQ(o->type, t.type) << t.name;
    EXPECT_EQ(o->dims, t.dims) << t.name;
    ASSERT_EQ(o->nbytes, t.nbytes) << t.name;
    EXPECT_EQ(std::memcmp(ours->tensor_data(*o), ref->tensor_data(t), t.nbytes), 0) << t.name;
  }
  EXPECT_EQ(ours->get_uint("general.file_type"), ref->get_uint("general.file_type"));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, QuantizedFixtures,
                         testing::Values(std::make_pair("tiny-qwen3moe", "Q8_0"), std::make_pair("tiny-qwen3moe", "Q4_0"),
                                         std::make_pair("tiny-qwen3moe", "Q4_K_M"), std::make_pair("tiny-qwen3moe", "Q6_K"),
                                         std::make_pair("tiny-mixtral", "Q8_0"), std::make_pair("tiny-mixtral", "Q4_K_M")),
                         [](const auto& info) { return info.param.first.substr(5) + "_" + info.param.second; });

// --- the planner on hand-checkable cases ---

MixTensor mt(const std::string& name, Role role, int layer, std::vector<int64_t> dims) {
  MixTensor t;
  t.name = name;
  t.role = role;
  t.layer = layer;
  t.dims = std::move(dims);
  t.type = DType::F16;
  return t;
}

// A 16-layer model: one attn_v and one ffn_down_exps per layer, plus output.
std::vector<MixTensor> layered(int n_layer, int64_t cols = 256) {
  std::vector<MixTensor> ts;
  ts.push_back(mt("output.weight", Role::Output, -1, {cols, 1000}));
  for (int il = 0; il < n_layer; ++il) {
    ts.push_back(mt("blk." + std::to_string(il) + ".attn_v.weight", Role::AttnV, il, {cols, cols}));
    ts.push_back(mt("blk." + std::to_string(il) + ".ffn_down_exps.weight", Role::ExpDown, il, {cols, cols, 4}));
  }
  compress::sort_llama_order(ts);
  return ts;
}

std::map<std::string, DType> plan(const std::vector<MixTensor>& ts, const char* mix, int n_expert = 4,
                                  compress::MixOptions o = {}) {
  o.mix = compress::find_quant_mix(mix);
  compress::MixModel m;
  m.arch = "qwen3moe";
  m.n_layer = 16;
  m.n_expert = n_expert;
  m.n_head = 4;
  m.n_head_kv = 4;
  const auto p = compress::plan_mix(m, ts, o);
  std::map<std::string, DType> out;
  for (size_t i = 0; i < ts.size(); ++i) out[ts[i].name] = p.types[i];
  return out;
}

TEST(QuantMix, LlamaOrderSortsLayersNumerically) {
  auto ts = layered(12);
  EXPECT_EQ(ts[0].name, "output.weight");
  EXPECT_EQ(ts[1].name, "blk.0.attn_v.weight");
  EXPECT_EQ(ts.back().name, "blk.11.ffn_down_exps.weight");  // not "blk.9..." as plain string order would give
}

TEST(QuantMix, Q4KMUsesMoreBitsOnTheLlamaLayers) {
  // use_more_bits(i, 16): i < 2, i >= 14, or (i - 2) % 3 == 2 -> layers 0, 1, 4, 7, 10, 13, 14, 15.
  const auto p = plan(layered(16), "Q4_K_M");
  for (int il = 0; il < 16; ++il) {
    const bool more = il < 2 || il >= 14 || (il - 2) % 3 == 2;
    const DType want = more ? DType::Q6_K : DType::Q4_K;
    EXPECT_EQ(p.at("blk." + std::to_string(il) + ".attn_v.weight"), want) << il;
    EXPECT_EQ(p.at("blk." + std::to_string(il) + ".ffn_down_exps.weight"), want) << il;
  }
  EXPECT_EQ(p.at("output.weight"), DType::Q6_K);
}

TEST(QuantMix, Q3KMGivesTheFirstTwoAttnVMoreBitsAndEightExpertsQ8) {
  auto p = plan(layered(16), "Q3_K_M");
  EXPECT_EQ(p.at("blk.0.attn_v.weight"), DType::Q5_K);
  EXPECT_EQ(p.at("blk.1.attn_v.weight"), DType::Q5_K);
  EXPECT_EQ(p.at("blk.2.attn_v.weight"), DType::Q4_K);
  EXPECT_EQ(p.at("blk.0.ffn_down_exps.weight"), DType::Q5_K);  // i < n/16
  EXPECT_EQ(p.at("blk.1.ffn_down_exps.weight"), DType::Q4_K);
  p = plan(layered(16), "Q3_K_M", /*n_expert=*/8);
  EXPECT_EQ(p.at("blk.5.attn_v.weight"), DType::Q8_0);  // Mixtral's rule
}

TEST(QuantMix, RowLengthsFallBack) {
  // 96 is a multiple of 32 but not of 256: Q4_K -> Q5_0, Q6_K -> Q8_0; output Q8_0 directly.
  const auto p = plan(layered(16, 96), "Q4_K_M");
  EXPECT_EQ(p.at("blk.2.attn_v.weight"), DType::Q5_0);
  EXPECT_EQ(p.at("blk.0.attn_v.weight"), DType::Q8_0);
  EXPECT_EQ(p.at("output.weight"), DType::Q8_0);
  EXPECT_EQ(compress::fallback_type(DType::Q2_K, 96), DType::Q4_0);
  EXPECT_EQ(compress::fallback_type(DType::Q5_K, 96), DType::Q5_1);
  EXPECT_EQ(compress::fallback_type(DType::Q4_K, 48), DType::F16);
  EXPECT_EQ(compress::fallback_type(DType::Q8_0, 48), DType::F16);
}

TEST(QuantMix, OverridesAreManualAndFirstMatchWins) {
  compress::MixOptions o;
  o.tensor_types = {{"attn_v", DType::Q8_0}, {"blk\\.3\\.attn", DType::Q2_K}};
  o.role_types = {{{Role::ExpDown}, DType::Q5_0}};
  const auto p = plan(layered(16), "Q4_K_M", 4, o);
  EXPECT_EQ(p.at("blk.3.attn_v.weight"), DType::Q8_0);
  EXPECT_EQ(p.at("blk.0.ffn_down_exps.weight"), DType::Q5_0);
  compress::MixOptions pure;
  pure.pure = true;
  EXPECT_EQ(plan(layered(16), "Q4_K_M", 4, pure).at("output.weight"), DType::Q4_K);
}

TEST(QuantMix, RouterNormsAndUnknownTensorsKeepTheirType) {
  std::vector<MixTensor> ts = {mt("blk.0.ffn_gate_inp.weight", Role::Router, 0, {256, 8}),
                               mt("blk.0.attn_norm.weight", Role::AttnNorm, 0, {256})};
  MixTensor unknown;
  unknown.name = "blk.0.something_new.weight";
  unknown.dims = {256, 256};
  unknown.type = DType::F16;
  ts.push_back(unknown);
  compress::sort_llama_order(ts);
  const auto p = plan(ts, "Q4_0");
  for (const auto& [name, t] : p) EXPECT_EQ(t, DType::F16) << name;
}

TEST(QuantizeCli, RejectsBadOptions) {
  const std::string in = test::model_path("tiny-qwen3moe");
  const std::string out = (test::cli_temp_dir() / "bad.gguf").string();
  struct Case {
    std::vector<std::string> args;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {{"--type", "Q4_X"}, "--type Q4_X: unknown file type"},
      {{"--type", "IQ2_XXS"}, "importance matrix"},
      {{"--type", "Q4_K_M", "--expert-type", "q9_9"}, "--expert-type q9_9"},
      {{"--type", "Q4_K_M", "--tensor-type", "attn_v"}, "--tensor-type attn_v: expected PATTERN=TYPE"},
      {{"--type", "Q4_K_M", "--tensor-type", "attn_(v=q8_0"}, "not a valid regular expression"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"quantize", "-q", "-m", in, "-o", out};
    args.insert(args.end(), c.args.begin(), c.args.end());
    const auto r = run_cli(args);
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(out));
  }
  auto r = run_cli({"quantize", "-q", "-m", in, "-o", in, "--type", "Q8_0"});
  EXPECT_NE(r.err.find("must not replace the input"), std::string::npos) << r.err;
  // A quantized input is re-quantized only when asked.
  r = run_cli({"quantize", "-q", "-m", test::model_path("tiny-qwen3moe-Q8_0"), "-o", out, "--type", "Q4_0"});
  EXPECT_NE(r.err.find("--allow-requantize"), std::string::npos) << r.err;
  r = run_cli({"quantize", "-q", "-m", test::model_path("tiny-qwen3moe-Q8_0"), "-o", out, "--type", "Q4_0",
               "--allow-requantize"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(fs::exists(out));
}

}  // namespace
}  // namespace moe
