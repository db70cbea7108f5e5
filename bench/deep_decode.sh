#!/usr/bin/env bash
# Decode speed at depth 0 against depth D (tokens already in the KV cache), alternating, for moe and, when
# a native llama-bench is given, llama.cpp on the same file: does decoding collapse with a long context?
# Also prints moe's KV cache bytes at depth D against the expanded form (full per-head K and V).
#
#   bench/deep_decode.sh MODEL [DEPTH=4096] [THREADS=2]
#   env: ROUNDS=3 (alternating rounds)  N=32 (tokens decoded per run)  REPS=2
#        MOE_BIN (default build/bin/moe)  LLAMA_BENCH (path to a native llama-bench; unset = moe only)
#        OUT (dir for the raw JSON; default a temp dir)
set -euo pipefail
MODEL=${1:?usage: deep_decode.sh MODEL [DEPTH] [THREADS]}
DEPTH=${2:-4096}
THREADS=${3:-2}
ROUNDS=${ROUNDS:-3}
N=${N:-32}
REPS=${REPS:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MOE_BIN=${MOE_BIN:-$ROOT/build/bin/moe}
OUT=${OUT:-$(mktemp -d /tmp/moe-deep.XXXXXX)}
mkdir -p "$OUT"
: > "$OUT/moe.jsonl"
: > "$OUT/llama.jsonl"
for ((r = 1; r <= ROUNDS; r++)); do
  for d in 0 "$DEPTH"; do
    echo "deep_decode: round $r/$ROUNDS depth $d" >&2
    "$MOE_BIN" bench -m "$MODEL" -t "$THREADS" -p 0 -n "$N" -r "$REPS" --depth "$d" --json >> "$OUT/moe.jsonl"
    if [[ -n "${LLAMA_BENCH:-}" ]]; then
      "$LLAMA_BENCH" -m "$MODEL" -t "$THREADS" -p 0 -n "$N" -r "$REPS" -d "$d" -o jsonl 2> /dev/null >> "$OUT/llama.jsonl"
    fi
  done
done
python3 - "$OUT/moe.jsonl" "$OUT/llama.jsonl" "$DEPTH" <<'PY'
import json, statistics, sys
moe = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
lla = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
depth = int(sys.argv[3])
def stats(vals):
    return statistics.median(vals), min(vals), max(vals)
def show(name, at0, atd):
    m0, m1 = stats(at0), stats(atd)
    print(f"{name:10s} depth 0: {m0[0]:7.2f} tok/s [{m0[1]:.2f}, {m0[2]:.2f}]   depth {depth}: {m1[0]:7.2f} tok/s "
          f"[{m1[1]:.2f}, {m1[2]:.2f}]   ratio {m1[0] / m0[0]:.3f}")
show("moe", [r["tg_tok_s"] for r in moe if r["depth"] == 0], [r["tg_tok_s"] for r in moe if r["depth"] == depth])
deep = [r for r in moe if r["depth"] == depth][0]
print(f"moe KV cache at depth {depth}: {deep['kv_cache_bytes'] / 2**20:.1f} MiB as allocated, "
      f"{deep['kv_cache_bytes_expanded'] / 2**20:.1f} MiB as full per-head K and V "
      f"({deep['kv_cache_bytes_expanded'] / deep['kv_cache_bytes']:.1f}x); "
      f"{deep['kv_bytes_per_token'] / 2**20:.1f} MiB read per decoded token")
if lla:
    show("llama.cpp", [r["avg_ts"] for r in lla if r["n_depth"] == 0], [r["avg_ts"] for r in lla if r["n_depth"] == depth])
PY
