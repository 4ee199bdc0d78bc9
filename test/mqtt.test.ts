// The MQTT rules of the contract (docs/message-model.md, MQTT behaviour), against the built proxy with real and raw clients.
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { startMosquitto } from './helpers/mosquitto.js';
import { startProxy, type ProxyProcess } from './helpers/proxy.js';
import { connectClient, collect } from './helpers/clients.js';
import { connectPacket, rawClient } from './helpers/raw.js';
import { eventually, sleep } from './helpers/ports.js';
import type { MqttClient } from 'mqtt';

const LIMIT = 1024;

async function setup(
  t: Test,
  config: Record<string, unknown> = {},
): Promise<{ proxy: ProxyProcess; up: Awaited<ReturnType<typeof collect>>; cloudPort: number }> {
  const dir = t.testdir();
  const cloud = await startMosquitto(`${dir}/cloud`);
  t.teardown(() => cloud.stop());
  const checker = await connectClient(cloud.port);
  t.teardown(() => checker.endAsync());
  const up = await collect(checker, '#');
  const { uplink, ...rest } = config as { uplink?: Record<string, unknown> };
  const proxy = await startProxy(dir, { uplink: { url: cloud.url, ...uplink }, limits: { maxPayloadBytes: LIMIT }, ...rest });
  t.teardown(() => proxy.stop());
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);
  return { proxy, up, cloudPort: cloud.port };
}

/** A well-behaved device that keeps publishing; its messages must keep flowing whatever others do. */
async function steadyDevice(
  t: Test,
  port: number,
  id: string,
): Promise<{ client: MqttClient; sent: () => number; stop: () => Promise<void> }> {
  const client = await connectClient(port, { clientId: id });
  let n = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      await client.publishAsync(`devices/${id}/telemetry`, JSON.stringify({ seq: ++n }), { qos: 1 });
      await sleep(20);
    }
  })();
  const stop = async (): Promise<void> => {
    running = false;
    await loop;
    await client.endAsync();
  };
  t.teardown(() => {
    running = false;
  });
  return { client, sent: () => n, stop };
}

t.test('an oversized payload closes only that client, from the packet header; the limit itself is accepted', async (t) => {
  const { proxy, up } = await setup(t);
  const steady = await steadyDevice(t, proxy.ports.mqtt, 'steady-1');
  let disconnects = 0;
  steady.client.on('close', () => disconnects++);

  // Exactly at the limit: accepted and sent up.
  const atLimit = await connectClient(proxy.ports.mqtt, { clientId: 'at-limit' });
  await atLimit.publishAsync('devices/at-limit/blob', Buffer.alloc(LIMIT, 1), { qos: 1 });
  await atLimit.endAsync();

  // One byte over, with a short topic: the header alone does not prove it, the payload check does.
  const over = await rawClient(proxy.ports.mqtt);
  over.send(connectPacket('over-by-one'));
  await over.next('connack');
  over.send({ cmd: 'publish', topic: 'devices/over-by-one/blob', payload: Buffer.alloc(LIMIT + 1, 2), qos: 1, messageId: 1 });
  await over.closed;
  t.notOk(
    over.packets.some((p) => p.cmd === 'puback'),
    'no PUBACK for a payload one byte over the limit',
  );

  // Far over: the connection is closed after the fixed header, the payload is never sent in full.
  const huge = await rawClient(proxy.ports.mqtt);
  huge.send(connectPacket('huge-1'));
  await huge.next('connack');
  const header = Buffer.from([0x32, 0x80, 0x80, 0x80, 0x01]); // PUBLISH QoS 1, Remaining Length 2 MiB
  huge.write(header);
  await huge.closed;
  t.pass('the proxy closed the connection after the header of a 2 MiB PUBLISH');

  const before = steady.sent();
  await eventually('the steady device keeps publishing', () => steady.sent() > before + 10);
  await steady.stop();
  t.equal(disconnects, 1, 'the steady device was never disconnected (its one close is its own end)');
  await eventually(
    'its messages all at the cloud',
    () => up.messages.filter((m) => m.topic.endsWith('steady-1/telemetry')).length === steady.sent(),
  );
  await eventually('the at-limit message at the cloud', () => up.messages.some((m) => m.topic.endsWith('at-limit/blob')));
  t.notOk(
    up.messages.some((m) => m.topic.includes('over-by-one') || m.topic.includes('huge-1')),
    'nothing of the refused clients went up',
  );
  t.equal(await proxy.metric('edge_messages_refused_total', 'reason="too_large"'), 2);
  const refusals = proxy.logs.filter((l) => l.reason === 'too_large');
  t.equal(refusals.length, 2, 'one log line per refused client');
  t.match(
    refusals.map((l) => l.clientId),
    ['over-by-one', 'huge-1'],
  );
  t.match(String(refusals[0]!.msg), /exceeds the limit of 1024/);
});

t.test('a malformed packet closes only that client, with a log line naming it', async (t) => {
  const { proxy, up } = await setup(t);
  const steady = await steadyDevice(t, proxy.ports.mqtt, 'steady-2');
  const bad = await rawClient(proxy.ports.mqtt);
  bad.send(connectPacket('garbler'));
  await bad.next('connack');
  bad.write(Buffer.from([0x36, 0x05, 0x00, 0x01, 0x61, 0x00, 0x01])); // PUBLISH with QoS 3: no such QoS
  await bad.closed;
  const bad2 = await rawClient(proxy.ports.mqtt);
  bad2.send(connectPacket('garbler-2'));
  await bad2.next('connack');
  bad2.write(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x7f])); // Remaining Length of 5 bytes
  await bad2.closed;
  const before = steady.sent();
  await eventually('the steady device keeps publishing', () => steady.sent() > before + 10);
  await steady.stop();
  await eventually(
    'all its messages at the cloud',
    () => up.messages.filter((m) => m.topic.endsWith('steady-2/telemetry')).length === steady.sent(),
  );
  t.equal(await proxy.metric('edge_messages_refused_total', 'reason="malformed"'), 2);
  const lines = proxy.logs.filter((l) => l.reason === 'malformed');
  t.same(
    lines.map((l) => l.clientId),
    ['garbler', 'garbler-2'],
  );
});

t.test('an empty client id with a persistent session gets CONNACK 2; with a clean session it is accepted', async (t) => {
  const { proxy } = await setup(t);
  const persistent = await rawClient(proxy.ports.mqtt);
  // CONNECT, MQTT 3.1.1, CleanSession 0, keepalive 30, zero-byte client id (mqtt-packet will not make one)
  persistent.write(Buffer.from([0x10, 12, 0, 4, 0x4d, 0x51, 0x54, 0x54, 4, 0x00, 0, 30, 0, 0]));
  t.match(await persistent.next('connack'), { returnCode: 2 });
  await persistent.closed;
  const clean = await rawClient(proxy.ports.mqtt);
  clean.send(connectPacket('', { clean: true }));
  t.match(await clean.next('connack'), { returnCode: 0 });
  clean.socket.destroy();
});

t.test('PUBACKs leave in the order the PUBLISHes arrived, also when a later one is accepted first', async (t) => {
  // topicPrefix = controlPrefix: "down/..." then lands on a control topic, is accepted without a
  // commit (and not sent up), and so would be acknowledged before the messages around it.
  const { proxy, up } = await setup(t, { uplink: { topicPrefix: 'edge/{edgeId}/', controlPrefix: 'edge/{edgeId}/' } });
  const raw = await rawClient(proxy.ports.mqtt);
  raw.send(connectPacket('orderly'));
  await raw.next('connack');
  const bytes = Buffer.concat(
    [
      { topic: 'devices/orderly/a', id: 11 },
      { topic: 'down/devices/other/cmd', id: 12 },
      { topic: 'devices/orderly/b', id: 13 },
    ].map(({ topic, id }) => rawPacket({ cmd: 'publish', topic, payload: Buffer.from('x'), qos: 1, messageId: id })),
  );
  raw.write(bytes); // one write, so the proxy reads them together
  const ids = [];
  for (let i = 0; i < 3; i++) ids.push((await raw.next('puback')).messageId);
  t.same(ids, [11, 12, 13]);
  raw.socket.destroy();
  await eventually('two messages up', () => up.messages.filter((m) => m.topic.startsWith('edge/test-edge/devices/')).length === 2);
  t.notOk(
    up.messages.some((m) => m.topic === 'edge/test-edge/down/devices/other/cmd'),
    'the control-topic message did not go up',
  );
});

t.test('a QoS 2 resend of a publish still in flight is processed once', async (t) => {
  const { proxy, up } = await setup(t);
  const raw = await rawClient(proxy.ports.mqtt);
  raw.send(connectPacket('qos2-dev'));
  await raw.next('connack');
  const publish = { cmd: 'publish', topic: 'devices/qos2-dev/event', payload: Buffer.from('{"n":1}'), qos: 2, messageId: 7 };
  raw.write(Buffer.concat([rawPacket(publish), rawPacket({ ...publish, dup: true })]));
  t.match(await raw.next('pubrec'), { messageId: 7 });
  t.match(await raw.next('pubrec'), { messageId: 7 });
  raw.send({ cmd: 'pubrel', messageId: 7 });
  t.match(await raw.next('pubcomp'), { messageId: 7 });
  await eventually('at the cloud', () => up.messages.some((m) => m.topic.endsWith('qos2-dev/event')));
  await sleep(300);
  t.equal(up.messages.filter((m) => m.topic.endsWith('qos2-dev/event')).length, 1, 'sent up once');
  raw.socket.destroy();
});

t.test(
  'reserved $ topics: a publish is acknowledged and dropped, the connection stays; $edge/ subscriptions are refused in the SUBACK',
  async (t) => {
    const { proxy, up } = await setup(t);
    const sub = await rawClient(proxy.ports.mqtt);
    sub.send(connectPacket('curious'));
    await sub.next('connack');
    sub.send({
      cmd: 'subscribe',
      messageId: 1,
      subscriptions: [
        { topic: '$edge/#', qos: 1 },
        { topic: 'devices/curious/#', qos: 1 },
      ],
    });
    t.match(await sub.next('suback'), { granted: [128, 1] });
    const watcher = await connectClient(proxy.ports.mqtt, { clientId: 'sys-watcher' });
    const seen: string[] = [];
    watcher.on('message', (topic) => seen.push(topic));
    await watcher.subscribeAsync('$SYS/+/injected', { qos: 1 });
    // Conformance suites publish under $SYS/ and carry on: acknowledged, dropped, counted.
    sub.send({ cmd: 'publish', topic: '$edge/rules/set', payload: Buffer.from('rule x'), qos: 1, messageId: 2 });
    t.match(await sub.next('puback'), { messageId: 2 }, 'a $edge/ publish is acknowledged');
    sub.send({ cmd: 'publish', topic: '$SYS/edge-test-edge/injected', payload: Buffer.from('victim'), qos: 1, messageId: 3 });
    t.match(await sub.next('puback'), { messageId: 3 }, 'a $SYS/ publish is acknowledged');
    sub.send({ cmd: 'publish', topic: 'devices/curious/after', payload: Buffer.from('still here'), qos: 1, messageId: 4 });
    t.match(await sub.next('puback'), { messageId: 4 }, 'the connection stayed open');
    await eventually('the ordinary message went up', () => up.messages.some((m) => m.topic.endsWith('devices/curious/after')));
    t.equal(await proxy.metric('edge_messages_dropped_total', 'reason="reserved_topic"'), 2);
    t.equal(await proxy.metric('edge_messages_refused_total', 'reason="acl"'), 0, 'nothing refused: the publishes were dropped');
    await sleep(300);
    t.notOk(
      up.messages.some((m) => m.topic.includes('$')),
      'nothing of them went up',
    );
    t.same(seen, [], 'nobody received them');
    sub.socket.destroy();
    await watcher.endAsync();
  },
);

t.test('no device reaches the control topics through the uplink', async (t) => {
  const { proxy, up } = await setup(t, { uplink: { topicPrefix: 'edge/{edgeId}/', controlPrefix: 'edge/{edgeId}/' } });
  const device = await connectClient(proxy.ports.mqtt, { clientId: 'intruder' });
  await device.publishAsync('down/devices/victim/cmd/open', 'now', { qos: 1 });
  await device.publishAsync('rules/set', 'rule evil when true then drop() end', { qos: 1 });
  await device.publishAsync('status', 'offline', { qos: 1 });
  await device.publishAsync('devices/intruder/telemetry', '{"ok":true}', { qos: 1 });
  await eventually('the ordinary message arrives', () => up.messages.some((m) => m.topic === 'edge/test-edge/devices/intruder/telemetry'));
  t.same(
    up.messages.filter((m) => m.topic.startsWith('edge/test-edge/') && m.topic !== 'edge/test-edge/status').map((m) => m.topic),
    ['edge/test-edge/devices/intruder/telemetry'],
  );
  t.equal(await proxy.metric('edge_messages_dropped_total', 'reason="control_topic"'), 3);
  await device.endAsync();
});

t.test('downlink: a message on <controlPrefix>down/<topic> reaches local subscribers (mosquitto_pub and mosquitto_sub)', async (t) => {
  const { proxy, up, cloudPort } = await setup(t);
  const sub = spawn('mosquitto_sub', [
    '-h',
    '127.0.0.1',
    '-p',
    String(proxy.ports.mqtt),
    '-i',
    'fan-ctl',
    '-t',
    'devices/fan-ctl/cmd/#',
    '-q',
    '1',
    '-C',
    '1',
    '-v',
  ]);
  let out = '';
  sub.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  t.teardown(() => {
    sub.kill();
  });
  await eventually('the local subscriber is connected', async () => (await proxy.metric('edge_connections', 'protocol="mqtt"')) >= 1);
  await sleep(200);
  const pub = spawn('mosquitto_pub', [
    '-h',
    '127.0.0.1',
    '-p',
    String(cloudPort),
    '-q',
    '1',
    '-t',
    'edge/test-edge/down/devices/fan-ctl/cmd/fan',
    '-m',
    '{"on":true}',
  ]);
  await new Promise((resolve) => pub.on('exit', resolve));
  await eventually('mosquitto_sub printed the command', () => out.includes('devices/fan-ctl/cmd/fan {"on":true}'));
  await sleep(300);
  t.notOk(
    up.messages.some((m) => m.topic.startsWith('edge/test-edge/up/')),
    'a message from the cloud never goes back up',
  );
  t.equal(await proxy.metric('edge_messages_received_total', 'protocol="cloud"'), 1);
});

t.test('mosquitto_pub to the proxy reaches mosquitto_sub at the cloud', async (t) => {
  const { proxy, cloudPort } = await setup(t);
  const sub = spawn('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(cloudPort), '-t', 'edge/test-edge/up/#', '-q', '1', '-C', '1']);
  let out = '';
  sub.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  t.teardown(() => {
    sub.kill();
  });
  await sleep(300);
  const pub = spawn('mosquitto_pub', [
    '-h',
    '127.0.0.1',
    '-p',
    String(proxy.ports.mqtt),
    '-i',
    'cli-dev',
    '-q',
    '1',
    '-t',
    'devices/cli-dev/telemetry',
    '-m',
    '{"temp":19.5}',
  ]);
  t.equal(await new Promise((resolve) => pub.on('exit', resolve)), 0);
  await eventually('mosquitto_sub printed the envelope', () => out.includes('\n'));
  t.match(JSON.parse(out), {
    deviceId: 'cli-dev',
    topic: 'devices/cli-dev/telemetry',
    contentType: 'json',
    payload: { temp: 19.5 },
    edge: 'test-edge',
  });
});

import mqttPacket, { type Packet } from 'mqtt-packet';
function rawPacket(p: Record<string, unknown>): Buffer {
  return mqttPacket.generate(p as unknown as Packet, { protocolVersion: 4 });
}

t.test(
  'open mode: a client that names no device (mosquitto_pub without -i or -u) is the device its devices/<id>/ topic names, as rules test assumes',
  async (t) => {
    const dir = t.testdir({
      rules: {
        'fan.rules':
          'rule fan\nwhen msg.topic matches "devices/+/telemetry" and payload.temp > 40\nthen publish("devices/" + msg.deviceId + "/cmd/fan", { on: true })\nend\n',
      },
    });
    const cloud = await startMosquitto(`${dir}/cloud`);
    t.teardown(() => cloud.stop());
    const checker = await connectClient(cloud.port);
    t.teardown(() => checker.endAsync());
    const up = await collect(checker, 'edge/test-edge/up/#');
    const proxy = await startProxy(dir, { uplink: { url: cloud.url } });
    t.teardown(() => proxy.stop());
    const listener = await connectClient(proxy.ports.mqtt, { clientId: 'fan-watcher' });
    t.teardown(() => listener.endAsync());
    const commands = await collect(listener, 'devices/+/cmd/#');
    const pub = spawn('mosquitto_pub', [
      '-h',
      '127.0.0.1',
      '-p',
      String(proxy.ports.mqtt),
      '-q',
      '1',
      '-t',
      'devices/pump-7/telemetry',
      '-m',
      '{"temp":45}',
    ]);
    t.equal(await new Promise((resolve) => pub.on('exit', resolve)), 0);
    await eventually('the message went up', () => up.messages.some((m) => m.topic.endsWith('devices/pump-7/telemetry')));
    const envelope = JSON.parse(up.messages.find((m) => m.topic.endsWith('devices/pump-7/telemetry'))!.payload.toString()) as {
      deviceId: string;
    };
    t.equal(envelope.deviceId, 'pump-7', 'the device its topic names, not an id the broker made up');
    await eventually('the rule switched the fan on', () => commands.messages.length > 0);
    t.same(
      commands.messages.map((m) => m.topic),
      ['devices/pump-7/cmd/fan'],
      'the rule addressed pump-7',
    );
    // A client that does name itself keeps its own id, whatever topic it uses.
    const named = spawn('mosquitto_pub', [
      '-h',
      '127.0.0.1',
      '-p',
      String(proxy.ports.mqtt),
      '-i',
      'bridge-1',
      '-q',
      '1',
      '-t',
      'devices/pump-8/telemetry',
      '-m',
      '{"temp":1}',
    ]);
    t.equal(await new Promise((resolve) => named.on('exit', resolve)), 0);
    await eventually('the named message went up', () => up.messages.some((m) => m.topic.endsWith('devices/pump-8/telemetry')));
    const namedEnvelope = JSON.parse(up.messages.find((m) => m.topic.endsWith('devices/pump-8/telemetry'))!.payload.toString()) as {
      deviceId: string;
    };
    t.equal(namedEnvelope.deviceId, 'bridge-1');
  },
);
