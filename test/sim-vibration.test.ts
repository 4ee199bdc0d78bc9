// The simulator's vibration sensors (--sensor vibration) against the built proxy as a real process:
// windows of 1024 samples on devices/<id>/vibration over MQTT, MQTT over WebSocket, /ws and CoAP
// (block-wise), the same windows as the seeded model makes; cmd/bearing that gives a healthy
// bearing a fault (its windows' kurtosis and crest factor rise, computed here) and takes it away; a
// cmd/rate that a rule publishes; bad command payloads refused, logged and without effect; the
// options and the built CLI.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { parseCliArgs } from '../firmware-sim/cli.js';
import type { Fleet, FleetOptions } from '../firmware-sim/fleet.js';
import { deviceVibration, parseBearingPayload, type DeviceCommand, type VibrationWindow } from '../firmware-sim/device.js';
import { parseSeed } from '../firmware-sim/sensors.js';
import { VIBRATION_SAMPLE_RATE_HZ, VIBRATION_WINDOW } from '../firmware-sim/vibration.js';
import { collect, connectClient, runTool, type Collected } from './helpers/clients.js';
import { coapPort } from './helpers/coap.js';
import { fleetOf as fleetAt } from './helpers/fleet.js';
import { startProxy, type ProxyProcess } from './helpers/proxy.js';
import { eventually, sleep } from './helpers/ports.js';

/** Vibration sensors unless a test says otherwise. */
const fleetOf = (proxy: ProxyProcess, options: FleetOptions, lines: string[] = []): Fleet =>
  fleetAt(proxy, { sensors: ['vibration'], ...options }, lines);

const SIM = new URL('../dist/firmware-sim/cli.js', import.meta.url).pathname;

/** The windows a local subscriber received from `id`, by seq. */
function windowsOf(sub: Collected, id: string): VibrationWindow[] {
  return sub.messages
    .filter((m) => m.topic === `devices/${id}/vibration`)
    .map((m) => JSON.parse(m.payload.toString()) as VibrationWindow)
    .sort((a, b) => a.seq - b.seq);
}

/** Kurtosis (4th standardised moment) and crest factor (peak / RMS) of a window, about its mean. */
function shape(samples: readonly number[]): { kurtosis: number; crest: number } {
  const n = samples.length;
  const mean = samples.reduce((a, x) => a + x, 0) / n;
  let m2 = 0;
  let m4 = 0;
  let peak = 0;
  for (const x of samples) {
    const d = x - mean;
    m2 += d * d;
    m4 += d ** 4;
    peak = Math.max(peak, Math.abs(d));
  }
  m2 /= n;
  m4 /= n;
  return { kurtosis: m4 / (m2 * m2), crest: peak / Math.sqrt(m2) };
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

t.test('options: --sensor, --bearing, --faulty; cmd/bearing payloads', async (t) => {
  t.match(parseCliArgs(['--sensor', 'vibration']), { options: { sensors: ['vibration'] } });
  t.match(parseCliArgs(['--sensor', 'telemetry,vibration', '--devices', '4', '--faulty', '2']), {
    options: { sensors: ['telemetry', 'vibration'], faulty: 2 },
  });
  t.match(parseCliArgs(['--sensor', 'vibration', '--bearing', 'fault']), { options: { bearing: 'fault' } });
  const bad: Array<[string[], RegExp]> = [
    [['--sensor', 'sound'], /--sensor takes telemetry or vibration, or a comma-separated list of them, got "sound"/],
    [['--sensor', 'vibration', '--bearing', 'broken'], /--bearing must be healthy or fault, got "broken"/],
    [['--bearing', 'fault'], /this fleet has no vibration sensor: add --sensor vibration/],
    [['--faulty', '1'], /this fleet has no vibration sensor/],
    [['--sensor', 'telemetry,vibration', '--devices', '4', '--faulty', '3'], /--faulty 3: this fleet has 2 vibration sensors/],
    [['--sensor', 'vibration', '--faulty', '1.5'], /--faulty must be an integer >= 0, got "1.5"/],
    [['--sensor', 'vibration', '--faulty', '1', '--bearing', 'fault'], /mutually exclusive/],
    [['--sensor', 'vibration', '--payload-bytes', '500'], /--payload-bytes pads telemetry, and this fleet has only vibration sensors/],
  ];
  for (const [args, message] of bad) t.throws(() => parseCliArgs(args), { name: 'UsageError', message }, args.join(' '));

  t.same(parseBearingPayload('{"condition": "fault"}'), { condition: 'fault' });
  t.same(parseBearingPayload('{"condition": "fault", "severity": 2.5}'), { condition: 'fault', severity: 2.5 });
  t.same(parseBearingPayload('{"condition": "healthy"}'), { condition: 'healthy' });
  t.same(parseBearingPayload('fault'), { condition: 'fault' }, 'the condition alone, as text');
  for (const [payload, why] of [
    ['', /expected \{"condition"/],
    ['{"condition": "broken"}', /condition "broken"/],
    ['{"severity": 2}', /condition null/],
    ['{"condition": "fault", "severity": 0}', /severity 0: expected a number > 0 and <= 6/],
    ['{"condition": "fault", "severity": 7}', /severity 7/],
    ['{"condition": "fault", "severity": "high"}', /severity "high"/],
    ['{"condition": "healthy", "severity": 1}', /a severity is for a fault/],
    ['{"condition": "fault", "speed": 3}', /unknown field "speed"/],
    ['["fault"]', /expected/],
  ] as const) {
    t.match(parseBearingPayload(payload), why, `refused: ${payload || '(empty)'}`);
  }
});

t.test('with a proxy', async (t) => {
  const dir = t.testdir();
  // The operator's way to look closer at a bearing the model flags: report faster.
  mkdirSync(join(dir, 'rules'), { recursive: true });
  writeFileSync(
    join(dir, 'rules', 'vibration.rules'),
    [
      'rule bearing_watch',
      'when msg.topic matches "ml/bearing/+" and payload.label == "fault"',
      'then publish("devices/" + topicLevel(msg.topic, 2) + "/cmd/rate", { rate: 20 }, qos = 1)',
      'end',
      '',
    ].join('\n'),
  );
  const proxy = await startProxy(dir, { log: { level: 'info' } });
  t.teardown(() => proxy.stop());
  const ctl: MqttClient = await connectClient(proxy.ports.mqtt, { clientId: 'vib-test-ctl' });
  t.teardown(() => ctl.endAsync(true));
  const sub = await collect(ctl, 'devices/+/vibration');

  await t.test('every protocol carries the windows: 1024 samples, the seeded model, once each', async (t) => {
    const blocks = await proxy.metric('edge_coap_block_uploads_total', 'event="completed"');
    const lines: string[] = [];
    const fleet = fleetOf(
      proxy,
      { protocols: ['mqtt', 'mqtt-ws', 'ws', 'coap'], devices: 4, rate: 5, count: 5, faulty: 2, prefix: 'win-', seed: 'vib' },
      lines,
    );
    const summary = await fleet.done;
    t.match(summary, {
      devices: 4,
      sent: 20,
      acked: 20,
      failed: 0,
      reason: 'count',
      protocols: { mqtt: 1, 'mqtt-ws': 1, ws: 1, coap: 1 },
      sensors: { vibration: 4 },
      faulty: ['win-0001', 'win-0002'],
    });
    t.notOk('telemetry' in summary.sensors, 'no telemetry device');
    t.ok(lines[0]!.includes('4 vibration sensors (faulty: win-0001 and win-0002)'), `the start line names the faulty sensors: ${lines[0]}`);
    const ids = ['win-0001', 'win-0002', 'win-0003', 'win-0004'];
    await eventually('20 windows', () => ids.every((id) => windowsOf(sub, id).length >= 5));
    await sleep(200); // a duplicate would arrive right behind
    const seed = parseSeed('vib');
    for (const [i, id] of ids.entries()) {
      const got = windowsOf(sub, id);
      const protocol = fleet.devices[i]!.protocol;
      t.same(
        got.map((w) => w.seq),
        [1, 2, 3, 4, 5],
        `${id} (${protocol}): seq 1..5 exactly once`,
      );
      t.ok(
        got.every(
          (w) =>
            w.deviceId === id &&
            w.sampleRateHz === VIBRATION_SAMPLE_RATE_HZ &&
            w.shaftHz >= 19.6 &&
            w.shaftHz <= 40.8 &&
            Math.abs(Date.now() - w.ts) < 60_000 &&
            w.samples.length === VIBRATION_WINDOW &&
            w.samples.every((x) => typeof x === 'number' && Number.isFinite(x)),
        ),
        `${id} (${protocol}): 1024 numeric samples at 25,600 Hz, a shaft speed, its id and a time`,
      );
      const model = deviceVibration(seed, id, i < 2 ? 'fault' : 'healthy');
      t.same(
        got.map((w) => w.samples),
        got.map(() => model.nextWindow()),
        `${id} (${protocol}): the windows of the model seeded by --seed and its id (${i < 2 ? 'faulty' : 'healthy'})`,
      );
      t.ok(lines.includes(`${id} connected to ${fleet.devices[i]!.url}`), `${id} connected over ${protocol}`);
    }
    const sizes = sub.messages.filter((m) => m.topic.startsWith('devices/win-')).map((m) => m.payload.length);
    t.ok(
      sizes.every((n) => n > 6000 && n < 12_000),
      `each window is ${Math.min(...sizes)}..${Math.max(...sizes)} bytes of JSON`,
    );
    t.equal(
      await proxy.metric('edge_coap_block_uploads_total', 'event="completed"'),
      blocks + 5,
      'the coap device sent each window block-wise (Block1)',
    );
    t.ok(
      lines.some((l) =>
        /^win-0001 -> devices\/win-0001\/vibration seq=1 samples=1024 rms=[\d.]+g peak=[\d.]+g bearing=fault severity=0\.500 \(\d+ B\)$/.test(
          l,
        ),
      ),
      'each window is logged with its level and the bearing',
    );
  });

  await t.test('cmd/bearing gives a bearing a fault and takes it away; bad payloads change nothing', async (t) => {
    const lines: string[] = [];
    const fleet = fleetOf(
      proxy,
      { protocols: ['mqtt', 'coap', 'ws'], sensors: ['vibration', 'vibration', 'telemetry'], devices: 3, rate: 10, prefix: 'brg-' },
      lines,
    );
    t.teardown(() => fleet.stop());
    const commands: DeviceCommand[] = [];
    fleet.on('command', (c) => commands.push(c));
    await fleet.ready;
    const [mqttDevice, coapDevice, telemetryDevice] = fleet.devices as [
      Fleet['devices'][number],
      Fleet['devices'][number],
      Fleet['devices'][number],
    ];
    // Commands must not race the devices' subscriptions and the CoAP observation.
    await eventually(
      'the coap device observes its commands',
      async () => (await proxy.metric('edge_coap_observations_total', 'event="registered"')) > 0,
    );
    await sleep(500);
    const send = async (id: string, command: string, payload: string): Promise<DeviceCommand> => {
      const before = commands.length;
      await ctl.publishAsync(`devices/${id}/cmd/${command}`, payload, { qos: 1 });
      return (await eventually(`${id} answered ${command} ${payload}`, () => commands.slice(before).find((c) => c.deviceId === id)))!;
    };
    /** The shapes of 6 windows of `device` published after seq `after`. */
    const shapesAfter = async (device: Fleet['devices'][number], after: number): Promise<Array<{ kurtosis: number; crest: number }>> => {
      await eventually(
        `6 windows of ${device.id} after seq ${after}`,
        () => windowsOf(sub, device.id).filter((w) => w.seq > after).length >= 6,
      );
      return windowsOf(sub, device.id)
        .filter((w) => w.seq > after)
        .slice(0, 6)
        .map((w) => shape(w.samples));
    };

    for (const device of [mqttDevice, coapDevice]) {
      const id = device.id;
      t.equal(device.bearing, 'healthy', `${id} (${device.protocol}) starts healthy`);
      const healthy = await shapesAfter(device, 0);

      const cmd = await send(id, 'bearing', '{"condition": "fault", "severity": 4}');
      t.match(
        cmd,
        { deviceId: id, command: 'bearing', action: 'bearing', detail: 'bearing set to fault (severity 4)' },
        `${id}: the command`,
      );
      t.equal(device.bearing, 'fault');
      const fault = await shapesAfter(device, device.stats().lastSeq);
      const k0 = median(healthy.map((s) => s.kurtosis));
      const k1 = median(fault.map((s) => s.kurtosis));
      const c0 = median(healthy.map((s) => s.crest));
      const c1 = median(fault.map((s) => s.crest));
      t.ok(k1 > k0 + 0.7, `${id}: the kurtosis rises with the fault's impacts (median ${k0.toFixed(2)} -> ${k1.toFixed(2)})`);
      t.ok(c1 > 1.4 * c0, `${id}: so does peak / RMS (median ${c0.toFixed(2)} -> ${c1.toFixed(2)})`);

      // Refused: each logged and answered as invalid, the bearing as it was.
      for (const payload of [
        '{"condition": "broken"}',
        'not json',
        '{"condition": "fault", "severity": 99}',
        '{"condition": "healthy", "severity": 1}',
        '[]',
      ]) {
        const severity = device.severity!;
        t.match(
          await send(id, 'bearing', payload),
          { action: 'invalid', detail: /^invalid bearing payload .*, bearing unchanged: / },
          `${id}: ${payload} refused`,
        );
        t.equal(device.bearing, 'fault', `${id}: still faulty after ${payload}`);
        t.ok(
          device.severity! >= severity && device.severity! < severity + 0.05,
          `${id}: the severity only grows as it did (${device.severity})`,
        );
      }

      t.match(
        await send(id, 'bearing', '{"condition": "healthy"}'),
        { action: 'bearing', detail: 'bearing set to healthy' },
        `${id}: healthy again`,
      );
      t.equal(device.bearing, 'healthy');
      t.equal(device.severity, 0);
      const replaced = await shapesAfter(device, device.stats().lastSeq);
      const k2 = median(replaced.map((s) => s.kurtosis));
      t.ok(k2 < k1 - 0.7, `${id}: a replaced bearing's kurtosis falls back (median ${k2.toFixed(2)})`);
    }

    const early = await send(coapDevice.id, 'bearing', '{"condition": "fault"}');
    t.match(early, { action: 'bearing', detail: 'bearing set to fault (severity 0.5, growing)' }, 'without a severity: an early fault');
    await eventually('the fault grows window by window', () => coapDevice.severity! > 0.5);

    t.match(
      await send(telemetryDevice.id, 'bearing', '{"condition": "fault"}'),
      { action: 'unknown', detail: /brg-0003 is a telemetry sensor/ },
      'a telemetry device has no bearing',
    );
    t.equal(telemetryDevice.bearing, undefined);
    const log = lines.join('\n');
    t.match(
      log,
      /brg-0001 command bearing "\{\\"condition\\": \\"broken\\"\}": invalid bearing payload .*bearing unchanged: condition "broken"/,
      'a refusal is logged with its reason',
    );
    t.ok(
      lines.some((l) => l.startsWith('brg-0002 command bearing "{') && l.endsWith('": bearing set to fault (severity 4)')),
      'a switch is logged',
    );

    const summary = await fleet.stop();
    t.match(summary, { failed: 0, sensors: { vibration: 2, telemetry: 1 }, faulty: ['brg-0002'] }, 'the summary names the faulty sensor');
    t.equal(summary.acked, summary.sent, 'everything sent was acknowledged');
  });

  await t.test('a cmd/rate from a rule changes how often a vibration sensor reports', async (t) => {
    const lines: string[] = [];
    const fleet = fleetOf(proxy, { protocols: ['coap', 'mqtt'], devices: 2, rate: 2, prefix: 'rt-' }, lines);
    t.teardown(() => fleet.stop());
    const commands: DeviceCommand[] = [];
    fleet.on('command', (c) => commands.push(c));
    await fleet.ready;
    await sleep(700);
    const [coapDevice, mqttDevice] = fleet.devices as [Fleet['devices'][number], Fleet['devices'][number]];
    const arrived = (id: string, since: number): number => windowsOf(sub, id).filter((w) => w.ts >= since).length;

    // What the bearing model publishes for a window it flags (inference.md).
    await ctl.publishAsync(`ml/bearing/${coapDevice.id}`, JSON.stringify({ model: 'bearing', label: 'fault', score: 0.97 }), { qos: 1 });
    const cmd = await eventually('the rule commanded rt-0001', () => commands.find((c) => c.deviceId === coapDevice.id));
    t.match(cmd, { command: 'rate', action: 'rate', detail: 'rate set to 20/s' }, 'the rule published cmd/rate');
    t.equal(coapDevice.currentRate, 20);
    const t0 = Date.now();
    await sleep(1500);
    const fast = arrived(coapDevice.id, t0);
    const slow = arrived(mqttDevice.id, t0);
    t.ok(fast >= 20, `about 20 windows/s after cmd/rate (${fast} in 1.5 s)`);
    t.ok(slow <= 5, `the other sensor kept its 2/s (${slow} in 1.5 s)`);

    t.match(
      await (async () => {
        const before = commands.length;
        await ctl.publishAsync(`devices/${mqttDevice.id}/cmd/rate`, '{"rate": -1}', { qos: 1 });
        return eventually('the bad rate answered', () => commands.slice(before).find((c) => c.deviceId === mqttDevice.id));
      })(),
      { action: 'invalid' },
      'a bad rate is refused',
    );
    t.equal(mqttDevice.currentRate, 2, 'and changes nothing');
    t.ok(
      lines.some((l) => l.startsWith('rt-0001 command rate') && l.includes('rate set to 20/s')),
      'the command is logged',
    );
  });
  await t.test('the built CLI: a mixed fleet with a faulty sensor', async (t) => {
    const r = await runTool(
      process.execPath,
      [
        SIM,
        ...['--url', `mqtt://127.0.0.1:${proxy.ports.mqtt}`, '--coap-url', `coap://127.0.0.1:${coapPort(proxy)}`],
        ...['--protocol', 'coap,mqtt', '--sensor', 'vibration,vibration,telemetry', '--devices', '3', '--faulty', '1'],
        ...['--prefix', 'cli-', '--rate', '5', '--count', '3', '--seed', '11'],
      ],
      30_000,
    );
    t.equal(r.code, 0, r.stderr);
    t.match(
      JSON.parse(r.stdout.trim()) as unknown,
      { devices: 3, sent: 9, acked: 9, failed: 0, seed: 11, sensors: { vibration: 2, telemetry: 1 }, faulty: ['cli-0001'] },
      'the summary counts the sensors and names the faulty one',
    );
    t.match(r.stderr, '2 vibration sensors (faulty: cli-0001)');
    t.match(r.stderr, /cli-0002 -> devices\/cli-0002\/vibration seq=1 samples=1024 .*bearing=healthy/);
    t.match(r.stderr, /cli-0003 -> devices\/cli-0003\/telemetry seq=1 temp=/);
    const model = deviceVibration(11, 'cli-0001', 'fault');
    await eventually(
      'the windows of cli-0001 (coap) and cli-0002 (mqtt)',
      () => windowsOf(sub, 'cli-0001').length + windowsOf(sub, 'cli-0002').length >= 6,
    );
    t.same(
      windowsOf(sub, 'cli-0001').map((w) => w.samples),
      [1, 2, 3].map(() => model.nextWindow()),
      'cli-0001 sent the windows of a faulty bearing seeded by --seed 11',
    );
  });
});

t.test('the built CLI: --help', async (t) => {
  const help = spawnSync(process.execPath, [SIM, '--help'], { encoding: 'utf8' });
  t.equal(help.status, 0);
  for (const s of ['--sensor K[,K...]', '--bearing healthy|fault', '--faulty N', 'devices/<id>/vibration', 'cmd/bearing', '"severity"']) {
    t.ok(help.stdout.includes(s), `--help tells of ${s}`);
  }
});
