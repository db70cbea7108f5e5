#!/usr/bin/env bash
# Regenerates the fidelity tables of docs/analysis.md (between its analysis-fidelity markers), the example
# report docs/analysis-report.html and its screenshot docs/analysis-report.png: routing traces of held-out text
# (test split) of each domain through the bundled trained model and, when present, the Switch-loss and
# aux-loss-free models of `make compare-routing`, analysed by `moe analyze`, against the papers' claims
# (../shared/docs/techniques.md sections 4 and 8). `make analysis-fidelity` runs it (a few minutes on 2 cores).
#
#   scripts/analysis_fidelity.sh [OUT_DIR]   (default build/analysis-fidelity; traces and JSON there are
#                                             reused: delete it to measure again)
#   env: MOE (build/bin/moe), THREADS (2), CORPUS (build/recipe/corpus, built if missing),
#        SWITCH, AUXFREE (the compare-routing models; default build/compare/{moe,auxfree}/model.gguf,
#        skipped when absent), DOC (docs/analysis.md)
#
# Each domain's test text is cut into 3 chunks of whole documents (about 8 KB each; traced in passes of 256
# tokens, the context the models were trained with), so every number comes
# with its spread (mean [min, max] over the 9 texts).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/build/analysis-fidelity}
MOE=${MOE:-$ROOT/build/bin/moe}
THREADS=${THREADS:-2}
CORPUS=${CORPUS:-$ROOT/build/recipe/corpus}
SWITCH=${SWITCH:-$ROOT/build/compare/moe/model.gguf}
AUXFREE=${AUXFREE:-$ROOT/build/compare/auxfree/model.gguf}
DOC=${DOC:-$ROOT/docs/analysis.md}
[[ -x $MOE ]] || { echo "analysis_fidelity.sh: no moe at $MOE (make build)" >&2; exit 1; }
mkdir -p "$OUT"
[[ -f $CORPUS/MANIFEST.txt ]] || bash "$ROOT/scripts/build_corpus.sh" "$CORPUS" > "$OUT/corpus.log" 2>&1
python3 - "$ROOT" "$OUT" "$MOE" "$THREADS" "$CORPUS" "$SWITCH" "$AUXFREE" "$DOC" <<'PY'
import json, math, os, random, re, shutil, statistics, subprocess, sys, tempfile, time
root, out, moe, threads, corpus, switch, auxfree, doc = sys.argv[1:9]
domains = ["bible", "python", "fortunes"]
n_chunks, chunk_bytes = 3, 8000
t_start = time.time()

def log(msg):
    print("analysis_fidelity: [%5.0fs] %s" % (time.time() - t_start, msg), file=sys.stderr, flush=True)

def run(cmd, **kw):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if r.returncode != 0:
        sys.exit("analysis_fidelity: %s failed:\n%s" % (" ".join(cmd), r.stderr[-2000:]))
    return r

models = [("bundled", os.path.join(root, "models/tiny-qwen3moe-8x2-kjv-py-fortunes-F16.gguf"),
           "the bundled model (Switch loss 0.01, 4000 steps)")]
for name, path, what in [("switch", switch, "compare-routing `moe` (Switch loss 0.01)"),
                         ("auxfree", auxfree, "compare-routing `auxfree` (aux-loss-free bias, 1e-3)")]:
    if os.path.exists(path):
        models.append((name, path, what))
    else:
        log("no %s model at %s: skipped (make compare-routing)" % (name, path))

# --- held-out chunks: whole documents, about chunk_bytes each, from evenly spaced places ----------------
texts = []  # (domain, path)
for d in domains:
    docs = [x for x in open(os.path.join(corpus, d, "test.txt"), encoding="utf-8").read().split("\n\n") if x.strip()]
    for c in range(n_chunks):
        i, body = c * len(docs) // n_chunks, []
        while i < len(docs) and sum(len(b) + 2 for b in body) < chunk_bytes:
            body.append(docs[i]); i += 1
        p = os.path.join(out, "%s.%d.txt" % (d, c))
        with open(p, "w", encoding="utf-8") as f:
            f.write("\n\n".join(body) + "\n")
        texts.append((d, p))

# Decode prompts: the first ~600 bytes (whole lines) of each domain's first chunk.
prompts = {}
for d, p in texts:
    if d in prompts:
        continue
    lines, body = open(p, encoding="utf-8").read().split("\n"), ""
    for line in lines:
        if len(body) + len(line) > 600 and body:
            break
        body += line + "\n"
    prompts[d] = os.path.join(out, "%s.prompt.txt" % d)
    with open(prompts[d], "w", encoding="utf-8") as f:
        f.write(body)

def cached_json(path, cmd):
    if not os.path.exists(path):
        run(cmd)
    return json.load(open(path))

def spread(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return "-"
    return "%.3f [%.3f, %.3f]" % (statistics.mean(xs), min(xs), max(xs))

results = {}
for name, path, what in models:
    r = {"what": what, "texts": []}
    # One trace per text (its own analysis: the spread), and all texts in one trace with labels.
    for d, p in texts:
        base = os.path.join(out, "%s.%s" % (name, os.path.basename(p)[:-4]))
        if not os.path.exists(base + ".trace"):
            run([moe, "trace", "-m", path, "-f", p, "--label", d, "--expert-stats", "-c", "256", "-o", base + ".trace", "-t", threads])
        j = cached_json(base + ".json", [moe, "analyze", base + ".trace", "-m", path, "--json", base + ".json", "-q"])
        r["texts"].append((d, j))
    log("%s: %d texts traced and analysed" % (name, len(texts)))
    allt = os.path.join(out, name + ".all.trace")
    if not os.path.exists(allt):
        cmd = [moe, "trace", "-m", path, "--expert-stats", "-c", "256", "-o", allt, "-t", threads]
        for d, p in texts:
            cmd += ["-f", p, "--label", d]
        run(cmd)
    cmd = [moe, "analyze", allt, "-m", path, "--json", os.path.join(out, name + ".all.json"), "-q"]
    if name == "bundled":
        cmd += ["--html", os.path.join(out, "report.html")]
    r["all"] = cached_json(os.path.join(out, name + ".all.json"), cmd)
    # Decode: 128 generated tokens after a prompt from each domain, token by token, with the gate's
    # lookahead; replayed by the cache simulator (counted over generated tokens).
    dect = os.path.join(out, name + ".decode.trace")
    if not os.path.exists(dect):
        run([moe, "run", "-m", path, "-f", prompts["bible"], "-n", "128", "--temp", "0", "--ignore-eos", "-c", "512",
             "--trace", dect, "--trace-lookahead", "4", "-t", threads])
    r["sim"] = cached_json(os.path.join(out, name + ".sim.json"),
                           [moe, "analyze", dect, "-m", path, "--simulate", "--predictors", "none,gate",
                            "--json", os.path.join(out, name + ".sim.json"), "-q"])["simulation"]
    results[name] = r
    log("%s: done" % name)

# --- the simulator against the real store (bundled model, streamed experts, prefetch off) -----------
bundled = models[0][1]
eq_rows = []
probe = os.path.join(out, "probe.trace")
if not os.path.exists(probe):
    run([moe, "run", "-m", bundled, "-f", prompts["python"], "-n", "2", "--temp", "0", "--offload-all", "-c", "512",
         "--trace", probe, "-t", threads])
hdr = None
with open(probe, "rb") as f:
    f.read(12); n = int.from_bytes(f.read(4), "little"); hdr = json.loads(f.read(n))
mem = hdr["memory"]
fixed = mem["resident_bytes"] + mem["kv_bytes"] + mem["buffer_bytes"]
for policy in ["distance", "lru", "lfu", "arc", "layer"]:
    for slots in [4, 8, 16]:
        tag = os.path.join(out, "eq.%s.%d" % (policy, slots))
        mem_bytes = fixed + slots * mem["slot_bytes"]
        if not os.path.exists(tag + ".stats.json"):
            run([moe, "run", "-m", bundled, "-f", prompts["python"], "-n", "64", "--temp", "0", "--ignore-eos", "--offload-all",
                 "-c", "512", "--mem", str(mem_bytes), "--cache-policy", policy, "--prefetch-margin", "-1",
                 "--trace", tag + ".trace", "--stats-json", tag + ".stats.json", "-t", threads])
        st = json.load(open(tag + ".stats.json"))
        sim = cached_json(tag + ".sim.json", [moe, "analyze", tag + ".trace", "--simulate", "--policies", policy,
                                             "--predictors", "none", "--budgets", str(slots), "--json", tag + ".sim.json",
                                             "-q"])["simulation"]["results"][0]
        eq_rows.append((policy, slots, st["pool_slots"], st["hits"], st["misses"], sim["gen_hits"], sim["gen_misses"]))
log("simulator vs store: %d runs" % len(eq_rows))

# --- super experts: if any pass the rule, mask them and as many random experts (moe perplexity) ------
def ppl(tag, flags):
    dst = os.path.join(out, "ppl.%s.json" % tag)
    if not os.path.exists(dst):
        cmd = [moe, "perplexity", "-m", bundled, "-c", "256", "--json", dst, "-t", threads]
        for d, p in texts:
            cmd += ["-f", p]
        run(cmd + flags)
    j = json.load(open(dst))
    return statistics.mean(f["ppl"] for f in j["files"])

sup = results["bundled"]["all"]["super_experts"]
mask_rows = []
if sup.get("available") and sup["super"]:
    chosen = ["%d:%d" % (x["layer"], x["expert"]) for x in sup["super"]]
    base_ppl = ppl("base", [])
    mask_rows.append(("none", base_ppl))
    mask_rows.append(("super experts " + ",".join(chosen), ppl("super", ["--mask-experts", ",".join(chosen)])))
    pool = ["%d:%d" % (x["layer"], x["expert"]) for x in sup["experts"] if x["considered"] and
            "%d:%d" % (x["layer"], x["expert"]) not in chosen]
    rng = random.Random(1)
    for s in range(3):
        pick = rng.sample(pool, len(chosen))
        mask_rows.append(("random " + ",".join(pick), ppl("random%d" % s, ["--mask-experts", ",".join(pick)])))
    log("super experts: masked runs done")

# --- tables --------------------------------------------------------------------------------------------
L = []
L.append("Models: " + "; ".join("**%s**: %s" % (n, results[n]["what"]) for n, _, _ in models) + ".")
L.append("Texts: 3 held-out chunks (test split, about %d KB of whole documents each) of each domain (%s): "
         "each number is the mean [min, max] over the %d texts unless it says otherwise." % (chunk_bytes // 1000, ", ".join(domains), len(texts)))
L.append("")
L.append("### Load balance and local routing consistency (SRP, SCH)")
L.append("")
L.append("Paper (moe-lrc): SRP falls as the window m grows; real text is far above token-shuffled text; the SCH "
         "knee (segment cache of C experts per layer, priority = uses in the next m tokens) is near C = 2k.")
L.append("")
L.append("| model | load CV (mean over layers) | SRP m=4 | SRP m=16 | SRP m=64 | SRP m=256 | SRP m=16, shuffled | SCH m=16, C=k | C=2k | C=3k | C=2k, shuffled |")
L.append("|---|---|---|---|---|---|---|---|---|---|---|")
srp_hold = []
for n, _, _ in models:
    r = results[n]
    cv = [statistics.mean(l["cv"] for l in j["load"] if l.get("cv") is not None) for _, j in r["texts"]]
    srp = {}
    for _, j in r["texts"]:
        for s in j["lrc"]["srp"]:
            srp.setdefault(s["m"], []).append(s["srp"])
            srp.setdefault(("sh", s["m"]), []).append(s["shuffled"])
    k = r["texts"][0][1]["lrc"]["k"]
    sch = {}
    for _, j in r["texts"]:
        for s in j["lrc"]["sch"]:
            if s["m"] != 16:
                continue
            for mult in (1, 2, 3):
                c = mult * k
                if c <= len(s["hit_rate"]):
                    sch.setdefault(mult, []).append(s["hit_rate"][c - 1])
                    if mult == 2:
                        sch.setdefault("sh", []).append(s["shuffled"][c - 1])
    L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        n, spread(cv), spread(srp.get(4, [])), spread(srp.get(16, [])), spread(srp.get(64, [])), spread(srp.get(256, [])),
        spread(srp.get(("sh", 16), [])), spread(sch.get(1, [])), spread(sch.get(2, [])), spread(sch.get(3, [])),
        spread(sch.get("sh", []))))
    m = {mm: statistics.mean(v) for mm, v in srp.items() if not isinstance(mm, tuple) and v}
    falls = all(m[a] >= m[b] for a, b in zip(sorted(m), sorted(m)[1:]))
    pairs = list(zip(srp.get(16, []), srp.get(("sh", 16), [])))
    above = sum(1 for x, y in pairs if x > y)
    gap = statistics.mean(x - y for x, y in pairs) if pairs else float("nan")
    srp_hold.append((n, falls, above, len(pairs), gap))
L.append("")
for n, falls, above, total, gap in srp_hold:
    L.append("- %s: SRP %s as m grows; at m = 16 real text is above its token-shuffled copy on %d of %d texts "
             "(mean gap %+.3f)." % (n, "falls" if falls else "does **not** fall monotonically", above, total, gap))
L.append("")
L.append("### Super experts")
L.append("")
L.append("Rule (techniques.md section 4): among the first 75%% of layers, max |down-projection output| above the 99.5th "
         "percentile of all such maxima and above a tenth of the largest. Paper: 3 of 6,144 experts in Qwen3-30B-A3B; "
         "removing them breaks the model. Measured over all %d texts in one trace." % len(texts))
L.append("")
L.append("| model | experts considered | largest max | 99.5th percentile | median max | super experts |")
L.append("|---|---|---|---|---|---|")
for n, _, _ in models:
    s = results[n]["all"]["super_experts"]
    if not s.get("available"):
        L.append("| %s | - | - | - | - | (no expert statistics) |" % n)
        continue
    considered = [x["max_abs"] for x in s["experts"] if x["considered"]]
    L.append("| %s | %d (layers < %.1f) | %.2f | %.2f | %.2f | %s |" % (
        n, len(considered), s["layers_considered_below"], s["largest"], s["p99_5"], statistics.median(considered),
        ", ".join("layer %d expert %d (%.2f)" % (x["layer"], x["expert"], x["max_abs"]) for x in s["super"]) or "none"))
if mask_rows:
    L.append("")
    L.append("Masking them (`--mask-experts`, as if pruned) on the bundled model, against as many random experts of the "
             "same layers range; perplexity is the mean over the %d texts:" % len(texts))
    L.append("")
    L.append("| experts masked | mean perplexity |")
    L.append("|---|---|")
    for what, v in mask_rows:
        L.append("| %s | %.2f |" % (what, v))
L.append("")
L.append("### Cache simulator")
L.append("")
L.append("Paper direction: Belady's policy is the ceiling; the real store's counters match the simulator on the same "
         "trace and budget. Decode: 128 tokens generated greedily after a ~600-byte bible prompt, counted over the "
         "generated tokens; pool sizes in experts (the model has 4 MoE layers x 8 experts = 32).")
L.append("")
for n, _, _ in models:
    sim = results[n]["sim"]
    rows = sim["results"]
    budgets = sorted({x["slots"] for x in rows})
    keys = []
    for x in rows:
        key = (x["policy"], x["predictor"])
        if key not in keys:
            keys.append(key)
    L.append("**%s** (generated-token hit rate by pool size):" % n)
    L.append("")
    L.append("| policy | predictor | " + " | ".join("%d" % b for b in budgets) + " |")
    L.append("|---|---|" + "---|" * len(budgets))
    ceiling_ok = True
    by = {(x["policy"], x["predictor"], x["slots"]): x for x in rows}
    for key in keys:
        cells = []
        for b in budgets:
            x = by.get((key[0], key[1], b))
            v = x["gen_hit_rate"] if x else None
            cells.append("-" if v is None else "%.3f" % v)
            bel = by.get(("belady", "none", b))
            if x and bel and key[1] == "none" and v is not None and bel["gen_hit_rate"] is not None and v > bel["gen_hit_rate"] + 1e-12:
                ceiling_ok = False
        L.append("| %s | %s | %s |" % (key[0], key[1], " | ".join(cells)))
    rec = sim.get("recommendation", {})
    L.append("")
    L.append("Belady %s every demand policy at every size. Recommendation: %s" % (
        "is at or above" if ceiling_ok else "is **not** above", rec.get("text", json.dumps(rec))))
    L.append("")
L.append("The simulator against the real `BudgetedExpertStore` (bundled model, `--offload-all`, `--prefetch-margin -1`, "
         "64 generated tokens, `--mem` from the trace header for N slots):")
L.append("")
L.append("| policy | slots | store: pool slots | store hits | store misses | simulator hits | simulator misses | equal |")
L.append("|---|---|---|---|---|---|---|---|")
for p, s, ps, h, m, sh, sm in eq_rows:
    L.append("| %s | %d | %d | %d | %d | %d | %d | %s |" % (p, s, ps, h, m, sh, sm, "yes" if (h, m) == (sh, sm) and ps == s else "**no**"))
L.append("")
L.append("### Experts most tied to each domain (nPMI)")
L.append("")
L.append("nPMI of each domain label with each expert over all %d texts, per MoE layer: the expert with the highest "
         "nPMI, its value, and the expert with the lowest (bundled model)." % len(texts))
L.append("")
spec = results["bundled"]["all"]["specialisation"]
labels = results["bundled"]["all"]["labels"]
L.append("| layer | " + " | ".join("%s: top expert (nPMI) | lowest" % d for d in labels) + " |")
L.append("|---|" + "---|---|" * len(labels))
for l in spec:
    cells = []
    for a, d in enumerate(labels):
        row = l["label_npmi"][a]
        vals = [(v if v is not None else -2, e) for e, v in enumerate(row)]
        best, worst = max(vals), min(vals)
        cells.append("%d (%.3f) | %d (%.3f)" % (best[1], best[0], worst[1], worst[0]))
    L.append("| %d | %s |" % (l["layer"], " | ".join(cells)))
L.append("")
L.append("Generated by `scripts/analysis_fidelity.sh` in %.0f s." % (time.time() - t_start))

text = open(doc, encoding="utf-8").read() if os.path.exists(doc) else ""
begin, end = "<!-- analysis-fidelity:begin -->", "<!-- analysis-fidelity:end -->"
body = begin + "\n" + "\n".join(L) + "\n" + end
if begin in text and end in text:
    text = text[:text.index(begin)] + body + text[text.index(end) + len(end):]
else:
    text = text + "\n" + body + "\n"
with open(doc + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
os.replace(doc + ".tmp", doc)
shutil.copy(os.path.join(out, "report.html"), os.path.join(root, "docs/analysis-report.html"))
log("wrote %s and docs/analysis-report.html" % doc)
PY
# The report's screenshot (headless chromium; skipped with a message when it is absent).
if command -v chromium > /dev/null; then
  prof=$(mktemp -d)
  chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
    --disable-sync --no-first-run --user-data-dir="$prof" --window-size=1280,2400 \
    --screenshot="$ROOT/docs/analysis-report.png" "file://$ROOT/docs/analysis-report.html" > /dev/null 2>&1 || true
  rm -rf "$prof"
  echo "analysis_fidelity: wrote docs/analysis-report.png" >&2
else
  echo "analysis_fidelity: chromium not found: no screenshot" >&2
fi
