// The per-expert layout (model/expert_split.h, `moe quantize --mixed --layout per-expert`): the ILP with one item
// per (layer, expert) on hand-checkable statistics; a split copy of every fixture family gives the stacked file's
// logits bit for bit, resident and streamed; the quantizer's per-expert files (one type: identical to the stacked
// file; mixed types: streamed identical to resident); malformed split files rejected naming the tensor or key.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <set>

#include "base/error.h"
#include "cli_runner.h"
#include "compress/calib_stats.h"
#include "compress/mixed_precision.h"
#include "fixture_util.h"
#include "mixed_hand.h"
#include "format/gguf.h"
#include "model/expert_split.h"
#include "model/weights.h"
#include "runtime/engine.h"
#include "runtime/session.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using test::run_cli;

// ---- The allocation, per expert -------------------------------------------------------------------------------

using Hand = test::HandMix;

// test::hand_mix where expert `hot` of each layer is selected 9 times as often as the others and loses 10x more at
// every type (3x more again for the whole expert, part 3).
Hand hand(int hot) {
  return test::hand_mix([=](int, int e) { return e == hot ? 90.0 : 10.0; },
                        [=](double err, int, int e, int p) { return err * (e == hot ? 10.0 : 1.0) * (p == 3 ? 3.0 : 1.0); });
}

uint64_t expert_bytes(DType t) { return 3 * row_bytes(t, 256) * 32; }  // gate + up + down of one expert

TEST(PerExpertAllocation, TheHotExpertsGetTheBitsAndThePlanIsSplit) {
  Hand h = hand(/*hot=*/1);
  compress::MixedOptions o;
  o.per_expert = true;
  o.whole_expert = true;
  // Room for the two hot experts at Q8_0 and the six others at Q2_K (and not for anything better).
  o.budget.total_bytes = 2 * expert_bytes(DType::Q8_0) + 6 * expert_bytes(DType::Q2_K) + 1024;
  const compress::MixedResult r = compress::allocate_mixed(h.stats, h.plan, o);
  ASSERT_EQ(r.type.size(), 8u);  // one per (layer, expert), in layer order
  for (int il = 0; il < 2; ++il)
    for (int e = 0; e < 4; ++e) EXPECT_EQ(r.type[il * 4 + e], e == 1 ? DType::Q8_0 : DType::Q2_K) << il << " " << e;
  EXPECT_EQ(r.alloc.bytes, 2 * expert_bytes(DType::Q8_0) + 6 * expert_bytes(DType::Q2_K));
  EXPECT_LE(r.alloc.bytes, r.expert_budget);
  // The plan: each stacked tensor replaced by four 2-D ones at their expert's type, reading their slice.
  ASSERT_TRUE(h.plan.split_experts);
  ASSERT_EQ(h.plan.tensors.size(), 6u * 4 + 1);
  ASSERT_EQ(h.plan.src_offset.size(), h.plan.tensors.size());
  const uint64_t f16_matrix = row_bytes(DType::F16, 256) * 32;
  for (int e = 0; e < 4; ++e) {
    const size_t i = 4 + static_cast<size_t>(e);  // blk.0.ffn_up_exps.E
    EXPECT_EQ(h.plan.tensors[i].name, "blk.0.ffn_up_exps." + std::to_string(e) + ".weight");
    EXPECT_EQ(h.plan.tensors[i].dims, (std::vector<int64_t>{256, 32}));
    EXPECT_EQ(h.plan.types[i], e == 1 ? DType::Q8_0 : DType::Q2_K);
    EXPECT_EQ(h.plan.src_offset[i], static_cast<uint64_t>(e) * f16_matrix);
  }
  EXPECT_EQ(h.plan.tensors.back().name, "output_norm.weight");
  EXPECT_EQ(h.plan.bytes_out, r.alloc.bytes + 1024);
}

TEST(PerExpertAllocation, PerMatrixTheSensitiveProjectionGetsTheBits) {
  // Every expert's down projection loses 100x more than its gate and up: per matrix, all downs take Q8_0 and the
  // rest Q2_K, which one type per expert cannot express.
  Hand h = hand(/*hot=*/-1);
  for (auto& l : h.stats.layers)
    for (size_t c = 0; c < 3; ++c)
      for (int e = 0; e < 4; ++e) l.recon[(c * compress::kReconParts + 2) * 4 + e] *= 100;
  compress::MixedOptions o;
  o.per_expert = true;
  const uint64_t m8 = row_bytes(DType::Q8_0, 256) * 32, m2 = row_bytes(DType::Q2_K, 256) * 32;
  o.budget.total_bytes = 8 * m8 + 16 * m2 + 1024;
  const compress::MixedResult r = compress::allocate_mixed(h.stats, h.plan, o);
  ASSERT_EQ(r.type.size(), 24u);  // layer, expert, then gate, up, down
  for (size_t k = 0; k < 24; ++k) EXPECT_EQ(r.type[k], k % 3 == 2 ? DType::Q8_0 : DType::Q2_K) << k;
  EXPECT_EQ(r.alloc.bytes, 8 * m8 + 16 * m2);
  for (size_t i = 0; i < h.plan.tensors.size(); ++i)
    if (h.plan.tensors[i].role) {
      EXPECT_EQ(h.plan.types[i], *h.plan.tensors[i].role == Role::ExpDown ? DType::Q8_0 : DType::Q2_K)
          << h.plan.tensors[i].name;
    }
}

TEST(PerExpertAllocation, BudgetsAreNeverExceededAndSuperExpertsAloneKeepTheHighestType) {
  for (double bpw : {2.7, 3.0, 3.7, 4.5, 5.0, 6.0, 8.5, 9.0}) {
    Hand h = hand(2);
    compress::MixedOptions o;
    o.per_expert = true;
    o.whole_expert = bpw > 5;  // both units
    o.budget.bits_per_weight = bpw;
    const compress::MixedResult r = compress::allocate_mixed(h.stats, h.plan, o);
    EXPECT_LE(8.0 * static_cast<double>(r.alloc.bytes) / static_cast<double>(r.expert_elements), bpw) << bpw;
    uint64_t written = 0;  // what the split plan would write for the experts
    for (size_t i = 0; i < h.plan.tensors.size(); ++i)
      if (h.plan.tensors[i].role) written += row_bytes(h.plan.types[i], 256) * 32;
    EXPECT_EQ(written, r.alloc.bytes) << bpw;
  }
  Hand h = hand(1);
  h.stats.layers[0].max_out[3] = 1000;  // a super expert in layer 0 (in the first 75% of the layers)
  compress::MixedOptions o;
  o.per_expert = true;
  o.whole_expert = true;
  o.budget.total_bytes = 2 * expert_bytes(DType::Q8_0) + 6 * expert_bytes(DType::Q2_K) + 1024;
  const compress::MixedResult r = compress::allocate_mixed(h.stats, h.plan, o);
  // Forced, alone: its layer-mates are not, and the hot experts lose the Q8_0 its bytes took (Q4_K instead).
  EXPECT_EQ(r.type[3], DType::Q8_0);
  EXPECT_EQ(r.type[1], DType::Q4_K);
  EXPECT_EQ(r.type[5], DType::Q4_K);
  EXPECT_EQ(std::count(r.type.begin(), r.type.end(), DType::Q8_0), 1);
  Hand h2 = hand(1);
  h2.stats.layers[0].max_out[3] = 1000;
  o.protect = false;
  EXPECT_NE(compress::allocate_mixed(h2.stats, h2.plan, o).type[3], DType::Q8_0);
  o.protect = true;
  EXPECT_LE(r.alloc.bytes, r.expert_budget);
  // Forced experts that do not fit: a clear error naming the budget.
  Hand h3 = hand(1);
  for (int e = 0; e < 4; ++e) h3.stats.layers[0].max_out[e] = e == 0 ? 1000 : 1;
  o.budget.total_bytes = 8 * expert_bytes(DType::Q2_K) + 1024;
  try {
    compress::allocate_mixed(h3.stats, h3.plan, o);
    ADD_FAILURE() << "a forced Q8_0 expert fit a Q2_K budget";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("budget"), std::string::npos) << e.what();
  }
}

// ---- The loader: split copies of the fixtures -----------------------------------------------------------------

// What write_split changes, to make malformed files.
struct Mutation {
  std::string drop = {};       // a split tensor left out
  std::string reshape = {};    // a split tensor given one row less
  bool keep_stacked = false;   // the stacked tensors written too
  std::string layout = kExpertLayoutPerExpert;  // the key's value ("" = no key)
};

// Copies `src` with every routed-expert matrix tensor written as one tensor per expert (same type, same bytes),
// in reverse expert order.
void write_split(const std::string& src, const std::string& out, const Mutation& m = {}) {
  auto model = Model::load(src, gguf::DataAccess::Pread, /*defer_experts=*/true);
  std::set<std::string> stacked;
  for (int il = 0; il < model->spec().n_layer; ++il)
    for (Role r : {Role::ExpGate, Role::ExpUp, Role::ExpDown})
      if (const WeightView& v = model->layer(il)[r]) stacked.insert(v.info->name);
  auto f = gguf::File::open(src, gguf::DataAccess::Pread);
  gguf::Writer w;
  for (const auto& [key, value] : f->metadata()) w.set(key, value);
  if (!m.layout.empty()) w.set(kExpertLayoutKey, gguf::Value::make_string(m.layout));
  for (const gguf::TensorInfo& t : f->tensors()) {
    const gguf::TensorInfo* info = &t;
    auto whole = [&f, info](uint8_t* dst, uint64_t n) { f->read_tensor_bytes(*info, 0, n, dst); };
    if (!stacked.count(t.name) || m.keep_stacked) w.add_tensor_stream(t.name, t.type, t.dims, whole);
    if (!stacked.count(t.name)) continue;
    const uint64_t mb = row_bytes(t.type, t.dims[0]) * static_cast<uint64_t>(t.dims[1]);
    // Last expert first: the loader and the store must use each tensor's own offset, not expert 0's + e * size
    // (which a file written in expert order would happen to match).
    for (int64_t e = t.dims[2] - 1; e >= 0; --e) {
      const std::string name = split_expert_name(t.name, static_cast<int>(e));
      if (name == m.drop) continue;
      std::vector<int64_t> dims = {t.dims[0], t.dims[1] - (name == m.reshape ? 1 : 0)};
      const uint64_t off = static_cast<uint64_t>(e) * mb;
      w.add_tensor_stream(name, t.type, dims, [&f, info, off](uint8_t* dst, uint64_t n) {
        f->read_tensor_bytes(*info, off, n, dst);
      });
    }
  }
  w.write(out);
}

std::vector<float> logits_with(Engine& e, const std::vector<int32_t>& ids, int64_t n_batch) {
  ThreadPool pool(2);
  Session s(e.model(), e.store(), static_cast<int64_t>(ids.size()));
  return s.eval(ids, pool, true, n_batch);
}

// Logits resident, and streamed with a pool of k + 1 experts (so experts are evicted and read again).
std::pair<std::vector<float>, std::vector<float>> resident_and_streamed(const std::string& path,
                                                                        const std::vector<int32_t>& ids) {
  auto resident = Engine::open(path, EngineOptions{});
  auto want = logits_with(*resident, ids, 512);
  EngineOptions o;
  o.force_offload = true;
  o.n_ctx = 128;
  o.n_batch = 128;
  auto probe = Engine::open(path, o);
  const int k = resident->model().spec().layers.back().moe.n_expert_used;
  const uint64_t slot = BudgetedExpertStore::slot_bytes_for(resident->model().expert_layout());
  o.mem_bytes = probe->plan().weights_resident + probe->plan().kv_bytes + probe->plan().buffer_bytes +
                static_cast<uint64_t>(k + 1) * slot;
  auto streamed = Engine::open(path, o);
  EXPECT_NE(streamed->offload_store(), nullptr);
  auto got = logits_with(*streamed, ids, 512);
  const ExpertStoreStats st = streamed->offload_store()->stats();
  EXPECT_GT(st.bytes_read, 0u);
  return {want, got};
}

class SplitFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(SplitFixture, SplitCopyGivesTheStackedLogitsResidentAndStreamed) {
  const std::string name = GetParam();
  const std::string src = test::model_path(name);
  if (!fs::exists(src)) GTEST_SKIP() << "fixture missing";
  const std::string out = (test::cli_temp_dir() / (name + ".split.gguf")).string();
  write_split(src, out);
  auto ids = test::read_ids(test::ref_path(name, "seq.tok"));
  if (ids.size() > 48) ids.resize(48);
  auto stacked = Engine::open(src, EngineOptions{});
  const auto want = logits_with(*stacked, ids, 512);
  {
    auto split = Model::load(out);
    EXPECT_TRUE(split->experts_split());
    EXPECT_EQ(split->byte_report().total, stacked->model().byte_report().total);
    EXPECT_EQ(split->byte_report().unused, 0u);
  }
  const auto [resident, streamed] = resident_and_streamed(out, ids);
  EXPECT_EQ(resident, want);
  EXPECT_EQ(streamed, want);
  fs::remove(out);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, SplitFixture,
                         ::testing::Values("tiny-qwen3moe", "tiny-mixtral-Q4_K_M", "tiny-deepseekmoe",
                                           "tiny-qwen2moe", "tiny-deepseek2-v3", "tiny-gptoss", "tiny-glm4moe"),
                         moe::test::FixtureParamName());

TEST(PerExpertLayout, MalformedSplitFilesAreRejectedByName) {
  const std::string src = test::model_path("tiny-qwen3moe");
  if (!fs::exists(src)) GTEST_SKIP() << "fixture missing";
  const std::string out = (test::cli_temp_dir() / "malformed.split.gguf").string();
  struct Case {
    Mutation m;
    std::string want;
  };
  const std::vector<Case> cases = {
      {{.drop = "blk.1.ffn_up_exps.3.weight"}, "'blk.1.ffn_up_exps.3.weight'"},
      {{.reshape = "blk.0.ffn_down_exps.2.weight"}, "'blk.0.ffn_down_exps.2.weight': shape"},
      {{.keep_stacked = true}, "'blk.0.ffn_gate_exps.weight' is stacked"},
      {{.layout = ""}, "'blk.0.ffn_gate_exps.0.weight' is a per-expert tensor"},
      {{.keep_stacked = true, .layout = ""}, "the stacked 'blk.0.ffn_gate_exps.weight' is there too"},
      {{.layout = "by-expert"}, kExpertLayoutKey},
  };
  for (const Case& c : cases) {
    write_split(src, out, c.m);
    try {
      Model::load(out);
      ADD_FAILURE() << c.want << ": loaded";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.want), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(out), std::string::npos) << e.what();
    }
  }
  // Commands that rewrite stacked expert tensors say so.
  write_split(src, out);
  const std::string stats = (test::cli_temp_dir() / "malformed.stats.gguf").string();
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"quantize", "-q", "-m", out, "-o", out + ".q.gguf", "--type", "Q8_0"},
           {"quantize-experts", "-m", out, "--type", "q4_0", "-o", out + ".lb.gguf"},
           {"prune", "-m", out, "--stats", stats, "--criterion", "frequency", "--keep", "0.5", "-o", out + ".p.gguf"}}) {
    auto r = run_cli(args);
    EXPECT_NE(r.status, 0) << args[0];
    EXPECT_NE(r.err.find(kExpertLayoutKey), std::string::npos) << args[0] << ": " << r.err;
  }
  fs::remove(out);
}

// ---- The quantizer's per-expert files ---------------------------------------------------------------------------

TEST(PerExpertCli, OneTypeEqualsTheStackedFileAndMixedTypesStreamAsResident) {
  const std::string model = test::model_path("tiny-qwen3moe");
  if (!fs::exists(model)) GTEST_SKIP() << "fixture missing";
  const fs::path dir = test::cli_temp_dir();
  const std::string stats = (dir / "pe.stats.gguf").string(), text = test::fixtures_dir() + "/text/t3.txt";
  const std::string stacked = (dir / "pe.stacked.gguf").string(), uniform = (dir / "pe.uniform.gguf").string(),
                    mixed = (dir / "pe.mixed.gguf").string();
  auto r = run_cli({"calibrate", "-q", "-m", model, "-f", text, "--recon-types", "q2_K,q4_K,q6_K", "-c", "64",
                    "-o", stats});
  ASSERT_EQ(r.status, 0) << r.err;
  r = run_cli({"quantize", "-q", "-m", model, "-o", stacked, "--type", "Q8_0", "--expert-type", "q4_K"});
  ASSERT_EQ(r.status, 0) << r.err;
  r = run_cli({"quantize", "-q", "-m", model, "-o", uniform, "--type", "Q8_0", "--mixed", "--layout", "per-expert",
               "--candidates", "q4_K", "--budget", "8", "--stats", stats});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("mixed: 48 expert matrices: 48 q4_K"), std::string::npos) << r.out;

  // One type: every split tensor holds the bytes of its slice of the stacked tensor.
  auto fs_ = gguf::File::open(stacked, gguf::DataAccess::Pread);
  auto fu = gguf::File::open(uniform, gguf::DataAccess::Pread);
  EXPECT_EQ(fu->get_string(kExpertLayoutKey), kExpertLayoutPerExpert);
  int n_split = 0;
  for (const gguf::TensorInfo& t : fs_->tensors()) {
    if (t.dims.size() != 3) {
      const gguf::TensorInfo* u = fu->find_tensor(t.name);
      ASSERT_NE(u, nullptr) << t.name;
      EXPECT_EQ(u->type, t.type) << t.name;
      continue;
    }
    EXPECT_EQ(fu->find_tensor(t.name), nullptr) << t.name;
    const uint64_t mb = t.nbytes / static_cast<uint64_t>(t.dims[2]);
    for (int64_t e = 0; e < t.dims[2]; ++e) {
      const gguf::TensorInfo* u = fu->find_tensor(split_expert_name(t.name, static_cast<int>(e)));
      ASSERT_NE(u, nullptr) << t.name << " " << e;
      ASSERT_EQ(u->nbytes, mb);
      std::vector<uint8_t> a(mb), b(mb);
      fs_->read_tensor_bytes(t, static_cast<uint64_t>(e) * mb, mb, a.data());
      fu->read_tensor_bytes(*u, 0, mb, b.data());
      EXPECT_EQ(a, b) << u->name;
      ++n_split;
    }
  }
  EXPECT_EQ(n_split, 2 * 3 * 8);
  auto ids = test::read_ids(test::ref_path("tiny-qwen3moe", "seq.tok"));
  if (ids.size() > 48) ids.resize(48);
  {
    auto a = Engine::open(stacked, EngineOptions{});
    auto b = Engine::open(uniform, EngineOptions{});
    EXPECT_EQ(logits_with(*a, ids, 512), logits_with(*b, ids, 512));
  }

  // Mixed types per expert, within the budget; streamed under a small pool = resident.
  r = run_cli({"quantize", "-q", "-m", model, "-o", mixed, "--type", "Q8_0", "--mixed", "--layout", "per-expert",
               "--no-protect", "--budget", "3.6", "--stats", stats, "--eval", text, "--eval-ctx", "64",
               "--eval-windows", "1"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("ppl before"), std::string::npos) << r.out;
  auto fm = gguf::File::open(mixed, gguf::DataAccess::Pread);
  uint64_t bytes = 0, elements = 0;
  std::set<DType> types;
  for (const gguf::TensorInfo& t : fm->tensors()) {
    if (t.name.find("_exps.") == std::string::npos) continue;
    EXPECT_EQ(t.dims.size(), 2u) << t.name;
    types.insert(t.type);
    bytes += t.nbytes;
    elements += static_cast<uint64_t>(t.n_elements());
  }
  EXPECT_LE(8.0 * static_cast<double>(bytes) / static_cast<double>(elements), 3.6);
  EXPECT_GE(types.size(), 2u);  // the point of the layout: experts of a layer at different types
  const auto [resident, streamed] = resident_and_streamed(mixed, ids);
  EXPECT_EQ(resident, streamed);
  EXPECT_NE(resident, logits_with(*Engine::open(stacked, EngineOptions{}), ids, 512));

  // Bad --layout values and combinations.
  for (const auto& [args, want] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--layout", "per-expert"}, "--layout per-expert is for --mixed"},
           {{"--mixed", "--budget", "4", "--stats", stats, "--layout", "experts"}, "--layout experts"},
           {{"--mixed", "--budget", "4", "--stats", stats, "--expert-unit", "expert"}, "--expert-unit is for"},
           {{"--mixed", "--budget", "4", "--stats", stats, "--layout", "per-expert", "--expert-unit", "row"},
            "--expert-unit row"}}) {
    std::vector<std::string> full = {"quantize", "-q", "-m", model, "-o", mixed, "--type", "Q8_0"};
    full.insert(full.end(), args.begin(), args.end());
    r = run_cli(full);
    EXPECT_NE(r.status, 0) << want;
    EXPECT_NE(r.err.find(want), std::string::npos) << want << ": " << r.err;
  }
  for (const auto& p : {stats, stacked, uniform, mixed}) fs::remove(p);
}

}  // namespace
}  // namespace moe
