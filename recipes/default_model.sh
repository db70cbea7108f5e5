#!/usr/bin/env bash
# The recipe for moe.cpp's bundled default model: corpus -> tokenizer -> `moe train` -> per-domain test
# perplexity. Deterministic for a fixed seed and thread count; re-running resumes from the checkpoint.
#
#   recipes/default_model.sh            (or: make -f recipes/default_model.mk default-model)
#
# Environment: MOE (the CLI, default build/bin/moe), OUT (work dir, default build/recipe), THREADS (2),
# STEPS (4000: 8.2M tokens, about 45 minutes on 2 cores), PRESET (qwen3moe), NAME, EXTRA (more
# `moe train` flags; the dense and aux-loss-free comparisons of recipes/compare_routing.sh use it).
set -euo pipefail
cd "$(dirname "$0")/.."
MOE=${MOE:-build/bin/moe}
OUT=${OUT:-build/recipe}
THREADS=${THREADS:-2}
STEPS=${STEPS:-4000}
PRESET=${PRESET:-qwen3moe}
EXTRA=${EXTRA:-}
NAME=${NAME:-moe.cpp tiny qwen3moe (bible, python, fortunes)}
domains="bible python fortunes"

mkdir -p "$OUT"
[ -f "$OUT/corpus/MANIFEST.txt" ] || scripts/build_corpus.sh "$OUT/corpus" > /dev/null
train=() valid=() test=()
for d in $domains; do
  train+=("$OUT/corpus/$d/train.txt"); valid+=("$OUT/corpus/$d/valid.txt"); test+=("$OUT/corpus/$d/test.txt")
done
[ -f "$OUT/vocab.gguf" ] || "$MOE" train-tokenizer -o "$OUT/vocab.gguf" --vocab-size 4096 "${train[@]}"

# 4 layers, d=256, 8 experts of width 256, top-2 (the qwen3moe preset): 8.1M parameters, 16 MB in F16.
# Each step: 8 sequences x 256 tokens (2048 tokens). Switch balance loss 0.01 and z-loss 1e-3, as in the
# papers. No selection bias by default, so the file stays loadable by llama.cpp's qwen3moe.
# shellcheck disable=SC2086
"$MOE" train --preset "$PRESET" --vocab "$OUT/vocab.gguf" \
  --train "${train[@]}" --valid "${valid[@]}" --test "${test[@]}" \
  --steps "$STEPS" --batch 8 --seq 256 --lr 3e-3 --warmup 100 --wd 0.1 --clip 1.0 --seed 1 \
  --balance-coef 0.01 --z-loss-coef 1e-3 -t "$THREADS" \
  --eval-every 250 --eval-windows 16 --checkpoint "$OUT/checkpoint.gguf" --checkpoint-every 100 --resume \
  --log "$OUT/train_log.csv" --name "$NAME" --f16 -o "$OUT/model.gguf" $EXTRA \
  | tee "$OUT/report.txt"
