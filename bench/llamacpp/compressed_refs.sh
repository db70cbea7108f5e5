#!/usr/bin/env bash
# Regenerates llama.cpp's all-position logits on the F16 fixtures compressed by moe.cpp, 24 tokens of each
# fixture's sequence, after calibrating on the first 64 tokens of text/t1.txt:
#   prune  tests/data/llamacpp/pruned_*: `moe prune --criterion random --seed 7 --no-protect --keep 0.75`
#          (a quarter of each layer's experts; the choice depends only on the shapes)
#   merge  tests/data/llamacpp/merged_*: `moe merge --method msmoe --keep 0.5 --align`
# tests/test_compress_prune.cpp and tests/test_compress_merge.cpp (through compress_test_util.h) run the same
# commands and compare moe.cpp's logits on the compressed file with these (NMSE <= 1e-5): llama.cpp loads the files
# (expert count, k, router rows, selection bias, pruned or averaged expert matrices and biases) and computes what
# moe.cpp computes on them.
#
#   bench/llamacpp/compressed_refs.sh prune|merge   env: MOE (default build/bin/moe), LLAMA_BIN (dir with
#                                    llama_ref; default /work/llama.cpp/build/bin, see build_llama_native.sh)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MOE=${MOE:-$ROOT/build/bin/moe}
LLAMA_BIN=${LLAMA_BIN:-/work/llama.cpp/build/bin}
FIX=${FIX:-$ROOT/../shared/fixtures}
OUT=$ROOT/tests/data/llamacpp
case "${1:-}" in
  prune) PREFIX=pruned ARGS=(--criterion random --seed 7 --no-protect --keep 0.75) ;;
  merge) PREFIX=merged ARGS=(--method msmoe --keep 0.5 --align) ;;
  *) echo "usage: $0 prune|merge" >&2; exit 2 ;;
esac
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
[[ -x "$LLAMA_BIN/llama_ref" ]] || { echo "no llama_ref in $LLAMA_BIN (run bench/llamacpp/build_llama_native.sh)" >&2; exit 1; }
for name in $(grep -o '"name": "[^"]*"' "$FIX/models/models.json" | cut -d'"' -f4); do
  f="$FIX/models/$name.gguf"
  [[ -f "$f" ]] || continue
  # F16 fixtures only (the quantized ones are the same models).
  [[ "$name" == *-Q* ]] && continue
  head -n 24 "$FIX/ref/$name.seq.tok" > "$TMP/tokens.txt"
  "$MOE" calibrate -q -m "$f" -f "$FIX/text/t1.txt" --recon-types '' --max-windows 1 -c 64 -o "$TMP/stats.gguf" > /dev/null
  "$MOE" "$1" -q -m "$f" --stats "$TMP/stats.gguf" "${ARGS[@]}" -o "$TMP/out.gguf" > "$TMP/moe.log"
  "$LLAMA_BIN/llama_ref" logits -m "$TMP/out.gguf" --tokens "$TMP/tokens.txt" -o "$OUT/${PREFIX}_$name.logits.f32" \
    2> "$TMP/llama.log" || { echo "$name: llama.cpp failed on the $PREFIX file"; tail -3 "$TMP/llama.log"; exit 1; }
  echo "$name: $(head -1 "$TMP/moe.log")"
done
