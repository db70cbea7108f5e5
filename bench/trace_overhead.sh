#!/usr/bin/env bash
# What recording a routing trace costs in decode speed: `moe run` with and without --trace (and with
# every optional field), alternating in one run, several rounds; medians with min and max, and each
# variant's speed as a ratio to the untraced run of the same round. Also checks that the generated ids
# are identical with and without tracing (recording never changes the logits).
#
#   bench/trace_overhead.sh [MODEL...]       (default: the bundled model)
#   env: MOE (build/bin/moe), ROUNDS (7), N (128 tokens decoded), THREADS (2), TMP (scratch dir)
set -euo pipefail
cd "$(dirname "$0")/.."
MOE=${MOE:-build/bin/moe}
ROUNDS=${ROUNDS:-7}
N=${N:-128}
THREADS=${THREADS:-2}
TMP=${TMP:-$(mktemp -d)}
mkdir -p "$TMP"
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(models/tiny-qwen3moe-8x2-kjv-py-fortunes-F16.gguf)
prompt="And it came to pass, when the king"

variants=(plain trace trace_all)
flags_plain=()
flags_trace=(--trace "$TMP/t.trace")
flags_trace_all=(--trace "$TMP/t.trace" --trace-expert-stats --trace-lookahead 8 --trace-probs)

run_one() {  # model, variant -> prints tok/s; writes ids to $TMP/ids.<variant>
  local model=$1 v=$2
  local -n fl="flags_$v"
  "$MOE" run -m "$model" -p "$prompt" -n "$N" --temp 0 --ignore-eos -t "$THREADS" --ids-out "$TMP/ids.$v" "${fl[@]}" \
    2> "$TMP/err" > /dev/null
  sed -n 's/.*generated [0-9]* tokens (\([0-9.]*\) tok\/s).*/\1/p' "$TMP/err"
}

for model in "${models[@]}"; do
  echo "== $model: $N tokens decoded, $ROUNDS rounds, alternating, $THREADS threads"
  declare -A speeds=()
  for ((r = 0; r < ROUNDS; ++r)); do
    for v in "${variants[@]}"; do speeds[$v]+="$(run_one "$model" "$v") "; done
    for v in trace trace_all; do
      cmp -s "$TMP/ids.plain" "$TMP/ids.$v" || { echo "generated ids differ with $v" >&2; exit 1; }
    done
  done
  python3 - "${speeds[plain]}" "${speeds[trace]}" "${speeds[trace_all]}" <<'PY'
import statistics, sys
plain, trace, full = ([float(x) for x in a.split()] for a in sys.argv[1:4])
def row(name, v, base):
    ratios = [a / b for a, b in zip(v, base)]
    print(f"  {name:<40} median {statistics.median(v):8.2f} tok/s  [{min(v):.2f}, {max(v):.2f}]   "
          f"ratio to untraced {statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}]")
row("untraced", plain, plain)
row("--trace", trace, plain)
row("--trace + expert stats, lookahead 8, probs", full, plain)
PY
  unset speeds
done
rm -rf "$TMP"
