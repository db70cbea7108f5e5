#!/usr/bin/env bash
# Regenerates tests/data/llamacpp/route/: llama.cpp's routing (its ffn_moe_topk / ffn_moe_weights graph
# tensors, through llama_ref route) for every fixture model's seq.tok and for random-weight models of
# other shapes written by `moe synth` (which the test writes again, byte for byte, from the same flags).
# tests/test_trace_llamacpp.cpp compares `moe trace` with these files.
#
#   bench/llamacpp/make_route_refs.sh
#   env: MOE (build/bin/moe), LLAMA_REF (llama_ref from bench/llamacpp/build_llama_native.sh; default
#        /work/llama.cpp/build/bin/llama_ref), FIXTURES (../shared/fixtures), TMP (a scratch dir)
set -euo pipefail
cd "$(dirname "$0")/../.."
MOE=${MOE:-build/bin/moe}
LLAMA_REF=${LLAMA_REF:-/work/llama.cpp/build/bin/llama_ref}
FIXTURES=${FIXTURES:-../shared/fixtures}
TMP=${TMP:-$(mktemp -d)}
OUT=tests/data/llamacpp/route
mkdir -p "$OUT" "$TMP"

# Fixtures: one batched pass over seq.tok.
for m in "$FIXTURES"/models/*.gguf "$FIXTURES"/models/*/*.gguf; do
  name=$(basename "$m" .gguf)
  tok="$FIXTURES/ref/$name.seq.tok"
  [ -f "$tok" ] || continue
  "$LLAMA_REF" route -m "$m" --tokens "$tok" -o "$OUT/$name.csv" -t 2 2> /dev/null
  echo "route: $name" >&2
done

# Synthetic shapes: name and `moe synth` flags, one per line (tests/data/llamacpp/route/synth.txt is the
# list the test reads back).
SYNTH="$OUT/synth.txt"
cat > "$SYNTH" <<'LIST'
synth-qwen3moe-e16k4 --arch qwen3moe --layers 3 --embd 128 --experts 16 --top-k 4 --ff 64 --heads 4 --kv-heads 2 --vocab 512 --type F16 --seed 11
synth-olmoe-e32k8 --arch olmoe --layers 2 --embd 128 --experts 32 --top-k 8 --ff 32 --heads 4 --vocab 512 --type Q8_0 --seed 12
synth-deepseek-e12k3 --arch deepseek --layers 3 --embd 128 --experts 12 --top-k 3 --ff 64 --dense-lead 1 --ff-dense 256 --shared 2 --heads 4 --vocab 512 --type F16 --seed 13
synth-mixtral-e4k2 --arch llama --layers 2 --embd 256 --experts 4 --top-k 2 --ff 256 --heads 8 --kv-heads 2 --vocab 512 --type Q4_K_M --seed 14
synth-qwen2moe-e8k1 --arch qwen2moe --layers 2 --embd 128 --experts 8 --top-k 1 --ff 64 --shared 1 --heads 4 --vocab 512 --type F16 --seed 15
synth-granitemoe-e6k3 --arch granitemoe --layers 2 --embd 128 --experts 6 --top-k 3 --ff 64 --heads 4 --vocab 512 --type Q4_0 --seed 16
LIST
# 96 token ids in [0, 512), fixed.
python3 -c "import random; r=random.Random(5); print(' '.join(str(r.randrange(512)) for _ in range(96)))" > "$OUT/synth.tok"
while read -r name flags; do
  # shellcheck disable=SC2086
  "$MOE" synth -o "$TMP/$name.gguf" $flags -t 2 -q
  "$LLAMA_REF" route -m "$TMP/$name.gguf" --tokens "$OUT/synth.tok" -o "$OUT/$name.csv" -t 2 2> /dev/null
  echo "route: $name" >&2
done < "$SYNTH"
echo "wrote $(ls "$OUT"/*.csv | wc -l) reference files to $OUT" >&2
