// End to end through the built proxy: real MQTT.js devices, a real Mosquitto as the cloud broker.
import t from 'tap';
import { startMosquitto, cloudWithChecker } from './helpers/mosquitto.js';
import { startProxy } from './helpers/proxy.js';
import { connectClient, collect } from './helpers/clients.js';
import { eventually } from './helpers/ports.js';

interface Envelope {
  id: string;
  ts: number;
  deviceId: string;
  topic: string;
  contentType: string;
  payload: unknown;
  edge: string;
}

t.test('a device message reaches the cloud broker in the envelope', async (t) => {
  const dir = t.testdir();
  const cloud = await startMosquitto(`${dir}/cloud`);
  t.teardown(() => cloud.stop());
  const checker = await connectClient(cloud.port);
  t.teardown(() => checker.endAsync());
  const up = await collect(checker, 'edge/test-edge/up/#');
  const status = await collect(checker, 'edge/test-edge/status');
  const proxy = await startProxy(dir, { uplink: { url: cloud.url } });
  t.teardown(() => proxy.stop());
  await eventually('status online', () => status.messages.some((m) => m.payload.toString() === 'online'));

  const device = await connectClient(proxy.ports.mqtt, { clientId: 'pump-7' });
  t.teardown(() => device.endAsync());
  const before = Date.now();
  await device.publishAsync('devices/pump-7/telemetry', JSON.stringify({ temp: 41.5, seq: 1 }), { qos: 1 });
  await device.publishAsync('devices/pump-7/log', 'motor started', { qos: 1 });
  await device.publishAsync('devices/pump-7/raw', Buffer.from([0xff, 0x00, 0xfe]), { qos: 1 });
  await eventually('three envelopes at the cloud', () => up.messages.length >= 3);

  t.same(
    up.messages.map((m) => m.topic),
    ['edge/test-edge/up/devices/pump-7/telemetry', 'edge/test-edge/up/devices/pump-7/log', 'edge/test-edge/up/devices/pump-7/raw'],
  );
  const [json, text, binary] = up.json<Envelope>();
  t.match(json, {
    deviceId: 'pump-7',
    topic: 'devices/pump-7/telemetry',
    contentType: 'json',
    payload: { temp: 41.5, seq: 1 },
    edge: 'test-edge',
  });
  t.match(json!.id, /^[0-9A-HJKMNP-TV-Z]{26}$/, 'the id is a ULID');
  t.ok(json!.ts >= before - 5 && json!.ts <= Date.now(), 'ts is the time the proxy received it');
  t.same(Object.keys(json!).sort(), ['contentType', 'deviceId', 'edge', 'id', 'payload', 'topic', 'ts']);
  t.match(text, { contentType: 'text', payload: 'motor started' });
  t.match(binary, { contentType: 'binary', payload: Buffer.from([0xff, 0x00, 0xfe]).toString('base64') });
  t.ok(json!.id < text!.id && text!.id < binary!.id, 'ids sort in arrival order');
  const late = await connectClient(cloud.port);
  const retained = await collect(late, 'edge/test-edge/status');
  await eventually('retained status for a late subscriber', () => retained.messages.length > 0);
  t.match(retained.messages[0], { retain: true, payload: Buffer.from('online') }, 'a late subscriber sees the retained "online"');
  await late.endAsync();
  t.equal(await proxy.metric('edge_uplink_acked_total'), 3);
  await eventually('cache empty after the cloud acked', async () => (await proxy.metric('edge_cache_messages')) === 0);

  t.equal(await proxy.stop(), 0, 'SIGTERM exits 0');
  await eventually('status offline after a clean stop', () => status.messages.at(-1)?.payload.toString() === 'offline');
});

t.test('with the cloud down, acknowledged messages wait in the cache and arrive in order when it is back', async (t) => {
  const dir = t.testdir();
  const { cloud, up } = await cloudWithChecker(t, dir);
  const proxy = await startProxy(dir, { uplink: { url: cloud.url } });
  t.teardown(() => proxy.stop());
  await eventually('proxy connected to the cloud', async () => (await proxy.metric('edge_uplink_connected')) === 1);

  await cloud.stop();
  await eventually('proxy sees the cloud down', async () => (await proxy.metric('edge_uplink_connected')) === 0);
  const device = await connectClient(proxy.ports.mqtt, { clientId: 'sensor-1' });
  t.teardown(() => device.endAsync());
  for (let seq = 1; seq <= 50; seq++) await device.publishAsync('devices/sensor-1/telemetry', JSON.stringify({ seq }), { qos: 1 });
  t.equal(await proxy.metric('edge_cache_messages'), 50, 'all 50 acknowledged messages are in the cache');
  const status = (await (await fetch(`http://127.0.0.1:${proxy.ports.admin}/api/v1/status`)).json()) as {
    cache: { messages: number };
    uplink: { connected: boolean };
  };
  t.match(status, { cache: { messages: 50 }, uplink: { connected: false } });

  await cloud.start();
  await eventually('all 50 at the cloud', () => up.messages.length >= 50, 30_000);
  t.same(
    up.json<Envelope>().map((e) => (e.payload as { seq: number }).seq),
    Array.from({ length: 50 }, (_, i) => i + 1),
    'in order, each once',
  );
  await eventually('cache drained', async () => (await proxy.metric('edge_cache_messages')) === 0);
});

t.test('kill -9 of the proxy loses no acknowledged message', async (t) => {
  const dir = t.testdir();
  const { cloud, up } = await cloudWithChecker(t, dir);
  await cloud.stop(); // the cloud is down while the device publishes and the proxy is killed

  const proxy = await startProxy(dir, { uplink: { url: cloud.url } });
  t.teardown(() => proxy.stop());
  const acked = new Set<number>();
  const device = await connectClient(proxy.ports.mqtt, { clientId: 'meter-9' });
  device.on('error', () => {});
  let seq = 0;
  const publishing = (async () => {
    for (;;) {
      const n = ++seq;
      try {
        await device.publishAsync('devices/meter-9/telemetry', JSON.stringify({ seq: n }), { qos: 1 });
        acked.add(n);
      } catch {
        return;
      }
      if (!device.connected) return;
    }
  })();
  await eventually('some messages acknowledged', () => acked.size >= 300);
  await proxy.kill9();
  device.end(true); // fails the publish left in flight, which was never acknowledged
  await publishing;
  t.ok(acked.size >= 300, `${acked.size} messages were acknowledged before kill -9`);

  await proxy.restart();
  await cloud.start();
  const missing = (): number[] => {
    const seen = new Set(up.json<Envelope>().map((e) => (e.payload as { seq: number }).seq));
    return [...acked].filter((s) => !seen.has(s));
  };
  await eventually('every acknowledged message at the cloud', () => missing().length === 0, 30_000).catch(() => {});
  t.same(
    missing(),
    [],
    `every acknowledged message at the cloud (${up.messages.length} received; proxy output:\n${proxy
      .output()
      .split('\n')
      .filter((l) => !l.includes('"debug"'))
      .slice(-15)
      .join('\n')})`,
  );
  const envelopes = up.json<Envelope>();
  const seqs = envelopes.map((e) => (e.payload as { seq: number }).seq);
  const ids = new Set(envelopes.map((e) => e.id));
  t.equal(ids.size, new Set(seqs).size, 'a copy, if any, carries the id of its original');
  t.same(
    seqs.filter((s, i) => seqs.indexOf(s) === i),
    [...seqs].filter((s, i) => seqs.indexOf(s) === i).sort((a, b) => a - b),
    'order per device kept',
  );
});
