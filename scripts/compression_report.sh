#!/usr/bin/env bash
# Turns scripts/compression_table.sh's raw rows (WORK/results.tsv, WORK/times.tsv) into the markdown tables of
# docs/compression.md, between the lines "<!-- compression-table:begin -->" and "<!-- compression-table:end -->".
#   scripts/compression_report.sh WORK DOC
set -euo pipefail
WORK=$1
DOC=$2
TSV=$WORK/results.tsv
OUT=$WORK/table.md
# results.tsv: row, compressed file, eval file, tokens, ppl before, ppl after, KL, top-1, bytes before, bytes after
awk -F'\t' -v times="$WORK/times.tsv" '
function dom(path,   n, p) { n = split(path, p, "/"); return p[n - 1] }
function fmt_ppl(a, b) { return sprintf("%.2f (%+.1f%%)", b, 100 * (b / a - 1)) }
BEGIN {
  nd = split("bible python fortunes", D, " ")
  while ((getline line < times) > 0) { split(line, t, "\t"); secs[t[1]] = t[2] }
}
{
  row = $1; d = dom($3)
  base[d] = $5; ppl[row, d] = $6; kl[row, d] = $7; top1[row, d] = $8
  size_before = $9; size[row] = $10; rows[row] = 1
}
END {
  printf "Model: the bundled `models/tiny-qwen3moe-8x2-kjv-py-fortunes-F16.gguf` (%.1f MB). Perplexity on each domain'"'"'s held-out test split\n", size_before / 1e6
  printf "(the original: "
  for (i = 1; i <= nd; ++i) { sep = (i == 1) ? "" : ", "; printf "%s%s %.2f", sep, D[i], base[D[i]] }
  printf "); in brackets the change against the original; KL = mean KL(original || compressed) per token, nats,\n"
  printf "averaged over the three domains.\n\n"

  printf "### Expert pruning (calibrated on the three valid splits together)\n\n"
  printf "| criterion | experts kept | bible | python | fortunes | mean KL | time (s) |\n|---|---|---|---|---|---|---|\n"
  split("reap easy-ep frequency", C, " ")
  for (k = 6; k >= 4; k -= 2) {
    for (c = 1; c <= 3; ++c) {
      r = "prune/" C[c] "/" k
      if (!(r in rows)) continue
      m = 0; line = sprintf("| %s | %d of 8 |", C[c], k)
      for (i = 1; i <= nd; ++i) { line = line " " fmt_ppl(base[D[i]], ppl[r, D[i]]) " |"; m += kl[r, D[i]] / nd; mean[C[c], k] += log(ppl[r, D[i]] / base[D[i]]) / nd }
      printf "%s %.4f | %.1f |\n", line, m, secs[r]
    }
    # random: mean over seeds, with min and max
    line = sprintf("| random (3 seeds: mean [min, max]) | %d of 8 |", k); mk = 0; ns = 0
    for (i = 1; i <= nd; ++i) {
      s = 0; lo = 1e30; hi = 0; n = 0
      for (seed = 1; seed <= 3; ++seed) {
        r = "prune/random" seed "/" k
        if (!(r in rows)) continue
        v = ppl[r, D[i]]; s += v; n++; if (v < lo) lo = v; if (v > hi) hi = v; mk += kl[r, D[i]]; ns++
        rmean[seed, k] += log(v / base[D[i]]) / nd
      }
      if (n) { line = line sprintf(" %.2f [%.2f, %.2f] (%+.1f%%) |", s / n, lo, hi, 100 * (s / n / base[D[i]] - 1)); mean["random", k] += log(s / n / base[D[i]]) / nd }
    }
    if (ns) printf "%s %.4f | %.1f |\n", line, mk / ns, secs["prune/random1/" k]
  }
  printf "\n"

  printf "### Expert merging (M-SMoE) against pruning to the same count\n\n"
  printf "The centres are the most frequent experts, the set frequency pruning keeps; merging averages the others into them.\n\n"
  printf "| method | experts per layer | bible | python | fortunes | mean KL | time (s) |\n|---|---|---|---|---|---|---|\n"
  split("merge/msmoe merge/msmoe-noalign merge/naive prune/frequency prune/reap", MR, " ")
  MN["merge/msmoe"] = "M-SMoE (aligned, frequency-weighted)"; MN["merge/msmoe-noalign"] = "M-SMoE without alignment"
  MN["merge/naive"] = "naive average (uniform weights, no alignment)"; MN["prune/frequency"] = "frequency pruning (same centres, no merging)"
  MN["prune/reap"] = "REAP pruning"
  for (k = 6; k >= 4; k -= 2) {
    for (c = 1; c <= 5; ++c) {
      r = MR[c] "/" k
      if (!(r in rows)) continue
      m = 0; lm = 0; line = sprintf("| %s | %d of 8 |", MN[MR[c]], k)
      for (i = 1; i <= nd; ++i) { line = line " " fmt_ppl(base[D[i]], ppl[r, D[i]]) " |"; m += kl[r, D[i]] / nd; lm += log(ppl[r, D[i]] / base[D[i]]) / nd }
      mlog[MR[c], k] = lm; mkl[MR[c], k] = m
      printf "%s %.4f | %.1f |\n", line, m, secs[r]
    }
  }
  printf "\n"

  printf "### TCESS: a domain'"'"'s own expert set (4 of 8, PreMoe task pattern) against frequency on all domains\n\n"
  printf "| experts of | bible | python | fortunes |\n|---|---|---|---|\n"
  for (j = 1; j <= nd; ++j) {
    r = "tcess/" D[j] "/4"
    if (!(r in rows)) continue
    line = sprintf("| %s (TCESS) |", D[j])
    for (i = 1; i <= nd; ++i) line = line " " fmt_ppl(base[D[i]], ppl[r, D[i]]) (i == j ? " **own**" : "") " |"
    print line
  }
  r = "prune/frequency/4"
  if (r in rows) {
    line = "| all domains (frequency) |"
    for (i = 1; i <= nd; ++i) line = line " " fmt_ppl(base[D[i]], ppl[r, D[i]]) " |"
    print line
  }
  printf "\n"

  printf "### Mixed precision at equal size (experts only; everything else Q8_0 in every file)\n\n"
  printf "| expert types | file size | bible | python | fortunes | mean KL |\n|---|---|---|---|---|---|\n"
  split("q3_K q4_K", B, " ")
  for (b = 1; b <= 2; ++b) {
    split("uniform pmq freq-only pmq-pe freq-only-pe pmq-pew", M, " ")
    for (m = 1; m <= 6; ++m) {
      r = "quant/" M[m] "/" B[b]
      if (!(r in rows)) continue
      unit = M[m] ~ /-pe$/ ? "per expert matrix" : (M[m] ~ /-pew$/ ? "per expert (gate, up, down alike)" : "per (layer, projection)")
      name = M[m] == "uniform" ? "uniform " B[b] : (M[m] ~ /^pmq/ ? "PMQ (ILP, f^1 w^1.5), " unit ", at " B[b] "'"'"'s size" : "frequency-only (ILP, f^1), " unit ", at " B[b] "'"'"'s size")
      line = sprintf("| %s | %.2f MB |", name, size[r] / 1e6); mk = 0
      for (i = 1; i <= nd; ++i) { line = line " " fmt_ppl(base[D[i]], ppl[r, D[i]]) " |"; mk += kl[r, D[i]] / nd; qk[M[m], B[b]] = mk; qs[M[m], B[b]] = size[r] }
      printf "%s %.4f |\n", line, mk
    }
  }
  printf "\n"

  # The directions of techniques.md section 8, checked on these numbers (mean log-perplexity ratio over domains).
  printf "### Against the papers'"'"' directions (techniques.md section 8)\n\n"
  printf "| claim | here | holds? |\n|---|---|---|\n"
  for (k = 6; k >= 4; k -= 2) {
    rr = mean["reap", k]; ee = mean["easy-ep", k]; ff = mean["frequency", k]; ra = mean["random", k]
    v = "no"
    if (rr <= ff && ee <= ff && ff < ra) v = "yes"
    else if (rr <= ff && ee <= ff && rr < ra && ee < ra) v = "partly: REAP and EASY-EP beat frequency and random, but frequency is worse than random"
    else if (rr < ra && ee < ra && ff < ra) v = "partly: all beat random, but REAP/EASY-EP not <= frequency"
    printf "| REAP, EASY-EP <= frequency < random (%d%% removed) | mean log-ppl ratio: REAP %.3f, EASY-EP %.3f, frequency %.3f, random %.3f | %s |\n", (8 - k) * 100 / 8, rr, ee, ff, ra, v
    # spread: does the best criterion beat every random seed?
    best = rr; if (ee < best) best = ee; if (ff < best) best = ff
    beat = 0; for (seed = 1; seed <= 3; ++seed) if (best < rmean[seed, k]) beat++
    v = "no"; if (beat == 3) v = "yes"; else if (beat >= 1) v = "partly"
    printf "| a criterion beats random draws (%d%% removed) | the best criterion beats %d of 3 random seeds | %s |\n", (8 - k) * 100 / 8, beat, v
  }
  for (k = 6; k >= 4; k -= 2) {
    if (!(("merge/msmoe", k) in mlog)) continue
    pc = (8 - k) * 100 / 8
    a = mlog["merge/msmoe", k]; na = mlog["merge/msmoe-noalign", k]; nv = mlog["merge/naive", k]
    fq = mlog["prune/frequency", k]; re = mlog["prune/reap", k]
    best = a < na ? a : na
    v = best < nv ? "yes" : "no"
    printf "| merging beats naive averaging (%d%% removed) | mean log-ppl ratio: M-SMoE %.3f (without alignment %.3f), naive %.3f | %s |\n", pc, a, na, nv, v
    v = a < na ? "yes" : "no"
    printf "| neuron alignment helps merging (%d%% removed) | mean log-ppl ratio: aligned %.3f, unaligned %.3f | %s |\n", pc, a, na, v
    v = best < fq ? "yes" : "no"
    printf "| merging beats dropping the same experts (%d%% removed) | mean log-ppl ratio: M-SMoE %.3f, frequency pruning %.3f | %s |\n", pc, best, fq, v
    v = re < best ? "yes" : "no"
    printf "| pruning (REAP) beats merging (REAP'"'"'s claim, on generation; here perplexity) (%d%% removed) | mean log-ppl ratio: REAP %.3f, best merge %.3f | %s |\n", pc, re, best, v
  }
  own = 0; n = 0
  for (j = 1; j <= nd; ++j) {
    r = "tcess/" D[j] "/4"; if (!(r in rows)) continue
    bestd = 1
    for (i = 1; i <= nd; ++i) if (log(ppl[r, D[i]] / base[D[i]]) < log(ppl[r, D[bestd]] / base[D[bestd]])) bestd = i
    own += bestd == j; n++
    f = "prune/frequency/4"
    if (f in rows) tbeat += ppl[r, D[j]] < ppl[f, D[j]]
  }
  if (n) {
    v = "no"; if (own == n) v = "yes"; else if (own >= 1) v = "partly"
    printf "| domain calibration keeps its domain best (TCESS) | %d of %d domains'"'"' own sets are best on their own domain (relative change) | %s |\n", own, n, v
    v = "no"; if (tbeat == n) v = "yes"; else if (tbeat >= 1) v = "partly"
    printf "| a domain'"'"'s own set beats the all-domain set on that domain | %d of %d domains | %s |\n", tbeat, n, v
  }
  for (b = 1; b <= 2; ++b) {
    p = qk["pmq", B[b]]; f = qk["freq-only", B[b]]; u = qk["uniform", B[b]]
    if (u == "") continue
    v = "no"
    if (p < f && f < u) v = "yes"
    else if (p == f && f < u) v = "partly: both beat uniform, but PMQ and frequency-only chose the same types (the per-tensor unit sums over all experts of a layer)"
    else if (p < u && f < u) v = "partly: both beat uniform, PMQ not below frequency-only"
    else if (p < u) v = "partly: PMQ beats uniform"
    printf "| PMQ < frequency-only < uniform at the same bytes (%s) | mean KL: PMQ %.4f, frequency-only %.4f, uniform %.4f | %s |\n", B[b], p, f, u, v
    pe = qk["pmq-pe", B[b]]; fe = qk["freq-only-pe", B[b]]
    if (pe == "") continue
    v = "no"
    if (pe < p && fe <= f) v = "yes"
    else if (pe < p || fe < f) v = "partly"
    printf "| a type per expert matrix beats one per (layer, projection) at the same bytes (%s) | mean KL per expert matrix: PMQ %.4f, frequency-only %.4f; per tensor: PMQ %.4f, frequency-only %.4f | %s |\n", B[b], pe, fe, p, f, v
    v = pe < fe ? "yes" : (pe == fe ? "no: the same types" : "no")
    printf "| PMQ < frequency-only with a type per expert matrix (%s) | mean KL: PMQ %.4f, frequency-only %.4f | %s |\n", B[b], pe, fe, v
    pw = qk["pmq-pew", B[b]]
    if (pw != "") printf "| one type per whole expert (gate, up, down alike) beats one per (layer, projection) (%s) | mean KL (PMQ): per expert %.4f, per expert matrix %.4f, per tensor %.4f | %s |\n", B[b], pw, pe, p, pw < p ? "yes" : "no"
  }
  printf "\nTimes: calibrate %.1f s", secs["calibrate"]
  printf "; each prune, merge or quantize above includes its --eval of both models on %d windows per domain.\n", 0
}' "$TSV" > "$OUT"
sed -i "s/on 0 windows per domain/on the held-out windows/" "$OUT"
# Splice into the doc.
awk -v table="$OUT" '
  /<!-- compression-table:begin -->/ { print; while ((getline l < table) > 0) print l; skip = 1; next }
  /<!-- compression-table:end -->/ { skip = 0 }
  !skip { print }' "$DOC" > "$DOC.tmp"
mv "$DOC.tmp" "$DOC"
echo "wrote the table into $DOC"
