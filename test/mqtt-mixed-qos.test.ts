// A subscriber gets every message of a burst that mixes QoS 0 and QoS 1 (docs/architecture.md:
// local delivery gives each accepted message to every subscriber once). QoS 1 messages reach aedes's
// subscribers through its session store, after QoS 0 messages published later went straight out;
// aedes took the late ones for copies from another broker of a cluster and dropped them.
import t from 'tap';
import { startProxy } from './helpers/proxy.js';
import { collect, connectClient } from './helpers/clients.js';
import { eventually } from './helpers/ports.js';

t.test('20 devices publishing QoS 0 and QoS 1 interleaved: a QoS 1 subscriber gets every message once', async (t) => {
  const dir = t.testdir();
  const proxy = await startProxy(dir);
  t.teardown(() => proxy.stop());
  const watcher = await connectClient(proxy.ports.mqtt, { clientId: 'watcher' });
  t.teardown(() => watcher.endAsync());
  const seen = await collect(watcher, 'devices/+/telemetry', 1);
  const devices = await Promise.all(Array.from({ length: 20 }, (_, i) => connectClient(proxy.ports.mqtt, { clientId: `mix-${i}` })));
  t.teardown(() => Promise.all(devices.map((d) => d.endAsync())));
  const sent: string[] = [];
  const acks: Promise<unknown>[] = [];
  for (let round = 0; round < 50; round++) {
    for (const [i, device] of devices.entries()) {
      const payload = `${i}:${round}`;
      sent.push(payload);
      acks.push(device.publishAsync(`devices/mix-${i}/telemetry`, payload, { qos: (round + i) % 2 === 0 ? 0 : 1 }));
    }
  }
  await Promise.all(acks);
  await eventually(`the subscriber got all ${sent.length}`, () => seen.messages.length >= sent.length, 15_000).catch(() => undefined);
  const got = seen.messages.map((m) => m.payload.toString());
  t.equal(got.length, sent.length, `every message arrived (${got.length} of ${sent.length})`);
  t.same([...got].sort(), [...sent].sort(), 'each exactly once');
});
