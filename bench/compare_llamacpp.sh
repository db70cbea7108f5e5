#!/usr/bin/env bash
# Compares `moe bench` with llama.cpp (and optionally a third llama-bench-compatible engine such as
# ik_llama.cpp) on the same GGUF file and thread count, alternating the engines round by round.
#
#   bench/compare_llamacpp.sh MODEL [THREADS=2]
#   env: ROUNDS=4 (rounds; each round runs every engine once, in an order rotated per round)
#        REPS=3 (repetitions inside each run)  P=512 (prompt sizes, comma-separated: P=512,2048)  N=64
#        MOE_BIN=path/to/moe (default: build/bin/moe, as `make build` leaves it)  MOE_ARGS=extra moe flags
#        LLAMA_BENCH=path to a native llama-bench (e.g. /work/llama.cpp/build/bin/llama-bench); unset: llama.cpp
#          runs through node-llama-cpp's prebuilt libraries (bench/llamacpp/bench.mjs, slower than native)
#        LLAMA_ARGS=extra llama-bench flags (e.g. "-fa 1")
#        THIRD_BENCH=path to any llama-bench-compatible binary (e.g. ik_llama.cpp's llama-bench); unset: two engines
#        THIRD_ARGS=its extra flags (e.g. "-rtr 1 -fa 1"); several configurations separated by ';' (e.g.
#          "-rtr 1;-rtr 0;-rtr 1 -fa 0") run as separate engines, alternated with the others, and the table
#          adds moe.cpp's ratio to the best of them per test  THIRD_NAME=its column label (default: third)
#        NLC_DIR=dir whose node_modules already holds node-llama-cpp (default: npm-install into a temp dir)
#        OUT=dir to keep the raw JSON lines (default: a temp dir)
#
# llama-bench runs go through `llama-bench -o jsonl`: its samples_ts (one tok/s per repetition) give the
# per-run median, min and max; peak RSS comes from /usr/bin/time. Per prompt size and for tg, the table
# shows the median of the per-run medians, [min, max] over every repetition, and moe.cpp's median over each
# other engine's. The script prints the load average before and after: read numbers taken on a busy
# machine as provisional. Nothing is installed into the repository.
set -euo pipefail
MODEL=${1:?usage: compare_llamacpp.sh MODEL [THREADS]}
THREADS=${2:-2}
ROUNDS=${ROUNDS:-4}
REPS=${REPS:-3}
P=${P:-512}
N=${N:-64}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
IFS=, read -r -a PS <<< "$P"

if [[ -z "${MOE_BIN:-}" ]]; then
  for c in "$ROOT/build/bin/moe"; do
    [[ -x "$c" ]] && MOE_BIN=$c && break
  done
fi
[[ -x "${MOE_BIN:-}" ]] || { echo "compare: no moe binary (set MOE_BIN)" >&2; exit 1; }
[[ -f "$MODEL" ]] || { echo "compare: no such model: $MODEL" >&2; exit 1; }
for p in "${PS[@]}"; do [[ "$p" =~ ^[0-9]+$ ]] || { echo "compare: P must be comma-separated integers: $P" >&2; exit 1; }; done
if [[ -n "${LLAMA_BENCH:-}" ]]; then
  [[ -x "$LLAMA_BENCH" ]] || { echo "compare: LLAMA_BENCH is not an executable: $LLAMA_BENCH" >&2; exit 1; }
else
  # shellcheck source=llamacpp/ensure_nlc.sh
  source "$HERE/llamacpp/ensure_nlc.sh"
  ensure_nlc
fi
if [[ -n "${THIRD_BENCH:-}" ]]; then
  [[ -x "$THIRD_BENCH" ]] || { echo "compare: THIRD_BENCH is not an executable: $THIRD_BENCH" >&2; exit 1; }
fi
OUT=${OUT:-$(mktemp -d /tmp/moe-compare.XXXXXX)}
mkdir -p "$OUT"
: > "$OUT/results.jsonl"
read -r -a MOE_EXTRA <<< "${MOE_ARGS:-}"
read -r -a LLAMA_EXTRA <<< "${LLAMA_ARGS:-}"
IFS=';' read -r -a THIRD_CONFIGS <<< "${THIRD_ARGS:-}"
((${#THIRD_CONFIGS[@]})) || THIRD_CONFIGS=("")

# Every run appends normalized lines {"engine", "test" (pp512, tg64), "samples" or median/min/max, ...}.
run_moe() {
  local i=0 p
  for p in "${PS[@]}"; do
    # tg and the bandwidth probe once per round, with the first prompt size.
    local n=0 bw=(--bw-gib 0)
    ((i == 0)) && n=$N && bw=()
    "$MOE_BIN" bench -m "$MODEL" -t "$THREADS" -p "$p" -n "$n" -r "$REPS" --json "${bw[@]}" "${MOE_EXTRA[@]}" \
      > "$OUT/last.json"
    python3 - "$OUT/last.json" >> "$OUT/results.jsonl" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
common = {"engine": "moe", "peak_rss_bytes": r["peak_rss_bytes"]}
if r["n_prompt"] > 0:
    print(json.dumps({**common, "test": f"pp{r['n_prompt']}", "median": r["pp_tok_s"], "min": r["pp_tok_s_min"],
                      "max": r["pp_tok_s_max"], "pp_gflops": r.get("pp_gflops", 0)}))
if r["n_gen"] > 0:
    print(json.dumps({**common, "test": f"tg{r['n_gen']}", "median": r["tg_tok_s"], "min": r["tg_tok_s_min"],
                      "max": r["tg_tok_s_max"], "roofline_frac": r.get("roofline_frac", 0),
                      "active_bytes_per_token": r["active_bytes_per_token"], "mem_bw_gbps": r.get("mem_bw_gbps", 0)}))
PY
    i=$((i + 1))
  done
}

# A llama-bench-compatible binary: one process for every prompt size and tg.
run_llama_bench() {  # ENGINE BINARY ARGS...
  local engine=$1 bin=$2
  shift 2
  # -o json (an array): both llama.cpp's and ik_llama.cpp's llama-bench have it (ik's has no jsonl).
  /usr/bin/time -f '%M' -o "$OUT/last.rss" "$bin" -m "$MODEL" -t "$THREADS" -p "$P" -n "$N" -r "$REPS" -o json "$@" \
    > "$OUT/last.json" 2> "$OUT/last.err" || { cat "$OUT/last.err" >&2; echo "compare: $engine failed" >&2; exit 1; }
  python3 - "$engine" "$OUT/last.json" "$OUT/last.rss" >> "$OUT/results.jsonl" <<'PY'
import json, statistics, sys
engine, rss = sys.argv[1], int(open(sys.argv[3]).read().split()[-1]) * 1024
# ik_llama.cpp's llama-bench prints warnings ("WARNING: ...") into its JSON on stdout: drop such lines.
for r in json.loads("".join(l for l in open(sys.argv[2]) if not l[:1].isalpha())):
    s = r.get("samples_ts") or [r["avg_ts"]]
    test = f"pp{r['n_prompt']}" if r["n_prompt"] > 0 else f"tg{r['n_gen']}"
    print(json.dumps({"engine": engine, "test": test, "median": statistics.median(s), "min": min(s), "max": max(s),
                      "peak_rss_bytes": rss}))
PY
}

run_llama() {
  if [[ -n "${LLAMA_BENCH:-}" ]]; then
    run_llama_bench llama "$LLAMA_BENCH" "${LLAMA_EXTRA[@]}"
    return
  fi
  local p i=0
  for p in "${PS[@]}"; do
    local n=0
    ((i == 0)) && n=$N
    NLC_DIR="$NLC_DIR" node "$HERE/llamacpp/bench.mjs" "$MODEL" "$THREADS" "$p" "$n" "$REPS" > "$OUT/last.json"
    python3 - "$OUT/last.json" >> "$OUT/results.jsonl" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c = {"engine": "llama", "peak_rss_bytes": r["peak_rss_bytes"]}
if r["n_prompt"] > 0:
    print(json.dumps({**c, "test": f"pp{r['n_prompt']}", "median": r["pp_tok_s"], "min": r["pp_tok_s_min"], "max": r["pp_tok_s_max"]}))
if r["n_gen"] > 0:
    print(json.dumps({**c, "test": f"tg{r['n_gen']}", "median": r["tg_tok_s"], "min": r["tg_tok_s_min"], "max": r["tg_tok_s_max"]}))
PY
    i=$((i + 1))
  done
}
# run_third K: the third engine in its K-th configuration, recorded as engine "thirdK".
run_third() {
  local extra
  read -r -a extra <<< "${THIRD_CONFIGS[$1]}"
  run_llama_bench "third$1" "$THIRD_BENCH" "${extra[@]}"
}

ENGINES=(moe llama)
if [[ -n "${THIRD_BENCH:-}" ]]; then
  for k in "${!THIRD_CONFIGS[@]}"; do ENGINES+=("third $k"); done
fi
echo "compare: load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for ((r = 0; r < ROUNDS; r++)); do
  order=()
  for ((k = 0; k < ${#ENGINES[@]}; k++)); do order+=("${ENGINES[$(((k + r) % ${#ENGINES[@]}))]}"); done
  echo "compare: round $((r + 1))/$ROUNDS: $(printf '%s, ' "${order[@]}")" >&2
  for e in "${order[@]}"; do
    read -r -a cmd <<< "$e"
    "run_${cmd[0]}" "${cmd[@]:1}"
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
echo "compare: load average after: $LOAD_AFTER" >&2

LLAMA_LABEL="llama.cpp"
[[ -z "${LLAMA_BENCH:-}" ]] && LLAMA_LABEL="llama.cpp (node)"
python3 - "$OUT/results.jsonl" "$MODEL" "$THREADS" "$LLAMA_LABEL" "${THIRD_NAME:-third}" "$LOAD_AFTER" \
  "${LLAMA_ARGS:-}" "${THIRD_ARGS:-}" <<'PY'
import json, statistics, sys
from collections import defaultdict
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
model, threads, llama_label, third_label, load, largs, targs = sys.argv[2:9]
tconfigs = targs.split(";") if targs else [""]
thirds = [f"third{k}" for k in range(len(tconfigs)) if any(r["engine"] == f"third{k}" for r in rows)]
engines = [e for e in ("moe", "llama") if any(r["engine"] == e for r in rows)] + thirds
label = {"moe": "moe.cpp", "llama": llama_label + (f" {largs}" if largs else "")}
for k, c in enumerate(tconfigs):
    label[f"third{k}"] = third_label + (f" {c.strip()}" if c.strip() else "")
by = defaultdict(list)
for r in rows:
    by[(r["engine"], r["test"])].append(r)
def order(t):
    return (t.startswith("tg"), int(t[2:]))
tests = sorted({r["test"] for r in rows}, key=order)
def agg(e, t):
    v = by.get((e, t))
    if not v:
        return None
    return statistics.median(r["median"] for r in v), min(r["min"] for r in v), max(r["max"] for r in v), len(v)
rounds = max(len(v) for v in by.values())
print(f"model {model}  threads {threads}  {rounds} rounds  load average after {load}")
print("tok/s: median of per-run medians [min, max over every repetition]; moe/X = moe.cpp median / X median (above 1: moe.cpp faster)")
w = 34
def short(e):
    return label[e].split()[0][:12] + (f"#{e[5:]}" if e.startswith("third") and len(thirds) > 1 else "")
best = len(thirds) > 1
print(f"{'test':<9}" + "".join(f"{label[e][:w - 2]:>{w}}" for e in engines) +
      "".join(f"{'moe/' + short(e):>21}" for e in engines if e != "moe") +
      (f"{'moe/best ' + third_label[:8]:>22}" if best else ""))
for t in tests:
    a = {e: agg(e, t) for e in engines}
    cells = "".join(f"{(f'{a[e][0]:.2f} [{a[e][1]:.2f}, {a[e][2]:.2f}]' if a[e] else '-'):>{w}}" for e in engines)
    m = a.get("moe")
    ratios = "".join(f"{(m[0] / a[e][0] if m and a[e] and a[e][0] else float('nan')):>21.3f}" for e in engines if e != "moe")
    if best:
        top = max((a[e][0] for e in thirds if a[e]), default=0)
        ratios += f"{(m[0] / top if m and top else float('nan')):>22.3f}"
    print(f"{t:<9}{cells}{ratios}")
if best:
    print("third-engine configurations: " + "; ".join(f"#{k} {label[f'third{k}']}" for k in range(len(tconfigs))))
rss = {e: statistics.median(r["peak_rss_bytes"] for r in rows if r["engine"] == e) / 2**20 for e in engines}
print("peak RSS MiB: " + ", ".join(f"{short(e)} {rss[e]:.0f}" for e in engines) +
      ("  (node's llama.cpp includes the node runtime)" if "node" in llama_label else ""))
pp = [r for r in rows if r["engine"] == "moe" and r["test"].startswith("pp") and r.get("pp_gflops")]
for t in sorted({r["test"] for r in pp}, key=order):
    g = statistics.median(r["pp_gflops"] for r in pp if r["test"] == t)
    print(f"moe.cpp {t}: {g:.1f} GFLOP/s of matmul (median)")
tg = [r for r in rows if r["engine"] == "moe" and r["test"].startswith("tg")]
if tg:
    fr = [r["roofline_frac"] for r in tg]
    print(f"moe.cpp decode against the bandwidth probe just before it: {statistics.median(fr):.3f} [{min(fr):.3f}, {max(fr):.3f}]")
PY
echo "compare: raw results in $OUT" >&2
