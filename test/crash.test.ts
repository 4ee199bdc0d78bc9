// Store-and-forward under fire (docs/cache.md, guarantees 1 to 4): devices publish QoS 1
// continuously while the proxy is killed with SIGKILL at random moments and the cloud broker
// goes up and down. At the end every message a device got a PUBACK for is at the cloud; a
// message seen twice is one the proxy resent (same id); order per device and priority holds.
// CRASH_LOOPS sets the number of kills (default 4 here; raise it for a long run).
import t from 'tap';
import { cloudWithChecker } from './helpers/mosquitto.js';
import { startProxy } from './helpers/proxy.js';
import { startRawDevice, type RawDevice } from './helpers/raw-device.js';
import { eventually, freePort, sleep } from './helpers/ports.js';

interface Envelope {
  id: string;
  deviceId: string;
  topic: string;
  payload: { seq: number };
}

const LOOPS = Number(process.env.CRASH_LOOPS ?? 4);

t.test(
  `kill -9 at random moments (${LOOPS} times) while the cloud flaps loses no acknowledged message`,
  { timeout: 60_000 + LOOPS * 15_000 },
  async (t) => {
    const dir = t.testdir();
    const { cloud, up } = await cloudWithChecker(t, dir);

    const mqttPort = await freePort();
    const proxy = await startProxy(dir, {
      mqtt: { port: mqttPort },
      uplink: { url: cloud.url, maxInflight: 32 },
      routing: {
        priorities: [
          { topic: 'devices/+/alarm', priority: 'critical' },
          { topic: 'devices/+/debug', priority: 'low' },
        ],
      },
      log: { level: 'warn' },
    });
    t.teardown(() => proxy.stop());

    // Each device mixes priorities: every 7th message an alarm, every 5th a debug line.
    const topic =
      (id: string) =>
      (seq: number): string =>
        `devices/${id}/${seq % 7 === 0 ? 'alarm' : seq % 5 === 0 ? 'debug' : 'telemetry'}`;
    const devices: RawDevice[] = ['crash-a', 'crash-b', 'crash-c', 'crash-d'].map((id, i) =>
      startRawDevice({ port: () => mqttPort, id, inflight: 1 + i, topics: topic(id) }),
    );
    t.teardown(() => devices.forEach((d) => d.stop()));

    let cloudUp = true;
    for (let loop = 0; loop < LOOPS; loop++) {
      await sleep(300 + Math.random() * 1200);
      if (Math.random() < 0.5) {
        if (cloudUp) await cloud.stop();
        else await cloud.start();
        cloudUp = !cloudUp;
        await sleep(Math.random() * 500);
      }
      await proxy.kill9();
      await sleep(Math.random() * 300);
      await proxy.restart();
    }
    await sleep(500);
    devices.forEach((d) => d.stop());
    if (!cloudUp) await cloud.start();

    const acked = devices.flatMap((d) => [...d.acked.keys()].map((seq) => `${d.id}/${seq}`));
    t.ok(acked.length > (100 * LOOPS) / 4, `${acked.length} messages were acknowledged across ${LOOPS} kills`);
    const arrived = (): Set<string> => new Set(up.json<Envelope>().map((e) => `${e.deviceId}/${e.payload.seq}`));
    await eventually(
      'every acknowledged message at the cloud',
      () => {
        const a = arrived();
        return acked.every((k) => a.has(k));
      },
      60_000,
    ).catch(() => {});
    const seen = arrived();
    const missing = acked.filter((k) => !seen.has(k));
    t.same(missing, [], `no acknowledged message is missing (${up.messages.length} envelopes received)`);

    const envelopes = up.json<Envelope>();
    const idsOf = new Map<string, Set<string>>();
    for (const e of envelopes) {
      const k = `${e.deviceId}/${e.payload.seq}`;
      if (!idsOf.has(k)) idsOf.set(k, new Set());
      idsOf.get(k)!.add(e.id);
    }
    const twoIds = [...idsOf].filter(([, ids]) => ids.size > 1).map(([k]) => k);
    t.same(twoIds, [], 'every copy carries the id of its original: only the proxy resends');
    t.ok(envelopes.length >= idsOf.size, `${envelopes.length - idsOf.size} copies resent after crashes`);

    // Order: within one device and one priority, first arrivals come in sequence order.
    const firsts = new Map<string, number[]>();
    const counted = new Set<string>();
    for (const e of envelopes) {
      const k = `${e.deviceId}/${e.payload.seq}`;
      if (counted.has(k)) continue;
      counted.add(k);
      const lane = `${e.deviceId} ${e.topic.split('/')[2]}`;
      if (!firsts.has(lane)) firsts.set(lane, []);
      firsts.get(lane)!.push(e.payload.seq);
    }
    const outOfOrder = [...firsts].filter(([, s]) => s.some((v, i) => i > 0 && v < s[i - 1]!)).map(([lane]) => lane);
    t.same(outOfOrder, [], `order kept in all ${firsts.size} device/priority lanes`);
  },
);
