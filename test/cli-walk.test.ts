// A newcomer's walk through the README and docs, as a user runs the built CLI and simulator: the
// proxy the CLI talks to (never another one), files it cannot read, a bad --admin, a refused token,
// --ports-file, the offline backlog, plurals, the simulator with a client certificate, and the
// advice on a retained rules message.
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, startProxy, type ProxyProcess } from './helpers/proxy.js';
import { api } from './helpers/admin.js';
import { connectClient } from './helpers/clients.js';
import { eventually, freePort } from './helpers/ports.js';
import { makeCa, makeCert } from './helpers/certs.js';
import { writeRegistry } from './helpers/registry.js';
import { launchBrowser, openPage } from './helpers/browser.js';
import { answerCloudRulesRequest } from '../src/rules/cloud-requests.js';
import { startProxy as startInProcess } from '../src/main.js';
import { loadConfig } from '../src/config/load.js';
import { createLogger } from '../src/log.js';
import { EdgeError } from '../src/core/errors.js';

const SIM = new URL('../dist/firmware-sim/cli.js', import.meta.url).pathname;
const RULE = 'rule a\nwhen msg.topic matches "devices/#"\nthen log("info", "a")\nend\n';

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/**
 * A built program in `cwd` with `env` over the caller's environment less its EDGE_PROXY_* overrides,
 * while the test goes on (a proxy may answer it); killed after `timeoutMs`.
 */
function runIn(script: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = {}, timeoutMs = 30_000): Promise<Run> {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('EDGE_PROXY_')));
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [script, ...args], { cwd, env: { ...base, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('exit', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

const cli = (args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): Promise<Run> => runIn(CLI, args, cwd, env);

/** No stack trace, and one short message: what a user error looks like. */
function userError(t: Test, r: Run, what: string): void {
  t.notMatch(r.stderr, /\n\s+at /, `${what}: no stack trace`);
}

t.test('1. with no proxy on its data directory the CLI says so (exit 2), and never asks the proxy of admin.port', async (t) => {
  const dir = t.testdir({ work: { 'a.rules': RULE } });
  // The newcomer's first proxy, on ./data and the configured admin port.
  const port = await freePort();
  const first = await startProxy(dir, { admin: { port } });
  t.teardown(() => first.stop());
  const work = join(dir, 'work');
  const cfg = ['--config', first.configFile];
  const data2 = { EDGE_PROXY_DATA_DIR: join(dir, 'data2') };
  const none = `no proxy is running on data directory ${dir}/data2 (no ${dir}/data2/ports.json): start it, or give --admin URL`;

  const status = await cli(['status', ...cfg], work, data2);
  t.equal(status.status, 2, 'exit 2');
  t.equal(status.stdout, '', "nothing of the other proxy's status");
  t.ok(status.stderr.startsWith(none), `names the data directory and the ports file it looked for: ${status.stderr}`);
  t.match(status.stderr, `(configuration ${first.configFile})`, 'and the configuration');
  userError(t, status, 'status');

  const push = await cli(['rules', 'push', 'a.rules', ...cfg], work, data2);
  t.equal(push.status, 2);
  t.ok(push.stderr.startsWith(none), push.stderr);
  t.notMatch(push.stderr, /401/, "data2's token never went to the other proxy");
  t.equal((await api(first, 'GET', '/api/v1/rules')).body.version, 1, 'whose rules did not change');

  const ours = await cli(['status', ...cfg], work);
  t.equal(ours.status, 0, `the proxy that runs on ./data answers: ${ours.stderr}`);
  t.match(ours.stdout, /^edge-proxy \S+ on test-edge, up /);
});

t.test('1. a ports file left by a proxy that no longer runs is not used; one of a running proxy is', async (t) => {
  const stale = await freePort();
  const dir = t.testdir({
    'edge-proxy.yaml': 'dataDir: ./data\n',
    data: { 'ports.json': `{"mqtt":1,"admin":${stale}}`, 'admin-token': 'tok\n' },
  });
  const cfg = ['--config', join(dir, 'edge-proxy.yaml')];
  const data = join(dir, 'data');

  const noLock = await cli(['status', ...cfg], dir);
  t.equal(noLock.status, 2);
  t.match(
    noLock.stderr,
    `no proxy is running on data directory ${data}: ${data}/ports.json was left by one that no longer runs (there is no ${data}/lock): start it, or give --admin URL`,
  );

  // A lock whose PID ran once and no longer does (a kill -9): the child below has exited.
  const deadPid = await new Promise<number>((resolve) => {
    const child = spawn(process.execPath, ['-e', '']);
    child.on('exit', () => resolve(child.pid!));
  });
  writeFileSync(join(data, 'lock'), JSON.stringify({ pid: deadPid, startTime: null, bootId: null, startedAt: 'then' }) + '\n');
  const dead = await cli(['rules', 'rollback', ...cfg], dir);
  t.equal(dead.status, 2);
  t.match(dead.stderr, `${data}/ports.json was left by edge-proxy PID ${deadPid}, which no longer runs`);

  // The lock of a process that runs (this test's): the ports file is used, and the port named.
  const startTime = readFileSync(`/proc/${process.pid}/stat`, 'utf8');
  const fields = startTime.slice(startTime.lastIndexOf(')') + 2).split(' ');
  writeFileSync(join(data, 'lock'), JSON.stringify({ pid: process.pid, startTime: fields[19], bootId: null, startedAt: 'now' }) + '\n');
  const live = await cli(['status', ...cfg], dir);
  t.equal(live.status, 2);
  t.match(live.stderr, `cannot reach the proxy at http://127.0.0.1:${stale}: `);
  t.match(live.stderr, `(admin port from ${data}/ports.json; token from ${data}/admin-token)`);
});

t.test('2. rules push and add say what rules check says of a file they cannot read; rules test wants a messages file', async (t) => {
  const dir = t.testdir({ 'd.rules': {}, 'a.rules': RULE, msgs: {} });
  for (const [args, what] of [
    [['nomatch/*.rules'], 'a pattern that matched nothing'],
    [['d.rules'], 'a directory'],
  ] as const) {
    const check = await cli(['rules', 'check', ...args], dir);
    t.equal(check.status, 2);
    for (const verb of ['push', 'add']) {
      const r = await cli(['rules', verb, ...args], dir);
      t.equal(r.status, 2, `rules ${verb}, ${what}: exit 2`);
      t.equal(r.stderr, check.stderr, `rules ${verb}, ${what}: as rules check says it`);
      userError(t, r, `rules ${verb}`);
    }
  }
  const pattern = await cli(['rules', 'push', 'nomatch/*.rules'], dir);
  t.equal(
    pattern.stderr,
    'cannot read the rules file nomatch/*.rules: no such file (a shell pattern that matched nothing is passed on as it is) (E_USAGE)\n',
  );
  const directory = await cli(['rules', 'add', 'd.rules'], dir);
  t.equal(
    directory.stderr,
    'cannot read the rules file d.rules: it is a directory: name the files in it, such as d.rules/*.rules (E_USAGE)\n',
  );

  const input = await cli(['rules', 'test', 'a.rules', '--input', 'msgs'], dir);
  t.equal(input.status, 2);
  t.equal(
    input.stderr,
    'cannot read the input msgs: it is a directory: --input expects a JSONL messages file, one JSON object a line (or - for standard input) (E_USAGE)\n',
  );
  t.notMatch(input.stderr, /\*\.rules/, 'no rules files suggested for the messages');
});

t.test('3. an --admin without http:// or https:// is a usage error, not an unreachable proxy', async (t) => {
  const dir = t.testdir({ 'a.rules': RULE });
  const status = await cli(['status', '--admin', 'localhost:9180'], dir);
  t.equal(status.status, 2);
  t.equal(
    status.stderr,
    '--admin localhost:9180 is not a URL the CLI can use: it needs http:// or https://, such as --admin http://localhost:9180 (E_USAGE)\n',
  );
  const push = await cli(['rules', 'push', 'a.rules', '--admin', 'mqtt://127.0.0.1:1883', '--token', 'x'], dir);
  t.equal(push.status, 2);
  t.match(
    push.stderr,
    /^--admin mqtt:\/\/127\.0\.0\.1:1883 is not a URL the CLI can use: it needs http:\/\/ or https:\/\/.*\(E_USAGE\)\n$/,
  );
  t.notMatch(push.stderr + status.stderr, /Invalid URL|cannot reach|Is it running/);
});

t.test('4. a refused token: the CLI names the token it sent, or the token file it did not find, and --token', async (t) => {
  const dir = t.testdir({ elsewhere: { 'a.rules': RULE }, other: { data: { 'admin-token': 'not-this-one\n' }, 'a.rules': RULE } });
  // Beyond loopback, reads need the token too (docs/operations.md).
  const proxy = await startProxy(dir, { admin: { host: '0.0.0.0' } });
  t.teardown(() => proxy.stop());
  const admin = ['--admin', `http://127.0.0.1:${proxy.ports.admin}`];
  const elsewhere = join(dir, 'elsewhere');

  const missing = await cli(['rules', 'push', 'a.rules', ...admin], elsewhere);
  t.equal(missing.status, 1);
  t.match(missing.stderr, /answered 401: .*\(E_ADMIN_AUTH\)\n/);
  t.match(
    missing.stderr,
    `no token was sent: ${elsewhere}/data/admin-token does not exist (a proxy makes it in its data directory at its first start, unless its admin.token or admin.tokenFile is set). Give the --config of the proxy you mean, or pass its admin token with --token T\n`,
    'the token file looked for, relative to the current directory of the default configuration',
  );

  const status = await cli(['status', ...admin], elsewhere);
  t.equal(status.status, 1, 'status: 1 for a refused token');
  t.match(status.stderr, `no token was sent: ${elsewhere}/data/admin-token does not exist`);

  const other = join(dir, 'other');
  const wrongFile = await cli(['rules', 'push', 'a.rules', ...admin], other);
  t.equal(wrongFile.status, 1);
  t.match(
    wrongFile.stderr,
    `the proxy refused the token read from ${other}/data/admin-token: is that the data directory of the proxy at http://127.0.0.1:${proxy.ports.admin}? Give its --config, or pass its admin token with --token T`,
  );

  const given = await cli(['rules', 'rollback', ...admin, '--token', 'wrong'], elsewhere);
  t.equal(given.status, 1);
  t.match(given.stderr, 'the proxy refused the token given with --token');

  const right = await cli(['status', '--config', proxy.configFile], elsewhere);
  t.equal(right.status, 0, `with the proxy's configuration, its token: ${right.stderr}`);
});

t.test('5. run --ports-file in a directory that does not exist: refused before anything starts, nothing left behind', async (t) => {
  const dir = t.testdir({
    'edge-proxy.yaml': 'mqtt: { port: 0 }\ncoap: { port: 0 }\nhttp: { port: 0 }\nadmin: { port: 0 }\nrules: { dir: ./rules }\n',
    rules: {},
  });
  const r = await cli(['run', '--ports-file', '/nonexist/dir/p.json'], dir);
  t.equal(r.status, 2, 'exit 2, a usage error');
  t.equal(
    r.stderr,
    '--ports-file /nonexist/dir/p.json: the directory /nonexist/dir does not exist; create it first, or name a file in an existing directory (E_USAGE)\n',
  );
  t.equal(r.stdout, '', 'no log line: nothing listened');
  t.notOk(existsSync(join(dir, 'data')), 'no data directory, so no ports.json for the CLI to find');

  const isDir = await cli(['run', '--ports-file', 'rules'], dir);
  t.equal(isDir.status, 2);
  t.match(isDir.stderr, /^--ports-file rules: it is a directory: name a file, such as rules\/ports\.json \(E_USAGE\)\n$/);

  // A directory that takes no file (procfs; as root too), found by trying.
  const proc = await cli(['run', '--ports-file', '/proc/p.json'], dir);
  t.equal(proc.status, 2);
  t.match(proc.stderr, /^--ports-file \/proc\/p\.json: the directory \/proc cannot be written \(.*\).*\(E_USAGE\)\n$/);
  t.equal(proc.stdout, '');
});

t.test('5. a ports file that fails once the proxy listens: a clear error, and no ports.json left in the data directory', async (t) => {
  const dir = t.testdir({
    'edge-proxy.yaml':
      'mqtt: { port: 0 }\ncoap: { port: 0 }\nhttp: { port: 0 }\nadmin: { port: 0 }\nrules: { dir: ./rules }\ndataDir: ./data\n',
    rules: {},
  });
  const loaded = loadConfig({ file: join(dir, 'edge-proxy.yaml'), env: {}, cwd: dir });
  const portsFile = join(dir, 'gone', 'p.json'); // as if removed after the CLI checked it
  const err = await startInProcess(loaded, createLogger('silent'), { portsFile }).then(
    () => null,
    (e: unknown) => e,
  );
  t.ok(err instanceof EdgeError, 'an EdgeError');
  t.match(err, { code: 'E_USAGE', message: `cannot write --ports-file ${portsFile}: its directory does not exist` });
  t.notMatch((err as Error).message, /\.tmp/, 'naming the file, not a temporary one');
  t.same(
    readdirSync(join(dir, 'data')).filter((f) => f === 'ports.json' || f === 'lock'),
    [],
    'neither a ports.json for the CLI to find nor the lock stays',
  );
});

/** A device's messages to the proxy, QoS 1. */
async function publish(proxy: ProxyProcess, n: number): Promise<void> {
  const device = await connectClient(proxy.ports.mqtt, { clientId: 'walker' });
  for (let i = 0; i < n; i++) await device.publishAsync('devices/walker/telemetry', `{"i":${i}}`, { qos: 1 });
  await device.endAsync();
}

t.test('6, 7. offline mode: the backlog stays until an uplink is configured; 1 message, not 1 messages', async (t) => {
  const dir = t.testdir();
  const proxy = await startProxy(dir);
  t.teardown(() => proxy.stop());
  await publish(proxy, 1);
  const r = await cli(['status', '--config', proxy.configFile], dir);
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /^uplink: +none \(offline mode\): what would go up stays in the cache$/m);
  t.match(r.stdout, /^cache: +1 message, \d+ bytes,/m);
  t.match(r.stdout, /^drain: +none in offline mode: the backlog stays in the cache until an uplink is configured \(uplink\.url\)$/m);
  t.notMatch(r.stdout, /not draining|not connected/, 'no contradiction with the offline uplink');

  // The status page, in a real browser.
  const browser = await launchBrowser();
  t.teardown(() => browser.close());
  const { page, problems } = await openPage(await browser.newContext());
  await page.goto(`http://127.0.0.1:${proxy.ports.admin}/`);
  const backlog = page
    .locator('#cache tr', { has: page.locator('td:first-child', { hasText: /^backlog$/ }) })
    .locator('td')
    .nth(1);
  t.equal(await backlog.innerText(), '1 message', 'the status page: "1 message"');
  await publish(proxy, 1);
  await eventually('two messages on the page', async () => (await backlog.innerText()) === '2 messages', 8_000);
  t.same(problems, [], 'no script error');

  // A ruleset with one error, pushed: the log says "1 error".
  const oneError = 'rule b\nwhen msg.topic matches "devices/#"\nthen uplnk()\nend\n';
  t.equal((await api(proxy, 'PUT', '/api/v1/rules', { type: 'text/plain', body: oneError })).status, 422);
  const refused = await eventually('the refusal logged', () =>
    proxy.logs.find((l) => String(l.msg).startsWith('a ruleset from the admin API')),
  );
  t.match(refused?.msg, /^a ruleset from the admin API has 1 error; nothing changed, version 1 keeps running$/);

  // The simulator: "starting 1 device".
  const sim = await runIn(SIM, ['--url', `mqtt://127.0.0.1:${proxy.ports.mqtt}`, '--devices', '1', '--count', '1', '--rate', '20'], dir);
  t.equal(sim.status, 0, sim.stderr);
  t.match(sim.stderr, / starting 1 device -> mqtt:/);
  t.notMatch(sim.stderr, /\(s\)/, 'no "(s)" anywhere in what it says');
});

t.test('8. the simulator with a client certificate is the device its CN names', async (t) => {
  const dir = t.testdir();
  const pki = join(dir, 'pki');
  const ca = makeCa(pki, 'walk-ca');
  const server = makeCert(ca, { cn: 'edge-server', name: 'server', kind: 'server' });
  const pump7 = makeCert(ca, { cn: 'pump-7' });
  const stranger = makeCert(ca, { cn: 'stranger' });
  const devicesFile = join(dir, 'devices.yaml');
  writeRegistry(devicesFile, [{ id: 'pump-7' }]);
  const proxy = await startProxy(dir, {
    auth: { mode: 'token' },
    devicesFile,
    mqtt: { tls: { port: 0, cert: server.cert, key: server.key, ca: ca.cert } },
  });
  t.teardown(() => proxy.stop());
  const tlsPort = (proxy.ports as unknown as Record<string, number>)['mqtt-tls'];
  const url = `mqtts://127.0.0.1:${tlsPort}`;

  const help = await runIn(SIM, ['--help'], dir);
  t.match(help.stdout, /--cert FILE +client certificate \(PEM\)[\s\S]*runs that one device, named as the CN/, '--help says so');

  const ok = await runIn(
    SIM,
    ['--url', url, '--ca', ca.cert, '--cert', pump7.cert, '--key', pump7.key, '--count', '2', '--rate', '20'],
    dir,
  );
  t.equal(ok.status, 0, ok.stderr);
  t.match(
    JSON.parse(ok.stdout),
    { devices: 1, acked: 2, failed: 0, lastSeq: { 'pump-7': 2 } },
    'one device, pump-7, both messages acknowledged',
  );
  t.match(ok.stderr, / pump-7 connected to mqtts:/);
  t.equal(await proxy.metric('edge_messages_received_total', 'protocol="mqtt"'), 2, 'the proxy took them');

  const unknown = await runIn(
    SIM,
    ['--url', url, '--ca', ca.cert, '--cert', stranger.cert, '--key', stranger.key, '--duration', '1.5', '--rate', '1'],
    dir,
  );
  t.equal(unknown.status, 0);
  t.match(
    unknown.stderr,
    /warning: stranger error: .*`edge-proxy devices add stranger` registers it/,
    'a CN the registry lacks: the hint names it',
  );
  t.notMatch(unknown.stderr, /is the proxy in token mode/);

  const many = await runIn(SIM, ['--url', url, '--ca', ca.cert, '--cert', pump7.cert, '--key', pump7.key, '--devices', '3'], dir);
  t.equal(many.status, 2);
  t.match(many.stderr, /--cert is the certificate of one device \(pump-7, its CN\), not of --devices 3/);
  writeFileSync(join(dir, 'not-a-cert.pem'), 'hello\n');
  const junk = await runIn(SIM, ['--url', url, '--cert', join(dir, 'not-a-cert.pem'), '--key', pump7.key], dir);
  t.equal(junk.status, 2);
  t.match(junk.stderr, /--cert .*not-a-cert\.pem: not a PEM certificate/);
});

t.test('9. a retained rules message: the warning says how to clear the stored copy', async (t) => {
  const logged: string[] = [];
  const log = { warn: (_o: object, m: string) => logged.push(m), info: (_o: object, m: string) => logged.push(m) };
  const target = { push: () => Promise.reject(new Error('not applied')), change: () => Promise.reject(new Error('not applied')) };
  for (const kind of ['set', 'change'] as const) {
    answerCloudRulesRequest(kind, Buffer.from(RULE), true, target, () => true, log as never);
    const line = logged.at(-1)!;
    t.ok(line.startsWith(`a retained message on rules/${kind} is ignored; publish rules/${kind} without the retain flag`), line);
    t.match(line, `mosquitto_pub -r -n -t '<controlPrefix>rules/${kind}' (by default edge/<edge.id>/rules/${kind})`);
    t.match(line, 'The proxy ignores that empty message');
  }
});
