// Device authentication and access control over MQTT/TCP, end to end: the built proxy as a real
// process, a real Mosquitto as the cloud, and real clients (mosquitto_pub, mosquitto_sub, MQTT.js,
// raw packets). One proxy per auth mode; each cell is a subtest on it. TLS: auth-mqtt-tls.test.ts.
import t from 'tap';
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import type { MqttClient } from 'mqtt';
import type { Packet } from 'mqtt-packet';
import { cloudFor } from './helpers/mosquitto.js';
import { startProxy, type ProxyProcess } from './helpers/proxy.js';
import { collect, connectClient, connectOutcome, runTool, startTool, type Collected, type ToolRun } from './helpers/clients.js';
import { connectPacket, rawClient, type RawClient } from './helpers/raw.js';
import { eventually, sleep } from './helpers/ports.js';
import { writeRaw, writeRegistry, type DeviceSpec } from './helpers/registry.js';
import { hashToken, makeToken } from '../src/auth/token.js';
import { topicMatches } from '../src/core/topic.js';

interface Envelope {
  id: string;
  topic: string;
  deviceId: string;
  payload: unknown;
}

/** What one proxy's tests share: its port, the cloud's view, and shorthands for the clients. */
function toolsFor(proxy: ProxyProcess, up: Collected, edgeId = 'test-edge') {
  const port = proxy.ports.mqtt;
  const prefix = `edge/${edgeId}/up/`;
  const envelopes = (): Envelope[] =>
    up.messages.filter((m) => m.topic.startsWith(prefix)).map((m) => JSON.parse(m.payload.toString()) as Envelope);
  return {
    port,
    url: `mqtt://127.0.0.1:${port}`,
    /** mosquitto_pub against the proxy */
    pub: (args: string[], timeoutMs?: number): Promise<ToolRun> =>
      runTool('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(port), ...args], timeoutMs),
    /** mosquitto_sub against the proxy, run to its end */
    sub: (args: string[], timeoutMs?: number): Promise<ToolRun> =>
      runTool('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(port), ...args], timeoutMs),
    /** mosquitto_sub against the proxy, left running; line-buffered, so that its -d lines show as they happen */
    subStart: (args: string[]) => startTool('stdbuf', ['-oL', 'mosquitto_sub', '-h', '127.0.0.1', '-p', String(port), ...args]),
    envelopes,
    /** the envelopes the cloud got for a device topic */
    atCloud: (topic: string): Envelope[] => envelopes().filter((e) => e.topic === topic),
    /** waits until `topic` reached the cloud: whatever was published before it on that device's connection was handled */
    arrived: async (topic: string): Promise<Envelope> =>
      (await eventually(`${topic} at the cloud`, () => envelopes().find((e) => e.topic === topic)))!,
    metric: (name: string, labels?: string): Promise<number> => proxy.metric(name, labels),
    /** a raw MQTT 3.1.1 connection that sent CONNECT and got its CONNACK */
    async raw(
      clientId: string,
      extra: Record<string, unknown> = {},
    ): Promise<{ raw: RawClient; connack: Packet & { returnCode?: number; sessionPresent?: boolean } }> {
      const raw = await rawClient(port);
      raw.send(connectPacket(clientId, extra));
      const connack = await raw.next('connack');
      return { raw, connack: connack as Packet & { returnCode?: number; sessionPresent?: boolean } };
    },
  };
}

/** CONNECT fields for a device's username and token. */
function login(id: string, token: string): Record<string, unknown> {
  return { username: id, password: Buffer.from(token) };
}

/** The server closed the raw connection within `ms`. */
function rawClosedWithin(raw: RawClient, ms: number): Promise<boolean> {
  return Promise.race([raw.closed.then(() => true), sleep(ms).then(() => false)]);
}

/** What mosquitto_sub -v -d printed of the messages it received: its -d lines left out. */
function messageLines(stdout: string): string[] {
  return stdout.split('\n').filter((l) => l !== '' && !l.startsWith('Client ') && !l.startsWith('Subscribed (mid:'));
}

type Publish = Packet & { topic: string; payload: Buffer; qos: number; messageId?: number };

/** The PUBLISH packets a raw connection received, in order. */
function publishes(raw: RawClient): Publish[] {
  return raw.packets.filter((p): p is Publish => p.cmd === 'publish');
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

/** The registry as the tests change it: every device keeps its token unless rotated. */
class Registry {
  readonly tokens: Record<string, string> = {};
  specs: DeviceSpec[];
  constructor(
    readonly file: string,
    specs: DeviceSpec[],
  ) {
    this.specs = specs;
    this.write();
  }
  write(how: 'rename' | 'in-place' = 'rename'): void {
    Object.assign(
      this.tokens,
      writeRegistry(
        this.file,
        this.specs.map((s) => ({ ...s, token: s.token ?? this.tokens[s.id] })),
        how,
      ),
    );
  }
  /** -u/-P for mosquitto_pub and mosquitto_sub */
  creds(id: string): string[] {
    return ['-u', id, '-P', this.tokens[id]!];
  }
  login(id: string): Record<string, unknown> {
    return login(id, this.tokens[id]!);
  }
}

const RULES = `
# the registry's attributes, read by rules as device.<attr>
rule tag
when msg.topic matches "devices/+/telemetry"
then uplink(topic = "tagged/" + device.location + "/" + device.model)
end

rule whoami
when msg.topic matches "devices/+/whoami"
then uplink(topic = "whoami/" + device.id)
end
`;

t.test('token mode over TCP', async (t) => {
  const parent = t;
  const dir = t.testdir();
  const { url: cloudUrl, up } = await cloudFor(t, dir);
  mkdirSync(join(dir, 'rules'), { recursive: true });
  writeFileSync(join(dir, 'rules', 'attrs.rules'), RULES);
  const reg = new Registry(join(dir, 'devices.yaml'), [
    { id: 'pump-7', attrs: { location: 'hall-2', model: 'P200' } },
    { id: 'pump-8' },
    { id: 'monitor', subscribe: ['$SYS/#', 'broadcast/#'] },
    { id: 'ops', publish: ['broadcast/#', 'devices/ops/#'] },
    { id: 'root', publish: ['#'], subscribe: ['#', '$edge/#'] },
    { id: 'steady' },
    { id: 'doomed' },
    { id: 'rotor' },
    { id: 'narrow-a' },
    { id: 'narrow-b' },
    { id: 'sleeper', subscribe: ['devices/sleeper/#', 'broadcast/#'] },
  ]);
  const proxy = await startProxy(dir, { uplink: { url: cloudUrl }, auth: { mode: 'token' }, devicesFile: reg.file });
  t.teardown(() => proxy.stop());
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);
  const x = toolsFor(proxy, up);
  const failures = (reason: string): Promise<number> => x.metric('edge_auth_failures_total', `reason="${reason}"`);

  await t.test('right token: mosquitto_pub inside its publish filters is accepted and goes up as that device', async (t) => {
    const run = await x.pub([...reg.creds('pump-7'), '-i', 'pump7-cli', '-q', '1', '-t', 'devices/pump-7/status', '-m', '{"ok":1}']);
    t.equal(run.code, 0, `mosquitto_pub exits 0 (stderr: ${run.stderr})`);
    t.equal(run.stderr, '');
    const env = await x.arrived('devices/pump-7/status');
    t.match(env, { deviceId: 'pump-7', payload: { ok: 1 } });
    const { raw, connack } = await x.raw('pump7-raw', reg.login('pump-7'));
    t.equal(connack.returnCode, 0, 'CONNACK 0');
    raw.socket.destroy();
  });

  await t.test('right token, publish outside its filters: the connection is closed, nothing goes up, counted as acl', async (t) => {
    const refusedBefore = await x.metric('edge_messages_refused_total', 'reason="acl"');
    const aclBefore = await failures('acl');
    const run = await x.pub([...reg.creds('pump-7'), '-q', '1', '-t', 'devices/pump-8/status', '-m', 'not mine']);
    t.equal(run.code, 7, 'mosquitto_pub exits 7 (MOSQ_ERR_CONN_LOST): the proxy closed the connection');
    t.match(run.stderr, /connection was lost/i);
    const q1 = (await x.raw('pump7-q1', reg.login('pump-7'))).raw;
    q1.send({ cmd: 'publish', topic: 'broadcast/all', payload: Buffer.from('not mine either'), qos: 1, messageId: 5 });
    t.ok(await rawClosedWithin(q1, 3000), 'a QoS 1 publish outside its filters closes the connection');
    t.notOk(
      q1.packets.some((p) => p.cmd === 'puback'),
      'no PUBACK for a QoS 1 publish outside its filters',
    );
    const q0 = (await x.raw('pump7-q0', reg.login('pump-7'))).raw;
    q0.send({ cmd: 'publish', topic: 'devices/pump-8/cmd', payload: Buffer.from('q0'), qos: 0 });
    t.ok(await rawClosedWithin(q0, 3000), 'a QoS 0 publish outside its filters closes the connection too');
    // The same device inside its filters afterwards: still admitted, and a barrier for what went up.
    t.equal((await x.pub([...reg.creds('pump-7'), '-q', '1', '-t', 'devices/pump-7/after-acl', '-m', '1'])).code, 0);
    await x.arrived('devices/pump-7/after-acl');
    t.same(
      x.envelopes().filter((e) => e.topic.startsWith('devices/pump-8/') || e.topic.startsWith('broadcast/')),
      [],
      'nothing refused went up',
    );
    t.equal(
      (await x.metric('edge_messages_refused_total', 'reason="acl"')) - refusedBefore,
      3,
      'edge_messages_refused_total{reason="acl"} +3',
    );
    t.equal((await failures('acl')) - aclBefore, 3, 'edge_auth_failures_total{reason="acl"} +3');
    const line = await eventually(
      'the warning',
      () => proxy.logs.find((l) => typeof l.msg === 'string' && l.msg.startsWith('pump-7 may not publish')),
      3000,
    );
    t.match(line, { level: 'warn', deviceId: 'pump-7', topic: 'devices/pump-8/status' }, 'a warning names the device and the topic');
  });

  await t.test(
    'right token, subscriptions: inside granted; another device, devices/+/#, #, $SYS/#, $edge/# get 0x80 and the connection stays',
    async (t) => {
      const aclBefore = await failures('acl');
      const { raw } = await x.raw('pump7-subs', reg.login('pump-7'));
      raw.send({
        cmd: 'subscribe',
        messageId: 1,
        subscriptions: [
          'devices/pump-7/#',
          'broadcast/#',
          'devices/pump-8/#',
          'devices/+/#',
          '#',
          '$SYS/#',
          '$edge/#',
          'devices/pump-7/+/x',
        ].map((topic) => ({ topic, qos: 1 })),
      });
      t.same(((await raw.next('suback')) as Packet & { granted: number[] }).granted, [1, 1, 128, 128, 128, 128, 128, 1]);
      raw.send({ cmd: 'pingreq' });
      t.match(await raw.next('pingresp'), { cmd: 'pingresp' }, 'the connection stayed open after the refusals');
      // Another device's message, a broadcast, and one of its own: it gets exactly what its grants allow.
      t.equal((await x.pub([...reg.creds('pump-8'), '-q', '1', '-t', 'devices/pump-8/status', '-m', 'p8'])).code, 0);
      t.equal((await x.pub([...reg.creds('ops'), '-q', '1', '-t', 'broadcast/all', '-m', 'hello all'])).code, 0);
      t.equal((await x.pub([...reg.creds('pump-7'), '-q', '1', '-t', 'devices/pump-7/own', '-m', 'mine'])).code, 0);
      await eventually('its own message', () => raw.packets.some((p) => p.cmd === 'publish' && p.topic === 'devices/pump-7/own'));
      await sleep(300);
      const topics = raw.packets.filter((p): p is Packet & { topic: string } => p.cmd === 'publish').map((p) => p.topic);
      t.same(topics.sort(), ['broadcast/all', 'devices/pump-7/own'], 'the broadcast and its own message; nothing of pump-8, no $SYS');
      t.equal((await failures('acl')) - aclBefore, 5, 'edge_auth_failures_total{reason="acl"} +5, one per refused filter');
      raw.socket.destroy();

      for (const filter of ['#', '$SYS/#', 'devices/+/#']) {
        const run = await x.sub([...reg.creds('pump-7'), '-q', '1', '-t', filter, '-W', '5']);
        t.match(run.stderr, /All subscription requests were denied/, `mosquitto_sub -t '${filter}': denied`);
        t.equal(run.code, 0, `mosquitto_sub -t '${filter}' exits at once on the denial, not at its -W timeout (exit ${run.code})`);
        t.ok(run.ms < 4000, `mosquitto_sub ended after the SUBACK (${run.ms} ms)`);
        t.equal(run.stdout, '', 'and received nothing');
      }
      const line = await eventually(
        'the warning',
        () => proxy.logs.find((l) => typeof l.msg === 'string' && l.msg.startsWith('pump-7 may not subscribe')),
        3000,
      );
      t.match(line, { level: 'warn', deviceId: 'pump-7' }, 'a warning names the device');

      const own = x.subStart([...reg.creds('pump-7'), '-q', '1', '-t', 'broadcast/#', '-C', '1', '-v', '-W', '20', '-d']);
      t.teardown(() => own.stop());
      await eventually('mosquitto_sub subscribed', () => own.stdout().includes('received SUBACK'), 10_000);
      t.equal((await x.pub([...reg.creds('ops'), '-q', '1', '-t', 'broadcast/news', '-m', 'extra'])).code, 0);
      const got = await own.exited;
      t.equal(got.code, 0, `mosquitto_sub exits 0 after one message (stderr: ${got.stderr})`);
      t.same(messageLines(got.stdout), ['broadcast/news extra'], 'mosquitto_sub inside its subscribe filters receives the broadcast');
    },
  );

  let monitor: RawClient;
  await t.test("a filter may grant $SYS/#: that device subscribes and sees the broker's $SYS messages", async (t) => {
    monitor = (await x.raw('monitor-1', reg.login('monitor'))).raw;
    parent.teardown(() => monitor.socket.destroy()); // it watches the next cell too
    monitor.send({
      cmd: 'subscribe',
      messageId: 1,
      subscriptions: [
        { topic: '$SYS/#', qos: 0 },
        { topic: '#', qos: 0 },
      ],
    });
    t.same(((await monitor.next('suback')) as Packet & { granted: number[] }).granted, [0, 128], '$SYS/# granted by its filter; # is not');
    const { raw } = await x.raw('someone-new', reg.login('pump-8'));
    const seen = (await eventually(
      '$SYS/<broker>/new/clients',
      () =>
        monitor.packets.find(
          (p): p is Packet & { topic: string; payload: Buffer } =>
            p.cmd === 'publish' && /^\$SYS\/[^/]+\/new\/clients$/.test(p.topic) && p.payload.toString().endsWith('someone-new'),
        ),
      5000,
    ))!;
    t.ok(seen, `it saw ${seen.topic}: ${seen.payload.toString()}`);
    raw.socket.destroy();
  });

  await t.test(
    '$ publishes are acknowledged and dropped, even for a device whose filter is #; $edge/# is refused even when the registry grants it',
    async (t) => {
      const droppedBefore = await x.metric('edge_messages_dropped_total', 'reason="reserved_topic"');
      const refusedBefore = await x.metric('edge_messages_refused_total', 'reason="acl"');
      const { raw } = await x.raw('root-1', reg.login('root'));
      raw.send({ cmd: 'publish', topic: '$SYS/edge-test-edge/new/clients', payload: Buffer.from('forged'), qos: 1, messageId: 1 });
      t.match(await raw.next('puback'), { messageId: 1 }, 'a $SYS publish is acknowledged');
      raw.send({ cmd: 'publish', topic: '$edge/rules/set', payload: Buffer.from('forged'), qos: 1, messageId: 2 });
      t.match(await raw.next('puback'), { messageId: 2 }, 'a $edge publish is acknowledged');
      raw.send({ cmd: 'publish', topic: 'anything/else', payload: Buffer.from('fine'), qos: 1, messageId: 3 });
      t.match(await raw.next('puback'), { messageId: 3 }, 'the connection stayed');
      const run = await x.pub([...reg.creds('pump-7'), '-q', '1', '-t', '$SYS/forged', '-m', 'forged']);
      t.equal(run.code, 0, 'mosquitto_pub to a $ topic exits 0: acknowledged');
      raw.send({
        cmd: 'subscribe',
        messageId: 4,
        subscriptions: [
          { topic: '$edge/#', qos: 1 },
          { topic: '#', qos: 1 },
        ],
      });
      t.same(((await raw.next('suback')) as Packet & { granted: number[] }).granted, [128, 1]);
      await x.arrived('anything/else');
      await sleep(300);
      t.equal(
        (await x.metric('edge_messages_dropped_total', 'reason="reserved_topic"')) - droppedBefore,
        3,
        'edge_messages_dropped_total{reason="reserved_topic"} +3',
      );
      t.equal((await x.metric('edge_messages_refused_total', 'reason="acl"')) - refusedBefore, 0, 'dropped, not refused');
      t.notOk(
        x.envelopes().some((e) => e.topic.startsWith('$')),
        'nothing of them went up',
      );
      t.notOk(
        monitor.packets.some((p) => p.cmd === 'publish' && String((p as Packet & { payload: Buffer }).payload) === 'forged'),
        'the $SYS subscriber never saw them',
      );
      raw.socket.destroy();
    },
  );

  await t.test("wrong token: CONNACK 4, counted bad_token and logged; also another device's username with its own token", async (t) => {
    const before = await failures('bad_token');
    const forged = `pump-7.${'A'.repeat(43)}`;
    const run = await x.pub(['-u', 'pump-7', '-P', forged, '-q', '1', '-t', 'devices/pump-7/wrong-token', '-m', 'x']);
    t.equal(run.code, 4, 'mosquitto_pub exits 4: CONNACK 4');
    t.match(run.stderr, /bad user name or password/);
    const sub = await x.sub(['-u', 'pump-7', '-P', forged, '-t', 'devices/pump-7/#', '-W', '5']);
    t.equal(sub.code, 4, 'mosquitto_sub with a wrong token exits 4');
    t.equal(sub.stdout, '');
    const other = await x.raw('pump7-claims-8', login('pump-8', reg.tokens['pump-7']!));
    t.equal(other.connack.returnCode, 4, "username pump-8 with pump-7's own token: CONNACK 4");
    t.ok(await rawClosedWithin(other.raw, 3000), 'and the connection is closed');
    const asEight = await x.pub(['-u', 'pump-8', '-P', reg.tokens['pump-7']!, '-q', '1', '-t', 'devices/pump-8/as-eight', '-m', 'x']);
    t.equal(asEight.code, 4, 'the same with mosquitto_pub: exit 4');
    const none = await x.raw('pump8-no-password', { username: 'pump-8' });
    t.equal(none.connack.returnCode, 4, 'a known device without a password: CONNACK 4');
    t.equal((await failures('bad_token')) - before, 5, 'edge_auth_failures_total{reason="bad_token"} +5');
    t.match(await eventually('the warning', () => proxy.logs.find((l) => l.reason === 'bad_token' && l.deviceId === 'pump-7'), 3000), {
      level: 'warn',
      protocol: 'mqtt',
      msg: /token does not match/,
    });
    t.equal((await x.pub([...reg.creds('pump-7'), '-q', '1', '-t', 'devices/pump-7/after-bad-token', '-m', '1'])).code, 0);
    await x.arrived('devices/pump-7/after-bad-token');
    t.same(x.atCloud('devices/pump-7/wrong-token').concat(x.atCloud('devices/pump-8/as-eight')), [], 'nothing of them went up');
  });

  await t.test('unknown device: CONNACK 5, counted unknown_device and logged; a client id naming a device does not admit it', async (t) => {
    const before = await failures('unknown_device');
    const run = await x.pub(['-u', 'ghost', '-P', makeToken('ghost'), '-q', '1', '-t', 'devices/ghost/x', '-m', 'boo']);
    t.equal(run.code, 5, 'mosquitto_pub exits 5: CONNACK 5');
    t.match(run.stderr, /not authori[sz]ed/);
    const sub = await x.sub(['-u', 'ghost', '-P', 'whatever', '-t', '#', '-W', '5']);
    t.equal(sub.code, 5, 'mosquitto_sub as an unknown device exits 5');
    t.equal((await x.raw('pump-7')).connack.returnCode, 5, 'no credentials, client id "pump-7": CONNACK 5');
    t.equal(
      (await x.raw('tok-only', { username: '', password: Buffer.from(makeToken('ghost-2')) })).connack.returnCode,
      5,
      'an empty username and the token of an unregistered id: CONNACK 5',
    );
    t.equal((await failures('unknown_device')) - before, 4, 'edge_auth_failures_total{reason="unknown_device"} +4');
    t.match(await eventually('the warning', () => proxy.logs.find((l) => l.reason === 'unknown_device' && l.deviceId === 'ghost'), 3000), {
      level: 'warn',
      msg: /"ghost" is not a device in the registry/,
    });
    t.same(
      x.envelopes().filter((e) => e.topic.includes('ghost')),
      [],
    );
  });

  await t.test("a device cannot take another device's connection: the same client id for two devices, both stay connected", async (t) => {
    const a = await connectOutcome(x.url, { clientId: 'twin', ...reg.login('pump-7') });
    const b = await connectOutcome(x.url, { clientId: 'twin', ...reg.login('pump-8') });
    if (!a.ok || !b.ok) throw new Error('both devices connect');
    t.teardown(() => {
      a.client.end(true);
      b.client.end(true);
    });
    t.notOk(await closedWithin(a.client, 700), 'pump-7 was not kicked out by pump-8 using its client id');
    t.ok(b.client.connected, 'pump-8 stays connected');
    await a.client.publishAsync('devices/pump-7/twin', 'a', { qos: 1 });
    await b.client.publishAsync('devices/pump-8/twin', 'b', { qos: 1 });
    t.equal((await x.arrived('devices/pump-7/twin')).deviceId, 'pump-7');
    t.equal((await x.arrived('devices/pump-8/twin')).deviceId, 'pump-8', 'each publishes as itself');
    // The control: the same device again with that client id takes its own connection over [MQTT-3.1.4-2].
    const again = await connectOutcome(x.url, { clientId: 'twin', ...reg.login('pump-7') });
    if (!again.ok) throw new Error('pump-7 connects again');
    t.teardown(() => again.client.end(true));
    t.ok(await closedWithin(a.client, 3000), 'a second pump-7 connection with the same client id replaces the first');
    t.ok(b.client.connected, 'and pump-8 is still connected');
  });

  await t.test('a persistent session is not handed to another device using the same client id', async (t) => {
    // Device pump-7 makes a persistent session (mosquitto_sub -c) and leaves; a command is queued for it.
    const made = await x.sub([...reg.creds('pump-7'), '-c', '-i', 'keeper', '-q', '1', '-t', 'devices/pump-7/cmd/#', '-E']);
    t.equal(made.code, 0, `mosquitto_sub -c -E made the session (stderr: ${made.stderr})`);
    t.equal(
      (await x.pub([...reg.creds('pump-7'), '-i', 'pump7-sender', '-q', '1', '-t', 'devices/pump-7/cmd/open', '-m', 'queued'])).code,
      0,
    );
    const b = await x.raw('keeper', { clean: false, ...reg.login('pump-8') });
    t.match(b.connack, { returnCode: 0, sessionPresent: false }, 'pump-8 with client id "keeper": sessionPresent=false');
    await sleep(700);
    t.same(
      b.raw.packets.filter((p) => p.cmd === 'publish'),
      [],
      "and none of pump-7's queued messages",
    );
    b.raw.send({ cmd: 'disconnect' });
    t.ok(await rawClosedWithin(b.raw, 3000));
    const a = await x.raw('keeper', { clean: false, ...reg.login('pump-7') });
    t.match(a.connack, { returnCode: 0, sessionPresent: true }, 'pump-7 finds its session again');
    const queued = (await a.raw.next('publish')) as Packet & { topic: string; payload: Buffer; messageId: number };
    t.equal(queued.topic, 'devices/pump-7/cmd/open');
    t.equal(queued.payload.toString(), 'queued', 'with the message queued for it');
    a.raw.send({ cmd: 'puback', messageId: queued.messageId });
    a.raw.send({ cmd: 'disconnect' });
  });

  await t.test('device attributes from the registry are read by rules (device.location, device.model)', async (t) => {
    const run = await x.pub([...reg.creds('pump-7'), '-q', '1', '-t', 'devices/pump-7/telemetry', '-m', '{"temp":20}']);
    t.equal(run.code, 0);
    const tagged = await x.arrived('tagged/hall-2/P200');
    t.match(tagged, { deviceId: 'pump-7', payload: { temp: 20 } }, 'the cloud got tagged/<device.location>/<device.model>');
    // An attribute edited in the registry applies to the next message; the device is not disconnected.
    const dev = await connectOutcome(x.url, { clientId: 'pump7-attrs', ...reg.login('pump-7') });
    if (!dev.ok) throw new Error('pump-7 connects');
    t.teardown(() => dev.client.end(true));
    reg.specs = reg.specs.map((s) => (s.id === 'pump-7' ? { ...s, attrs: { location: 'hall-3', model: 'P200' } } : s));
    reg.write();
    await eventually('the registry reloaded', () =>
      proxy.logs.some((l) => l.msg === 'device registry changed' && (l.attrsChanged as string[] | undefined)?.includes('pump-7')),
    );
    await dev.client.publishAsync('devices/pump-7/telemetry', '{"temp":21}', { qos: 1 });
    t.match(await x.arrived('tagged/hall-3/P200'), { deviceId: 'pump-7', payload: { temp: 21 } }, 'the new attribute is used');
    t.ok(dev.client.connected, 'an attribute change does not disconnect the device');
  });

  await t.test(
    'device.id in a rule is the device\'s registry id (docs/rules.md: "`device`: the device\'s registry entry: `id` and its attributes")',
    async (t) => {
      const errors = (): Promise<number> => x.metric('edge_rule_errors_total', 'rule="whoami"');
      const before = await errors();
      t.equal((await x.pub([...reg.creds('pump-8'), '-q', '1', '-t', 'devices/pump-8/whoami', '-m', '{}'])).code, 0);
      await eventually(
        'whoami at the cloud, or the rule failed',
        async () => x.envelopes().some((e) => e.topic.startsWith('whoami/')) || (await errors()) > before,
        5000,
      );
      t.same(
        x
          .envelopes()
          .filter((e) => e.topic.startsWith('whoami/'))
          .map((e) => e.topic),
        ['whoami/pump-8'],
        'the cloud got whoami/<device.id>',
      );
      const fault = proxy.logs.find((l) => l.rule === 'whoami');
      t.equal(
        (await errors()) - before,
        0,
        `the rule did not fail (edge_rule_errors_total{rule="whoami"}${fault ? `; logged: ${String(fault.err)}` : ''})`,
      );
    },
  );

  // Registry edits from here on. `steady` stays connected through all of them.
  const steady = await connectOutcome(x.url, { clientId: 'steady-1', ...reg.login('steady') });
  if (!steady.ok) throw new Error('steady connects');
  let steadyClosed = false;
  steady.client.on('close', () => {
    steadyClosed = true;
  });
  t.teardown(() => steady.client.end(true));

  await t.test('a device removed from the registry while connected is disconnected within a second, and refused after', async (t) => {
    const mq = await connectOutcome(x.url, { clientId: 'doomed-1', ...reg.login('doomed') });
    if (!mq.ok) throw new Error('doomed connects');
    t.teardown(() => mq.client.end(true));
    await mq.client.subscribeAsync('devices/doomed/#', { qos: 1 });
    const cli = x.subStart([...reg.creds('doomed'), '-i', 'doomed-cli', '-q', '1', '-t', 'devices/doomed/#', '-v', '-d']);
    t.teardown(() => cli.stop());
    await eventually('mosquitto_sub subscribed', () => cli.stdout().includes('received SUBACK'));
    // The wait is generous (10 s); how quickly it happened is a separate assertion on the time measured.
    const started = Date.now();
    const closed = closedWithin(mq.client, 10_000).then((c) => ({ c, ms: Date.now() - started }));
    reg.specs = reg.specs.filter((s) => s.id !== 'doomed');
    reg.write();
    const { c, ms } = await closed;
    t.ok(c, 'the MQTT.js connection was closed');
    t.ok(ms < 1000, `within a second of the edit (${ms} ms)`);
    const cliRun = await Promise.race([cli.exited, sleep(10_000).then(() => null)]);
    t.equal(cliRun?.code, 5, 'mosquitto_sub lost its connection, reconnected, and exited on CONNACK 5');
    t.match(cliRun?.stderr ?? '', /not authori[sz]ed/);
    t.ok(
      await eventually(
        'the log line',
        () =>
          proxy.logs.find((l) => l.msg === 'disconnected MQTT device doomed: it was removed from the registry' && l.deviceId === 'doomed'),
        3000,
      ),
      'an info line says why it was disconnected',
    );
    t.equal((await x.raw('doomed-2', login('doomed', reg.tokens['doomed']!))).connack.returnCode, 5, 'its token now gets CONNACK 5');
    const run = await x.pub([...reg.creds('doomed'), '-q', '1', '-t', 'devices/doomed/after', '-m', 'x']);
    t.equal(run.code, 5, 'mosquitto_pub as the removed device exits 5');
    t.notOk(steadyClosed, 'the other devices stay connected');
  });

  await t.test(
    'a rotated token disconnects connections that used the old one; the old token gets CONNACK 4, the new one works',
    async (t) => {
      const old = reg.tokens['rotor']!;
      const mq = await connectOutcome(x.url, { clientId: 'rotor-1', ...reg.login('rotor') });
      if (!mq.ok) throw new Error('rotor connects');
      t.teardown(() => mq.client.end(true));
      // The wait is generous (10 s); how quickly it happened is a separate assertion on the time measured.
      const started = Date.now();
      const closed = closedWithin(mq.client, 10_000).then((c) => ({ c, ms: Date.now() - started }));
      const fresh = makeToken('rotor');
      reg.specs = reg.specs.map((s) => (s.id === 'rotor' ? { ...s, token: fresh } : s));
      reg.write('in-place'); // this edit rewrites the file itself, as an editor may
      const { c, ms } = await closed;
      t.ok(c, 'the connection with the old token was closed');
      t.ok(ms < 1000, `within a second of the edit (${ms} ms)`);
      t.ok(
        await eventually(
          'the log line',
          () => proxy.logs.find((l) => l.msg === 'disconnected MQTT device rotor: its token was replaced' && l.deviceId === 'rotor'),
          3000,
        ),
        'an info line says why it was disconnected',
      );
      t.equal((await x.raw('rotor-2', login('rotor', old))).connack.returnCode, 4, 'the old token: CONNACK 4');
      t.equal(
        (await x.pub(['-u', 'rotor', '-P', old, '-q', '1', '-t', 'devices/rotor/old', '-m', 'x'])).code,
        4,
        'mosquitto_pub with the old token exits 4',
      );
      t.equal((await x.pub(['-u', 'rotor', '-P', fresh, '-q', '1', '-t', 'devices/rotor/new', '-m', 'x'])).code, 0, 'the new token works');
      await x.arrived('devices/rotor/new');
      t.same(x.atCloud('devices/rotor/old'), []);
      t.notOk(steadyClosed, 'the other devices stay connected');
    },
  );

  await t.test(
    'narrowed filters: a device holding a subscription no longer allowed is disconnected; one whose subscriptions still fit stays',
    async (t) => {
      const a = await connectOutcome(x.url, { clientId: 'narrow-a-1', ...reg.login('narrow-a') });
      const b = await connectOutcome(x.url, { clientId: 'narrow-b-1', ...reg.login('narrow-b') });
      if (!a.ok || !b.ok) throw new Error('both connect');
      t.teardown(() => {
        a.client.end(true);
        b.client.end(true);
      });
      t.same(
        (await a.client.subscribeAsync('broadcast/#', { qos: 1 })).map((g) => g.qos),
        [1],
      );
      t.same(
        (await b.client.subscribeAsync('devices/narrow-b/#', { qos: 1 })).map((g) => g.qos),
        [1],
      );
      // The wait is generous (10 s); how quickly it happened is a separate assertion on the time measured.
      const started = Date.now();
      const aClosed = closedWithin(a.client, 10_000).then((c) => ({ c, ms: Date.now() - started }));
      reg.specs = reg.specs.map((s) =>
        s.id === 'narrow-a'
          ? { ...s, subscribe: ['devices/narrow-a/#'] }
          : s.id === 'narrow-b'
            ? { ...s, subscribe: ['devices/narrow-b/#'], publish: ['devices/narrow-b/status'] }
            : s,
      );
      reg.write();
      const { c, ms } = await aClosed;
      t.ok(c, 'narrow-a, subscribed to broadcast/#, was disconnected');
      t.ok(ms < 1000, `within a second of the edit (${ms} ms)`);
      const why = await eventually(
        'the log line',
        () => proxy.logs.find((l) => typeof l.msg === 'string' && l.msg.startsWith('disconnected MQTT device narrow-a:')),
        3000,
      );
      t.match(why, { msg: /"broadcast\/#" is outside its new subscribe filters/ }, 'an info line names the subscription');
      t.notOk(await closedWithin(b.client, 700), 'narrow-b, whose subscription still fits, stays connected');
      const again = await x.raw('narrow-a-2', reg.login('narrow-a'));
      again.raw.send({
        cmd: 'subscribe',
        messageId: 1,
        subscriptions: [
          { topic: 'broadcast/#', qos: 1 },
          { topic: 'devices/narrow-a/#', qos: 1 },
        ],
      });
      t.same(
        ((await again.raw.next('suback')) as Packet & { granted: number[] }).granted,
        [128, 1],
        'reconnected, it gets only what the new filters allow',
      );
      again.raw.socket.destroy();
      // narrow-b's publish filters were narrowed too: the next publish outside them closes its connection.
      await b.client.publishAsync('devices/narrow-b/status', '1', { qos: 1 });
      b.client.publish('devices/narrow-b/other', '2', { qos: 1 });
      t.ok(await closedWithin(b.client, 3000), 'a publish outside the narrowed publish filters closes the connection');
      await x.arrived('devices/narrow-b/status');
      t.same(x.atCloud('devices/narrow-b/other'), []);
      t.notOk(steadyClosed, 'the other devices stay connected');
    },
  );

  await t.test(
    'a persistent session restored under narrowed subscribe filters: nothing outside them is delivered, queued or live; what is inside still is',
    async (t) => {
      // Witnesses: the broker's $SYS notice that a client left (monitor may read $SYS/#), and local
      // delivery itself (root may subscribe to #), so that each step starts once the one before is done.
      const sys = (await x.raw('monitor-sys', reg.login('monitor'))).raw;
      t.teardown(() => sys.socket.destroy());
      sys.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: '$SYS/+/disconnect/clients', qos: 0 }] });
      t.same(((await sys.next('suback')) as Packet & { granted: number[] }).granted, [0]);
      const local = (await x.raw('root-witness', reg.login('root'))).raw;
      t.teardown(() => local.socket.destroy());
      local.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: '#', qos: 0 }] });
      t.same(((await local.next('suback')) as Packet & { granted: number[] }).granted, [0]);
      const deliveredLocally = (topic: string): Promise<unknown> =>
        eventually(`${topic} delivered locally`, () => publishes(local).some((p) => p.topic === topic), 10_000);

      // The first session: inside both of its subscribe filters, at QoS 1; then a clean DISCONNECT.
      const first = await connectOutcome(x.url, { clientId: 'sleeper-1', clean: false, ...reg.login('sleeper') });
      if (!first.ok) throw first.error;
      t.notOk(first.sessionPresent, 'a new persistent session');
      t.same(
        (await first.client.subscribeAsync({ 'broadcast/#': { qos: 1 }, 'devices/sleeper/#': { qos: 1 } })).map((g) => g.qos),
        [1, 1],
        'broadcast/# and devices/sleeper/# granted at QoS 1',
      );
      await first.client.endAsync();
      await eventually('the broker saw it leave', () => publishes(sys).some((p) => p.payload.toString().endsWith('sleeper-1')), 10_000);

      // Narrowed while it is away: broadcast/# is no longer among its subscribe filters.
      const mark = proxy.logs.length;
      reg.specs = reg.specs.map((s) => (s.id === 'sleeper' ? { ...s, subscribe: ['devices/sleeper/#'] } : s));
      reg.write();
      await eventually(
        'the registry reloaded',
        () =>
          proxy.logs
            .slice(mark)
            .some((l) => l.msg === 'device registry changed' && (l.filtersChanged as string[] | undefined)?.includes('sleeper')),
        10_000,
      );
      // While it is away, both at QoS 1: a broadcast (outside its filters now), then a command (inside them).
      t.equal((await x.pub([...reg.creds('ops'), '-q', '1', '-t', 'broadcast/news', '-m', 'while away'])).code, 0);
      await deliveredLocally('broadcast/news');
      t.equal((await x.pub([...reg.creds('root'), '-q', '1', '-t', 'devices/sleeper/cmd/queued', '-m', 'queued'])).code, 0);
      await deliveredLocally('devices/sleeper/cmd/queued');

      // Back with the same client id and clean=false.
      const { raw, connack } = await x.raw('sleeper-1', { clean: false, ...reg.login('sleeper') });
      t.teardown(() => raw.socket.destroy());
      t.match(connack, { returnCode: 0, sessionPresent: true }, 'it finds its session');
      await eventually(
        'the command queued inside its filters',
        () => publishes(raw).some((p) => p.topic === 'devices/sleeper/cmd/queued'),
        10_000,
      );
      await sleep(1500);
      t.same(
        publishes(raw).map((p) => `${p.topic} ${p.payload.toString()}`),
        ['devices/sleeper/cmd/queued queued'],
        'the queued command is delivered; the broadcast queued before it is not',
      );

      // Live, still holding devices/sleeper/#: a broadcast is not forwarded, a command is.
      t.equal((await x.pub([...reg.creds('ops'), '-q', '1', '-t', 'broadcast/live', '-m', 'live'])).code, 0);
      await deliveredLocally('broadcast/live');
      t.equal((await x.pub([...reg.creds('root'), '-q', '1', '-t', 'devices/sleeper/cmd', '-m', 'open'])).code, 0);
      await eventually('the live command', () => publishes(raw).some((p) => p.topic === 'devices/sleeper/cmd'), 10_000);
      await sleep(300);
      const topics = publishes(raw).map((p) => p.topic);
      t.same(topics, ['devices/sleeper/cmd/queued', 'devices/sleeper/cmd'], 'the two commands and nothing else');
      t.ok(
        topics.every((tp) => topicMatches('devices/sleeper/#', tp)),
        `nothing outside its subscribe filters was ever forwarded (${topics.join(', ')})`,
      );
      t.notOk(raw.socket.destroyed, 'it stayed connected');
      for (const p of publishes(raw)) if (p.qos > 0) raw.send({ cmd: 'puback', messageId: p.messageId });
      raw.send({ cmd: 'disconnect' });
      t.notOk(steadyClosed, 'the other devices stay connected');
    },
  );

  await t.test(
    'a malformed registry changes nothing: connected devices stay, old tokens work, the error names file:line:col',
    async (t) => {
      const p8 = await connectOutcome(x.url, { clientId: 'pump8-stays', ...reg.login('pump-8') });
      if (!p8.ok) throw new Error('pump-8 connects');
      t.teardown(() => p8.client.end(true));
      const devicesBefore = await x.metric('edge_registry_devices');
      const failuresBefore = await x.metric('edge_registry_reload_failures_total');
      // The current devices minus pump-8, plus a new valid device, and one entry with a misspelt key on a known line.
      const newbie = makeToken('newbie');
      const entries = reg.specs
        .filter((s) => s.id !== 'pump-8')
        .map((s) => ({
          id: s.id,
          tokenSha256: hashToken(reg.tokens[s.id]!),
          ...(s.publish ? { publish: s.publish } : {}),
          ...(s.subscribe ? { subscribe: s.subscribe } : {}),
          ...(s.attrs ? { attrs: s.attrs } : {}),
        }))
        .concat([{ id: 'newbie', tokenSha256: hashToken(newbie) }]);
      const good = stringify(entries);
      const badLine = good.split('\n').length + 1; // `- id: broken` is on the line after the last one of `good`
      const mark = proxy.logs.length;
      writeRaw(reg.file, `${good}- id: broken\n  tokenSha265: ${'0'.repeat(64)}\n`);
      const line = (await eventually(
        'the registry error is logged',
        () => proxy.logs.slice(mark).find((l) => l.level === 'error' && typeof l.msg === 'string' && l.msg.includes('nothing changed')),
        5000,
      ))!;
      t.match(String(line.msg), `${reg.file}:${badLine}:3:`, 'the error names the file, line and column of the misspelt key');
      t.match(String(line.msg), /tokenSha265/);
      t.notOk(await closedWithin(p8.client, 1200), 'pump-8, missing from the bad file, stays connected');
      t.notOk(steadyClosed, 'the other devices stay connected');
      const run = await x.pub([...reg.creds('pump-8'), '-q', '1', '-t', 'devices/pump-8/still-here', '-m', '1']);
      t.equal(run.code, 0, 'and its token still works for a new connection');
      await x.arrived('devices/pump-8/still-here');
      t.equal(
        (await x.raw('newbie-1', login('newbie', newbie))).connack.returnCode,
        5,
        'a device only the bad file adds is not admitted: CONNACK 5',
      );
      t.equal(await x.metric('edge_registry_devices'), devicesBefore, 'edge_registry_devices unchanged');
      t.equal(
        (await x.metric('edge_registry_reload_failures_total')) - failuresBefore,
        1,
        'edge_registry_reload_failures_total +1 (operations.md)',
      );
      // Fixed again: the registry follows the file once more.
      const fixed = proxy.logs.length;
      reg.write();
      await eventually(
        'the fixed registry is read',
        () =>
          proxy.logs
            .slice(fixed)
            .some((l) => l.msg === 'device registry re-read; no device changed' || l.msg === 'device registry changed'),
        5000,
      );
      t.notOk(steadyClosed, 'steady stayed connected through every edit');
    },
  );
});

t.test('open mode over TCP', async (t) => {
  const dir = t.testdir();
  const { url: cloudUrl, up } = await cloudFor(t, dir);
  // A registry file is there, but open mode does not read it.
  const file = join(dir, 'devices.yaml');
  writeRegistry(file, [{ id: 'listed' }]);
  const proxy = await startProxy(dir, { uplink: { url: cloudUrl }, auth: { mode: 'open' }, devicesFile: file });
  t.teardown(() => proxy.stop());
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);
  const x = toolsFor(proxy, up);

  await t.test(
    'anything is admitted: a wrong token, an unknown device, no credentials; the device id is the username, else the client id',
    async (t) => {
      for (const [clientId, extra, what] of [
        ['o-1', login('pump-7', 'pump-7.wrong'), 'a wrong token'],
        ['o-2', login('ghost', 'anything'), 'an unknown device'],
        ['o-3', {}, 'no credentials'],
      ] as const) {
        const { raw, connack } = await x.raw(clientId, extra);
        t.equal(connack.returnCode, 0, `${what}: CONNACK 0`);
        raw.send({ cmd: 'pingreq' });
        await raw.next('pingresp');
        raw.socket.destroy();
      }
      const named = await x.pub(['-u', 'nobody', '-P', 'whatever', '-i', 'cid-x', '-q', '1', '-t', 'devices/nobody/x', '-m', '1']);
      t.equal(named.code, 0);
      t.equal((await x.arrived('devices/nobody/x')).deviceId, 'nobody', 'the username is the device id');
      const bare = await x.pub(['-i', 'cid-only', '-q', '1', '-t', 'devices/cid-only/x', '-m', '1']);
      t.equal(bare.code, 0);
      t.equal((await x.arrived('devices/cid-only/x')).deviceId, 'cid-only', 'else the client id');
      const spaced = await x.pub(['-i', 'my sensor 1', '-q', '1', '-t', 'devices/spaced/x', '-m', '1']);
      t.equal(spaced.code, 0, 'a client id with spaces is accepted');
      const hash = createHash('sha256').update('my sensor 1').digest('hex').slice(0, 16);
      t.equal((await x.arrived('devices/spaced/x')).deviceId, `my_sensor_1-${hash}`, 'and gets a derived device id');
      t.equal(await x.metric('edge_auth_failures_total'), 0, 'no auth failure counted in open mode');
    },
  );

  await t.test('publishes go anywhere but $ topics, which are acknowledged and dropped', async (t) => {
    const droppedBefore = await x.metric('edge_messages_dropped_total', 'reason="reserved_topic"');
    t.equal((await x.pub(['-u', 'pump-7', '-q', '1', '-t', 'devices/pump-8/cmd', '-m', 'cross'])).code, 0);
    t.equal((await x.arrived('devices/pump-8/cmd')).deviceId, 'pump-7', "another device's topic is allowed in open mode");
    const dollar = await x.pub(['-u', 'pump-7', '-q', '1', '-t', '$SYS/forged', '-m', 'forged']);
    t.equal(dollar.code, 0, 'mosquitto_pub to $SYS/forged exits 0');
    const { raw } = await x.raw('o-dollar', login('pump-7', 'x'));
    raw.send({ cmd: 'publish', topic: '$edge/rules/set', payload: Buffer.from('forged'), qos: 1, messageId: 1 });
    t.match(await raw.next('puback'), { messageId: 1 });
    raw.send({ cmd: 'publish', topic: 'devices/pump-7/after-dollar', payload: Buffer.from('1'), qos: 1, messageId: 2 });
    t.match(await raw.next('puback'), { messageId: 2 }, 'the connection stayed');
    await x.arrived('devices/pump-7/after-dollar');
    t.equal((await x.metric('edge_messages_dropped_total', 'reason="reserved_topic"')) - droppedBefore, 2);
    t.notOk(x.envelopes().some((e) => e.topic.startsWith('$')));
    raw.socket.destroy();
  });

  await t.test('subscriptions: # and $SYS/# are granted, $edge/# is refused', async (t) => {
    const { raw } = await x.raw('o-subs', login('watcher', 'x'));
    raw.send({
      cmd: 'subscribe',
      messageId: 1,
      subscriptions: [
        { topic: '#', qos: 1 },
        { topic: '$SYS/#', qos: 0 },
        { topic: '$edge/#', qos: 1 },
      ],
    });
    t.same(((await raw.next('suback')) as Packet & { granted: number[] }).granted, [1, 0, 128]);
    const all = x.subStart(['-u', 'sub-cli', '-t', '#', '-v', '-C', '1', '-W', '20', '-d']);
    t.teardown(() => all.stop());
    await eventually('mosquitto_sub subscribed', () => all.stdout().includes('received SUBACK'), 10_000);
    t.equal((await x.pub(['-u', 'lamp-9', '-q', '1', '-t', 'devices/lamp-9/x', '-m', 'hi'])).code, 0);
    const got = await all.exited;
    t.same(messageLines(got.stdout), ['devices/lamp-9/x hi'], 'mosquitto_sub -t "#" receives a device\'s message');
    t.ok(
      await eventually(
        'a $SYS message and the device message',
        () => {
          const topics = raw.packets.filter((p): p is Packet & { topic: string } => p.cmd === 'publish').map((p) => p.topic);
          return topics.some((tp) => /^\$SYS\/[^/]+\/new\/clients$/.test(tp)) && topics.includes('devices/lamp-9/x');
        },
        5000,
      ),
      'the raw subscriber got $SYS/.../new/clients and the device message',
    );
    raw.socket.destroy();
  });

  await t.test(
    'local delivery: a device message reaches each local subscriber exactly once, counted in edge_local_deliveries_total',
    async (t) => {
      const cli = x.subStart(['-i', 'watcher-cli', '-q', '1', '-t', 'devices/lamp-1/#', '-v', '-d']);
      t.teardown(() => cli.stop());
      await eventually('mosquitto_sub subscribed', () => cli.stdout().includes('received SUBACK'));
      // One client with two overlapping subscriptions, both QoS 1.
      const mq = await connectClient(x.port, { clientId: 'watcher-mq' });
      t.teardown(() => mq.endAsync(true));
      const got: Array<{ topic: string; qos: number }> = [];
      mq.on('message', (topic, _p, packet) => got.push({ topic, qos: packet.qos }));
      await mq.subscribeAsync({ 'devices/lamp-1/#': { qos: 1 }, 'devices/+/state': { qos: 1 } });
      // A second one whose overlapping subscriptions differ in QoS.
      const mixed = await connectClient(x.port, { clientId: 'watcher-mixed' });
      t.teardown(() => mixed.endAsync(true));
      const mixedGot: number[] = [];
      mixed.on('message', (_t, _p, packet) => mixedGot.push(packet.qos));
      await mixed.subscribeAsync({ 'devices/lamp-1/#': { qos: 0 } });
      await mixed.subscribeAsync({ 'devices/+/state': { qos: 1 } });
      const before = await x.metric('edge_local_deliveries_total', 'protocol="mqtt"');
      t.equal((await x.pub(['-i', 'lamp-1', '-q', '1', '-t', 'devices/lamp-1/state', '-m', 'on'])).code, 0);
      await eventually(
        'both subscribers got it',
        () => cli.stdout().includes('devices/lamp-1/state on') && got.length > 0 && mixedGot.length > 0,
      );
      await sleep(500);
      t.equal(
        cli
          .stdout()
          .split('\n')
          .filter((l) => l === 'devices/lamp-1/state on').length,
        1,
        'mosquitto_sub got it once',
      );
      // Whose delivery this is: aedes's own fan-out of a device publish is switched off, and the
      // pipeline hands each accepted message back once (publishLocal). Were both on, every subscriber
      // would get two copies (two publishes are not deduplicated); were the pipeline's missing, nobody
      // would get it and the counter would not move.
      // MQTT 3.1.1 §3.3.5 allows one copy per matching subscription but requires only one; the proxy
      // (aedes delivering the pipeline's message) sends one copy per client, not per subscription.
      t.same(got, [{ topic: 'devices/lamp-1/state', qos: 1 }], 'a client with two overlapping subscriptions gets one copy');
      t.equal(mixedGot.length, 1, 'overlapping subscriptions of different QoS: one copy too');
      t.equal(mixedGot[0], 1, 'at the highest QoS of the matching subscriptions [MQTT-3.3.5-1]', {
        todo: 'aedes sends the one copy at the QoS of one matching subscription, not the highest (moscajs/aedes#1074)',
      });
      t.equal(
        (await x.metric('edge_local_deliveries_total', 'protocol="mqtt"')) - before,
        1,
        'edge_local_deliveries_total{protocol="mqtt"} +1: handed once to local delivery',
      );
    },
  );

  await t.test('a retained message from one device reaches a later subscriber (mosquitto_sub) with the retain flag', async (t) => {
    const live = await connectClient(x.port, { clientId: 'live-watcher' });
    t.teardown(() => live.endAsync(true));
    const liveGot = await collect(live, 'devices/lamp-2/state');
    t.equal((await x.pub(['-i', 'lamp-2', '-q', '1', '-r', '-t', 'devices/lamp-2/state', '-m', 'off'])).code, 0);
    await eventually('the live subscriber got it', () => liveGot.messages.length > 0);
    t.equal(liveGot.messages[0]!.retain, false, 'a subscriber already there gets it with retain=0 [MQTT-3.3.1-9]');
    const later = await x.sub(['-i', 'later', '-t', 'devices/lamp-2/#', '-F', '%r %t %p %q', '-C', '1', '-W', '5']);
    t.equal(later.code, 0);
    t.match(later.stdout, /^1 devices\/lamp-2\/state off \d\n$/, 'a later mosquitto_sub gets it with the retain flag');
    t.equal(later.stdout.trim().slice(-1), '0', "at most at the subscription's QoS 0 [MQTT-3.8.4-6]", {
      todo: 'aedes delivers a retained message matched by a wildcard filter at its stored QoS: its downgrade looks the subscription up by the topic',
    });
    const exact = await x.sub(['-i', 'later-exact', '-t', 'devices/lamp-2/state', '-F', '%r %q %p', '-C', '1', '-W', '5']);
    t.equal(exact.stdout, '1 0 off\n', "once, at the subscription's QoS 0");
  });

  await t.test('the registry file is not consulted: editing it disconnects nobody', async (t) => {
    const listed = await connectOutcome(x.url, { clientId: 'listed-1', username: 'listed' });
    const unlisted = await connectOutcome(x.url, { clientId: 'unlisted-1', username: 'unlisted' });
    if (!listed.ok || !unlisted.ok) throw new Error('both connect');
    t.teardown(() => {
      listed.client.end(true);
      unlisted.client.end(true);
    });
    writeRegistry(file, [{ id: 'someone-else' }]);
    t.notOk(await closedWithin(listed.client, 1500), 'a device removed from the file stays connected');
    t.ok(unlisted.client.connected);
    t.notOk(
      proxy.logs.some((l) => l.msg === 'device registry changed'),
      'no registry is followed in open mode',
    );
  });
});
