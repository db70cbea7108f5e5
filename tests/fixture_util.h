// Helpers for tests that read ../shared/fixtures (llama.cpp's reference outputs).
#pragma once
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace moe::test {

inline std::string fixtures_dir() { return MOE_FIXTURES_DIR; }
// Fixture models live in models/ and, for types older readers did not know, in a subfolder of it
// (models/mxfp4/); names are unique across them.
inline std::string model_path(const std::string& name) {
  const std::filesystem::path top = std::filesystem::path(fixtures_dir()) / "models";
  if (std::filesystem::exists(top / (name + ".gguf"))) return (top / (name + ".gguf")).string();
  for (const auto& e : std::filesystem::directory_iterator(top))
    if (e.is_directory() && std::filesystem::exists(e.path() / (name + ".gguf")))
      return (e.path() / (name + ".gguf")).string();
  return (top / (name + ".gguf")).string();
}
inline std::string ref_path(const std::string& name, const std::string& suffix) {
  return fixtures_dir() + "/ref/" + name + "." + suffix;
}

inline std::vector<std::string> fixture_model_names() {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(fixtures_dir() + "/models")) {
    if (e.path().extension() == ".gguf") names.push_back(e.path().stem().string());
    if (e.is_directory())
      for (const auto& f : std::filesystem::directory_iterator(e.path()))
        if (f.path().extension() == ".gguf") names.push_back(f.path().stem().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

// gtest parameter names for suites over fixture models: "tiny-qwen3moe-Q4_K_M" -> "tiny_qwen3moe_Q4_K_M".
struct FixtureParamName {
  template <typename Info>
  std::string operator()(const Info& info) const {
    std::string s = info.param;
    for (char& c : s)
      if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
    return s;
  }
};

inline std::vector<int32_t> read_ids(const std::string& path) {
  std::ifstream in(path);
  std::vector<int32_t> ids;
  int64_t v;
  while (in >> v) ids.push_back(static_cast<int32_t>(v));
  return ids;
}

inline std::vector<float> read_f32(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  in.seekg(0, std::ios::end);
  const auto n = static_cast<size_t>(in.tellg());
  in.seekg(0);
  std::vector<float> v(n / sizeof(float));
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(float)));
  return v;
}

// Normalized MSE: sum((a-b)^2) / sum(b^2), with b the reference.
inline double nmse(const std::vector<float>& a, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(a[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return num / den;
}

inline double top1_agreement(const std::vector<float>& a, const std::vector<float>& b, int64_t n_vocab) {
  const int64_t rows = static_cast<int64_t>(b.size()) / n_vocab;
  int64_t agree = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = a.data() + r * n_vocab;
    const float* y = b.data() + r * n_vocab;
    agree += std::max_element(x, x + n_vocab) - x == std::max_element(y, y + n_vocab) - y;
  }
  return static_cast<double>(agree) / static_cast<double>(rows);
}

// "tiny-qwen3moe-Q4_K_M" -> "tiny-qwen3moe"; unquantized names map to themselves.
inline std::string base_model_name(const std::string& name) {
  for (const char* q : {"-Q8_0", "-Q4_0", "-Q4_K_M", "-Q6_K", "-Q4_1", "-Q5_0", "-Q5_1", "-Q5_K_M", "-Q3_K_M", "-Q2_K",
                        "-MXFP4_MOE"}) {
    const std::string s(q);
    if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0)
      return name.substr(0, name.size() - s.size());
  }
  return name;
}

}  // namespace moe::test
