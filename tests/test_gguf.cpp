// GGUF reader/writer against the shared fixtures: metadata, tensor tables, mmap vs pread, exact
// round trips and the atomic-write guarantee.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "base/error.h"
#include "format/gguf.h"

namespace fs = std::filesystem;
using namespace moe;
using namespace moe::gguf;

namespace {

// The .gguf files of a fixture folder and of its subfolders (models/mxfp4/).
std::vector<std::string> fixture_files(const char* sub) {
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(fs::path(MOE_FIXTURES_DIR) / sub)) {
    if (e.path().extension() == ".gguf") out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// A fresh directory per test, removed at the end.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            fmt::format("moe_gguf_{}_{}_{}", ::getpid(), info->test_suite_name(), info->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(path_)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  fs::path path_;
};

void expect_same_value(const std::string& key, const Value& a, const Value& b) {
  SCOPED_TRACE(key);
  ASSERT_EQ(a.type, b.type);
  switch (a.type) {
    case ValueType::STRING: EXPECT_EQ(a.str, b.str); break;
    case ValueType::ARRAY:
      EXPECT_EQ(a.array_type, b.array_type);
      EXPECT_EQ(a.array_count, b.array_count);
      EXPECT_EQ(a.array_raw, b.array_raw);
      EXPECT_EQ(a.array_strings, b.array_strings);
      break;
    case ValueType::F32:
    case ValueType::F64: EXPECT_EQ(std::memcmp(&a.f, &b.f, sizeof(double)), 0); break;
    default:
      EXPECT_EQ(a.u, b.u);
      EXPECT_EQ(a.i, b.i);
  }
}

void expect_same_file(const File& a, const File& b) {
  ASSERT_EQ(a.metadata().size(), b.metadata().size());
  for (size_t i = 0; i < a.metadata().size(); ++i) {
    EXPECT_EQ(a.metadata()[i].first, b.metadata()[i].first);
    expect_same_value(a.metadata()[i].first, a.metadata()[i].second, b.metadata()[i].second);
  }
  ASSERT_EQ(a.tensors().size(), b.tensors().size());
  std::vector<uint8_t> ba, bb;
  for (size_t i = 0; i < a.tensors().size(); ++i) {
    const TensorInfo& ta = a.tensors()[i];
    const TensorInfo& tb = b.tensors()[i];
    SCOPED_TRACE(ta.name);
    EXPECT_EQ(ta.name, tb.name);
    EXPECT_EQ(ta.dims, tb.dims);
    EXPECT_EQ(ta.type, tb.type);
    ASSERT_EQ(ta.nbytes, tb.nbytes);
    ba.resize(ta.nbytes);
    bb.resize(tb.nbytes);
    a.read_tensor_bytes(ta, 0, ta.nbytes, ba.data());
    b.read_tensor_bytes(tb, 0, tb.nbytes, bb.data());
    EXPECT_TRUE(ba == bb);
  }
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const moe::Error& e) {
    return e.what();
  }
  return "<no moe::Error thrown>";
}

const std::string kQwen3 = MOE_FIXTURES_DIR "/models/tiny-qwen3moe.gguf";

}  // namespace

TEST(GgufRead, EveryFixtureModelOpens) {
  const auto files = fixture_files("models");
  ASSERT_GE(files.size(), 12u);
  for (const std::string& path : files) {
    SCOPED_TRACE(path);
    for (DataAccess mode : {DataAccess::Mmap, DataAccess::Pread}) {
      auto f = File::open(path, mode);
      EXPECT_EQ(f->is_mapped(), mode == DataAccess::Mmap);
      EXPECT_EQ(f->version(), 3u);
      EXPECT_EQ(f->alignment(), 32u);
      EXPECT_EQ(f->data_offset() % f->alignment(), 0u);
      EXPECT_EQ(f->file_size(), fs::file_size(path));
      EXPECT_FALSE(f->get_string("general.architecture").empty());
      EXPECT_GT(f->tensors().size(), 10u);
      for (const TensorInfo& t : f->tensors()) {
        EXPECT_EQ(t.offset % f->alignment(), 0u) << t.name;
        EXPECT_LE(f->data_offset() + t.offset + t.nbytes, f->file_size()) << t.name;
        EXPECT_EQ(t.nbytes, row_bytes(t.type, t.dims[0]) * uint64_t(t.n_rows())) << t.name;
        EXPECT_EQ(f->find_tensor(t.name), &t);
      }
      EXPECT_EQ(f->get_string_array("tokenizer.ggml.tokens").size(), 429u);
    }
  }
}

TEST(GgufRead, EveryFixtureVocabOpens) {
  const auto files = fixture_files("vocab");
  ASSERT_GE(files.size(), 7u);
  for (const std::string& path : files) {
    SCOPED_TRACE(path);
    auto m = File::open(path, DataAccess::Mmap);
    auto p = File::open(path, DataAccess::Pread);  // several MB of metadata: exercises prefix growth
    EXPECT_TRUE(m->tensors().empty());
    EXPECT_FALSE(m->get_string("tokenizer.ggml.model").empty());
    const auto& tokens = m->get_string_array("tokenizer.ggml.tokens");
    EXPECT_GT(tokens.size(), 1000u);
    EXPECT_EQ(p->get_string_array("tokenizer.ggml.tokens"), tokens);
    EXPECT_EQ(m->data_offset(), m->file_size());
    expect_same_file(*m, *p);
  }
}

TEST(GgufRead, Qwen3MoeMetadata) {
  auto f = File::open(kQwen3);
  EXPECT_EQ(f->path(), kQwen3);
  EXPECT_EQ(f->get_string("general.architecture"), "qwen3moe");
  EXPECT_EQ(f->get_uint("qwen3moe.block_count"), 2u);
  EXPECT_EQ(f->get_int("qwen3moe.block_count"), 2);
  EXPECT_EQ(f->get_uint("qwen3moe.embedding_length"), 256u);
  EXPECT_EQ(f->get_uint("qwen3moe.expert_count"), 8u);
  EXPECT_EQ(f->get_uint("qwen3moe.expert_used_count"), 2u);
  EXPECT_EQ(f->get_uint("qwen3moe.attention.head_count"), 4u);
  EXPECT_EQ(f->get_uint("qwen3moe.attention.head_count_kv"), 2u);
  EXPECT_GT(f->get_float("qwen3moe.attention.layer_norm_rms_epsilon"), 0.0);
  EXPECT_LT(f->get_float("qwen3moe.attention.layer_norm_rms_epsilon"), 1e-3);
  EXPECT_EQ(f->get_float("qwen3moe.block_count"), 2.0);  // integers are accepted as floats
  EXPECT_EQ(f->find("qwen3moe.block_count")->type, ValueType::U32);

  const auto& tokens = f->get_string_array("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 429u);
  const auto types = f->get_int_array("tokenizer.ggml.token_type");
  EXPECT_EQ(types.size(), 429u);
  EXPECT_EQ(f->find("tokenizer.ggml.token_type")->array_type, ValueType::I32);
  EXPECT_EQ(f->get_string_array("tokenizer.ggml.merges").size(), 170u);
  EXPECT_LT(f->get_uint("tokenizer.ggml.eos_token_id"), 429u);
  (void)f->get_bool_or("tokenizer.ggml.add_bos_token", true);
  EXPECT_EQ(f->find("tokenizer.ggml.add_bos_token")->type, ValueType::BOOL);

  // Defaults and errors.
  EXPECT_EQ(f->get_uint_or("qwen3moe.no_such_key", 77), 77u);
  EXPECT_EQ(f->get_float_or("qwen3moe.no_such_key", 1.5), 1.5);
  EXPECT_EQ(f->get_string_or("qwen3moe.no_such_key", "x"), "x");
  EXPECT_TRUE(f->get_bool_or("qwen3moe.no_such_key", true));
  EXPECT_FALSE(f->has("qwen3moe.no_such_key"));
  std::string e = error_of([&] { f->get_uint("qwen3moe.no_such_key"); });
  EXPECT_NE(e.find("tiny-qwen3moe.gguf"), std::string::npos) << e;
  EXPECT_NE(e.find("qwen3moe.no_such_key"), std::string::npos) << e;
  e = error_of([&] { f->get_string("qwen3moe.block_count"); });
  EXPECT_NE(e.find("qwen3moe.block_count"), std::string::npos) << e;
  EXPECT_NE(e.find("u32"), std::string::npos) << e;
  EXPECT_THROW(f->get_uint("general.architecture"), moe::Error);
  EXPECT_THROW(f->get_string_array("general.architecture"), moe::Error);
  EXPECT_THROW(f->get_float_array("tokenizer.ggml.token_type"), moe::Error);
  EXPECT_THROW(f->get_int_array("tokenizer.ggml.tokens"), moe::Error);
  EXPECT_THROW(f->get_bool_or("qwen3moe.block_count", false), moe::Error);

  // Tensor table.
  ASSERT_EQ(f->tensors().size(), 27u);
  const TensorInfo* emb = f->find_tensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->type, DType::F16);
  EXPECT_EQ(emb->dims, (std::vector<int64_t>{256, 429}));
  EXPECT_EQ(emb->nbytes, 256u * 429u * 2u);
  EXPECT_EQ(emb->n_rows(), 429);
  EXPECT_EQ(emb->n_elements(), 256 * 429);
  const TensorInfo* norm = f->find_tensor("output_norm.weight");
  ASSERT_NE(norm, nullptr);
  EXPECT_EQ(norm->type, DType::F32);
  EXPECT_EQ(norm->dims, (std::vector<int64_t>{256}));
  const TensorInfo* exps = f->find_tensor("blk.1.ffn_down_exps.weight");
  ASSERT_NE(exps, nullptr);
  EXPECT_EQ(exps->dims, (std::vector<int64_t>{256, 256, 8}));
  EXPECT_EQ(exps->n_rows(), 256 * 8);
  EXPECT_EQ(f->find_tensor("no.such.tensor"), nullptr);

  // Norm weights are finite, non-trivial floats.
  const float* w = reinterpret_cast<const float*>(f->tensor_data(*norm));
  for (int i = 0; i < 256; ++i) EXPECT_TRUE(std::isfinite(w[i]));
}

TEST(GgufRead, QuantizedFixtureTypes) {
  auto f = File::open(MOE_FIXTURES_DIR "/models/tiny-qwen3moe-Q4_K_M.gguf");
  EXPECT_EQ(f->find_tensor("token_embd.weight")->type, DType::Q4_K);
  EXPECT_EQ(f->find_tensor("output.weight")->type, DType::Q6_K);
  EXPECT_EQ(f->find_tensor("blk.0.attn_k.weight")->type, DType::Q8_0);
  EXPECT_EQ(f->find_tensor("blk.0.attn_output.weight")->type, DType::Q5_K);
  EXPECT_EQ(f->find_tensor("output.weight")->nbytes, 429u * 210u);
  auto q8 = File::open(MOE_FIXTURES_DIR "/models/tiny-qwen3moe-Q8_0.gguf");
  EXPECT_EQ(q8->find_tensor("blk.0.attn_q.weight")->type, DType::Q8_0);
  EXPECT_EQ(q8->find_tensor("blk.0.attn_q.weight")->nbytes, 256u / 32u * 34u * 256u);
  auto q40 = File::open(MOE_FIXTURES_DIR "/models/tiny-qwen3moe-Q4_0.gguf");
  EXPECT_EQ(q40->find_tensor("blk.0.ffn_up_exps.weight")->type, DType::Q4_0);
  // llama.cpp's MXFP4_MOE mix: experts MXFP4 (ggml type 39), other matrices Q8_0, the router as it was.
  auto mx = File::open(MOE_FIXTURES_DIR "/models/mxfp4/tiny-gptoss-MXFP4_MOE.gguf");
  EXPECT_EQ(mx->find_tensor("blk.0.ffn_down_exps.weight")->type, DType::MXFP4);
  EXPECT_EQ(mx->find_tensor("blk.0.ffn_down_exps.weight")->nbytes, 128u / 32u * 17u * 256u * 8u);  // ff 128
  EXPECT_EQ(mx->find_tensor("blk.0.attn_q.weight")->type, DType::Q8_0);
  EXPECT_EQ(mx->find_tensor("blk.0.ffn_gate_inp.weight")->type, DType::F16);
}

TEST(GgufRead, PreadMatchesMmap) {
  for (const std::string& path : fixture_files("models")) {
    SCOPED_TRACE(path);
    auto m = File::open(path, DataAccess::Mmap);
    auto p = File::open(path, DataAccess::Pread);
    EXPECT_TRUE(m->is_mapped());
    EXPECT_FALSE(p->is_mapped());
    EXPECT_EQ(m->data_offset(), p->data_offset());
    expect_same_file(*m, *p);
    // Partial reads agree with the mapped bytes.
    const TensorInfo& t = p->tensors().back();
    std::vector<uint8_t> part(t.nbytes / 3);
    p->read_tensor_bytes(t, t.nbytes / 2, part.size(), part.data());
    EXPECT_EQ(std::memcmp(part.data(), m->tensor_data(m->tensors().back()) + t.nbytes / 2, part.size()), 0);
  }
}

TEST(GgufRead, TensorAccessIsBoundsChecked) {
  auto m = File::open(kQwen3, DataAccess::Mmap);
  auto p = File::open(kQwen3, DataAccess::Pread);
  const TensorInfo& t = *p->find_tensor("output_norm.weight");
  std::vector<uint8_t> buf(t.nbytes + 16);
  std::string e = error_of([&] { p->tensor_data(t); });
  EXPECT_NE(e.find("pread"), std::string::npos) << e;
  EXPECT_NE(e.find("output_norm.weight"), std::string::npos) << e;
  EXPECT_THROW(p->read_tensor_bytes(t, 0, t.nbytes + 1, buf.data()), moe::Error);
  EXPECT_THROW(p->read_tensor_bytes(t, t.nbytes + 1, 0, buf.data()), moe::Error);
  EXPECT_THROW(p->read_tensor_bytes(t, 8, UINT64_MAX, buf.data()), moe::Error);
  EXPECT_THROW(m->read_tensor_bytes(t, UINT64_MAX, 2, buf.data()), moe::Error);
  EXPECT_NO_THROW(p->read_tensor_bytes(t, t.nbytes, 0, buf.data()));
  TensorInfo fake = t;
  fake.offset = m->file_size();
  EXPECT_THROW(m->tensor_data(fake), moe::Error);
  EXPECT_THROW(p->read_tensor_bytes(fake, 0, 4, buf.data()), moe::Error);
}

TEST(GgufRead, OpenErrorsNameTheFile) {
  std::string e = error_of([] { File::open("/nonexistent/dir/model.gguf"); });
  EXPECT_NE(e.find("/nonexistent/dir/model.gguf"), std::string::npos) << e;
  e = error_of([] { File::open(MOE_FIXTURES_DIR "/models"); });
  EXPECT_NE(e.find("models"), std::string::npos) << e;
  e = error_of([] { File::open(MOE_FIXTURES_DIR "/models/models.json"); });
  EXPECT_NE(e.find("magic"), std::string::npos) << e;
  TempDir dir;
  { std::ofstream(dir.file("empty.gguf")); }
  for (DataAccess mode : {DataAccess::Mmap, DataAccess::Pread}) {
    e = error_of([&] { File::open(dir.file("empty.gguf"), mode); });
    EXPECT_NE(e.find("empty.gguf"), std::string::npos) << e;
  }
}

TEST(GgufRoundTrip, ModelsRewriteByteIdentical) {
  TempDir dir;
  for (const std::string& path : fixture_files("models")) {
    SCOPED_TRACE(path);
    auto src = File::open(path);
    Writer w;
    w.copy_from(*src);
    const std::string out = dir.file("copy.gguf");
    w.write(out);
    auto back = File::open(out, DataAccess::Pread);
    EXPECT_EQ(back->version(), src->version());
    EXPECT_EQ(back->data_offset(), src->data_offset());
    expect_same_file(*src, *back);
    // These fixtures were written by llama.cpp with the default alignment, in the same order we
    // write, so the rewrite must match byte for byte.
    EXPECT_TRUE(slurp(out) == slurp(path));
  }
}

TEST(GgufRoundTrip, VocabRewriteDiffersOnlyByTrailingPadding) {
  // The vocab files carry no tensors and end right after the metadata; llama.cpp's writer (and ours)
  // always pads the header to the alignment, so the rewrite is the original plus zero bytes.
  TempDir dir;
  for (const std::string& path : fixture_files("vocab")) {
    SCOPED_TRACE(path);
    auto src = File::open(path, DataAccess::Pread);
    Writer w;
    w.copy_from(*src);
    w.write(dir.file("v.gguf"));
    auto back = File::open(dir.file("v.gguf"));
    expect_same_file(*src, *back);
    const std::string a = slurp(path), b = slurp(dir.file("v.gguf"));
    ASSERT_EQ(b.size(), (a.size() + 31) / 32 * 32);
    EXPECT_TRUE(b.compare(0, a.size(), a) == 0);
    EXPECT_EQ(b.find_first_not_of('\0', a.size()), std::string::npos);
  }
}

TEST(GgufRoundTrip, CopyFromPreadSourceAndRewriteInPlace) {
  TempDir dir;
  const std::string copy = dir.file("m.gguf");
  fs::copy_file(MOE_FIXTURES_DIR "/models/tiny-mixtral-Q4_K_M.gguf", copy);
  fs::permissions(copy, fs::perms::owner_read | fs::perms::owner_write);
  {
    auto src = File::open(copy, DataAccess::Pread);
    Writer w;
    w.copy_from(*src);
    w.set("general.name", Value::make_string("renamed"));
    w.write(copy);  // replaces the file being read: the old inode stays readable until closed
  }
  auto back = File::open(copy);
  EXPECT_EQ(back->get_string("general.name"), "renamed");
  auto orig = File::open(MOE_FIXTURES_DIR "/models/tiny-mixtral-Q4_K_M.gguf");
  ASSERT_EQ(back->tensors().size(), orig->tensors().size());
  for (size_t i = 0; i < orig->tensors().size(); ++i) {
    const auto& a = orig->tensors()[i];
    const auto& b = back->tensors()[i];
    EXPECT_EQ(std::memcmp(orig->tensor_data(a), back->tensor_data(b), a.nbytes), 0) << a.name;
  }
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.gguf"});
}

TEST(GgufWriter, EveryValueTypeRoundTrips) {
  TempDir dir;
  Writer w;
  Value v;
  auto scalar = [&](const char* key, ValueType t, uint64_t u, int64_t i, double f) {
    Value x;
    x.type = t;
    x.u = u;
    x.i = i;
    x.f = f;
    w.set(key, x);
  };
  scalar("t.u8", ValueType::U8, 255, 0, 0);
  scalar("t.i8", ValueType::I8, 0, -128, 0);
  scalar("t.u16", ValueType::U16, 65535, 0, 0);
  scalar("t.i16", ValueType::I16, 0, -32768, 0);
  scalar("t.u32", ValueType::U32, 0xFFFFFFFFu, 0, 0);
  scalar("t.i32", ValueType::I32, 0, INT32_MIN, 0);
  scalar("t.f32", ValueType::F32, 0, 0, 0.1f);
  scalar("t.bool", ValueType::BOOL, 1, 0, 0);
  scalar("t.u64", ValueType::U64, UINT64_MAX, 0, 0);
  scalar("t.i64", ValueType::I64, 0, INT64_MIN, 0);
  scalar("t.f64", ValueType::F64, 0, 0, 0.1);
  w.set("t.str", Value::make_string(std::string("with\0nul", 8)));
  w.set("t.empty_str", Value::make_string(""));
  w.set("t.strs", Value::make_string_array({"a", "", "ccc"}));
  w.set("t.f32s", Value::make_f32_array({1.5f, -2.f}));
  w.set("t.i32s", Value::make_i32_array({1, -2, 3}));
  w.set("t.empty_arr", Value::make_i32_array({}));
  Value u16s;
  u16s.type = ValueType::ARRAY;
  u16s.array_type = ValueType::U16;
  u16s.array_count = 2;
  u16s.array_raw = {1, 0, 0xFF, 0xFF};
  w.set("t.u16s", u16s);
  Value bools = u16s;
  bools.array_type = ValueType::BOOL;
  bools.array_count = 3;
  bools.array_raw = {0, 1, 1};
  w.set("t.bools", bools);
  w.set("t.u32", Value::make_u32(5));  // replaces in place: order is unchanged
  w.add_tensor("x", DType::F32, {4, 2}, std::vector<uint8_t>(32, 7));
  w.write(dir.file("all.gguf"), 2);

  auto f = File::open(dir.file("all.gguf"));
  EXPECT_EQ(f->version(), 2u);
  ASSERT_EQ(f->metadata().size(), w.metadata().size());
  for (size_t i = 0; i < w.metadata().size(); ++i) {
    EXPECT_EQ(f->metadata()[i].first, w.metadata()[i].first);
    const Value& a = w.metadata()[i].second;
    const Value& b = f->metadata()[i].second;
    if (a.type == ValueType::F32) {
      EXPECT_EQ(float(a.f), float(b.f));
    } else {
      expect_same_value(w.metadata()[i].first, a, b);
    }
  }
  EXPECT_EQ(f->metadata()[4].first, "t.u32");
  EXPECT_EQ(f->get_uint("t.u32"), 5u);
  EXPECT_EQ(f->get_uint("t.u8"), 255u);
  EXPECT_EQ(f->get_int("t.i64"), INT64_MIN);
  EXPECT_THROW(f->get_uint("t.i8"), moe::Error);  // negative
  EXPECT_THROW(f->get_int("t.u64"), moe::Error);  // does not fit int64
  EXPECT_FLOAT_EQ(float(f->get_float("t.f32")), 0.1f);
  EXPECT_EQ(f->get_float("t.f64"), 0.1);
  EXPECT_TRUE(f->get_bool_or("t.bool", false));
  EXPECT_EQ(f->get_string("t.str"), std::string("with\0nul", 8));
  EXPECT_EQ(f->get_string_array("t.strs"), (std::vector<std::string>{"a", "", "ccc"}));
  EXPECT_EQ(f->get_float_array("t.f32s"), (std::vector<float>{1.5f, -2.f}));
  EXPECT_EQ(f->get_int_array("t.i32s"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(f->get_int_array("t.u16s"), (std::vector<int64_t>{1, 65535}));
  EXPECT_TRUE(f->get_int_array("t.empty_arr").empty());
  EXPECT_FALSE(f->has("general.alignment"));  // default alignment is not written
}

TEST(GgufWriter, NonDefaultAlignment) {
  TempDir dir;
  Writer w;
  w.set("general.architecture", Value::make_string("test"));
  w.set_alignment(256);
  EXPECT_EQ(w.alignment(), 256u);
  w.add_tensor("a", DType::F32, {3}, std::vector<uint8_t>(12, 1));
  w.add_tensor("b", DType::Q8_0, {64, 2}, std::vector<uint8_t>(136, 2));
  w.add_tensor_stream("c", DType::F16, {5}, [](uint8_t* dst, uint64_t n) {
    ASSERT_EQ(n, 10u);
    std::memset(dst, 3, n);
  });
  w.write(dir.file("a.gguf"));
  auto f = File::open(dir.file("a.gguf"));
  EXPECT_EQ(f->alignment(), 256u);
  EXPECT_EQ(f->find("general.alignment")->type, ValueType::U32);
  EXPECT_EQ(f->get_uint("general.alignment"), 256u);
  EXPECT_EQ(f->data_offset() % 256, 0u);
  EXPECT_EQ(f->find_tensor("a")->offset, 0u);
  EXPECT_EQ(f->find_tensor("b")->offset, 256u);
  EXPECT_EQ(f->find_tensor("c")->offset, 512u);
  EXPECT_EQ(f->file_size(), f->data_offset() + 768u);
  EXPECT_EQ(f->tensor_data(*f->find_tensor("b"))[135], 2);
  EXPECT_EQ(f->tensor_data(*f->find_tensor("c"))[9], 3);

  // Back to the default: the key stays (as llama.cpp keeps a key once set) with the new value.
  Writer w2;
  w2.copy_from(*f);
  EXPECT_EQ(w2.alignment(), 256u);
  w2.set_alignment(32);
  w2.write(dir.file("b.gguf"));
  auto g = File::open(dir.file("b.gguf"));
  EXPECT_EQ(g->alignment(), 32u);
  EXPECT_EQ(g->find_tensor("b")->offset, 32u);
  EXPECT_EQ(g->find_tensor("c")->offset, 192u);  // b: 136 bytes padded to 160
  w2.remove("general.alignment");
  EXPECT_EQ(w2.alignment(), 32u);
}

TEST(GgufWriter, RejectsBadInput) {
  Writer w;
  EXPECT_THROW(w.set_alignment(0), moe::Error);
  EXPECT_THROW(w.set_alignment(48), moe::Error);
  EXPECT_THROW(w.set("general.alignment", Value::make_u64(64)), moe::Error);
  EXPECT_THROW(w.set("general.alignment", Value::make_u32(3)), moe::Error);
  EXPECT_THROW(w.set("", Value::make_u32(3)), moe::Error);
  Value nested;
  nested.type = ValueType::ARRAY;
  nested.array_type = ValueType::ARRAY;
  EXPECT_THROW(w.set("k", nested), moe::Error);
  Value short_raw = Value::make_i32_array({1, 2});
  short_raw.array_count = 3;
  EXPECT_THROW(w.set("k", short_raw), moe::Error);
  EXPECT_THROW(w.add_tensor("t", DType::F32, {4}, std::vector<uint8_t>(15)), moe::Error);
  EXPECT_THROW(w.add_tensor("t", DType::F32, {}, {}), moe::Error);
  EXPECT_THROW(w.add_tensor("t", DType::F32, {1, 1, 1, 1, 1}, std::vector<uint8_t>(4)), moe::Error);
  EXPECT_THROW(w.add_tensor("t", DType::F32, {0}, {}), moe::Error);
  EXPECT_THROW(w.add_tensor("t", DType::Q8_0, {16}, std::vector<uint8_t>(17)), moe::Error);
  EXPECT_THROW(w.add_tensor("t", DType::F32, {int64_t(1) << 62, 4}, {}), moe::Error);
  EXPECT_THROW(w.add_tensor("", DType::F32, {1}, std::vector<uint8_t>(4)), moe::Error);
  EXPECT_THROW(w.add_tensor_stream("t", DType::F32, {1}, nullptr), moe::Error);
  w.add_tensor("t", DType::F32, {1}, std::vector<uint8_t>(4));
  std::string e = error_of([&] { w.add_tensor("t", DType::F32, {1}, std::vector<uint8_t>(4)); });
  EXPECT_NE(e.find("'t'"), std::string::npos) << e;
  EXPECT_NE(e.find("duplicate"), std::string::npos) << e;
  TempDir dir;
  EXPECT_THROW(w.write(dir.file("x.gguf"), 1), moe::Error);
  Value big;
  big.type = ValueType::U8;
  big.u = 256;
  w.set("big", big);
  EXPECT_THROW(w.write(dir.file("x.gguf")), moe::Error);
  EXPECT_TRUE(dir.entries().empty());
}

TEST(GgufWriter, ThrowingProducerLeavesNothingBehind) {
  TempDir dir;
  const std::string dst = dir.file("out.gguf");
  auto make = [](bool fail_it) {
    Writer w;
    w.set("general.architecture", Value::make_string("test"));
    w.add_tensor("a", DType::F32, {1024}, std::vector<uint8_t>(4096, 9));
    w.add_tensor_stream("b", DType::F32, {1024}, [fail_it](uint8_t* dst, uint64_t n) {
      if (fail_it) throw std::runtime_error("producer failed");
      std::memset(dst, 1, n);
    });
    return w;
  };
  // No destination yet: none is created, and the temp file is gone.
  EXPECT_THROW(make(true).write(dst), std::runtime_error);
  EXPECT_TRUE(dir.entries().empty());
  // An existing destination is left exactly as it was.
  make(false).write(dst);
  const std::string before = slurp(dst);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"out.gguf"});
  EXPECT_THROW(make(true).write(dst), std::runtime_error);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"out.gguf"});
  EXPECT_TRUE(slurp(dst) == before);
  EXPECT_NO_THROW(File::open(dst));
  // A destination in a missing directory fails cleanly with the path in the message.
  std::string e = error_of([&] { make(false).write(dir.file("no/such/dir/x.gguf")); });
  EXPECT_NE(e.find("no/such/dir/x.gguf"), std::string::npos) << e;
}
