// Load generator for `moe serve` (node >= 18, built-in fetch; nothing to install). Used by
// bench/serve_load.sh.
//
//   node serve_load.mjs load URL CLIENTS REQUESTS MAX_TOKENS PROMPT_WORDS
//     CLIENTS concurrent streaming clients, each sending REQUESTS completions back to back (prompts of
//     PROMPT_WORDS random words, ignore_eos so every request generates MAX_TOKENS tokens, logprobs 0 so
//     every token arrives as its own chunk even when its bytes do not end a UTF-8 character). Prints one
//     JSON line: wall time, tokens, total tok/s, time to first token and inter-token latency (p50/p99).
//   node serve_load.mjs soak URL TOTAL CONCURRENCY
//     TOTAL short requests from CONCURRENCY workers: 40% streamed, 30% whole (a third of them with a
//     routing policy of their own), 15% streams the client
//     abandons after the first chunk, 15% malformed. Prints a JSON line with counts by outcome and status,
//     how many malformed ones got a 4xx in OpenAI's error shape, and any 5xx.
const [mode, url, ...args] = process.argv.slice(2);
const words = ("the of and to in is was that for on with as by at from his her they be this have which one all " +
  "were when there been has more will would their what said unto king lord god people land day house " +
  "def class import return self print list dict value error file data").split(" ");
let rng = 12345;
const rand = () => { rng = (rng * 1103515245 + 12345) & 0x7fffffff; return rng / 0x7fffffff; };
const prompt = (n) => Array.from({ length: n }, () => words[Math.floor(rand() * words.length)]).join(" ");
const pct = (xs, p) => {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p / 100 * s.length))];
};
const now = () => performance.now() / 1000;

// Streams one completion; returns {ttft, gaps, tokens, status}. abortAfter: chunks before walking away.
async function stream(body, abortAfter = -1) {
  const ctl = new AbortController();
  const t0 = now();
  const res = await fetch(url + "/v1/completions", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal: ctl.signal,
  });
  if (res.status !== 200) { await res.text(); return { status: res.status, tokens: 0, gaps: [] }; }
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = "", ttft = null, last = null, tokens = 0, chunks = 0, done = false, usage = null;
  const gaps = [];
  try {
    while (!done) {
      const { value, done: end } = await reader.read();
      if (end) break;
      buf += dec.decode(value, { stream: true });
      let at;
      while ((at = buf.indexOf("\n\n")) >= 0) {
        const ev = buf.slice(0, at);
        buf = buf.slice(at + 2);
        if (!ev.startsWith("data: ")) continue;
        const data = ev.slice(6);
        if (data === "[DONE]") { done = true; break; }
        const j = JSON.parse(data);
        if (j.error) throw new Error("stream error: " + j.error.message);
        if (j.usage) usage = j.usage;
        const c = j.choices?.[0];
        if (!c || c.finish_reason) continue;
        const n = c.logprobs?.tokens?.length ?? (c.text ? 1 : 0);
        if (!n) continue;
        const t = now();
        if (ttft === null) ttft = t - t0; else gaps.push((t - last) / n);
        for (let i = 1; i < n; ++i) gaps.push(0);
        last = t;
        tokens += n;
        if (abortAfter >= 0 && ++chunks > abortAfter) { ctl.abort(); return { status: 0, aborted: true, tokens, gaps }; }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") return { status: 0, aborted: true, tokens, gaps };
    throw e;
  }
  return { status: 200, ttft, gaps, tokens, usage };
}

async function load(clients, requests, maxTokens, promptWords) {
  const ttfts = [], gaps = [];
  let tokens = 0, failures = 0;
  const t0 = now();
  await Promise.all(Array.from({ length: clients }, async () => {
    for (let r = 0; r < requests; ++r) {
      const out = await stream({ prompt: prompt(promptWords), max_tokens: maxTokens, temperature: 0.8, ignore_eos: true,
                                 logprobs: 0, stream: true });
      if (out.status !== 200) { ++failures; continue; }
      ttfts.push(out.ttft);
      gaps.push(...out.gaps);
      tokens += out.tokens;
    }
  }));
  const wall = now() - t0;
  console.log(JSON.stringify({
    clients, requests: clients * requests, failures, tokens, wall_s: wall, tok_s: tokens / wall,
    ttft_p50_ms: 1000 * pct(ttfts, 50), ttft_p99_ms: 1000 * pct(ttfts, 99),
    itl_p50_ms: 1000 * pct(gaps, 50), itl_p99_ms: 1000 * pct(gaps, 99),
    per_stream_tok_s: 1 / pct(gaps, 50),
  }));
}

const malformed = [
  ["{\"prompt\": ", "invalid_json"], ["[1,2,3]", null], ["{}", null], ["{\"prompt\": \"x\", \"temperature\": \"hot\"}", null],
  ["{\"prompt\": \"x\", \"max_tokens\": -5}", null], ["{\"prompt\": \"x\", \"bogus\": true}", null],
  ["{\"prompt\": [999999999]}", null], ["{\"prompt\": \"x\", \"moe\": {\"nope\": 1}}", null],
  ["{\"prompt\": \"x\", \"n\": 100000}", null], ["\u0000\u0001\u0002", null],
  ["{\"prompt\": \"x\", \"stop\": [1, 2]}", null], ["{\"prompt\": \"x\", \"logit_bias\": {\"a\": 1}}", null],
  ["{\"prompt\": \"x\", \"moe\": {\"experts\": 100000}}", null],
];

async function soak(total, concurrency) {
  const counts = { streamed: 0, whole: 0, cancelled: 0, malformed: 0 }, status = {};
  let malformedOk = 0, fiveXX = 0, next = 0, errors = [];
  const bump = (s) => { status[s] = (status[s] ?? 0) + 1; if (s >= 500) ++fiveXX; };
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < total) {
      const i = next++;
      const roll = rand();
      try {
        if (roll < 0.40) {
          const out = await stream({ prompt: prompt(6 + (i % 10)), max_tokens: 4 + (i % 5), temperature: 0.7, stream: true });
          bump(out.status); ++counts.streamed;
        } else if (roll < 0.70) {
          const r = await fetch(url + "/v1/chat/completions", { method: "POST", headers: { "Content-Type": "application/json" },
            // Every third one routes under its own policy (one expert per token: within any model's plan).
            body: JSON.stringify({ messages: [{ role: "user", content: prompt(5 + (i % 7)) }], max_tokens: 3 + (i % 6),
                                   ...(i % 3 === 0 ? { moe: { experts: 1 } } : {}) }) });
          const j = await r.json();
          bump(r.status); ++counts.whole;
          if (r.status !== 200) errors.push(`whole request got ${r.status}: ${JSON.stringify(j).slice(0, 120)}`);
          else if (!j.choices) errors.push("200 without choices");
          else if (i % 3 === 0 && j.moe_usage?.experts_per_token !== 1) errors.push("moe.experts 1 not applied");
        } else if (roll < 0.85) {
          const out = await stream({ prompt: prompt(8), max_tokens: 64, stream: true, ignore_eos: true, logprobs: 0 }, 1);
          bump(out.aborted ? "aborted" : out.status); ++counts.cancelled;
        } else {
          const [body] = malformed[i % malformed.length];
          const r = await fetch(url + "/v1/completions", { method: "POST", headers: { "Content-Type": "application/json" }, body });
          const text = await r.text();
          bump(r.status); ++counts.malformed;
          let shaped = false;
          try {
            const e = JSON.parse(text).error;
            shaped = typeof e.message === "string" && typeof e.type === "string" && "param" in e && "code" in e;
          } catch {}
          if (r.status >= 400 && r.status < 500 && shaped) ++malformedOk;
          else errors.push(`malformed body ${JSON.stringify(body)} got ${r.status}: ${text.slice(0, 120)}`);
        }
      } catch (e) {
        errors.push(String(e));
      }
    }
  }));
  console.log(JSON.stringify({ total, counts, status, malformed_4xx_shaped: malformedOk, five_xx: fiveXX,
                               errors: errors.slice(0, 10), n_errors: errors.length }));
}

if (mode === "load") await load(+args[0], +args[1], +args[2], +args[3]);
else if (mode === "soak") await soak(+args[0], +args[1]);
else { console.error("usage: serve_load.mjs load URL CLIENTS REQUESTS MAX_TOKENS PROMPT_WORDS | soak URL TOTAL CONCURRENCY"); process.exit(2); }
