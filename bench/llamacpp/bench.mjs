// llama.cpp baseline for `moe bench`: drives llama.cpp's prebuilt CPU libraries through node-llama-cpp
// (no llama-bench binary ships in @node-llama-cpp/linux-x64). Measures what `moe bench` measures:
//   pp   : p random tokens evaluated as one batch into an empty sequence; the clock stops at the first
//          sampled token, so pp_tok_s = p / ttft (sampling one token is negligible next to the batch)
//   tg   : from an empty sequence, n single-token steps, each sampled greedily (temperature 0)
// Each is the median of REPS repetitions (min, max), after one untimed warm-up.
// Usage: node bench.mjs MODEL THREADS [P=512] [N=64] [REPS=3]   (prints one JSON object on stdout)
// NODE_PATH-style resolution: set NLC_DIR to the directory whose node_modules holds node-llama-cpp.
import {createRequire} from "node:module";
import path from "node:path";

const [modelPath, threadsArg, pArg, nArg, repsArg] = process.argv.slice(2);
if (!modelPath) {
    console.error("usage: node bench.mjs MODEL THREADS [P] [N] [REPS]");
    process.exit(2);
}
const threads = Number(threadsArg ?? 2), nPrompt = Number(pArg ?? 512), nGen = Number(nArg ?? 64);
const reps = Number(repsArg ?? 3);
const require = createRequire(path.join(process.env.NLC_DIR ?? process.cwd(), "node_modules", "_"));
const {getLlama, LlamaLogLevel} = await import(require.resolve("node-llama-cpp"));

const llama = await getLlama({gpu: false, build: "never", skipDownload: true, maxThreads: threads,
                              logLevel: process.env.NLC_LOG ? LlamaLogLevel.debug : LlamaLogLevel.error, progressLogs: false});
const t0 = performance.now();
// NLC_MMAP=0 loads without mmap (for runs under a memory limit, as the offload benchmarks need).
const model = await llama.loadModel({modelPath, gpuLayers: 0, useMmap: process.env.NLC_MMAP !== "0"});
const loadS = (performance.now() - t0) / 1e3;
const context = await model.createContext({contextSize: Math.max(nPrompt, nGen) + 64, batchSize: Math.max(nPrompt, 1),
                                           threads, sequences: 1});
const seq = context.getSequence();

// Fixed-seed random prompt (mulberry32), uniform over the vocabulary, as `moe bench` does.
let s = 42 >>> 0;
const rand = () => { s = (s + 0x6D2B79F5) >>> 0; let t = s; t = Math.imul(t ^ (t >>> 15), t | 1);
                     t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
const meta = model.fileInfo;
const nVocab = Number(meta?.architectureMetadata?.vocab_size ?? meta?.metadata?.tokenizer?.ggml?.tokens?.length);
if (!(nVocab > 0)) throw new Error("cannot determine the vocabulary size from the model metadata");
const prompt = Array.from({length: nPrompt}, () => Math.floor(rand() * nVocab));

async function runPp() {
    await seq.clearHistory();
    const t = performance.now();
    const it = seq.evaluate(prompt, {temperature: 0});
    await it.next();          // the prompt batch, then the first sampled token
    const ms = performance.now() - t;
    await it.return();
    return ms;
}
async function runTg(n) {
    await seq.clearHistory();
    const t = performance.now();
    let i = 0;
    for await (const _tok of seq.evaluate([prompt[0] ?? 0], {temperature: 0})) {  // each yield = one decode step
        if (++i >= n) break;
    }
    return (performance.now() - t) / 1e3;
}

const stat = v => { const a = [...v].sort((x, y) => x - y), m = a.length;
                    return {median: m % 2 ? a[(m - 1) / 2] : (a[m / 2 - 1] + a[m / 2]) / 2, min: a[0], max: a[m - 1]}; };
if (nPrompt > 0) await runPp();
if (nGen > 0) await runTg(Math.min(nGen, 4));
const pp = [], ttft = [], tg = [];
for (let r = 0; r < reps; ++r) {
    if (nPrompt > 0) { const ms = await runPp(); ttft.push(ms); pp.push(nPrompt / (ms / 1e3)); }
    if (nGen > 0) tg.push(nGen / await runTg(nGen));
    console.error(`  llama.cpp rep ${r + 1}/${reps}: pp ${pp.at(-1)?.toFixed(2)} tok/s, tg ${tg.at(-1)?.toFixed(2)} tok/s`);
}
const P = stat(pp.length ? pp : [0]), G = stat(tg.length ? tg : [0]), T = stat(ttft.length ? ttft : [0]);
console.log(JSON.stringify({
    engine: "llama.cpp (node-llama-cpp)", model: modelPath, threads, flash_attention: context.flashAttention, n_prompt: nPrompt, n_gen: nGen, reps,
    pp_tok_s: P.median, pp_tok_s_min: P.min, pp_tok_s_max: P.max,
    tg_tok_s: G.median, tg_tok_s_min: G.min, tg_tok_s_max: G.max,
    ttft_ms: T.median, ttft_ms_min: T.min, ttft_ms_max: T.max,
    peak_rss_bytes: process.resourceUsage().maxRSS * 1024, load_s: loadS,
}));
await context.dispose();
await model.dispose();
await llama.dispose();
