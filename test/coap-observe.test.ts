// CoAP Observe (RFC 7641) and block-wise responses (RFC 7959 Block2), end to end: the built proxy
// as a real process in token mode, libcoap's coap-client-notls, node-coap's client and a raw UDP
// client on coap-packet that acknowledges only when told to, MQTT.js devices and a real Mosquitto
// as the cloud. The RFC 7252 timings are the real ones: the observer that never acknowledges is
// started first and checked last, about 62 to 93 s later.
import t from 'tap';
import { createSocket, type Socket } from 'node:dgram';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { generate, parse, type ParsedPacket } from 'coap-packet';
import coap, { type ObserveReadStream } from 'coap';
import mqtt from 'mqtt';
import { cloudFor } from './helpers/mosquitto.js';
import { coapPort } from './helpers/coap.js';
import { startProxy } from './helpers/proxy.js';
import { collect, connectClient, startTool } from './helpers/clients.js';
import { eventually, sleep } from './helpers/ports.js';
import { writeRegistry, type DeviceSpec } from './helpers/registry.js';
import { Observations, type ObserveLimits, type Peer } from '../src/adapters/coap/observers.js';
import { Block2Store, etagOf, type Representation } from '../src/adapters/coap/block2.js';

const COAP_CLIENT = '/usr/bin/coap-client-notls';
/** docs/coap.md: notifications waiting behind the one in flight, per observation */
const QUEUE_COUNT = 16;
/** docs/coap.md: observations per device */
const PER_DEVICE = 32;

interface Got {
  packet: ParsedPacket;
  at: number;
}

/** A CoAP endpoint on a bare UDP socket that answers nothing unless told to. */
class Raw {
  readonly received: Got[] = [];
  private mid = Math.floor(Math.random() * 60_000);
  private constructor(
    readonly socket: Socket,
    readonly port: number,
  ) {
    socket.on('message', (raw) => {
      try {
        this.received.push({ packet: parse(raw), at: Date.now() });
      } catch {
        /* not for these tests */
      }
    });
  }

  static async open(t: { teardown(fn: () => unknown): void }, port: number): Promise<Raw> {
    const socket = createSocket('udp4');
    await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', () => resolve()));
    const raw = new Raw(socket, port);
    t.teardown(() => socket.close());
    return raw;
  }

  /** A GET datagram on `path` (levels as they go in Uri-Path: `#` as it is). */
  get(path: string, query: string[], opts: { token?: Buffer; observe?: 0 | 1; block2?: number; con?: boolean } = {}): Buffer {
    const options = [
      ...(opts.observe === undefined ? [] : [{ name: 'Observe' as const, value: opts.observe === 0 ? Buffer.alloc(0) : Buffer.of(1) }]),
      ...path.split('/').map((p) => ({ name: 'Uri-Path' as const, value: Buffer.from(p) })),
      ...query.map((q) => ({ name: 'Uri-Query' as const, value: Buffer.from(q) })),
      ...(opts.block2 === undefined ? [] : [{ name: 'Block2' as const, value: uint(opts.block2) }]),
    ];
    this.mid = (this.mid + 1) & 0xffff;
    return generate({ code: 'GET', messageId: this.mid, token: opts.token ?? randomBytes(4), options, confirmable: opts.con ?? true });
  }

  send(data: Buffer): void {
    this.socket.send(data, this.port, '127.0.0.1');
  }

  /** Sends a request and waits for its ACK (or RST). */
  async answer(data: Buffer): Promise<ParsedPacket> {
    const mid = data.readUInt16BE(2);
    this.send(data);
    const got = await eventually(`an answer to ${mid}`, () =>
      this.received.find((r) => r.packet.messageId === mid && (r.packet.ack || r.packet.reset)),
    );
    return got!.packet;
  }

  /** What came with `token` other than answers to requests: notifications, each transmission of one. */
  notifications(token: Buffer): Got[] {
    return this.received.filter((r) => r.packet.token.equals(token) && !r.packet.ack && !r.packet.reset);
  }

  /** One entry per message id: retransmissions left out. */
  distinct(token: Buffer): ParsedPacket[] {
    const seen = new Set<number>();
    return this.notifications(token)
      .map((r) => r.packet)
      .filter((p) => !seen.has(p.messageId) && seen.add(p.messageId));
  }

  empty(type: 'ack' | 'rst', mid: number): void {
    const b = Buffer.alloc(4);
    b[0] = type === 'ack' ? 0x60 : 0x70;
    b.writeUInt16BE(mid, 2);
    this.send(b);
  }
}

function uint(n: number): Buffer {
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v % 256);
  return Buffer.from(bytes);
}

function opt(p: ParsedPacket, name: string): number | null {
  const o = p.options.find((x) => x.name === name);
  return o ? o.value.reduce((v, b) => v * 256 + b, 0) : null;
}

function optBytes(p: ParsedPacket, name: string): Buffer | null {
  return p.options.find((x) => x.name === name)?.value ?? null;
}

/** Text whose every 16 bytes say where they are, so a block out of place shows. */
function pattern(bytes: number, tag: string): string {
  let s = '';
  for (let i = 0; s.length < bytes; i++) s += `${tag}${String(i).padStart(14 - tag.length, '0')};\n`;
  return s.slice(0, bytes);
}

interface MsgJson {
  topic: string;
  payload: unknown;
  contentType: string;
  ts: number;
  msgId: string;
  retain?: boolean;
}

t.test('observations on their own, with explicit times', async (t) => {
  const peer = (port: number): Peer => ({ socket: null as unknown as Socket, address: '10.0.0.1', port });
  const rep = (bytes: number, tag = 'x'): Representation => ({ payload: Buffer.alloc(bytes, tag), contentFormat: 0, etag: etagOf(tag) });
  const setup = (limits: Partial<ObserveLimits> = {}) => {
    const sent: ParsedPacket[] = [];
    const events: string[] = [];
    let mid = 0;
    const blocks = new Block2Store({ stored: () => {}, evicted: () => {}, missing: () => {} });
    const obs = new Observations(
      { perDevice: 32, total: 2_000, perEndpoint: 32, queueCount: 16, queueBytes: 64 * 1024, totalQueueBytes: 16 * 1024 * 1024, ...limits },
      { ackTimeoutMs: 2_000, randomFactor: 1.5, maxRetransmit: 4 },
      { send: (_p, data) => sent.push(parse(data)), mid: () => ++mid },
      blocks,
      { observe: (e) => events.push(e), dropped: () => events.push('dropped'), endpoints: () => {} },
    );
    return { obs, sent, events };
  };
  const reg = (o: Observations, port: number, deviceId: string, now = 0) =>
    o.register({ peer: peer(port), token: randomBytes(4), filter: 'a/b', exact: true, identity: { deviceId, by: 'token' }, szx: 6 }, now);

  await t.test('a confirmable notification at least every 24 h (RFC 7641 §4.5), however the messages are sent', async (t) => {
    const { obs, sent } = setup();
    const o = reg(obs, 1, 'd')!;
    const day = 24 * 3600 * 1000;
    obs.notify(o, { rep: rep(4), con: false }, 1_000);
    obs.notify(o, { rep: rep(4), con: false }, day - 1);
    obs.notify(o, { rep: rep(4), con: false }, day + 1);
    t.same(
      sent.map((p) => p.confirmable),
      [false, false, true],
      'non-confirmable until a day after the last confirmable one (the registration)',
    );
    obs.acknowledged('10.0.0.1', 1, sent[2]!.messageId, day + 2);
    obs.notify(o, { rep: rep(4), con: false }, day + 3);
    t.equal(sent[3]!.confirmable, false, 'then non-confirmable again');
  });

  await t.test('an observation with nothing to notify is probed once a day, and dropped when nobody answers', async (t) => {
    const { obs, sent, events } = setup();
    const o = reg(obs, 1, 'd', 0)!;
    const day = 24 * 3600 * 1000;
    obs.tick(day - 1);
    t.equal(sent.length, 0, 'nothing within the day');
    obs.tick(day);
    t.equal(sent.length, 1, 'a day after the registration: a probe');
    t.match(sent[0], { confirmable: true, code: '2.05' });
    t.equal(sent[0]!.payload.length, 0, 'of what the resource is now (nothing retained here)');
    // RFC 7252 §4.2: 4 retransmissions, each after a timeout twice the one before, then given up.
    let now = day;
    for (let i = 0; i < 6; i++) obs.tick((now += 100_000));
    t.equal(sent.length, 5, 'the probe and its 4 retransmissions');
    t.ok(o.gone && events.includes('unacknowledged'), 'then the observation is gone, counted');
    t.equal(obs.size, 0, 'its place freed');
  });

  await t.test('the queue: at most queueCount and queueBytes, the oldest dropped, the newest always kept', async (t) => {
    const { obs, sent, events } = setup({ queueCount: 3, queueBytes: 10_000 });
    const o = reg(obs, 1, 'd')!;
    obs.notify(o, { rep: rep(10, 'f'), con: true }, 0); // in flight
    for (const tag of ['a', 'b', 'c']) obs.notify(o, { rep: rep(100, tag), con: true }, 0);
    t.equal(events.filter((e) => e === 'dropped').length, 0, 'queueCount just reached: nothing dropped');
    obs.notify(o, { rep: rep(100, 'd'), con: true }, 0);
    t.equal(events.filter((e) => e === 'dropped').length, 1, 'one over queueCount: the oldest dropped');
    obs.notify(o, { rep: rep(20_000, 'e'), con: true }, 0);
    t.equal(o.queue.length, 1, 'over queueBytes: only the newest stays, whatever its size');
    t.equal(sent.length, 1, 'all the while, one notification in flight');
    obs.acknowledged('10.0.0.1', 1, sent[0]!.messageId, 1);
    t.equal(sent.length, 2);
    t.equal(sent[1]!.payload.length, 1024, 'the large one, its first block');
  });

  await t.test('queued bytes over all observations: past totalQueueBytes a new notification is dropped', async (t) => {
    const { obs, events } = setup({ queueBytes: 10_000, totalQueueBytes: 5_000 });
    const a = reg(obs, 1, 'a')!;
    const b = reg(obs, 2, 'b')!;
    obs.notify(a, { rep: rep(10), con: true }, 0); // in flight
    obs.notify(b, { rep: rep(10), con: true }, 0); // in flight
    obs.notify(a, { rep: rep(4_000, 'a'), con: true }, 0);
    t.equal(obs.queuedBytes, 4_064, 'queued: payload and bookkeeping');
    obs.notify(b, { rep: rep(2_000, 'b'), con: true }, 0);
    t.equal(b.queue.length, 0, "over the total: b's own notification goes, a's stays");
    t.equal(a.queue.length, 1);
    t.equal(events.filter((e) => e === 'dropped').length, 1);
    obs.notify(b, { rep: rep(500, 'c'), con: true }, 0);
    t.equal(b.queue.length, 1, 'within the total again: queued');
    obs.deregister(a);
    t.equal(obs.queuedBytes, 564, 'what a held is released with it');
  });

  await t.test('a registration replaced with another filter or device lets go of what its queue held', async (t) => {
    const { obs } = setup();
    const token = randomBytes(4);
    const at = (filter: string, deviceId: string) =>
      obs.register({ peer: peer(9), token, filter, exact: false, identity: { deviceId, by: 'token' }, szx: 6 }, 0)!;
    const o = at('x/a/#', 'd');
    obs.notify(o, { rep: rep(10), con: true }, 0); // in flight
    obs.notify(o, { rep: rep(1_000), con: true }, 0);
    t.equal(obs.queuedBytes, 1_064);
    t.equal(at('x/b/#', 'd'), o, 'the same observation, replaced');
    t.equal(obs.queuedBytes, 0, 'another filter: its queue is gone, and so are its bytes');
    obs.notify(o, { rep: rep(500), con: true }, 0);
    at('x/b/#', 'e');
    t.equal(obs.queuedBytes, 0, 'another device: the same');
    t.equal(o.queue.length, 0);
  });

  await t.test('observations per address and port: a bound of their own, whatever devices they claim', async (t) => {
    const { obs } = setup({ perEndpoint: 2 });
    t.ok(reg(obs, 7, 'a') && reg(obs, 7, 'b'), 'two from one endpoint');
    t.equal(reg(obs, 7, 'c'), null, 'not a third, even for another device');
    t.ok(reg(obs, 8, 'c'), 'another port: its own two');
  });

  await t.test('observations per device and in all: inside and just outside the bounds', async (t) => {
    const { obs, events } = setup({ perDevice: 2, total: 3 });
    t.ok(reg(obs, 1, 'a') && reg(obs, 2, 'a'), 'two for a device');
    t.equal(reg(obs, 3, 'a'), null, 'not a third');
    t.ok(reg(obs, 4, 'b'), 'the third in all');
    t.equal(reg(obs, 5, 'c'), null, 'not a fourth');
    t.equal(events.filter((e) => e === 'refused').length, 2);
    t.equal(obs.endpointCount, 3);
  });
});

t.test('representations in block-wise transfer: bounded in bytes, forgotten when idle', async (t) => {
  const events: string[] = [];
  const store = new Block2Store(
    { stored: () => events.push('stored'), evicted: () => events.push('evicted'), missing: () => events.push('missing') },
    10_000,
    1_000,
  );
  const rep = (bytes: number, tag: string): Representation => ({ payload: Buffer.alloc(bytes, tag), etag: etagOf(tag) });
  t.equal(store.first('k0', rep(1024, 'a'), 6, 0).block2, undefined, 'one block: sent whole, not held');
  t.equal(store.size, 0);
  store.first('k1', rep(4_000, 'b'), 6, 0);
  store.first('k2', rep(4_000, 'c'), 6, 0);
  t.equal(events.filter((e) => e === 'evicted').length, 0, 'under the cap');
  store.first('k3', rep(4_000, 'd'), 6, 0);
  t.equal(events.filter((e) => e === 'evicted').length, 1, 'over the cap: the least recently used goes');
  t.same(
    store.next('k1', { num: 1, more: false, szx: 6, size: 1024 }, 1, () => null),
    { ok: false, why: 'missing' },
  );
  store.first('k4', rep(50_000, 'e'), 6, 2);
  t.equal(store.size, 1, 'one larger than the cap is held alone');
  t.ok(store.busy('k4', 3, 10_000), 'a transfer under way');
  const last = store.next('k4', { num: 48, more: false, szx: 6, size: 1024 }, 4, () => null);
  t.match(last, { ok: true, res: { block2: { num: 48, more: false } } });
  t.notOk(store.busy('k4', 5, 10_000), 'its last block served');
  t.same(
    store.next('k4', { num: 49, more: false, szx: 6, size: 1024 }, 5, () => null),
    { ok: false, why: 'past_end' },
  );
  store.expire(4 + 999);
  t.equal(store.size, 1, 'not before the idle time');
  store.expire(5 + 1_000);
  t.equal(store.size, 0, 'forgotten after it');
  const again = store.next('k4', { num: 1, more: false, szx: 6, size: 1024 }, 2_000, () => rep(3_000, 'f'));
  t.match(again, { ok: true, res: { etag: etagOf('f') } }, 'read again when gone: its own ETag says what it is');
});

t.test('token mode, with a cloud', async (t) => {
  const dir = t.testdir();
  const { url: cloudUrl } = await cloudFor(t, dir);
  const devicesFile = join(dir, 'devices.yaml');
  const specs: DeviceSpec[] = [
    { id: 'obs-1' },
    { id: 'narrow-1', subscribe: ['devices/narrow-1/#', 'shared/#'] },
    { id: 'gone-1' },
    { id: 'many-1' },
    { id: 'pub-1', publish: ['#'], subscribe: ['#'] },
  ];
  const tokens = writeRegistry(devicesFile, specs);
  const proxy = await startProxy(dir, { auth: { mode: 'token' }, devicesFile, uplink: { url: cloudUrl } });
  t.teardown(() => proxy.stop());
  const port = coapPort(proxy);
  const base = `coap://127.0.0.1:${port}`;
  const q = (id: string): string[] => [`d=${id}`, `k=${tokens[id]!}`];
  const qs = (id: string): string => `d=${id}&k=${tokens[id]!}`;
  const metric = (name: string, labels?: string) => proxy.metric(name, labels);
  const observeMetric = (event: string) => metric('edge_coap_observations_total', `event="${event}"`);
  const observing = () => metric('edge_connections', 'protocol="coap"');
  const pub = await connectClient(proxy.ports.mqtt, { username: 'pub-1', password: tokens['pub-1']! });
  t.teardown(() => pub.endAsync());

  // Started first: the RFC 7252 back-off takes 62 to 93 s before an observer that never
  // acknowledges is dropped. Checked in the last subtest.
  const silent = await Raw.open(t, port);
  const silentToken = randomBytes(4);
  const silentFirst = await silent.answer(silent.get('ps/devices/obs-1/silent/x', q('obs-1'), { token: silentToken, observe: 0 }));
  const unacked0 = await observeMetric('unacknowledged');
  await pub.publishAsync('devices/obs-1/silent/x', 'never acknowledged', { qos: 1 });
  await eventually('the silent observer notified', () => silent.notifications(silentToken).length > 0);

  await t.test('registration: 2.05 with Observe; 4.03 outside the subscribe filters, 4.01 with a bad token', async (t) => {
    t.match(silentFirst, { code: '2.05', ack: true });
    t.ok(opt(silentFirst, 'Observe') !== null, 'an Observe option: registered');
    const raw = await Raw.open(t, port);
    const denied = await raw.answer(raw.get('ps/devices/other/#', q('obs-1'), { observe: 0 }));
    t.match(denied, { code: '4.03' });
    t.equal(opt(denied, 'Observe'), null);
    const bad = await raw.answer(raw.get('ps/devices/obs-1/#', ['d=obs-1', `k=${tokens['obs-1']!.slice(0, -2)}xx`], { observe: 0 }));
    t.match(bad, { code: '4.01' });
    t.match(await raw.answer(raw.get('ps/devices/obs-1/#/x', q('obs-1'), { observe: 0 })), { code: '4.00' }, 'not a valid filter');
  });

  await t.test('libcoap observes a topic and a filter (%23): retained, MQTT, the cloud downlink, and 3 KB through Block2', async (t) => {
    await pub.publishAsync('devices/obs-1/cmd/led', 'initial', { qos: 1, retain: true });
    const local = await connectClient(proxy.ports.mqtt, { username: 'pub-1', password: tokens['pub-1']! });
    t.teardown(() => local.endAsync());
    const seenLocally = await collect(local, 'devices/obs-1/cmd/#');
    const before = await observing();
    // -L 3: libcoap fetches the blocks itself and hands the whole body over; -w: a newline after each.
    const args = ['-L', '3', '-w', '-s', '15', '-B', '25'];
    const exact = startTool(COAP_CLIENT, [...args, `${base}/ps/devices/obs-1/cmd/led?${qs('obs-1')}`]);
    const filter = startTool(COAP_CLIENT, [...args, `${base}/ps/devices/obs-1/%23?${qs('obs-1')}`]);
    t.teardown(() => {
      exact.stop();
      filter.stop();
    });
    await eventually('both registered', async () => (await observing()) === before + 2);
    await pub.publishAsync('devices/obs-1/cmd/led', 'on', { qos: 1 });
    const cloud = await mqtt.connectAsync(cloudUrl, { reconnectPeriod: 0 });
    t.teardown(() => cloud.endAsync());
    await eventually('the uplink connected', async () => (await metric('edge_uplink_connected')) === 1);
    await eventually(
      'the downlink delivered locally',
      async () => {
        if (seenLocally.messages.some((m) => m.topic === 'devices/obs-1/cmd/fan')) return true;
        await cloud.publishAsync('edge/test-edge/down/devices/obs-1/cmd/fan', '{"fan":true}', { qos: 1 });
        await sleep(300);
        return seenLocally.messages.some((m) => m.topic === 'devices/obs-1/cmd/fan');
      },
      10_000,
    );
    const big = randomBytes(2250).toString('base64'); // 3000 characters
    await pub.publishAsync('devices/obs-1/cmd/led', big, { qos: 1 });
    const [e, f] = await Promise.all([exact.exited, filter.exited]);
    t.equal(e.code, 0, e.stderr);
    t.equal(f.code, 0, f.stderr);
    t.same(
      e.stdout.split('\n').filter(Boolean),
      ['initial', 'on', big],
      'the topic: its retained message first, then each payload as it is',
    );
    const lines = f.stdout.split('\n').filter(Boolean);
    const msgs = lines.map((l) => JSON.parse(l) as MsgJson);
    t.match(msgs[0], { topic: 'devices/obs-1/cmd/led', payload: 'initial', contentType: 'text', retain: true }, 'the retained match first');
    t.match(msgs[1], { topic: 'devices/obs-1/cmd/led', payload: 'on' });
    t.notOk('retain' in msgs[1]!, 'a live message is not marked retained');
    t.match(
      msgs.find((m) => m.topic === 'devices/obs-1/cmd/fan'),
      { payload: { fan: true }, contentType: 'json' },
      'the cloud downlink, its JSON payload as JSON',
    );
    const whole = msgs.find((m) => m.payload === big);
    t.ok(whole, 'the 3000-character payload whole, in JSON of more than 3 blocks');
    t.ok(Buffer.byteLength(lines.find((l) => l.includes(big))!) > 3 * 1024);
    t.match(whole, { topic: 'devices/obs-1/cmd/led', contentType: 'text' });
    t.ok((await metric('edge_coap_block_responses_total', 'event="stored"')) >= 2, 'both big notifications were sent block-wise');
  });

  await t.test('QoS 1 notifies confirmable, QoS 0 non-confirmable; the Observe number increases', async (t) => {
    const raw = await Raw.open(t, port);
    const token = randomBytes(4);
    const first = await raw.answer(raw.get('ps/devices/obs-1/t/led', q('obs-1'), { token, observe: 0 }));
    t.match(first, { code: '2.05' });
    t.equal(first.payload.length, 0, 'nothing retained: an empty first response');
    await pub.publishAsync('devices/obs-1/t/led', 'one', { qos: 1 });
    await eventually('the QoS 1 notification', () => raw.distinct(token).length === 1);
    const con = raw.distinct(token)[0]!;
    t.match(con, { confirmable: true, code: '2.05' });
    t.equal(con.payload.toString(), 'one');
    t.equal(opt(con, 'Content-Format'), 0, 'text');
    raw.empty('ack', con.messageId);
    await pub.publishAsync('devices/obs-1/t/led', 'zero', { qos: 0 });
    await eventually('the QoS 0 notification', () => raw.distinct(token).length === 2);
    const non = raw.distinct(token)[1]!;
    t.match(non, { confirmable: false, ack: false, reset: false, code: '2.05' });
    t.equal(non.payload.toString(), 'zero');
    const seq = [first, con, non].map((p) => opt(p, 'Observe')!);
    t.ok(seq[0]! < seq[1]! && seq[1]! < seq[2]!, `Observe ${seq.join(' < ')}`);
  });

  await t.test('NSTART 1: one confirmable notification in flight; behind it a queue that drops the oldest', async (t) => {
    const raw = await Raw.open(t, port);
    const token = randomBytes(4);
    await raw.answer(raw.get('ps/devices/obs-1/q/#', q('obs-1'), { token, observe: 0 }));
    const dropped0 = await metric('edge_messages_dropped_total', 'reason="slow_consumer"');
    const n = 1 + QUEUE_COUNT + 4;
    for (let i = 0; i < n; i++) await pub.publishAsync(`devices/obs-1/q/m${i}`, `${i}`, { qos: 1 });
    await sleep(1_000); // under ACK_TIMEOUT: a retransmission would be the same message anyway
    t.equal(raw.distinct(token).length, 1, 'unacknowledged, the first notification is the only one sent');
    t.equal(await metric('edge_messages_dropped_total', 'reason="slow_consumer"'), dropped0 + 4, 'the 4 oldest of the queue dropped');
    // Acknowledge each in turn: the next one follows.
    for (let k = 1; k <= 1 + QUEUE_COUNT; k++) {
      raw.empty('ack', raw.distinct(token)[k - 1]!.messageId);
      if (k <= QUEUE_COUNT) await eventually(`notification ${k + 1}`, () => raw.distinct(token).length === k + 1, 5_000);
    }
    const got = raw.distinct(token);
    t.ok(
      got.every((p) => p.confirmable),
      'all confirmable',
    );
    const topics = got.map((p) => (JSON.parse(p.payload.toString()) as MsgJson).topic);
    t.same(topics, ['devices/obs-1/q/m0', ...Array.from({ length: QUEUE_COUNT }, (_, i) => `devices/obs-1/q/m${i + 5}`)]);
    const seq = got.map((p) => opt(p, 'Observe')!);
    t.ok(
      seq.every((v, i) => i === 0 || v > seq[i - 1]!),
      'Observe numbers increase',
    );
  });

  await t.test('a reset to a notification deregisters, confirmable or not', async (t) => {
    const reset0 = await observeMetric('reset');
    for (const qos of [0, 1] as const) {
      const raw = await Raw.open(t, port);
      const token = randomBytes(4);
      const topic = `devices/obs-1/rst/q${qos}`;
      await raw.answer(raw.get(`ps/${topic}`, q('obs-1'), { token, observe: 0 }));
      await pub.publishAsync(topic, 'first', { qos });
      await eventually('a notification', () => raw.distinct(token).length === 1);
      raw.empty('rst', raw.distinct(token)[0]!.messageId);
      await eventually('deregistered', async () => (await observeMetric('reset')) === reset0 + qos + 1);
      await pub.publishAsync(topic, 'second', { qos });
      await sleep(500);
      t.equal(raw.distinct(token).length, 1, `QoS ${qos}: nothing after the reset`);
    }
  });

  await t.test('Observe 1 deregisters; the same token again replaces the registration', async (t) => {
    const raw = await Raw.open(t, port);
    const token = randomBytes(4);
    const path = 'ps/devices/obs-1/rep/a';
    const gauge0 = await observing();
    const r1 = await raw.answer(raw.get(path, q('obs-1'), { token, observe: 0 }));
    const replaced0 = await observeMetric('replaced');
    const r2 = await raw.answer(raw.get(path, q('obs-1'), { token, observe: 0 }));
    t.equal(await observeMetric('replaced'), replaced0 + 1);
    t.ok(opt(r2, 'Observe')! > opt(r1, 'Observe')!, 'the sequence goes on');
    t.equal(await observing(), gauge0 + 1, 'one endpoint observing (edge_connections{protocol="coap"})');
    await pub.publishAsync('devices/obs-1/rep/a', 'once', { qos: 0 });
    await eventually('the notification', () => raw.distinct(token).length === 1);
    await sleep(300);
    t.equal(raw.distinct(token).length, 1, 'one notification, not one per registration');
    const dereg0 = await observeMetric('deregistered');
    const off = await raw.answer(raw.get(path, q('obs-1'), { token, observe: 1 }));
    t.match(off, { code: '4.04' }, 'answered as a plain GET (nothing retained)');
    t.equal(opt(off, 'Observe'), null);
    t.equal(await observeMetric('deregistered'), dereg0 + 1);
    t.equal(await observing(), gauge0, 'the endpoint no longer counted');
    await pub.publishAsync('devices/obs-1/rep/a', 'after', { qos: 0 });
    await sleep(500);
    t.equal(raw.distinct(token).length, 1, 'nothing after Observe 1');
  });

  await t.test(`over ${PER_DEVICE} observations of one device: answered without Observe`, async (t) => {
    const raw = await Raw.open(t, port);
    const refused0 = await observeMetric('refused');
    const answers: ParsedPacket[] = [];
    for (let i = 0; i <= PER_DEVICE; i++) answers.push(await raw.answer(raw.get('ps/devices/many-1/#', q('many-1'), { observe: 0 })));
    t.ok(
      answers.slice(0, PER_DEVICE).every((a) => a.code === '2.05' && opt(a, 'Observe') !== null),
      `${PER_DEVICE} registered`,
    );
    t.match(answers[PER_DEVICE], { code: '2.05' });
    t.equal(opt(answers[PER_DEVICE]!, 'Observe'), null, 'the next answered as a GET: no Observe, not registered');
    t.equal(await observeMetric('refused'), refused0 + 1);
  });

  await t.test('GET of a retained message larger than a block: Block2, Size2, ETag; a change shows in the ETag', async (t) => {
    const body = pattern(70_000, 'R'); // over the 60,000 bytes that were once answered 5.00
    await pub.publishAsync('devices/obs-1/big', body, { qos: 1, retain: true });
    const url = `${base}/ps/devices/obs-1/big?${qs('obs-1')}`;
    // coap-client-notls ends what it prints with a newline.
    const whole = await eventually('libcoap reads it', async () => {
      const r = await startTool(COAP_CLIENT, ['-L', '3', url]).exited;
      return r.stdout === `${body}\n` ? r : null;
    });
    t.equal(whole!.code, 0);
    const small = await startTool(COAP_CLIENT, ['-L', '3', '-b', '64', url]).exited;
    t.equal(small.stdout, `${body}\n`, 'in 64-byte blocks when the client asks for them');

    const raw = await Raw.open(t, port);
    const path = 'ps/devices/obs-1/big';
    const b0 = await raw.answer(raw.get(path, q('obs-1'), { block2: 2 })); // num 0, SZX 2: 64 bytes
    t.match(b0, { code: '2.05' });
    t.equal(opt(b0, 'Block2'), (0 << 4) | 8 | 2, 'block 0, more, SZX 2');
    t.equal(opt(b0, 'Size2'), body.length);
    t.equal(b0.payload.toString(), body.slice(0, 64));
    const etag = optBytes(b0, 'ETag');
    t.ok(etag && etag.length > 0, 'an ETag');
    const b1 = await raw.answer(raw.get(path, q('obs-1'), { block2: (1 << 4) | 2 }));
    t.equal(b1.payload.toString(), body.slice(64, 128));
    t.same(optBytes(b1, 'ETag'), etag, 'the same representation');
    // The retained message changes during the transfer: the blocks still come from what was sent first.
    await pub.publishAsync('devices/obs-1/big', pattern(5_000, 'S'), { qos: 1, retain: true });
    const b2 = await raw.answer(raw.get(path, q('obs-1'), { block2: (2 << 4) | 2 }));
    t.equal(b2.payload.toString(), body.slice(128, 192));
    t.same(optBytes(b2, 'ETag'), etag);
    const again = await raw.answer(raw.get(path, q('obs-1'), { block2: 2 }));
    t.notSame(optBytes(again, 'ETag'), etag, 'a new transfer of the changed message: another ETag');
    t.equal(opt(again, 'Size2'), 5_000);
    t.match(await raw.answer(raw.get(path, q('obs-1'), { block2: (100 << 4) | 6 })), { code: '4.02' }, 'a block past the end');
    t.match(await raw.answer(raw.get(path, q('obs-1'), { block2: 7 })), { code: '4.00' }, 'the reserved SZX 7');
  });

  await t.test("node-coap's client observes, also a notification larger than a block", async (t) => {
    // The agent closes its socket by itself once nothing is outstanding.
    const agent = new coap.Agent({ type: 'udp4' });
    const req = coap.request({
      hostname: '127.0.0.1',
      port,
      pathname: '/ps/devices/obs-1/node',
      query: qs('obs-1'),
      observe: true,
      agent,
    });
    const chunks: string[] = [];
    const stream = await new Promise<ObserveReadStream>((resolve, reject) => {
      req.on('response', (res: ObserveReadStream) => resolve(res));
      req.on('error', reject);
      req.end();
    });
    t.equal(stream.code, '2.05');
    stream.on('data', (d: Buffer) => chunks.push(d.toString()));
    await pub.publishAsync('devices/obs-1/node', 'hello node', { qos: 1 });
    await eventually('the notification at node-coap', () => chunks.includes('hello node'));
    const big = pattern(2_500, 'N');
    await pub.publishAsync('devices/obs-1/node', big, { qos: 1 });
    await eventually('the large notification whole', () => chunks.includes(big));
    t.same(chunks.slice(-2), ['hello node', big], 'both notifications, the large one whole');
    // Not close(true): node-coap closes its socket before it sends the GET with Observe 1.
    stream.close();
  });

  await t.test('registry changes: narrowed filters end an observation with 4.03, removal with 4.01', async (t) => {
    const narrow = await Raw.open(t, port);
    const shared = randomBytes(4);
    const own = randomBytes(4);
    await narrow.answer(narrow.get('ps/shared/#', q('narrow-1'), { token: shared, observe: 0 }));
    await narrow.answer(narrow.get('ps/devices/narrow-1/#', q('narrow-1'), { token: own, observe: 0 }));
    const gone = await Raw.open(t, port);
    const goneToken = randomBytes(4);
    await gone.answer(gone.get('ps/devices/gone-1/cmd', q('gone-1'), { token: goneToken, observe: 0 }));
    await pub.publishAsync('shared/x', 'before', { qos: 0 });
    await eventually('shared/x observed', () => narrow.distinct(shared).length === 1);
    const revoked0 = await observeMetric('revoked');

    writeRegistry(
      devicesFile,
      specs.map((s) => ({ ...s, token: tokens[s.id]!, ...(s.id === 'narrow-1' ? { subscribe: ['devices/narrow-1/#'] } : {}) })),
    );
    await eventually('the 4.03', () => narrow.distinct(shared).length === 2);
    const end = narrow.distinct(shared)[1]!;
    t.match(end, { code: '4.03', confirmable: true });
    t.equal(opt(end, 'Observe'), null, 'no Observe: the observation ended (RFC 7641 §3.2)');
    t.ok(end.payload.length > 0, 'with a diagnostic');
    narrow.empty('ack', end.messageId);
    await pub.publishAsync('shared/y', 'after', { qos: 0 });
    await pub.publishAsync('devices/narrow-1/z', 'still', { qos: 0 });
    await eventually('the observation inside the filters goes on', () => narrow.distinct(own).length === 1);
    t.equal(narrow.distinct(own)[0]!.payload.toString().includes('"still"'), true);
    await sleep(300);
    t.equal(narrow.distinct(shared).length, 2, 'nothing after the 4.03');

    writeRegistry(
      devicesFile,
      specs
        .filter((s) => s.id !== 'gone-1')
        .map((s) => ({ ...s, token: tokens[s.id]!, ...(s.id === 'narrow-1' ? { subscribe: ['devices/narrow-1/#'] } : {}) })),
    );
    await eventually('the 4.01', () => gone.distinct(goneToken).length === 1);
    const removed = gone.distinct(goneToken)[0]!;
    t.match(removed, { code: '4.01', confirmable: true });
    t.equal(opt(removed, 'Observe'), null);
    gone.empty('ack', removed.messageId);
    t.equal(await observeMetric('revoked'), revoked0 + 2);
    await pub.publishAsync('devices/gone-1/cmd', 'too late', { qos: 1 });
    await sleep(300);
    t.equal(gone.distinct(goneToken).length, 1, 'nothing after the 4.01');
  });

  await t.test('an observer that never acknowledges is dropped after MAX_RETRANSMIT retransmissions', async (t) => {
    const first = silent.notifications(silentToken)[0]!;
    t.comment(`waiting up to ${Math.round((first.at + 100_000 - Date.now()) / 1000)} s for the back-off to end`);
    // Other observers of this file that left a notification unacknowledged are dropped too, on their
    // own schedules: every rise of the count is noted with its time, and this one's is looked for
    // where its back-off puts it.
    const rises: number[] = [];
    let seen = unacked0;
    const note = async (): Promise<void> => {
      const now = await observeMetric('unacknowledged');
      for (; seen < now; seen++) rises.push(Date.now());
    };
    await eventually(
      'the last retransmission',
      async () => {
        await note();
        return silent.notifications(silentToken).length >= 5;
      },
      Math.max(first.at + 60_000 - Date.now(), 1_000),
    );
    const sent = silent.notifications(silentToken);
    const gaps = sent.slice(1).map((s, i) => s.at - sent[i]!.at);
    // After the 4th retransmission the timeout doubles once more (about twice the last gap).
    const dueBy = sent[4]!.at + 1.9 * gaps[3]!;
    await eventually(
      'dropped',
      async () => {
        await note();
        return rises.some((at) => at >= dueBy);
      },
      Math.max(sent[4]!.at + 3 * gaps[3]! - Date.now(), 1_000),
    );
    t.equal(sent.length, 5, 'the notification and its 4 retransmissions');
    t.ok(
      sent.every((s) => s.packet.messageId === first.packet.messageId),
      'all the same message',
    );
    t.ok(gaps[0]! >= 1_900 && gaps[0]! <= 3_300, `the first timeout is ACK_TIMEOUT × [1, 1.5]: ${gaps[0]} ms`);
    for (let i = 1; i < gaps.length; i++) t.ok(Math.abs(gaps[i]! / gaps[i - 1]! - 2) < 0.2, `then it doubles: ${gaps.join(', ')} ms`);
    t.ok(
      rises.some((at) => at >= dueBy),
      'dropped once the last retransmission timed out too (twice the last gap)',
    );
    await pub.publishAsync('devices/obs-1/silent/x', 'after the end', { qos: 1 });
    await sleep(500);
    t.equal(silent.notifications(silentToken).length, 5, 'nothing more to the dropped observer');
  });

  await t.test('stop: every observation ends with a 5.03, then nothing', async (t) => {
    const raw = await Raw.open(t, port);
    const token = randomBytes(4);
    await raw.answer(raw.get('ps/devices/obs-1/#', q('obs-1'), { token, observe: 0 }));
    t.equal(await proxy.stop(), 0);
    await eventually('the 5.03', () => raw.distinct(token).some((p) => p.code === '5.03'), 2_000);
    await sleep(200);
    const ended = raw.distinct(token).at(-1);
    t.match(ended, { code: '5.03' });
    t.equal(opt(ended!, 'Observe'), null);
    t.ok((opt(ended!, 'Max-Age') ?? 0) > 0, 'Max-Age: when to register again');
  });
});
