#!/usr/bin/env bash
# Runs a command inside a memory cgroup (v1) with a hard limit, starting from a cold page cache, so
# moe.cpp and llama.cpp can be compared under the same memory ceiling. Needs root (writes under
# /sys/fs/cgroup/memory and /proc/sys/vm/drop_caches).
#   bench/run_in_cgroup.sh NAME LIMIT_BYTES command [args...]
# Prints the cgroup's limit, peak usage and failcnt (reclaim events) to stderr afterwards.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 NAME LIMIT_BYTES command [args...]" >&2
  exit 2
fi
name=$1; limit=$2; shift 2
cg=/sys/fs/cgroup/memory/$name
[[ -d /sys/fs/cgroup/memory ]] || { echo "run_in_cgroup: no cgroup v1 memory controller here" >&2; exit 1; }
mkdir -p "$cg"
echo "$limit" > "$cg/memory.limit_in_bytes"
echo 0 > "$cg/memory.max_usage_in_bytes" 2>/dev/null || true
sync
echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || echo "run_in_cgroup: could not drop the page cache" >&2
rc=0
bash -c 'echo $$ > "$0/cgroup.procs"; shift; exec "$@"' "$cg" _ "$@" || rc=$?
echo "cgroup $name: limit $(cat "$cg/memory.limit_in_bytes") max_usage $(cat "$cg/memory.max_usage_in_bytes") failcnt $(cat "$cg/memory.failcnt")$([[ $rc -eq 137 ]] && echo ' (killed: out of memory)')" >&2
exit $rc
