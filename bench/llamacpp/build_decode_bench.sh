#!/usr/bin/env bash
# Builds bench/llamacpp/decode_bench.cpp against the prebuilt llama.cpp libraries of node-llama-cpp
# (npm, into a temp dir unless NLC_DIR is set) and the headers of the llama.cpp release it ships
# (node-llama-cpp/llama/gitRelease.bundle). Prints the path of the binary. Nothing lands in the repo.
#   bench/llamacpp/build_decode_bench.sh [OUT_DIR=/tmp/moe-llama-decode-bench]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-/tmp/moe-llama-decode-bench}
# shellcheck source=ensure_nlc.sh
source "$HERE/ensure_nlc.sh"
ensure_nlc
BINS=$(dirname "$(ls "$NLC_DIR"/node_modules/@node-llama-cpp/linux-x64/bins/*/libllama*.so | head -1)")
mkdir -p "$OUT"
if [[ ! -f "$OUT/src/include/llama.h" ]]; then
  rm -rf "$OUT/src"
  git clone -q "$NLC_DIR/node_modules/node-llama-cpp/llama/gitRelease.bundle" "$OUT/src" >&2
fi
g++ -O2 -std=c++17 "$HERE/decode_bench.cpp" -I"$OUT/src/include" -I"$OUT/src/ggml/include" \
  -L"$BINS" -l:"$(basename "$(ls "$BINS"/libllama.v*.so | head -1)")" \
  -l:"$(basename "$(ls "$BINS"/libggml.v*.so | head -1)")" -l:libggml-base.so -Wl,-rpath,"$BINS" \
  -o "$OUT/decode_bench"
echo "$OUT/decode_bench"
echo "GGML_BACKEND_DIR=$BINS" > "$OUT/env"
