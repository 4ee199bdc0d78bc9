// The operator's surfaces: start-up lines, ports file, admin routes, the CLI verbs.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, statSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startProxy, CLI } from './helpers/proxy.js';
import { connectClient } from './helpers/clients.js';
import { freePort } from './helpers/ports.js';

function cli(
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    cwd: opts.cwd,
    env: { ...process.env, ...opts.env },
    encoding: 'utf8',
    timeout: 20_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

t.test('start-up: listening lines, then ready, and the ports file', async (t) => {
  const dir = t.testdir();
  const proxy = await startProxy(dir);
  t.teardown(() => proxy.stop());
  const listening = proxy.logs.filter((l) => l.msg === 'listening');
  t.same(
    listening.map((l) => l.endpoint),
    ['mqtt', 'coap', 'coap6', 'http', 'admin'],
  );
  const ports = proxy.ports as Record<string, number>;
  t.same(
    listening.map((l) => l.port),
    [ports.mqtt, ports.coap, ports.coap6, ports.http, ports.admin],
    'the ports file has the real ports',
  );
  t.ok(proxy.ports.mqtt > 0 && proxy.ports.http > 0 && proxy.ports.admin > 0, 'port 0 became a real port');
  const readyAt = proxy.logs.findIndex((l) => l.msg === 'ready');
  t.ok(readyAt > proxy.logs.lastIndexOf(listening.at(-1)!), 'ready comes after every listening line');
  t.ok(
    proxy.logs.some((l) => l.level === 'warn' && String(l.msg).includes('auth.mode is open')),
    'warns about trial defaults',
  );
  t.ok(
    proxy.logs.some((l) => l.level === 'warn' && String(l.msg).includes('running offline')),
    'says it runs offline without uplink.url',
  );
  const token = statSync(join(dir, 'data/admin-token'));
  t.equal(token.mode & 0o777, 0o600, 'the generated admin token is readable by its owner only');
});

t.test('admin routes: health, readiness, metrics, status', async (t) => {
  const dir = t.testdir();
  const proxy = await startProxy(dir);
  t.teardown(() => proxy.stop());
  const base = `http://127.0.0.1:${proxy.ports.admin}`;
  t.equal((await fetch(`${base}/healthz`)).status, 200);
  const ready = await fetch(`${base}/readyz`);
  t.equal(ready.status, 200);
  const device = await connectClient(proxy.ports.mqtt, { clientId: 'm-1' });
  await device.publishAsync('devices/m-1/telemetry', '{"v":1}', { qos: 1 });
  await device.publishAsync('devices/m-1/telemetry', '{"v":2}', { qos: 1 });
  const metrics = await (await fetch(`${base}/metrics`)).text();
  for (const name of [
    'edge_messages_received_total{protocol="mqtt"} 2',
    'edge_cache_messages{priority="normal"} 2',
    'edge_cache_writable 1',
    'edge_uplink_connected 0',
    'edge_messages_refused_total',
    'edge_cache_bytes',
    'edge_cache_oldest_age_seconds',
    'process_resident_memory_bytes',
  ]) {
    t.ok(metrics.includes(name), `metrics include ${name}`);
  }
  const status = (await (await fetch(`${base}/api/v1/status`)).json()) as Record<string, unknown>;
  t.match(status, {
    edgeId: 'test-edge',
    ports: proxy.ports,
    devices: { mqtt: 1 },
    cache: { messages: 2, writable: true },
    uplink: { url: null, connected: false },
  });
  const page = await fetch(`${base}/`);
  t.match(page.headers.get('content-type'), /text\/html/);
  t.match(await page.text(), /edge-proxy/);
  t.equal((await fetch(`${base}/nope`)).status, 404);
  await device.endAsync();

  const out = cli(['status', '--config', proxy.configFile]);
  t.equal(out.status, 0, out.stderr);
  t.match(out.stdout, /cache: +2 messages/);
  t.match(out.stdout, /uplink: +none \(offline mode\)/);
  const json = cli(['status', '--config', proxy.configFile, '--json']);
  t.match(JSON.parse(json.stdout), { cache: { messages: 2 } });
});

t.test('edge-proxy status says so when no proxy runs', async (t) => {
  const out = cli(['status', '--admin', 'http://127.0.0.1:1', '--token', 'x']);
  t.equal(out.status, 2);
  t.match(out.stderr, /cannot reach the proxy/);
});

t.test('the CLI that finds no proxy, or cannot reach one, names the data directory, ports file and token file it used', async (t) => {
  const port = await freePort();
  const dir = t.testdir({ site: { 'edge-proxy.yaml': `dataDir: ./state\nadmin: { port: ${port} }\n` }, elsewhere: {} });
  const config = join(dir, 'site', 'edge-proxy.yaml');
  const state = join(dir, 'site', 'state');
  const none = cli(['rules', 'rollback', '--config', config], { cwd: join(dir, 'elsewhere') });
  t.equal(none.status, 2, none.stderr);
  t.equal(
    none.stderr,
    `no proxy is running on data directory ${state} (no ${state}/ports.json): start it, or give --admin URL (configuration ${config})\n`,
    `the data directory is the config file's ./state, not the current directory's; admin.port is not tried: ${none.stderr}`,
  );

  // A ports file with the lock of a proxy that runs (this test process stands in for it) is used.
  const stale = await freePort();
  const stat = readFileSync(`/proc/${process.pid}/stat`, 'utf8');
  const startTime = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  const files = t.testdir({
    'edge-proxy.yaml': 'dataDir: ./data\n',
    data: {
      'ports.json': `{"mqtt":1,"admin":${stale}}`,
      'admin-token': 'tok\n',
      lock: JSON.stringify({ pid: process.pid, startTime, bootId: null, startedAt: 'now' }) + '\n',
    },
  });
  const left = cli(['rules', 'rollback', '--config', join(files, 'edge-proxy.yaml')], { cwd: dir });
  t.equal(left.status, 2);
  t.match(left.stderr, `at http://127.0.0.1:${stale}: `, 'the port in ports.json');
  t.match(left.stderr, `(admin port from ${files}/data/ports.json; token from ${files}/data/admin-token)`);

  const given = cli(['rules', 'rollback', '--admin', `http://127.0.0.1:${port}`, '--token', 'x']);
  t.match(given.stderr, `(--admin and --token given). Is it running?`);
});

t.test('check-config and run refuse a file the configuration names that cannot be read, at its position', async (t) => {
  const dir = t.testdir({
    'tls.yaml': 'mqtt:\n  port: 0\n  tls: { port: 0, cert: /nonexistent.pem, key: server.key }\nadmin: { port: 0 }\n',
    'server.key': 'x',
  });
  const checked = cli(['check-config', 'tls.yaml'], { cwd: dir });
  t.equal(checked.status, 1);
  const line = 'tls.yaml:3:25: mqtt.tls.cert: E_CONFIG_FILE: cannot read /nonexistent.pem: no such file';
  t.ok(checked.stderr.includes(`configuration has 2 problems:\n${line}\n`), checked.stderr);
  // The key it can read is loaded as the endpoint would load it: `x` is no key (E_TLS).
  t.match(checked.stderr, /tls\.yaml:3:48: mqtt\.tls\.key: E_TLS: .*server\.key cannot be used: it is not a PEM private key/);
  const run = cli(['run', '--config', 'tls.yaml', '--ports-file', join(dir, 'ports.json')], { cwd: dir });
  t.equal(run.status, 1);
  t.ok(run.stderr.includes(line), `run says the same: ${run.stderr}`);
  t.equal(run.stdout, '', 'and starts nothing: no log line');
  t.notOk(existsSync(join(dir, 'data')), 'not even the data directory');

  writeFileSync(join(dir, 'token.yaml'), 'auth: { mode: token }\ndevicesFile: ./none.yaml\n');
  const warned = cli(['check-config', 'token.yaml'], { cwd: dir });
  t.equal(warned.status, 0, 'a registry not written yet is an empty one');
  t.match(warned.stderr, `token.yaml:2:14: devicesFile: warning: ${dir}/none.yaml does not exist`);
  t.match(warned.stdout, /token\.yaml: OK/);
});

t.test('check-config lists every problem with file:line:col, key and code', async (t) => {
  const dir = t.testdir({
    'bad.yaml': 'mqtt:\n  prot: 1883\n  host: 127.0.0.1\nadmin:\n  port: 70000\nuplink:\n  format: xml\n',
    'good.yaml': 'mqtt:\n  port: 1884\n',
  });
  const bad = cli(['check-config', 'bad.yaml'], { cwd: dir });
  t.equal(bad.status, 1);
  t.match(bad.stderr, /bad\.yaml:2:3: mqtt\.prot: E_CONFIG_UNKNOWN_KEY: .*did you mean `port`/);
  t.match(bad.stderr, /bad\.yaml:5:9: admin\.port: E_CONFIG_VALUE/);
  t.match(bad.stderr, /bad\.yaml:7:11: uplink\.format: E_CONFIG_VALUE/);
  const good = cli(['check-config', 'good.yaml'], { cwd: dir });
  t.equal(good.status, 0, good.stderr);
  const env = cli(['check-config', 'good.yaml'], { cwd: dir, env: { EDGE_PROXY_MQTT_PORT: 'many' } });
  t.equal(env.status, 1);
  t.match(env.stderr, /env:EDGE_PROXY_MQTT_PORT:1:1: mqtt\.port: E_CONFIG_TYPE/);
});

t.test('run refuses to start on a bad config, listing every problem', async (t) => {
  const dir = t.testdir({ 'bad.yaml': 'uplnk:\n  url: mqtt://x\nlimits:\n  maxPayloadBytes: 12 parsecs\n' });
  const out = cli(['run', '--config', join(dir, 'bad.yaml')]);
  t.equal(out.status, 1);
  t.match(out.stderr, /2 problems/);
  t.match(out.stderr, /bad\.yaml:1:1: uplnk: E_CONFIG_UNKNOWN_KEY: .*did you mean `uplink`/);
  t.match(out.stderr, /bad\.yaml:4:20: limits\.maxPayloadBytes: E_CONFIG_VALUE/);
});

t.test('version, help, and an unknown verb', async (t) => {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  t.equal(cli(['version']).stdout.trim(), pkg.version);
  t.match(cli(['--help']).stdout, /Usage:/);
  t.match(cli(['run', '--help']).stdout, /--ports-file/);
  const unknown = cli(['frobnicate']);
  t.equal(unknown.status, 2);
  t.match(unknown.stderr, /unknown verb "frobnicate"/);
});

t.test('an admin port beyond loopback needs the token for reads', async (t) => {
  const dir = t.testdir();
  const proxy = await startProxy(dir, { admin: { host: '0.0.0.0', token: 'sekret-token-123' } });
  t.teardown(() => proxy.stop());
  const base = `http://127.0.0.1:${proxy.ports.admin}`;
  t.equal((await fetch(`${base}/healthz`)).status, 200, 'health stays open for probes');
  t.equal((await fetch(`${base}/api/v1/status`)).status, 401);
  t.equal((await fetch(`${base}/metrics`, { headers: { authorization: 'Bearer wrong' } })).status, 401);
  t.equal((await fetch(`${base}/metrics`, { headers: { authorization: 'Bearer sekret-token-123' } })).status, 200);
  writeFileSync(join(dir, 'unused'), '');
});
