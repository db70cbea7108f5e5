#!/usr/bin/env bash
# Regenerates tests/data/llamacpp/gptoss-mxfp4-like.{MXFP4_MOE,F32}.logits.f32 and .greedy24.tok: llama.cpp's
# logits (on tests/data/llamacpp/arch_tokens.txt) and greedy continuation (of its first 20 ids) on a small
# model of the gpt-oss-20b shape written by `moe synth` in the type that shape defaults to (MXFP4_MOE, as
# the real file ships: MXFP4 experts, Q8_0 elsewhere), and the logits of the same model as F32.
# tests/test_mxfp4.cpp (Mxfp4Synth.GptOssShapeShipsAsMxfp4MoeAndMatchesLlamaCpp) writes the same models.
#
#   bench/llamacpp/gptoss_mxfp4_ref.sh   env: MOE (default build/bin/moe), LLAMA_BIN (dir with llama_ref;
#                                         default /work/llama.cpp/build/bin, see build_llama_native.sh)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MOE=${MOE:-$ROOT/build/bin/moe}
LLAMA_BIN=${LLAMA_BIN:-/work/llama.cpp/build/bin}
OUT=$ROOT/tests/data/llamacpp
[[ -x "$LLAMA_BIN/llama_ref" ]] || { echo "no llama_ref in $LLAMA_BIN (run bench/llamacpp/build_llama_native.sh)" >&2; exit 1; }
[[ -f "$OUT/arch_tokens.txt" ]] || { echo "no $OUT/arch_tokens.txt (bench/llamacpp/make_arch_refs.sh)" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# Keep in step with tests/test_mxfp4.cpp. No --type: the shape's default.
ARGS="--shape gpt-oss-20b --layers 4 --embd 256 --vocab 272 --heads 8 --kv-heads 2 --head-dim 48 --experts 6 --top-k 3
      --ff 96 --window 5 --seed 35"
head -n 20 "$OUT/arch_tokens.txt" > "$TMP/prompt.txt"
# shellcheck disable=SC2086
"$MOE" synth $ARGS -q -t 2 -o "$TMP/mx.gguf"
# shellcheck disable=SC2086
"$MOE" synth $ARGS --type F32 -q -t 2 -o "$TMP/f32.gguf"
"$LLAMA_BIN/llama_ref" logits -m "$TMP/mx.gguf" --tokens "$OUT/arch_tokens.txt" \
  -o "$OUT/gptoss-mxfp4-like.MXFP4_MOE.logits.f32" 2> /dev/null
"$LLAMA_BIN/llama_ref" logits -m "$TMP/f32.gguf" --tokens "$OUT/arch_tokens.txt" \
  -o "$OUT/gptoss-mxfp4-like.F32.logits.f32" 2> /dev/null
"$LLAMA_BIN/llama_ref" greedy -m "$TMP/mx.gguf" --tokens "$TMP/prompt.txt" -n 24 2> /dev/null \
  > "$OUT/gptoss-mxfp4-like.greedy24.tok"
ls -l "$OUT"/gptoss-mxfp4-like.*
