// The official Node SDK's WebSocket clients through the relay: one Realtime turn
// (OpenAIRealtimeWS) and one Responses WebSocket turn (ResponsesWS).
// Run by tests/test_node_websockets.py with RELAY_BASE (https://.../v1) and RELAY_KEY.
import OpenAI from 'openai';
import { OpenAIRealtimeWS } from 'openai/realtime/ws';
import { ResponsesWS } from 'openai/resources/responses/ws';

const client = new OpenAI({ apiKey: process.env.RELAY_KEY, baseURL: process.env.RELAY_BASE, maxRetries: 0 });
const out = {};
const timeout = setTimeout(() => { console.error('timed out'); process.exit(3); }, 30000);

function until(emitter, type) {
  return new Promise((resolve, reject) => {
    emitter.on(type, resolve);
    emitter.on('error', reject);
  });
}

const rt = new OpenAIRealtimeWS({ model: 'gpt-realtime' }, client);
await new Promise((resolve, reject) => { rt.socket.on('open', resolve); rt.socket.on('error', reject); });
rt.send({ type: 'response.create' });
const done = await until(rt, 'response.done');
out.realtime = { status: done.response.status, output_tokens: done.response.usage.output_tokens };
rt.close();

const ws = new ResponsesWS(client);
ws.send({ type: 'response.create', model: 'gpt-4o-mini', input: 'Hi from Node' });
const completed = await until(ws, 'response.completed');
out.responses = { status: completed.response.status, model: completed.response.model };
ws.close();

clearTimeout(timeout);
console.log(JSON.stringify(out));
