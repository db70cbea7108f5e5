#!/usr/bin/env bash
# Starts `moe serve` on a free port, runs a command against it, stops it. Used by the client tests.
#   run_with_server.sh MOE MODEL -- COMMAND... [-- SERVE FLAGS...]
# The command sees MOE_URL (http://127.0.0.1:PORT) and MOE_SERVE_LOG. Exit status: the command's.
set -euo pipefail
MOE=$1 MODEL=$2; shift 2
[[ ${1:-} == -- ]] && shift
cmd=()
while [[ $# -gt 0 && $1 != -- ]]; do cmd+=("$1"); shift; done
[[ ${1:-} == -- ]] && shift
LOG=$(mktemp /tmp/moe_serve_XXXXXX.log)
"$MOE" serve -m "$MODEL" --port 0 "$@" 2>"$LOG" &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -f "$LOG"; }
trap cleanup EXIT
PORT=
for _ in $(seq 1 600); do
  PORT=$(sed -n 's|^moe serve: http://[^:]*:\([0-9]*\) .*|\1|p' "$LOG" | head -1)
  [[ -n $PORT ]] && break
  kill -0 "$PID" 2>/dev/null || { echo "moe serve exited:"; cat "$LOG"; exit 1; }
  sleep 0.1
done
[[ -n $PORT ]] || { echo "moe serve did not start:"; cat "$LOG"; exit 1; }
export MOE_URL="http://127.0.0.1:$PORT" MOE_SERVE_LOG="$LOG"
set +e
"${cmd[@]}"
rc=$?
set -e
kill -TERM "$PID"
if ! wait "$PID"; then echo "moe serve did not stop cleanly:"; cat "$LOG"; rc=1; fi
exit $rc
