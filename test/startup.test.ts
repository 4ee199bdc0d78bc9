// Starting up: a start that fails half-way says why and stops what had started; open mode beyond
// loopback is called out; token mode starts only on a registry without problems.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { CLI, startProxy } from './helpers/proxy.js';

function runProxy(dir: string, config: Record<string, unknown>): { status: number | null; out: string } {
  const file = join(dir, 'edge-proxy.yaml');
  const base = {
    edge: { id: 'start-test' },
    dataDir: join(dir, 'data'),
    rules: { dir: join(dir, 'rules') },
    mqtt: { port: 0 },
    coap: { port: 0 },
    http: { port: 0 },
    admin: { port: 0 },
  };
  writeFileSync(file, stringify({ ...base, ...config, mqtt: { ...base.mqtt, ...(config.mqtt as object) } }));
  const r = spawnSync(process.execPath, [CLI, 'run', '--config', file, '--ports-file', join(dir, 'ports.json')], {
    encoding: 'utf8',
    timeout: 20_000,
  });
  return { status: r.status, out: r.stdout + r.stderr };
}

t.test('token mode with a registry that has problems does not start, and says where they are', async (t) => {
  const dir = t.testdir({ 'devices.yaml': `- id: pump-7\n  tokenSha: ${'a'.repeat(64)}\n- id: edge\n  tokenSha256: ${'b'.repeat(64)}\n` });
  const r = runProxy(dir, { auth: { mode: 'token' }, devicesFile: join(dir, 'devices.yaml') });
  t.equal(r.status, 1);
  t.match(r.out, /E_REGISTRY/);
  t.match(r.out, /devices\.yaml:2:3: /, 'the unknown key, with its line and column');
  t.match(r.out, /devices\.yaml:3:7: /, 'the reserved id, with its line and column');
  t.notOk(existsSync(join(dir, 'ports.json')), 'no ports file: it never was ready');
  // The registry is checked with the configuration, as check-config checks it: nothing starts.
  t.match(r.out, /configuration has 3 problems/);
  t.notMatch(r.out, /"msg":"cache open"/, 'refused before anything starts');
});

t.test('a TLS endpoint whose certificate cannot be read or used does not start, naming the file', async (t) => {
  const dir = t.testdir({ 'garbage.pem': 'not a certificate\n', 'garbage.key': 'not a key\n' });
  const missing = runProxy(dir, { mqtt: { tls: { port: 0, cert: join(dir, 'missing.pem'), key: join(dir, 'missing.key') } } });
  t.equal(missing.status, 1);
  t.match(
    missing.out,
    /mqtt\.tls\.cert: E_CONFIG_FILE: cannot read .*missing\.pem: no such file/,
    'checked with the configuration, before anything starts',
  );
  const garbage = runProxy(dir, { mqtt: { tls: { port: 0, cert: join(dir, 'garbage.pem'), key: join(dir, 'garbage.key') } } });
  t.equal(garbage.status, 1);
  t.match(garbage.out, /E_TLS/);
  t.match(
    garbage.out,
    /mqtt\.tls\.cert: E_TLS: .*garbage\.pem cannot be used: it is not a PEM certificate/,
    'a file that is not a certificate is named',
  );
  t.match(garbage.out, /mqtt\.tls\.key: E_TLS: .*garbage\.key cannot be used: it is not a PEM private key/, 'and so is the key');
  t.notOk(existsSync(join(dir, 'ports.json')), 'it never was ready');
});

t.test('a port already taken stops the start, and the cache it had opened is closed', async (t) => {
  const dir = t.testdir();
  const blocker = createServer();
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => blocker.close(() => resolve())));
  const taken = (blocker.address() as { port: number }).port;
  const r = runProxy(dir, { admin: { port: taken } });
  t.equal(r.status, 1);
  t.match(r.out, /E_LISTEN/);
  t.match(r.out, new RegExp(`admin cannot listen on 127\\.0\\.0\\.1:${taken}`));
  t.ok(r.out.includes('"msg":"stopped; the backlog stays in the cache'), 'the cache was closed');
  t.notOk(existsSync(join(dir, 'data', 'ports.json')), 'no ports file left behind for the CLI to find');
});

t.test('open mode beyond loopback: a warning names every exposed device endpoint; token mode does not warn', async (t) => {
  const open = await startProxy(t.testdir(), { mqtt: { host: '0.0.0.0' } });
  t.teardown(() => open.stop());
  const warning = open.logs.find((l) => l.level === 'warn' && String(l.msg).includes('auth.mode is open while'));
  t.ok(warning, 'warned');
  t.match(String(warning?.msg), new RegExp(`mqtt \\(0\\.0\\.0\\.0:${open.ports.mqtt}\\)`), 'naming the endpoint and where it listens');
  t.notMatch(String(warning?.msg), /admin/, 'the admin endpoint is not a device endpoint');
  const dir = t.testdir();
  const token = await startProxy(dir, { mqtt: { host: '0.0.0.0' }, auth: { mode: 'token' }, devicesFile: join(dir, 'devices.yaml') });
  t.teardown(() => token.stop());
  t.notOk(
    token.logs.some((l) => String(l.msg).includes('auth.mode is open while')),
    'no such warning in token mode',
  );
  t.ok(
    token.logs.some((l) => l.level === 'warn' && String(l.msg).includes('devices add')),
    'an empty registry says how to add a device',
  );
});
