// Greedy continuations from llama.cpp (its prebuilt CPU libraries, through node-llama-cpp), to check
// that `moe run --temp 0` gives the same tokens on the same file.
// Usage: node greedy.mjs MODEL N_PREDICT PROMPTS_FILE   (one prompt per line; `\n` in a line is a newline)
// Prints one JSON object per prompt: {"prompt", "prompt_ids", "ids", "text"}. The prompt is tokenized by
// llama.cpp (with BOS when the vocabulary asks for it), and generation stops at N_PREDICT tokens or at
// end-of-generation. Set NLC_DIR to the directory whose node_modules holds node-llama-cpp.
import {createRequire} from "node:module";
import fs from "node:fs";
import path from "node:path";

const [modelPath, nArg, promptsPath] = process.argv.slice(2);
if (!modelPath || !promptsPath) {
    console.error("usage: node greedy.mjs MODEL N_PREDICT PROMPTS_FILE");
    process.exit(2);
}
const nPredict = Number(nArg ?? 64);
const require = createRequire(path.join(process.env.NLC_DIR ?? process.cwd(), "node_modules", "_"));
const {getLlama, LlamaLogLevel} = await import(require.resolve("node-llama-cpp"));
const llama = await getLlama({gpu: false, build: "never", skipDownload: true, maxThreads: 2,
                              logLevel: LlamaLogLevel.error, progressLogs: false});
const model = await llama.loadModel({modelPath, gpuLayers: 0});
const prompts = fs.readFileSync(promptsPath, "utf8").split("\n").filter(l => l.length > 0)
    .map(l => l.replaceAll("\\n", "\n"));
const context = await model.createContext({contextSize: 512, threads: 2, sequences: 1});
const seq = context.getSequence();
for (const prompt of prompts) {
    await seq.clearHistory();
    const promptIds = Array.from(model.tokenize(prompt, false));
    const bos = model.tokens.bos;
    const withBos = model.fileInfo?.metadata?.tokenizer?.ggml?.add_bos_token && bos != null ? [bos, ...promptIds]
                                                                                          : promptIds;
    const ids = [];
    for await (const tok of seq.evaluate(withBos, {temperature: 0})) {
        if (model.isEogToken(tok)) break;
        ids.push(tok);
        if (ids.length >= nPredict) break;
    }
    console.log(JSON.stringify({prompt, prompt_ids: withBos, ids: ids.map(Number), text: model.detokenize(ids)}));
}
await context.dispose();
await model.dispose();
