#!/usr/bin/env bash
# Regenerates tests/data/llamacpp/merged_*: llama.cpp's all-position logits on the F16 fixtures merged by
# `moe merge --method msmoe --keep 0.5 --align` (calibrated on the first 64 tokens of text/t1.txt, as the test does).
# tests/test_compress_merge.cpp merges the fixtures with the same commands and compares moe.cpp's logits on the merged
# file with these (NMSE <= 1e-5): llama.cpp loads the merged files (expert count, k, centres' router rows, selection
# bias, averaged expert matrices and biases) and computes what moe.cpp computes on them.
#
#   bench/llamacpp/merge_refs.sh   env: MOE (default build/bin/moe), LLAMA_BIN (dir with llama_ref;
#                                   default /work/llama.cpp/build/bin, see build_llama_native.sh)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MOE=${MOE:-$ROOT/build/bin/moe}
LLAMA_BIN=${LLAMA_BIN:-/work/llama.cpp/build/bin}
FIX=${FIX:-$ROOT/../shared/fixtures}
OUT=$ROOT/tests/data/llamacpp
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
  "$MOE" merge -q -m "$f" --stats "$TMP/stats.gguf" --method msmoe --keep 0.5 --align -o "$TMP/merged.gguf" \
    > "$TMP/merge.log"
  "$LLAMA_BIN/llama_ref" logits -m "$TMP/merged.gguf" --tokens "$TMP/tokens.txt" -o "$OUT/merged_$name.logits.f32" \
    2> "$TMP/llama.log" || { echo "$name: llama.cpp failed on the merged file"; tail -3 "$TMP/llama.log"; exit 1; }
  echo "$name: $(head -1 "$TMP/merge.log"); $(grep -m1 groups "$TMP/merge.log")"
done
