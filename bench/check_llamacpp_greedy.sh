#!/usr/bin/env bash
# Checks that `moe run --temp 0` continues prompts exactly as llama.cpp does on the same GGUF file.
#
#   bench/check_llamacpp_greedy.sh [MODEL (default: the bundled model)] [N_PREDICT=64]
#   env: PROMPTS=file (one prompt per line, `\n` for newlines; default: a few prompts from each domain
#        of the default model), MOE_BIN, NLC_DIR (see compare_llamacpp.sh),
#        SAVE=file (keep llama.cpp's results as JSON lines; tests/data/default_model_llamacpp_greedy.jsonl
#        was recorded this way)
#
# llama.cpp tokenizes each prompt and generates greedily (bench/llamacpp/greedy.mjs); moe then runs the
# same prompt ids. Prints, per prompt, how many generated tokens agree, and exits 1 on any difference.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
MOE_BIN=${MOE_BIN:-$ROOT/build/bin/moe}
[[ -x "$MOE_BIN" ]] || { echo "check: no moe binary (set MOE_BIN)" >&2; exit 1; }
MODEL=${1:-}
if [[ -z "$MODEL" ]]; then MODEL=$("$MOE_BIN" info --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["file"])'); fi
N=${2:-64}
# shellcheck source=llamacpp/ensure_nlc.sh
source "$HERE/llamacpp/ensure_nlc.sh"
ensure_nlc
WORK=$(mktemp -d /tmp/moe-greedy.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
if [[ -n "${PROMPTS:-}" ]]; then cp "$PROMPTS" "$WORK/prompts.txt"; else
  cat > "$WORK/prompts.txt" <<'P'
In the beginning God created
And it came to pass, when the king
def read_config(path):\n    
import os\nimport sys\n\nclass 
A fool and his money
The computer is
P
fi
NLC_DIR="$NLC_DIR" node "$HERE/llamacpp/greedy.mjs" "$MODEL" "$N" "$WORK/prompts.txt" > "$WORK/llama.jsonl"
if [[ -n "${SAVE:-}" ]]; then cp "$WORK/llama.jsonl" "$SAVE"; fi
python3 - "$WORK" "$MOE_BIN" "$MODEL" "$N" <<'PY'
import json, subprocess, sys
work, moe, model, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
bad = 0
for i, line in enumerate(open(f"{work}/llama.jsonl")):
    r = json.loads(line)
    tok_file, ids_file = f"{work}/p{i}.txt", f"{work}/o{i}.txt"
    open(tok_file, "w").write(" ".join(map(str, r["prompt_ids"])))
    subprocess.run([moe, "run", "-m", model, "--tokens", tok_file, "-n", str(n), "--temp", "0", "-t", "2",
                    "--ids-out", ids_file], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ours = [int(x) for x in open(ids_file).read().split()]
    theirs = r["ids"]
    agree = 0
    while agree < min(len(ours), len(theirs)) and ours[agree] == theirs[agree]:
        agree += 1
    same = ours == theirs
    bad += not same
    print(f"{'same' if same else 'DIFF'} {agree:3d}/{len(theirs):3d}  {r['prompt']!r:45.45} -> {r['text'][:60]!r}")
print(f"{'all identical' if not bad else f'{bad} prompt(s) differ'} ({model}, {n} tokens each)")
sys.exit(1 if bad else 0)
PY
