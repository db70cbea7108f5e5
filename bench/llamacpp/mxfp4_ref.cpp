// mxfp4_ref: ggml's own MXFP4 arithmetic on raw data, for tests/data/llamacpp/mxfp4_edge.* (see
// mxfp4_edge_ref.sh). Built against a native llama.cpp build (nothing from it lands in the repo):
//
//   mxfp4_ref quantize IN.f32 N_PER_ROW OUT.mxfp4
//       ggml_quantize_chunk(GGML_TYPE_MXFP4) over the rows of IN (what llama-quantize calls per tensor)
//   mxfp4_ref vecdot W.mxfp4 ACT.f32 N OUT.f32
//       for every (weight row, activation row): the CPU backend's vec_dot_type conversion of the
//       activation row (Q8_0) and its vec_dot for MXFP4; OUT is float32 [act rows][weight rows]
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "ggml-cpu.h"
#include "ggml.h"

namespace {

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "mxfp4_ref: %s\n", msg.c_str());
  std::exit(1);
}

std::vector<char> slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) die("cannot read " + path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void spit(const std::string& path, const void* data, size_t n) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
  if (!out) die("cannot write " + path);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) die("usage: mxfp4_ref quantize IN.f32 N_PER_ROW OUT | vecdot W.mxfp4 ACT.f32 N OUT.f32");
  ggml_cpu_init();
  const std::string mode = argv[1];
  if (mode == "quantize") {
    const auto in = slurp(argv[2]);
    const int64_t n = std::atoll(argv[3]);
    const int64_t total = static_cast<int64_t>(in.size() / sizeof(float));
    if (n <= 0 || n % 32 != 0 || total % n != 0) die("N_PER_ROW must be a multiple of 32 dividing the input");
    std::vector<char> out(ggml_row_size(GGML_TYPE_MXFP4, n) * (total / n));
    const size_t written = ggml_quantize_chunk(GGML_TYPE_MXFP4, reinterpret_cast<const float*>(in.data()),
                                               out.data(), 0, total / n, n, nullptr);
    if (written != out.size()) die("unexpected quantized size");
    spit(argv[4], out.data(), out.size());
    return 0;
  }
  if (mode == "vecdot" && argc == 6) {
    const auto w = slurp(argv[2]);
    const auto a = slurp(argv[3]);
    const int64_t n = std::atoll(argv[4]);
    const size_t wrb = ggml_row_size(GGML_TYPE_MXFP4, n);
    const auto* tr = ggml_get_type_traits_cpu(GGML_TYPE_MXFP4);
    const size_t arb = ggml_row_size(tr->vec_dot_type, n);
    const int64_t rows = static_cast<int64_t>(w.size() / wrb), toks = static_cast<int64_t>(a.size() / (n * 4));
    std::vector<char> aq(arb);
    std::vector<float> out;
    for (int64_t t = 0; t < toks; ++t) {
      ggml_get_type_traits_cpu(tr->vec_dot_type)
          ->from_float(reinterpret_cast<const float*>(a.data()) + t * n, aq.data(), n);
      for (int64_t r = 0; r < rows; ++r) {
        float s = 0;
        tr->vec_dot(static_cast<int>(n), &s, 0, w.data() + r * wrb, 0, aq.data(), 0, 1);
        out.push_back(s);
      }
    }
    spit(argv[5], out.data(), out.size() * sizeof(float));
    return 0;
  }
  die("unknown mode " + mode);
}
