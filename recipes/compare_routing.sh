#!/usr/bin/env bash
# The routing comparison the papers run, at small scale: the default model's recipe trained three ways on
# the same tokens (same corpus, tokenizer, seed, batches and schedule):
#   dense    a dense qwen3 model with the same active parameters (one FFN of width k x expert width)
#   moe      our MoE: 8 experts, top-2, Switch load-balancing loss 0.01
#   auxfree  the same MoE with DeepSeek-V3's auxiliary-loss-free balancing (selection bias, gamma 1e-3)
#            instead of the balancing loss
# Each gets per-domain test perplexity and the expert-load coefficient of variation (CV, mean over
# layers) on the test text, through the inference engine: over all test text (how balanced the
# router is) and within each domain, averaged (high when experts specialise by domain). Prints a markdown table and writes OUT/comparison.md.
#
#   recipes/compare_routing.sh       (or `make compare-routing`)
#   env: MOE, THREADS (2), STEPS (1200 each: 2.5M tokens, about 15 minutes per model on 2 cores),
#        OUT (build/compare), CORPUS / VOCAB (default: the default-model recipe's, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
MOE=${MOE:-build/bin/moe}
THREADS=${THREADS:-2}
STEPS=${STEPS:-1200}
OUT=${OUT:-build/compare}
CORPUS=${CORPUS:-build/recipe/corpus}
VOCAB=${VOCAB:-build/recipe/vocab.gguf}
export MOE THREADS STEPS CORPUS VOCAB

mkdir -p "$OUT"
run_variant() {  # name, then env assignments for recipes/default_model.sh
  local name=$1
  shift
  echo "compare: training $name ($STEPS steps)" >&2
  env "$@" OUT="$OUT/$name" NAME="moe.cpp comparison: $name" bash recipes/default_model.sh > /dev/null
}
run_variant dense PRESET=qwen3
run_variant moe PRESET=qwen3moe BALANCE=0.01 BIAS_RATE=0
run_variant auxfree PRESET=qwen3moe BALANCE=0 BIAS_RATE=1e-3

for v in dense moe auxfree; do "$MOE" info -m "$OUT/$v/model.gguf" --json > "$OUT/$v/info.json"; done
python3 - "$OUT" "$STEPS" <<'PY' | tee "$OUT/comparison.md"
import json, math, os, re, sys
out, steps = sys.argv[1], int(sys.argv[2])
print(f"| model | params (total / active per token) | " +
      " | ".join(f"test ppl {d}" for d in ("bible", "python", "fortunes")) +
      " | load CV, all test text | load CV, per domain | train time |")
print("|---|---|---|---|---|---|---|---|")
for v in ("dense", "moe", "auxfree"):
    info = json.load(open(f"{out}/{v}/info.json"))
    ppl = json.load(open(f"{out}/{v}/perplexity.json"))
    report = open(f"{out}/{v}/report.txt").read()
    m = re.search(r"in (\S+)\n", report)
    # F16 matrices: 2 bytes per parameter (the few F32 norm weights are a rounding error here).
    total, active = info["bytes_total"] / 2e6, info["active_bytes_per_token"] / 2e6
    by_domain = {os.path.basename(os.path.dirname(f["file"])): f for f in ppl["files"]}
    cells = [f"{by_domain[d]['ppl']:.2f}" for d in ("bible", "python", "fortunes")]
    cvs = [f["load_cv"] for f in ppl["files"] if isinstance(f["load_cv"], (int, float))]  # null: dense
    cv = f"{sum(cvs) / len(cvs):.3f}" if cvs else "-"
    # Balance over the whole test set: per layer, the CV of the expert counts summed over the domains.
    layers = [[sum(col) for col in zip(*(f["expert_counts"][il] for f in ppl["files"]))]
              for il in range(len(ppl["files"][0]["expert_counts"]))]
    layer_cvs = []
    for c in layers:
        if c:
            mean = sum(c) / len(c)
            layer_cvs.append(math.sqrt(sum((x - mean) ** 2 for x in c) / len(c)) / mean)
    all_cv = f"{sum(layer_cvs) / len(layer_cvs):.3f}" if layer_cvs else "-"
    print(f"| {v} | {total:.2f}M / {active:.2f}M | " + " | ".join(cells) +
          f" | {all_cv} | {cv} | {m.group(1) if m else '?'} |")
print(f"\nAll three: {steps} steps x 2048 tokens = {steps * 2048 / 1e6:.2f}M training tokens, seed 1.")
PY
