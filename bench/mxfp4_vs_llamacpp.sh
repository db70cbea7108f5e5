#!/usr/bin/env bash
# MXFP4 end to end: `moe bench` against native llama.cpp's llama-bench on the same MXFP4_MOE file, same
# thread count, alternating A/B. Without a MODEL it first writes one with `moe synth` (OLMoE-1B-7B shape,
# llama.cpp's MXFP4_MOE mix: MXFP4 experts, Q8_0 elsewhere; about 3.9 GB).
#
#   bench/mxfp4_vs_llamacpp.sh [MODEL] [THREADS=2]
#   env: ROUNDS=3 REPS=3 P=512 N=64  MOE_BIN (default build/bin/moe)
#        LLAMA_BENCH (default /work/llama.cpp/build/bin/llama-bench, a native -DGGML_NATIVE=ON build,
#        e.g. from bench/llamacpp/build_llama_native.sh)  WORK (where a synthesized model goes)
# Prints pp and tg tok/s for both (median with min and max over all repetitions) and the ratios.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
MOE_BIN=${MOE_BIN:-$ROOT/build/bin/moe}
LLAMA_BENCH=${LLAMA_BENCH:-/work/llama.cpp/build/bin/llama-bench}
THREADS=${2:-2}
ROUNDS=${ROUNDS:-3}
REPS=${REPS:-3}
P=${P:-512}
N=${N:-64}
[[ -x "$MOE_BIN" ]] || { echo "mxfp4 bench: no moe binary at $MOE_BIN" >&2; exit 1; }
[[ -x "$LLAMA_BENCH" ]] || { echo "mxfp4 bench: no llama-bench at $LLAMA_BENCH (set LLAMA_BENCH)" >&2; exit 1; }
MODEL=${1:-}
if [[ -z "$MODEL" ]]; then
  WORK=${WORK:-/tmp/moe-mxfp4-bench}
  mkdir -p "$WORK"
  MODEL="$WORK/olmoe-1b-7b-MXFP4_MOE.gguf"
  [[ -f "$MODEL" ]] || "$MOE_BIN" synth --shape olmoe-1b-7b --type MXFP4_MOE -o "$MODEL" -t "$THREADS"
fi
OUT=$(mktemp -d /tmp/moe-mxfp4-bench.XXXXXX)
run_moe() { "$MOE_BIN" bench -m "$MODEL" -t "$THREADS" -p "$P" -n "$N" -r "$REPS" --json >> "$OUT/moe.jsonl"; }
run_llama() {
  "$LLAMA_BENCH" -m "$MODEL" -t "$THREADS" -p "$P" -n "$N" -r "$REPS" -o jsonl >> "$OUT/llama.jsonl" 2> /dev/null
}
for ((r = 1; r <= ROUNDS; r++)); do
  echo "mxfp4 bench: round $r/$ROUNDS" >&2
  if ((r % 2)); then run_moe; run_llama; else run_llama; run_moe; fi
done
python3 - "$OUT/moe.jsonl" "$OUT/llama.jsonl" "$MODEL" "$THREADS" <<'PY'
import json, statistics, sys
moe = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
lla = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
def moe_vals(key):  # each run's median, and the extremes over all repetitions
    return [r[key] for r in moe], min(r[key + "_min"] for r in moe), max(r[key + "_max"] for r in moe)
def llama_vals(pp):
    v = []
    for r in lla:
        if (r["n_prompt"] > 0) == pp and (r["n_gen"] > 0) != pp:
            v += r.get("samples_ts") or [r["avg_ts"]]
    return v
print(f"model {sys.argv[3]}, {sys.argv[4]} threads, moe bench vs llama-bench (native), alternating rounds")
for name, mk, pp in (("pp", "pp_tok_s", True), ("tg", "tg_tok_s", False)):
    (a, alo, ahi), b = moe_vals(mk), llama_vals(pp)
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"{name}: moe {ma:.1f} [{alo:.1f}, {ahi:.1f}] tok/s, llama.cpp {mb:.1f} [{min(b):.1f}, {max(b):.1f}] "
          f"tok/s, ratio {ma / mb:.2f}x")
PY
