// The JSON WebSocket protocol on GET /ws, end to end: the built proxy as a real process, the `ws`
// client over a real socket, MQTT.js on the TCP endpoint and a real Mosquitto as the cloud. Three
// proxies: open mode with a cloud (frames, cross-protocol, errors, abuse, slow consumers), token
// mode (identity and access control), and an offline one with a tiny cache (acks after the commit,
// E_CACHE_FULL).
import t from 'tap';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import WebSocket from 'ws';
import mqtt from 'mqtt';
import Database from 'better-sqlite3';
import { cloudFor } from './helpers/mosquitto.js';
import { startProxy, type ProxyProcess } from './helpers/proxy.js';
import { collect, connectClient } from './helpers/clients.js';
import { eventually, sleep } from './helpers/ports.js';
import { writeRegistry, type DeviceSpec } from './helpers/registry.js';

type Frame = { op: string; id?: string | number; code?: string; message?: string } & Record<string, unknown>;

/** A /ws device: every frame it received, parsed, and how its connection closed. */
class Device {
  readonly frames: Frame[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;
  private next = 0;

  constructor(readonly ws: WebSocket) {
    ws.on('message', (data: Buffer) => this.frames.push(JSON.parse(data.toString('utf8')) as Frame));
    this.closed = new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  }

  /** A fresh frame id. */
  id(): string {
    return `c-${++this.next}`;
  }

  send(frame: object | string | Buffer, binary = false): void {
    this.ws.send(typeof frame === 'string' || Buffer.isBuffer(frame) ? frame : JSON.stringify(frame), { binary });
  }

  async waitFor(what: string, match: (f: Frame) => boolean, ms = 5_000): Promise<Frame> {
    return (await eventually(what, () => this.frames.find(match), ms))!;
  }

  /** The answer (ack, error or pong) to the frame with `id`. */
  answer(id: string): Promise<Frame> {
    return this.waitFor(`the answer to ${id}`, (f) => f.id === id && ['ack', 'error', 'pong'].includes(f.op));
  }

  /** Send a frame with a new id and wait for its answer. */
  async request(frame: Record<string, unknown>): Promise<Frame> {
    const id = this.id();
    this.send({ ...frame, id });
    return this.answer(id);
  }

  msgs(topic?: string): Frame[] {
    return this.frames.filter((f) => f.op === 'msg' && (topic === undefined || f.topic === topic));
  }

  errors(): Frame[] {
    return this.frames.filter((f) => f.op === 'error');
  }

  /** The connection is still open and reading: a ping is answered. */
  async alive(): Promise<boolean> {
    const pong = await this.request({ op: 'ping' });
    return pong.op === 'pong';
  }

  get localPort(): number {
    return (this.ws as unknown as { _socket: Socket })._socket.localPort!;
  }

  close(): void {
    this.ws.terminate();
  }
}

function httpPort(proxy: ProxyProcess): number {
  const port = (proxy.ports as Record<string, number>).http;
  if (!port) throw new Error(`the proxy wrote no http port: ${JSON.stringify(proxy.ports)}`);
  return port;
}

async function connectWs(url: string, headers: Record<string, string> = {}): Promise<Device> {
  const ws = new WebSocket(url, { headers });
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  return new Device(ws);
}

/** The HTTP status an upgrade gets: 101 when it opened (closed again at once). */
function upgradeStatus(url: string, headers: Record<string, string> = {}): Promise<number> {
  const ws = new WebSocket(url, { headers });
  return new Promise((resolve, reject) => {
    ws.once('open', () => {
      ws.terminate();
      resolve(101);
    });
    ws.once('unexpected-response', (req, res) => {
      resolve(res.statusCode ?? 0);
      req.destroy();
    });
    ws.once('error', reject);
  });
}

function closedWithin(d: Device, ms: number): Promise<{ code: number; reason: string } | null> {
  return Promise.race([d.closed, sleep(ms).then(() => null)]);
}

interface Envelope {
  id: string;
  topic: string;
  deviceId: string;
  contentType: string;
  payload: unknown;
}

// Messages on slow/# stay local: a slow consumer is fed megabytes, which need not go to the cloud.
const RULES = `
rule keep_slow_local
when msg.topic matches "slow/#"
then drop()
end
`;

const MAX_PAYLOAD = 65_536;
const SEND_BUFFER = 65_536;
const MAX_ERRORS = 20;

t.test('open mode, with a cloud', async (t) => {
  const dir = t.testdir();
  const { url: cloudUrl, up } = await cloudFor(t, dir);
  mkdirSync(join(dir, 'rules'), { recursive: true });
  writeFileSync(join(dir, 'rules', 'local.rules'), RULES);
  const proxy = await startProxy(dir, {
    uplink: { url: cloudUrl },
    http: { sendBufferBytes: SEND_BUFFER, maxErrors: MAX_ERRORS, errorWindowSeconds: 60 },
    limits: { maxPayloadBytes: MAX_PAYLOAD },
  });
  t.teardown(() => proxy.stop());
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);
  const base = `ws://127.0.0.1:${httpPort(proxy)}/ws`;
  const open: Device[] = [];
  t.teardown(() => open.forEach((d) => d.close()));
  const device = async (query = ''): Promise<Device> => {
    const d = await connectWs(base + query);
    open.push(d);
    return d;
  };
  const envelopes = (): Envelope[] => up.json<Envelope>();
  const atCloud = (topic: string): Promise<Envelope> =>
    eventually(`${topic} at the cloud`, () => envelopes().find((e) => e.topic === topic)) as Promise<Envelope>;

  await t.test('identity: ?d= names the device, else ws-<ip>-<port>; qos 1 is acked, qos 0 gets no answer', async (t) => {
    const named = await device('?d=ws-open-1');
    t.same(await named.request({ op: 'pub', topic: 'devices/ws-open-1/status', payload: { ok: 1 }, qos: 1 }), { op: 'ack', id: 'c-1' });
    t.match(await atCloud('devices/ws-open-1/status'), { deviceId: 'ws-open-1', contentType: 'json', payload: { ok: 1 } });

    const anon = await device();
    anon.send({ op: 'pub', topic: 'anon/q0', payload: 'zero', id: 'q0' });
    t.same(await anon.request({ op: 'pub', topic: 'anon/q1', payload: 'one', qos: 1 }), { op: 'ack', id: 'c-1' });
    t.same(anon.frames, [{ op: 'ack', id: 'c-1' }], 'the qos 0 publish got no answer; the qos 1 one its ack');
    t.match(await atCloud('anon/q0'), { deviceId: `ws-127.0.0.1-${anon.localPort}`, contentType: 'text', payload: 'zero' });
    t.match(await atCloud('anon/q1'), { deviceId: `ws-127.0.0.1-${anon.localPort}` });
    t.equal(await proxy.metric('edge_connections', 'protocol="ws",transport="ws"'), 2, 'two /ws connections are counted');
  });

  await t.test('ping is answered with pong, with its id when it has one', async (t) => {
    const d = await device();
    d.send({ op: 'ping' });
    await d.waitFor('pong', (f) => f.op === 'pong');
    t.same(d.frames[0], { op: 'pong' });
    t.same(await d.request({ op: 'ping' }), { op: 'pong', id: 'c-1' });
  });

  await t.test('sub and unsub with wildcards; msg frames for JSON and text', async (t) => {
    const sub = await device();
    const pub = await device('?d=pub-1');
    t.same(await sub.request({ op: 'sub', topic: 'devices/+/telemetry' }), { op: 'ack', id: 'c-1' });
    t.same(await sub.request({ op: 'sub', topic: 'room/#' }), { op: 'ack', id: 'c-2' });
    await pub.request({ op: 'pub', topic: 'devices/pub-1/telemetry', payload: { temp: 21.5, tags: ['a'] }, qos: 1 });
    await pub.request({ op: 'pub', topic: 'room/1/2', payload: 'hello', qos: 1 });
    const json = await sub.waitFor('json msg', (f) => f.op === 'msg' && f.topic === 'devices/pub-1/telemetry');
    t.match(json, { op: 'msg', topic: 'devices/pub-1/telemetry', payload: { temp: 21.5, tags: ['a'] }, contentType: 'json' });
    t.type(json.ts, 'number');
    t.ok(Math.abs((json.ts as number) - Date.now()) < 60_000, 'ts is the time it was received, in ms');
    t.match(json.msgId, /^[0-9A-HJKMNP-TV-Z]{26}$/, 'msgId is a ULID');
    t.notOk('retain' in json, 'a live message has no retain flag');
    t.notOk('encoding' in json, 'JSON is carried as JSON, not base64');
    t.match(await sub.waitFor('text msg', (f) => f.op === 'msg' && f.topic === 'room/1/2'), {
      payload: 'hello',
      contentType: 'text',
    });
    const [env] = envelopes().filter((e) => e.topic === 'devices/pub-1/telemetry');
    t.equal(json.msgId, env?.id, 'the same message id the cloud got');

    t.same(await sub.request({ op: 'unsub', topic: 'room/#' }), { op: 'ack', id: 'c-3' });
    await pub.request({ op: 'pub', topic: 'room/1/after-unsub', payload: 'x', qos: 1 });
    await pub.request({ op: 'pub', topic: 'devices/pub-1/telemetry', payload: { barrier: true }, qos: 1 });
    await sub.waitFor('the barrier', (f) => f.op === 'msg' && (f.payload as { barrier?: boolean }).barrier === true);
    t.same(sub.msgs('room/1/after-unsub'), [], 'nothing arrives after unsub');
  });

  await t.test('binary and CBOR payloads travel as base64, and reach MQTT as bytes', async (t) => {
    const sub = await device();
    await sub.request({ op: 'sub', topic: 'bin/#' });
    const mqttSub = await connectClient(proxy.ports.mqtt);
    t.teardown(() => mqttSub.endAsync());
    const seen = await collect(mqttSub, 'bin/#');
    const bytes = Buffer.from([0x00, 0xff, 0xfe, 0x80, 0x01, 0x7f]);
    const pub = await device();
    t.same(await pub.request({ op: 'pub', topic: 'bin/raw', payload: bytes.toString('base64'), encoding: 'base64', qos: 1 }), {
      op: 'ack',
      id: 'c-1',
    });
    const cbor = Buffer.from([0xa1, 0x61, 0x74, 0xf9, 0x3c, 0x00]); // {"t": 1.0}
    await pub.request({ op: 'pub', topic: 'bin/cbor', payload: cbor.toString('base64'), encoding: 'base64', contentType: 'cbor', qos: 1 });
    const raw = await sub.waitFor('binary msg', (f) => f.op === 'msg' && f.topic === 'bin/raw');
    t.match(raw, { contentType: 'binary', encoding: 'base64', payload: bytes.toString('base64') });
    t.match(await sub.waitFor('cbor msg', (f) => f.op === 'msg' && f.topic === 'bin/cbor'), {
      contentType: 'cbor',
      encoding: 'base64',
      payload: cbor.toString('base64'),
    });
    await eventually('both at the MQTT subscriber', () => seen.messages.length >= 2);
    t.same(seen.messages.find((m) => m.topic === 'bin/raw')?.payload, bytes, 'an MQTT subscriber gets the bytes themselves');

    // And the other way: bytes an MQTT device publishes arrive as base64.
    await mqttSub.publishAsync('bin/from-mqtt', Buffer.from([0xc3, 0x28, 0x00]), { qos: 1 });
    t.match(await sub.waitFor('from mqtt', (f) => f.op === 'msg' && f.topic === 'bin/from-mqtt'), {
      contentType: 'binary',
      encoding: 'base64',
      payload: Buffer.from([0xc3, 0x28, 0x00]).toString('base64'),
    });
  });

  await t.test('retained messages are handed over on sub with "retain": true', async (t) => {
    const pub = await device();
    await pub.request({ op: 'pub', topic: 'ret/a', payload: { v: 1 }, qos: 1, retain: true });
    const mqttPub = await connectClient(proxy.ports.mqtt);
    t.teardown(() => mqttPub.endAsync());
    await mqttPub.publishAsync('ret/b', 'from mqtt', { qos: 1, retain: true });
    await pub.request({ op: 'pub', topic: 'ret/not-retained', payload: 'x', qos: 1 });
    const sub = await device();
    t.same(await sub.request({ op: 'sub', topic: 'ret/+' }), { op: 'ack', id: 'c-1' });
    await eventually('two retained', () => sub.msgs().length >= 2);
    const byTopic = Object.fromEntries(sub.msgs().map((m) => [m.topic as string, m]));
    t.match(byTopic['ret/a'], { payload: { v: 1 }, contentType: 'json', retain: true });
    t.match(byTopic['ret/b'], { payload: 'from mqtt', contentType: 'text', retain: true });
    t.equal(sub.frames[0]?.op, 'ack', 'the ack comes before the retained messages');
    await pub.request({ op: 'pub', topic: 'ret/a', payload: { v: 2 }, qos: 1, retain: true });
    const live = await sub.waitFor('live', (f) => f.op === 'msg' && (f.payload as { v?: number }).v === 2);
    t.notOk('retain' in live, 'a live message on a subscribed topic is not marked retained');
    t.equal(sub.msgs('ret/not-retained').length, 0);
  });

  await t.test('cross-protocol: MQTT to /ws and /ws to MQTT, exactly once', async (t) => {
    const wsSub = await device();
    // Two overlapping subscriptions: still one copy per connection.
    await wsSub.request({ op: 'sub', topic: 'xp/#' });
    await wsSub.request({ op: 'sub', topic: 'xp/+' });
    const mqttDevice = await connectClient(proxy.ports.mqtt, { clientId: 'xp-mqtt' });
    t.teardown(() => mqttDevice.endAsync());
    const mqttSeen = await collect(mqttDevice, 'xp/#');
    const wsPub = await device('?d=xp-ws');
    await mqttDevice.publishAsync('xp/from-mqtt', JSON.stringify({ n: 1 }), { qos: 1 });
    t.same(await wsPub.request({ op: 'pub', topic: 'xp/from-ws', payload: { n: 2 }, qos: 1 }), { op: 'ack', id: 'c-1' });
    await mqttDevice.publishAsync('xp/end', 'end', { qos: 1 });
    await wsSub.waitFor('the end marker', (f) => f.op === 'msg' && f.topic === 'xp/end');
    await eventually('the end marker over MQTT', () => mqttSeen.messages.some((m) => m.topic === 'xp/end'));
    await sleep(200);
    t.equal(wsSub.msgs('xp/from-mqtt').length, 1, 'the MQTT device message reached the /ws subscriber once');
    t.match(wsSub.msgs('xp/from-mqtt')[0], { payload: { n: 1 }, contentType: 'json' });
    t.equal(wsSub.msgs('xp/from-ws').length, 1, 'a /ws subscriber gets /ws messages too');
    const fromWs = mqttSeen.messages.filter((m) => m.topic === 'xp/from-ws');
    t.equal(fromWs.length, 1, 'the /ws device message reached the MQTT subscriber once');
    t.same(JSON.parse(fromWs[0]!.payload.toString()), { n: 2 });
    t.match(await atCloud('xp/from-ws'), { deviceId: 'xp-ws' });
  });

  await t.test('a cloud downlink reaches a /ws subscriber', async (t) => {
    const sub = await device();
    await sub.request({ op: 'sub', topic: 'devices/dl-1/cmd/#' });
    const cloud = await mqtt.connectAsync(cloudUrl, { reconnectPeriod: 0 });
    t.teardown(() => cloud.endAsync());
    // The proxy subscribes to the downlink once connected: resend until it is there.
    await eventually(
      'the downlink at the /ws subscriber',
      async () => {
        if (sub.msgs().length > 0) return true;
        await cloud.publishAsync('edge/test-edge/down/devices/dl-1/cmd/fan', JSON.stringify({ on: true }), { qos: 1 });
        await sleep(300);
        return sub.msgs().length > 0;
      },
      10_000,
    );
    t.match(sub.msgs()[0], { op: 'msg', topic: 'devices/dl-1/cmd/fan', payload: { on: true }, contentType: 'json' });
  });

  await t.test('refused frames: each gets its error frame with its code and id, and the connection stays open', async (t) => {
    const d = await device('?d=errs');
    const cases: Array<[string, string | Buffer | Record<string, unknown>, string, boolean?]> = [
      ['not JSON', 'hello{', 'E_MALFORMED'],
      ['a JSON array', '[1,2]', 'E_MALFORMED'],
      ['invalid UTF-8 in a text frame', Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), 'E_MALFORMED'],
      ['a binary frame', Buffer.from('{"op":"ping"}'), 'E_UNSUPPORTED', true],
      ['no op', { id: 'e-noop', topic: 'x' }, 'E_MALFORMED'],
      ['an unknown op', { op: 'publish', id: 'e-unknown' }, 'E_UNSUPPORTED'],
      ['qos 2', { op: 'pub', id: 'e-qos2', topic: 'devices/errs/x', payload: 1, qos: 2 }, 'E_UNSUPPORTED'],
      ['qos "1"', { op: 'pub', id: 'e-qos-str', topic: 'devices/errs/x', payload: 1, qos: '1' }, 'E_MALFORMED'],
      ['no payload', { op: 'pub', id: 'e-nopayload', topic: 'devices/errs/x' }, 'E_MALFORMED'],
      ['a wildcard in a publish topic', { op: 'pub', id: 'e-wild', topic: 'devices/+/x', payload: 1 }, 'E_MALFORMED'],
      ['an empty publish topic', { op: 'pub', id: 'e-empty', topic: '', payload: 1 }, 'E_MALFORMED'],
      ['bad base64', { op: 'pub', id: 'e-b64', topic: 'devices/errs/x', payload: 'no!base64', encoding: 'base64' }, 'E_MALFORMED'],
      ['an unknown encoding', { op: 'pub', id: 'e-hex', topic: 'devices/errs/x', payload: 'ff', encoding: 'hex' }, 'E_UNSUPPORTED'],
      ['an invalid filter', { op: 'sub', id: 'e-filter', topic: 'a/#/b' }, 'E_MALFORMED'],
      ['the reserved $edge tree', { op: 'sub', id: 'e-edge', topic: '$edge/#' }, 'E_ACL'],
      ['an id that is an object', { op: 'ping', id: { a: 1 } }, 'E_MALFORMED'],
    ];
    for (const [what, frame, code, binary] of cases) {
      const before = d.errors().length;
      d.send(frame, binary);
      const err = await d.waitFor(what, (f) => f.op === 'error' && d.errors().indexOf(f) === before);
      const id = typeof frame === 'object' && !Buffer.isBuffer(frame) && typeof frame.id === 'string' ? frame.id : undefined;
      t.match(err, { op: 'error', code, message: String }, `${what}: ${code}`);
      t.equal(err.id, id, `${what}: ${id === undefined ? 'no id' : 'the frame id'}`);
    }
    t.ok(await d.alive(), 'the connection is still open after every one of them');
    t.ok((await proxy.metric('edge_messages_refused_total', 'reason="malformed"')) >= 8, 'refusals are counted');
    t.ok((await proxy.metric('edge_messages_refused_total', 'reason="unsupported"')) >= 4);
    t.ok((await proxy.metric('edge_auth_failures_total', 'protocol="ws",reason="acl"')) >= 1);
    const dropped = await proxy.metric('edge_messages_dropped_total', 'reason="reserved_topic"');
    t.same(await d.request({ op: 'pub', topic: '$SYS/x', payload: 'x', qos: 1 }), { op: 'ack', id: 'c-2' }, 'a $ topic is acked');
    t.equal(await proxy.metric('edge_messages_dropped_total', 'reason="reserved_topic"'), dropped + 1, '... and dropped, counted');
  });

  await t.test('size: a payload within the limit is never refused for its encoding; over it gets E_TOO_LARGE', async (t) => {
    const d = await device('?d=big');
    const tooLarge0 = await proxy.metric('edge_messages_refused_total', 'reason="too_large"');
    // Control characters: six characters each in JSON (\u0001), the worst case of escaping.
    const escaped = '\u0001'.repeat(MAX_PAYLOAD);
    t.same(await d.request({ op: 'pub', topic: 'devices/big/escaped', payload: escaped, qos: 1 }), { op: 'ack', id: 'c-1' });
    const bytes = randomBytes(MAX_PAYLOAD);
    t.same(await d.request({ op: 'pub', topic: 'devices/big/b64', payload: bytes.toString('base64'), encoding: 'base64', qos: 1 }), {
      op: 'ack',
      id: 'c-2',
    });
    t.match(await d.request({ op: 'pub', topic: 'devices/big/over', payload: 'x'.repeat(MAX_PAYLOAD + 1), qos: 1 }), {
      op: 'error',
      id: 'c-3',
      code: 'E_TOO_LARGE',
    });
    t.match(await d.request({ op: 'pub', topic: 'devices/big/over-escaped', payload: '\u0001'.repeat(MAX_PAYLOAD + 1), qos: 1 }), {
      code: 'E_TOO_LARGE',
    });
    t.ok(await d.alive(), 'the connection stays open');
    const env = await atCloud('devices/big/b64');
    t.equal(env.payload, bytes.toString('base64'), 'the largest binary payload went up whole');
    t.equal((await atCloud('devices/big/escaped')).payload, escaped);

    // A frame larger than any encoding of the largest payload is not buffered: 1009 (documented).
    const huge = await device('?d=huge');
    huge.send({ op: 'pub', topic: 'devices/huge/x', payload: 'x'.repeat(7 * (MAX_PAYLOAD + 256) + 8192) });
    t.match(await closedWithin(huge, 5_000), { code: 1009 }, 'closed with 1009 (message too big)');
    t.equal(await proxy.metric('edge_messages_refused_total', 'reason="too_large"'), tooLarge0 + 3, 'all three counted as too_large');
  });

  await t.test('a device that does not wait for its acks: 1000 pipelined qos 1 publishes, each acked, in order', async (t) => {
    const d = await device('?d=piper');
    const ids = Array.from({ length: 1000 }, (_, i) => `p-${i}`);
    for (const id of ids) d.send({ op: 'pub', topic: 'devices/piper/seq', payload: { id }, qos: 1, id });
    await eventually('every ack', () => d.frames.length >= ids.length, 20_000);
    t.same(
      d.frames.map((f) => f.id),
      ids,
      'one ack each, in the order sent',
    );
    t.ok(
      d.frames.every((f) => f.op === 'ack'),
      'all acks',
    );
  });

  await t.test(`abuse: ${MAX_ERRORS} refused frames within http.errorWindowSeconds close the connection with 1008`, async (t) => {
    const d = await device('?d=abuser');
    for (let i = 0; i < MAX_ERRORS - 1; i++) d.send(`garbage ${i}`);
    t.ok(await d.alive(), `${MAX_ERRORS - 1} refused frames: still open`);
    t.equal(d.errors().length, MAX_ERRORS - 1, 'each got its error frame');
    d.send('one more');
    t.match(await closedWithin(d, 5_000), { code: 1008 }, 'the next one closes it with 1008 (policy violation)');
    t.equal(d.errors().length, MAX_ERRORS, 'the last refusal got its error frame too, before the close');
    const other = await device();
    t.ok(await other.alive(), 'other connections are not affected');
  });

  await t.test('a slow consumer loses QoS 0 deliveries, counted, and is closed with 1013 after 10 s over its buffer', async (t) => {
    const slow = await device('?d=slow');
    const fast = await device('?d=fast');
    await slow.request({ op: 'sub', topic: 'slow/#' });
    await fast.request({ op: 'sub', topic: 'slow/#' });
    slow.ws.pause(); // stops reading its socket: the kernel buffers fill, then the proxy's
    const publisher = await connectClient(proxy.ports.mqtt, { clientId: 'slow-feeder' });
    t.teardown(() => publisher.endAsync());
    const pad = 'p'.repeat(32 * 1024);
    let sent = 0;
    const started = Date.now();
    // Feed until the proxy starts dropping for the slow one (the kernel buffers take a few MB first).
    while ((await proxy.metric('edge_messages_dropped_total', 'reason="slow_consumer"')) === 0) {
      if (sent >= 3_000) t.fail('no slow_consumer drop after 3000 messages of 32 KiB');
      if (sent >= 3_000) break;
      for (let i = 0; i < 50; i++) await publisher.publishAsync('slow/data', JSON.stringify({ seq: ++sent, pad }), { qos: 0 });
      await eventually('the fast subscriber keeps up', () => fast.msgs('slow/data').length === sent, 10_000);
    }
    for (let i = 0; i < 50; i++) await publisher.publishAsync('slow/data', JSON.stringify({ seq: ++sent, pad }), { qos: 0 });
    await eventually('the fast subscriber has them all', () => fast.msgs('slow/data').length === sent, 10_000);
    t.same(
      fast.msgs('slow/data').map((m) => (m.payload as { seq: number }).seq),
      Array.from({ length: sent }, (_, i) => i + 1),
      `the other subscriber got all ${sent}, in order, while the slow one lagged`,
    );
    const dropped = await proxy.metric('edge_messages_dropped_total', 'reason="slow_consumer"');
    t.ok(dropped >= 50, `QoS 0 deliveries to the slow consumer were dropped and counted (${dropped})`);
    if (Date.now() - started < 9_000) t.equal(await proxy.metric('edge_slow_consumers_closed_total'), 0, 'not closed before its 10 s');
    await eventually('the 1013 close', async () => (await proxy.metric('edge_slow_consumers_closed_total', 'protocol="ws"')) === 1, 15_000);
    t.ok(Date.now() - started >= 9_500, 'closed only after it stayed over the limit for 10 s');
    slow.ws.resume(); // it reads what was queued, then the close frame
    t.match(await closedWithin(slow, 10_000), { code: 1013 }, 'closed with 1013 (try again later)');
    const got = slow.msgs('slow/data').length;
    t.ok(got < sent, `the slow consumer got ${got} of ${sent}`);
    t.equal(got + dropped, sent, 'every message either reached it or was counted as dropped');
    t.ok(await fast.alive(), 'the fast one is still connected');
  });
});

t.test('token mode', async (t) => {
  const dir = t.testdir();
  const file = join(dir, 'devices.yaml');
  const specs: DeviceSpec[] = [
    { id: 'ws-dev' },
    { id: 'doomed' },
    { id: 'rotor' },
    { id: 'narrow-a', subscribe: ['devices/narrow-a/#', 'broadcast/#'] },
    { id: 'narrow-b', subscribe: ['devices/narrow-b/#', 'broadcast/#'] },
    { id: 'caster', publish: ['broadcast/#'] },
  ];
  const tokens = writeRegistry(file, specs);
  const rewrite = (change: (s: DeviceSpec[]) => DeviceSpec[]): void => {
    const next = change(specs.map((s) => ({ ...s, token: s.token ?? tokens[s.id] })));
    specs.splice(0, specs.length, ...next);
    Object.assign(tokens, writeRegistry(file, specs));
  };
  const proxy = await startProxy(dir, { auth: { mode: 'token' }, devicesFile: file });
  t.teardown(() => proxy.stop());
  const base = `ws://127.0.0.1:${httpPort(proxy)}/ws`;
  const open: Device[] = [];
  t.teardown(() => open.forEach((d) => d.close()));
  const connect = async (query: string, headers: Record<string, string> = {}): Promise<Device> => {
    const d = await connectWs(base + query, headers);
    open.push(d);
    return d;
  };
  const failures = (reason: string): Promise<number> => proxy.metric('edge_auth_failures_total', `protocol="ws",reason="${reason}"`);

  await t.test('the token in the Authorization header or in ?token= opens the connection as its device', async (t) => {
    const byHeader = await connect('', { authorization: `Bearer ${tokens['ws-dev']}` });
    t.same(await byHeader.request({ op: 'pub', topic: 'devices/ws-dev/a', payload: 1, qos: 1 }), { op: 'ack', id: 'c-1' });
    const byQuery = await connect(`?token=${encodeURIComponent(tokens['ws-dev']!)}`);
    t.same(await byQuery.request({ op: 'pub', topic: 'devices/ws-dev/b', payload: 2, qos: 1 }), { op: 'ack', id: 'c-1' });
    const withD = await connect(`?d=ws-dev&token=${encodeURIComponent(tokens['ws-dev']!)}`);
    t.ok(await withD.alive(), '?d= naming the token’s own device is fine');
  });

  await t.test('no token, a wrong one, an unknown device, another device’s id: HTTP 401, counted under protocol ws', async (t) => {
    const unknown0 = await failures('unknown_device');
    const bad0 = await failures('bad_token');
    t.equal(await upgradeStatus(base), 401, 'no token');
    t.equal(await upgradeStatus(base, { authorization: 'Bearer ws-dev.not-the-secret' }), 401, 'a wrong token in the header');
    t.equal(await upgradeStatus(`${base}?token=ws-dev.not-the-secret`), 401, 'a wrong token in the query');
    t.equal(await upgradeStatus(`${base}?token=ghost.abc`), 401, 'a device not in the registry');
    t.equal(
      await upgradeStatus(`${base}?d=rotor&token=${encodeURIComponent(tokens['ws-dev']!)}`),
      401,
      'another device’s id with this token',
    );
    t.equal(await upgradeStatus(base, { authorization: `Basic ${Buffer.from('ws-dev:x').toString('base64')}` }), 401, 'not a bearer');
    t.equal(await failures('unknown_device'), unknown0 + 3, 'no token, not a bearer token (no device named at all), the unknown device');
    t.equal(await failures('bad_token'), bad0 + 3, 'the wrong tokens and the borrowed id');
    t.equal(await proxy.metric('edge_ws_upgrades_refused_total', 'reason="auth"'), 6);
  });

  await t.test('publish or subscribe outside its filters: E_ACL, and the connection stays', async (t) => {
    const d = await connect('', { authorization: `Bearer ${tokens['ws-dev']}` });
    const acl0 = await failures('acl');
    t.match(await d.request({ op: 'pub', topic: 'devices/rotor/x', payload: 1, qos: 1 }), { op: 'error', id: 'c-1', code: 'E_ACL' });
    t.match(await d.request({ op: 'pub', topic: 'broadcast/all', payload: 1 }), { op: 'error', id: 'c-2', code: 'E_ACL' });
    t.match(await d.request({ op: 'sub', topic: 'devices/rotor/#' }), { op: 'error', id: 'c-3', code: 'E_ACL' });
    t.match(await d.request({ op: 'sub', topic: '#' }), { op: 'error', id: 'c-4', code: 'E_ACL' });
    t.same(await d.request({ op: 'sub', topic: 'broadcast/#' }), { op: 'ack', id: 'c-5' }, 'inside its default filters');
    t.equal(await failures('acl'), acl0 + 4);
    t.ok(await d.alive());
    // A message it may receive arrives; one on a topic it holds no filter for does not.
    const caster = await connect('', { authorization: `Bearer ${tokens.caster}` });
    await caster.request({ op: 'pub', topic: 'broadcast/hello', payload: 'hi', qos: 1 });
    t.match(await d.waitFor('broadcast', (f) => f.op === 'msg'), { topic: 'broadcast/hello', payload: 'hi' });
  });

  await t.test('removed from the registry, or re-keyed, while connected: E_AUTH and close 4401', async (t) => {
    const doomed = await connect('', { authorization: `Bearer ${tokens.doomed}` });
    const rotor = await connect(`?token=${encodeURIComponent(tokens.rotor!)}`);
    const bystander = await connect('', { authorization: `Bearer ${tokens['ws-dev']}` });
    rewrite((s) => s.filter((d) => d.id !== 'doomed').map((d) => (d.id === 'rotor' ? { ...d, token: undefined } : d)));
    t.match(await closedWithin(doomed, 5_000), { code: 4401 }, 'the removed device is closed with 4401');
    t.match(doomed.errors(), [{ code: 'E_AUTH' }], 'after an E_AUTH error frame');
    t.match(await closedWithin(rotor, 5_000), { code: 4401 }, 'the re-keyed device is closed with 4401');
    t.ok(await bystander.alive(), 'an unchanged device stays');
    t.equal(await upgradeStatus(`${base}?token=${encodeURIComponent(tokens.doomed!)}`), 401, 'the removed device cannot come back');
    const fresh = await connect(`?token=${encodeURIComponent(tokens.rotor!)}`);
    t.ok(await fresh.alive(), 'the new token works');
  });

  await t.test('filters narrowed: each subscription outside them is dropped with E_ACL; 4403 when none is left', async (t) => {
    const a = await connect('', { authorization: `Bearer ${tokens['narrow-a']}` });
    const b = await connect('', { authorization: `Bearer ${tokens['narrow-b']}` });
    await a.request({ op: 'sub', topic: 'devices/narrow-a/#' });
    const aBroadcast = a.id();
    a.send({ op: 'sub', topic: 'broadcast/#', id: aBroadcast });
    await a.answer(aBroadcast);
    await b.request({ op: 'sub', topic: 'broadcast/#' });
    rewrite((s) =>
      s.map((d) =>
        d.id === 'narrow-a'
          ? { ...d, subscribe: ['devices/narrow-a/#'] }
          : d.id === 'narrow-b'
            ? { ...d, subscribe: ['devices/narrow-b/#'] }
            : d,
      ),
    );
    const dropped = await a.waitFor('the E_ACL drop', (f) => f.op === 'error' && f.code === 'E_ACL');
    t.match(dropped, { id: aBroadcast, topic: 'broadcast/#' }, 'names the subscription it drops, by its sub id and filter');
    t.ok(await a.alive(), 'a device that still holds an allowed subscription stays connected');
    t.match(await closedWithin(b, 5_000), { code: 4403 }, 'a device left with nothing allowed is closed with 4403');
    t.match(b.errors(), [{ code: 'E_ACL', topic: 'broadcast/#' }]);
    const caster = await connect('', { authorization: `Bearer ${tokens.caster}` });
    await caster.request({ op: 'pub', topic: 'broadcast/after', payload: 'late', qos: 1 });
    const self = await connect('', { authorization: `Bearer ${tokens['narrow-a']}` });
    await self.request({ op: 'pub', topic: 'devices/narrow-a/ping', payload: 'mine', qos: 1 });
    await a.waitFor('its own topic', (f) => f.op === 'msg' && f.topic === 'devices/narrow-a/ping');
    t.same(a.msgs('broadcast/after'), [], 'the dropped subscription receives nothing');
  });
});

t.test('offline, with a small cache: acks after the commit, E_CACHE_FULL', async (t) => {
  const dir = t.testdir();
  const cachePath = join(dir, 'cache.db');
  const proxy = await startProxy(dir, { cache: { path: cachePath, maxBytes: 8192 } });
  t.teardown(() => proxy.stop());
  const d = await connectWs(`ws://127.0.0.1:${httpPort(proxy)}/ws?d=committer`);
  t.teardown(() => d.close());

  await t.test('a qos 1 ack arrives only once the message is committed to the cache', async (t) => {
    const db = new Database(cachePath, { readonly: true, fileMustExist: true });
    t.teardown(() => db.close());
    const count = db.prepare<[string], { n: number }>('SELECT count(*) AS n FROM messages WHERE topic = ?');
    const ids: string[] = [];
    const committedAtAck = new Map<string, number>();
    const onFrame = (data: Buffer): void => {
      const f = JSON.parse(data.toString()) as Frame;
      // Read the cache the moment the ack arrives, before anything else runs.
      if (f.op === 'ack' && typeof f.id === 'string') committedAtAck.set(f.id, count.get(`devices/committer/${f.id}`)!.n);
    };
    d.ws.on('message', onFrame);
    t.teardown(() => d.ws.off('message', onFrame));
    for (let i = 0; i < 10; i++) {
      const id = `m-${i}`;
      ids.push(id);
      d.send({ op: 'pub', topic: `devices/committer/${id}`, payload: { i }, qos: 1, id });
    }
    await eventually('every ack', () => committedAtAck.size === ids.length);
    t.same(
      ids.map((id) => committedAtAck.get(id)),
      ids.map(() => 1),
      'each message was in the cache file when its ack arrived',
    );
    t.same(
      d.frames.filter((f) => f.op === 'ack').map((f) => f.id),
      ids,
      'acks in the order of the publishes',
    );
  });

  await t.test('a publish the cache cannot take gets E_CACHE_FULL, and the connection stays', async (t) => {
    const refused0 = await proxy.metric('edge_messages_refused_total', 'reason="cache"');
    t.match(await d.request({ op: 'pub', topic: 'devices/committer/too-much', payload: 'x'.repeat(10_000), qos: 1 }), {
      op: 'error',
      code: 'E_CACHE_FULL',
      id: 'c-1',
    });
    t.equal(await proxy.metric('edge_messages_refused_total', 'reason="cache"'), refused0 + 1, 'counted as refused by the cache');
    t.ok(await d.alive(), 'still open');
    t.same(await d.request({ op: 'pub', topic: 'devices/committer/small', payload: 'fits', qos: 1 }), { op: 'ack', id: 'c-3' });
  });
});
