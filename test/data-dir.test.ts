// One proxy per data directory (its lock, a stale lock taken over), health probes without a token,
// the uplink password kept out of logs and status, and a port in use naming the key that sets it.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { existsSync, mkdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { CLI, startProxy, type ProxyProcess } from './helpers/proxy.js';
import { adminToken, api } from './helpers/admin.js';
import { startMosquitto } from './helpers/mosquitto.js';
import { makeCa, makeCert } from './helpers/certs.js';
import { eventually } from './helpers/ports.js';

/** A proxy run to its end (it is expected to fail), on its own config in `dir`. */
function runProxy(dir: string, config: Record<string, unknown>, env: NodeJS.ProcessEnv = {}): { status: number | null; out: string } {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'edge-proxy.yaml');
  const base = {
    edge: { id: 'lock-test' },
    dataDir: join(dir, 'data'),
    rules: { dir: join(dir, 'rules') },
    mqtt: { port: 0 },
    coap: { port: 0 },
    http: { port: 0 },
    admin: { port: 0 },
  };
  writeFileSync(file, stringify({ ...base, ...config }));
  const r = spawnSync(process.execPath, [CLI, 'run', '--config', file, '--ports-file', join(dir, 'ports.json')], {
    encoding: 'utf8',
    timeout: 20_000,
    env: { ...process.env, ...env },
  });
  return { status: r.status, out: r.stdout + r.stderr };
}

function pidOf(proxy: ProxyProcess): number {
  return proxy.logs.find((l) => typeof l.pid === 'number')!.pid as number;
}

function lockOf(dir: string): { pid: number; startTime: string | null } {
  return JSON.parse(readFileSync(join(dir, 'data', 'lock'), 'utf8')) as { pid: number; startTime: string | null };
}

async function taken(): Promise<{ port: number; close: () => Promise<void> }> {
  const blocker: Server = createServer();
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
  return {
    port: (blocker.address() as { port: number }).port,
    close: () => new Promise<void>((resolve) => blocker.close(() => resolve())),
  };
}

t.test('a second proxy on the same data directory is refused, naming the running one; it does not touch its files', async (t) => {
  const dir = t.testdir();
  const first = await startProxy(dir);
  t.teardown(() => first.stop());
  const pid = pidOf(first);
  t.equal(lockOf(dir).pid, pid, 'the lock names the running proxy');
  const portsBefore = readFileSync(join(dir, 'data', 'ports.json'), 'utf8');

  const r = runProxy(join(dir, 'second'), { dataDir: join(dir, 'data') });
  t.equal(r.status, 1, 'the second start exits 1');
  t.match(r.out, /E_DATA_DIR_LOCKED/);
  t.match(r.out, new RegExp(`in use by another edge-proxy \\(PID ${pid}\\b`), 'the message names the PID of the running proxy');
  t.match(r.out, /EDGE_PROXY_DATA_DIR/, 'and how to give this one another data directory');
  t.notMatch(r.out, /"msg":"cache open"/, 'refused before the cache opens');
  t.equal(readFileSync(join(dir, 'data', 'ports.json'), 'utf8'), portsBefore, "the running proxy's ports file is untouched");
  t.equal(lockOf(dir).pid, pid, 'and so is its lock');
  t.equal((await api(first, 'GET', '/healthz', { token: null })).status, 200, 'the first proxy still serves');

  // The README's way: another port and its own data directory.
  mkdirSync(join(dir, 'other'));
  const other = await startProxy(join(dir, 'other'), {}, { EDGE_PROXY_DATA_DIR: join(dir, 'data2') });
  t.teardown(() => other.stop());
  t.ok(existsSync(join(dir, 'data2', 'lock')), 'a proxy with its own data directory starts');
  t.equal(await other.stop(), 0);
  t.notOk(existsSync(join(dir, 'data2', 'lock')), 'its lock is gone once it stopped');

  t.equal(await first.stop(), 0);
  t.notOk(existsSync(join(dir, 'data', 'lock')), 'a clean stop releases the lock');
  t.ok(existsSync(join(dir, 'data', 'cache.db')), 'and leaves the cache');
});

t.test('a stale lock (its process gone, its PID reused, or unreadable) is taken over with an info line', async (t) => {
  const cases: Array<[string, string]> = [
    ['a dead PID', JSON.stringify({ pid: 2147483646, startTime: '1', startedAt: '2024-01-01T00:00:00.000Z' })],
    // The test runner runs, but it is not the proxy that wrote this: its start time differs.
    ...(existsSync('/proc/self/stat')
      ? [['a reused PID', JSON.stringify({ pid: process.pid, startTime: '1', startedAt: '2024-01-01T00:00:00.000Z' })] as [string, string]]
      : []),
    ['a half-written file', ''],
  ];
  for (const [what, content] of cases) {
    const dir = t.testdir();
    mkdirSync(join(dir, 'data'), { recursive: true });
    const lock = join(dir, 'data', 'lock');
    writeFileSync(lock, content);
    const old = new Date(Date.now() - 60_000);
    utimesSync(lock, old, old);
    const proxy = await startProxy(dir);
    t.equal(lockOf(dir).pid, pidOf(proxy), `${what}: the proxy holds the lock now`);
    const line = proxy.logs.find((l) => typeof l.msg === 'string' && l.msg.startsWith('took over'));
    t.ok(line, `${what}: the takeover is logged`);
    t.equal(line?.level, 'info');
    t.equal(await proxy.stop(), 0);
  }
});

t.test('kill -9 leaves a lock the next start takes over', async (t) => {
  const dir = t.testdir();
  const proxy = await startProxy(dir);
  t.teardown(() => proxy.stop());
  const before = pidOf(proxy);
  await proxy.kill9();
  t.equal(lockOf(dir).pid, before, 'the lock of the killed proxy is still there');
  await proxy.restart();
  const after = proxy.logs.filter((l) => typeof l.pid === 'number').at(-1)!.pid as number;
  t.not(after, before);
  t.equal(lockOf(dir).pid, after, 'the restarted proxy holds it');
  t.ok(
    proxy.logs.some((l) => typeof l.msg === 'string' && l.msg.includes(`edge-proxy PID ${before}, which no longer runs`)),
    'and says whose lock it took over',
  );
});

t.test('a start that fails later releases the lock', async (t) => {
  const dir = t.testdir();
  const blocker = await taken();
  t.teardown(blocker.close);
  const r = runProxy(dir, { admin: { port: blocker.port } });
  t.equal(r.status, 1);
  t.match(r.out, /E_LISTEN/);
  t.notOk(existsSync(join(dir, 'data', 'lock')), 'no lock left behind');
});

t.test('health probes answer without a token when the admin port is beyond loopback; the rest still needs it', async (t) => {
  const dir = t.testdir();
  const proxy = await startProxy(dir, { admin: { host: '0.0.0.0', port: 0 } });
  t.teardown(() => proxy.stop());
  const healthz = await api(proxy, 'GET', '/healthz', { token: null });
  t.equal(healthz.status, 200);
  t.same(healthz.body, { status: 'ok' });
  const readyz = await api(proxy, 'GET', '/readyz', { token: null });
  t.equal(readyz.status, 200);
  t.same(readyz.body, { status: 'ready' });
  const url = `http://127.0.0.1:${proxy.ports.admin}`;
  t.equal((await fetch(`${url}/healthz`, { method: 'HEAD' })).status, 200, 'HEAD too');
  t.equal((await fetch(`${url}/metrics`)).status, 401, '/metrics without a token: 401');
  t.equal((await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${adminToken(proxy)}` } })).status, 200, 'with it: 200');
  t.equal((await api(proxy, 'GET', '/api/v1/status', { token: null })).status, 401, '/api/v1/status without a token: 401');
  t.equal((await api(proxy, 'GET', '/api/v1/status')).status, 200);
  t.equal((await fetch(`${url}/readyz`, { method: 'POST' })).status, 401, 'a write to a probe path still needs the token');
});

t.test('the uplink password never appears in a log line nor in the status', async (t) => {
  const dir = t.testdir();
  const cloud = await startMosquitto(join(dir, 'cloud'));
  t.teardown(() => cloud.stop());
  const secret = 'S3cr3t-uplink-pw';
  const proxy = await startProxy(dir, { uplink: { url: `mqtt://edge-user:${secret}@127.0.0.1:${cloud.port}` } });
  t.teardown(() => proxy.stop());
  await eventually('connected to the cloud', () => proxy.logs.some((l) => l.msg === 'connected to the cloud broker'));
  const status = await api(proxy, 'GET', '/api/v1/status');
  const uplink = status.body.uplink as { url: string; connected: boolean };
  t.equal(uplink.url, `mqtt://edge-user:***@127.0.0.1:${cloud.port}`, 'the status shows *** for the password');
  // The cloud goes away: the disconnection and the connection errors are logged with the URL too.
  await cloud.stop();
  await eventually('the disconnection logged', () => proxy.logs.some((l) => typeof l.msg === 'string' && l.msg.startsWith('disconnected')));
  await eventually(
    'a connection error logged',
    () => proxy.logs.some((l) => typeof l.msg === 'string' && l.msg.includes('connection error')),
    10_000,
  );
  t.equal(await proxy.stop(), 0);
  const lines = proxy.output().split('\n');
  t.ok(
    lines.some((l) => l.includes('"url":"mqtt://edge-user:***@127.0.0.1')),
    'log lines show the URL redacted',
  );
  t.same(
    lines.filter((l) => l.includes(secret)),
    [],
    'no line holds the password',
  );
});

t.test('a port in use names the configuration key and environment variable that change it', async (t) => {
  const dir = t.testdir();
  const blocker = await taken();
  t.teardown(blocker.close);

  const mqtt = runProxy(join(dir, 'mqtt'), { mqtt: { port: blocker.port } });
  t.equal(mqtt.status, 1);
  t.match(mqtt.out, new RegExp(`mqtt cannot listen on 127\\.0\\.0\\.1:${blocker.port}: .*EADDRINUSE`));
  t.match(mqtt.out, /mqtt\.port \(environment EDGE_PROXY_MQTT_PORT\)/);

  const ca = makeCa(join(dir, 'pki'), 'ca');
  const server = makeCert(ca, { cn: 'edge', name: 'server', kind: 'server' });
  const tls = runProxy(join(dir, 'tls'), { mqtt: { port: 0, tls: { port: blocker.port, cert: server.cert, key: server.key } } });
  t.equal(tls.status, 1);
  t.match(tls.out, new RegExp(`mqtt-tls cannot listen on 127\\.0\\.0\\.1:${blocker.port}`));
  t.match(tls.out, /mqtt\.tls\.port \(environment EDGE_PROXY_MQTT_TLS_PORT\)/);

  const admin = runProxy(join(dir, 'admin'), { admin: { port: blocker.port } });
  t.equal(admin.status, 1);
  t.match(admin.out, new RegExp(`admin cannot listen on 127\\.0\\.0\\.1:${blocker.port}`));
  t.match(admin.out, /admin\.port \(environment EDGE_PROXY_ADMIN_PORT\)/);
});
