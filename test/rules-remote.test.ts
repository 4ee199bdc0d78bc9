// Pushing rules from elsewhere: `edge-proxy rules push|rollback` as an operator runs them (the
// built CLI, finding the local proxy and its token by itself), and the cloud topic
// <controlPrefix>rules/set answered on rules/result (mosquitto_pub and mosquitto_sub on a real Mosquitto).
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runCli, startProxy } from './helpers/proxy.js';
import { cloudRulesRequest, startMosquitto } from './helpers/mosquitto.js';
import { eventually, freePort } from './helpers/ports.js';
import { api } from './helpers/admin.js';

/** A rules directory's entries, less the lock of the proxy running on it (.edge-proxy.lock, docs/operations.md). */
const rulesListing = (dir: string): string[] => readdirSync(dir).filter((name) => name !== '.edge-proxy.lock');

const publishRulesSet = (port: number, args: string[]): Promise<Record<string, unknown> | null> => cloudRulesRequest(port, 'set', args);

const RULE = (name: string, level = 'info'): string =>
  `rule ${name}\nwhen msg.topic matches "devices/#"\nthen log("${level}", "${name}")\nend\n`;

t.test('rules push and rollback find the local proxy and its token; exit 0, 1 with errors, 2 unreachable', async (t) => {
  const dir = t.testdir();
  const proxy = await startProxy(dir);
  t.teardown(() => proxy.stop());
  const work = join(dir, 'work');
  mkdirSync(work);
  writeFileSync(join(work, 'alarms.rules'), RULE('alarm', 'warn'));
  writeFileSync(join(work, 'telemetry.rules'), RULE('telemetry'));
  const cfg = ['--config', proxy.configFile];

  const push = await runCli(['rules', 'push', 'alarms.rules', 'telemetry.rules', ...cfg], work);
  t.equal(push.status, 0, push.stderr);
  t.match(push.stdout, /^pushed: version 2: 2 rules \(sha256 [0-9a-f]{12}\) running; no file replaced, 2 files now\n$/);
  t.same(rulesListing(join(dir, 'rules')).sort(), ['alarms.rules', 'telemetry.rules'], 'stored under their base names');

  const same = await runCli(['rules', 'push', 'alarms.rules', 'telemetry.rules', ...cfg], work);
  t.equal(same.status, 0);
  t.match(same.stdout, /^unchanged: version 2: 2 rules/);

  writeFileSync(join(work, 'broken.rules'), 'rule broken\nwhen msg.topic matches "devices/#"\nthen uplnk()\nend\n');
  const bad = await runCli(['rules', 'push', 'alarms.rules', 'broken.rules', ...cfg], work);
  t.equal(bad.status, 1);
  t.equal(
    bad.stderr,
    'broken.rules:3:6: E_RULE_UNKNOWN_ACTION: unknown action "uplnk"; did you mean "uplink"?\n  then uplnk()\n       ^\n1 error: nothing changed, the running rules keep running\n',
    'the errors are printed as rules check prints them, with the file as it was given',
  );
  t.equal((await api(proxy, 'GET', '/api/v1/rules')).body.version, 2, 'and nothing changed');

  const back = await runCli(['rules', 'rollback', ...cfg], work);
  t.equal(back.status, 0, back.stderr);
  t.match(back.stdout, /^rolled back: version 3: 0 rules/);
  t.same(rulesListing(join(dir, 'rules')), [], 'version 1 had no rules files');

  const token = readFileSync(join(dir, 'data', 'admin-token'), 'utf8').trim();
  const admin = `http://127.0.0.1:${proxy.ports.admin}`;
  const remote = await runCli(['rules', 'push', join(work, 'alarms.rules'), '--admin', admin, '--token', token], work);
  t.equal(remote.status, 0, 'an explicit --admin and --token work from anywhere');
  t.match(remote.stdout, /version 4: 1 rule /);

  const wrong = await runCli(['rules', 'push', 'alarms.rules', '--admin', admin, '--token', 'wrong'], work);
  t.equal(wrong.status, 1);
  t.match(wrong.stderr, /answered 401: .*\(E_ADMIN_AUTH\)/);

  const nowhere = await runCli(
    ['rules', 'push', 'alarms.rules', '--admin', `http://127.0.0.1:${await freePort()}`, '--token', token],
    work,
  );
  t.equal(nowhere.status, 2, 'exit 2 when the proxy cannot be reached');
  t.match(nowhere.stderr, /cannot reach the proxy at http:\/\/127\.0\.0\.1:\d+: .*Is it running\?/);
  const rollbackNowhere = await runCli(['rules', 'rollback', '--admin', `http://127.0.0.1:${await freePort()}`, '--token', token], work);
  t.equal(rollbackNowhere.status, 2);

  writeFileSync(join(work, 'notes.txt'), RULE('x'));
  const notRules = await runCli(['rules', 'push', 'notes.txt', ...cfg], work);
  t.equal(notRules.status, 2);
  t.match(notRules.stderr, /notes\.txt: a pushed file must end in \.rules/);
});

t.test('rules push says what it replaced; files without a rule need --allow-empty', async (t) => {
  const dir = t.testdir();
  mkdirSync(join(dir, 'rules'));
  for (const name of ['a', 'b', 'c']) writeFileSync(join(dir, 'rules', `${name}.rules`), RULE(name));
  const proxy = await startProxy(dir);
  t.teardown(() => proxy.stop());
  const work = join(dir, 'work');
  mkdirSync(work);
  writeFileSync(join(work, 'one.rules'), RULE('one'));
  writeFileSync(join(work, 'later.rules'), '# rules come later\n');
  const cfg = ['--config', proxy.configFile];

  const one = await runCli(['rules', 'push', 'one.rules', ...cfg], work);
  t.equal(one.status, 0, one.stderr);
  t.match(
    one.stdout,
    /^pushed: version 2: 1 rule \(sha256 [0-9a-f]{12}\) running; 3 files replaced by 1 \(a\.rules, b\.rules, c\.rules\)\n$/,
  );

  const empty = await runCli(['rules', 'push', 'later.rules', ...cfg], work);
  t.equal(empty.status, 1, 'files that define no rule are refused');
  t.match(
    empty.stderr,
    /the files define no rule: .*nothing changed \(E_RULES_EMPTY\)\nto run no rules on purpose: edge-proxy rules push --allow-empty FILE\.\.\.\n/,
  );
  t.match((await api(proxy, 'GET', '/api/v1/rules')).body, { version: 2, files: { 'one.rules': RULE('one') } }, 'and nothing changed');
  t.same(rulesListing(join(dir, 'rules')), ['one.rules']);

  const allowed = await runCli(['rules', 'push', '--allow-empty', 'later.rules', ...cfg], work);
  t.equal(allowed.status, 0, allowed.stderr);
  t.match(allowed.stdout, /^pushed: version 3: 0 rules \(sha256 [0-9a-f]{12}\) running; 1 file replaced by 1 \(one\.rules\)\n$/);
  t.same(rulesListing(join(dir, 'rules')), ['later.rules']);

  const none = await runCli(['rules', 'push', ...cfg], work);
  t.equal(none.status, 2, 'no FILE is a usage error');
  t.match(none.stderr, /rules push needs at least one FILE \(E_USAGE\); to remove every rule on purpose: rules push --allow-empty/);
  const wipe = await runCli(['rules', 'push', '--allow-empty', ...cfg], work);
  t.equal(wipe.status, 0, wipe.stderr);
  t.match(
    wipe.stdout,
    /^pushed: version 4: 0 rules .* running; 1 file replaced by 0 \(later\.rules\)\n$/,
    'with no FILE it removes every file',
  );
  t.same(rulesListing(join(dir, 'rules')), []);
  t.equal(await proxy.metric('edge_rules_pushes_total', 'source="api",result="rejected"'), 1);
});

t.test('rules rollback with no earlier version exits 1 and says so', async (t) => {
  const dir = t.testdir();
  const proxy = await startProxy(dir);
  t.teardown(() => proxy.stop());
  const r = await runCli(['rules', 'rollback', '--config', proxy.configFile], dir);
  t.equal(r.status, 1);
  t.match(r.stderr, /answered 409: there is no rules version before version 1 .*\(E_RULES_NO_EARLIER\)/);
});

t.test('a push on <controlPrefix>rules/set is applied and answered on rules/result', async (t) => {
  const dir = t.testdir();
  const cloud = await startMosquitto(join(dir, 'cloud'));
  t.teardown(() => cloud.stop());
  const proxy = await startProxy(dir, { uplink: { url: cloud.url } });
  t.teardown(() => proxy.stop());
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);

  /** mosquitto_pub a body on rules/set; mosquitto_sub's first answer on rules/result. */
  const pushFromCloud = async (body: string): Promise<Record<string, unknown>> => {
    const sub = spawn('mosquitto_sub', [
      '-h',
      '127.0.0.1',
      '-p',
      String(cloud.port),
      '-t',
      'edge/test-edge/rules/result',
      '-q',
      '1',
      '-C',
      '1',
    ]);
    let out = '';
    sub.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    const done = new Promise((resolve) => sub.on('exit', resolve));
    await new Promise((r) => setTimeout(r, 300)); // subscribed before the push goes out
    const file = join(dir, 'body');
    writeFileSync(file, body);
    const pub = spawn('mosquitto_pub', [
      '-h',
      '127.0.0.1',
      '-p',
      String(cloud.port),
      '-q',
      '1',
      '-t',
      'edge/test-edge/rules/set',
      '-f',
      file,
    ]);
    await new Promise((r) => pub.on('exit', r));
    await Promise.race([done, new Promise((r) => setTimeout(r, 10_000))]);
    sub.kill();
    return JSON.parse(out) as Record<string, unknown>;
  };

  const text = await pushFromCloud(RULE('from_cloud'));
  t.match(text, { status: 200, version: 2, rules: 1, changed: true, sha256: /^[0-9a-f]{64}$/ }, 'a text body is one file');
  t.same(rulesListing(join(dir, 'rules')), ['pushed.rules']);

  const json = await pushFromCloud(JSON.stringify({ files: { 'a.rules': RULE('a'), 'b.rules': RULE('b') } }));
  t.match(json, { status: 200, version: 3, rules: 2 }, 'a JSON body carries files');
  t.same(rulesListing(join(dir, 'rules')).sort(), ['a.rules', 'b.rules']);

  const bad = await pushFromCloud(JSON.stringify({ files: { 'a.rules': 'rule a\nwhen payload.x >\nthen drop()\nend\n' } }));
  t.match(
    bad,
    { status: 422, errors: [{ file: 'a.rules', line: 3, col: 1, code: 'E_RULE_SYNTAX' }] },
    'a bad set is answered with its errors',
  );
  t.equal((await api(proxy, 'GET', '/api/v1/rules')).body.version, 3, 'and changes nothing');
  t.equal(await proxy.metric('edge_rules_pushes_total', 'source="cloud"'), 3);

  // A retained push is applied when it is published (subscribers get it live), but the broker
  // replays it at every reconnection: that copy must not undo what was pushed on the board since.
  const retained = spawn('mosquitto_pub', [
    '-h',
    '127.0.0.1',
    '-p',
    String(cloud.port),
    '-q',
    '1',
    '-r',
    '-t',
    'edge/test-edge/rules/set',
    '-m',
    RULE('retained'),
  ]);
  await new Promise((r) => retained.on('exit', r));
  await eventually('the retained push applied live', async () => (await api(proxy, 'GET', '/api/v1/rules')).body.version === 4);
  t.equal(
    (await api(proxy, 'PUT', '/api/v1/rules', { type: 'text/plain', body: RULE('local') })).body.version,
    5,
    'then a push on the board',
  );
  await proxy.stop();
  await proxy.restart();
  await eventually('uplink connected again', async () => (await proxy.metric('edge_uplink_connected')) === 1);
  const ignored = await eventually('the replayed retained push was seen and ignored', () =>
    proxy.logs.find((l) => String(l.msg).startsWith('a retained message on rules/set is ignored')),
  );
  t.match(ignored?.msg, "mosquitto_pub -r -n -t '<controlPrefix>rules/set'", 'the warning says how to clear the stored copy');
  t.match(
    (await api(proxy, 'GET', '/api/v1/rules')).body,
    { version: 5, files: { 'pushed.rules': RULE('local') } },
    "the board's push still runs",
  );
});

t.test('an empty message on rules/set changes nothing; {"files": {}, "allowEmpty": true} empties the set', async (t) => {
  const dir = t.testdir();
  mkdirSync(join(dir, 'rules'));
  writeFileSync(join(dir, 'rules', 'a.rules'), RULE('a'));
  const cloud = await startMosquitto(join(dir, 'cloud'));
  t.teardown(() => cloud.stop());
  const proxy = await startProxy(dir, { uplink: { url: cloud.url } });
  t.teardown(() => proxy.stop());
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);
  const unchanged = async (what: string): Promise<void> => {
    t.match(
      (await api(proxy, 'GET', '/api/v1/rules')).body,
      { version: 1, rules: 1, files: { 'a.rules': RULE('a') } },
      `${what}: the rules still run`,
    );
    t.same(rulesListing(join(dir, 'rules')), ['a.rules'], `${what}: and their file is still there`);
  };

  const empty = await publishRulesSet(cloud.port, ['-n']);
  t.match(
    empty,
    {
      status: 422,
      code: 'E_RULES_EMPTY',
      error: /To run no rules on purpose, publish \{"files": \{\}, "allowEmpty": true\} on rules\/set/,
    },
    'an empty message is answered 422 with the code and how to push an empty set',
  );
  await unchanged('an empty message');
  t.ok(
    proxy.logs.some(
      (l) => l.level === 'warn' && l.code === 'E_RULES_EMPTY' && l.source === 'cloud' && String(l.msg).includes('allowEmpty'),
    ),
    'the log says why it was ignored, and how to push an empty set on purpose',
  );

  // The way to clear a retained message. The broker hands it to the proxy live, where MQTT 3.1.1 and
  // 5 (without retain-as-published) clear the retain flag: it is refused as the empty message above.
  // Flagged as retained (a broker that keeps the flag) it is ignored with one log line, unanswered.
  const cleared = await publishRulesSet(cloud.port, ['-r', '-n']);
  t.ok(
    cleared
      ? cleared.status === 422 && cleared.code === 'E_RULES_EMPTY'
      : proxy.logs.some((l) => String(l.msg).startsWith('an empty retained message on rules/set')),
    `mosquitto_pub -r -n is refused or ignored: ${JSON.stringify(cleared)}`,
  );
  await unchanged('mosquitto_pub -r -n');

  const comments = await publishRulesSet(cloud.port, ['-m', '# nothing here\n']);
  t.match(comments, { status: 422, code: 'E_RULES_EMPTY' }, 'a text without a rule is refused too');
  await unchanged('a text without a rule');

  const emptied = await publishRulesSet(cloud.port, ['-m', JSON.stringify({ files: {}, allowEmpty: true })]);
  t.match(
    emptied,
    { status: 200, version: 2, rules: 0, changed: true, files: [], replaced: ['a.rules'] },
    'an empty set asked for is applied',
  );
  t.same(rulesListing(join(dir, 'rules')), []);
  t.equal(await proxy.metric('edge_rules_pushes_total', 'source="cloud",result="applied"'), 1);
  t.equal(await proxy.metric('edge_rules_pushes_total', 'source="cloud",result="rejected"'), cleared ? 3 : 2, 'each refusal is counted');
});
