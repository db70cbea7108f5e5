#!/usr/bin/env bash
# The recipe for moe.cpp's bundled default model: corpus -> tokenizer -> `moe train` -> per-domain test
# perplexity and expert usage. Deterministic for a fixed seed and thread count; re-running resumes from
# the checkpoint.
#
#   recipes/default_model.sh      (or `make default-model`, which also installs the result into models/)
#
# Environment: MOE (the CLI, default build/bin/moe), OUT (work dir, default build/recipe), THREADS (2),
# STEPS (4000: 8.2M tokens, about 45 minutes on 2 cores), PRESET (qwen3moe), NAME, BALANCE (Switch
# load-balancing loss coefficient, 0.01), BIAS_RATE (aux-loss-free selection-bias rate, 0 = off),
# CORPUS and VOCAB (reuse another run's corpus/tokenizer), EXTRA (more `moe train` flags).
# recipes/compare_routing.sh runs the dense / MoE / aux-loss-free comparison through this script.
set -euo pipefail
cd "$(dirname "$0")/.."
MOE=${MOE:-build/bin/moe}
OUT=${OUT:-build/recipe}
THREADS=${THREADS:-2}
STEPS=${STEPS:-4000}
PRESET=${PRESET:-qwen3moe}
BALANCE=${BALANCE:-0.01}
BIAS_RATE=${BIAS_RATE:-0}
EXTRA=${EXTRA:-}
NAME=${NAME:-moe.cpp tiny qwen3moe (bible, python, fortunes)}
CORPUS=${CORPUS:-$OUT/corpus}
VOCAB=${VOCAB:-$OUT/vocab.gguf}
domains="bible python fortunes"

mkdir -p "$OUT"
[ -f "$CORPUS/MANIFEST.txt" ] || scripts/build_corpus.sh "$CORPUS" > /dev/null
train=() valid=() test=()
for d in $domains; do
  train+=("$CORPUS/$d/train.txt"); valid+=("$CORPUS/$d/valid.txt"); test+=("$CORPUS/$d/test.txt")
done
[ -f "$VOCAB" ] || "$MOE" train-tokenizer -o "$VOCAB" --vocab-size 4096 "${train[@]}"

# 4 layers, d=256, 8 experts of width 256, top-2 (the qwen3moe preset): 8.1M parameters, 16 MB in F16.
# Each step: 8 sequences x 256 tokens (2048 tokens). Switch balance loss 0.01 and z-loss 1e-3, as in the
# papers. No selection bias by default, so the file stays loadable by llama.cpp's qwen3moe.
# shellcheck disable=SC2086
"$MOE" train --preset "$PRESET" --vocab "$VOCAB" \
  --train "${train[@]}" --valid "${valid[@]}" --test "${test[@]}" \
  --steps "$STEPS" --batch 8 --seq 256 --lr 3e-3 --warmup 100 --wd 0.1 --clip 1.0 --seed 1 \
  --balance-coef "$BALANCE" --bias-rate "$BIAS_RATE" --z-loss-coef 1e-3 -t "$THREADS" \
  --eval-every 250 --eval-windows 16 --checkpoint "$OUT/checkpoint.gguf" --checkpoint-every 100 --resume \
  --log "$OUT/train_log.csv" --name "$NAME" --f16 -o "$OUT/model.gguf" $EXTRA \
  | tee "$OUT/report.txt"

# Per-domain test perplexity and expert usage through the inference engine (the model card's tables;
# usage.html has the expert-by-domain heatmaps).
"$MOE" perplexity -m "$OUT/model.gguf" -f "${test[@]}" -c 256 -t "$THREADS" \
  --json "$OUT/perplexity.json" --html "$OUT/usage.html" | tee "$OUT/perplexity.txt"
