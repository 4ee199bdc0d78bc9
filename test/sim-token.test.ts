// The simulator against a proxy in token mode: each simulated device connects with its own token,
// and what it publishes reaches local subscribers; a device without a token or with a wrong one is
// told so. The built simulator (dist/firmware-sim/cli.js) and the built proxy, as a user runs them.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startProxy } from './helpers/proxy.js';
import { connectClient, collect } from './helpers/clients.js';
import { writeRegistry } from './helpers/registry.js';
import { eventually } from './helpers/ports.js';

const SIM = new URL('../dist/firmware-sim/cli.js', import.meta.url).pathname;

function sim(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [SIM, ...args], { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

t.test('firmware-sim devices connect to a token-mode proxy with their tokens', async (t) => {
  const dir = t.testdir();
  const devicesFile = join(dir, 'devices.yaml');
  const ids = ['sim-0001', 'sim-0002', 'sim-0003'];
  const tokens = writeRegistry(devicesFile, [...ids.map((id) => ({ id })), { id: 'watcher', subscribe: ['devices/#'] }]);
  const proxy = await startProxy(dir, { auth: { mode: 'token' }, devicesFile });
  t.teardown(() => proxy.stop());
  const watcher = await connectClient(proxy.ports.mqtt, { clientId: 'w', username: 'watcher', password: tokens.watcher! });
  t.teardown(() => watcher.endAsync());
  const seen = await collect(watcher, 'devices/+/telemetry');

  const tokenFile = join(dir, 'tokens.txt');
  writeFileSync(tokenFile, `# one token a line\n${ids.map((id) => tokens[id]).join('\n')}\n`);
  const url = `mqtt://127.0.0.1:${proxy.ports.mqtt}`;
  const ok = sim(['--url', url, '--devices', '3', '--token-file', tokenFile, '--count', '5', '--rate', '20', '--quiet']);
  t.equal(ok.status, 0, ok.stderr);
  const summary = JSON.parse(ok.stdout.trim().split('\n').at(-1)!) as { acked: number };
  t.equal(summary.acked, 15, 'every publish of every device acknowledged');
  await eventually('the watcher saw all 15', () => seen.messages.length === 15);
  t.same(
    [...new Set(seen.messages.map((m) => m.topic))].sort(),
    ids.map((id) => `devices/${id}/telemetry`),
    'each under its own id',
  );
  t.equal(await proxy.metric('edge_auth_failures_total'), 0, 'nobody was refused');

  const one = sim(['--url', url, '--token', tokens['sim-0002']!, '--count', '2', '--rate', '20', '--quiet']);
  t.equal(one.status, 0, `--token for one device: ${one.stderr}`);

  const missing = sim(['--url', url, '--devices', '4', '--token-file', tokenFile, '--count', '1']);
  t.equal(missing.status, 2, 'a device without a token is a usage error');
  t.match(missing.stderr, /sim-0004/, 'naming the device');

  const wrong = `sim-0001.${'A'.repeat(43)}`;
  const refused = sim(['--url', url, '--token', wrong, '--count', '1', '--duration', '3']);
  t.match(refused.stderr, /CONNACK 4|bad user name or password|token/i, 'a wrong token is reported as such');
  await eventually('the refusal was counted', async () => (await proxy.metric('edge_auth_failures_total', 'reason="bad_token"')) >= 1);
});
