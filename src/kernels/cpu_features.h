// Run-time CPU feature detection (cpuid + xgetbv), done once per process. Kernels are chosen from
// these flags; the table is read-only after the first call, so it is safe from any thread.
#pragma once
#include <string>

namespace moe {

enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2 };

struct CpuFeatures {
  bool sse41 = false;
  bool avx = false;
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool bmi2 = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512dq = false;
  bool avx512vnni = false;
  bool avx512bf16 = false;
  bool avx512vbmi = false;
  bool gfni = false;
  bool os_avx = false;     // OS saves YMM state (XCR0)
  bool os_avx512 = false;  // OS saves opmask/ZMM state (XCR0)

  // Everything our _avx2.cpp files are compiled for (AVX2 + FMA + F16C + BMI2) is usable.
  bool has_avx2_kernels() const { return os_avx && avx && avx2 && fma && f16c && bmi2; }
  // Everything our _avx512.cpp files are compiled for is usable.
  bool has_avx512_kernels() const {
    return has_avx2_kernels() && os_avx512 && avx512f && avx512bw && avx512vl && avx512dq && avx512vnni &&
           avx512bf16;
  }
  // Our _avx512vbmi.cpp files (the AVX-512 set plus VBMI and GFNI) are usable.
  bool has_avx512vbmi_kernels() const { return has_avx512_kernels() && avx512vbmi && gfni; }
  std::string describe() const;  // e.g. "avx2 fma f16c avx512f ... "
};

// Detected once. The environment variable MOE_ISA=scalar|avx2|avx512 caps the level used by
// best_isa() (for benchmarking and for testing the fallbacks); it cannot raise it.
const CpuFeatures& cpu_features();
Isa best_isa();
const char* isa_name(Isa isa);

}  // namespace moe
