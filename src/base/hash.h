// FNV-1a, 64-bit: a small, portable content hash for comparing tensor data (not for security).
#pragma once
#include <cstddef>
#include <cstdint>

namespace moe {

struct Fnv1a64 {
  uint64_t h = 1469598103934665603ull;
  void bytes(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) {
      h ^= b[i];
      h *= 1099511628211ull;
    }
  }
};

}  // namespace moe
