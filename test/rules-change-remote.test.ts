// Changes of some rules files checked before they are made, and made from the cloud
// (docs/rules.md, Adding and removing files): PATCH /api/v1/rules/validate, `rules push|add|remove
// --dry-run` through the built CLI, and <controlPrefix>rules/change answered on rules/result
// (mosquitto_pub and mosquitto_sub on a real Mosquitto as the cloud broker).
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runCli, startProxy, type ProxyProcess } from './helpers/proxy.js';
import { cloudRulesRequest, startMosquitto } from './helpers/mosquitto.js';
import { eventually } from './helpers/ports.js';
import { api } from './helpers/admin.js';
import { connectClient, collect } from './helpers/clients.js';

/** A rules directory's entries, less the lock of the proxy running on it (.edge-proxy.lock, docs/operations.md). */
const rulesListing = (dir: string): string[] => readdirSync(dir).filter((name) => name !== '.edge-proxy.lock');

const RULE = (name: string): string => `rule ${name}\nwhen msg.topic matches "devices/#"\nthen log("info", "${name}")\nend\n`;

/** The running set as GET /api/v1/rules shows it: version and file names. */
async function running(proxy: ProxyProcess): Promise<{ version: unknown; files: string[] }> {
  const body = (await api(proxy, 'GET', '/api/v1/rules')).body;
  return { version: body.version, files: Object.keys(body.files as Record<string, string>).sort() };
}

/** A proxy in `dir` (the test's directory by default) on a rules directory holding `files`. */
async function proxyWith(
  t: Test,
  files: Record<string, string>,
  extra: Record<string, unknown> = {},
  dir = t.testdir(),
): Promise<{ dir: string; proxy: ProxyProcess }> {
  mkdirSync(join(dir, 'rules'));
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, 'rules', name), text);
  const proxy = await startProxy(dir, extra);
  t.teardown(() => proxy.stop());
  return { dir, proxy };
}

t.test('PATCH /api/v1/rules/validate answers what the change would, and changes nothing', async (t) => {
  const { dir, proxy } = await proxyWith(t, { 'a.rules': RULE('a'), 'b.rules': RULE('b') });
  const validate = (body: unknown) =>
    api(proxy, 'PATCH', '/api/v1/rules/validate', { type: 'application/json', body: JSON.stringify(body) });

  const ok = await validate({ files: { 'c.rules': RULE('c'), 'a.rules': RULE('a2') }, remove: ['b.rules'] });
  t.equal(ok.status, 200);
  t.match(ok.body, {
    version: 2,
    rules: 2,
    changed: true,
    files: ['a.rules', 'c.rules'],
    replaced: ['a.rules', 'b.rules'],
    added: ['c.rules'],
    removed: ['b.rules'],
  });
  t.same(await running(proxy), { version: 1, files: ['a.rules', 'b.rules'] }, 'the running set is as it was');
  t.same(rulesListing(join(dir, 'rules')).sort(), ['a.rules', 'b.rules'], 'and so is the directory');

  const missing = await validate({ remove: ['olde.rules'] });
  t.equal(missing.status, 404);
  t.match(missing.body, { code: 'E_RULES_NO_FILE', error: /no file olde\.rules to remove.*Its files: a\.rules, b\.rules/ });

  const empty = await validate({ remove: ['a.rules', 'b.rules'] });
  t.equal(empty.status, 422);
  t.match(empty.body, { code: 'E_RULES_EMPTY' });
  t.equal((await validate({ remove: ['a.rules', 'b.rules'], allowEmpty: true })).status, 200, 'unless it asks for it');

  const bad = await validate({ files: { 'c.rules': RULE('a') } });
  t.equal(bad.status, 422);
  t.match(bad.body, { errors: [{ file: 'c.rules', code: 'E_RULE_DUPLICATE' }] }, 'a name taken by a kept file is an error');

  t.equal(await proxy.metric('edge_rules_pushes_total'), 0, 'a validation counts no push');
  t.same(await running(proxy), { version: 1, files: ['a.rules', 'b.rules'] }, 'still nothing changed');
});

t.test('rules push, add and remove --dry-run say what they would do and change nothing', async (t) => {
  const { dir, proxy } = await proxyWith(t, { 'a.rules': RULE('a'), 'b.rules': RULE('b') });
  const work = join(dir, 'work');
  mkdirSync(work);
  writeFileSync(join(work, 'c.rules'), RULE('c'));
  writeFileSync(join(work, 'broken.rules'), 'rule broken\nwhen msg.topic matches "devices/#"\nthen uplnk()\nend\n');
  const cfg = ['--config', proxy.configFile];

  const push = await runCli(['rules', 'push', '--dry-run', 'c.rules', ...cfg], work);
  t.equal(push.status, 0, push.stderr);
  t.match(
    push.stdout,
    /^dry run: version 2: 1 rule \(sha256 [0-9a-f]{12}\) would run; 2 files replaced by 1 \(a\.rules, b\.rules\); nothing changed\n$/,
  );
  const add = await runCli(['rules', 'add', '--dry-run', 'c.rules', ...cfg], work);
  t.equal(add.status, 0, add.stderr);
  t.match(add.stdout, /^dry run: version 2: 3 rules \(sha256 [0-9a-f]{12}\) would run; added c\.rules; 3 files now; nothing changed\n$/);
  const remove = await runCli(['rules', 'remove', '--dry-run', 'b.rules', ...cfg], work);
  t.equal(remove.status, 0, remove.stderr);
  t.match(remove.stdout, /^dry run: version 2: 1 rule .* would run; removed b\.rules; 1 file now; nothing changed\n$/);

  const bad = await runCli(['rules', 'add', '--dry-run', 'broken.rules', ...cfg], work);
  t.equal(bad.status, 1, 'a change with errors exits 1');
  t.match(bad.stderr, /^broken\.rules:3:6: E_RULE_UNKNOWN_ACTION: unknown action "uplnk"/);
  const gone = await runCli(['rules', 'remove', '--dry-run', 'olde.rules', ...cfg], work);
  t.equal(gone.status, 1);
  t.match(gone.stderr, /E_RULES_NO_FILE/);

  const rollback = await runCli(['rules', 'rollback', '--dry-run', ...cfg], work);
  t.equal(rollback.status, 2, 'rollback has no dry run: a usage error');
  t.match(rollback.stderr, /--dry-run is an option of rules push, add and remove/);
  t.notMatch(`${push.stderr}${add.stderr}${bad.stderr}${rollback.stderr}`, /\n\s+at /, 'no stack trace');

  t.same(await running(proxy), { version: 1, files: ['a.rules', 'b.rules'] }, 'the running set is as it was');
});

const publishChange = (port: number, args: string[]): Promise<Record<string, unknown> | null> => cloudRulesRequest(port, 'change', args);

t.test('a change on <controlPrefix>rules/change is applied and answered on rules/result', async (t) => {
  const dir = t.testdir();
  const cloud = await startMosquitto(join(dir, 'cloud'));
  t.teardown(() => cloud.stop());
  const { proxy } = await proxyWith(t, { 'a.rules': RULE('a'), 'b.rules': RULE('b') }, { uplink: { url: cloud.url } }, dir);
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);

  const added = await publishChange(cloud.port, ['-m', JSON.stringify({ files: { 'c.rules': RULE('c') }, remove: ['b.rules'] })]);
  t.match(added, {
    status: 200,
    request: 'change',
    version: 2,
    changed: true,
    files: ['a.rules', 'c.rules'],
    added: ['c.rules'],
    removed: ['b.rules'],
  });
  t.same(await running(proxy), { version: 2, files: ['a.rules', 'c.rules'] }, 'a.rules kept, c.rules added, b.rules removed');

  const missing = await publishChange(cloud.port, ['-m', '{"remove": ["olde.rules"]}']);
  t.match(missing, { status: 404, request: 'change', code: 'E_RULES_NO_FILE' });
  const unreadable = await publishChange(cloud.port, ['-m', 'rule x']);
  t.match(unreadable, { status: 400, request: 'change', code: 'E_RULES_REQUEST', error: /not valid JSON/ }, 'a change is JSON');
  const empty = await publishChange(cloud.port, ['-m', '{"remove": ["a.rules", "c.rules"]}']);
  t.match(empty, { status: 422, request: 'change', code: 'E_RULES_EMPTY' });
  t.same(await running(proxy), { version: 2, files: ['a.rules', 'c.rules'] }, 'refused changes changed nothing');
  // Every change in this test came from the cloud.
  t.equal(await proxy.metric('edge_rules_pushes_total', 'result="applied"'), 1);
  t.equal(
    await proxy.metric('edge_rules_pushes_total', 'result="rejected"'),
    2,
    'the missing file and the empty set; not the unreadable body',
  );

  // A retained change is replayed at every reconnection: never applied.
  const retained = spawn('mosquitto_pub', [
    '-h',
    '127.0.0.1',
    '-p',
    String(cloud.port),
    '-q',
    '1',
    '-r',
    '-t',
    'edge/test-edge/rules/change',
    '-m',
    '{"remove": ["a.rules"]}',
  ]);
  await new Promise((r) => retained.on('exit', r));
  await eventually(
    'the live retained change applied (MQTT clears the flag on live delivery)',
    async () => (await running(proxy)).version === 3,
  );
  await proxy.stop();
  await proxy.restart();
  await eventually('uplink connected again', async () => (await proxy.metric('edge_uplink_connected')) === 1);
  await eventually('the replayed retained change was seen and ignored', () =>
    proxy.logs.some((l) => String(l.msg).startsWith('a retained message on rules/change is ignored')),
  );
  t.same(await running(proxy), { version: 3, files: ['c.rules'] }, 'the replayed copy changed nothing more');
});

t.test('a device cannot reach rules/change through the uplink', async (t) => {
  const dir = t.testdir();
  const cloud = await startMosquitto(join(dir, 'cloud'));
  t.teardown(() => cloud.stop());
  const { proxy } = await proxyWith(t, { 'a.rules': RULE('a') }, { uplink: { url: cloud.url, topicPrefix: 'edge/test-edge/' } }, dir);
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);
  const watcher = await connectClient(cloud.port, { clientId: 'cloud-watch' });
  t.teardown(() => watcher.endAsync());
  const seen = await collect(watcher, 'edge/test-edge/#');
  const device = await connectClient(proxy.ports.mqtt, { clientId: 'sneaky' });
  t.teardown(() => device.endAsync());
  // topicPrefix + this topic is exactly the cloud's rules/change topic.
  await device.publishAsync('rules/change', '{"remove": ["a.rules"]}', { qos: 1 });
  await device.publishAsync('devices/sneaky/telemetry', '{"n":1}', { qos: 1 });
  await eventually('the ordinary message went up', () => seen.messages.some((m) => m.topic.endsWith('devices/sneaky/telemetry')));
  t.notOk(
    seen.messages.some((m) => m.topic === 'edge/test-edge/rules/change'),
    'nothing was published on the control topic',
  );
  t.equal(await proxy.metric('edge_messages_dropped_total', 'reason="control_topic"'), 1);
  t.same(await running(proxy), { version: 1, files: ['a.rules'] });
});
