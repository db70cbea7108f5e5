// Drives `moe serve` with the official openai client (node). MOE_URL: the server; NPM_DIR: where the
// openai package is installed. The server runs with --api-key test-key --alias test-model --parallel 2
// --queue 0. Exits non-zero on the first failed check.
import { createRequire } from "node:module";
import assert from "node:assert/strict";

const require = createRequire(process.env.NPM_DIR + "/package.json");
const OpenAI = require("openai");
const baseURL = process.env.MOE_URL + "/v1";
const client = new OpenAI({ apiKey: "test-key", baseURL, maxRetries: 0, timeout: 120000 });
const messages = [{ role: "user", content: "And God said" }];
let checks = 0;
const ok = (what) => { ++checks; console.log("ok  " + what); };

async function expectError(promise, Type, status, what) {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof Type, `${what}: expected ${Type.name}, got ${e.constructor.name}: ${e.message}`);
    assert.equal(e.status, status, what);
    assert.equal(typeof e.error?.message ?? e.message, "string", what);
    ok(`${what} -> ${status} ${Type.name}`);
    return e;
  }
  assert.fail(`${what}: no error`);
}

// Models.
const models = await client.models.list();
assert.ok(models.data.some((m) => m.id === "test-model"), "models.list names the model");
ok("models.list");

// Chat, whole and streamed: the same greedy text.
const chat = await client.chat.completions.create({ model: "test-model", messages, max_tokens: 16, temperature: 0 });
assert.equal(chat.object, "chat.completion");
assert.equal(chat.choices[0].message.role, "assistant");
assert.equal(typeof chat.choices[0].message.content, "string");
assert.ok(["stop", "length"].includes(chat.choices[0].finish_reason));
assert.equal(chat.usage.total_tokens, chat.usage.prompt_tokens + chat.usage.completion_tokens);
assert.equal(typeof chat.moe_usage.experts_per_token, "number");
ok("chat.completions.create");

const stream = await client.chat.completions.create({
  model: "test-model", messages, max_tokens: 16, temperature: 0, stream: true, stream_options: { include_usage: true },
});
let text = "", finish = null, usage = null;
for await (const chunk of stream) {
  if (chunk.usage) usage = chunk.usage;
  for (const c of chunk.choices) {
    text += c.delta?.content ?? "";
    if (c.finish_reason) finish = c.finish_reason;
  }
}
assert.equal(text, chat.choices[0].message.content, "streamed chat text equals the whole response");
assert.equal(finish, chat.choices[0].finish_reason);
assert.deepEqual(usage, chat.usage, "the last chunk carries usage");
ok("chat.completions.create stream");

// moe.cpp's per-request routing policy travels as an extra body field; moe_usage reports what it did.
const one = await client.chat.completions.create({ model: "test-model", messages, max_tokens: 8, temperature: 0,
                                                   moe: { experts: 1 } });
assert.equal(one.moe_usage.experts_per_token, 1);
assert.deepEqual(one.moe_usage.routing_policy, { experts: 1 });
ok("chat.completions.create with moe.experts = 1");

// Completions: text, n choices, logprobs, streaming.
const comp = await client.completions.create({ model: "test-model", prompt: "def main(", max_tokens: 10, temperature: 0,
                                               logprobs: 2 });
assert.equal(comp.object, "text_completion");
assert.equal(comp.choices[0].logprobs.tokens.length, comp.usage.completion_tokens);
ok("completions.create");
const many = await client.completions.create({ model: "test-model", prompt: "The", max_tokens: 4, n: 2, temperature: 1,
                                               seed: 3 });
assert.equal(many.choices.length, 2);
assert.deepEqual(many.choices.map((c) => c.index), [0, 1]);
ok("completions.create n=2");
await expectError(client.completions.create({ model: "test-model", prompt: "The", max_tokens: 4, n: 3 }),
                  OpenAI.BadRequestError, 400, "more choices than slots + queue");
const cstream = await client.completions.create({ model: "test-model", prompt: "def main(", max_tokens: 10,
                                                  temperature: 0, stream: true });
let ctext = "";
for await (const chunk of cstream) ctext += chunk.choices[0]?.text ?? "";
assert.equal(ctext, comp.choices[0].text);
ok("completions.create stream");

// Errors in OpenAI's shape, as the client's error classes.
const bad = new OpenAI({ apiKey: "wrong", baseURL, maxRetries: 0 });
await expectError(bad.chat.completions.create({ model: "test-model", messages }), OpenAI.AuthenticationError, 401,
                  "wrong API key");
await expectError(client.chat.completions.create({ model: "test-model", messages, temperature: 5 }),
                  OpenAI.BadRequestError, 400, "temperature out of range");
const e = await expectError(client.chat.completions.create({ model: "test-model", messages, moe: { nope: 1 } }),
                            OpenAI.BadRequestError, 400, "unknown key in moe");
assert.equal(e.param, "moe.nope");
await expectError(client.chat.completions.create({ model: "nope", messages }), OpenAI.NotFoundError, 404,
                  "unknown model");

// Both slots busy with endless streams and no queue: 429. Aborting the streams frees the slots.
const endless = () => client.completions.create({ model: "test-model", prompt: "And", max_tokens: 900, stream: true,
                                                  ignore_eos: true });
const s1 = await endless(), s2 = await endless();
const it1 = s1[Symbol.asyncIterator](), it2 = s2[Symbol.asyncIterator]();
await it1.next(); await it2.next();
await expectError(client.completions.create({ model: "test-model", prompt: "x", max_tokens: 2 }),
                  OpenAI.RateLimitError, 429, "no free slot and no queue");
s1.controller.abort(); s2.controller.abort();
let freed = false;
for (let i = 0; i < 100 && !freed; ++i) {
  await new Promise((r) => setTimeout(r, 20));
  const m = await (await fetch(process.env.MOE_URL + "/metrics", { headers: { Authorization: "Bearer test-key" } })).text();
  freed = /moe_active_sequences 0\b/.test(m);
}
assert.ok(freed, "aborted streams free their slots");
const after = await client.completions.create({ model: "test-model", prompt: "x", max_tokens: 2 });
assert.equal(after.choices.length, 1);
ok("aborted streams free their slots");

console.log(`${checks} checks passed`);
