// Draining a backlog (docs/cache.md, guarantees 2 to 5): priorities first, maxRate, a disconnect
// in the middle, bounds seen from a device. Real proxy, real Mosquitto, real clients.
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import { cloudWithChecker, type Mosquitto } from './helpers/mosquitto.js';
import { startProxy, CLI, type ProxyProcess } from './helpers/proxy.js';
import { connectClient, type Collected } from './helpers/clients.js';
import { connectPacket, rawClient } from './helpers/raw.js';
import { eventually, sleep } from './helpers/ports.js';

interface Envelope {
  id: string;
  topic: string;
  payload: { seq: number };
}
const PRIORITIES = [
  { topic: 'devices/+/alarm/#', priority: 'critical' },
  { topic: 'devices/+/event', priority: 'high' },
  { topic: 'devices/+/debug/#', priority: 'low' },
];

/** A proxy whose cloud is down while a device fills the cache; the checker keeps a persistent session. */
async function backlog(
  t: Test,
  uplink: Record<string, unknown>,
  fill: (publish: (topic: string, seq: number) => Promise<void>) => Promise<void>,
): Promise<{ cloud: Mosquitto; proxy: ProxyProcess; up: Collected }> {
  const dir = t.testdir();
  const { cloud, up } = await cloudWithChecker(t, dir);
  await cloud.stop();
  const proxy = await startProxy(dir, { uplink: { url: cloud.url, ...uplink }, routing: { priorities: PRIORITIES } });
  t.teardown(() => proxy.stop());
  const device = await connectClient(proxy.ports.mqtt, { clientId: 'filler' });
  await fill(async (topic, seq) => {
    await device.publishAsync(topic, JSON.stringify({ seq }), { qos: 1 });
  });
  await device.endAsync();
  return { cloud, proxy, up };
}

t.test('a backlog drains the highest priority first, each priority in arrival order', async (t) => {
  const kinds = ['telemetry', 'debug/x', 'alarm/smoke', 'event'];
  const { cloud, proxy, up } = await backlog(t, { maxInflight: 4 }, async (publish) => {
    for (let seq = 1; seq <= 80; seq++) await publish(`devices/filler/${kinds[seq % 4]}`, seq);
  });
  t.equal(await proxy.metric('edge_cache_messages', 'priority="critical"'), 20);
  t.equal(await proxy.metric('edge_cache_messages', 'priority="low"'), 20);
  const status = spawnSync(process.execPath, [CLI, 'status', '--config', proxy.configFile], { encoding: 'utf8' });
  t.match(status.stdout, /cache: +80 messages, \d+ bytes, oldest \d+ s/, 'edge-proxy status shows the backlog');
  t.match(status.stdout, /not draining now \(the uplink is not connected\)/);

  await cloud.start();
  await eventually('all 80 at the cloud', () => up.messages.length >= 80, 30_000);
  const order = up.json<Envelope>().map((e) => e.topic.split('/')[4]);
  const rank = (k: string | undefined): number =>
    (({ alarm: 0, event: 1, telemetry: 2, debug: 3 }) as Record<string, number>)[k ?? ''] ?? 9;
  const ranks = order.map(rank);
  // With 4 publishes in flight, a lower priority may only start once the higher ones are all sent.
  t.same(
    ranks,
    [...ranks].sort((a, b) => a - b),
    'critical, then high, then normal, then low',
  );
  for (const kind of ['alarm', 'event', 'telemetry', 'debug']) {
    const seqs = up
      .json<Envelope>()
      .filter((e) => e.topic.includes(`/${kind}`))
      .map((e) => e.payload.seq);
    t.same(
      seqs,
      [...seqs].sort((a, b) => a - b),
      `${kind} in arrival order`,
    );
  }
});

t.test('uplink.maxRate paces the drain', async (t) => {
  const { cloud, up } = await backlog(t, { maxRate: 40 }, async (publish) => {
    for (let seq = 1; seq <= 100; seq++) await publish('devices/filler/telemetry', seq);
  });
  await cloud.start();
  await eventually('the first at the cloud', () => up.messages.length > 0, 15_000);
  const started = Date.now();
  await eventually('all 100 at the cloud', () => up.messages.length >= 100, 30_000);
  const seconds = (Date.now() - started) / 1000;
  // 100 messages at 40/s with a one-second burst: at least (100 - 40) / 40 = 1.5 s.
  t.ok(seconds >= 1.4, `100 messages took ${seconds.toFixed(2)} s at maxRate 40`);
  t.ok(seconds < 6, 'and not much longer');
});

t.test('a disconnect in the middle of a drain resumes it: nothing lost, copies keep their id', async (t) => {
  const { cloud, proxy, up } = await backlog(t, { maxRate: 100, maxInflight: 8 }, async (publish) => {
    for (let seq = 1; seq <= 300; seq++) await publish('devices/filler/telemetry', seq);
  });
  await cloud.start();
  await eventually('part of the backlog up', () => up.messages.length >= 60, 15_000);
  await cloud.stop();
  const midway = await proxy.metric('edge_cache_messages');
  t.ok(midway > 0 && midway < 300, `${midway} still cached when the link dropped`);
  await sleep(500);
  await cloud.start();
  await eventually('all 300 at the cloud', () => new Set(up.json<Envelope>().map((e) => e.payload.seq)).size >= 300, 30_000);
  const envelopes = up.json<Envelope>();
  const idBySeq = new Map<number, Set<string>>();
  for (const e of envelopes) (idBySeq.get(e.payload.seq) ?? idBySeq.set(e.payload.seq, new Set()).get(e.payload.seq)!).add(e.id);
  t.equal([...idBySeq.values()].filter((ids) => ids.size > 1).length, 0, 'a copy carries its original id');
  const firsts: number[] = [];
  const seen = new Set<number>();
  for (const e of envelopes)
    if (!seen.has(e.payload.seq)) {
      seen.add(e.payload.seq);
      firsts.push(e.payload.seq);
    }
  t.same(
    firsts,
    Array.from({ length: 300 }, (_, i) => i + 1),
    'in order',
  );
  await eventually('the cache empties', async () => (await proxy.metric('edge_cache_messages')) === 0);
});

t.test(
  'cache bounds seen from a device: low messages are evicted for higher ones; when nothing may go, the publish is refused',
  async (t) => {
    const dir = t.testdir();
    const proxy = await startProxy(dir, { cache: { maxBytes: 2048 }, routing: { priorities: PRIORITIES } });
    t.teardown(() => proxy.stop());
    const device = await connectClient(proxy.ports.mqtt, { clientId: 'bounded' });
    const pad = 'x'.repeat(300);
    for (let i = 0; i < 5; i++) await device.publishAsync('devices/bounded/debug/trace', JSON.stringify({ i, pad }), { qos: 1 });
    // 4 alarms of 422 counted bytes fit in 2048; a fifth would need a critical one evicted.
    for (let i = 0; i < 4; i++) await device.publishAsync('devices/bounded/alarm/fire', JSON.stringify({ i, pad }), { qos: 1 });
    t.ok(
      (await proxy.metric('edge_cache_evicted_total', 'priority="low",reason="bytes"')) >= 1,
      'low messages were evicted to make room for critical ones',
    );
    t.equal(await proxy.metric('edge_cache_evicted_total', 'priority="critical"'), 0, 'critical ones never are');
    t.ok((await proxy.metric('edge_cache_bytes')) <= 2048, 'the cache stays within cache.maxBytes');
    await device.endAsync();

    const raw = await rawClient(proxy.ports.mqtt);
    raw.send(connectPacket('bounded-2'));
    await raw.next('connack');
    raw.send({
      cmd: 'publish',
      topic: 'devices/bounded-2/telemetry',
      payload: Buffer.from(JSON.stringify({ pad: 'y'.repeat(1500) })),
      qos: 1,
      messageId: 1,
    });
    await raw.closed;
    t.notOk(
      raw.packets.some((p) => p.cmd === 'puback'),
      'a normal message that would need critical ones evicted is not acknowledged',
    );
    t.equal(await proxy.metric('edge_messages_refused_total', 'reason="cache"'), 1);
    t.equal(await proxy.metric('edge_cache_refused_total'), 1);
    t.ok(
      proxy.logs.some((l) => l.reason === 'cache' && String(l.msg).includes('cache is full')),
      'the log line says why',
    );
  },
);
