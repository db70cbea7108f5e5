// The live dashboard: one self-contained page (no external scripts, styles or fonts) fed by /events.
// It draws the expert load per layer as a heatmap (each cell: the share of that layer's routed tokens
// that went to the expert over the last interval, smoothed), the store hit rate, tok/s and the queue.
// The page also records what it showed in data- attributes of <body> (frames received, heatmap
// changes, totals), so a headless browser test can check that the heatmap updates.
#include "server/server.h"

namespace moe::server {

const std::string& dashboard_html() {
  static const std::string page = R"HTML(<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>moe.cpp serve</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{margin:0;background:#101418;color:#dde3ea;font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif}
 header{padding:12px 20px;background:#182028;border-bottom:1px solid #2a3440;display:flex;gap:24px;align-items:baseline}
 header h1{font-size:18px;margin:0;font-weight:600} header span{color:#8b98a8}
 .tiles{display:flex;flex-wrap:wrap;gap:12px;padding:16px 20px}
 .tile{background:#182028;border:1px solid #2a3440;border-radius:6px;padding:10px 14px;min-width:130px}
 .tile .v{font-size:24px;font-weight:600;font-variant-numeric:tabular-nums} .tile .k{color:#8b98a8;font-size:12px}
 .panel{margin:0 20px 16px;background:#182028;border:1px solid #2a3440;border-radius:6px;padding:12px 14px}
 .panel h2{font-size:14px;margin:0 0 8px;font-weight:600;color:#b9c4d0}
 canvas{display:block;max-width:100%} #status{color:#8b98a8} .legend{color:#8b98a8;font-size:12px;margin-top:6px}
</style></head>
<body data-frames="0" data-heat-changes="0" data-load-total="0" data-max-tok-s="0">
<header><h1>moe.cpp serve</h1><span id="model"></span><span id="mode"></span><span id="status">connecting…</span></header>
<div class="tiles">
 <div class="tile"><div class="v" id="toks">–</div><div class="k">generated tok/s</div></div>
 <div class="tile"><div class="v" id="ptoks">–</div><div class="k">prompt tok/s</div></div>
 <div class="tile"><div class="v" id="queue">–</div><div class="k">queued</div></div>
 <div class="tile"><div class="v" id="active">–</div><div class="k">active / slots</div></div>
 <div class="tile"><div class="v" id="hit">–</div><div class="k">expert cache hit rate (interval)</div></div>
 <div class="tile"><div class="v" id="read">–</div><div class="k">expert MB read / s</div></div>
 <div class="tile"><div class="v" id="gen">–</div><div class="k">tokens generated</div></div>
</div>
<div class="panel"><h2>Expert load per layer (share of each layer's routed tokens, last interval)</h2>
 <canvas id="heat" width="1200" height="120"></canvas>
 <div class="legend" id="heatlegend">rows: MoE layers, columns: experts; colour: the expert's share of the layer's routed
 tokens, from none (dark blue) through the uniform share 1/E (red-brown) to 3/E or more (yellow)</div></div>
<div class="panel"><h2>Throughput (tok/s, last 2 minutes)</h2><canvas id="spark" width="1200" height="120"></canvas></div>
<script>
"use strict";
const $ = id => document.getElementById(id);
let prev = null, heat = null, history = [];
const body = document.body;
function color(v) {  // 0 .. 1: dark blue, red, yellow
  const t = Math.max(0, Math.min(1, v));
  const stops = [[27, 42, 74], [217, 83, 79], [242, 225, 78]];
  const f = t < 0.5 ? t / 0.5 : (t - 0.5) / 0.5, a = stops[t < 0.5 ? 0 : 1], b = stops[t < 0.5 ? 1 : 2];
  return `rgb(${a.map((x, i) => Math.round(x + (b[i] - x) * f)).join(",")})`;
}
function drawHeat(layers, nExpert) {
  const c = $("heat"), x = c.getContext("2d");
  const rows = layers.length, cols = nExpert;
  const lab = 56, top = 4, cw = Math.max(2, Math.floor((c.width - lab - 8) / cols));
  const ch = Math.max(6, Math.min(28, Math.floor(400 / Math.max(1, rows))));
  const h = top + rows * ch + 18;
  if (c.height !== h) c.height = h;
  x.fillStyle = "#182028"; x.fillRect(0, 0, c.width, c.height);
  x.font = "11px system-ui,sans-serif";
  for (let r = 0; r < rows; ++r) {
    x.fillStyle = "#8b98a8";
    if (ch >= 10 || r % 2 === 0) x.fillText("layer " + layers[r], 2, top + r * ch + Math.min(ch, 14) - 3);
    for (let e = 0; e < cols; ++e) {
      // A uniform router gives each expert 1/E of the layer's tokens: that is a third of the scale.
      x.fillStyle = color(heat[r][e] * cols / 3);
      x.fillRect(lab + e * cw, top + r * ch, cw - (cw > 3 ? 1 : 0), ch - 1);
    }
  }
  x.fillStyle = "#8b98a8";
  for (let e = 0; e < cols; e += Math.max(1, Math.round(cols / 16))) x.fillText(String(e), lab + e * cw, top + rows * ch + 12);
}
function drawSpark() {
  const c = $("spark"), x = c.getContext("2d");
  x.fillStyle = "#182028"; x.fillRect(0, 0, c.width, c.height);
  if (history.length < 2) return;
  const mx = Math.max(1, ...history.map(h => h.v));
  x.strokeStyle = "#f2c14e"; x.lineWidth = 2; x.beginPath();
  history.forEach((h, i) => {
    const px = c.width * i / (history.length - 1), py = c.height - 4 - (c.height - 16) * h.v / mx;
    if (i === 0) x.moveTo(px, py); else x.lineTo(px, py);
  });
  x.stroke(); x.fillStyle = "#8b98a8"; x.font = "11px system-ui,sans-serif"; x.fillText(mx.toFixed(1) + " tok/s", 4, 12);
}
function onFrame(s) {
  body.dataset.frames = String(Number(body.dataset.frames) + 1);
  $("model").textContent = s.model;
  $("mode").textContent = (s.streaming_experts ? "experts stream from disk" : "experts resident") +
    ", " + s.policy + " scheduling, " + s.parallel + " per step";
  $("toks").textContent = s.tok_s.toFixed(1);
  $("ptoks").textContent = s.prompt_tok_s.toFixed(1);
  $("queue").textContent = s.queue;
  $("active").textContent = s.active + " / " + s.slots;
  $("gen").textContent = s.generated;
  body.dataset.maxTokS = String(Math.max(Number(body.dataset.maxTokS), s.tok_s));
  const nl = s.layers.length, ne = s.n_expert;
  if (!heat) heat = Array.from({length: nl}, () => new Array(ne).fill(0));
  let total = 0, changed = false;
  if (prev) {
    const dt = Math.max(0.05, s.t - prev.t);
    const dh = s.store_hits - prev.store_hits, dm = s.store_misses - prev.store_misses;
    $("hit").textContent = dh + dm > 0 ? (100 * dh / (dh + dm)).toFixed(1) + "%" : (s.streaming_experts ? "–" : "100% (resident)");
    $("read").textContent = ((s.bytes_read - prev.bytes_read) / dt / 1e6).toFixed(1);
    for (let r = 0; r < nl; ++r) {
      let sum = 0;
      const d = s.load[r].map((v, e) => v - prev.load[r][e]);
      d.forEach(v => sum += v);
      total += sum;
      for (let e = 0; e < ne; ++e) {
        const share = sum > 0 ? d[e] / sum : 0;
        const next = sum > 0 ? 0.5 * heat[r][e] + 0.5 * share : 0.8 * heat[r][e];
        if (Math.abs(next - heat[r][e]) > 1e-9) changed = true;
        heat[r][e] = next;
      }
    }
  }
  if (changed) body.dataset.heatChanges = String(Number(body.dataset.heatChanges) + 1);
  body.dataset.loadTotal = String(Number(body.dataset.loadTotal) + total);
  history.push({t: s.t, v: s.tok_s}); while (history.length > 240) history.shift();
  drawHeat(s.layers, ne); drawSpark();
  prev = s;
}
const es = new EventSource("events");
es.onopen = () => { $("status").textContent = "live"; };
es.onerror = () => { $("status").textContent = "disconnected (retrying)"; };
es.onmessage = ev => { try { onFrame(JSON.parse(ev.data)); } catch (e) { $("status").textContent = "bad frame: " + e; } };
</script></body></html>
)HTML";
  return page;
}

}  // namespace moe::server
