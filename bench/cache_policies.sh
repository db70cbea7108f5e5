#!/usr/bin/env bash
# Expert-cache policies and prefetch predictors on real routing: for each policy x predictor, `moe run`
# streams experts under MEM and generates N tokens after each prompt; prints hit rate, bytes read per
# token, prediction precision/recall and tok/s from --stats-json as a markdown table.
#
#   bench/cache_policies.sh MODEL MEM TABLE_TEXT PROMPT_FILE...
#   env: N (tokens to generate, 128), MOE_BIN (build/bin/moe), SEED (1; sampling at the default temperature)
#
# TABLE_TEXT trains the transition table (`moe route-stats`); use text disjoint from the prompts.
# Runs are short and sequential: hit rates and bytes are exact counts, tok/s is noisy.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
MOE_BIN=${MOE_BIN:-$(dirname "$HERE")/build/bin/moe}
MODEL=${1:?usage: cache_policies.sh MODEL MEM TABLE_TEXT PROMPT...}
MEM=${2:?mem}
TABLE_TEXT=${3:?table text}
shift 3
N=${N:-128}
SEED=${SEED:-1}
WORK=$(mktemp -d /tmp/moe-policies.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
"$MOE_BIN" route-stats -m "$MODEL" -f "$TABLE_TEXT" -o "$WORK/table.gguf" > "$WORK/route-stats.txt" 2>&1 ||
  { cat "$WORK/route-stats.txt" >&2; exit 1; }
for prompt in "$@"; do
  for policy in distance lru lfu arc layer; do
    for pred in none gate transition; do
      flags=(--cache-policy "$policy" --predictor "$pred")
      [[ $pred == transition ]] && flags+=(--transitions "$WORK/table.gguf")
      "$MOE_BIN" run -m "$MODEL" -f "$prompt" -n "$N" --seed "$SEED" --mem "$MEM" "${flags[@]}" \
        --stats-json "$WORK/$(basename "$prompt").$policy.$pred.json" > /dev/null 2> "$WORK/err.txt" ||
        { cat "$WORK/err.txt" >&2; exit 1; }
    done
  done
done
python3 - "$WORK" "$@" <<'PY'
import glob, json, os, sys
work, prompts = sys.argv[1], sys.argv[2:]
print("| prompt | policy | predictor | hit rate | MiB read / token | precision | recall | tok/s |")
print("|---|---|---|---|---|---|---|---|")
for p in prompts:
    for policy in ("distance", "lru", "lfu", "arc", "layer"):
        for pred in ("none", "gate", "transition"):
            j = json.load(open(f"{work}/{os.path.basename(p)}.{policy}.{pred}.json"))
            prec = f"{j['prediction_precision']:.2f}" if pred != "none" else "-"
            rec = f"{j['prediction_recall']:.2f}" if pred != "none" else "-"
            print(f"| {os.path.basename(p)} | {policy} | {pred} | {j['hit_rate']:.3f} | "
                  f"{j['bytes_read_per_token'] / 2**20:.2f} | {prec} | {rec} | {j['tok_s']:.0f} |")
PY
