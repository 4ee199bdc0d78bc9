// The README's browser example, run as written in a real browser (Debian's Chromium through
// playwright-core) against the built proxy, beside the other WebSocket clients: the ```html block of
// "From a browser page, a phone or an ESP32" is read from README.md at test time, pointed at the
// proxy's real http port (and, in token mode, given its token where the README's comment says),
// served from a local http server and opened in Chromium. What is asserted is what the page renders
// (#out), what reached a real cloud Mosquitto, and what the browser saw on the wire (its frames and
// its console). Then, in token mode, the page, MQTT.js over ws://.../mqtt and a `ws` client on /ws
// at once: each QoS 1 publish acknowledged only once committed, each message and a cloud downlink
// delivered to each of them (and to an MQTT device over TCP) exactly once.
import t from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import mqtt from 'mqtt';
import WebSocket from 'ws';
import { launchBrowser, openPage, recordWebSockets, type PageWebSocket, type WatchedPage } from './helpers/browser.js';
import { cloudFor } from './helpers/mosquitto.js';
import { runCli, startProxy, type ProxyProcess } from './helpers/proxy.js';
import { collect, connectClient, runTool, type Collected } from './helpers/clients.js';
import { eventually, sleep } from './helpers/ports.js';

const README = new URL('../README.md', import.meta.url).pathname;
const SECTION = '### From a browser page, a phone or an ESP32';
/** What the README's page connects to, as written. */
const README_URL = 'ws://127.0.0.1:8080/ws?d=dash-1';

/** The ```html block of the README's browser section, as a user would copy it. */
function readmePage(): string {
  const lines = readFileSync(README, 'utf8').split('\n');
  const start = lines.indexOf(SECTION);
  if (start < 0) throw new Error(`README.md has no section "${SECTION}"`);
  const next = lines.findIndex((l, i) => i > start && /^#{1,3} /.test(l));
  const section = lines.slice(start + 1, next < 0 ? lines.length : next);
  const blocks: string[] = [];
  for (let i = 0; i < section.length; i++) {
    if (section[i]!.trim() !== '```html') continue;
    const end = section.findIndex((l, j) => j > i && l.trim() === '```');
    if (end < 0) throw new Error(`README.md, "${SECTION}": an html block that is never closed`);
    blocks.push(section.slice(i + 1, end).join('\n') + '\n');
    i = end;
  }
  if (blocks.length !== 1) throw new Error(`README.md, "${SECTION}": expected one html block, found ${blocks.length}`);
  return blocks[0]!;
}

/**
 * The README's page as a user edits it for this proxy: the port of its URL made the proxy's http port
 * and, in token mode, `&token=<its token>` appended to the URL, as the comment on that line says.
 */
function pageFor(html: string, httpPort: number, token?: string): string {
  const opens = [...html.matchAll(/new WebSocket\('([^']*)'\);([^\n]*)/g)];
  if (opens.length !== 1) throw new Error(`the README's page should open one WebSocket, it opens ${opens.length}:\n${html}`);
  const [whole, url, comment] = opens[0]!;
  if (url !== README_URL) throw new Error(`the README's page connects to ${url}, not ${README_URL}`);
  if (token !== undefined && !/token mode: &token=<its token>/.test(comment!)) {
    throw new Error(`the README's page no longer says how to add the token in token mode: ${whole}`);
  }
  const ours = url.replace(':8080/', `:${httpPort}/`) + (token === undefined ? '' : `&token=${token}`);
  return html.replace(whole, whole.replace(`'${url}'`, `'${ours}'`));
}

/**
 * Serves `html` at http://127.0.0.1:<port>/, and records the paths asked for. The page names no icon,
 * so Chromium asks for /favicon.ico: answered 204, as a site with no icon would, for a 404 would be a
 * console error of the browser's own making; anything else is 404.
 */
async function servePage(t: Tap, html: string): Promise<{ url: string; asked: string[] }> {
  const asked: string[] = [];
  const server = createServer((req, res) => {
    asked.push(req.url ?? '');
    if (req.url === '/') res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(html);
    else if (req.url === '/favicon.ico') res.writeHead(204).end();
    else res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`, asked };
}

type Tap = Pick<typeof t, 'teardown'>;

interface Envelope {
  id: string;
  topic: string;
  deviceId: string;
  contentType: string;
  payload: unknown;
  edge: string;
}

type Frame = { op: string; id?: string; topic?: string; payload?: unknown; code?: string } & Record<string, unknown>;

/**
 * Whether a message on `topic` was committed when its acknowledgement arrived: read the moment the
 * ack is seen, before anything else of the test runs. Committed rows stay in the cache until the
 * cloud acknowledged them, so a committed message is in the cache file, or already at the cloud.
 * `forwarded`: gone from the cache and not yet seen by the test's subscriber at the cloud, which
 * Mosquitto may serve a moment after it acknowledged the proxy; `committed` then waits for the
 * cloud to show it. (test/ws.test.ts proves the order strictly, with no uplink to race.)
 */
function commitChecker(cachePath: string, up: Collected): { db: Database.Database; check(topic: string): 'cache' | 'cloud' | 'forwarded' } {
  const db = new Database(cachePath, { readonly: true, fileMustExist: true });
  const rows = db.prepare<[string], { n: number }>('SELECT count(*) AS n FROM messages WHERE topic = ?');
  return {
    db,
    check(topic) {
      if (rows.get(topic)!.n > 0) return 'cache';
      return up.json<Envelope>().some((e) => e.topic === topic) ? 'cloud' : 'forwarded';
    },
  };
}

/** Where a message was when its ack arrived counts as committed: the cache, or the cloud (within 5 s for `forwarded`). */
async function committed(where: string | undefined, up: Collected, topic: string): Promise<boolean> {
  if (where === 'cache' || where === 'cloud') return true;
  if (where !== 'forwarded') return false;
  const deadline = Date.now() + 5_000;
  while (Date.now() < deadline) {
    if (up.json<Envelope>().some((e) => e.topic === topic)) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}

/** The envelopes the cloud got from test-edge on `topic`. */
function atCloud(up: Collected, topic: string): Envelope[] {
  return up.json<Envelope>().filter((e) => e.topic === topic);
}

/** What the page shows: the text of #out, one line per message. */
async function shown(w: WatchedPage): Promise<string[]> {
  const text = (await w.page.locator('#out').textContent()) ?? '';
  return text.split('\n').filter((l) => l !== '');
}

function frames(socket: PageWebSocket | undefined): Frame[] {
  return (socket?.received ?? []).map((f) => JSON.parse(f) as Frame);
}

async function waitForFrame(w: WatchedPage, sockets: PageWebSocket[], what: string, match: (f: Frame) => boolean): Promise<Frame> {
  const found = await eventually(
    `the page's WebSocket receives ${what}`,
    () => {
      const socket = sockets[0];
      const frame = frames(socket).find(match);
      if (frame) return frame;
      if (socket && (socket.closed || socket.errors.length > 0)) {
        const problems = w.problems.map((p) => p.text).join('; ');
        throw new Error(`the page's WebSocket ended before ${what}: ${socket.errors.join('; ')} (page: ${problems})`);
      }
      return undefined;
    },
    10_000,
  );
  return found!;
}

/** Waits until #out holds every line of `want`; fails with what it shows. */
async function waitForLines(w: WatchedPage, want: string[], timeoutMs = 10_000): Promise<string[]> {
  let last: string[] = [];
  try {
    await eventually(
      `#out shows ${want.length} lines`,
      async () => {
        last = await shown(w);
        return want.every((l) => last.includes(l));
      },
      timeoutMs,
    );
  } catch {
    const problems = w.problems.map((p) => `${p.kind}: ${p.text}`);
    throw new Error(
      `the page's #out did not show ${JSON.stringify(want)} within ${timeoutMs} ms; it shows ${JSON.stringify(last)} (page problems: ${JSON.stringify(problems)})`,
    );
  }
  return last;
}

async function uplinkUp(proxy: ProxyProcess): Promise<void> {
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);
}

const browser = await launchBrowser();
t.teardown(() => browser.close());
const README_PAGE = readmePage();

t.test('open mode: the README page as written shows a TCP device telemetry, and its publish reaches the cloud as dash-1', async (t) => {
  const dir = t.testdir();
  const { url: cloudUrl, up } = await cloudFor(t, dir);
  const cachePath = join(dir, 'cache.db');
  const proxy = await startProxy(dir, { uplink: { url: cloudUrl }, cache: { path: cachePath } });
  t.teardown(() => proxy.stop());
  await uplinkUp(proxy);
  const commit = commitChecker(cachePath, up);
  t.teardown(() => commit.db.close());

  const { url, asked } = await servePage(t, pageFor(README_PAGE, proxy.ports.http));
  const context = await browser.newContext();
  t.teardown(() => context.close());
  const w = await openPage(context);
  const atAck = new Map<string, string>();
  const sockets = recordWebSockets(w.page, (f) => {
    const frame = JSON.parse(f) as Frame;
    if (frame.op === 'ack' && frame.id === 'p1') atAck.set('devices/dash-1/hello', commit.check('devices/dash-1/hello'));
  });
  const loaded = await w.page.goto(url);
  t.equal(loaded?.status(), 200, 'the page loads from a local http server');

  // The page's sub is acknowledged: from now on a message on devices/+/telemetry must reach it.
  await waitForFrame(w, sockets, 'the ack of its sub', (f) => f.op === 'ack' && f.id === 's1');
  await waitForFrame(w, sockets, 'the ack of its pub', (f) => f.op === 'ack' && f.id === 'p1');
  t.equal(sockets.length, 1, 'the page opened one WebSocket');
  t.equal(sockets[0]!.url, `ws://127.0.0.1:${proxy.ports.http}/ws?d=dash-1`, "to the proxy's /ws, as dash-1");
  const found = atAck.get('devices/dash-1/hello');
  t.ok(await committed(found, up, 'devices/dash-1/hello'), `its QoS 1 publish was committed when the ack arrived (found in: ${found})`);

  // A TCP device, as in the README: mosquitto_pub, QoS 1.
  const pub = await runTool('mosquitto_pub', [
    ...['-h', '127.0.0.1', '-p', String(proxy.ports.mqtt), '-q', '1'],
    ...['-t', 'devices/pump-7/telemetry', '-m', '{"temp":41.5}'],
  ]);
  t.equal(pub.code, 0, `mosquitto_pub over TCP exits 0 ${pub.stderr}`);
  const line = 'devices/pump-7/telemetry {"temp":41.5}';
  await waitForLines(w, [line]);

  // The page's own publish, at the cloud.
  const hello = await eventually('devices/dash-1/hello at the cloud', () => atCloud(up, 'devices/dash-1/hello')[0]);
  t.match(hello, { deviceId: 'dash-1', contentType: 'json', payload: { hi: 1 }, edge: 'test-edge' }, "the page's publish, as dash-1");
  await eventually('the TCP device message at the cloud', () => atCloud(up, 'devices/pump-7/telemetry').length > 0);
  await sleep(300); // anything sent twice would show by now
  t.same(await shown(w), [line], '#out shows the TCP device message, once, and nothing else');
  t.equal(atCloud(up, 'devices/dash-1/hello').length, 1, "the page's publish went up once");
  t.match(atCloud(up, 'devices/pump-7/telemetry'), [{ deviceId: 'pump-7', payload: { temp: 41.5 } }], 'the TCP message went up once');
  t.same(
    frames(sockets[0]).map((f) => [f.op, f.id ?? f.topic]),
    [
      ['ack', 's1'],
      ['ack', 'p1'],
      ['msg', 'devices/pump-7/telemetry'],
    ],
    'the page received its two acks, in order, and the one message: no error frame',
  );
  t.same(sockets[0]!.errors, [], 'no socket error');
  t.same(w.problems, [], 'no script error and no console error');
  t.same(
    asked.filter((path) => path !== '/favicon.ico'),
    ['/'],
    'the page asked its server for nothing but itself (and the browser for its icon)',
  );
});

t.test('token mode: the README page, MQTT.js over /mqtt and a ws client on /ws at once, with a TCP device and subscriber', async (t) => {
  const dir = t.testdir();
  const { url: cloudUrl, up } = await cloudFor(t, dir);
  const cachePath = join(dir, 'cache.db');
  const devicesFile = join(dir, 'devices.yaml');

  // The registry, made with the CLI as docs/websocket.md says, before the proxy starts.
  writeFileSync(join(dir, 'edge-proxy.yaml'), 'auth: { mode: token }\ndevicesFile: ./devices.yaml\n');
  const tokens: Record<string, string> = {};
  const add = async (id: string, ...options: string[]): Promise<void> => {
    const run = await runCli(['devices', 'add', id, ...options], dir);
    t.equal(run.status, 0, run.status === 0 ? `devices add ${id}` : `devices add ${id}: ${run.stderr}`);
    const lines = run.stdout.split('\n').filter(Boolean);
    t.equal(lines.length, 1, `devices add ${id} prints its token alone on stdout`);
    tokens[id] = lines[0]!;
  };
  await add('dash-1', '--subscribe', 'devices/+/telemetry');
  await add('pump-7');
  await add('ws-mqtt', '--subscribe', 'devices/+/telemetry');
  await add('ws-json', '--subscribe', 'devices/+/telemetry');
  await add('tcp-watch', '--subscribe', 'devices/+/telemetry', '--subscribe', 'devices/tcp-watch/#');

  const proxy = await startProxy(dir, { uplink: { url: cloudUrl }, cache: { path: cachePath }, auth: { mode: 'token' }, devicesFile });
  t.teardown(() => proxy.stop());
  await uplinkUp(proxy);
  const commit = commitChecker(cachePath, up);
  t.teardown(() => commit.db.close());
  /** where each QoS 1 message was found the moment its ack arrived */
  const atAck = new Map<string, string>();

  // An MQTT device over TCP, subscribed to the telemetry of every device (and to a probe topic).
  const tcp = await connectClient(proxy.ports.mqtt, { clientId: 'tcp-watch', username: 'tcp-watch', password: tokens['tcp-watch'] });
  t.teardown(() => tcp.endAsync(true));
  const tcpGot = await collect(tcp, 'devices/+/telemetry');
  const probes = await collect(tcp, 'devices/tcp-watch/#');

  // MQTT.js over WebSocket, credentials in CONNECT.
  const mqttWs = await mqtt.connectAsync(`ws://127.0.0.1:${proxy.ports.http}/mqtt`, {
    clientId: 'ws-mqtt',
    username: 'ws-mqtt',
    password: tokens['ws-mqtt'],
    reconnectPeriod: 0,
    connectTimeout: 5_000,
  });
  t.teardown(() => mqttWs.endAsync(true));
  const mqttWsGot = await collect(mqttWs, 'devices/+/telemetry');
  mqttWs.on('packetreceive', (packet) => {
    if (packet.cmd === 'puback') atAck.set('devices/ws-mqtt/telemetry', commit.check('devices/ws-mqtt/telemetry'));
  });

  // A ws client on /ws, its token in the Authorization header.
  const json = new WebSocket(`ws://127.0.0.1:${proxy.ports.http}/ws`, { headers: { authorization: `Bearer ${tokens['ws-json']}` } });
  const jsonFrames: Frame[] = [];
  json.on('message', (data: Buffer) => {
    const frame = JSON.parse(data.toString('utf8')) as Frame;
    if (frame.op === 'ack' && frame.id === 'j-pub') atAck.set('devices/ws-json/telemetry', commit.check('devices/ws-json/telemetry'));
    jsonFrames.push(frame);
  });
  await new Promise<void>((resolve, reject) => {
    json.once('open', () => resolve());
    json.once('error', reject);
  });
  t.teardown(() => json.terminate());
  json.send(JSON.stringify({ op: 'sub', topic: 'devices/+/telemetry', id: 'j-sub' }));
  t.same(
    await eventually('the ws client sub ack', () => jsonFrames.find((f) => f.id === 'j-sub')),
    { op: 'ack', id: 'j-sub' },
    'the ws client subscribed',
  );

  // The README page, its token appended to its URL as its comment says.
  const { url, asked } = await servePage(t, pageFor(README_PAGE, proxy.ports.http, tokens['dash-1']));
  const context = await browser.newContext();
  t.teardown(() => context.close());
  const w = await openPage(context);
  const sockets = recordWebSockets(w.page, (f) => {
    const frame = JSON.parse(f) as Frame;
    if (frame.op === 'ack' && frame.id === 'p1') atAck.set('devices/dash-1/hello', commit.check('devices/dash-1/hello'));
  });
  t.equal((await w.page.goto(url))?.status(), 200, 'the page loads');
  await waitForFrame(w, sockets, 'the ack of its sub', (f) => f.op === 'ack' && f.id === 's1');
  t.equal(sockets[0]?.url, `ws://127.0.0.1:${proxy.ports.http}/ws?d=dash-1&token=${tokens['dash-1']}`, 'the page connected with its token');

  // Everybody publishes QoS 1 at once: MQTT.js over /mqtt, the ws client, a TCP device with mosquitto_pub
  // (the page published on opening).
  json.send(JSON.stringify({ op: 'pub', topic: 'devices/ws-json/telemetry', payload: { via: 'ws' }, qos: 1, id: 'j-pub' }));
  const published = await Promise.all([
    mqttWs.publishAsync('devices/ws-mqtt/telemetry', JSON.stringify({ via: 'mqtt-ws' }), { qos: 1 }),
    eventually('the ws client pub answer', () => jsonFrames.find((f) => f.id === 'j-pub')),
    // mosquitto_pub exits once its PUBACK came: the check is made when it has exited.
    runTool('mosquitto_pub', [
      ...['-h', '127.0.0.1', '-p', String(proxy.ports.mqtt), '-u', 'pump-7', '-P', tokens['pump-7']!, '-q', '1'],
      ...['-t', 'devices/pump-7/telemetry', '-m', '{"temp":41.5}'],
    ]).then((run) => {
      if (run.code === 0) atAck.set('devices/pump-7/telemetry', commit.check('devices/pump-7/telemetry'));
      return run;
    }),
    waitForFrame(w, sockets, 'the ack of its pub', (f) => f.id === 'p1'),
  ]);
  t.match(published[0], { cmd: 'publish', qos: 1 }, 'MQTT.js over /mqtt: PUBACK');
  t.same(published[1], { op: 'ack', id: 'j-pub' }, 'the ws client: ack');
  t.equal(published[2].code, 0, `mosquitto_pub over TCP as pump-7 exits 0 ${published[2].stderr}`);
  t.same(published[3], { op: 'ack', id: 'p1' }, 'the page: ack');
  for (const topic of ['devices/dash-1/hello', 'devices/ws-mqtt/telemetry', 'devices/ws-json/telemetry', 'devices/pump-7/telemetry']) {
    const where = atAck.get(topic);
    t.ok(await committed(where, up, topic), `${topic}: committed when acknowledged (found in: ${where ?? 'no ack seen'})`);
  }

  // A cloud downlink. The proxy subscribes to edge/test-edge/down/# once connected: a probe only the
  // TCP device receives is resent until it arrives, then the downlink is sent once.
  const cloud = await mqtt.connectAsync(cloudUrl, { reconnectPeriod: 0 });
  t.teardown(() => cloud.endAsync(true));
  await eventually(
    'a probe downlink at the TCP device',
    async () => {
      if (probes.messages.length > 0) return true;
      await cloud.publishAsync('edge/test-edge/down/devices/tcp-watch/probe', 'probe', { qos: 1 });
      await sleep(200);
      return probes.messages.length > 0;
    },
    10_000,
  );
  await cloud.publishAsync('edge/test-edge/down/devices/remote-9/telemetry', JSON.stringify({ from: 'cloud' }), { qos: 1 });

  const expected: Array<[string, unknown]> = [
    ['devices/ws-mqtt/telemetry', { via: 'mqtt-ws' }],
    ['devices/ws-json/telemetry', { via: 'ws' }],
    ['devices/pump-7/telemetry', { temp: 41.5 }],
    ['devices/remote-9/telemetry', { from: 'cloud' }],
  ];
  const lines = expected.map(([topic, payload]) => `${topic} ${JSON.stringify(payload)}`);
  const jsonMsgs = (): Frame[] => jsonFrames.filter((f) => f.op === 'msg');
  const ofMqtt = (got: Collected): string[] => got.messages.map((m) => `${m.topic} ${JSON.stringify(JSON.parse(m.payload.toString()))}`);
  await waitForLines(w, lines);
  await eventually('every message at the other subscribers', () =>
    lines.every(
      (l) =>
        ofMqtt(tcpGot).includes(l) &&
        ofMqtt(mqttWsGot).includes(l) &&
        jsonMsgs().some((f) => `${f.topic} ${JSON.stringify(f.payload)}` === l),
    ),
  );
  await eventually('every publish at the cloud', () =>
    ['devices/dash-1/hello', ...expected.slice(0, 3).map(([topic]) => topic)].every((topic) => atCloud(up, topic).length > 0),
  );
  await sleep(500); // anything delivered twice would show by now

  const sorted = (l: string[]): string[] => [...l].sort();
  t.same(sorted(await shown(w)), sorted(lines), "the page's #out: every device's telemetry and the cloud downlink, each once");
  t.same(sorted(jsonMsgs().map((f) => `${f.topic} ${JSON.stringify(f.payload)}`)), sorted(lines), 'the ws client on /ws: each once');
  t.same(sorted(ofMqtt(mqttWsGot)), sorted(lines), 'MQTT.js over /mqtt: each once');
  t.same(sorted(ofMqtt(tcpGot)), sorted(lines), 'the MQTT device over TCP: each once');

  t.match(
    atCloud(up, 'devices/dash-1/hello'),
    [{ deviceId: 'dash-1', contentType: 'json', payload: { hi: 1 } }],
    'the page: at the cloud once, as dash-1',
  );
  t.match(atCloud(up, 'devices/ws-mqtt/telemetry'), [{ deviceId: 'ws-mqtt', payload: { via: 'mqtt-ws' } }], '/mqtt: once, as ws-mqtt');
  t.match(atCloud(up, 'devices/ws-json/telemetry'), [{ deviceId: 'ws-json', payload: { via: 'ws' } }], '/ws: once, as ws-json');
  t.match(atCloud(up, 'devices/pump-7/telemetry'), [{ deviceId: 'pump-7', payload: { temp: 41.5 } }], 'TCP: once, as pump-7');
  t.same(atCloud(up, 'devices/remote-9/telemetry'), [], 'the downlink did not go back up');

  t.same(
    frames(sockets[0]).filter((f) => f.op !== 'msg'),
    [
      { op: 'ack', id: 's1' },
      { op: 'ack', id: 'p1' },
    ],
    'the page got its two acks and no error frame',
  );
  t.same(
    jsonFrames.filter((f) => f.op !== 'msg'),
    [
      { op: 'ack', id: 'j-sub' },
      { op: 'ack', id: 'j-pub' },
    ],
    'the ws client got its two acks and no error frame',
  );
  t.same(sockets[0]!.errors, [], 'no socket error in the page');
  t.notOk(sockets[0]!.closed, "the page's WebSocket is still open");
  t.same(w.problems, [], 'no script error and no console error');
  t.same(
    asked.filter((path) => path !== '/favicon.ico'),
    ['/'],
    'the page asked its server for nothing but itself (and the browser for its icon)',
  );
});
