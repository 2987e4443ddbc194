// The Node SDK's pass over the relay: the same scenario as tests/test_e2e_sdk.py.
// Run by tests/test_node_sdk.py with RELAY_URL, RELAY_KEY, OPENAI_NODE (where the
// `openai` package is installed) and TRACEPARENT; prints one JSON line per step and
// exits non-zero on the first failure.
'use strict';
const assert = require('node:assert/strict');
const { createRequire } = require('node:module');
const path = require('node:path');

const { OpenAI, toFile, AuthenticationError } = createRequire(path.join(process.env.OPENAI_NODE, 'package.json'))('openai');

const client = new OpenAI({
  baseURL: `${process.env.RELAY_URL}/v1`,
  apiKey: process.env.RELAY_KEY,
  maxRetries: 0,
  timeout: 30000,
  defaultHeaders: { traceparent: process.env.TRACEPARENT },
});

function step(name, detail = {}) {
  console.log(JSON.stringify({ step: name, ...detail }));
}

async function main() {
  const models = await client.models.list();
  assert.ok(models.data.length > 0);
  assert.equal((await client.models.retrieve(models.data[0].id)).id, models.data[0].id);
  step('models', { count: models.data.length });

  const response = await client.responses.create({ model: 'gpt-4o-mini', input: 'Say hi' });
  assert.ok(response.output_text);
  step('responses', { input: response.usage.input_tokens, output: response.usage.output_tokens });

  const types = [];
  let streamedUsage = null;
  for await (const event of await client.responses.create({ model: 'gpt-4o-mini', input: 'Say hi', stream: true })) {
    types.push(event.type);
    if (event.type === 'response.completed') streamedUsage = event.response.usage;
  }
  assert.equal(types[0], 'response.created');
  assert.equal(types[types.length - 1], 'response.completed');
  step('responses_streamed', { events: types.length, output: streamedUsage.output_tokens });

  const completion = await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] });
  assert.ok(completion.choices[0].message.content);
  step('chat', { input: completion.usage.prompt_tokens });

  let text = '';
  let chunks = 0;
  for await (const chunk of await client.chat.completions.create({
    model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }], stream: true,
  })) {
    chunks += 1;
    // The client did not ask for usage: no usage chunk reaches it (the relay asked and strips it).
    assert.ok(chunk.choices.length > 0);
    assert.ok(chunk.usage == null);
    text += chunk.choices[0].delta.content || '';
  }
  assert.ok(text);
  step('chat_streamed', { chunks });

  const embeddings = await client.embeddings.create({ model: 'text-embedding-3-small', input: ['a', 'b'] });
  assert.equal(embeddings.data.length, 2);
  assert.ok(embeddings.data[0].embedding.length > 0);
  step('embeddings', { input: embeddings.usage.prompt_tokens });

  const content = Buffer.from('{"custom_id": "1"}\n'.repeat(1000));
  const uploaded = await client.files.create({ file: await toFile(content, 'requests.jsonl'), purpose: 'batch' });
  assert.equal(uploaded.bytes, content.length);
  assert.equal(uploaded.filename, 'requests.jsonl');
  const downloaded = Buffer.from(await (await client.files.content(uploaded.id)).arrayBuffer());
  assert.ok(downloaded.equals(content));
  const ranged = await client.files.content(uploaded.id, { headers: { Range: 'bytes=19-37' } });
  assert.equal(ranged.status, 206);
  assert.equal(ranged.headers.get('content-range'), `bytes 19-37/${content.length}`);
  assert.ok(Buffer.from(await ranged.arrayBuffer()).equals(content.subarray(19, 38)));
  const listed = [];
  for await (const file of client.files.list({ purpose: 'batch' })) listed.push(file.id);
  assert.ok(listed.includes(uploaded.id));
  assert.equal((await client.files.retrieve(uploaded.id)).purpose, 'batch');
  assert.equal((await client.files.delete(uploaded.id)).deleted, true);
  step('files', { id: uploaded.id });

  const { data, response: raw } = await client.models.list().withResponse();
  assert.ok(data.data.length > 0);
  assert.match(raw.headers.get('x-request-id'), /^req_/);
  assert.ok(raw.headers.get('x-relay-request-id'));
  step('headers');

  const wrong = new OpenAI({ baseURL: `${process.env.RELAY_URL}/v1`, apiKey: 'tr-wrong', maxRetries: 0 });
  await assert.rejects(wrong.models.list(), (err) => err instanceof AuthenticationError && err.code === 'invalid_api_key');
  step('auth_error');
  step('done');
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : err);
  process.exit(1);
});
