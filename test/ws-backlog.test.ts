// A /ws reader that falls behind and catches up: what waited for it in the proxy (past what the
// kernel's socket buffers hold) reaches it whole and in order, frames of every length encoding,
// with the answers to its own requests in their place among the deliveries.
import t from 'tap';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import WebSocket from 'ws';
import { startProxy } from './helpers/proxy.js';
import { connectClient } from './helpers/clients.js';
import { eventually, sleep } from './helpers/ports.js';

type Frame = { op: string; id?: string; topic?: string; payload?: { seq: number; pad: string } };

// Payloads under 126 bytes, under 64 KiB, and over it: the three lengths a frame header can carry.
const PAD = [40, 1_000, 70_000];
// More than loopback's socket buffers take (a few MB each way): the rest waits in the proxy.
const TOTAL_BYTES = 24 * 2 ** 20;

t.test('a lagging /ws reader gets its whole backlog once it reads again', async (t) => {
  const dir = t.testdir();
  mkdirSync(join(dir, 'rules'), { recursive: true });
  // Local only: megabytes that need not fill the cache for a cloud that is not there.
  writeFileSync(join(dir, 'rules', 'local.rules'), 'rule local\nwhen msg.topic matches "backlog/#"\nthen drop()\nend\n');
  const proxy = await startProxy(dir, {
    http: { sendBufferBytes: '48MiB' },
    limits: { maxPayloadBytes: 131_072 },
  });
  t.teardown(() => proxy.stop());
  const port = (proxy.ports as Record<string, number>).http!;

  const ws = new WebSocket(`ws://127.0.0.1:${port}/ws?d=reader`);
  const frames: Frame[] = [];
  let closed: number | null = null;
  ws.on('message', (data: Buffer) => frames.push(JSON.parse(data.toString('utf8')) as Frame));
  ws.on('close', (code) => (closed = code));
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  ws.send(JSON.stringify({ op: 'sub', topic: 'backlog/#', id: 'sub' }));
  await eventually('the subscription', () => frames.some((f) => f.op === 'ack' && f.id === 'sub'));
  ws.pause(); // reads nothing more: the kernel's buffers fill, then the proxy's

  const publisher = await connectClient(proxy.ports.mqtt, { clientId: 'feeder' });
  t.teardown(() => publisher.endAsync());
  const sizes: number[] = [];
  let bytes = 0;
  while (bytes < TOTAL_BYTES) {
    const pad = 'x'.repeat(PAD[sizes.length % PAD.length]!);
    sizes.push(pad.length);
    bytes += pad.length;
    await publisher.publishAsync('backlog/data', JSON.stringify({ seq: sizes.length, pad }), { qos: 1 });
  }
  const sent = sizes.length;
  await sleep(300);
  // Its own request, answered behind everything already on its way to it.
  ws.send(JSON.stringify({ op: 'ping', id: 'after' }));
  await sleep(300);
  t.equal(await proxy.metric('edge_messages_dropped_total', 'reason="slow_consumer"'), 0, 'nothing was dropped: QoS 1, under its limit');

  ws.resume();
  await eventually('the whole backlog', () => frames.some((f) => f.op === 'pong' && f.id === 'after'), 30_000);
  const msgs = frames.filter((f) => f.op === 'msg');
  t.equal(msgs.length, sent, `all ${sent} messages (${(bytes / 2 ** 20).toFixed(0)} MiB of payload) arrived`);
  t.same(
    msgs.map((m) => m.payload?.seq),
    Array.from({ length: sent }, (_, i) => i + 1),
    'in the order they were published',
  );
  t.same(
    msgs.map((m) => m.payload?.pad.length),
    sizes,
    'each whole, at every frame length encoding',
  );
  t.equal(frames.at(-1)?.op, 'pong', 'the answer to its ping came after the deliveries queued before it');
  t.equal(closed, null, 'still connected');
  ws.send(JSON.stringify({ op: 'ping', id: 'still' }));
  await eventually('an answer on the same connection', () => frames.some((f) => f.op === 'pong' && f.id === 'still'));
  ws.terminate();
});
