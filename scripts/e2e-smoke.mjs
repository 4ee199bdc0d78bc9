#!/usr/bin/env node
// The end-to-end smoke of an installed proxy: the real proxy, started from an installed copy with the
// shipped model (models/bearing.onnx) and the example rules (rules/*.rules) in token mode, on the Node.js
// it is given (an arm64 one under emulation, an x64 Node 24, the host's). Devices over MQTT, the /ws JSON
// protocol and CoAP publish; the rules fire; the model's scores are compared with onnxruntime-node run
// here on the same windows; the cache keeps what it acknowledged across a kill -9; everything reaches a
// cloud Mosquitto. Prints start-up time, resident memory and a short throughput figure.
//
//   node scripts/e2e-smoke.mjs [--node BIN] [--app DIR] [--label TEXT] [--emulated TEXT] [--messages N]
//
// --app is an installed copy (dist/, models/, rules/, node_modules/ for that Node); the default is this
// checkout. --emulated says how the Node runs (e.g. "qemu-user 10.0.2, cortex-a72"): every figure is then
// labelled as emulated. This script runs on the host's Node, from this checkout (npm ci, npm run build):
// its clients (MQTT.js, ws, libcoap's coap-client-notls, Mosquitto) are the host's, only the proxy runs
// on --node. Exits 1 when a check fails.
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import mqtt from 'mqtt';
import WebSocket from 'ws';
import ort from 'onnxruntime-node';
import { stringify } from 'yaml';

const ROOT = new URL('..', import.meta.url).pathname;
const { values: opt } = parseArgs({
  options: {
    node: { type: 'string', default: process.execPath },
    app: { type: 'string', default: ROOT },
    label: { type: 'string' },
    emulated: { type: 'string' },
    messages: { type: 'string', default: '1000' },
    keep: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (opt.help) {
  console.log(
    readFileSync(new URL(import.meta.url), 'utf8')
      .split('\n')
      .slice(1, 15)
      .join('\n')
      .replace(/^\/\/ ?/gm, ''),
  );
  process.exit(0);
}

const APP = resolve(opt.app);
const CLI = join(APP, 'dist/src/cli.js');
const MESSAGES = Number(opt.messages);
const EDGE_ID = 'board-check';
const SEED = 20261203;
/** Scores are rounded to 6 decimals by the proxy; x64 and arm64 builds of ONNX Runtime agree far closer than this. */
const TOLERANCE = 1e-4;
/** The emulated board is about ten times slower: every wait allows for it. */
const WAIT_MS = opt.emulated ? 120_000 : 30_000;
const COAP_CLIENT = 'coap-client-notls';

const { deviceVibration } = await import(new URL('../dist/firmware-sim/device.js', import.meta.url).href).catch(() => {
  console.error('e2e-smoke: dist/ is missing: run `npm run build` first');
  process.exit(1);
});

const work = mkdtempSync(join(tmpdir(), 'edge-proxy-e2e-'));
const children = new Set();
process.once('exit', () => {
  for (const c of children) c.kill('SIGKILL');
  if (!opt.keep) rmSync(work, { recursive: true, force: true });
});

const failures = [];
const figures = [];
const started = performance.now();
const since = (t0) => ((performance.now() - t0) / 1000).toFixed(1);
function check(ok, what) {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failures.push(what);
  return ok;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function eventually(what, fn, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await sleep(50);
  }
}
function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.on('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}
function run(cmd, args, options = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: WAIT_MS, ...options });
  if (r.error) throw r.error;
  return r;
}

// ---- the cloud: a Mosquitto with persistence, and the cloud application's persistent QoS 1 session on it

const cloudDir = join(work, 'cloud');
mkdirSync(cloudDir);
const cloudPort = await freePort();
writeFileSync(
  join(cloudDir, 'mosquitto.conf'),
  [
    `listener ${cloudPort} 127.0.0.1`,
    'allow_anonymous true',
    'max_queued_messages 0',
    'persistence true',
    `persistence_location ${cloudDir}/`,
    ...(process.getuid?.() === 0 ? [`user ${userInfo().username}`] : []),
    'log_dest stderr',
    'log_type error',
    '',
  ].join('\n'),
);
const mosquittoBin = ['/usr/sbin/mosquitto', '/usr/local/sbin/mosquitto'].find((p) => existsSync(p)) ?? 'mosquitto';
let cloud = null;
let cloudLog = '';
async function startCloud() {
  cloud = spawn(mosquittoBin, ['-c', join(cloudDir, 'mosquitto.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
  cloud.stderr.on('data', (d) => (cloudLog += d));
  children.add(cloud);
  await eventually('the cloud Mosquitto', () => portOpen(cloudPort), 10_000);
}
async function stopCloud() {
  const c = cloud;
  cloud = null;
  await new Promise((r) => {
    c.once('exit', r);
    c.kill('SIGTERM');
  });
  children.delete(c);
}
function portOpen(port) {
  return new Promise((res) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      res(true);
    });
    s.once('error', () => res(false));
  });
}

// ---- the proxy: its configuration, registry and process

const cfgFile = join(work, 'edge-proxy.yaml');
const portsFile = join(work, 'ports.json');
mkdirSync(join(work, 'rules'));
for (const f of readdirSync(join(APP, 'rules')).filter((f) => f.endsWith('.rules'))) cpSync(join(APP, 'rules', f), join(work, 'rules', f));
writeFileSync(
  cfgFile,
  stringify({
    edge: { id: EDGE_ID },
    dataDir: join(work, 'data'),
    rules: { dir: join(work, 'rules') },
    models: { dir: join(APP, 'models') },
    auth: { mode: 'token' },
    devicesFile: join(work, 'devices.yaml'),
    mqtt: { port: 0 },
    coap: { port: 0 },
    http: { port: 0 },
    admin: { port: 0 },
    uplink: { url: `mqtt://127.0.0.1:${cloudPort}` },
    log: { level: 'info' },
  }),
);

let proxy = null;
let proxyLog = '';
let proxyExit = null;
let ports = null;
/** Starts the proxy; returns the seconds until its ports file is written, that is until it listens. */
async function startProxy() {
  rmSync(portsFile, { force: true });
  const t0 = performance.now();
  proxy = spawn(opt.node, [CLI, 'run', '--config', cfgFile, '--ports-file', portsFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(proxy);
  proxyExit = new Promise((r) => proxy.once('exit', (code, signal) => r(signal ?? code)));
  proxy.stdout.on('data', (d) => (proxyLog += d));
  proxy.stderr.on('data', (d) => (proxyLog += d));
  await eventually('the proxy to listen', () => existsSync(portsFile) || proxy.exitCode !== null);
  if (!existsSync(portsFile)) throw new Error(`the proxy exited before it listened:\n${proxyLog.slice(-3000)}`);
  ports = JSON.parse(readFileSync(portsFile, 'utf8'));
  return (performance.now() - t0) / 1000;
}
async function metric(name, labels = '') {
  const text = await (await fetch(`http://127.0.0.1:${ports.admin}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-z_][a-z0-9_]*)(\{[^}]*\})? ([-0-9.e+]+)$/.exec(line);
    if (m && m[1] === name && (m[2] ?? '').includes(labels)) sum += Number(m[3]);
  }
  return sum;
}
/** Resident memory of the proxy process in MB (VmRSS, and VmHWM the peak); under qemu-user it includes the emulator's. */
function memory() {
  const status = readFileSync(`/proc/${proxy.pid}/status`, 'utf8');
  const kb = (k) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? NaN);
  return { rss: kb('VmRSS') / 1024, peak: kb('VmHWM') / 1024 };
}
/** The proxy's command line on the target Node, or with `host`, this checkout's on the host's Node (faster under emulation). */
function cli(args, host = false) {
  const r = host
    ? run(process.execPath, [join(ROOT, 'dist/src/cli.js'), ...args, '--config', cfgFile])
    : run(opt.node, [CLI, ...args, '--config', cfgFile]);
  if (r.status !== 0) throw new Error(`edge-proxy ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.stdout.trim();
}

// ---- clients

async function mqttDevice(id, token) {
  const c = await mqtt.connectAsync(`mqtt://127.0.0.1:${ports.mqtt}`, {
    clientId: id,
    username: id,
    password: token,
    protocolVersion: 4,
    reconnectPeriod: 0,
    connectTimeout: WAIT_MS,
  });
  const received = [];
  c.on('message', (topic, payload) => received.push({ topic, payload: JSON.parse(payload.toString()) }));
  return { c, received };
}

/** A device on the /ws JSON protocol; `request` sends a frame with an id and resolves on its answer. */
async function wsDevice(id, token) {
  const ws = new WebSocket(`ws://127.0.0.1:${ports.http}/ws?d=${id}&token=${encodeURIComponent(token)}`);
  await new Promise((res, rej) => {
    ws.once('open', res);
    ws.once('error', rej);
  });
  const msgs = [];
  const waiting = new Map();
  let n = 0;
  ws.on('message', (data) => {
    const f = JSON.parse(data.toString());
    if (f.op === 'msg') msgs.push(f);
    else if (f.id !== undefined && waiting.has(f.id)) {
      waiting.get(f.id)(f);
      waiting.delete(f.id);
    }
  });
  return {
    ws,
    msgs,
    request(frame) {
      const fid = `${id}-${++n}`;
      return new Promise((res) => {
        waiting.set(fid, res);
        ws.send(JSON.stringify({ ...frame, id: fid }));
      });
    },
  };
}

/** A confirmable CoAP POST by libcoap's client, JSON (content-format 50), block-wise when over 1 KB. */
function coapPost(id, token, topic, payload) {
  const file = join(work, `coap-${id}.json`);
  writeFileSync(file, JSON.stringify(payload));
  const url = `coap://127.0.0.1:${ports.coap}/ps/${topic}?d=${id}&k=${encodeURIComponent(token)}`;
  const r = run(COAP_CLIENT, ['-m', 'post', '-t', '50', '-b', '1024', '-f', file, url]);
  return r.status === 0 && !/[45]\.\d\d/.test(r.stdout + r.stderr) ? null : `exit ${r.status}: ${r.stdout}${r.stderr}`;
}

// ---- the checks

const label = opt.label ?? `Node ${run(opt.node, ['-p', 'process.arch + " " + process.version']).stdout.trim()}`;
const emu = opt.emulated ? ` (EMULATED: ${opt.emulated})` : '';
console.log(`== end-to-end smoke: ${label}${emu}`);

async function main() {
  await startCloud();
  const app = await mqtt.connectAsync(`mqtt://127.0.0.1:${cloudPort}`, { clientId: 'cloud-app', clean: false, reconnectPeriod: 200 });
  app.on('error', () => {});
  const up = [];
  app.on('message', (topic, payload) => up.push(JSON.parse(payload.toString())));
  await app.subscribeAsync(`edge/${EDGE_ID}/up/#`, { qos: 1 });
  const atCloud = (pred) => up.filter(pred);

  // The registry: the first device added by the installed command line on the target Node, the others
  // by this checkout's (each start of the command line costs seconds under emulation).
  let t0 = performance.now();
  const tokens = {};
  tokens['mqtt-1'] = cli(['devices', 'add', 'mqtt-1']);
  const addSeconds = since(t0);
  for (const id of ['ws-1', 'coap-1']) tokens[id] = cli(['devices', 'add', id], true);
  tokens.dash = cli(
    ['devices', 'add', 'dash', '--subscribe', 'devices/#', '--subscribe', 'ml/#', '--subscribe', 'events/#', '--publish', 'dash/#'],
    true,
  );
  const listed = cli(['devices', 'list']);
  check(
    Object.values(tokens).every((tk) => /^[\w.:-]+\.[\w-]{43}$/.test(tk)) &&
      ['mqtt-1', 'ws-1', 'coap-1', 'dash'].every((id) => listed.includes(id)),
    `edge-proxy devices add on the target: mqtt-1 in ${addSeconds} s; devices list shows the 4 devices`,
  );

  const coldStart = await startProxy();
  t0 = performance.now();
  await eventually('the bearing model to load', async () => (await metric('edge_models_loaded_total', 'model="bearing"')) >= 1);
  const modelLoaded = coldStart + (performance.now() - t0) / 1000;
  const idle = memory();
  check(true, `proxy listening after ${coldStart.toFixed(1)} s, bearing model loaded after ${modelLoaded.toFixed(1)} s`);

  // Devices: MQTT over TCP, the /ws JSON protocol, CoAP; a dashboard on /ws that watches everything.
  const dash = await wsDevice('dash', tokens.dash);
  for (const topic of ['devices/+/vibration', 'ml/bearing/#', 'events/#', 'devices/+/cmd/#']) {
    const a = await dash.request({ op: 'sub', topic });
    if (a.op !== 'ack') throw new Error(`dash could not subscribe to ${topic}: ${JSON.stringify(a)}`);
  }
  const m1 = await mqttDevice('mqtt-1', tokens['mqtt-1']);
  await m1.c.subscribeAsync('devices/mqtt-1/cmd/#', { qos: 1 });
  const w1 = await wsDevice('ws-1', tokens['ws-1']);
  await w1.request({ op: 'sub', topic: 'devices/ws-1/cmd/#' });

  // A bad token is refused on each protocol.
  const bad = await mqtt
    .connectAsync(`mqtt://127.0.0.1:${ports.mqtt}`, {
      clientId: 'mqtt-1',
      username: 'mqtt-1',
      password: 'mqtt-1.wrong',
      protocolVersion: 4,
      reconnectPeriod: 0,
    })
    .then((c) => (c.end(true), 'connected'))
    .catch((e) => String(e.message));
  check(/Bad username or password|Not authorized/i.test(bad), `token mode: MQTT with a wrong token is refused (${bad})`);

  // Rules on device messages: an overheating /ws device is told to switch its fan on, its low battery
  // raises an event; a CoAP alarm goes up as critical.
  const ack = await w1.request({ op: 'pub', topic: 'devices/ws-1/telemetry', payload: { temp: 41.5, battery: 3.3 }, qos: 1 });
  check(ack.op === 'ack', `/ws: QoS 1 publish acknowledged (${JSON.stringify(ack)})`);
  const coapErr = coapPost('coap-1', tokens['coap-1'], 'devices/coap-1/alarm/door', { open: true });
  check(coapErr === null, `CoAP: confirmable POST answered 2.04${coapErr ? `: ${coapErr}` : ''}`);
  const fan = await eventually('devices/ws-1/cmd/fan', () => w1.msgs.find((f) => f.topic === 'devices/ws-1/cmd/fan')).catch(() => null);
  check(fan?.payload?.on === true, `rule overheat_fan: the /ws device got devices/ws-1/cmd/fan ${JSON.stringify(fan?.payload)}`);
  const lowBattery = await eventually('events/low_battery', () => dash.msgs.find((f) => f.topic === 'events/low_battery')).catch(
    () => null,
  );
  check(lowBattery?.payload?.device === 'ws-1', `rule low_battery: events/low_battery ${JSON.stringify(lowBattery?.payload)}`);

  // The model: vibration windows from the three protocols; each result is matched to its window by the
  // message id that /ws shows the dashboard, and its scores compared with ONNX Runtime on this machine.
  const windows = new Map(); // `${deviceId}/${seq}` -> samples
  const faulty = deviceVibration(SEED, 'mqtt-1', 'fault');
  faulty.setCondition('fault', { severity: 3 });
  const healthy = deviceVibration(SEED, 'ws-1');
  const coapWindow = deviceVibration(SEED, 'coap-1', 'fault');
  const vib = (id, seq, samples) => {
    windows.set(`${id}/${seq}`, samples);
    return { deviceId: id, seq, ts: Date.now(), sampleRateHz: 25_600, samples };
  };
  t0 = performance.now();
  const pubs = [];
  for (let i = 0; i < 12; i++)
    pubs.push(m1.c.publishAsync('devices/mqtt-1/vibration', JSON.stringify(vib('mqtt-1', i, faulty.nextWindow())), { qos: 1 }));
  for (let i = 0; i < 4; i++)
    pubs.push(w1.request({ op: 'pub', topic: 'devices/ws-1/vibration', payload: vib('ws-1', i, healthy.nextWindow()), qos: 1 }));
  await Promise.all(pubs);
  const blockErr = coapPost('coap-1', tokens['coap-1'], 'devices/coap-1/vibration', vib('coap-1', 0, coapWindow.nextWindow()));
  check(
    blockErr === null,
    `CoAP: a window of 1024 samples (${JSON.stringify(vib('coap-1', 0, windows.get('coap-1/0'))).length} bytes) posted block-wise${blockErr ? `: ${blockErr}` : ''}`,
  );
  const results = await eventually(`${windows.size} results on ml/bearing/#`, () => {
    const r = dash.msgs.filter((f) => f.topic.startsWith('ml/bearing/'));
    return r.length >= windows.size && r;
  }).catch(() => dash.msgs.filter((f) => f.topic.startsWith('ml/bearing/')));
  const inferSeconds = since(t0);
  const bySource = new Map(
    dash.msgs.filter((f) => f.topic.endsWith('/vibration')).map((f) => [f.msgId, `${f.payload.deviceId}/${f.payload.seq}`]),
  );
  const keys = [...windows.keys()];
  const session = await ort.InferenceSession.create(join(APP, 'models/bearing.onnx'));
  const input = new Float32Array(keys.length * 1024);
  keys.forEach((k, i) => input.set(windows.get(k), i * 1024));
  const out = await session.run({ input: new ort.Tensor('float32', input, [keys.length, 1024]) });
  const probs = out.probabilities.data;
  const reference = new Map(keys.map((k, i) => [k, { healthy: probs[i * 2], fault: probs[i * 2 + 1] }]));
  let maxDiff = 0;
  let matched = 0;
  let same = 0; // scores equal to x64's at the 6 decimals the proxy rounds them to
  const round6 = (x) => Math.round(x * 1e6) / 1e6;
  for (const r of results) {
    const ref = reference.get(bySource.get(r.payload.source));
    if (!ref) continue;
    matched++;
    for (const k of ['healthy', 'fault']) {
      maxDiff = Math.max(maxDiff, Math.abs(ref[k] - r.payload.scores[k]));
      if (round6(ref[k]) === r.payload.scores[k]) same++;
    }
  }
  const latencies = results.map((r) => r.payload.latencyMs).sort((a, b) => a - b);
  const p50 = latencies[Math.floor(latencies.length / 2)] ?? NaN;
  check(
    matched === windows.size && results.length === windows.size,
    `model: ${matched}/${windows.size} windows (MQTT 12, /ws 4, CoAP 1) have a result on ml/bearing/<id>, matched to their window (${inferSeconds} s)`,
  );
  check(
    matched > 0 && maxDiff <= TOLERANCE,
    `model: scores agree with ONNX Runtime on x64 for the same windows: max |diff| ${maxDiff.toExponential(2)} (tolerance ${TOLERANCE}); ${same}/${2 * matched} identical at 6 decimals`,
  );
  const faults = results.filter((r) => r.topic === 'ml/bearing/mqtt-1' && r.payload.label === 'fault').length;
  const healthyOk = results.filter((r) => r.topic === 'ml/bearing/ws-1' && r.payload.label === 'healthy').length;
  check(
    faults >= 10 && healthyOk >= 3,
    `model: ${faults}/12 windows of the faulty bearing say fault, ${healthyOk}/4 of the healthy one say healthy`,
  );
  const rate = await eventually('devices/mqtt-1/cmd/rate', () => m1.received.find((m) => m.topic === 'devices/mqtt-1/cmd/rate')).catch(
    () => null,
  );
  check(
    rate?.payload?.rate === 5,
    `rule bearing_watch_closer: the MQTT device was told ${JSON.stringify(rate?.payload)} on devices/mqtt-1/cmd/rate`,
  );
  const event = await eventually('events/bearing_fault', () => dash.msgs.find((f) => f.topic === 'events/bearing_fault')).catch(() => null);
  check(event?.payload?.device === 'mqtt-1', `rule bearing_fault: events/bearing_fault ${JSON.stringify(event?.payload)}`);

  // The cloud has each kind of message, in the proxy's envelope.
  const expectUp = [
    'devices/ws-1/telemetry',
    'devices/coap-1/alarm/door',
    'events/low_battery',
    'events/bearing_fault',
    'devices/coap-1/vibration',
  ];
  await eventually('the messages in the cloud', () => expectUp.every((topic) => atCloud((e) => e.topic === topic).length > 0)).catch(
    () => {},
  );
  const vibUp = atCloud((e) => e.topic.endsWith('/vibration')).length;
  for (const topic of expectUp)
    check(
      atCloud((e) => e.topic === topic && e.edge === EDGE_ID).length > 0,
      `cloud Mosquitto: ${topic} arrived (edge/${EDGE_ID}/up/${topic})`,
    );
  check(vibUp >= windows.size, `cloud Mosquitto: ${vibUp}/${windows.size} vibration windows arrived`);

  // Throughput: QoS 1 MQTT messages, each acknowledged once it is committed to the cache, then forwarded.
  t0 = performance.now();
  const burst = [];
  for (let i = 0; i < MESSAGES; i++)
    burst.push(m1.c.publishAsync('devices/mqtt-1/telemetry', JSON.stringify({ seq: i, temp: 21.5, battery: 3.9 }), { qos: 1 }));
  await Promise.all(burst);
  const accepted = (performance.now() - t0) / 1000;
  const isBurst = (e) => e.topic === 'devices/mqtt-1/telemetry';
  await eventually(`${MESSAGES} messages in the cloud`, () => atCloud(isBurst).length >= MESSAGES).catch(() => {});
  const delivered = (performance.now() - t0) / 1000;
  const arrived = new Set(atCloud(isBurst).map((e) => e.payload.seq)).size;
  check(arrived === MESSAGES, `throughput: ${arrived}/${MESSAGES} QoS 1 messages in the cloud`);
  const loaded = memory();

  // kill -9: the cloud goes away, devices of each protocol publish and are acknowledged (so it is in
  // the cache), the proxy is killed; after both come back, all of it must reach the cloud.
  await stopCloud();
  await eventually('the uplink to notice the cloud is gone', async () => (await metric('edge_uplink_connected')) === 0);
  const cached0 = await metric('edge_cache_messages');
  const kill = [];
  for (let i = 0; i < 40; i++) kill.push(m1.c.publishAsync('devices/mqtt-1/counter', JSON.stringify({ n: i }), { qos: 1 }));
  for (let i = 40; i < 50; i++) kill.push(w1.request({ op: 'pub', topic: 'devices/ws-1/counter', payload: { n: i }, qos: 1 }));
  const answers = await Promise.all(kill);
  let coapAcked = 0;
  for (let i = 50; i < 55; i++) if (coapPost('coap-1', tokens['coap-1'], 'devices/coap-1/counter', { n: i }) === null) coapAcked++;
  const wsAcked = answers.slice(40).filter((a) => a.op === 'ack').length;
  const acked = 40 + wsAcked + coapAcked;
  const cached = (await metric('edge_cache_messages')) - cached0;
  check(
    acked === 55 && cached >= 55,
    `kill -9: ${acked}/55 messages acknowledged with the cloud down (MQTT 40, /ws ${wsAcked}, CoAP ${coapAcked}); ${cached} more in the cache`,
  );
  proxy.kill('SIGKILL');
  check((await proxyExit) === 'SIGKILL', 'kill -9: the proxy was killed');
  for (const c of [m1.c]) c.end(true);
  dash.ws.terminate();
  w1.ws.terminate();
  await startCloud();
  const warmStart = await startProxy();
  const isCounter = (e) => e.topic.endsWith('/counter');
  await eventually(
    'the 55 messages in the cloud after the restart',
    () => new Set(atCloud(isCounter).map((e) => e.payload.n)).size >= 55,
  ).catch(() => {});
  const counted = atCloud(isCounter);
  const distinct = new Set(counted.map((e) => e.payload.n)).size;
  check(
    distinct === 55,
    `kill -9: after the restart ${distinct}/55 acknowledged messages reached the cloud (${counted.length - distinct} sent twice)`,
  );

  proxy.kill('SIGTERM');
  const code = await proxyExit;
  check(code === 0, `SIGTERM: the proxy stopped cleanly (exit ${code})`);
  await app.endAsync();
  await stopCloud();

  const e = opt.emulated ? 'EMULATED, ' : '';
  figures.push(
    `start-up (${e}to listening): ${coldStart.toFixed(1)} s cold, model loaded at ${modelLoaded.toFixed(1)} s; ${warmStart.toFixed(1)} s again after kill -9`,
    `resident memory (${e}VmRSS${opt.emulated ? ", qemu's own included" : ''}): ${idle.rss.toFixed(0)} MB after start, ${loaded.rss.toFixed(0)} MB after the load (peak ${loaded.peak.toFixed(0)} MB)`,
    `throughput (${e}${MESSAGES} QoS 1 MQTT messages from one device): acknowledged (in the cache) at ${(MESSAGES / accepted).toFixed(0)} msg/s, all in the cloud after ${delivered.toFixed(1)} s (${(MESSAGES / delivered).toFixed(0)} msg/s)`,
    `inference (${e}bearing model): ${results.length} windows, median arrival -> result ${p50.toFixed(1)} ms; max |score diff| vs x64 ${maxDiff.toExponential(2)}, ${same}/${2 * matched} scores identical at 6 decimals`,
    `kill -9: ${acked} acknowledged with the cloud down, ${distinct}/55 in the cloud after the restart`,
  );
}

try {
  await main();
} catch (err) {
  failures.push(String(err.message ?? err));
  console.log(`FAIL ${err.stack ?? err}`);
}
if (failures.length > 0) {
  console.log(`-- the proxy's last output:\n${proxyLog.split('\n').slice(-40).join('\n')}`);
  console.log(`-- the cloud Mosquitto's:\n${cloudLog.split('\n').slice(-10).join('\n')}`);
}
for (const f of figures) console.log(`   ${f}`);
console.log(`== ${label}${emu}: ${failures.length === 0 ? 'passed' : `FAILED (${failures.length})`} in ${since(started)} s`);
process.exit(failures.length === 0 ? 0 : 1);
