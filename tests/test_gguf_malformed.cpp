// Hostile GGUF images, built programmatically from one small valid image: every corruption must
// raise moe::Error naming the file and the offending field, never crash or over-allocate.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>

#include "base/error.h"
#include "format/gguf.h"

namespace fs = std::filesystem;
using namespace moe;
using namespace moe::gguf;

namespace {

constexpr const char* kName = "hostile-test.gguf";
constexpr uint64_t kHuge = uint64_t(1) << 60;

// Raw little-endian byte sink.
struct Bytes {
  std::vector<uint8_t> b;
  template <typename T>
  Bytes& put(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + sizeof(T));
    return *this;
  }
  Bytes& str(const std::string& s, std::optional<uint64_t> len = std::nullopt) {
    put<uint64_t>(len.value_or(s.size()));
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
};

// A metadata entry: key, raw type number and the raw value bytes that follow the type.
struct Kv {
  std::string key;
  uint32_t type;
  std::vector<uint8_t> value;
};

struct Ti {
  std::string name;
  std::vector<int64_t> dims;
  uint32_t type;
  uint64_t offset;
  std::optional<uint32_t> n_dims;  // overrides dims.size() in the file
};

// The image description; mutate, then build().
struct Image {
  char magic[4] = {'G', 'G', 'U', 'F'};
  uint32_t version = 3;
  std::optional<uint64_t> n_tensors, n_kv;  // override the true counts
  std::vector<Kv> kvs;
  std::vector<Ti> tis;
  uint64_t pad_to = 32;
  uint64_t data_bytes = 128;

  std::vector<uint8_t> build() const {
    Bytes o;
    o.b.insert(o.b.end(), magic, magic + 4);
    o.put<uint32_t>(version).put<uint64_t>(n_tensors.value_or(tis.size())).put<uint64_t>(n_kv.value_or(kvs.size()));
    for (const Kv& kv : kvs) {
      o.str(kv.key).put<uint32_t>(kv.type);
      o.b.insert(o.b.end(), kv.value.begin(), kv.value.end());
    }
    for (const Ti& t : tis) {
      o.str(t.name).put<uint32_t>(t.n_dims.value_or(uint32_t(t.dims.size())));
      for (int64_t d : t.dims) o.put<int64_t>(d);
      o.put<uint32_t>(t.type).put<uint64_t>(t.offset);
    }
    while (o.b.size() % pad_to) o.b.push_back(0);
    for (uint64_t i = 0; i < data_bytes; ++i) o.b.push_back(uint8_t(i * 7));
    return o.b;
  }
};

std::vector<uint8_t> val_u32(uint32_t v) { return Bytes().put(v).b; }
std::vector<uint8_t> val_str(const std::string& s) { return Bytes().str(s).b; }
std::vector<uint8_t> val_i32_array(std::vector<int32_t> v) {
  Bytes b;
  b.put<uint32_t>(5).put<uint64_t>(v.size());
  for (int32_t x : v) b.put(x);
  return b.b;
}
std::vector<uint8_t> val_str_array(std::vector<std::string> v) {
  Bytes b;
  b.put<uint32_t>(8).put<uint64_t>(v.size());
  for (const auto& s : v) b.str(s);
  return b.b;
}

// Valid: five keys of several kinds and two tensors (F32 [8,2] at 0, Q8_0 [32] at 64).
Image valid_image() {
  Image im;
  im.kvs = {
      {"general.architecture", 8, val_str("test")},
      {"test.count", 4, val_u32(7)},
      {"test.ints", 9, val_i32_array({1, 2, 3})},
      {"test.words", 9, val_str_array({"a", "bc"})},
      {"test.flag", 7, {1}},
  };
  im.tis = {
      {"a.weight", {8, 2}, 0, 0, std::nullopt},
      {"b.weight", {32}, 8, 64, std::nullopt},
  };
  return im;
}

std::string parse_error(const std::vector<uint8_t>& img) {
  try {
    auto f = File::parse_memory(img.data(), img.size(), kName);
  } catch (const moe::Error& e) {
    return e.what();
  }
  return "";
}

// Expects parse to fail with a one-line message naming the file and containing every fragment.
void expect_rejected(const std::vector<uint8_t>& img, std::vector<std::string> fragments) {
  const std::string msg = parse_error(img);
  ASSERT_FALSE(msg.empty()) << "image was accepted; expected an error mentioning " << fragments.at(0);
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  EXPECT_NE(msg.find(kName), std::string::npos) << msg;
  for (const std::string& f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << "missing '" << f << "' in: " << msg;
}

template <typename Mutate>
void expect_corruption_rejected(Mutate&& mutate, std::vector<std::string> fragments) {
  Image im = valid_image();
  mutate(im);
  expect_rejected(im.build(), std::move(fragments));
}

}  // namespace

TEST(GgufMalformed, ValidImageParses) {
  const auto img = valid_image().build();
  auto f = File::parse_memory(img.data(), img.size(), kName);
  EXPECT_EQ(f->metadata().size(), 5u);
  EXPECT_EQ(f->get_string_array("test.words"), (std::vector<std::string>{"a", "bc"}));
  EXPECT_EQ(f->get_int_array("test.ints"), (std::vector<int64_t>{1, 2, 3}));
  ASSERT_EQ(f->tensors().size(), 2u);
  EXPECT_EQ(f->tensors()[1].nbytes, 34u);
  EXPECT_EQ(f->data_offset() + 128, img.size());
  EXPECT_EQ(f->tensor_data(f->tensors()[1])[0], uint8_t(64 * 7));
}

TEST(GgufMalformed, TruncatedAtEveryHeaderByte) {
  const auto img = valid_image().build();
  auto full = File::parse_memory(img.data(), img.size(), kName);
  const size_t header_end = full->data_offset();
  // Every cut inside the header and padding, and several inside the data section.
  std::vector<size_t> cuts;
  for (size_t n = 0; n <= header_end; ++n) cuts.push_back(n);
  for (size_t n : {header_end + 1, header_end + 63, header_end + 97, img.size() - 31}) cuts.push_back(n);
  for (size_t n : cuts) {
    SCOPED_TRACE(n);
    // Copy into an exactly-sized buffer so ASan catches any read past the cut.
    std::vector<uint8_t> cut(img.begin(), img.begin() + n);
    const std::string msg = parse_error(cut);
    ASSERT_FALSE(msg.empty());
    EXPECT_NE(msg.find(kName), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
  // Cutting only the trailing padding of the last tensor is still valid: the data it needs is there.
  std::vector<uint8_t> tail(img.begin(), img.begin() + header_end + 98);
  EXPECT_NO_THROW(File::parse_memory(tail.data(), tail.size(), kName));
}

TEST(GgufMalformed, TruncationNamesTheField) {
  const auto img = valid_image().build();
  expect_rejected(std::vector<uint8_t>(img.begin(), img.begin() + 2), {"magic"});
  expect_rejected(std::vector<uint8_t>(img.begin(), img.begin() + 6), {"version"});
  expect_rejected(std::vector<uint8_t>(img.begin(), img.begin() + 12), {"tensor count"});
  expect_rejected(std::vector<uint8_t>(img.begin(), img.begin() + 30), {"metadata"});
  expect_rejected(std::vector<uint8_t>(img.begin(), img.begin() + 24 + 8 + 5), {"metadata count"});
  Image long_key = valid_image();
  long_key.kvs[0].key = std::string(200, 'k');
  const auto lk = long_key.build();
  expect_rejected(std::vector<uint8_t>(lk.begin(), lk.begin() + 24 + 8 + 150), {"metadata #0 key", "string length 200"});
  expect_rejected(std::vector<uint8_t>(lk.begin(), lk.begin() + 24 + 8 + 200 + 2), {"...' type", "expected 4 more byte(s)"});
}

TEST(GgufMalformed, BadMagic) {
  expect_corruption_rejected([](Image& im) { std::memcpy(im.magic, "GGML", 4); }, {"magic", "GGUF", "GGML"});
  expect_corruption_rejected([](Image& im) { std::memcpy(im.magic, "\0\xff\n'", 4); }, {"magic", "\\x00"});
}

TEST(GgufMalformed, BadVersions) {
  expect_corruption_rejected([](Image& im) { im.version = 1; }, {"version", "found 1", "v1"});
  expect_corruption_rejected([](Image& im) { im.version = 4; }, {"version", "found 4"});
  expect_corruption_rejected([](Image& im) { im.version = 0; }, {"version", "found 0"});
  expect_corruption_rejected([](Image& im) { im.version = 0xFFFFFFFF; }, {"version", "4294967295"});
  expect_corruption_rejected([](Image& im) { im.version = 0x03000000; }, {"version", "big-endian"});
}

TEST(GgufMalformed, AbsurdCounts) {
  expect_corruption_rejected([](Image& im) { im.n_tensors = kHuge; }, {"tensor count", "1152921504606846976"});
  expect_corruption_rejected([](Image& im) { im.n_tensors = UINT64_MAX; }, {"tensor count"});
  expect_corruption_rejected([](Image& im) { im.n_kv = kHuge; }, {"metadata count", "1152921504606846976"});
  expect_corruption_rejected([](Image& im) { im.n_kv = UINT64_MAX; }, {"metadata count"});
  // Plausible but wrong counts run into the next section and fail there.
  expect_corruption_rejected([](Image& im) { im.n_kv = 6; }, {"tensor #0 name"});
  expect_corruption_rejected([](Image& im) { im.n_tensors = 3; }, {"tensor"});
  expect_corruption_rejected([](Image& im) { im.n_kv = 4; }, {"tensor 'test.flag' n_dims"});
}

TEST(GgufMalformed, AbsurdStringLengths) {
  expect_corruption_rejected([](Image& im) { im.kvs[0].value = Bytes().str("test", kHuge).b; },
                             {"general.architecture", "string length 1152921504606846976"});
  expect_corruption_rejected(
      [](Image& im) {
        auto img = Bytes().str("x", UINT64_MAX).b;
        im.kvs[0].value = img;
      },
      {"general.architecture", "string length"});
  expect_corruption_rejected([](Image& im) { im.kvs[0].value = Bytes().str("test", 5000).b; },
                             {"general.architecture", "string length 5000"});
  // Key length.
  const auto img = valid_image().build();
  auto bad = img;
  const uint64_t huge = kHuge;
  std::memcpy(bad.data() + 24, &huge, 8);
  expect_rejected(bad, {"metadata #0 key", "string length"});
  // String inside a string array.
  expect_corruption_rejected(
      [](Image& im) {
        Bytes b;
        b.put<uint32_t>(8).put<uint64_t>(2).str("a").str("bc", kHuge);
        im.kvs[3].value = b.b;
      },
      {"test.words", "element 1", "string length"});
  // Tensor name: the first tensor info starts right after the metadata.
  Image meta_only = valid_image();
  meta_only.tis.clear();
  meta_only.pad_to = 1;
  meta_only.data_bytes = 0;
  const size_t first_ti = meta_only.build().size();
  bad = img;
  std::memcpy(bad.data() + first_ti, &huge, 8);
  expect_rejected(bad, {"tensor #0 name", "string length 1152921504606846976"});
}

TEST(GgufMalformed, AbsurdArrayCounts) {
  expect_corruption_rejected(
      [](Image& im) { im.kvs[2].value = Bytes().put<uint32_t>(5).put<uint64_t>(kHuge).put<int32_t>(1).b; },
      {"test.ints", "count 1152921504606846976"});
  expect_corruption_rejected(
      [](Image& im) { im.kvs[2].value = Bytes().put<uint32_t>(10).put<uint64_t>(UINT64_MAX / 4).b; },
      {"test.ints", "count"});
  expect_corruption_rejected(
      [](Image& im) { im.kvs[3].value = Bytes().put<uint32_t>(8).put<uint64_t>(kHuge).str("a").b; },
      {"test.words", "count 1152921504606846976"});
  expect_corruption_rejected(
      [](Image& im) { im.kvs[3].value = Bytes().put<uint32_t>(8).put<uint64_t>(UINT64_MAX).b; },
      {"test.words", "count"});
}

TEST(GgufMalformed, BadValueTypes) {
  expect_corruption_rejected([](Image& im) { im.kvs[1].type = 13; }, {"test.count", "type", "found 13"});
  expect_corruption_rejected([](Image& im) { im.kvs[1].type = 0xFFFFFFFF; }, {"test.count", "4294967295"});
  expect_corruption_rejected(
      [](Image& im) { im.kvs[2].value = Bytes().put<uint32_t>(77).put<uint64_t>(1).put<int32_t>(1).b; },
      {"test.ints", "element type", "found 77"});
  // Nested array: ARRAY of ARRAY.
  expect_corruption_rejected(
      [](Image& im) {
        Bytes b;
        b.put<uint32_t>(9).put<uint64_t>(1).put<uint32_t>(5).put<uint64_t>(1).put<int32_t>(1);
        im.kvs[2].value = b.b;
      },
      {"test.ints", "nested arrays"});
}

TEST(GgufMalformed, BadBools) {
  expect_corruption_rejected([](Image& im) { im.kvs[4].value = {2}; }, {"test.flag", "0 or 1", "found 2"});
  expect_corruption_rejected(
      [](Image& im) {
        im.kvs[4].type = 9;
        im.kvs[4].value = Bytes().put<uint32_t>(7).put<uint64_t>(3).put<uint8_t>(0).put<uint8_t>(1).put<uint8_t>(255).b;
      },
      {"test.flag", "element 2", "found 255"});
}

TEST(GgufMalformed, BadKeys) {
  expect_corruption_rejected([](Image& im) { im.kvs[2].key = "test.count"; }, {"test.count", "duplicate key"});
  expect_corruption_rejected([](Image& im) { im.kvs[1].key = ""; }, {"metadata #1 key", "non-empty"});
}

TEST(GgufMalformed, BadAlignment) {
  auto with_alignment = [](uint32_t type, std::vector<uint8_t> v) {
    return [type, v](Image& im) { im.kvs.push_back({"general.alignment", type, v}); };
  };
  expect_corruption_rejected(with_alignment(4, val_u32(0)), {"general.alignment", "power of two", "found 0"});
  expect_corruption_rejected(with_alignment(4, val_u32(3)), {"general.alignment", "power of two", "found 3"});
  expect_corruption_rejected(with_alignment(4, val_u32(96)), {"general.alignment", "found 96"});
  expect_corruption_rejected(with_alignment(10, Bytes().put<uint64_t>(32).b), {"general.alignment", "u32", "u64"});
  expect_corruption_rejected(with_alignment(8, val_str("32")), {"general.alignment", "u32", "string"});
  // A valid non-default alignment is honoured: offset 64 is no longer aligned to 128.
  expect_corruption_rejected(with_alignment(4, val_u32(128)), {"b.weight", "offset", "alignment 128", "found 64"});
  Image ok = valid_image();
  ok.kvs.push_back({"general.alignment", 4, val_u32(64)});
  ok.pad_to = 64;
  const auto img = ok.build();
  auto f = File::parse_memory(img.data(), img.size(), kName);
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(f->data_offset() % 64, 0u);
}

TEST(GgufMalformed, BadTensorShapes) {
  expect_corruption_rejected([](Image& im) { im.tis[0].n_dims = 0; }, {"a.weight", "n_dims", "found 0"});
  expect_corruption_rejected(
      [](Image& im) {
        im.tis[0].dims = {8, 2, 1, 1, 1};
      },
      {"a.weight", "n_dims", "found 5"});
  expect_corruption_rejected([](Image& im) { im.tis[0].n_dims = 0xFFFFFFFF; }, {"a.weight", "n_dims"});
  expect_corruption_rejected([](Image& im) { im.tis[0].dims = {8, 0}; }, {"a.weight", "dims[1]", "found 0"});
  expect_corruption_rejected([](Image& im) { im.tis[0].dims = {-8, 2}; }, {"a.weight", "dims[0]", "found -8"});
  expect_corruption_rejected([](Image& im) { im.tis[0].dims = {int64_t(1) << 32, int64_t(1) << 32}; },
                             {"a.weight", "overflow"});
  expect_corruption_rejected([](Image& im) { im.tis[0].dims = {3, INT64_MAX, 1, 1}; }, {"a.weight", "overflow"});
  // Elements fit int64 but bytes do not fit 64 bits (F32, 2^62 elements).
  expect_corruption_rejected([](Image& im) { im.tis[0].dims = {int64_t(1) << 62}; }, {"a.weight", "overflow"});
  expect_corruption_rejected([](Image& im) { im.tis[0].dims = {int64_t(1) << 40, int64_t(1) << 22}; },
                             {"a.weight", "overflow"});
  expect_corruption_rejected([](Image& im) { im.tis[1].dims = {16}; },
                             {"b.weight", "dims[0]", "block size 32", "found 16"});
  // Truncated inside the dims list.
  expect_corruption_rejected([](Image& im) { im.tis[1].n_dims = 4; }, {"b.weight"});
}

TEST(GgufMalformed, BadTensorTypes) {
  expect_corruption_rejected([](Image& im) { im.tis[1].type = 99; }, {"b.weight", "type", "99"});
  expect_corruption_rejected([](Image& im) { im.tis[1].type = 0xFFFFFFFF; }, {"b.weight", "4294967295"});
  expect_corruption_rejected([](Image& im) { im.tis[1].type = 4; }, {"b.weight", "type", "found unknown"});
}

TEST(GgufMalformed, BadTensorOffsets) {
  expect_corruption_rejected([](Image& im) { im.tis[1].offset = 65; }, {"b.weight", "offset", "alignment 32", "found 65"});
  expect_corruption_rejected([](Image& im) { im.tis[1].offset = uint64_t(1) << 40; }, {"b.weight", "offset", "past the end"});
  expect_corruption_rejected([](Image& im) { im.tis[1].offset = UINT64_MAX - 31; }, {"b.weight", "offset"});
  // Starts inside the file but runs past its end.
  expect_corruption_rejected([](Image& im) { im.tis[1].offset = 96; }, {"b.weight", "34 bytes", "past the end"});
  expect_corruption_rejected([](Image& im) { im.data_bytes = 90; }, {"b.weight", "past the end"});
  // Data section itself missing.
  expect_corruption_rejected(
      [](Image& im) {
        im.data_bytes = 0;
        im.pad_to = 1;
      },
      {"data section"});
  // Overlapping tensors are allowed (the format does not forbid aliasing).
  Image ok = valid_image();
  ok.tis[1].offset = 0;
  const auto img = ok.build();
  EXPECT_NO_THROW(File::parse_memory(img.data(), img.size(), kName));
}

TEST(GgufMalformed, BadTensorNames) {
  expect_corruption_rejected([](Image& im) { im.tis[1].name = "a.weight"; }, {"a.weight", "duplicate tensor name"});
  expect_corruption_rejected([](Image& im) { im.tis[0].name = ""; }, {"tensor #0 name", "non-empty"});
  // Non-printable bytes are escaped so the message stays one line.
  expect_corruption_rejected(
      [](Image& im) {
        im.tis[0].name = "bad\nname";
        im.tis[0].dims = {8, 0};
      },
      {"bad\\x0aname", "dims[1]"});
}

TEST(GgufMalformed, FileModesAgree) {
  // The same corruptions through File::open in both modes: same one-line errors, with the path.
  const fs::path dir = fs::temp_directory_path() / fmt::format("moe_gguf_malformed_{}", ::getpid());
  fs::create_directories(dir);
  const std::string path = (dir / kName).string();
  std::vector<std::function<void(Image&)>> corruptions = {
      [](Image& im) { im.version = 1; },
      [](Image& im) { im.n_kv = kHuge; },
      [](Image& im) { im.tis[1].type = 99; },
      [](Image& im) { im.tis[1].offset = 96; },
      [](Image& im) { im.kvs[3].value = Bytes().put<uint32_t>(8).put<uint64_t>(kHuge).b; },
  };
  for (size_t i = 0; i < corruptions.size(); ++i) {
    SCOPED_TRACE(i);
    Image im = valid_image();
    corruptions[i](im);
    const auto img = im.build();
    { std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(img.data()), img.size()); }
    std::string mem = parse_error(img);
    for (DataAccess mode : {DataAccess::Mmap, DataAccess::Pread}) {
      try {
        File::open(path, mode);
        ADD_FAILURE() << "accepted";
      } catch (const moe::Error& e) {
        std::string msg = e.what();
        EXPECT_NE(msg.find(path), std::string::npos) << msg;
        // Same text once the name is normalised.
        msg.replace(msg.find(path), path.size(), kName);
        EXPECT_EQ(msg, mem);
      }
    }
  }
  fs::remove_all(dir);
}
