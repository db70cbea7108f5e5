#!/usr/bin/env bash
# Regenerates tests/data/llamacpp/quantize_refs.tsv: what llama.cpp's own quantizer (llama-quantize) writes
# for each F16 input and file type, as one line per tensor: case, tensor name, type, FNV-1a 64 hash of the
# data (`moe tensors --hash`). tests/test_quantize_llamacpp.cpp quantizes the same inputs with our
# quantizer and compares every tensor, so CI checks byte-identity without llama.cpp.
#
# Inputs: the fixtures' F16 models of the archs we load, and F16 files written by `moe synth` in shapes
# the mix rules care about (the synth lines below are the test's too; the test rewrites the files with the
# same flags): 8 experts (Mixtral's rules), 64 and 128 experts, layer counts where n/8, n/16 and
# use_more_bits differ, GQA >= 4, shared experts, dense leading layers, a dense model, and row lengths
# that are not a multiple of 256 (K-quant fallbacks) or of 32 (F16 fallback).
#
#   bench/llamacpp/quantize_refs.sh     env: LLAMA_BIN (/work/llama.cpp/build/bin), MOE (build/bin/moe)
set -euo pipefail
cd "$(dirname "$0")/../.."
LLAMA_BIN=${LLAMA_BIN:-/work/llama.cpp/build/bin}
MOE=${MOE:-build/bin/moe}
FIX=${FIX:-../shared/fixtures/models}
out=tests/data/llamacpp/quantize_refs.tsv
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

all_types="Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K F16 BF16 F32"
mixes="Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_M Q6_K Q4_0"

# name|moe synth flags (F16, seed 1)
synth_shapes=(
  "synth-llama-8x-gqa5|--arch llama --layers 9 --embd 160 --heads 5 --kv-heads 1 --head-dim 32 --experts 8 --top-k 2 --ff 96 --vocab 300"
  "synth-olmoe-64x-17l|--arch olmoe --layers 17 --embd 256 --heads 4 --experts 64 --top-k 8 --ff 32 --vocab 320"
  "synth-deepseek-128x-shared|--arch deepseek --layers 5 --dense-lead 2 --ff-dense 192 --shared 2 --experts 128 --top-k 6 --ff 16 --embd 256 --heads 4 --vocab 300"
  "synth-qwen2moe-16x-gqa4|--arch qwen2moe --layers 8 --embd 256 --heads 8 --kv-heads 2 --experts 16 --top-k 4 --ff 96 --shared 1 --vocab 300"
  "synth-qwen3-dense-12l|--arch qwen3 --layers 12 --embd 128 --heads 4 --kv-heads 2 --experts 0 --ff 64 --ff-dense 320 --vocab 300"
)
# name|input|file type|llama-quantize flags|moe quantize flags (overrides with the same meaning)
override_cases=(
  "tiny-qwen3moe+experts-q8_0|tiny-qwen3moe|Q4_K_M|--tensor-type ffn_.*_exps=q8_0|--expert-type q8_0"
  "tiny-qwen3moe+pattern|tiny-qwen3moe|Q3_K_M|--tensor-type blk\\.1\\.ffn_down=q6_K --tensor-type attn_v=q2_K|--tensor-type blk\\.1\\.ffn_down=q6_K --tensor-type attn_v=q2_K"
  "tiny-qwen3moe+pure|tiny-qwen3moe|Q4_K_M|--pure|--pure"
  "tiny-qwen3moe+output-embd|tiny-qwen3moe|Q5_K_S|--output-tensor-type q8_0 --token-embedding-type q4_0|--output-type q8_0 --embd-type q4_0"
  "tiny-qwen2moe+leave-output|tiny-qwen2moe|Q4_K_S|--leave-output-tensor|--leave-output"
  "tiny-deepseekmoe+shared-attn|tiny-deepseekmoe|Q4_K_M|--tensor-type ffn_.*_shexp=q8_0 --tensor-type attn_[qkvo]=q6_K|--shared-type q8_0 --attn-type q6_K"
)

record() {  # case name, quantized file
  "$MOE" tensors -m "$2" --hash | awk -v c="$1" -F'\t' '{print c "\t" $1 "\t" $2 "\t" $5}' >> "$tmp/refs.tsv"
}
quantize() {  # case, input, type, extra llama flags...
  local c=$1 in=$2 t=$3
  shift 3
  "$LLAMA_BIN/llama-quantize" "$@" "$in" "$tmp/q.gguf" "$t" 2 > "$tmp/log" 2>&1 || { cat "$tmp/log" >&2; exit 1; }
  record "$c" "$tmp/q.gguf"
}

: > "$tmp/refs.tsv"
for m in tiny-qwen3moe tiny-qwen2moe tiny-mixtral tiny-olmoe tiny-deepseekmoe tiny-granitemoe; do
  types=$mixes
  [ "$m" = tiny-qwen3moe ] && types=$all_types
  for t in $types; do quantize "$m/$t" "$FIX/$m.gguf" "$t"; done
done
for s in "${synth_shapes[@]}"; do
  name=${s%%|*} flags=${s#*|}
  # shellcheck disable=SC2086
  "$MOE" synth $flags --type F16 --seed 1 -q -o "$tmp/$name.gguf"
  for t in $mixes Q8_0 Q5_1; do quantize "$name/$t" "$tmp/$name.gguf" "$t"; done
done
for s in "${override_cases[@]}"; do
  IFS='|' read -r name in t lflags _ <<< "$s"
  # shellcheck disable=SC2086
  quantize "$name" "$FIX/$in.gguf" "$t" $lflags
done
{
  echo "# llama-quantize outputs (bench/llamacpp/quantize_refs.sh): case, tensor, type, FNV-1a 64 of the data"
  echo "# llama.cpp: $(cd "$LLAMA_BIN/../.." && git log -1 --format='%H %cd' 2>/dev/null || echo unknown)"
  for s in "${synth_shapes[@]}"; do echo "# synth ${s%%|*}: ${s#*|}"; done
  for s in "${override_cases[@]}"; do echo "# override $s"; done
  cat "$tmp/refs.tsv"
} > "$out"
echo "wrote $out ($(grep -vc '^#' "$out") tensors)" >&2
