// The shipped model and example rules end to end, with the cloud down: simulated vibration sensors
// (one bearing developing a fault) → the proxy's rules → the bearing model on the board → a command to
// the device and an event that waits in the cache until the cloud Mosquitto is back.
import t from 'tap';
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { startFleet, type Fleet } from '../firmware-sim/fleet.js';
import type { DeviceCommand } from '../firmware-sim/device.js';
import { startProxy } from './helpers/proxy.js';
import { collect, connectClient } from './helpers/clients.js';
import { startMosquitto } from './helpers/mosquitto.js';
import { eventually } from './helpers/ports.js';

const ROOT = new URL('..', import.meta.url).pathname;

interface BearingResult {
  label: string;
  score: number;
  version: string;
}

t.test('a developing bearing fault is caught locally with the cloud down; its event reaches the cloud once it is back', async (t) => {
  const dir = t.testdir({ rules: {} });
  copyFileSync(join(ROOT, 'rules/30-vibration.rules'), join(dir, 'rules/30-vibration.rules'));
  // The cloud application's subscription survives the outage (a persistent session on a broker that
  // keeps it on disk), so what goes up when the cloud is back cannot slip past it.
  const cloud = await startMosquitto(join(dir, 'cloud'), { persistence: true });
  const app = await connectClient(cloud.port, { clientId: 'cloud-app', clean: false });
  await app.subscribeAsync('edge/test-edge/up/events/#', { qos: 1 });
  await app.endAsync();
  await cloud.stop();
  const proxy = await startProxy(dir, { models: { dir: join(ROOT, 'models') }, uplink: { url: cloud.url } });
  t.teardown(() => proxy.stop());
  t.teardown(() => cloud.stop());
  t.equal(await proxy.metric('edge_uplink_connected'), 0, 'the cloud is down');

  const watcher = await connectClient(proxy.ports.mqtt, { clientId: 'site-dashboard' });
  t.teardown(() => watcher.endAsync());
  const local = await collect(watcher, '#');

  // Two sensors reporting one window a second; the first one's bearing has a developing fault.
  mkdirSync(join(dir, 'sim'));
  const commands: DeviceCommand[] = [];
  const fleet: Fleet = startFleet({
    url: `mqtt://127.0.0.1:${proxy.ports.mqtt}`,
    sensors: ['vibration'],
    devices: 2,
    faulty: 1,
    rate: 1,
    qos: 1,
    seed: 20261203,
    quiet: true,
    log: () => {},
  });
  fleet.on('command', (cmd) => commands.push(cmd));
  t.teardown(() => fleet.stop());

  const results = (id: string): BearingResult[] =>
    local.messages.filter((m) => m.topic === `ml/bearing/${id}`).map((m) => JSON.parse(m.payload.toString()) as BearingResult);

  await eventually(
    'the faulty sensor is told to report faster',
    () => commands.some((c) => c.deviceId === 'sim-0001' && c.command === 'rate'),
    60_000,
  );
  const rate = commands.find((c) => c.deviceId === 'sim-0001' && c.command === 'rate');
  t.equal(rate!.action, 'rate', `the device obeyed: ${rate!.detail}`);
  t.same(JSON.parse(rate!.payload), { rate: 5 });

  await eventually(
    'the bearing_fault event, made on the board',
    () => local.messages.some((m) => m.topic === 'events/bearing_fault'),
    60_000,
  );
  const event = JSON.parse(local.messages.find((m) => m.topic === 'events/bearing_fault')!.payload.toString()) as Record<string, unknown>;
  t.match(event, { device: 'sim-0001', score: Number, version: String });
  t.ok((event.score as number) > 0.7);

  // The healthy sensor still reports once a second: let it say enough.
  await eventually('ten windows of the healthy sensor judged', () => results('sim-0002').length >= 10, 30_000);
  const faulty = results('sim-0001');
  const healthy = results('sim-0002');
  t.ok(
    healthy.filter((r) => r.label === 'fault').length <= 1,
    `the healthy sensor is not flagged: ${healthy.map((r) => r.label).join(' ')}`,
  );
  t.notOk(
    local.messages.some((m) => m.topic === 'devices/sim-0002/cmd/rate'),
    'no command to the healthy sensor',
  );
  const caught = faulty.filter((r) => r.label === 'fault').length;
  // An early fault (severity 0.5 and up) is caught in about nine windows in ten (models/bearing-report.md).
  t.ok(caught >= 0.7 * faulty.length, `most windows of the faulty sensor say fault: ${caught} of ${faulty.length}`);
  t.equal(await proxy.metric('edge_uplink_connected'), 0, 'all of it with the cloud still down');

  // The cloud comes back: the event kept in the cache goes up.
  await cloud.start();
  const up = await connectClient(cloud.port, { clientId: 'cloud-app', clean: false });
  t.teardown(() => up.endAsync());
  const cloudSide = await collect(up, 'edge/test-edge/up/events/#');
  await eventually('the event in the cloud', () => cloudSide.messages.length >= 1, 60_000);
  const envelope = cloudSide.json<{ topic: string; deviceId: string; payload: unknown }>()[0]!;
  t.match(envelope, { topic: 'events/bearing_fault', deviceId: 'sim-0001' });
});
