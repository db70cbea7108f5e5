#!/usr/bin/env bash
# Regenerates tests/data/llamacpp/mxfp4_edge.*: ggml's MXFP4 quantizer and its CPU dot product on data
# built for the format's edge cases, the reference for tests/test_mxfp4.cpp (CI cannot run llama.cpp).
#
#   bench/llamacpp/mxfp4_edge_ref.sh [LLAMA_DIR=/work/llama.cpp]
#
# LLAMA_DIR is a native llama.cpp build (bench/llamacpp/build_llama_native.sh). Writes, row length 96:
#   mxfp4_edge.f32      input rows (random magnitudes over the whole float range, exact ties between
#                       grid points, subnormals, zeros, -0, amax just below a power of two, NaN, inf)
#   mxfp4_edge.mxfp4    ggml_quantize_chunk(GGML_TYPE_MXFP4) of those rows (= llama-quantize's bytes)
#   mxfp4_dot_w.f32     weight rows of moderate magnitude (exponents -40..40) using every code
#   mxfp4_dot_a.f32     activation rows
#   mxfp4_dot.f32       ggml-cpu's vec_dot(quantized weight row, Q8_0 activation row), [act][weight]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
LLAMA_DIR=${1:-/work/llama.cpp}
OUT="$HERE/../../tests/data/llamacpp"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$OUT"
g++ -O2 -std=c++17 "$HERE/mxfp4_ref.cpp" -I"$LLAMA_DIR/ggml/include" -L"$LLAMA_DIR/build/bin" \
  -lggml-cpu -lggml-base -Wl,-rpath,"$LLAMA_DIR/build/bin" -o "$TMP/mxfp4_ref"
python3 - "$OUT" <<'PY'
import math, random, struct, sys
out = sys.argv[1]
rng = random.Random(20261204)
N = 96
kv = [0, 1, 2, 3, 4, 6, 8, 12]
def f32(x):  # round to float32
    return struct.unpack('<f', struct.pack('<f', x))[0]
blocks = []
# Gaussian blocks scaled by 2^k over the whole exponent range (k = -150 .. 125).
for k in range(-150, 126, 2):
    blocks.append([rng.gauss(0, 1) * 2.0 ** k for _ in range(32)])
# Exact ties: amax = 6 * 2^s fixes the grid step 2^(s-1); the others sit halfway between grid values.
for s in (-120, -20, -3, 0, 1, 7, 60, 120):
    mids = [(a + b) / 2 for a, b in zip(kv, kv[1:])]
    vals = [6 * 2.0 ** s] + [m * 2.0 ** (s - 1) * sg for m in mids for sg in (1, -1)]
    vals += [c * 2.0 ** (s - 1) * sg for c in kv[1:] for sg in (1, -1)]
    vals += [rng.uniform(-6, 6) * 2.0 ** s for _ in range(32 - len(vals))]
    rng.shuffle(vals)
    blocks.append(vals[:32])
# amax just below / at / just above a power of two, where log2f rounds.
for k in (-126, -100, -1, 0, 2, 20, 64, 126):
    p = 2.0 ** k
    for a in (math.nextafter(f32(p), 0), p, math.nextafter(f32(p), math.inf)):
        blocks.append([a] + [rng.uniform(-a, a) for _ in range(31)])
# Tiny blocks (exponent byte wraps), subnormals, zeros, -0, one nonzero value.
blocks.append([rng.uniform(-1, 1) * 2.0 ** -140 for _ in range(32)])
blocks.append([5e-45 * (i % 3 - 1) for i in range(32)])
blocks.append([0.0] * 32)
blocks.append([-0.0] * 32)
blocks.append([0.0] * 31 + [-3.0])
blocks.append([float('nan')] + [rng.gauss(0, 1) for _ in range(31)])
blocks.append([float('inf')] + [rng.gauss(0, 1) for _ in range(30)] + [float('-inf')])
blocks.append([3.4028234663852886e38, -3.4028234663852886e38] + [rng.gauss(0, 1e38) for _ in range(30)])
while len(blocks) % 3:
    blocks.append([rng.gauss(0, 1) for _ in range(32)])
with open(f"{out}/mxfp4_edge.f32", "wb") as f:
    for b in blocks:
        f.write(struct.pack('<32f', *b))
# Dot-product data: every code in every block, per-block exponents -40..40.
with open(f"{out}/mxfp4_dot_w.f32", "wb") as f:
    for r in range(24):
        for b in range(N // 32):
            s = rng.randint(-40, 40)
            vals = [6 * 2.0 ** s] + [c * 2.0 ** (s - 1) * sg for c in kv for sg in (1, -1)][1:]
            vals += [rng.uniform(-6, 6) * 2.0 ** s for _ in range(32 - len(vals))]
            rng.shuffle(vals)
            f.write(struct.pack('<32f', *vals))
with open(f"{out}/mxfp4_dot_a.f32", "wb") as f:
    for t in range(5):
        f.write(struct.pack(f'<{N}f', *[rng.gauss(0, 2.0 ** rng.randint(-8, 8)) for _ in range(N)]))
PY
"$TMP/mxfp4_ref" quantize "$OUT/mxfp4_edge.f32" 96 "$OUT/mxfp4_edge.mxfp4"
"$TMP/mxfp4_ref" quantize "$OUT/mxfp4_dot_w.f32" 96 "$TMP/w.mxfp4"
"$TMP/mxfp4_ref" vecdot "$TMP/w.mxfp4" "$OUT/mxfp4_dot_a.f32" 96 "$OUT/mxfp4_dot.f32"
ls -l "$OUT"/mxfp4_*
