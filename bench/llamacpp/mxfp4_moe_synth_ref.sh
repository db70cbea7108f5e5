#!/usr/bin/env bash
# Regenerates tests/data/llamacpp/mxfp4_moe_synth.txt: llama-quantize's MXFP4_MOE mix of a small random
# F32 model written by `moe synth`, as one line per tensor (name, type, dims, FNV-1a hash of its bytes).
# tests/test_mxfp4.cpp writes the same model with `moe synth --type MXFP4_MOE` and must get the same
# lines: the same type for every tensor (experts MXFP4, other matrices Q8_0, the router and norms kept
# F32, rows of 80 falling back to F16) and the same bytes.
#
#   bench/llamacpp/mxfp4_moe_synth_ref.sh [LLAMA_DIR=/work/llama.cpp]    (run from a built worktree)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
LLAMA_DIR=${1:-/work/llama.cpp}
MOE=${MOE:-$ROOT/build/bin/moe}
# Keep in step with tests/test_mxfp4.cpp (kSynthArgs).
ARGS="--arch qwen3moe --layers 2 --embd 160 --experts 4 --ff 80 --heads 5 --kv-heads 1 --vocab 300 --seed 7"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# shellcheck disable=SC2086
"$MOE" synth $ARGS --type F32 -o "$TMP/f32.gguf" -q
"$LLAMA_DIR/build/bin/llama-quantize" "$TMP/f32.gguf" "$TMP/q.gguf" MXFP4_MOE > "$TMP/quantize.log" 2>&1 ||
  { cat "$TMP/quantize.log" >&2; exit 1; }
{
  echo "# llama-quantize MXFP4_MOE of: moe synth $ARGS --type F32"
  python3 "$HERE/gguf_tensor_hashes.py" "$TMP/q.gguf" | sort
} > "$ROOT/tests/data/llamacpp/mxfp4_moe_synth.txt"
cat "$ROOT/tests/data/llamacpp/mxfp4_moe_synth.txt"
