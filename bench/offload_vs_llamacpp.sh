#!/usr/bin/env bash
# Larger-than-memory decode: moe.cpp streaming experts under --mem vs llama.cpp (mmap on, weight repacking
# off, as `llama-cli --no-repack` runs), each inside the same memory cgroup, starting from a cold page
# cache (bench/run_in_cgroup.sh; needs root and cgroup v1). Alternates the two engines per limit.
#
#   bench/offload_vs_llamacpp.sh MODEL LIMIT... (bytes or with G/M suffix, e.g. 3G 2G)
#   env: THREADS (2), P (16 prompt tokens), N (32 decode steps), HEADROOM (150M: the part of the limit
#        left to the process itself, libraries and page-cache churn; moe gets --mem LIMIT-HEADROOM),
#        MOE_BIN, NLC_DIR, OUT (keep the JSON lines), LLAMA_BENCH (a native llama-bench, e.g.
#        /work/llama.cpp/build/bin/llama-bench: used instead of decode_bench on node-llama-cpp's prebuilt
#        libraries, which are slower than a native build; it runs with its defaults, mmap on, plus
#        LLAMA_ARGS, e.g. "-ot .*=CPU" to keep every weight in the mmap'd file instead of its repacked
#        anonymous copy, which a memory limit below the model size cannot hold), LLAMA_WARM (1: llama.cpp first reads the whole
#        file inside its cgroup, so its page cache starts as full as the limit allows; the default is
#        llama.cpp as it runs, from a cold page cache), MOE_PRELOAD (1: moe bench --preload, which
#        fills the expert pool before timing; the preload_s column)
# Prints a markdown table: tok/s of both, the ratio, peak memory of the cgroup, hit rate and bytes
# read per token for moe.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
MOE_BIN=${MOE_BIN:-$ROOT/build/bin/moe}
MODEL=${1:?usage: offload_vs_llamacpp.sh MODEL LIMIT...}
shift
THREADS=${THREADS:-2}
P=${P:-16}
N=${N:-32}
HEADROOM=${HEADROOM:-150M}
OUT=${OUT:-$(mktemp -d /tmp/moe-offload.XXXXXX)}
mkdir -p "$OUT"
if [[ -n ${LLAMA_BENCH:-} ]]; then
  LLAMA_BIN=$LLAMA_BENCH
else
  LLAMA_BIN=$("$HERE/llamacpp/build_decode_bench.sh" "$OUT/llama-build" | tail -1)
  # shellcheck disable=SC1091
  source "$OUT/llama-build/env"
  export GGML_BACKEND_DIR
fi
bytes() { numfmt --from=iec "$1"; }
: > "$OUT/results.jsonl"
for limit in "$@"; do
  lb=$(bytes "$limit")
  mem=$((lb - $(bytes "$HEADROOM")))
  for engine in moe llama; do
    echo "offload: $engine under $limit" >&2
    if [[ $engine == moe ]]; then
      cmd=("$MOE_BIN" bench -m "$MODEL" -t "$THREADS" -p "$P" -n "$N" -r 1 --bw-gib 0 --mem "$mem" --json)
      if [[ ${MOE_PRELOAD:-0} == 1 ]]; then cmd+=(--preload); fi
    else
      if [[ -n ${LLAMA_BENCH:-} ]]; then
        # llama-bench's JSON lines (one per test) folded into the keys decode_bench prints.
        cmd=(bash -c '"$@" | python3 -c "import json,sys
d={}
for l in sys.stdin:
    r=json.loads(l)
    d[\"tg_tok_s\" if r[\"n_gen\"] else \"pp_tok_s\"]=r[\"avg_ts\"]
print(json.dumps(d))"; exit ${PIPESTATUS[0]}' _ "$LLAMA_BIN" -m "$MODEL" -t "$THREADS" -p "$P" -n "$N" -r 1 -o jsonl ${LLAMA_ARGS:-})
      else
        cmd=("$LLAMA_BIN" "$MODEL" "$THREADS" "$P" "$N")
      fi
      if [[ ${LLAMA_WARM:-0} == 1 ]]; then
        cmd=(bash -c 'cat "$1" > /dev/null; shift; exec "$@"' _ "$MODEL" "${cmd[@]}")
      fi
    fi
    rc=0
    "$HERE/run_in_cgroup.sh" "moe-offload-$engine" "$lb" "${cmd[@]}" > "$OUT/$engine.$limit.json" \
      2> "$OUT/$engine.$limit.err" || rc=$?
    peak=$(sed -n 's/.*max_usage \([0-9]*\).*/\1/p' "$OUT/$engine.$limit.err" | tail -1)
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])) if sys.argv[5]=="0" else {}; d.update(engine=sys.argv[2], limit=sys.argv[3], cgroup_peak=int(sys.argv[4] or 0), rc=int(sys.argv[5])); print(json.dumps(d))' \
      "$OUT/$engine.$limit.json" "$engine" "$limit" "${peak:-0}" "$rc" >> "$OUT/results.jsonl"
  done
done
python3 - "$OUT/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {(r["limit"], r["engine"]): r for r in rows}
print("| limit | moe pp tok/s | llama.cpp pp tok/s | moe tg tok/s | llama.cpp tg tok/s | tg ratio | moe cgroup peak | llama.cpp cgroup peak | moe hit rate | moe MiB read/token | moe stall | moe preload s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for limit in dict.fromkeys(r["limit"] for r in rows):
    m, l = by[(limit, "moe")], by[(limit, "llama")]
    mt = m.get("tg_tok_s", 0.0) if m["rc"] == 0 else 0.0
    lt = l.get("tg_tok_s", 0.0) if l["rc"] == 0 else 0.0
    ratio = f"{mt / lt:.1f}x" if lt > 0 else ("llama.cpp failed (rc %d)" % l["rc"])
    mp = m.get("pp_tok_s", 0.0) if m["rc"] == 0 else 0.0
    lp = l.get("pp_tok_s", 0.0) if l["rc"] == 0 else 0.0
    print(f"| {limit} | {mp:.2f} | {lp:.2f} | {mt:.2f} | {lt:.2f} | {ratio} | {m['cgroup_peak'] / 2**30:.2f} GiB | {l['cgroup_peak'] / 2**30:.2f} GiB | "
          f"{m.get('hit_rate', float('nan')):.3f} | {m.get('bytes_read_per_token', 0) / 2**20:.1f} | {m.get('stall_frac', float('nan')):.2f} | "
          f"{m.get('preload_s', 0):.1f} |")
PY
echo "raw results: $OUT/results.jsonl" >&2
