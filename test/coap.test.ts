// CoAP devices, end to end (first slice: publish, GET of retained messages, discovery, identity,
// errors, deduplication): the built proxy as a real process, libcoap's coap-client-notls and a raw
// UDP client on coap-packet, MQTT.js on the TCP endpoint and a real Mosquitto as the cloud.
import t from 'tap';
import { createSocket, type Socket } from 'node:dgram';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { generate, parse, type ParsedPacket } from 'coap-packet';
import Database from 'better-sqlite3';
import { cloudFor } from './helpers/mosquitto.js';
import { coapPort } from './helpers/coap.js';
import { startProxy } from './helpers/proxy.js';
import { collect, connectClient, runTool } from './helpers/clients.js';
import { eventually, sleep } from './helpers/ports.js';
import { writeRegistry } from './helpers/registry.js';

const COAP_CLIENT = '/usr/bin/coap-client-notls';

/** A CoAP client on a bare UDP socket: every datagram it gets back, raw and parsed. */
class RawClient {
  readonly received: Array<{ raw: Buffer; packet: ParsedPacket }> = [];
  private mid = Math.floor(Math.random() * 60_000);
  private constructor(
    readonly socket: Socket,
    readonly port: number,
  ) {
    socket.on('message', (raw) => {
      try {
        this.received.push({ raw, packet: parse(raw) });
      } catch {
        /* not for these tests */
      }
    });
  }

  static async open(port: number): Promise<RawClient> {
    const socket = createSocket('udp4');
    await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', () => resolve()));
    return new RawClient(socket, port);
  }

  nextMid(): number {
    return ++this.mid & 0xffff;
  }

  /** A request datagram: path `ps/a/b`, query items `d=x`. */
  request(opts: {
    code: string;
    path: string;
    query?: string[];
    payload?: Buffer | string;
    format?: number;
    con?: boolean;
    mid?: number;
  }): Buffer {
    const options = [
      ...opts.path.split('/').map((p) => ({ name: 'Uri-Path' as const, value: Buffer.from(p) })),
      ...(opts.format !== undefined
        ? [{ name: 'Content-Format' as const, value: opts.format === 0 ? Buffer.alloc(0) : Buffer.from([opts.format]) }]
        : []),
      ...(opts.query ?? []).map((q) => ({ name: 'Uri-Query' as const, value: Buffer.from(q) })),
    ];
    return generate(
      {
        code: opts.code,
        messageId: opts.mid ?? this.nextMid(),
        token: randomBytes(4),
        options,
        confirmable: opts.con ?? true,
        ...(opts.payload !== undefined ? { payload: Buffer.from(opts.payload) } : {}),
      },
      65_000,
    );
  }

  send(data: Buffer): void {
    this.socket.send(data, this.port, '127.0.0.1');
  }

  /** The answers to the message with this id (ACK or RST), in arrival order. */
  answersTo(mid: number): Array<{ raw: Buffer; packet: ParsedPacket }> {
    return this.received.filter((r) => r.packet.messageId === mid && (r.packet.ack || r.packet.reset));
  }

  async answer(data: Buffer, ms = 5_000): Promise<ParsedPacket> {
    const mid = data.readUInt16BE(2);
    const before = this.answersTo(mid).length;
    this.send(data);
    await eventually(`an answer to ${mid}`, () => this.answersTo(mid).length > before, ms);
    return this.answersTo(mid)[before]!.packet;
  }

  close(): void {
    this.socket.close();
  }
}

function option(p: ParsedPacket, name: string): number | null {
  const o = p.options.find((x) => x.name === name);
  if (!o) return null;
  let n = 0;
  for (const b of o.value) n = n * 256 + b;
  return n;
}

interface Envelope {
  topic: string;
  deviceId: string;
  contentType: string;
  payload: unknown;
}

t.test('open mode, with a cloud', async (t) => {
  const dir = t.testdir();
  const { url: cloudUrl, up } = await cloudFor(t, dir);
  const proxy = await startProxy(dir, { uplink: { url: cloudUrl }, limits: { maxPayloadBytes: 4096 } });
  t.teardown(() => proxy.stop());
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);
  const port = coapPort(proxy);
  const base = `coap://127.0.0.1:${port}`;
  const raw = await RawClient.open(port);
  t.teardown(() => raw.close());
  const atCloud = (topic: string): Promise<Envelope> =>
    eventually(`${topic} at the cloud`, () => up.json<Envelope>().find((e) => e.topic === topic)) as Promise<Envelope>;
  const coap = (args: string[]) => runTool(COAP_CLIENT, args);

  await t.test('both sockets listen on one port', async (t) => {
    t.equal((proxy.ports as Record<string, number>).coap6, port);
  });

  await t.test('a confirmable publish from libcoap reaches the cloud as a coap envelope', async (t) => {
    const r = await coap(['-m', 'post', '-e', '{"temp":1}', '-t', '50', `${base}/ps/devices/c1/telemetry?d=c1`]);
    t.equal(r.code, 0, r.stderr);
    // The envelope has no protocol field (docs/message-model.md): the received counter says which protocol.
    t.match(await atCloud('devices/c1/telemetry'), { deviceId: 'c1', contentType: 'json', payload: { temp: 1 } });
    t.ok((await proxy.metric('edge_messages_received_total', 'protocol="coap"')) >= 1, 'received as protocol coap');
    const r2 = await coap(['-m', 'put', '-e', 'plain', '-t', '0', `${base}/ps/anon/text`]);
    t.equal(r2.code, 0, r2.stderr);
    t.match(await atCloud('anon/text'), { contentType: 'text', payload: 'plain' });
    t.match((await atCloud('anon/text')).deviceId, /^coap-127\.0\.0\.1-\d+$/, 'coap-<ip>-<port> without ?d=');
  });

  await t.test('piggybacked 2.04 to CON; NON publish gets a NON 2.04', async (t) => {
    const con = raw.request({ code: 'POST', path: 'ps/raw/con', query: ['d=r1'], payload: '{"a":1}', format: 50 });
    const ack = await raw.answer(con);
    t.match(ack, { ack: true, code: '2.04' });
    t.match(await atCloud('raw/con'), { deviceId: 'r1', contentType: 'json' });
    const non = raw.request({ code: 'POST', path: 'ps/raw/non', query: ['d=r1'], payload: Buffer.from([1, 2, 3]), format: 42, con: false });
    raw.send(non);
    t.match(await atCloud('raw/non'), { deviceId: 'r1', contentType: 'binary' });
    const token = parse(non).token;
    const res = await eventually('the NON response', () => raw.received.find((r) => r.packet.token.equals(token)));
    t.match(res!.packet, { confirmable: false, ack: false, code: '2.04' });
  });

  await t.test('retain over CoAP, read back over CoAP and by an MQTT subscriber; retained from MQTT read over CoAP', async (t) => {
    const r = await coap(['-m', 'post', '-e', '{"on":true}', '-t', '50', `${base}/ps/devices/c2/state?d=c2&r=1`]);
    t.equal(r.code, 0, r.stderr);
    const got = await coap(['-m', 'get', `${base}/ps/devices/c2/state?d=c2`]);
    t.equal(got.stdout.trim(), '{"on":true}');
    const get = await raw.answer(raw.request({ code: 'GET', path: 'ps/devices/c2/state' }));
    t.match(get, { code: '2.05' });
    t.equal(option(get, 'Content-Format'), 50);
    t.equal(get.payload.toString(), '{"on":true}');
    const sub = await connectClient(proxy.ports.mqtt);
    t.teardown(() => sub.endAsync());
    const seen = await collect(sub, 'devices/c2/state');
    await eventually('the retained message over MQTT', () => seen.messages.length === 1);
    t.match(seen.messages[0], { retain: true });
    t.equal(seen.messages[0]!.payload.toString(), '{"on":true}');

    const pub = await connectClient(proxy.ports.mqtt);
    t.teardown(() => pub.endAsync());
    await pub.publishAsync('devices/m1/config', 'mode=eco', { qos: 1, retain: true });
    const fromMqtt = await eventually('retained from MQTT', async () => {
      const a = await raw.answer(raw.request({ code: 'GET', path: 'ps/devices/m1/config' }));
      return a.code === '2.05' ? a : null;
    });
    t.equal(fromMqtt!.payload.toString(), 'mode=eco');
    t.equal(option(fromMqtt!, 'Content-Format'), 0, 'text');
    t.match(await raw.answer(raw.request({ code: 'GET', path: 'ps/no/such/topic' })), { code: '4.04' });
  });

  await t.test('/.well-known/core, unknown paths, wrong methods', async (t) => {
    const core = await raw.answer(raw.request({ code: 'GET', path: '.well-known/core' }));
    t.match(core, { code: '2.05' });
    t.equal(option(core, 'Content-Format'), 40);
    t.match(core.payload.toString(), /<\/ps>;rt="core\.ps"/);
    t.match(await raw.answer(raw.request({ code: 'GET', path: 'nothing/here' })), { code: '4.04' });
    t.match(await raw.answer(raw.request({ code: 'DELETE', path: 'ps/a/b' })), { code: '4.05' });
  });

  await t.test('4.13 with Size1 over limits.maxPayloadBytes, 4.15 for an unknown Content-Format, 4.00 for a bad topic', async (t) => {
    const big = await raw.answer(raw.request({ code: 'POST', path: 'ps/big/one', payload: Buffer.alloc(5000, 1), format: 42 }));
    t.match(big, { code: '4.13' });
    t.equal(option(big, 'Size1'), 4096);
    t.ok(big.payload.length > 0, 'a diagnostic payload');
    const fmt = await raw.answer(raw.request({ code: 'POST', path: 'ps/fmt/one', payload: 'x', format: 99 }));
    t.match(fmt, { code: '4.15' });
    t.match(await raw.answer(raw.request({ code: 'POST', path: 'ps/bad/+/x', payload: 'x' })), { code: '4.00' });
  });

  await t.test('a payload that is not what its Content-Format says is 4.00, and goes nowhere', async (t) => {
    const sub = await connectClient(proxy.ports.mqtt);
    t.teardown(() => sub.endAsync());
    const seen = await collect(sub, 'declared/#');
    for (const [payload, format] of [
      ['{"temp":', 50],
      ['', 50],
      [Buffer.from([0xff, 0xfe]), 50],
      [Buffer.from([0xc3, 0x28]), 0],
    ] as const) {
      const res = await raw.answer(raw.request({ code: 'POST', path: 'ps/declared/bad', payload, format }));
      t.match(res, { code: '4.00' }, `Content-Format ${format} with ${JSON.stringify(payload.toString())}`);
      t.match(res.payload.toString(), /declared (JSON|text)/);
    }
    t.match(await raw.answer(raw.request({ code: 'POST', path: 'ps/declared/good', payload: ' [1, 2] ', format: 50 })), { code: '2.04' });
    await eventually('the good one delivered', () => seen.messages.length > 0);
    t.same(
      seen.messages.map((m) => m.topic),
      ['declared/good'],
      'only the valid one reached a subscriber',
    );
    t.match(await atCloud('declared/good'), { contentType: 'json', payload: [1, 2] });
  });

  await t.test('a retransmission is processed once and answered the same, also while the first is in hand', async (t) => {
    const sub = await connectClient(proxy.ports.mqtt);
    t.teardown(() => sub.endAsync());
    const seen = await collect(sub, 'dup/#');
    const dup0 = await proxy.metric('edge_coap_exchanges_total', 'event="duplicate"');
    // Back to back: the second arrives before the first is committed.
    const together = raw.request({ code: 'POST', path: 'ps/dup/together', payload: 'once' });
    raw.send(together);
    raw.send(together);
    const mid = together.readUInt16BE(2);
    await eventually('two answers', () => raw.answersTo(mid).length === 2);
    const [a, b] = raw.answersTo(mid);
    t.match(a!.packet, { code: '2.04', ack: true });
    t.same(a!.raw, b!.raw, 'identical answers');
    // Later: answered from memory.
    const later = raw.request({ code: 'POST', path: 'ps/dup/later', payload: 'once' });
    await raw.answer(later);
    const again = await raw.answer(later);
    t.same(raw.answersTo(later.readUInt16BE(2))[0]!.raw, raw.answersTo(later.readUInt16BE(2))[1]!.raw);
    t.match(again, { code: '2.04' });
    await eventually('both at the MQTT subscriber', () => seen.messages.length >= 2);
    await sleep(500);
    t.same(seen.messages.map((m) => m.topic).sort(), ['dup/later', 'dup/together'], 'each message reached MQTT exactly once');
    t.equal(up.json<Envelope>().filter((e) => e.topic.startsWith('dup/')).length, 2, 'and the cloud exactly once');
    t.equal(await proxy.metric('edge_coap_exchanges_total', 'event="duplicate"'), dup0 + 2, 'two duplicates counted');
  });

  await t.test('malformed datagrams: reset or silence, and the proxy goes on', async (t) => {
    const junk = await RawClient.open(port);
    t.teardown(() => junk.close());
    junk.send(Buffer.from([0x40])); // truncated header
    junk.send(Buffer.from([0x80, 0x01, 0x00, 0x01])); // version 2: silence
    const tkl9 = Buffer.from([0x49, 0x01, 0x12, 0x34, 1, 2, 3, 4, 5, 6, 7, 8, 9]); // CON, token length 9
    junk.send(tkl9);
    const pastEnd = Buffer.from([0x40, 0x02, 0x22, 0x22, 0xbd, 0x20, 0x61]); // option value past the end
    junk.send(pastEnd);
    junk.send(Buffer.from([0x40, 0x02, 0x33, 0x33, 0xb1, 0x61, 0xff])); // payload marker without payload
    junk.send(Buffer.from([0x40, 0x00, 0x44, 0x44])); // CoAP ping
    for (let i = 0; i < 500; i++) junk.send(randomBytes(1 + Math.floor(Math.random() * 64)));
    await eventually('resets', () =>
      [0x1234, 0x2222, 0x3333, 0x4444].every((mid) => junk.received.some((r) => r.packet.reset && r.packet.messageId === mid)),
    );
    t.notOk(
      junk.received.some((r) => r.packet.messageId === 0x0001),
      'an unknown version is ignored in silence',
    );
    const r = await coap(['-m', 'post', '-e', 'still', `${base}/ps/after/junk?d=good`]);
    t.equal(r.code, 0, r.stderr);
    t.match(await atCloud('after/junk'), { deviceId: 'good', payload: 'still' });
    t.ok((await proxy.metric('edge_messages_refused_total', 'reason="malformed"')) >= 4, 'counted as malformed');
  });
});

t.test('token mode', async (t) => {
  const dir = t.testdir();
  const devicesFile = join(dir, 'devices.yaml');
  const tokens = writeRegistry(devicesFile, [{ id: 'ct-1' }]);
  const proxy = await startProxy(dir, { auth: { mode: 'token' }, devicesFile });
  t.teardown(() => proxy.stop());
  const raw = await RawClient.open(coapPort(proxy));
  t.teardown(() => raw.close());
  const token = tokens['ct-1']!;
  const pub = (path: string, query: string[]) => raw.answer(raw.request({ code: 'POST', path, query, payload: 'v' }));
  const fail0 = await proxy.metric('edge_auth_failures_total', 'protocol="coap"');

  t.match(await pub('ps/devices/ct-1/up', ['d=ct-1', `k=${token}`]), { code: '2.04' }, 'the right token');
  const wrong = await pub('ps/devices/ct-1/up', ['d=ct-1', `k=${token.slice(0, -2)}xx`]);
  t.match(wrong, { code: '4.01' }, 'a wrong token');
  t.ok(wrong.payload.length > 0, 'with a diagnostic');
  t.match(await pub('ps/devices/ct-1/up', ['d=ct-1']), { code: '4.01' }, 'no token');
  t.match(await pub('ps/devices/other/up', ['d=ct-1', `k=${token}`]), { code: '4.03' }, 'outside its filters');
  t.match(await raw.answer(raw.request({ code: 'GET', path: 'ps/devices/other/x', query: ['d=ct-1', `k=${token}`] })), { code: '4.03' });
  t.match(await raw.answer(raw.request({ code: 'GET', path: 'ps/devices/ct-1/x', query: ['d=ct-1', `k=${token}`] })), { code: '4.04' });
  t.equal(await proxy.metric('edge_auth_failures_total', 'protocol="coap"'), fail0 + 4, 'each refusal counted for coap');
  const r = await runTool(COAP_CLIENT, [
    '-m',
    'post',
    '-e',
    '1',
    `coap://127.0.0.1:${coapPort(proxy)}/ps/devices/ct-1/lib?d=ct-1&k=${token}`,
  ]);
  t.equal(r.code, 0, r.stderr);
});

t.test('offline, with a small cache: 2.04 after the commit, 5.03 with Max-Age when full', async (t) => {
  const dir = t.testdir();
  const cachePath = join(dir, 'cache.db');
  const proxy = await startProxy(dir, { cache: { path: cachePath, maxBytes: 8192 } });
  t.teardown(() => proxy.stop());
  const raw = await RawClient.open(coapPort(proxy));
  t.teardown(() => raw.close());

  await t.test('each 2.04 arrives once the message is in the cache file', async (t) => {
    const db = new Database(cachePath, { readonly: true, fileMustExist: true });
    t.teardown(() => db.close());
    const count = db.prepare<[string], { n: number }>('SELECT count(*) AS n FROM messages WHERE topic = ?');
    const topicOf = new Map<number, string>();
    const committedAtAck = new Map<number, number>();
    const onMessage = (data: Buffer): void => {
      const p = parse(data);
      const topic = topicOf.get(p.messageId);
      // Read the cache the moment the 2.04 arrives, before anything else runs.
      if (p.ack && p.code === '2.04' && topic) committedAtAck.set(p.messageId, count.get(topic)!.n);
    };
    raw.socket.on('message', onMessage);
    t.teardown(() => raw.socket.off('message', onMessage));
    for (let i = 0; i < 10; i++) {
      const d = raw.request({ code: 'POST', path: `ps/devices/committer/m-${i}`, payload: `{"i":${i}}`, format: 50 });
      topicOf.set(d.readUInt16BE(2), `devices/committer/m-${i}`);
      raw.send(d);
    }
    await eventually('every 2.04', () => committedAtAck.size === 10);
    t.same([...committedAtAck.values()], Array(10).fill(1), 'each message was in the cache file when its 2.04 arrived');
  });

  await t.test('a publish the cache cannot take gets 5.03 with Max-Age', async (t) => {
    const full = await raw.answer(raw.request({ code: 'POST', path: 'ps/devices/committer/too-much', payload: 'x'.repeat(10_000) }));
    t.match(full, { code: '5.03' });
    t.ok((option(full, 'Max-Age') ?? 0) > 0, 'Max-Age says when to try again');
    t.ok(full.payload.length > 0, 'with a diagnostic');
    t.match(await raw.answer(raw.request({ code: 'POST', path: 'ps/devices/committer/small', payload: 'fits' })), { code: '2.04' });
  });
});
