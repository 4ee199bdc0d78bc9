// Hot swap under load: rulesets are pushed again and again while devices publish as fast as the
// proxy acknowledges. From what reaches the cloud (a real Mosquitto) the test checks that each
// message was evaluated wholly by one version (three rules in two files agree on it), that versions
// only move forward, that a window carried over every swap without missing a message, and that
// no acknowledged message was lost.
import t from 'tap';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startProxy } from './helpers/proxy.js';
import { cloudWithChecker } from './helpers/mosquitto.js';
import { connectClient } from './helpers/clients.js';
import { eventually } from './helpers/ports.js';
import { pushFiles } from './helpers/admin.js';

const DEVICES = 16;
const SECONDS = Number(process.env.SWAP_SECONDS ?? 8);

/** Version k of the set: the same three rules, each stamping k; `counted` keeps its window expression. */
function ruleset(k: number): Record<string, string> {
  return {
    'a.rules': `rule stamp_a\nwhen msg.topic matches "devices/+/telemetry"\nthen uplink(topic = "a/" + msg.deviceId, payload = { k: ${k}, seq: payload.seq })\nend\n`,
    'b.rules':
      `rule stamp_b\nwhen msg.topic matches "devices/+/telemetry"\nthen uplink(topic = "b/" + msg.deviceId, payload = { k: ${k}, seq: payload.seq })\nend\n\n` +
      `rule counted\nwhen msg.topic matches "devices/+/telemetry"\nthen uplink(topic = "c/" + msg.deviceId, payload = { k: ${k}, seq: payload.seq, n: count(1h) })\nend\n`,
  };
}

interface Stamp {
  k: number;
  seq: number;
  n?: number;
}

t.test('many pushes while messages flow: one version per message, state carried over, nothing lost', async (t) => {
  const dir = t.testdir();
  const { cloud, up } = await cloudWithChecker(t, dir);
  mkdirSync(join(dir, 'rules'));
  for (const [name, text] of Object.entries(ruleset(0))) writeFileSync(join(dir, 'rules', name), text);
  const proxy = await startProxy(dir, { uplink: { url: cloud.url }, log: { level: 'info' } });
  t.teardown(() => proxy.stop());
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);

  // Devices: each publishes its next reading as soon as the last one is acknowledged.
  let running = true;
  const acked = new Array<number>(DEVICES).fill(0);
  const devices = await Promise.all(Array.from({ length: DEVICES }, (_, d) => connectClient(proxy.ports.mqtt, { clientId: `swap-${d}` })));
  t.teardown(() => Promise.all(devices.map((c) => c.endAsync())));
  const loops = devices.map(async (client, d) => {
    while (running) {
      await client.publishAsync(`devices/swap-${d}/telemetry`, JSON.stringify({ seq: acked[d]! + 1 }), { qos: 1 });
      acked[d]!++;
    }
  });

  // Meanwhile: a new version every few tens of milliseconds, a repeated one now and then (no
  // version), and a broken one (nothing changes).
  const applied: number[] = [];
  let k = 0;
  let rejected = 0;
  const deadline = Date.now() + SECONDS * 1000;
  while (Date.now() < deadline) {
    if (k % 7 === 6) {
      const bad = await pushFiles(proxy, { ...ruleset(k + 1), 'b.rules': 'rule stamp_b\nwhen\nthen drop()\nend\n' });
      t.equal(bad.status, 422);
      rejected++;
    }
    if (k % 5 === 4) t.equal((await pushFiles(proxy, ruleset(k))).body.changed, false);
    const r = await pushFiles(proxy, ruleset(++k));
    t.equal(r.status, 200);
    applied.push(r.body.version as number);
    await new Promise((resolve) => setTimeout(resolve, 30));
  }
  running = false;
  await Promise.all(loops);
  const total = acked.reduce((a, b) => a + b, 0);
  t.ok(k >= 20, `${k} versions were pushed during the run`);
  t.ok(total >= 2000, `${total} messages were acknowledged during the run`);
  t.same(
    applied,
    applied.map((_, i) => i + 2),
    'each accepted push got the next version number',
  );

  // Every acknowledged message produced its three uplinks; wait for all of them.
  await eventually(`all ${3 * total} uplinks at the cloud`, () => up.messages.length >= 3 * total, 60_000);
  const byMessage = new Map<string, { a?: Stamp; b?: Stamp; c?: Stamp }>();
  for (const m of up.messages) {
    const env = JSON.parse(m.payload.toString()) as { deviceId: string; topic: string; payload: Stamp };
    const rule = env.topic.split('/')[0] as 'a' | 'b' | 'c';
    const key = `${env.deviceId}#${env.payload.seq}`;
    const entry = byMessage.get(key) ?? {};
    entry[rule] = env.payload;
    byMessage.set(key, entry);
  }
  let missing = 0;
  let mixed = 0;
  let backwards = 0;
  let windowGaps = 0;
  const versionsSeen = new Set<number>();
  for (let d = 0; d < DEVICES; d++) {
    let lastK = -1;
    for (let seq = 1; seq <= acked[d]!; seq++) {
      const e = byMessage.get(`swap-${d}#${seq}`);
      if (!e?.a || !e.b || !e.c) {
        missing++;
        continue;
      }
      if (e.a.k !== e.b.k || e.b.k !== e.c.k) mixed++;
      if (e.a.k < lastK) backwards++;
      if (e.c.n !== seq) windowGaps++;
      lastK = e.a.k;
      versionsSeen.add(e.a.k);
    }
  }
  t.equal(missing, 0, 'no acknowledged message lost any of its uplinks');
  t.equal(mixed, 0, 'each message was evaluated wholly by one version (rules in two files agree)');
  t.equal(backwards, 0, "a device's messages never went back to an older version");
  t.equal(windowGaps, 0, 'count(1h) of the unchanged rule counted every message across every swap');
  t.equal(byMessage.size, total, 'no message that was not acknowledged showed up');
  t.ok(versionsSeen.size >= 10, `messages were evaluated by ${versionsSeen.size} different versions`);
  t.equal(await proxy.metric('edge_rules_reload_failures_total'), rejected, 'every broken push was refused and counted');
  t.equal(await proxy.metric('edge_rules_version'), k + 1, 'the last push runs');
});
