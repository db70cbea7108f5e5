#!/usr/bin/env bash
# Compares `moe bench` with llama.cpp on the same GGUF file and thread count, alternating A/B.
#
#   bench/compare_llamacpp.sh MODEL [THREADS=2]
#   env: ROUNDS=4 (A/B rounds; odd rounds run moe first, even rounds llama.cpp first)
#        REPS=3 (repetitions inside each run)  P=512  N=64
#        MOE_BIN=path/to/moe (default: build/bin/moe, as `make build` leaves it)
#        NLC_DIR=dir whose node_modules already holds node-llama-cpp (default: npm-install into a temp dir)
#        OUT=dir to keep the raw JSON lines (default: a temp dir)
#
# llama.cpp comes from npm: @node-llama-cpp/linux-x64 ships prebuilt CPU libraries but no llama-bench
# binary, so bench/llamacpp/bench.mjs drives them through node-llama-cpp and measures the same things.
# Nothing is installed into the repository.
set -euo pipefail
MODEL=${1:?usage: compare_llamacpp.sh MODEL [THREADS]}
THREADS=${2:-2}
ROUNDS=${ROUNDS:-4}
REPS=${REPS:-3}
P=${P:-512}
N=${N:-64}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")

if [[ -z "${MOE_BIN:-}" ]]; then
  for c in "$ROOT/build/bin/moe"; do
    [[ -x "$c" ]] && MOE_BIN=$c && break
  done
fi
[[ -x "${MOE_BIN:-}" ]] || { echo "compare: no moe binary (set MOE_BIN)" >&2; exit 1; }
[[ -f "$MODEL" ]] || { echo "compare: no such model: $MODEL" >&2; exit 1; }

# shellcheck source=llamacpp/ensure_nlc.sh
source "$HERE/llamacpp/ensure_nlc.sh"
ensure_nlc
OUT=${OUT:-$(mktemp -d /tmp/moe-compare.XXXXXX)}
mkdir -p "$OUT"
: > "$OUT/moe.jsonl"
: > "$OUT/llama.jsonl"

run_moe() {
  "$MOE_BIN" bench -m "$MODEL" -t "$THREADS" -p "$P" -n "$N" -r "$REPS" --json >> "$OUT/moe.jsonl"
}
run_llama() {
  NLC_DIR="$NLC_DIR" node "$HERE/llamacpp/bench.mjs" "$MODEL" "$THREADS" "$P" "$N" "$REPS" >> "$OUT/llama.jsonl"
}

for ((r = 1; r <= ROUNDS; r++)); do
  echo "compare: round $r/$ROUNDS" >&2
  if ((r % 2)); then run_moe; run_llama; else run_llama; run_moe; fi
done

python3 - "$OUT/moe.jsonl" "$OUT/llama.jsonl" "$MODEL" "$THREADS" <<'PY'
import json, statistics, sys
moe = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
lla = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
model, threads = sys.argv[3], sys.argv[4]
def agg(runs, key):
    vals = [r[key] for r in runs]
    lo = [r.get(key + "_min", r[key]) for r in runs]
    hi = [r.get(key + "_max", r[key]) for r in runs]
    return statistics.median(vals), min(lo), max(hi)
m0 = moe[0]
print(f"model {model}  threads {threads}  rounds {len(moe)} x {m0['reps']} reps  "
      f"(medians of per-round medians; [min, max] over every repetition)")
print(f"{'metric':<16}{'moe.cpp':>30}{'llama.cpp':>30}{'moe/llama':>11}")
for key, label, unit in [("pp_tok_s", f"pp{m0['n_prompt']} tok/s", ""), ("tg_tok_s", f"tg{m0['n_gen']} tok/s", ""),
                         ("ttft_ms", "ttft ms", "")]:
    a, b = agg(moe, key), agg(lla, key)
    fa = f"{a[0]:.2f} [{a[1]:.2f}, {a[2]:.2f}]"
    fb = f"{b[0]:.2f} [{b[1]:.2f}, {b[2]:.2f}]"
    print(f"{label:<16}{fa:>30}{fb:>30}{a[0] / b[0] if b[0] else float('nan'):>11.3f}")
ra = statistics.median(r["peak_rss_bytes"] for r in moe) / 2**20
rb = statistics.median(r["peak_rss_bytes"] for r in lla) / 2**20
print(f"{'peak RSS MiB':<16}{ra:>30.0f}{rb:>30.0f}{ra / rb:>11.3f}   (llama.cpp's includes node, ~50-100 MiB)")
act = m0["active_bytes_per_token"]
bw = statistics.median(r["mem_bw_gbps"] for r in moe)
tga, tgb = agg(moe, "tg_tok_s")[0], agg(lla, "tg_tok_s")[0]
print(f"active bytes/token {act / 2**20:.1f} MiB; measured read bandwidth {bw:.1f} GB/s "
      f"-> decode roofline {bw * 1e9 / act:.1f} tok/s")
print(f"roofline fraction against that median: moe.cpp {act * tga / 1e9 / bw:.3f}, llama.cpp {act * tgb / 1e9 / bw:.3f}")
fr = agg(moe, "roofline_frac")
print(f"moe.cpp's decode runs against the probe taken just before each: {fr[0]:.3f} [{fr[1]:.3f}, {fr[2]:.3f}]")
PY
echo "compare: raw results in $OUT" >&2
