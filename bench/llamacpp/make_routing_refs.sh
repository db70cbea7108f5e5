#!/usr/bin/env bash
# Regenerates tests/data/llamacpp/routing/: llama.cpp's all-position logits with the expert count
# overridden (`llama_ref logits --override-kv ARCH.expert_used_count=int:K`), which `moe logits --experts K`
# must match (NMSE <= 1e-5 on F16 files; tests/test_llamacpp_routing.cpp). CI cannot run llama.cpp, so the
# outputs are committed as small data: logits stored as fp16 (the rounding adds ~1e-8 to the NMSE).
#
# Models: every F16 fixture of ../shared/fixtures (including families this build may not load yet: their
# entries wait for the engine), on its t1 tokens; and synthetic F16 models of other shapes written by
# `moe synth` (other expert counts and k, renormalized or not, shared experts, leading dense layers), on
# 24 fixed random tokens. A synthetic file is identified by an FNV-1a hash of its bytes, so a change to
# the synth writer shows up as a clear test failure asking for this script to run again. Each entry
# records min_rel_gap, the closest routing near-tie in llama.cpp's run (see min_rel_gap below); the
# synthetic token sets are drawn again until they have none.
#
#   bench/llamacpp/make_routing_refs.sh
#   env: MOE (default build/bin/moe), LLAMA_REF (default $LLAMA_DIR/build/bin/llama_ref with LLAMA_DIR
#        /work/llama.cpp; bench/llamacpp/build_llama_native.sh builds it)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MOE=${MOE:-$ROOT/build/bin/moe}
LLAMA_DIR=${LLAMA_DIR:-/work/llama.cpp}
LLAMA_REF=${LLAMA_REF:-$LLAMA_DIR/build/bin/llama_ref}
FIX=$ROOT/../shared/fixtures
OUT=$ROOT/tests/data/llamacpp/routing
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
[[ -x $LLAMA_REF ]] || { echo "make_routing_refs: no llama_ref at $LLAMA_REF (bench/llamacpp/build_llama_native.sh)" >&2; exit 1; }
[[ -x $MOE ]] || { echo "make_routing_refs: no moe at $MOE (make build)" >&2; exit 1; }
rm -rf "$OUT"
mkdir -p "$OUT"

# Synthetic shapes: name | arch | moe synth flags (F16, seeded: the bytes are reproducible).
SYNTH=(
  "synth-qwen3moe-e16k4|qwen3moe|--layers 2 --embd 64 --heads 4 --kv-heads 2 --experts 16 --top-k 4 --ff 32 --vocab 320 --seed 11"
  "synth-olmoe-e12k3|olmoe|--layers 2 --embd 64 --heads 4 --experts 12 --top-k 3 --ff 48 --vocab 320 --seed 12"
  "synth-qwen2moe-e6k2-shared|qwen2moe|--layers 2 --embd 64 --heads 4 --experts 6 --top-k 2 --ff 32 --shared 1 --vocab 320 --seed 13"
  "synth-deepseek-e10k3-dense|deepseek|--layers 3 --embd 64 --heads 4 --experts 10 --top-k 3 --ff 32 --shared 2 --dense-lead 1 --ff-dense 96 --vocab 320 --seed 14"
  "synth-mixtral-e5k1|llama|--layers 2 --embd 64 --heads 4 --kv-heads 1 --experts 5 --top-k 1 --ff 64 --vocab 320 --seed 15"
  "synth-granitemoe-e8k2|granitemoe|--layers 2 --embd 64 --heads 4 --experts 8 --top-k 2 --ff 32 --vocab 320 --seed 16"
)

python3 - "$FIX" "$OUT" "$TMP" "$MOE" "$LLAMA_REF" "${SYNTH[@]}" <<'PY'
import json, os, random, struct, subprocess, sys
fix, out, tmp, moe, llama_ref = sys.argv[1:6]
synth = [s.split("|") for s in sys.argv[6:]]

def fnv1a64(path):
    h = 0xcbf29ce484222325
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            for b in chunk:
                h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h

def ks_for(n_exp, k):
    ks = {1, min(n_exp, k + 1)}
    if n_exp <= 6: ks.add(n_exp)
    ks.discard(k)  # the model's own k is the fixtures' main reference
    return sorted(ks)

def run_ref(model, tokens, arch, K, dst):
    raw = os.path.join(tmp, "ref.f32")
    subprocess.run([llama_ref, "logits", "-m", model, "--tokens", tokens, "-o", raw, "-t", "2",
                    "--override-kv", "%s.expert_used_count=int:%d" % (arch, K)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    data = open(raw, "rb").read()
    vals = struct.unpack("<%df" % (len(data) // 4), data)
    with open(dst, "wb") as f:
        f.write(struct.pack("<%de" % len(vals), *vals))
    return len(vals)

def min_rel_gap(model, tokens, arch, K, n_exp):
    # Routing near-ties: over every position and MoE layer, the smallest relative gap between the K-th
    # and (K+1)-th routing weight of llama.cpp's own K+1 run. Below ~1e-4 either engine may select either
    # expert (float summation order), so such a reference cannot demand a tight NMSE.
    if K >= n_exp:
        return 1.0
    dst = os.path.join(tmp, "route.csv")
    subprocess.run([llama_ref, "route", "-m", model, "--tokens", tokens, "-o", dst, "-t", "2",
                    "--override-kv", "%s.expert_used_count=int:%d" % (arch, K + 1)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    w = {}
    for line in open(dst).read().split("\n")[1:]:
        if not line:
            continue
        pos, _tok, layer, rank, _e, weight = line.split(",")
        w[(int(pos), int(layer), int(rank))] = float(weight)
    gap = 1.0
    for (pos, layer, rank), v in w.items():
        if rank > 0 and w[(pos, layer, rank - 1)] < v:
            return None  # selection is not by the weights (a selection bias): no gap to measure here
        if rank == K - 1 and (pos, layer, K) in w:
            gap = min(gap, (v - w[(pos, layer, K)]) / max(v, 1e-30))
    return gap

NEAR_TIE = 1e-3  # synthetic token sets are redrawn until every gap is at least this

entries = []
models = json.load(open(os.path.join(fix, "models", "models.json")))
for m in models:
    if m.get("dtype") != "f16" or "n_exp" not in m:
        continue
    name = m["name"]
    model = os.path.join(fix, "models", m["file"])
    tokens = os.path.join(fix, "ref", name + ".t1.tok")
    if not os.path.exists(model) or not os.path.exists(tokens):
        continue
    n_tok = len(open(tokens).read().split())
    for K in ks_for(m["n_exp"], m["k"]):
        logits = "%s.k%d.logits.f16" % (name, K)
        n = run_ref(model, tokens, m["arch"], K, os.path.join(out, logits))
        entries.append({"model": "fixture:" + name, "arch": m["arch"], "n_expert": m["n_exp"], "k": m["k"],
                        "experts": K, "tokens": "fixture:" + name + ".t1.tok", "n_tokens": n_tok,
                        "n_vocab": n // n_tok, "logits": logits,
                        "min_rel_gap": min_rel_gap(model, tokens, m["arch"], K, m["n_exp"])})
        print("make_routing_refs: %s --experts %d" % (name, K), file=sys.stderr)

for name, arch, flags in synth:
    model = os.path.join(tmp, name + ".gguf")
    args = flags.split() + ["--arch", arch, "--type", "F16", "--name", name]
    subprocess.run([moe, "synth", "-q", "-t", "2", "-o", model] + args, check=True, stderr=subprocess.DEVNULL)
    info = json.loads(subprocess.run([moe, "info", "-m", model, "--json"], check=True, capture_output=True).stdout)
    rng = random.Random(name)
    tok_file = name + ".tok"
    Ks = ks_for(info["n_expert"], info["n_expert_used"])
    for attempt in range(50):
        ids = [rng.randrange(3, info["n_vocab"]) for _ in range(24)]
        with open(os.path.join(out, tok_file), "w") as f:
            f.write("\n".join(map(str, ids)) + "\n")
        gaps = {K: min_rel_gap(model, os.path.join(out, tok_file), arch, K, info["n_expert"]) for K in Ks}
        if all(g is None or g >= NEAR_TIE for g in gaps.values()):
            break
    for K in Ks:
        logits = "%s.k%d.logits.f16" % (name, K)
        n = run_ref(model, os.path.join(out, tok_file), arch, K, os.path.join(out, logits))
        entries.append({"model": "synth:" + name, "synth_args": args, "fnv1a64": fnv1a64(model), "arch": arch,
                        "n_expert": info["n_expert"], "k": info["n_expert_used"], "experts": K, "tokens": tok_file,
                        "n_tokens": len(ids), "n_vocab": n // len(ids), "logits": logits,
                        "min_rel_gap": gaps[K]})
        print("make_routing_refs: %s --experts %d" % (name, K), file=sys.stderr)

with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump({"generator": "bench/llamacpp/make_routing_refs.sh", "llama_ref": "llama_ref logits --override-kv "
               "ARCH.expert_used_count=int:K", "logits_format": "fp16 little-endian [n_tokens][n_vocab]",
               "entries": entries}, f, indent=1)
    f.write("\n")
print("make_routing_refs: %d references in %s" % (len(entries), out), file=sys.stderr)
PY
