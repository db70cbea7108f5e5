#!/usr/bin/env bash
# Prefill speed of two moe builds on the same model, alternating A and B in one run (the baseline build
# against a branch's). Prints per prompt size each build's pp tok/s and matmul GFLOP/s, median [min, max]
# over every repetition, and B / A.
#
#   bench/ab_prefill.sh MOE_A MOE_B MODEL [THREADS=2]
#   env: ROUNDS=4 (odd rounds run A first)  P=512 (comma-separated prompt sizes: P=512,2048,4096)  REPS=2
set -euo pipefail
A=${1:?usage: ab_prefill.sh MOE_A MOE_B MODEL [THREADS]}
B=${2:?moe B}
MODEL=${3:?model}
THREADS=${4:-2}
ROUNDS=${ROUNDS:-4}
P=${P:-512}
REPS=${REPS:-2}
IFS=, read -r -a PS <<< "$P"
OUT=$(mktemp -d /tmp/moe-ab.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
run() {
  local p
  for p in "${PS[@]}"; do
    "$1" bench -m "$MODEL" -t "$THREADS" -p "$p" -n 0 -r "$REPS" --bw-gib 0 --json >> "$OUT/$2.jsonl"
  done
}
echo "ab_prefill: load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for ((r = 1; r <= ROUNDS; r++)); do
  echo "ab_prefill: round $r/$ROUNDS" >&2
  if ((r % 2)); then run "$A" a; run "$B" b; else run "$B" b; run "$A" a; fi
done
python3 - "$OUT/a.jsonl" "$OUT/b.jsonl" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import json, statistics, sys
from collections import defaultdict
def load(path):
    by = defaultdict(list)
    for l in open(path):
        if l.strip():
            r = json.loads(l)
            by[r["n_prompt"]].append(r)
    return by
a, b = load(sys.argv[1]), load(sys.argv[2])
print(f"load average after: {sys.argv[3]}; tok/s median of per-run medians [min, max over every repetition]")
for p in sorted(a):
    line = f"pp{p:<6}"
    meds = []
    for name, runs in (("A", a[p]), ("B", b.get(p, []))):
        if not runs:
            continue
        m = statistics.median(r["pp_tok_s"] for r in runs)
        meds.append(m)
        g = statistics.median(r["pp_gflops"] for r in runs)
        line += (f"  {name}: {m:8.2f} [{min(r['pp_tok_s_min'] for r in runs):.2f}, "
                 f"{max(r['pp_tok_s_max'] for r in runs):.2f}] ({g:.1f} GFLOP/s)")
    if len(meds) == 2:
        line += f"  B/A {meds[1] / meds[0]:.3f}"
    print(line)
PY
