// What `--mem` counts, without cgroups (test_mem_ceiling.cpp runs the commands inside them): the plan
// charges what the process holds and what the caller reserves against the budget; `moe bench` sizes its
// bandwidth probe inside the budget; `moe logits` writes batch by batch with the same numbers as one
// in-memory pass.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "cli_runner.h"
#include "fixture_util.h"
#include "runtime/engine.h"
#include "runtime/session.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
const std::string kModel = "tiny-qwen3moe";

EngineOptions streaming(uint64_t mem) {
  EngineOptions o;
  o.n_ctx = 128;
  o.n_batch = 64;
  o.force_offload = true;
  o.mem_bytes = mem;
  return o;
}

TEST(MemoryPlan, HeldAndReservedBytesComeOutOfTheExpertPool) {
  auto header = Model::load(test::model_path(kModel), gguf::DataAccess::Mmap, /*defer_experts=*/true);
  const uint64_t mem = 256ull << 20;
  const MemoryPlan base = plan_memory(*header, streaming(mem));
  ASSERT_TRUE(base.offload);
  EXPECT_EQ(base.total_bytes(), mem);

  EngineOptions o = streaming(mem);
  o.held_bytes = 10ull << 20;
  o.reserved = {{"bandwidth probe", 20ull << 20}, {"output", 1ull << 20}};
  const MemoryPlan p = plan_memory(*header, o);
  EXPECT_EQ(p.held_bytes, o.held_bytes);
  EXPECT_EQ(p.reserved_bytes(), 21ull << 20);
  EXPECT_EQ(p.expert_pool_bytes, base.expert_pool_bytes - (31ull << 20));
  EXPECT_EQ(p.total_bytes(), mem);
  EXPECT_NE(p.describe().find("bandwidth probe"), std::string::npos) << p.describe();
  EXPECT_NE(p.describe().find("held before loading"), std::string::npos) << p.describe();
}

TEST(MemoryPlan, ReservationsCanMakeAModelStream) {
  auto header = Model::load(test::model_path(kModel), gguf::DataAccess::Mmap, /*defer_experts=*/true);
  EngineOptions o;
  o.n_ctx = 128;
  o.n_batch = 64;
  const MemoryPlan unlimited = plan_memory(*header, o);
  ASSERT_FALSE(unlimited.offload);
  o.mem_bytes = unlimited.total_bytes();  // exactly enough to stay resident
  EXPECT_FALSE(plan_memory(*header, o).offload);
  o.held_bytes = 1;
  EXPECT_TRUE(plan_memory(*header, o).offload) << "what the process holds must count against --mem";
  o.held_bytes = 0;
  o.reserved = {{"bandwidth probe", 1}};
  EXPECT_TRUE(plan_memory(*header, o).offload) << "a reservation must count against --mem";
}

TEST(MemoryPlan, TooSmallNamesWhatTookTheBudget) {
  auto header = Model::load(test::model_path(kModel), gguf::DataAccess::Mmap, /*defer_experts=*/true);
  EngineOptions o = streaming(256ull << 20);
  o.reserved = {{"bandwidth probe", 250ull << 20}};
  try {
    plan_memory(*header, o);
    FAIL() << "a reservation larger than the budget was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bandwidth probe"), std::string::npos) << e.what();
  }
}

// A synthetic model larger than the budgets below, made once.
const std::string& synth_model() {
  static const std::string path = [] {
    const std::string p = (test::cli_temp_dir() / "budget-synth.gguf").string();
    const auto r = test::run_cli({"synth", "--layers", "4", "--embd", "512", "--experts", "48", "--top-k", "4", "--ff",
                                  "512", "--heads", "8", "--kv-heads", "4", "--vocab", "8000", "--type", "Q8_0",
                                  "--unique-rows", "64", "-t", "2", "-q", "-o", p});
    if (r.status != 0) throw std::runtime_error("moe synth failed: " + r.err);
    return p;
  }();
  return path;
}

nlohmann::json bench_json(const std::vector<std::string>& extra, std::string* err = nullptr) {
  std::vector<std::string> args = {"bench", "-m", synth_model(), "-t", "2", "-p", "8", "-n", "4", "-r", "1", "--json"};
  args.insert(args.end(), extra.begin(), extra.end());
  const auto r = test::run_cli(args);
  EXPECT_EQ(r.status, 0) << r.err;
  if (err) *err = r.err;
  return nlohmann::json::parse(r.out);
}

TEST(BenchProbe, ShrinksToWhatAResidentModelLeaves) {
  std::string err;
  const auto j = bench_json({"--mem", "400M"}, &err);
  EXPECT_EQ(j.at("mode"), "resident");
  EXPECT_EQ(j.at("mem_bw_probe"), "before each decode run");
  const uint64_t probe = j.at("mem_bw_probe_bytes");
  EXPECT_GT(probe, 128ull << 20);
  EXPECT_LT(probe, 1ull << 30);
  EXPECT_EQ(j.at("plan_bytes").at("reserved").at("bandwidth probe").get<uint64_t>(), probe);
  EXPECT_LE(j.at("plan_bytes").at("total").get<uint64_t>(), 400ull << 20);
  EXPECT_NE(err.find("bandwidth probe"), std::string::npos) << err;
}

TEST(BenchProbe, RunsBeforeLoadingWhenExpertsStream) {
  std::string err;
  const auto j = bench_json({"--mem", "112M", "--bw-gib", "0.0625"}, &err);
  EXPECT_EQ(j.at("mode"), "offload");
  EXPECT_EQ(j.at("mem_bw_probe"), "before loading");
  EXPECT_EQ(j.at("mem_bw_probe_bytes").get<uint64_t>(), 64ull << 20);
  EXPECT_GT(j.at("mem_bw_gbps").get<double>(), 0.0);
  EXPECT_FALSE(j.at("plan_bytes").contains("reserved")) << "the pool must keep its whole share";
  EXPECT_NE(err.find("once before loading"), std::string::npos) << err;
}

TEST(BenchProbe, SkippedWhenTheBudgetCannotHoldIt) {
  std::string err;
  const auto j = bench_json({"--mem", "112M"}, &err);
  EXPECT_EQ(j.at("mode"), "offload");
  EXPECT_EQ(j.at("mem_bw_probe"), "none");
  EXPECT_EQ(j.at("mem_bw_probe_bytes").get<uint64_t>(), 0u);
  EXPECT_NE(err.find("skipped"), std::string::npos) << err;
}

TEST(BenchProbe, UnchangedWithoutMem) {
  const auto j = bench_json({"--bw-gib", "0.125"});
  EXPECT_EQ(j.at("mem_bw_probe_bytes").get<uint64_t>(), 128ull << 20);
  EXPECT_EQ(j.at("mem_bw_probe"), "before each decode run");
}

TEST(LogitsOutput, BatchByBatchIsBitIdenticalToOnePass) {
  const std::string name = kModel;
  const auto ids = test::read_ids(test::ref_path(name, "seq.tok"));
  const std::string out = (test::cli_temp_dir() / "budget-logits.f32").string();
  for (const char* batch : {"7", "86", "512"}) {
    fs::remove(out);
    const auto r = test::run_cli({"logits", "-m", test::model_path(name), "--tokens", test::ref_path(name, "seq.tok"),
                                  "-o", out, "-b", batch, "-t", "2"});
    ASSERT_EQ(r.status, 0) << r.err;
    auto engine = Engine::open(test::model_path(name), EngineOptions{});
    ThreadPool pool(2);
    Session s(engine->model(), engine->store(), static_cast<int64_t>(ids.size()));
    const std::vector<float> want = s.eval(ids, pool, true, std::stoll(batch));
    EXPECT_EQ(test::read_f32(out), want) << "-b " << batch;
    for (const auto& e : fs::directory_iterator(test::cli_temp_dir()))
      EXPECT_EQ(e.path().string().find("budget-logits.f32.tmp"), std::string::npos) << e.path();
  }
}

// Bytes of [offset, offset + size) of a file that are in the page cache now.
uint64_t cached_bytes(const std::string& path, uint64_t offset = 0, uint64_t size = UINT64_MAX) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return 0;
  const uint64_t file = fs::file_size(path);
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t begin = offset / page * page, end = std::min(file, size == UINT64_MAX ? file : offset + size);
  uint64_t cached = 0;
  if (end > begin) {
    void* m = ::mmap(nullptr, end - begin, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(begin));
    if (m != MAP_FAILED) {
      std::vector<unsigned char> v((end - begin + page - 1) / page);
      if (::mincore(m, end - begin, v.data()) == 0)
        for (unsigned char c : v) cached += (c & 1) ? page : 0;
      ::munmap(m, end - begin);
    }
  }
  ::close(fd);
  return cached;
}

void drop_cache(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0) << path;
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

TEST(PageCache, QuantizeExpertsLeavesLittleOfItsInputOrOutputCached) {
  // A memory cgroup counts page cache; the writer must not let the output pile up in it, nor the reader the input.
  const std::string model = synth_model(), out = (test::cli_temp_dir() / "budget-side.gguf").string();
  drop_cache(model);
  ASSERT_EQ(cached_bytes(model), 0u) << "the page cache could not be dropped here";
  const auto r = test::run_cli({"quantize-experts", "-m", model, "--type", "q8_0", "-o", out, "-t", "2", "-q"});
  ASSERT_EQ(r.status, 0) << r.err;
  auto side = gguf::File::open(out, gguf::DataAccess::Pread);
  uint64_t largest = 0;
  for (const auto& t : side->tensors()) largest = std::max(largest, t.nbytes);
  // Output: only the last tensors written (their writeback is what the next tensor waited for) may stay.
  EXPECT_LE(cached_bytes(out), 2 * largest + (1u << 20)) << "of " << fs::file_size(out);
  // Input: every expert tensor was read once and dropped, but for the first pages of each, which the side
  // file's fingerprint reads through the model's mapping (the kernel maps up to 16 pages around a fault).
  auto src = gguf::File::open(model, gguf::DataAccess::Pread);
  for (const auto& t : src->tensors()) {
    if (t.name.find("_exps") != std::string::npos) {
      EXPECT_LE(cached_bytes(model, src->data_offset() + t.offset, t.nbytes), 128u << 10) << t.name;
    }
  }
}

TEST(PageCache, LogitsOutputIsNotLeftCached) {
  const std::string out = (test::cli_temp_dir() / "budget-cache.f32").string();
  const auto r = test::run_cli({"logits", "-m", test::model_path(kModel), "--tokens", test::ref_path(kModel, "seq.tok"),
                                "-o", out, "-t", "2"});
  ASSERT_EQ(r.status, 0) << r.err;
  ASSERT_GT(fs::file_size(out), 0u);
  EXPECT_EQ(cached_bytes(out), 0u);
}

TEST(RunContext, SizedToThePromptAndNUnderMem) {
  // Without -c the KV cache of a 4096-token default context would take memory from the expert pool.
  const std::string json = (test::cli_temp_dir() / "budget-run.json").string();
  const std::string tokens = (test::cli_temp_dir() / "budget-run.tok").string();
  test::write_text(tokens, "1 2 3 4 5 6 7 8\n");
  const auto r = test::run_cli({"run", "-m", synth_model(), "--tokens", tokens, "-n", "8", "-t", "2", "--mem", "112M",
                                "--stats-json", json});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("a context of 16 tokens"), std::string::npos) << r.err;
  const auto j = nlohmann::json::parse(test::slurp(json));
  // 4 layers x 16 positions x 256 kv dims x K and V x fp16.
  EXPECT_EQ(j.at("plan_bytes").at("kv").get<uint64_t>(), 4u * 16 * 256 * 2 * 2);
  EXPECT_EQ(j.at("mode"), "offload");
}

}  // namespace
}  // namespace moe
