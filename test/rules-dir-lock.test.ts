// One proxy per rules directory (docs/operations.md): two proxies from one checkout, each with its own
// data directory as the README says, would share ./rules, and a push to one would replace the other's
// rules through its watcher. The second is refused, naming the first; the lock disturbs nothing.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { CLI, startProxy, type ProxyProcess } from './helpers/proxy.js';
import { api, pushFiles } from './helpers/admin.js';
import { sleep } from './helpers/ports.js';

const LOCK = '.edge-proxy.lock';

const rule = (tag: string): string => `rule mark
when msg.topic matches "devices/+/telemetry"
then publish("seen/" + msg.deviceId, "${tag}")
end
`;

/** A proxy run to its end (it is expected to fail), on its own config in `dir`. */
function runProxy(dir: string, config: Record<string, unknown>, env: NodeJS.ProcessEnv = {}): { status: number | null; out: string } {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'edge-proxy.yaml');
  const base = {
    edge: { id: 'rules-lock' },
    dataDir: join(dir, 'data'),
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

t.test('a second proxy on the same rules directory is refused, naming the running one; the first keeps its rules', async (t) => {
  const dir = t.testdir({ rules: { 'a.rules': rule('first') } });
  const rules = join(dir, 'rules');
  const first = await startProxy(dir);
  t.teardown(() => first.stop());
  const pid = pidOf(first);
  t.equal((JSON.parse(readFileSync(join(rules, LOCK), 'utf8')) as { pid: number }).pid, pid, 'the rules directory lock names it');

  // Another data directory, as the README's second proxy has, but the same rules directory.
  const second = runProxy(join(dir, 'second'), { dataDir: join(dir, 'data2'), rules: { dir: rules } });
  t.equal(second.status, 1, 'the second start exits 1');
  t.match(second.out, /E_RULES_DIR_LOCKED/);
  t.match(
    second.out,
    new RegExp(`the rules directory ${rules} is in use by another edge-proxy \\(PID ${pid}\\b`),
    'naming the PID and the directory',
  );
  t.match(second.out, /rules\.dir in the configuration, or EDGE_PROXY_RULES_DIR=/, 'and what to do');
  t.notMatch(second.out, /"msg":"cache open"/, 'refused before the cache opens');
  t.notOk(existsSync(join(dir, 'data2', 'lock')), 'its data directory lock is released');
  t.same(readdirSync(rules).sort(), [LOCK, 'a.rules'], "the first proxy's rules directory is untouched");

  // The way out the message gives: its own rules directory, from the environment.
  mkdirSync(join(dir, 'third'));
  const third = await startProxy(
    join(dir, 'third'),
    {},
    { EDGE_PROXY_RULES_DIR: join(dir, 'rules2'), EDGE_PROXY_DATA_DIR: join(dir, 'data3') },
  );
  t.teardown(() => third.stop());
  t.ok(existsSync(join(dir, 'rules2', LOCK)), 'a proxy with its own rules directory starts and locks it');
  t.equal(await third.stop(), 0);
  t.notOk(existsSync(join(dir, 'rules2', LOCK)), 'and releases it at stop');

  const running = await api(first, 'GET', '/api/v1/rules');
  t.match(running.body, { version: 1, files: { 'a.rules': rule('first') } }, 'the first proxy still runs its own rules');
  t.notOk(
    first.logs.some((l) => l.reason === 'file change' || /rules version \d+ running/.test(String(l.msg))),
    'and never reloaded: neither its lock nor the refused start changed its rules',
  );
  t.equal(await first.stop(), 0);
  t.same(readdirSync(rules), ['a.rules'], 'a clean stop removes the lock');
});

t.test('the lock is not a rules file: pushes and the watcher leave it alone', async (t) => {
  const dir = t.testdir({ rules: { 'a.rules': rule('v1') } });
  const proxy = await startProxy(dir);
  t.teardown(() => proxy.stop());
  const lock = readFileSync(join(dir, 'rules', LOCK), 'utf8');
  const pushed = await pushFiles(proxy, { 'b.rules': rule('v2') });
  t.equal(pushed.status, 200);
  t.same(pushed.body.files, ['b.rules'], 'the lock is not part of the set');
  t.same(readdirSync(join(dir, 'rules')).sort(), [LOCK, 'b.rules'], 'a push replaces the rules files, not the lock');
  t.equal(readFileSync(join(dir, 'rules', LOCK), 'utf8'), lock, 'which is unchanged');
  await sleep(600); // past the watcher's debounce
  t.equal((await api(proxy, 'GET', '/api/v1/rules')).body.version, 2, 'no reload after the push');
  t.equal(await proxy.stop(), 0);
});

t.test(
  "the README's second proxy: rules and data copied with cp -r from a running one start, the copied locks holding nothing",
  async (t) => {
    const dir = t.testdir({ rules: { 'a.rules': rule('first') } });
    const first = await startProxy(dir, {}, { EDGE_PROXY_DATA_DIR: join(dir, 'data') });
    t.teardown(() => first.stop());
    t.ok(existsSync(join(dir, 'rules', LOCK)) && existsSync(join(dir, 'data', 'lock')), 'the first proxy holds both locks');
    // cp -r copies the lock files too, naming a proxy that runs.
    t.equal(spawnSync('cp', ['-r', join(dir, 'rules'), join(dir, 'rules2')]).status, 0);
    t.equal(spawnSync('cp', ['-r', join(dir, 'data'), join(dir, 'data2')]).status, 0);
    t.ok(existsSync(join(dir, 'rules2', LOCK)), 'the copy has the lock file');
    mkdirSync(join(dir, 'second'));
    const second = await startProxy(
      join(dir, 'second'),
      {},
      { EDGE_PROXY_RULES_DIR: join(dir, 'rules2'), EDGE_PROXY_DATA_DIR: join(dir, 'data2') },
    );
    t.teardown(() => second.stop());
    t.equal(
      (JSON.parse(readFileSync(join(dir, 'rules2', LOCK), 'utf8')) as { pid: number }).pid,
      pidOf(second),
      'the second holds the copy',
    );
    const line = second.logs.find((l) => typeof l.msg === 'string' && l.msg.includes('copied from another directory'));
    t.equal(line?.level, 'info', 'saying the copied lock held nothing here');
    t.equal((JSON.parse(readFileSync(join(dir, 'rules', LOCK), 'utf8')) as { pid: number }).pid, pidOf(first), 'the first keeps its own');
    t.equal(await second.stop(), 0);
    t.equal(await first.stop(), 0);
  },
);

t.test('a stale rules directory lock (its proxy gone) is taken over with an info line', async (t) => {
  const dir = t.testdir({ rules: { 'a.rules': rule('v1') } });
  const lock = join(dir, 'rules', LOCK);
  writeFileSync(lock, JSON.stringify({ pid: 2147483646, startTime: '1', startedAt: '2024-01-01T00:00:00.000Z' }));
  const old = new Date(Date.now() - 60_000);
  utimesSync(lock, old, old);
  const proxy = await startProxy(dir);
  t.teardown(() => proxy.stop());
  t.equal((JSON.parse(readFileSync(lock, 'utf8')) as { pid: number }).pid, pidOf(proxy), 'the new proxy holds it');
  const line = proxy.logs.find((l) => typeof l.msg === 'string' && l.msg.startsWith('took over the rules directory lock'));
  t.equal(line?.level, 'info', 'said at info');
  t.match(String(line?.msg), /PID 2147483646, which no longer runs/);
  t.equal(await proxy.stop(), 0);
});

const repo = new URL('..', import.meta.url).pathname;
const noGit = spawnSync('git', ['rev-parse', '--git-dir'], { cwd: repo }).status !== 0;

t.test('the checkout ignores the lock of a proxy running on ./rules', { skip: noGit && 'not a git checkout' }, async (t) => {
  for (const name of [LOCK, `${LOCK}.takeover`]) {
    const r = spawnSync('git', ['check-ignore', '-q', `rules/${name}`], { cwd: repo });
    t.equal(r.status, 0, `git check-ignore rules/${name}: ignored`);
  }
});
