#!/usr/bin/env bash
# Load and soak benchmark for `moe serve` (not in CI; docs/server.md has the results and the method).
#
#   bench/serve_load.sh [load] [schedule] [soak]        (all three by default)
#
# Model: the OLMoE-1B-7B shape at Q4_K_M, written by `moe synth` into $TMP_DIR if it is not there
# (about 4 GB, random weights: routing is near uniform, the worst case for batching).
# load: 1, 2, 4, 8 and 16 concurrent streaming clients ($CLIENTS), each sending $REQS completions of
#   $MAX_TOKENS tokens back to back, in $ROUNDS rounds whose order alternates (1..16, then 16..1), all
#   against one server with --parallel 16. Reports total tok/s (median, min, max) and its ratio to one
#   client in the same run, time to first token and inter-token latency (p50/p99), and from the
#   server's own counters the decode steps: rows per step, distinct experts per MoE layer and step,
#   decode tok/s, and the fraction of min(prefill tok/s, memory roofline of the expert union) reached.
#   The roofline of a step of B rows that reads U distinct experts per MoE layer is
#   B * bandwidth / (non-expert bytes per token + MoE layers * U * bytes per expert); bandwidth and
#   prefill tok/s come from `moe bench` on the same model just before.
# schedule: fcfs against --schedule expert with 16 streaming clients, more than a step takes, and the
#   experts streamed under --mem (below); expert bytes read per token and tok/s.
# soak: $SOAK short requests from $SOAK_CONC workers (streamed, whole, abandoned after the first chunk,
#   malformed), after $SOAK_WARMUP of the same to warm up; checks zero 5xx, the server alive, every
#   malformed request answered 4xx in OpenAI's error shape, and RSS at the end within 10% of RSS after
#   the warm-up. SOAK_MODEL runs it on another model (its checks are about the server, not the model).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MOE=${MOE:-$ROOT/build/bin/moe}
TMP_DIR=${TMP_DIR:-/work/tmp-server}
MODEL=${MODEL:-$TMP_DIR/olmoe-1b-7b-Q4_K_M.gguf}
THREADS=${THREADS:-2}
CLIENTS=${CLIENTS:-"1 2 4 8 16"}
ROUNDS=${ROUNDS:-2}
REQS=${REQS:-2}
MAX_TOKENS=${MAX_TOKENS:-64}
PROMPT_WORDS=${PROMPT_WORDS:-16}
SOAK=${SOAK:-10000}
SOAK_WARMUP=${SOAK_WARMUP:-1000}
SOAK_CONC=${SOAK_CONC:-8}
SERVE_FLAGS=${SERVE_FLAGS:-}
OUT=${OUT:-$TMP_DIR/serve_load}
WHAT=${*:-load schedule soak}
mkdir -p "$OUT"

if [[ ! -f $MODEL ]]; then
  echo "writing $MODEL (moe synth, about a minute)" >&2
  "$MOE" synth --shape olmoe-1b-7b --type Q4_K_M --unique-rows 512 -t "$THREADS" -o "$MODEL" >&2
fi

LOG=$OUT/serve.log
start_server() {
  "$MOE" serve -m "$MODEL" --port 0 -t "$THREADS" "$@" $SERVE_FLAGS 2>"$LOG" &
  SERVER=$!
  for _ in $(seq 1 1200); do
    PORT=$(sed -n 's|^moe serve: http://[^:]*:\([0-9]*\) .*|\1|p' "$LOG" | head -1)
    [[ -n $PORT ]] && break
    kill -0 "$SERVER" 2>/dev/null || { cat "$LOG" >&2; exit 1; }
    sleep 0.1
  done
  URL=http://127.0.0.1:$PORT
  echo "server: $(grep '^moe serve: http' "$LOG")" >&2
}
stop_server() {
  kill -TERM "$SERVER" 2>/dev/null || true
  wait "$SERVER" || { echo "the server did not stop cleanly" >&2; tail -5 "$LOG" >&2; }
}
trap 'kill "${SERVER:-0}" 2>/dev/null || true' EXIT
metrics() { curl -sf "$URL/metrics" > "$1"; }

if [[ $WHAT == *load* ]]; then
  echo "moe bench (prefill tok/s, memory bandwidth) on $MODEL" >&2
  "$MOE" bench -m "$MODEL" -t "$THREADS" -p 512 -n 32 -r 2 --json > "$OUT/bench.json"
  "$MOE" info -m "$MODEL" --json > "$OUT/info.json"
  start_server --parallel 16 -c 512 --step-tokens 128 --queue 256
  node "$ROOT/bench/serve_load.mjs" load "$URL" 1 1 16 "$PROMPT_WORDS" > /dev/null  # warm-up
  : > "$OUT/load.jsonl"
  for round in $(seq 1 "$ROUNDS"); do
    order=$CLIENTS
    (( round % 2 == 0 )) && order=$(echo "$CLIENTS" | tr ' ' '\n' | tac | tr '\n' ' ')
    for c in $order; do
      metrics "$OUT/m0.txt"
      line=$(node "$ROOT/bench/serve_load.mjs" load "$URL" "$c" "$REQS" "$MAX_TOKENS" "$PROMPT_WORDS")
      metrics "$OUT/m1.txt"
      echo "round $round, $c clients: $line" >&2
      python3 - "$OUT/m0.txt" "$OUT/m1.txt" "$line" "$round" >> "$OUT/load.jsonl" <<'PY'
import json, sys
def read(p):
    d = {}
    for l in open(p):
        if l.startswith('#') or not l.strip(): continue
        k, v = l.rsplit(' ', 1)
        d[k] = float(v)
    return d
a, b = read(sys.argv[1]), read(sys.argv[2])
r = json.loads(sys.argv[3]); r['round'] = int(sys.argv[4])
for k in ['moe_decode_steps_total', 'moe_decode_step_rows_total', 'moe_decode_step_seconds_total',
          'moe_decode_step_distinct_experts_total', 'moe_decode_step_moe_layers_total']:
    r[k] = b.get(k, 0) - a.get(k, 0)
print(json.dumps(r))
PY
    done
  done
  stop_server
  python3 - "$OUT/load.jsonl" "$OUT/bench.json" "$OUT/info.json" <<'PY' | tee "$OUT/load_table.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
bench, info = json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
bw = bench['mem_bw_gbps'] * 1e9
pp = bench['pp_tok_s']
n_moe, k = info['n_moe_layers'], info['n_expert_used']
expert_bytes = info['bytes_by_role']['experts'] / (n_moe * info['n_expert'])
non_expert = info['active_bytes_per_token'] - n_moe * k * expert_bytes
print(f"model {info['file']}: {info['n_layer']} layers, {info['n_expert']} experts top-{k}, "
      f"{expert_bytes / 2**20:.2f} MiB per expert, {non_expert / 2**20:.0f} MiB non-expert per token")
print(f"moe bench: pp512 {pp:.1f} tok/s, tg {bench['tg_tok_s']:.1f} tok/s, memory bandwidth {bw / 1e9:.1f} GB/s "
      f"(probe), threads {bench['threads']}\n")
print("| clients | total tok/s median [min, max] | vs 1 client | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) | "
      "per-stream tok/s | rows per decode step | experts per layer per step | server decode tok/s | "
      "roofline of the union (tok/s) | min(prefill, roofline) | fraction |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
by = {}
for r in rows: by.setdefault(r['clients'], []).append(r)
base = statistics.median(r['tok_s'] for r in by[min(by)])
for c in sorted(by):
    rs = by[c]
    tok = [r['tok_s'] for r in rs]
    med = lambda key: statistics.median(r[key] for r in rs)
    steps = sum(r['moe_decode_steps_total'] for r in rs)
    rows_step = sum(r['moe_decode_step_rows_total'] for r in rs) / max(1, steps)
    u = sum(r['moe_decode_step_distinct_experts_total'] for r in rs) / max(1, sum(r['moe_decode_step_moe_layers_total'] for r in rs))
    dec = sum(r['moe_decode_step_rows_total'] for r in rs) / max(1e-9, sum(r['moe_decode_step_seconds_total'] for r in rs))
    roof = rows_step * bw / (non_expert + n_moe * u * expert_bytes)
    target = min(pp, roof)
    print(f"| {c} | {statistics.median(tok):.1f} [{min(tok):.1f}, {max(tok):.1f}] | {statistics.median(tok) / base:.2f}x | "
          f"{med('ttft_p50_ms'):.0f} / {med('ttft_p99_ms'):.0f} | {med('itl_p50_ms'):.1f} / {med('itl_p99_ms'):.1f} | "
          f"{med('per_stream_tok_s'):.1f} | {rows_step:.2f} | {u:.1f} | {dec:.1f} | {roof:.1f} | {target:.1f} | {dec / target:.2f} |")
PY
fi

if [[ $WHAT == *schedule* ]]; then
  # fcfs against --schedule expert with more decoding sequences than a step takes (--slots 16, --parallel
  # SCHED_PARALLEL) and the experts streamed under --mem SCHED_MEM: expert bytes read per generated token
  # and total tok/s, alternating the two policies for $ROUNDS rounds, each on a fresh server.
  SCHED_MEM=${SCHED_MEM:-2500M}
  SCHED_PARALLEL=${SCHED_PARALLEL:-4}
  : > "$OUT/schedule.jsonl"
  for round in $(seq 1 "$ROUNDS"); do
    order="fcfs expert"
    (( round % 2 == 0 )) && order="expert fcfs"
    for pol in $order; do
      start_server --slots 16 --parallel "$SCHED_PARALLEL" -c 512 --step-tokens 128 --queue 64 --mem "$SCHED_MEM" \
        --schedule "$pol"
      node "$ROOT/bench/serve_load.mjs" load "$URL" 4 1 8 "$PROMPT_WORDS" > /dev/null  # warm-up
      metrics "$OUT/m0.txt"
      line=$(node "$ROOT/bench/serve_load.mjs" load "$URL" 16 "$REQS" "$MAX_TOKENS" "$PROMPT_WORDS")
      metrics "$OUT/m1.txt"
      stop_server
      echo "round $round, $pol: $line" >&2
      python3 - "$OUT/m0.txt" "$OUT/m1.txt" "$line" "$pol" >> "$OUT/schedule.jsonl" <<'PY'
import json, sys
def read(p):
    d = {}
    for l in open(p):
        if l.startswith('#') or not l.strip(): continue
        k, v = l.rsplit(' ', 1)
        d[k] = float(v)
    return d
a, b = read(sys.argv[1]), read(sys.argv[2])
r = json.loads(sys.argv[3]); r['policy'] = sys.argv[4]
for k in ['moe_expert_bytes_read_total', 'moe_generated_tokens_total', 'moe_expert_store_hits_total',
          'moe_expert_store_misses_total', 'moe_decode_step_distinct_experts_total', 'moe_decode_step_moe_layers_total']:
    r[k] = b.get(k, 0) - a.get(k, 0)
print(json.dumps(r))
PY
    done
  done
  python3 - "$OUT/schedule.jsonl" "$SCHED_MEM" "$SCHED_PARALLEL" <<'PY' | tee "$OUT/schedule_table.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"16 streaming clients, --slots 16 --parallel {sys.argv[3]}, --mem {sys.argv[2]}\n")
print("| schedule | total tok/s median [min, max] | expert MiB read per token | store hit rate | "
      "experts per layer per decode step |")
print("|---|---|---|---|---|")
med = {}
for pol in ['fcfs', 'expert']:
    rs = [r for r in rows if r['policy'] == pol]
    tok = [r['tok_s'] for r in rs]
    per_tok = [r['moe_expert_bytes_read_total'] / max(1, r['moe_generated_tokens_total']) / 2**20 for r in rs]
    hits = sum(r['moe_expert_store_hits_total'] for r in rs)
    acq = hits + sum(r['moe_expert_store_misses_total'] for r in rs)
    u = sum(r['moe_decode_step_distinct_experts_total'] for r in rs) / max(1, sum(r['moe_decode_step_moe_layers_total'] for r in rs))
    med[pol] = (statistics.median(tok), statistics.median(per_tok))
    print(f"| {pol} | {statistics.median(tok):.1f} [{min(tok):.1f}, {max(tok):.1f}] | {statistics.median(per_tok):.2f} | "
          f"{hits / max(1, acq):.3f} | {u:.1f} |")
print(f"\nexpert / fcfs: tok/s {med['expert'][0] / med['fcfs'][0]:.2f}x, "
      f"bytes read per token {med['expert'][1] / max(1e-9, med['fcfs'][1]):.2f}x")
PY
fi

if [[ $WHAT == *soak* ]]; then
  # SOAK_MODEL: another model for the soak (its checks are about the server, not the model's speed).
  SOAK_MODEL=${SOAK_MODEL:-$MODEL}
  MODEL_SAVED=$MODEL
  MODEL=$SOAK_MODEL
  start_server --parallel 8 --slots 8 -c 256 --step-tokens 64 --queue 64
  MODEL=$MODEL_SAVED
  rss() { curl -sf "$URL/metrics" | sed -n 's/^moe_resident_memory_bytes //p'; }
  echo "soak warm-up: $SOAK_WARMUP requests" >&2
  node "$ROOT/bench/serve_load.mjs" soak "$URL" "$SOAK_WARMUP" "$SOAK_CONC" > "$OUT/soak_warmup.json"
  RSS0=$(rss)
  t0=$(date +%s)
  echo "soak: $SOAK requests from $SOAK_CONC workers" >&2
  node "$ROOT/bench/serve_load.mjs" soak "$URL" "$SOAK" "$SOAK_CONC" > "$OUT/soak.json"
  t1=$(date +%s)
  RSS1=$(rss)
  alive=$(curl -sf "$URL/health" >/dev/null && echo yes || echo no)
  metrics "$OUT/soak_metrics.txt"
  stop_server
  python3 - "$OUT/soak.json" "$RSS0" "$RSS1" "$alive" "$((t1 - t0))" "$OUT/soak_metrics.txt" <<'PY' | tee "$OUT/soak_table.md"
import json, sys
s = json.load(open(sys.argv[1]))
rss0, rss1, alive, secs = int(float(sys.argv[2])), int(float(sys.argv[3])), sys.argv[4], int(sys.argv[5])
server_5xx = sum(float(l.rsplit(' ', 1)[1]) for l in open(sys.argv[6])
                 if l.startswith('moe_requests_total{') and 'status="5' in l)
growth = (rss1 - rss0) / rss0
print(f"| requests | seconds | streamed / whole / abandoned / malformed | statuses | 5xx (client, server) | "
      f"malformed answered 4xx in OpenAI's shape | server alive | RSS after warm-up -> end |")
print("|---|---|---|---|---|---|---|---|")
c = s['counts']
print(f"| {s['total']} | {secs} | {c['streamed']} / {c['whole']} / {c['cancelled']} / {c['malformed']} | "
      f"{json.dumps(s['status'])} | {s['five_xx']}, {int(server_5xx)} | {s['malformed_4xx_shaped']} of {c['malformed']} | "
      f"{alive} | {rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB ({100 * growth:+.1f}%) |")
if s['n_errors']: print("errors:", s['n_errors'], s['errors'])
ok = s['five_xx'] == 0 and server_5xx == 0 and alive == 'yes' and s['malformed_4xx_shaped'] == c['malformed'] \
     and abs(growth) <= 0.10 and s['n_errors'] == 0
print("soak:", "PASS" if ok else "FAIL")
PY
fi
