// The one place moe.cpp configures BLAS (OpenBLAS): every sgemm call runs on one thread, because our
// own pool already occupies the cores and splits the work into fixed blocks (so results do not depend
// on the thread count).
#pragma once

namespace moe::kernels {

// Idempotent and thread-safe; call before the first sgemm.
void use_single_threaded_blas();

}  // namespace moe::kernels
