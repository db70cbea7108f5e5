#!/usr/bin/env bash
# Decode speed of two moe builds on the same model, alternating A and B in one run (a regression check:
# the baseline build against a branch's). Prints each build's tg tok/s median [min, max] and B / A.
#
#   bench/ab_decode.sh MOE_A MOE_B MODEL [THREADS=2]
#   env: ROUNDS=6 (odd rounds run A first)  N=64 (tokens decoded per run)  REPS=2  DEPTH=0
set -euo pipefail
A=${1:?usage: ab_decode.sh MOE_A MOE_B MODEL [THREADS]}
B=${2:?moe B}
MODEL=${3:?model}
THREADS=${4:-2}
ROUNDS=${ROUNDS:-6}
N=${N:-64}
REPS=${REPS:-2}
DEPTH=${DEPTH:-0}
OUT=$(mktemp -d /tmp/moe-ab.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
run() { "$1" bench -m "$MODEL" -t "$THREADS" -p 0 -n "$N" -r "$REPS" --depth "$DEPTH" --json >> "$OUT/$2.jsonl"; }
for ((r = 1; r <= ROUNDS; r++)); do
  echo "ab_decode: round $r/$ROUNDS" >&2
  if ((r % 2)); then run "$A" a; run "$B" b; else run "$B" b; run "$A" a; fi
done
python3 - "$OUT/a.jsonl" "$OUT/b.jsonl" <<'PY'
import json, statistics, sys
def load(p):
    runs = [json.loads(l) for l in open(p) if l.strip()]
    return [r["tg_tok_s"] for r in runs], [r["roofline_frac"] for r in runs]
(ta, fa), (tb, fb) = load(sys.argv[1]), load(sys.argv[2])
for name, t, f in (("A", ta, fa), ("B", tb, fb)):
    print(f"{name}: tg {statistics.median(t):.2f} tok/s [{min(t):.2f}, {max(t):.2f}], roofline {statistics.median(f):.3f} "
          f"[{min(f):.3f}, {max(f):.3f}] over {len(t)} runs")
ratios = [b / a for a, b in zip(ta, tb)]
print(f"B / A per round: median {statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}]")
PY
