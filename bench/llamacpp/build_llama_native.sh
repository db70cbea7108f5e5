#!/usr/bin/env bash
# Builds llama.cpp natively (-DGGML_NATIVE=ON, Release) from the source tree that the npm package
# node-llama-cpp ships (llama/gitRelease.bundle), plus bench/llamacpp/llama_ref.cpp against it, in a
# directory outside the repository. This is the fair llama.cpp baseline and the reference for
# development-time checks (override-kv logits, routing tensors, llama-quantize, loading pruned files).
#
#   bench/llamacpp/build_llama_native.sh [DIR=/tmp/moe-llama-native]
#   env: NLC_DIR (a dir whose node_modules holds node-llama-cpp; default: npm-install into a temp dir)
#        TARGETS (default: llama-quantize llama-bench llama-perplexity llama-completion)
# Prints DIR; the tools land in DIR/build/bin (llama_ref too). Nothing is written into the repository.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${1:-/tmp/moe-llama-native}
TARGETS=${TARGETS:-llama-quantize llama-bench llama-perplexity llama-completion}
# shellcheck source=ensure_nlc.sh
source "$HERE/ensure_nlc.sh"
if [[ ! -f "$DIR/CMakeLists.txt" ]]; then
  if [[ -z "${NLC_DIR:-}" || ! -f "$NLC_DIR/node_modules/node-llama-cpp/llama/gitRelease.bundle" ]]; then
    NLC_DIR=$(mktemp -d /tmp/nlc.XXXXXX)
    NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --prefix "$NLC_DIR" --no-audit --no-fund --omit=optional \
      "node-llama-cpp@$NLC_VERSION" >&2
  fi
  rm -rf "$DIR"
  git clone -q "$NLC_DIR/node_modules/node-llama-cpp/llama/gitRelease.bundle" "$DIR" >&2
fi
launcher=()
command -v ccache > /dev/null && launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$DIR" -B "$DIR/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=ON \
  -DLLAMA_BUILD_TESTS=OFF "${launcher[@]}" > "$DIR/configure.log" 2>&1 || { cat "$DIR/configure.log" >&2; exit 1; }
# shellcheck disable=SC2086
cmake --build "$DIR/build" -j "$(nproc)" --target llama $TARGETS >&2
g++ -O2 -std=c++17 "$HERE/llama_ref.cpp" -I"$DIR/include" -I"$DIR/ggml/include" -L"$DIR/build/bin" \
  -lllama -lggml -lggml-base -Wl,-rpath,"$DIR/build/bin" -o "$DIR/build/bin/llama_ref"
echo "$DIR"
