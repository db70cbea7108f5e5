#!/usr/bin/env bash
# Regenerates tests/data/llamacpp/pruned_*: llama.cpp's all-position logits on the F16 fixtures pruned by
# `moe prune` (a quarter of each layer's experts removed by --criterion random --seed 7 --no-protect, which
# depends only on the shapes, so the test rebuilds the same files). tests/test_compress_prune.cpp prunes the
# fixtures the same way and compares moe.cpp's logits on the pruned file with these (NMSE <= 1e-5), which
# shows that llama.cpp loads the files (expert count, k, router rows, biases) and computes what moe.cpp does.
#
#   bench/llamacpp/prune_refs.sh   env: MOE (default build/bin/moe), LLAMA_BIN (dir with llama_ref;
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
  # 24 tokens of the fixture's sequence.
  head -n 24 "$FIX/ref/$name.seq.tok" > "$TMP/tokens.txt"
  "$MOE" calibrate -q -m "$f" -f "$FIX/text/t1.txt" --recon-types '' --max-windows 1 -c 64 -o "$TMP/stats.gguf" > /dev/null
  "$MOE" prune -q -m "$f" --stats "$TMP/stats.gguf" --criterion random --seed 7 --no-protect --keep 0.75 \
    -o "$TMP/pruned.gguf" > "$TMP/prune.log"
  "$LLAMA_BIN/llama_ref" logits -m "$TMP/pruned.gguf" --tokens "$TMP/tokens.txt" -o "$OUT/pruned_$name.logits.f32" \
    2> "$TMP/llama.log" || { echo "$name: llama.cpp failed on the pruned file"; tail -3 "$TMP/llama.log"; exit 1; }
  echo "$name: $(grep -c keeps "$TMP/prune.log") MoE layers, $(head -1 "$TMP/prune.log")"
done
