#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan, coverage on the whole library) and fuzzes one
# of them. Usage: scripts/fuzz.sh [SECONDS] [TARGET] [-- extra libFuzzer flags]
#   SECONDS  total run time (default 600)
#   TARGET   fuzz target name (default gguf_fuzz)
# Env: BUILD_DIR (default build-fuzz), JOBS (parallel build and fuzz workers, default 1),
#      CORPUS (default $BUILD_DIR/corpus/$TARGET; kept between runs), SEED_MAX (default 65536).
# Crashes land in $BUILD_DIR/artifacts/$TARGET/; rerun one with: $BUILD_DIR/bin/$TARGET FILE
set -euo pipefail

SECONDS_TO_RUN=${1:-600}
TARGET=${2:-gguf_fuzz}
shift $(( $# > 2 ? 2 : $# ))
[[ ${1:-} == "--" ]] && shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build-fuzz}
JOBS=${JOBS:-1}
CORPUS=${CORPUS:-$BUILD_DIR/corpus/$TARGET}
SEED_MAX=${SEED_MAX:-65536}
ARTIFACTS=$BUILD_DIR/artifacts/$TARGET
FIXTURES=$ROOT/../shared/fixtures

if [[ ! -f $BUILD_DIR/CMakeCache.txt ]]; then
  CC=clang CXX=clang++ cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DMOE_BUILD_FUZZ=ON -DMOE_BUILD_TESTS=OFF -DMOE_BUILD_BENCH=OFF -DMOE_SANITIZE=ON \
    -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link"
fi
cmake --build "$BUILD_DIR" -j"$JOBS" --target "$TARGET"

# Seed corpus: GGUF fixtures, large ones cut to their first SEED_MAX bytes (the header is what the
# parser reads; libFuzzer mutates from there).
mkdir -p "$CORPUS" "$ARTIFACTS"
if [[ $TARGET == gguf_fuzz && -d $FIXTURES ]]; then
  for f in "$FIXTURES"/models/*.gguf "$FIXTURES"/vocab/*.gguf; do
    [[ -f $f ]] || continue
    seed=$CORPUS/seed-$(basename "$f")
    [[ -f $seed ]] || head -c "$SEED_MAX" "$f" > "$seed"
  done
fi

# remix_fuzz: valid reference files built from the fixture models (needs a normal build's moe).
if [[ $TARGET == remix_fuzz && -x $ROOT/build/bin/moe && -d $FIXTURES ]]; then
  for m in tiny-qwen3moe tiny-deepseekmoe; do
    seed=$CORPUS/seed-$m.refs.gguf
    [[ -f $seed ]] || "$ROOT/build/bin/moe" remix-build -m "$FIXTURES/models/$m.gguf" -f "$FIXTURES/text/t1.txt" \
      -o "$seed" --snippet-len 8 --stride 8 --keep all -t 1 2>/dev/null || true
  done
fi

# Plus small, fully valid files (the truncated fixtures fail at the tensor bounds check): every
# value type, arrays, several tensor types, non-default alignment, overlapping tensors.
if [[ $TARGET == gguf_fuzz ]]; then
  python3 - "$CORPUS" <<'PY'
import struct, sys, os
out = sys.argv[1]
def s(x): x = x.encode(); return struct.pack('<Q', len(x)) + x
def kv(k, t, payload): return s(k) + struct.pack('<I', t) + payload
def arr(t, n, payload): return struct.pack('<IQ', t, n) + payload
# (type, block elems, block bytes)
TYPES = {'f32': (0, 1, 4), 'f16': (1, 1, 2), 'q4_0': (2, 32, 18), 'q8_0': (8, 32, 34), 'q4_K': (12, 256, 144),
         'q6_K': (14, 256, 210), 'bf16': (30, 1, 2)}
def gguf(kvs, tensors, align=32, version=3, overlap=False):
    if align != 32: kvs = kvs + [kv('general.alignment', 4, struct.pack('<I', align))]
    head = b'GGUF' + struct.pack('<IQQ', version, len(tensors), len(kvs)) + b''.join(kvs)
    data, infos = b'', b''
    for name, tname, dims in tensors:
        t, be, bb = TYPES[tname]
        n = 1
        for d in dims[1:]: n *= d
        nbytes = dims[0] // be * bb * n
        off = 0 if overlap else len(data)
        infos += s(name) + struct.pack('<I', len(dims)) + b''.join(struct.pack('<q', d) for d in dims)
        infos += struct.pack('<IQ', t, off)
        data += bytes((i * 13) & 0xff for i in range(nbytes))
        data += b'\0' * (-len(data) % align)
    head += infos
    head += b'\0' * (-len(head) % align)
    return head + data
kvs = [kv('general.architecture', 8, s('qwen3moe')), kv('qwen3moe.block_count', 4, struct.pack('<I', 2)),
       kv('a.u8', 0, b'\x07'), kv('a.i8', 1, b'\xff'), kv('a.u16', 2, b'\x01\x02'), kv('a.i16', 3, b'\xfe\xff'),
       kv('a.i32', 5, struct.pack('<i', -5)), kv('a.f32', 6, struct.pack('<f', 1e-6)), kv('a.bool', 7, b'\x01'),
       kv('a.u64', 10, struct.pack('<Q', 1 << 40)), kv('a.i64', 11, struct.pack('<q', -1)),
       kv('a.f64', 12, struct.pack('<d', 0.5)),
       kv('tokenizer.ggml.tokens', 9, arr(8, 3, s('a') + s('') + s('<s>'))),
       kv('tokenizer.ggml.token_type', 9, arr(5, 3, struct.pack('<3i', 1, 2, 3))),
       kv('a.f32s', 9, arr(6, 2, struct.pack('<2f', 1, 2))), kv('a.bools', 9, arr(7, 2, b'\x00\x01')),
       kv('a.u64s', 9, arr(10, 1, struct.pack('<Q', 9))), kv('a.empty', 9, arr(4, 0, b''))]
tensors = [('token_embd.weight', 'f16', [8, 3]), ('output_norm.weight', 'f32', [8]),
           ('blk.0.ffn_up_exps.weight', 'q8_0', [32, 2, 2]), ('blk.0.attn_q.weight', 'q4_0', [64, 1, 1, 1]),
           ('blk.0.ffn_down_exps.weight', 'q4_K', [256, 1, 2]), ('output.weight', 'q6_K', [256, 1]),
           ('x.bf16', 'bf16', [4, 2])]
seeds = {'gen-full': gguf(kvs, tensors), 'gen-v2': gguf(kvs[:3], tensors[:2], version=2),
         'gen-align64': gguf(kvs[:2], tensors[:3], align=64), 'gen-align1': gguf(kvs[:2], tensors[:3], align=1),
         'gen-overlap': gguf(kvs[:1], tensors[:4], overlap=True), 'gen-meta-only': gguf(kvs, []),
         'gen-empty': gguf([], [])}
for name, blob in seeds.items():
    with open(os.path.join(out, 'seed-' + name + '.gguf'), 'wb') as f: f.write(blob)
PY
fi

# The request parser: a few valid bodies to mutate from (the first byte picks the endpoint: odd = chat).
if [[ $TARGET == openai_request_fuzz ]]; then
  printf '\001{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_tokens":8,"temperature":0.7,"top_p":0.9,"seed":3,"n":2,"stop":["a","b"],"stream":true,"stream_options":{"include_usage":true},"logprobs":true,"top_logprobs":3,"logit_bias":{"5":-100},"moe":{"trace":true,"experts":3}}' > "$CORPUS/seed-chat.json"
  printf '\000{"prompt":["a",[1,2]],"max_tokens":4,"echo":true,"logprobs":2,"best_of":1,"suffix":null}' > "$CORPUS/seed-completion-mixed.json"
  printf '\000{"prompt":[[1,2],[3]],"n":3,"presence_penalty":0,"user":"u"}' > "$CORPUS/seed-completion-ids.json"
  printf '\001{"messages":[{"role":"user","content":null}],"max_completion_tokens":1e3}' > "$CORPUS/seed-chat-edge.json"
  printf '\000{"prompt":"x","moe":{"top_p":0.5,"top_p_max_k":3,"mask_experts":[[0,1]],"steer":[{"layer":1,"expert":2,"factor":2,"force":true}],"random_drop":{"prob":0.2,"seed":4},"min_weight":0.1}}' > "$CORPUS/seed-completion-policy.json"
fi

PAR=()
if (( JOBS > 1 )); then PAR=(-jobs="$JOBS" -workers="$JOBS"); fi
exec "$BUILD_DIR/bin/$TARGET" "$CORPUS" -max_total_time="$SECONDS_TO_RUN" -max_len="$SEED_MAX" \
  -rss_limit_mb=2048 -timeout=10 -artifact_prefix="$ARTIFACTS/" -print_final_stats=1 "${PAR[@]}" "$@"
