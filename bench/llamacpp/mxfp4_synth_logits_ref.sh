#!/usr/bin/env bash
# Regenerates tests/data/llamacpp/mxfp4_synth.{tok,MXFP4_MOE.logits.f32,F32.logits.f32}: llama.cpp's
# all-position logits on a small random qwen3moe model written by `moe synth` as MXFP4_MOE (MXFP4
# experts, Q8_0 elsewhere) and as F32. tests/test_mxfp4.cpp runs the MXFP4 model end to end with the
# fixture suite's tolerances for quantized files (NMSE <= 2e-3 against llama.cpp, and no worse than
# 1.1x llama.cpp's own error against the F32 model).
#
#   bench/llamacpp/mxfp4_synth_logits_ref.sh [LLAMA_DIR=/work/llama.cpp]    (run from a built worktree;
#   LLAMA_DIR/build/bin must hold llama_ref: bench/llamacpp/build_llama_native.sh)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
LLAMA_DIR=${1:-/work/llama.cpp}
MOE=${MOE:-$ROOT/build/bin/moe}
OUT="$ROOT/tests/data/llamacpp"
# Keep in step with tests/test_mxfp4.cpp (Mxfp4Synth.LogitsMatchLlamaCpp).
ARGS="--arch qwen3moe --layers 2 --embd 256 --experts 8 --top-k 2 --ff 128 --heads 4 --kv-heads 2 --vocab 300 --seed 11"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
seq 5 11 290 | tr '\n' ' ' > "$OUT/mxfp4_synth.tok"
for type in MXFP4_MOE F32; do
  # shellcheck disable=SC2086
  "$MOE" synth $ARGS --type $type -o "$TMP/m.gguf" -q 2> /dev/null
  "$LLAMA_DIR/build/bin/llama_ref" logits -m "$TMP/m.gguf" --tokens "$OUT/mxfp4_synth.tok" \
    -o "$OUT/mxfp4_synth.$type.logits.f32" -t 2 2> /dev/null
done
ls -l "$OUT"/mxfp4_synth.*
