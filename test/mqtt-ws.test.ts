// MQTT over WebSocket (GET /mqtt, subprotocol mqtt) end to end: the built proxy as a real process,
// a real Mosquitto as the cloud, MQTT.js over ws:// and raw WebSocket connections (ws and
// mqtt-packet) for what well-behaved clients never send, beside MQTT.js over TCP on the same proxy:
// one broker. One proxy in open mode (features, framing, metrics, stop) and one in token mode (auth).
import t from 'tap';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import mqttPacket, { type Packet } from 'mqtt-packet';
import { WebSocket } from 'ws';
import { cloudFor } from './helpers/mosquitto.js';
import { startProxy, type ProxyProcess } from './helpers/proxy.js';
import { collect, connectClient, connectOutcome, type Collected } from './helpers/clients.js';
import { connectPacket } from './helpers/raw.js';
import { eventually, sleep } from './helpers/ports.js';
import { writeRegistry, type DeviceSpec } from './helpers/registry.js';
import { makeToken } from '../src/auth/token.js';

const LIMIT = 1024;

interface Envelope {
  id: string;
  topic: string;
  deviceId: string;
  contentType: string;
  payload: unknown;
  edge: string;
}

/** A raw MQTT 3.1.1 connection over /mqtt. */
interface RawWs {
  ws: WebSocket;
  packets: Packet[];
  /** the close code and reason the proxy sent (1006: the connection ended without a close frame) */
  closed: Promise<{ code: number; reason: string }>;
  /** the packets in one WebSocket message */
  send(...packets: Array<Record<string, unknown>>): void;
  sendBytes(bytes: Buffer | string): void;
  next(cmd: string, timeoutMs?: number): Promise<Packet>;
}

function rawWs(port: number, opts: { query?: string; headers?: Record<string, string> } = {}): Promise<RawWs> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/mqtt${opts.query ?? ''}`, 'mqtt', { headers: opts.headers ?? {} });
  const parser = mqttPacket.parser({ protocolVersion: 4 });
  const packets: Packet[] = [];
  parser.on('packet', (p) => packets.push(p));
  ws.on('message', (data: Buffer) => parser.parse(data));
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })),
  );
  let seen = 0;
  const raw: RawWs = {
    ws,
    packets,
    closed,
    send(...list) {
      ws.send(Buffer.concat(list.map((p) => mqttPacket.generate(p as unknown as Packet, { protocolVersion: 4 }))));
    },
    sendBytes(bytes) {
      ws.send(bytes);
    },
    async next(cmd, timeoutMs = 5_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        while (seen < packets.length) {
          const p = packets[seen++]!;
          if (p.cmd === cmd) return p;
        }
        if (ws.readyState === WebSocket.CLOSED || Date.now() > deadline) throw new Error(`no ${cmd} packet (state ${ws.readyState})`);
        await sleep(20);
      }
    },
  };
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve(raw));
    ws.once('error', reject);
  });
}

/** How the endpoint answers an upgrade: 101 when the WebSocket opened, else the HTTP status and body. */
function upgrade(
  port: number,
  path: string,
  protocols: string[],
  headers: Record<string, string> = {},
): Promise<{ status: number; body: string }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}${path}`, protocols, { headers });
    ws.once('open', () => {
      resolve({ status: 101, body: '' });
      ws.terminate();
    });
    ws.once('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    ws.once('error', (err) => resolve({ status: -1, body: err.message }));
  });
}

function wsUrl(proxy: ProxyProcess, query = ''): string {
  return `ws://127.0.0.1:${proxy.ports.http}/mqtt${query}`;
}

function connectWs(proxy: ProxyProcess, opts: IClientOptions = {}, query = ''): Promise<MqttClient> {
  return mqtt.connectAsync(wsUrl(proxy, query), { reconnectPeriod: 0, connectTimeout: 5_000, ...opts });
}

function bearer(token: string): IClientOptions {
  return { wsOptions: { headers: { authorization: `Bearer ${token}` } } };
}

function closedWithin(client: MqttClient, ms: number): Promise<boolean> {
  if (!client.connected) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    client.once('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

function within<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  return Promise.race([p, sleep(ms).then(() => 'timeout' as const)]);
}

/** The cloud's view of one proxy. */
function cloudView(up: Collected) {
  const envelopes = (): Envelope[] =>
    up.messages.filter((m) => m.topic.startsWith('edge/test-edge/up/')).map((m) => JSON.parse(m.payload.toString()) as Envelope);
  return {
    envelopes,
    atCloud: (topic: string): Envelope[] => envelopes().filter((e) => e.topic === topic),
    arrived: async (topic: string): Promise<Envelope> =>
      (await eventually(`${topic} at the cloud`, () => envelopes().find((e) => e.topic === topic)))!,
  };
}

/** Messages with this topic and payload a collector got. */
function count(got: Collected, topic: string, payload: string): number {
  return got.messages.filter((m) => m.topic === topic && m.payload.toString() === payload).length;
}

/** A device that keeps publishing QoS 1; whatever others do, its messages keep flowing. */
function steady(client: MqttClient, id: string): { sent: () => number; closes: () => number; stop: () => Promise<void> } {
  let n = 0;
  let running = true;
  let closes = 0;
  client.on('close', () => closes++);
  const loop = (async () => {
    while (running) {
      await client.publishAsync(`devices/${id}/telemetry`, JSON.stringify({ seq: ++n }), { qos: 1 });
      await sleep(20);
    }
  })();
  return {
    sent: () => n,
    closes: () => closes,
    stop: async () => {
      running = false;
      await loop;
    },
  };
}

const PROTOCOL_RULE = `
# what protocol a message came in by, as rules read it
rule proto
when msg.topic matches "devices/+/proto"
then uplink(topic = "proto/" + msg.protocol + "/" + msg.deviceId)
end
`;

t.test('MQTT over WebSocket in open mode: the same broker as MQTT over TCP', async (t) => {
  const dir = t.testdir();
  const { url: cloudUrl, up } = await cloudFor(t, dir);
  mkdirSync(join(dir, 'rules'), { recursive: true });
  writeFileSync(join(dir, 'rules', 'proto.rules'), PROTOCOL_RULE);
  const proxy = await startProxy(dir, { uplink: { url: cloudUrl }, limits: { maxPayloadBytes: LIMIT } });
  t.teardown(() => proxy.stop());
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);
  const cloud = cloudView(up);
  t.ok(proxy.ports.http > 0, `the ports file names the http endpoint (${proxy.ports.http})`);

  await t.test('a QoS 1 publish is acknowledged and reaches the cloud as an envelope of that device, protocol mqtt', async (t) => {
    const dev = await connectWs(proxy, { clientId: 'ws-dev-1' });
    t.teardown(() => dev.endAsync(true));
    const ack = await dev.publishAsync('devices/ws-dev-1/telemetry', '{"t":21.5}', { qos: 1 });
    t.match(ack, { cmd: 'publish', qos: 1 }, 'publishAsync resolved: the PUBACK came');
    t.match(await cloud.arrived('devices/ws-dev-1/telemetry'), {
      deviceId: 'ws-dev-1',
      contentType: 'json',
      payload: { t: 21.5 },
      edge: 'test-edge',
    });
    await dev.publishAsync('devices/ws-dev-1/proto', 'which', { qos: 1 });
    t.ok(await cloud.arrived('proto/mqtt/ws-dev-1'), 'rules read msg.protocol = "mqtt"');
  });

  await t.test(
    'one broker: a cloud downlink and a TCP device reach a /mqtt subscriber, a /mqtt device a TCP subscriber, each once',
    async (t) => {
      const wsSub = await connectWs(proxy, { clientId: 'ws-sub' });
      t.teardown(() => wsSub.endAsync(true));
      const wsGot = await collect(wsSub, 'devices/#');
      const tcpSub = await connectClient(proxy.ports.mqtt, { clientId: 'tcp-sub' });
      t.teardown(() => tcpSub.endAsync(true));
      const tcpGot = await collect(tcpSub, 'devices/#');

      const commander = await mqtt.connectAsync(cloudUrl, { reconnectPeriod: 0 });
      t.teardown(() => commander.endAsync(true));
      await commander.publishAsync('edge/test-edge/down/devices/ws-sub/cmd', 'fan on', { qos: 1 });
      const tcpDev = await connectClient(proxy.ports.mqtt, { clientId: 'tcp-dev' });
      t.teardown(() => tcpDev.endAsync(true));
      await tcpDev.publishAsync('devices/tcp-dev/state', 'from tcp', { qos: 1 });
      const wsDev = await connectWs(proxy, { clientId: 'ws-dev-2' });
      t.teardown(() => wsDev.endAsync(true));
      await wsDev.publishAsync('devices/ws-dev-2/state', 'from ws', { qos: 1 });

      const expected: Array<[string, string]> = [
        ['devices/ws-sub/cmd', 'fan on'],
        ['devices/tcp-dev/state', 'from tcp'],
        ['devices/ws-dev-2/state', 'from ws'],
      ];
      await eventually('every message at both subscribers', () =>
        expected.every(([topic, payload]) => count(wsGot, topic, payload) > 0 && count(tcpGot, topic, payload) > 0),
      );
      await sleep(300);
      for (const [topic, payload] of expected) {
        t.equal(count(wsGot, topic, payload), 1, `the /mqtt subscriber got ${topic} once`);
        t.equal(count(tcpGot, topic, payload), 1, `the TCP subscriber got ${topic} once`);
      }
      t.equal(cloud.atCloud('devices/ws-dev-2/state').length, 1, 'the /mqtt device message went up once');
    },
  );

  await t.test(
    'QoS 2 both ways, and a resend of a QoS 2 publish still in flight, in the same WebSocket message, is taken once',
    async (t) => {
      const sub = await connectWs(proxy, { clientId: 'ws-q2-sub' });
      t.teardown(() => sub.endAsync(true));
      const got: Array<{ topic: string; qos: number }> = [];
      sub.on('message', (topic, _p, packet) => got.push({ topic, qos: packet.qos }));
      await sub.subscribeAsync('devices/+/q2', { qos: 2 });

      const dev = await connectWs(proxy, { clientId: 'ws-q2' });
      t.teardown(() => dev.endAsync(true));
      t.match(await dev.publishAsync('devices/ws-q2/q2', 'exactly once', { qos: 2 }), { qos: 2 }, 'PUBREC, PUBREL, PUBCOMP done');
      const tcp = await connectClient(proxy.ports.mqtt, { clientId: 'tcp-q2' });
      t.teardown(() => tcp.endAsync(true));
      await tcp.publishAsync('devices/tcp-q2/q2', 'from tcp', { qos: 2 });
      await eventually('both delivered', () => got.length >= 2);
      t.same(
        got.sort((a, b) => a.topic.localeCompare(b.topic)),
        [
          { topic: 'devices/tcp-q2/q2', qos: 2 },
          { topic: 'devices/ws-q2/q2', qos: 2 },
        ],
        'the /mqtt subscriber got both at QoS 2',
      );

      const raw = await rawWs(proxy.ports.http);
      t.teardown(() => raw.ws.terminate());
      raw.send(connectPacket('ws-q2-raw'));
      await raw.next('connack');
      const publish = { cmd: 'publish', topic: 'devices/ws-q2-raw/event', payload: Buffer.from('{"n":1}'), qos: 2, messageId: 7 };
      raw.send(publish, { ...publish, dup: true });
      t.match(await raw.next('pubrec'), { messageId: 7 });
      t.match(await raw.next('pubrec'), { messageId: 7 }, 'the resend is answered too');
      raw.send({ cmd: 'pubrel', messageId: 7 });
      t.match(await raw.next('pubcomp'), { messageId: 7 });
      await cloud.arrived('devices/ws-q2-raw/event');
      await cloud.arrived('devices/ws-q2/q2');
      await sleep(300);
      t.equal(cloud.atCloud('devices/ws-q2-raw/event').length, 1, 'sent up once');
      t.equal(cloud.atCloud('devices/ws-q2/q2').length, 1, 'the MQTT.js QoS 2 message sent up once');
    },
  );

  await t.test('a retained message published over /mqtt reaches later subscribers of both transports with the retain flag', async (t) => {
    const dev = await connectWs(proxy, { clientId: 'ws-ret' });
    t.teardown(() => dev.endAsync(true));
    await dev.publishAsync('devices/ws-ret/state', 'on', { qos: 1, retain: true });
    await cloud.arrived('devices/ws-ret/state');
    const tcpLater = await connectClient(proxy.ports.mqtt, { clientId: 'tcp-later' });
    t.teardown(() => tcpLater.endAsync(true));
    const tcpGot = await collect(tcpLater, 'devices/ws-ret/#');
    const wsLater = await connectWs(proxy, { clientId: 'ws-later' });
    t.teardown(() => wsLater.endAsync(true));
    const wsGot = await collect(wsLater, 'devices/ws-ret/#');
    await eventually('both got it', () => tcpGot.messages.length > 0 && wsGot.messages.length > 0);
    t.match(tcpGot.messages, [{ topic: 'devices/ws-ret/state', retain: true }]);
    t.match(wsGot.messages, [{ topic: 'devices/ws-ret/state', retain: true }]);
    t.equal(wsGot.messages[0]!.payload.toString(), 'on');
  });

  await t.test('a will is published when a /mqtt connection drops without DISCONNECT, and not after one', async (t) => {
    const watcher = await connectClient(proxy.ports.mqtt, { clientId: 'will-watcher' });
    t.teardown(() => watcher.endAsync(true));
    const got = await collect(watcher, 'devices/ws-will/#');
    const will = (topic: string) => ({ will: { topic, payload: Buffer.from('gone'), qos: 1, retain: false } });

    const polite = await rawWs(proxy.ports.http);
    polite.send(connectPacket('ws-will-polite', will('devices/ws-will/polite')));
    await polite.next('connack');
    // DISCONNECT and the close right after it: the packet is read before the end of the stream.
    polite.send({ cmd: 'disconnect' });
    polite.ws.close(1000);
    await polite.closed;

    const abrupt = await rawWs(proxy.ports.http);
    abrupt.send(connectPacket('ws-will-abrupt', will('devices/ws-will/abrupt')));
    await abrupt.next('connack');
    abrupt.ws.terminate(); // no DISCONNECT, no close frame: the TCP connection just ends
    await eventually('the will at the TCP watcher', () => count(got, 'devices/ws-will/abrupt', 'gone') > 0);
    t.match(await cloud.arrived('devices/ws-will/abrupt'), { deviceId: 'ws-will-abrupt', payload: 'gone' }, 'and at the cloud');
    await sleep(500);
    t.equal(count(got, 'devices/ws-will/abrupt', 'gone'), 1, 'once');
    t.equal(count(got, 'devices/ws-will/polite', 'gone'), 0, 'no will after a DISCONNECT');
  });

  await t.test('a persistent session made over TCP is resumed over /mqtt, with what was queued for it', async (t) => {
    const first = await connectClient(proxy.ports.mqtt, { clientId: 'roamer', clean: false });
    await first.subscribeAsync('devices/roamer/cmd', { qos: 1 });
    await first.endAsync();
    const commander = await connectClient(proxy.ports.mqtt, { clientId: 'commander' });
    t.teardown(() => commander.endAsync(true));
    await commander.publishAsync('devices/roamer/cmd', 'queued while away', { qos: 1 });

    const again = mqtt.connect(wsUrl(proxy), { clientId: 'roamer', clean: false, reconnectPeriod: 0 });
    t.teardown(() => again.end(true));
    const got: string[] = [];
    again.on('message', (_topic, payload) => got.push(payload.toString()));
    const connack = await new Promise<{ sessionPresent: boolean }>((resolve, reject) => {
      again.once('connect', resolve);
      again.once('error', reject);
    });
    t.equal(connack.sessionPresent, true, 'CONNACK says the session is there');
    await eventually('the queued message', () => got.length > 0);
    t.same(got, ['queued while away']);
  });

  await t.test('oversized, text and malformed input closes only that connection; everything else keeps flowing', async (t) => {
    const tooLarge = (): Promise<number> => proxy.metric('edge_messages_refused_total', 'reason="too_large"');
    const malformed = (): Promise<number> => proxy.metric('edge_messages_refused_total', 'reason="malformed"');
    const [largeBefore, malformedBefore] = [await tooLarge(), await malformed()];
    const steadyWsClient = await connectWs(proxy, { clientId: 'steady-ws' });
    const steadyTcpClient = await connectClient(proxy.ports.mqtt, { clientId: 'steady-tcp' });
    t.teardown(() => steadyWsClient.endAsync(true));
    t.teardown(() => steadyTcpClient.endAsync(true));
    const steadyWs = steady(steadyWsClient, 'steady-ws');
    const steadyTcp = steady(steadyTcpClient, 'steady-tcp');

    const atLimit = await connectWs(proxy, { clientId: 'ws-at-limit' });
    await atLimit.publishAsync('devices/ws-at-limit/blob', Buffer.alloc(LIMIT, 1), { qos: 1 });
    await atLimit.endAsync();
    await cloud.arrived('devices/ws-at-limit/blob');

    // One byte over: the gate refuses it from the payload, MQTT.js never gets a PUBACK.
    const over = await connectWs(proxy, { clientId: 'ws-over' });
    over.on('error', () => {});
    let acked = false;
    over.publish('devices/ws-over/blob', Buffer.alloc(LIMIT + 1, 2), { qos: 1 }, (err) => {
      if (!err) acked = true;
    });
    t.ok(await closedWithin(over, 5_000), 'a payload one byte over the limit closes the connection');
    t.notOk(acked, 'and is not acknowledged');
    over.end(true);

    // A PUBLISH header that announces 2 MiB: refused by the frame guard from the header.
    const huge = await rawWs(proxy.ports.http);
    huge.send(connectPacket('ws-huge'));
    await huge.next('connack');
    huge.sendBytes(Buffer.from([0x32, 0x80, 0x80, 0x80, 0x01]));
    t.match(await within(huge.closed, 5_000), { code: 1009 }, 'closed with 1009 after the header of a 2 MiB PUBLISH');

    // A WebSocket message over the per-connection cap (two packets of the largest size): refused by
    // ws from the frame header. Its content is 2000 valid PINGREQs, so only the cap refuses it.
    const flood = await rawWs(proxy.ports.http);
    flood.send(connectPacket('ws-flood'));
    await flood.next('connack');
    flood.sendBytes(Buffer.alloc(4000).fill(Buffer.from([0xc0, 0x00])));
    t.match(await within(flood.closed, 5_000), { code: 1009 }, 'a 4000-byte WebSocket message is refused with 1009');
    t.notOk(
      flood.packets.some((p) => p.cmd === 'pingresp'),
      'none of its packets was read',
    );

    // [MQTT-6.0.0-1]: MQTT travels in binary frames.
    const text = await rawWs(proxy.ports.http);
    text.send(connectPacket('ws-text'));
    await text.next('connack');
    text.sendBytes('\u00c0\u0000');
    t.match(await within(text.closed, 5_000), { code: 1003 }, 'a text frame closes the connection with 1003');

    const garbled = await rawWs(proxy.ports.http);
    garbled.send(connectPacket('ws-garbler'));
    await garbled.next('connack');
    garbled.sendBytes(Buffer.from([0x36, 0x05, 0x00, 0x01, 0x61, 0x00, 0x01])); // PUBLISH with QoS 3
    t.match(await within(garbled.closed, 5_000), { code: 1002 }, 'a malformed packet closes the connection with 1002');

    const [wsBefore, tcpBefore] = [steadyWs.sent(), steadyTcp.sent()];
    await eventually('the steady devices keep publishing', () => steadyWs.sent() > wsBefore + 10 && steadyTcp.sent() > tcpBefore + 10);
    await steadyWs.stop();
    await steadyTcp.stop();
    t.equal(steadyWs.closes() + steadyTcp.closes(), 0, 'neither steady device was disconnected');
    await eventually(
      'all their messages at the cloud',
      () =>
        cloud.envelopes().filter((e) => e.topic === 'devices/steady-ws/telemetry').length === steadyWs.sent() &&
        cloud.envelopes().filter((e) => e.topic === 'devices/steady-tcp/telemetry').length === steadyTcp.sent(),
    );
    t.notOk(
      cloud.envelopes().some((e) => /ws-(over|huge|flood|text|garbler)/.test(e.topic)),
      'nothing of the refused connections went up',
    );
    t.equal((await tooLarge()) - largeBefore, 3, 'edge_messages_refused_total{reason="too_large"} +3');
    t.equal((await malformed()) - malformedBefore, 2, 'edge_messages_refused_total{reason="malformed"} +2');
    const lines = proxy.logs.filter((l) => l.transport === 'ws' && (l.reason === 'too_large' || l.reason === 'malformed'));
    t.same(
      lines.map((l) => [l.clientId, l.reason]),
      [
        ['ws-over', 'too_large'],
        ['ws-huge', 'too_large'],
        ['ws-flood', 'too_large'],
        ['ws-text', 'malformed'],
        ['ws-garbler', 'malformed'],
      ],
      'one log line per refused connection, naming it',
    );
  });

  await t.test('the subprotocol must be mqtt (400) and the path /mqtt (404)', async (t) => {
    const port = proxy.ports.http;
    t.equal((await upgrade(port, '/mqtt', ['mqtt'])).status, 101, 'mqtt: the WebSocket opens');
    const wrong = await upgrade(port, '/mqtt', ['chat']);
    t.equal(wrong.status, 400, 'another subprotocol: 400');
    t.match(wrong.body, /subprotocol mqtt/);
    t.equal((await upgrade(port, '/mqtt', ['mqttv3.1'])).status, 400, 'mqttv3.1: 400');
    t.equal((await upgrade(port, '/mqtt', [])).status, 400, 'no subprotocol: 400');
    t.equal((await upgrade(port, '/mqtt/x', ['mqtt'])).status, 404, 'another path: 404');
    t.equal((await upgrade(port, '/', ['mqtt'])).status, 404, '/: 404');
  });

  await t.test('edge_connections{protocol="mqtt",transport="ws"} goes up and down; the tcp one does not move', async (t) => {
    const ws = (): Promise<number> => proxy.metric('edge_connections', 'protocol="mqtt",transport="ws"');
    const tcp = (): Promise<number> => proxy.metric('edge_connections', 'protocol="mqtt",transport="tcp"');
    await sleep(300); // the closes of earlier cells are counted
    const [wsBase, tcpBase] = [await ws(), await tcp()];
    const a = await connectWs(proxy, { clientId: 'gauge-a' });
    const b = await rawWs(proxy.ports.http);
    b.send(connectPacket('gauge-b'));
    await b.next('connack');
    t.equal(await ws(), wsBase + 2, 'two /mqtt connections: +2');
    t.equal(await tcp(), tcpBase, 'the tcp gauge did not move');
    await a.endAsync();
    await eventually('-1 after a DISCONNECT', async () => (await ws()) === wsBase + 1);
    b.ws.terminate();
    await eventually('-1 after a dropped connection', async () => (await ws()) === wsBase);
    t.pass('back to where it was');
  });

  await t.test('stopping the proxy closes /mqtt connections with 1001 and exits 0', async (t) => {
    const raw = await rawWs(proxy.ports.http);
    raw.send(connectPacket('ws-to-stop'));
    await raw.next('connack');
    const client = await connectWs(proxy, { clientId: 'ws-to-stop-2' });
    t.equal(await proxy.stop(), 0, 'exit code 0');
    t.match(await within(raw.closed, 3_000), { code: 1001 }, 'close code 1001, going away');
    t.ok(await closedWithin(client, 3_000), 'the MQTT.js client was closed');
    client.end(true);
  });
});

t.test('MQTT over WebSocket in token mode: the token at the upgrade, or CONNECT as on TCP', async (t) => {
  const dir = t.testdir();
  const { url: cloudUrl, up } = await cloudFor(t, dir);
  const file = join(dir, 'devices.yaml');
  let specs: DeviceSpec[] = ['ws-a', 'ws-b', 'ws-c', 'ws-d', 'ws-e'].map((id) => ({ id }));
  const tokens = writeRegistry(file, specs);
  const proxy = await startProxy(dir, { uplink: { url: cloudUrl }, auth: { mode: 'token' }, devicesFile: file });
  t.teardown(() => proxy.stop());
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);
  const cloud = cloudView(up);
  const failures = (reason: string): Promise<number> => proxy.metric('edge_auth_failures_total', `protocol="mqtt",reason="${reason}"`);
  const refusedUpgrades = (): Promise<number> => proxy.metric('edge_ws_upgrades_refused_total', 'reason="auth"');
  const token = (id: string): string => tokens[id]!;

  await t.test('a token in the Authorization header: the connection is its device, CONNECT needs no credentials', async (t) => {
    const c = await connectWs(proxy, { clientId: 'a-header', ...bearer(token('ws-a')) });
    t.teardown(() => c.endAsync(true));
    await c.publishAsync('devices/ws-a/hello', 'by header', { qos: 1 });
    t.match(await cloud.arrived('devices/ws-a/hello'), { deviceId: 'ws-a', payload: 'by header' });
    // MQTT.js rejects a SUBACK with a failure code, and carries the packet.
    const granted = await c.subscribeAsync({ 'devices/ws-a/#': { qos: 1 }, 'devices/ws-b/#': { qos: 1 } }).then(
      (grants) => grants.map((g) => g.qos),
      (err: Error & { packet?: { granted?: number[] } }) => err.packet?.granted,
    );
    t.same(granted, [1, 128], "its own filters apply: another device's topics are refused in the SUBACK");
  });

  await t.test('a token in the query: the same; a username naming the same device is fine, a CONNECT password is not read', async (t) => {
    const c = await connectWs(
      proxy,
      { clientId: 'a-query', username: 'ws-a', password: 'not-the-token' },
      `?token=${encodeURIComponent(token('ws-a'))}`,
    );
    t.teardown(() => c.endAsync(true));
    await c.publishAsync('devices/ws-a/query', 'by query', { qos: 1 });
    t.match(await cloud.arrived('devices/ws-a/query'), { deviceId: 'ws-a' });
  });

  await t.test(
    'a token at the upgrade and a username naming another device: CONNACK 4 (5 when not in the registry), counted',
    async (t) => {
      const [badBefore, unknownBefore] = [await failures('bad_token'), await failures('unknown_device')];
      const other = await connectOutcome(wsUrl(proxy), { clientId: 'a-as-b', username: 'ws-b', ...bearer(token('ws-a')) });
      t.match(other, { ok: false, returnCode: 4 }, "ws-a's token does not make it ws-b");
      const ghost = await connectOutcome(wsUrl(proxy), { clientId: 'a-as-ghost', username: 'ghost', ...bearer(token('ws-a')) });
      t.match(ghost, { ok: false, returnCode: 5 });
      t.equal((await failures('bad_token')) - badBefore, 1, 'edge_auth_failures_total{protocol="mqtt",reason="bad_token"} +1');
      t.equal(
        (await failures('unknown_device')) - unknownBefore,
        1,
        'edge_auth_failures_total{protocol="mqtt",reason="unknown_device"} +1',
      );
    },
  );

  await t.test('a wrong token at the upgrade gets 401, in the header or the query, counted under protocol mqtt', async (t) => {
    const port = proxy.ports.http;
    const [badBefore, unknownBefore, upgradesBefore] = [
      await failures('bad_token'),
      await failures('unknown_device'),
      await refusedUpgrades(),
    ];
    const gauge = await proxy.metric('edge_connections', 'protocol="mqtt",transport="ws"');
    const wrong = makeToken('ws-a');
    const header = await upgrade(port, '/mqtt', ['mqtt'], { authorization: `Bearer ${wrong}` });
    t.equal(header.status, 401, 'header: 401');
    t.match(header.body, /does not match/);
    t.equal((await upgrade(port, `/mqtt?token=${encodeURIComponent(wrong)}`, ['mqtt'])).status, 401, 'query: 401');
    t.equal((await upgrade(port, `/mqtt?token=${encodeURIComponent(makeToken('ghost'))}`, ['mqtt'])).status, 401, 'unknown device: 401');
    const refused = await connectOutcome(wsUrl(proxy, `?token=${encodeURIComponent(wrong)}`), { clientId: 'mqttjs-wrong' });
    t.match(refused, { ok: false, returnCode: null }, 'MQTT.js gets no CONNACK');
    t.equal((await failures('bad_token')) - badBefore, 3, 'edge_auth_failures_total{protocol="mqtt",reason="bad_token"} +3');
    t.equal((await failures('unknown_device')) - unknownBefore, 1, '{reason="unknown_device"} +1');
    t.equal((await refusedUpgrades()) - upgradesBefore, 4, 'edge_ws_upgrades_refused_total{reason="auth"} +4');
    t.equal(await proxy.metric('edge_connections', 'protocol="mqtt",transport="ws"'), gauge, 'no connection was made');
    t.equal(
      (await upgrade(port, '/mqtt', ['mqtt'], { authorization: 'Basic d3MtYTp4' })).status,
      101,
      'another Authorization scheme is not a token: the upgrade goes on and CONNECT decides',
    );
  });

  await t.test('no token at the upgrade: CONNECT decides as on TCP (0, 4, 5)', async (t) => {
    const good = await connectWs(proxy, { clientId: 'b-connect', username: 'ws-b', password: token('ws-b') });
    t.teardown(() => good.endAsync(true));
    await good.publishAsync('devices/ws-b/hello', 'by connect', { qos: 1 });
    t.match(await cloud.arrived('devices/ws-b/hello'), { deviceId: 'ws-b' });
    const [badBefore, unknownBefore] = [await failures('bad_token'), await failures('unknown_device')];
    t.match(await connectOutcome(wsUrl(proxy), { username: 'ws-b', password: 'wrong' }), { ok: false, returnCode: 4 }, 'bad password: 4');
    t.match(await connectOutcome(wsUrl(proxy), { username: 'ghost', password: 'x' }), { ok: false, returnCode: 5 }, 'unknown: 5');
    t.match(await connectOutcome(wsUrl(proxy), { clientId: 'nobody' }), { ok: false, returnCode: 5 }, 'no credentials: 5');
    t.equal((await failures('bad_token')) - badBefore, 1);
    t.equal((await failures('unknown_device')) - unknownBefore, 2);
  });

  await t.test('a publish outside its filters closes the connection (1008), without a PUBACK; nothing goes up', async (t) => {
    const aclBefore = await failures('acl');
    const raw = await rawWs(proxy.ports.http, { query: `?token=${encodeURIComponent(token('ws-a'))}` });
    raw.send(connectPacket('a-acl'));
    t.match(await raw.next('connack'), { returnCode: 0 });
    raw.send({ cmd: 'publish', topic: 'devices/ws-b/forged', payload: Buffer.from('not mine'), qos: 1, messageId: 3 });
    t.match(await within(raw.closed, 5_000), { code: 1008 });
    t.notOk(
      raw.packets.some((p) => p.cmd === 'puback'),
      'no PUBACK',
    );
    const c = await connectWs(proxy, { clientId: 'a-after', ...bearer(token('ws-a')) });
    t.teardown(() => c.endAsync(true));
    await c.publishAsync('devices/ws-a/after-acl', 'barrier', { qos: 1 });
    await cloud.arrived('devices/ws-a/after-acl');
    t.same(cloud.atCloud('devices/ws-b/forged'), [], 'nothing refused went up');
    t.equal((await failures('acl')) - aclBefore, 1, 'edge_auth_failures_total{protocol="mqtt",reason="acl"} +1');
  });

  await t.test('a device removed from the registry or given a new token while connected is disconnected (4401); others stay', async (t) => {
    const byToken = await rawWs(proxy.ports.http, { query: `?token=${encodeURIComponent(token('ws-c'))}` });
    byToken.send(connectPacket('c-token'));
    t.match(await byToken.next('connack'), { returnCode: 0 });
    const byConnect = await connectWs(proxy, { clientId: 'd-connect', username: 'ws-d', password: token('ws-d') });
    const rotated = await rawWs(proxy.ports.http, { headers: { authorization: `Bearer ${token('ws-e')}` } });
    rotated.send(connectPacket('e-token'));
    t.match(await rotated.next('connack'), { returnCode: 0 });
    const stays = await connectWs(proxy, { clientId: 'a-stays', ...bearer(token('ws-a')) });
    t.teardown(() => stays.endAsync(true));

    specs = specs.filter((s) => s.id !== 'ws-c' && s.id !== 'ws-d');
    writeRegistry(
      file,
      specs.map((s) => (s.id === 'ws-e' ? { id: s.id } : { ...s, token: token(s.id) })),
    );
    t.match(await within(byToken.closed, 5_000), { code: 4401 }, 'removed, connected with a token at the upgrade: 4401');
    t.ok(await closedWithin(byConnect, 5_000), 'removed, connected with CONNECT credentials: disconnected');
    byConnect.end(true);
    t.match(await within(rotated.closed, 5_000), { code: 4401 }, 'given a new token: 4401');
    t.ok(stays.connected, 'another device stays');
    await stays.publishAsync('devices/ws-a/still', 'here', { qos: 1 });
    await cloud.arrived('devices/ws-a/still');
    t.equal(
      (await upgrade(proxy.ports.http, `/mqtt?token=${encodeURIComponent(token('ws-c'))}`, ['mqtt'])).status,
      401,
      'the removed device cannot come back with its token',
    );
  });
});
