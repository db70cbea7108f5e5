#!/usr/bin/env bash
# Regenerates the results table of docs/compression.md (`make compression-table`): on the bundled trained model
# (8 experts per layer, top-2; trained on KJV, Python stdlib, fortunes), calibrates on each domain's valid split and
# evaluates every compressed file against the original on each domain's held-out test split:
#   - pruning by REAP, EASY-EP, frequency and random (3 seeds) to 6 and 4 of 8 experts (25% and 50% removed);
#   - M-SMoE merging to 6 and 4 of 8 (with and without neuron alignment) and naive averaging;
#   - TCESS: each domain's own expert set (4 of 8) on its domain and on the others, against frequency at 4 of 8;
#   - mixed precision (PMQ by the ILP, and frequency-only) against uniform expert types at the same bytes, one type
#     per (layer, projection) (standard GGUF) and one per expert (moe.cpp's per-expert layout).
# The table is written between the markers of docs/compression.md; the raw rows go to $WORK/results.tsv.
#
#   scripts/compression_table.sh   env: MOE (build/bin/moe), MODEL, CORPUS (build/corpus: scripts/build_corpus.sh
#                                   makes it), WORK (build/compression), WINDOWS (eval windows per domain, 8), CTX (256),
#                                   RESUME=1 (keep WORK's statistics and rows, run only the missing ones)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MOE=${MOE:-build/bin/moe}
MODEL=${MODEL:-models/tiny-qwen3moe-8x2-kjv-py-fortunes-F16.gguf}
CORPUS=${CORPUS:-build/corpus}
WORK=${WORK:-build/compression}
WINDOWS=${WINDOWS:-8}
CTX=${CTX:-256}
DOMAINS=(bible python fortunes)
[[ -f "$CORPUS/MANIFEST.txt" ]] || bash scripts/build_corpus.sh "$CORPUS"
mkdir -p "$WORK"
TSV=$WORK/results.tsv
TIMES=$WORK/times.tsv
if [[ "${RESUME:-0}" != 1 ]]; then
  : > "$TSV"
  : > "$TIMES"
  rm -f "$WORK/stats.gguf"
fi
touch "$TSV" "$TIMES"
TEST=()
VALID=()
for d in "${DOMAINS[@]}"; do TEST+=("$CORPUS/$d/test.txt"); VALID+=("$CORPUS/$d/valid.txt"); done
EVAL=(--eval "${TEST[@]}" --eval-ctx "$CTX" --eval-windows "$WINDOWS" -q)

timed() {  # label, command...
  local label=$1; shift
  local t0 t1; t0=$(date +%s.%N)
  "$@" > "$WORK/last.log"
  t1=$(date +%s.%N)
  awk -v l="$label" -v a="$t0" -v b="$t1" 'BEGIN { printf "%s\t%.1f\n", l, b - a }' >> "$TIMES"
}
# Each compressed file's rows get a label: row-name<TAB>file<TAB>...
run_eval() {  # row name, command...
  local row=$1; shift
  if grep -q "^$row	" "$TSV"; then return; fi
  echo "$row"
  local before; before=$(wc -l < "$TSV")
  timed "$row" "$@" --eval-tsv "$TSV"
  sed -i "$((before + 1)),\$ s|^|$row\t|" "$TSV"
}

echo "calibrating on the valid splits..."
[[ -f "$WORK/stats.gguf" ]] || timed calibrate "$MOE" calibrate -q -m "$MODEL" -f "${VALID[@]}" --label "${DOMAINS[@]}" -c "$CTX" --max-windows 16 \
  --recon-types q2_K,q3_K,q4_K,q5_K,q6_K,q8_0 -o "$WORK/stats.gguf"
[[ -f "$WORK/calibrate.log" && "${RESUME:-0}" == 1 ]] || cp "$WORK/last.log" "$WORK/calibrate.log"
for crit in reap easy-ep frequency; do
  for keep in 6 4; do
    run_eval "prune/$crit/$keep" "$MOE" prune -m "$MODEL" --stats "$WORK/stats.gguf" --criterion "$crit" \
      --keep-experts "$keep" -o "$WORK/p.gguf" "${EVAL[@]}"
  done
done
for seed in 1 2 3; do
  for keep in 6 4; do
    run_eval "prune/random$seed/$keep" "$MOE" prune -m "$MODEL" --stats "$WORK/stats.gguf" --criterion random \
      --seed "$seed" --keep-experts "$keep" -o "$WORK/p.gguf" "${EVAL[@]}"
  done
done
for d in "${DOMAINS[@]}"; do
  run_eval "tcess/$d/4" "$MOE" prune -m "$MODEL" --stats "$WORK/stats.gguf" --criterion tcess --label "$d" \
    --keep-experts 4 -o "$WORK/p.gguf" "${EVAL[@]}"
done
# M-SMoE merging to the same counts: with neuron alignment (the paper's method), without it, and the naive baseline
# (uniform averaging, no alignment). The centres are frequency pruning's kept experts, so prune/frequency is the same
# choice without the averaging.
for keep in 6 4; do
  run_eval "merge/msmoe/$keep" "$MOE" merge -m "$MODEL" --stats "$WORK/stats.gguf" --method msmoe --align \
    --keep-experts "$keep" -o "$WORK/p.gguf" "${EVAL[@]}"
  run_eval "merge/msmoe-noalign/$keep" "$MOE" merge -m "$MODEL" --stats "$WORK/stats.gguf" --method msmoe \
    --keep-experts "$keep" -o "$WORK/p.gguf" "${EVAL[@]}"
  run_eval "merge/naive/$keep" "$MOE" merge -m "$MODEL" --stats "$WORK/stats.gguf" --method msmoe --weighting uniform \
    --keep-experts "$keep" -o "$WORK/p.gguf" "${EVAL[@]}"
done
# Mixed precision at the size of uniform Q3_K and Q4_K experts (the rest of the model as Q8_0 in every file).
# Without super-expert protection: uniform types do not protect either, and at Q3_K's size the protected layer at
# the highest candidate leaves no allocation that fits.
for base in q3_K q4_K; do
  run_eval "quant/uniform/$base" "$MOE" quantize -m "$MODEL" --type Q8_0 --expert-type "$base" \
    -o "$WORK/u-$base.gguf" "${EVAL[@]}"
  [[ -f "$WORK/u-$base.gguf" ]] || "$MOE" quantize -q -m "$MODEL" --type Q8_0 --expert-type "$base" -o "$WORK/u-$base.gguf" > /dev/null
  size=$(stat -c %s "$WORK/u-$base.gguf")
  # The budget is the uniform file's tensor bytes (the metadata is the same in both files).
  meta=$("$MOE" tensors -m "$WORK/u-$base.gguf" | awk -F'\t' '{ s += $4 } END { printf "%d", s }')
  echo "mixed at $base ($meta bytes of tensors, file $size bytes)"
  run_eval "quant/pmq/$base" "$MOE" quantize -m "$MODEL" --type Q8_0 --mixed --no-protect --budget "$meta" \
    --stats "$WORK/stats.gguf" -o "$WORK/m.gguf" "${EVAL[@]}"
  run_eval "quant/freq-only/$base" "$MOE" quantize -m "$MODEL" --type Q8_0 --mixed --no-protect --beta 0 --budget "$meta" \
    --stats "$WORK/stats.gguf" -o "$WORK/m.gguf" "${EVAL[@]}"
  # The same budget, one type per expert matrix (moe.cpp's own layout, docs/compression.md), and one per expert.
  run_eval "quant/pmq-pe/$base" "$MOE" quantize -m "$MODEL" --type Q8_0 --mixed --layout per-expert --no-protect \
    --budget "$meta" --stats "$WORK/stats.gguf" -o "$WORK/m.gguf" "${EVAL[@]}"
  run_eval "quant/freq-only-pe/$base" "$MOE" quantize -m "$MODEL" --type Q8_0 --mixed --layout per-expert --no-protect \
    --beta 0 --budget "$meta" --stats "$WORK/stats.gguf" -o "$WORK/m.gguf" "${EVAL[@]}"
  run_eval "quant/pmq-pew/$base" "$MOE" quantize -m "$MODEL" --type Q8_0 --mixed --layout per-expert --expert-unit expert \
    --no-protect --budget "$meta" --stats "$WORK/stats.gguf" -o "$WORK/m.gguf" "${EVAL[@]}"
done
rm -f "$WORK"/p.gguf "$WORK"/u-*.gguf "$WORK"/m.gguf
bash scripts/compression_report.sh "$WORK" docs/compression.md
