#!/usr/bin/env bash
# The compression lab's second model: the default model's recipe (same corpus, tokenizer, schedule and
# seed) with DeepSeekMoE's shape instead of 8 wide experts: one dense layer first, then 3 MoE layers of
# 32 fine-grained experts of width 64, top-6, plus 2 always-on shared experts (width 128 together).
# 8 experts per layer is a coarse instrument for pruning and merging studies (removing one expert is
# 12.5% of the layer); 32 experts make 25% and 50% removal 8 and 16 experts, and the shared experts
# exercise the "never pruned" rule. Used by docs/compression.md (`make compression-table`).
#
#   recipes/lab_model.sh      env: MOE, OUT (default build/lab), THREADS (2), STEPS (3000), CORPUS, VOCAB
set -euo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-build/lab}
export STEPS=${STEPS:-3000}
export PRESET=deepseek
export NAME=${NAME:-moe.cpp lab deepseek 32x64 top-6 + 2 shared (bible, python, fortunes)}
export EXTRA="--experts 32 --ff-exp 64 --top-k 6 --shared 2 ${EXTRA:-}"
exec bash recipes/default_model.sh
