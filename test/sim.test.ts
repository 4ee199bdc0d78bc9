import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connectAsync, type MqttClient } from 'mqtt';
import { parseCliArgs } from '../firmware-sim/cli.js';
import { makeCa, makeCert } from './helpers/certs.js';
import { parseRate, parseRatePayload, type DeviceCommand } from '../firmware-sim/device.js';
import { parseTokenFile, tokenDeviceId } from '../firmware-sim/credentials.js';
import { Fleet, startFleet } from '../firmware-sim/fleet.js';
import { SENSOR_LIMITS, SensorModel, createRng, deviceSensor, parseSeed, randomProfile, type Reading } from '../firmware-sim/sensors.js';

const ROOT = path.resolve(import.meta.dirname, '..');

// ---------------------------------------------------------------- helpers

async function freePort(): Promise<number> {
  const srv = net.createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

async function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
  });
}

async function waitFor(pred: () => boolean, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (pred()) return true;
    await sleep(20);
  }
  return pred();
}

function findMosquitto(): string | undefined {
  if (process.env.MOSQUITTO) return process.env.MOSQUITTO;
  for (const p of ['/usr/sbin/mosquitto', '/usr/local/sbin/mosquitto', '/usr/bin/mosquitto']) {
    if (existsSync(p)) return p;
  }
  return undefined;
}

interface Broker {
  url: string;
  proc: ChildProcess;
}

async function startBroker(bin: string, dir: string): Promise<Broker> {
  // The free port can be grabbed by someone else before mosquitto binds it: retry.
  let lastOutput = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const conf = path.join(dir, `mosquitto-${port}.conf`);
    writeFileSync(conf, `listener ${port} 127.0.0.1\nallow_anonymous true\npersistence false\n`);
    const proc = spawn(bin, ['-c', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    proc.stdout?.on('data', (d: Buffer) => (output += d.toString()));
    proc.stderr?.on('data', (d: Buffer) => (output += d.toString()));
    let exited = false;
    proc.once('exit', () => (exited = true));
    const end = Date.now() + 10_000;
    while (!exited && Date.now() < end) {
      if (await canConnect(port)) return { url: `mqtt://127.0.0.1:${port}`, proc };
      await sleep(50);
    }
    proc.kill('SIGKILL');
    lastOutput = output;
  }
  throw new Error(`mosquitto did not start: ${lastOutput}`);
}

async function subscribe(url: string, topic: string): Promise<MqttClient> {
  const client = await connectAsync(url, {
    clientId: `test-sub-${process.pid}-${Math.random().toString(16).slice(2, 8)}`,
    clean: true,
    reconnectPeriod: 0,
  });
  await client.subscribeAsync(topic, { qos: 1 });
  return client;
}

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function run(args: string[], opts: { timeoutMs?: number; onStderr?: (text: string, proc: ChildProcess) => void } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const killer = setTimeout(() => proc.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    proc.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    proc.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString();
      opts.onStderr?.(stderr, proc);
    });
    proc.once('error', reject);
    proc.once('close', (code, signal) => {
      clearTimeout(killer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

// ---------------------------------------------------------------- sensors (pure)

t.test('sensors: bounded, realistic drift, 2 decimals', async (t) => {
  const isRounded = (x: number): boolean => Math.abs(Math.round(x * 100) / 100 - x) < 1e-9;
  let violations = 0;
  let maxStep = 0;
  for (let seed = 1; seed <= 30; seed++) {
    const model = new SensorModel(createRng(seed));
    const { tempBase, humidityBase } = model.profile;
    t.ok(tempBase >= 18 && tempBase <= 26, 'temp base in 18..26');
    t.ok(humidityBase >= 35 && humidityBase <= 60, 'humidity base in 35..60');
    let prev: Reading | undefined;
    for (let i = 0; i < 20_000; i++) {
      const r = model.next();
      const ok =
        r.temp >= SENSOR_LIMITS.temp.min &&
        r.temp <= SENSOR_LIMITS.temp.max &&
        r.humidity >= SENSOR_LIMITS.humidity.min &&
        r.humidity <= SENSOR_LIMITS.humidity.max &&
        // Drift stays around the base (bound 4 °C plus noise), not a free random walk.
        Math.abs(r.temp - tempBase) < 5 &&
        Math.abs(r.humidity - humidityBase) < 22 &&
        r.battery >= 3 &&
        r.battery <= 4.2 &&
        Number.isInteger(r.rssi) &&
        isRounded(r.temp) &&
        isRounded(r.humidity) &&
        isRounded(r.battery);
      if (!ok) violations++;
      if (prev) maxStep = Math.max(maxStep, Math.abs(r.temp - prev.temp));
      prev = r;
    }
  }
  t.equal(violations, 0, 'every reading is bounded and rounded');
  t.ok(maxStep < 1, `temperature changes slowly between samples (max step ${maxStep})`);
});

t.test('sensors: reproducible with a seed', async (t) => {
  const take = (m: SensorModel, n: number): Reading[] => Array.from({ length: n }, () => m.next());
  t.same(take(new SensorModel(createRng(7)), 500), take(new SensorModel(createRng(7)), 500), 'same seed, same values');
  t.notSame(take(new SensorModel(createRng(7)), 50), take(new SensorModel(createRng(8)), 50), 'other seed differs');
  t.same(take(deviceSensor(42, 'sim-0001'), 100), take(deviceSensor(42, 'sim-0001'), 100), 'per-device stream');
  t.notSame(take(deviceSensor(42, 'sim-0001'), 20), take(deviceSensor(42, 'sim-0002'), 20), 'devices differ');
  t.same(randomProfile(createRng(3)), randomProfile(createRng(3)));
  t.equal(parseSeed('123'), 123, 'integer seeds are used verbatim');
  t.equal(parseSeed(123), 123);
  t.equal(parseSeed('hello'), parseSeed('hello'), 'string seeds hash stably');
  t.not(parseSeed('hello'), parseSeed('hellp'));
});

t.test('rate parsing', async (t) => {
  t.equal(parseRate('5'), 5);
  t.equal(parseRate(0), 'max');
  t.equal(parseRate('max'), 'max');
  t.equal(parseRate('-1'), undefined);
  t.equal(parseRate('abc'), undefined);
  t.equal(parseRatePayload('{"rate": 5}'), 5);
  t.equal(parseRatePayload(' 7.5 '), 7.5);
  t.equal(parseRatePayload('"max"'), 'max');
  t.equal(parseRatePayload('max'), 'max');
  t.equal(parseRatePayload('{"speed": 5}'), undefined);
  t.equal(parseRatePayload(''), undefined);
});

t.test('CLI argument parsing', async (t) => {
  t.same(parseCliArgs([]), { help: false, options: { usernameAsId: true } }, 'defaults left to the fleet');
  t.same(parseCliArgs(['-h']), { help: true });
  const cmd = parseCliArgs([
    '--url',
    'mqtt://h:1',
    '--devices',
    '3',
    '--rate',
    'max',
    '--inflight',
    '4',
    '--qos',
    '0',
    '--count',
    '9',
    '--duration',
    '1.5',
    '--prefix',
    'x-',
    '--no-username-as-id',
    '--seed',
    's',
    '--stats-interval',
    '2',
    '--quiet',
  ]);
  t.same(cmd, {
    help: false,
    options: {
      url: 'mqtt://h:1',
      devices: 3,
      rate: 'max',
      inflight: 4,
      qos: 0,
      count: 9,
      duration: 1.5,
      prefix: 'x-',
      usernameAsId: false,
      seed: 's',
      statsInterval: 2,
      quiet: true,
    },
  });
  t.match(parseCliArgs(['--rate', '0']), { options: { rate: 'max' } });
  for (const bad of [
    ['--devices', '0'],
    ['--devices', '1.5'],
    ['--qos', '2'],
    ['--rate', 'fast'],
    ['--count', 'x'],
    ['--duration', '0'],
    ['--url', 'http://x'],
    ['--prefix', 'a/b'],
    ['--nope'],
    ['positional'],
  ]) {
    t.throws(() => parseCliArgs(bad), { name: 'UsageError' }, bad.join(' '));
  }
});

t.test('CLI: --token', async (t) => {
  const secret = randomBytes(32).toString('base64url');
  const token = `pump-7.${secret}`;
  t.same(
    parseCliArgs(['--token', token]),
    {
      help: false,
      options: { usernameAsId: true, ids: ['pump-7'], tokens: { 'pump-7': token } },
    },
    'one device, named by its token',
  );
  t.same(
    parseCliArgs(['--token', token, '--devices', '1']),
    {
      help: false,
      options: { devices: 1, usernameAsId: true, ids: ['pump-7'], tokens: { 'pump-7': token } },
    },
    '--devices 1 is allowed',
  );
  t.match(
    parseCliArgs(['--token', `hall.2:pump_7.${secret}`]),
    { options: { ids: ['hall.2:pump_7'] } },
    'ids with dots: split at the last one',
  );
  t.match(
    parseCliArgs(['--token', `e2e-0001.${secret}`, '--prefix', 'e2e-']),
    { options: { ids: ['e2e-0001'] } },
    'a --prefix that names the same device',
  );
  const cmd = parseCliArgs(['--token', token]);
  const fleet = new Fleet({ ...(cmd.help ? {} : cmd.options), log: () => {} });
  t.same(
    fleet.devices.map((d) => d.id),
    ['pump-7'],
    'the fleet is that one device',
  );

  const bad: Array<[string[], RegExp]> = [
    [['--token', token, '--devices', '2'], /--token is the token of one device \(pump-7\), not of --devices 2/],
    [['--token', token, '--prefix', 'pump-'], /--token is for device pump-7, but --prefix pump- names the device pump-0001/],
    [['--token', 'pump-7'], /--token is not a token/],
    [['--token', `.${secret}`], /--token is not a token/],
    [['--token', `pump/7.${secret}`], /--token is not a token/],
    [['--token', 'pump-7.not base64!'], /--token is not a token/],
    [['--token', token, '--no-username-as-id'], /--no-username-as-id cannot be used with --token/],
    [['--token', token, '--token-file', 'x'], /mutually exclusive/],
    [['--token'], /--token/],
  ];
  for (const [args, message] of bad) {
    t.throws(() => parseCliArgs(args), { name: 'UsageError', message }, args.join(' ').replace(secret, '<secret>'));
  }
});

t.test('CLI: --token-file', async (t) => {
  const tok = (id: string): string => `${id}.${randomBytes(32).toString('base64url')}`;
  const [a, b, c, x] = [tok('sim-0001'), tok('sim-0002'), tok('sim-0003'), tok('x-0001')];
  const dir = t.testdir({
    'tokens.txt': `# site hall-2\n\n${a}\r\n  ${b}  \n# retired: ${tok('sim-0009')}\n${c}\n${x}\n${tok('other')}\n`,
    'bad-line.txt': `${a}\nnot a token\n`,
    'twice.txt': `${a}\n${tok('sim-0001')}\n`,
    'same-twice.txt': `${a}\n${a}\n`,
    'empty.txt': '# nothing yet\n',
  });
  const file = (name: string): string => path.join(dir, name);

  t.same(
    parseCliArgs(['--token-file', file('tokens.txt'), '--devices', '3']),
    {
      help: false,
      options: { devices: 3, usernameAsId: true, tokens: { 'sim-0001': a, 'sim-0002': b, 'sim-0003': c } },
    },
    'each device gets the token of its id; comments, blank lines, spaces, CRLF and extra tokens are ignored',
  );
  t.match(
    parseCliArgs(['--token-file', file('tokens.txt'), '--devices', '1', '--prefix', 'x-']),
    { options: { tokens: { 'x-0001': x } } },
    'ids follow --prefix',
  );
  t.match(
    parseCliArgs(['--token-file', file('same-twice.txt'), '--devices', '1']),
    { options: { tokens: { 'sim-0001': a } } },
    'the same token twice is harmless',
  );

  const bad: Array<[string[], RegExp]> = [
    [
      ['--token-file', file('tokens.txt')],
      /has no token for devices sim-0004, sim-0005 \(it has tokens for sim-0001, sim-0002, sim-0003, \.\.\.;/,
    ],
    [['--token-file', file('tokens.txt'), '--devices', '4'], /has no token for device sim-0004 \(/],
    [['--token-file', file('tokens.txt'), '--devices', '2', '--prefix', 'x-'], /has no token for device x-0002 /],
    [['--token-file', file('empty.txt'), '--devices', '1'], /has no token for device sim-0001 \(it holds no token;/],
    [['--token-file', file('bad-line.txt'), '--devices', '1'], /bad-line\.txt: line 2: not a token/],
    [
      ['--token-file', file('twice.txt'), '--devices', '1'],
      /twice\.txt: line 2: a second token for device sim-0001 \(the first is on line 1\)/,
    ],
    [['--token-file', file('nope.txt')], /cannot read --token-file .*nope\.txt: no such file/],
    [['--token-file', file('tokens.txt'), '--no-username-as-id'], /--no-username-as-id cannot be used with --token-file/],
  ];
  for (const [args, message] of bad) {
    t.throws(() => parseCliArgs(args), { name: 'UsageError', message }, args.join(' ').replace(dir, '<dir>'));
  }

  t.test('the token file format', async (t) => {
    t.equal(tokenDeviceId(a), 'sim-0001');
    t.equal(tokenDeviceId('sim-0001'), undefined);
    t.equal(tokenDeviceId('sim-0001.'), undefined);
    const parsed = parseTokenFile(`${a}\n\n  # ${b}\n${c}`);
    t.same([...parsed.tokens.keys()], ['sim-0001', 'sim-0003']);
    t.same(parsed.problems, []);
  });
});

t.test('CLI: --ca, --cert, --key', async (t) => {
  const dir = t.testdir({ 'ca.pem': 'ca', 'not-a-cert.pem': 'cert' });
  // A client certificate is read for its CN, the device id: a real one.
  const pki = makeCa(path.join(dir, 'pki'), 'sim-ca');
  const dev = makeCert(pki, { cn: 'pump-7' });
  const ca = path.join(dir, 'ca.pem');
  const { cert, key } = dev;
  t.same(parseCliArgs(['--url', 'mqtts://pi:8883', '--ca', ca]), {
    help: false,
    options: { url: 'mqtts://pi:8883', usernameAsId: true, tls: { ca } },
  });
  t.match(parseCliArgs(['--url', 'wss://pi:8443/mqtt', '--ca', ca, '--cert', cert, '--key', key]), {
    options: { tls: { ca, cert, key }, ids: ['pump-7'] },
  });
  t.match(
    parseCliArgs(['--url', 'mqtts://pi:8883', '--cert', cert, '--key', key]),
    { options: { tls: { cert, key }, ids: ['pump-7'] } },
    'a client certificate without --ca: one device, named as its CN',
  );
  t.match(
    parseCliArgs(['--url', 'mqtts://pi:8883', '--cert', cert, '--key', key, '--devices', '1']),
    { options: { ids: ['pump-7'] } },
    '--devices 1 is the one device',
  );
  const pumpToken = `pump-7.${randomBytes(32).toString('base64url')}`;
  t.match(
    parseCliArgs(['--url', 'mqtts://pi:8883', '--cert', cert, '--key', key, '--token', pumpToken]),
    { options: { ids: ['pump-7'], tokens: { 'pump-7': pumpToken } } },
    "a certificate and the same device's token",
  );
  const token = `sim-0001.${randomBytes(32).toString('base64url')}`;
  t.match(
    parseCliArgs(['--url', 'mqtts://pi:8883', '--ca', ca, '--token', token]),
    { options: { tls: { ca }, tokens: { 'sim-0001': token } } },
    'a token over TLS',
  );

  const bad: Array<[string[], RegExp]> = [
    [['--ca', ca], /are for a TLS URL .* not mqtt:\/\/127\.0\.0\.1:1883 \(the default --url\)/],
    [['--url', 'mqtt://pi:1883', '--ca', ca], /are for a TLS URL/],
    [['--url', 'mqtts://pi:8883', '--cert', cert], /--cert and --key go together/],
    [['--url', 'mqtts://pi:8883', '--key', key], /--cert and --key go together/],
    [['--url', 'mqtts://pi:8883', '--ca', path.join(dir, 'nope.pem')], /cannot read --ca .*nope\.pem: no such file/],
    [['--url', 'mqtts://pi:8883', '--ca', dir], /cannot read --ca .*: is a directory/],
    [
      ['--url', 'mqtts://pi:8883', '--cert', path.join(dir, 'not-a-cert.pem'), '--key', key],
      /--cert .*not-a-cert\.pem: not a PEM certificate/,
    ],
    [
      ['--url', 'mqtts://pi:8883', '--cert', cert, '--key', key, '--devices', '2'],
      /--cert is the certificate of one device \(pump-7, its CN\), not of --devices 2/,
    ],
    [
      ['--url', 'mqtts://pi:8883', '--cert', cert, '--key', key, '--prefix', 'sim-'],
      /--cert is for device pump-7 \(its CN\), but --prefix sim- names the device sim-0001/,
    ],
    [
      ['--url', 'mqtts://pi:8883', '--cert', cert, '--key', key, '--token', token],
      /--token is for device sim-0001, but --cert is the certificate of pump-7/,
    ],
  ];
  for (const [args, message] of bad) {
    t.throws(() => parseCliArgs(args), { name: 'UsageError', message }, args.join(' ').replace(dir, '<dir>'));
  }
});

// ---------------------------------------------------------------- with a real broker

const mosquitto = findMosquitto();
if (!mosquitto) {
  t.comment('mosquitto not found (set MOSQUITTO=/path/to/mosquitto); broker tests skipped');
} else {
  const broker = await startBroker(mosquitto, t.testdir());
  t.teardown(() => {
    broker.proc.kill('SIGTERM');
  });
  const url = broker.url;

  t.test('fleet: every device delivers seq 1..20 exactly once', async (t) => {
    const sub = await subscribe(url, 'devices/+/telemetry');
    t.teardown(() => sub.endAsync(true));
    const seqs = new Map<string, number[]>();
    const problems: string[] = [];
    sub.on('message', (topic, payload) => {
      const id = topic.split('/')[1] ?? '';
      if (!id.startsWith('cnt-')) return;
      if (payload.length >= 160) problems.push(`${topic}: payload ${payload.length} bytes`);
      const msg = JSON.parse(payload.toString()) as Record<string, unknown>;
      const { deviceId, seq, ts, temp, humidity } = msg;
      if (deviceId !== id) problems.push(`${topic}: deviceId ${String(deviceId)}`);
      if (typeof ts !== 'number' || Math.abs(Date.now() - ts) > 60_000) problems.push(`${topic}: ts ${String(ts)}`);
      if (typeof temp !== 'number' || temp < -40 || temp > 85) problems.push(`${topic}: temp ${String(temp)}`);
      if (typeof humidity !== 'number' || humidity < 0 || humidity > 100) {
        problems.push(`${topic}: humidity ${String(humidity)}`);
      }
      if (typeof seq !== 'number') problems.push(`${topic}: seq ${String(seq)}`);
      else seqs.set(id, [...(seqs.get(id) ?? []), seq]);
    });

    const lines: string[] = [];
    const fleet = startFleet({ url, devices: 3, rate: 50, count: 20, prefix: 'cnt-', seed: 42, log: (l) => lines.push(l) });
    const summary = await fleet.done;
    const total = (): number => [...seqs.values()].reduce((a, s) => a + s.length, 0);
    await waitFor(() => total() >= 60, 5000);
    await sleep(200); // a duplicate would arrive right behind

    const ids = ['cnt-0001', 'cnt-0002', 'cnt-0003'];
    const oneToTwenty = Array.from({ length: 20 }, (_, i) => i + 1);
    t.same(problems, [], 'payloads are well-formed and plausible');
    for (const id of ids) {
      t.same(
        [...(seqs.get(id) ?? [])].sort((a, b) => a - b),
        oneToTwenty,
        `${id}: seq 1..20 exactly once`,
      );
    }
    t.match(summary, {
      event: 'summary',
      devices: 3,
      sent: 60,
      acked: 60,
      failed: 0,
      reason: 'count',
      seed: 42,
      lastSeq: { 'cnt-0001': 20, 'cnt-0002': 20, 'cnt-0003': 20 },
    });
    t.ok(summary.seconds > 0 && summary.rate > 0, 'summary has duration and rate');
    for (const id of ids) {
      t.ok(
        lines.some((l) => l === `${id} connected to ${url}`),
        `logged "${id} connected to ${url}"`,
      );
    }
    t.same(fleet.stats().connected, 0, 'all clients ended');
  });

  t.test('fleet: readings are reproducible with a seed', async (t) => {
    const sub = await subscribe(url, 'devices/seed-0001/telemetry');
    t.teardown(() => sub.endAsync(true));
    const temps: number[] = [];
    sub.on('message', (_topic, payload) => temps.push((JSON.parse(payload.toString()) as { temp: number }).temp));
    const fleet = startFleet({ url, devices: 1, rate: 'max', count: 10, prefix: 'seed-', seed: 'abc', log: () => {} });
    await fleet.done;
    await waitFor(() => temps.length >= 10, 3000);
    const model = deviceSensor(parseSeed('abc'), 'seed-0001');
    t.same(
      temps,
      Array.from({ length: 10 }, () => model.next().temp),
      'same values as the pure model',
    );
  });

  t.test('fleet: max mode publishes on PUBACK with K in flight', async (t) => {
    const sub = await subscribe(url, 'devices/+/telemetry');
    t.teardown(() => sub.endAsync(true));
    const seen = new Map<string, Set<number>>();
    let dups = 0;
    sub.on('message', (topic, payload) => {
      const id = topic.split('/')[1] ?? '';
      if (!id.startsWith('max-')) return;
      const { seq } = JSON.parse(payload.toString()) as { seq: number };
      const set = seen.get(id) ?? new Set<number>();
      if (set.has(seq)) dups++;
      set.add(seq);
      seen.set(id, set);
    });
    let maxInflight = 0;
    const fleet = startFleet({ url, devices: 2, rate: 'max', inflight: 3, count: 300, prefix: 'max-', log: () => {} });
    fleet.on('sent', () => {
      maxInflight = Math.max(maxInflight, ...fleet.devices.map((d) => d.stats().inflight));
    });
    const summary = await fleet.done;
    await waitFor(() => [...seen.values()].reduce((a, s) => a + s.size, 0) >= 600, 5000);
    t.match(summary, { sent: 600, acked: 600, targetRate: 'max', lastSeq: { 'max-0001': 300, 'max-0002': 300 } });
    t.equal(seen.get('max-0001')?.size, 300);
    t.equal(seen.get('max-0002')?.size, 300);
    t.equal(dups, 0, 'no duplicates');
    t.ok(maxInflight <= 3, `never more than 3 in flight per device (saw ${maxInflight})`);
  });

  t.test('downlink commands: rate, pause, resume, unknown', async (t) => {
    const id = 'rate-0001';
    const sub = await subscribe(url, `devices/${id}/telemetry`);
    const ctl = await connectAsync(url, { clientId: `test-ctl-${process.pid}`, reconnectPeriod: 0 });
    const lines: string[] = [];
    const fleet = startFleet({ url, devices: 1, rate: 1, prefix: 'rate-', log: (l) => lines.push(l) });
    t.teardown(async () => {
      await fleet.stop();
      await sub.endAsync(true);
      await ctl.endAsync(true);
    });
    const arrivals: number[] = [];
    sub.on('message', () => arrivals.push(Date.now()));
    const countIn = (from: number, to: number): number => arrivals.filter((x) => x >= from && x < to).length;
    const command = async (name: string, payload: string): Promise<DeviceCommand> => {
      const got = once(fleet, 'command') as Promise<[DeviceCommand]>;
      await ctl.publishAsync(`devices/${id}/cmd/${name}`, payload, { qos: 1 });
      const [cmd] = await got;
      return cmd;
    };
    await fleet.ready;
    const device = fleet.devices[0]!;

    const t0 = Date.now();
    await sleep(2000);
    const before = countIn(t0, t0 + 2000);
    t.ok(before >= 1 && before <= 3, `about 1 msg/s before the command (${before} in 2 s)`);

    const cmd = await command('rate', '{"rate": 20}');
    t.match(cmd, { deviceId: id, command: 'rate', action: 'rate' });
    t.equal(device.currentRate, 20);
    const t1 = Date.now();
    await sleep(1500);
    const after = countIn(t1, t1 + 1500);
    t.ok(after >= 20, `about 20 msg/s after the command (${after} in 1.5 s)`);
    t.ok(after / 1.5 > 5 * (before / 2), 'clearly faster than before');
    t.ok(
      lines.some((l) => l.includes(`${id} command rate`) && l.includes('rate set to 20/s')),
      'command logged',
    );

    t.match(await command('rate', '5'), { action: 'rate' }, 'plain number payload');
    t.equal(device.currentRate, 5);
    t.match(await command('rate', 'bogus'), { action: 'invalid' });
    t.equal(device.currentRate, 5, 'invalid payload leaves the rate alone');

    await command('pause', '');
    await sleep(300); // let a publish already on the wire arrive
    const t2 = Date.now();
    await sleep(800);
    t.equal(countIn(t2, Date.now()), 0, 'no messages while paused');

    const seqBefore = device.stats().lastSeq;
    await command('resume', '');
    t.ok(await waitFor(() => device.stats().lastSeq > seqBefore, 2000), 'publishing resumes');

    t.match(await command('reboot', '{}'), { action: 'unknown', command: 'reboot' });
    t.ok(
      lines.some((l) => l.includes('unknown command "reboot"')),
      'unknown command logged',
    );
  });

  t.test('CLI prints the JSON summary', async (t) => {
    // Compile the simulator alone into a private dir instead of rebuilding the
    // whole project into dist/ while other test files may be using it. The dir
    // is inside the project so the output resolves 'mqtt' from node_modules.
    const fixtures = path.join(ROOT, '.tap', 'fixtures');
    mkdirSync(fixtures, { recursive: true });
    const out = mkdtempSync(path.join(fixtures, 'sim-cli-'));
    t.teardown(() => rmSync(out, { recursive: true, force: true }));
    const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
    const build = await run([
      tsc,
      '--ignoreConfig',
      '--outDir',
      out,
      '--rootDir',
      ROOT,
      '--module',
      'NodeNext',
      '--moduleResolution',
      'NodeNext',
      '--target',
      'ES2022',
      '--strict',
      '--types',
      'node',
      '--skipLibCheck',
      path.join(ROOT, 'firmware-sim', 'cli.ts'),
    ]);
    t.equal(build.code, 0, `firmware-sim compiles\n${build.stdout}${build.stderr}`);
    const cli = path.join(out, 'firmware-sim', 'cli.js');

    t.test('--count', async (t) => {
      const r = await run([cli, '--url', url, '--devices', '2', '--rate', '10', '--count', '10', '--prefix', 'cli-', '--seed', '7']);
      t.equal(r.code, 0, 'exit 0');
      const lines = r.stdout.trim().split('\n');
      t.equal(lines.length, 1, 'stdout is just the summary');
      const summary = JSON.parse(lines[0] ?? '') as unknown;
      t.match(summary, {
        event: 'summary',
        devices: 2,
        sent: 20,
        acked: 20,
        seed: 7,
        reason: 'count',
        lastSeq: { 'cli-0001': 10, 'cli-0002': 10 },
      });
      t.match(r.stderr, `cli-0001 connected to ${url}`);
      t.match(r.stderr, 'cli-0001 -> devices/cli-0001/telemetry seq=1 ', 'per-message lines at 20 msg/s total');
    });

    t.test('SIGINT stops cleanly with a summary', async (t) => {
      let signalled = false;
      const r = await run([cli, '--url', url, '--devices', '1', '--rate', '10', '--prefix', 'sig-'], {
        onStderr: (text, proc) => {
          if (!signalled && text.includes('seq=3 ')) {
            signalled = true;
            proc.kill('SIGINT');
          }
        },
      });
      t.equal(r.code, 0, 'exit 0');
      const summary = JSON.parse(r.stdout.trim()) as { reason: string; sent: number; acked: number; lastSeq: Record<string, number> };
      t.equal(summary.reason, 'SIGINT');
      t.ok(summary.sent >= 3, 'sent before the signal');
      t.equal(summary.acked, summary.sent, 'everything acknowledged before exit');
      t.equal(summary.lastSeq['sig-0001'], summary.sent);
    });

    t.test('bad option: usage and exit 2', async (t) => {
      const r = await run([cli, '--qos', '2']);
      t.equal(r.code, 2);
      t.match(r.stderr, '--qos must be 0 or 1');
      t.match(r.stderr, 'Usage:');
      t.equal(r.stdout, '');
      const unknown = await run([cli, '--frobnicate']);
      t.equal(unknown.code, 2);
      t.match(unknown.stderr, 'frobnicate');
    });

    t.test('--help', async (t) => {
      const r = await run([cli, '--help']);
      t.equal(r.code, 0);
      t.match(r.stdout, '--devices N');
    });
  });
}
