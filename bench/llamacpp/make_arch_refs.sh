#!/usr/bin/env bash
# Regenerates tests/data/llamacpp/: llama.cpp's logits and greedy continuations on small random-weight
# models of the deepseek2 (V2-Lite and V3 layouts), gpt-oss and glm4moe archs with shapes the fixtures
# do not have (other widths, head counts, expert counts, a sliding window that wraps its ring, group-
# limited routing, a NextN layer in the file). tests/test_llamacpp_shapes.cpp writes the same models
# with `moe synth` (same arguments, listed in tests/data/llamacpp/arch_shapes.txt) and compares.
#
#   bench/llamacpp/make_arch_refs.sh   env: MOE (default build/bin/moe), LLAMA_BIN (dir with llama_ref;
#                                       default /work/llama.cpp/build/bin, see build_llama_native.sh)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MOE=${MOE:-$ROOT/build/bin/moe}
LLAMA_BIN=${LLAMA_BIN:-/work/llama.cpp/build/bin}
OUT=$ROOT/tests/data/llamacpp
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
[[ -x "$LLAMA_BIN/llama_ref" ]] || { echo "no llama_ref in $LLAMA_BIN (run bench/llamacpp/build_llama_native.sh)" >&2; exit 1; }
mkdir -p "$OUT"
# Token ids (vocabulary 272): 80 for the logits, the first 20 as the greedy prompt.
awk 'BEGIN { s = 12345; for (i = 0; i < 80; ++i) { s = (s * 1103515245 + 12345) % 2147483648; printf "%d\n", s % 272 } }' \
  > "$OUT/arch_tokens.txt"
head -n 20 "$OUT/arch_tokens.txt" > "$TMP/prompt.txt"
while read -r name args; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  # shellcheck disable=SC2086
  "$MOE" synth $args -q -t 2 -o "$TMP/$name.gguf"
  "$LLAMA_BIN/llama_ref" logits -m "$TMP/$name.gguf" --tokens "$OUT/arch_tokens.txt" -o "$OUT/$name.logits.f32" 2> /dev/null
  "$LLAMA_BIN/llama_ref" greedy -m "$TMP/$name.gguf" --tokens "$TMP/prompt.txt" -n 24 2> /dev/null > "$OUT/$name.greedy24.tok"
  echo "$name: $(wc -c < "$OUT/$name.logits.f32") bytes of logits, greedy $(tr '\n' ' ' < "$OUT/$name.greedy24.tok")"
done < "$OUT/arch_shapes.txt"
