// libFuzzer target for the GGUF reader: any byte string must either parse or raise moe::Error, and a
// parsed file must be fully walkable (every key through its getters, every tensor's bytes) without
// touching memory outside the input.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "base/error.h"
#include "format/gguf.h"

using namespace moe::gguf;

namespace {

template <typename F>
void guarded(F&& f) {
  try {
    f();
  } catch (const moe::Error&) {
  }
}

volatile uint64_t g_sink;  // keeps reads from being optimised away

void walk(const File& f) {
  uint64_t acc = f.version() + f.alignment() + f.data_offset();
  for (const auto& entry : f.metadata()) {
    const std::string& key = entry.first;  // (clang 14 cannot capture structured bindings)
    const Value& v = entry.second;
    acc += key.size();
    switch (v.type) {
      case ValueType::STRING: guarded([&] { acc += f.get_string(key).size(); }); break;
      case ValueType::BOOL: guarded([&] { acc += f.get_bool_or(key, false); }); break;
      case ValueType::ARRAY:
        guarded([&] { acc += f.get_string_array(key).size(); });
        guarded([&] { acc += f.get_float_array(key).size(); });
        guarded([&] { acc += f.get_int_array(key).size(); });
        break;
      default:
        guarded([&] { acc += f.get_uint(key); });
        guarded([&] { acc += uint64_t(f.get_int(key)); });
        guarded([&] { acc += f.get_float(key) > 0.0; });
    }
    if (f.find(key) != &v) __builtin_trap();
  }
  std::vector<uint8_t> buf;
  for (const TensorInfo& t : f.tensors()) {
    if (f.find_tensor(t.name) != &t) __builtin_trap();
    acc += uint64_t(t.n_elements()) + uint64_t(t.n_rows());
    // The parser promised these bytes lie inside the input: touch the first and last, and copy a
    // bounded prefix through read_tensor_bytes.
    const uint8_t* p = f.tensor_data(t);
    if (t.nbytes > 0) acc += p[0] + p[t.nbytes - 1];
    const uint64_t n = t.nbytes < 4096 ? t.nbytes : 4096;
    buf.resize(n);
    f.read_tensor_bytes(t, t.nbytes - n, n, buf.data());
    if (n > 0 && std::memcmp(buf.data(), p + (t.nbytes - n), n) != 0) __builtin_trap();
    guarded([&] { f.read_tensor_bytes(t, t.nbytes, 1, buf.data()); __builtin_trap(); });
  }
  g_sink = acc;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto f = File::parse_memory(data, size, "fuzz-input.gguf");
    walk(*f);
  } catch (const moe::Error&) {
  }
  return 0;
}
