// Loads the dashboard (MOE_URL/) in headless chromium (CHROMIUM) over the DevTools protocol and checks,
// while completion requests run, that the page receives frames, that the heatmap's numbers and its
// pixels change, and that tok/s rises above 0. SCREENSHOT (optional): where to save a PNG of the page.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";

const url = process.env.MOE_URL;
const profile = mkdtempSync(join(tmpdir(), "moe-dashboard-"));
const chrome = spawn(process.env.CHROMIUM, [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
  "--disable-sync", "--no-first-run", "--user-data-dir=" + profile, "--remote-debugging-port=0",
  "--window-size=1280,980", "about:blank",
], { stdio: ["ignore", "ignore", "pipe"], detached: true });  // its own process group: it has helpers
let chromeErr = "";
chrome.stderr.on("data", (d) => { chromeErr += d; });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let ws = null, stopLoad = false;

async function main() {
  // Chromium writes the port it picked into the profile.
  let port = null;
  for (let i = 0; i < 600 && !port; ++i) {
    const f = join(profile, "DevToolsActivePort");
    if (existsSync(f)) port = readFileSync(f, "utf8").split("\n")[0].trim() || null;
    if (!port) await sleep(100);
  }
  assert.ok(port, "chromium did not start: " + chromeErr.slice(-500));
  const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
  const page = targets.find((t) => t.type === "page");
  ws = new WebSocket(page.webSocketDebuggerUrl);
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  let nextId = 0;
  const pending = new Map();
  ws.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    if (m.id !== undefined && pending.has(m.id)) { pending.get(m.id)(m); pending.delete(m.id); }
  };
  const send = (method, params = {}) => new Promise((resolve) => {
    const id = ++nextId;
    pending.set(id, resolve);
    ws.send(JSON.stringify({ id, method, params }));
  });
  const evaluate = async (expr) => {
    const r = await send("Runtime.evaluate", { expression: expr, returnByValue: true });
    return r.result?.result?.value;
  };
  await send("Page.enable");
  await send("Page.navigate", { url: url + "/" });

  const dataset = () => evaluate("JSON.stringify(document.body ? document.body.dataset : {})").then((s) => JSON.parse(s || "{}"));
  // A digest of the heatmap's pixels.
  const heatDigest = () => evaluate(`(() => {
    const c = document.getElementById("heat"); if (!c) return "";
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let h = 0, colors = new Set();
    for (let i = 0; i < d.length; i += 4) { h = (h * 31 + d[i] + 7 * d[i + 1] + 13 * d[i + 2]) >>> 0; if (i % 400 === 0) colors.add(d[i] << 16 | d[i + 1] << 8 | d[i + 2]); }
    return h + ":" + colors.size;
  })()`);

  // Wait for the page to connect before the load starts.
  for (let i = 0; i < 300; ++i) {
    if (Number((await dataset()).frames) >= 1) break;
    await sleep(100);
  }
  const before = await dataset();
  assert.ok(Number(before.frames) >= 1, "the page received no frame from /events");

  // Load: a few clients sending completions until told to stop.
  const prompts = ["And the LORD said unto", "def parse(self, text):", "A fool and his", "import os\nimport sys\n"];
  const loads = prompts.map(async (p) => {
    while (!stopLoad) {
      const r = await fetch(url + "/v1/completions", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ prompt: p, max_tokens: 48, temperature: 0.9 }) });
      await r.text();
    }
  });

  const digests = new Set();
  let last = before;
  for (let i = 0; i < 120; ++i) {
    await sleep(500);
    last = await dataset();
    digests.add(await heatDigest());
    if (Number(last.frames) >= Number(before.frames) + 6 && Number(last.heatChanges) >= 3 && digests.size >= 3) break;
  }
  if (process.env.SCREENSHOT) {
    const shot = await send("Page.captureScreenshot", { format: "png" });
    writeFileSync(process.env.SCREENSHOT, Buffer.from(shot.result.data, "base64"));
    console.log("screenshot: " + process.env.SCREENSHOT);
  }
  stopLoad = true;
  await Promise.all(loads);
  console.log("dashboard:", JSON.stringify(last), "distinct heatmap images:", digests.size);
  assert.ok(Number(last.frames) >= Number(before.frames) + 6, "frames keep arriving");
  assert.ok(Number(last.loadTotal) > 0, "the heatmap counted routed tokens");
  assert.ok(Number(last.heatChanges) >= 3, "the heatmap's values changed while requests ran");
  assert.ok(digests.size >= 3, "the heatmap's pixels changed while requests ran");
  assert.ok(Number(last.maxTokS) > 0, "tok/s rose above 0");
  console.log("ok  dashboard heatmap updates under load");
}

try {
  await main();
} finally {
  stopLoad = true;
  try { ws?.close(); } catch {}
  const exited = new Promise((r) => chrome.once("exit", r));
  try { process.kill(-chrome.pid, "SIGKILL"); } catch { chrome.kill("SIGKILL"); }
  await exited;
  try { rmSync(profile, { recursive: true, force: true, maxRetries: 20, retryDelay: 100 }); } catch (e) {
    console.log("note: could not remove " + profile + ": " + e.message);
  }
}
