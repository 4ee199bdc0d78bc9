// Adding, replacing and removing single rules files (docs/rules.md, Adding and removing files):
// PATCH /api/v1/rules and `edge-proxy rules add|remove` change some files, the others keep
// running, and the whole set that results is one new version, as a push makes.
import t, { type Test } from 'tap';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runCli, startProxy, type ProxyProcess } from './helpers/proxy.js';
import { collect, connectClient, type Collected } from './helpers/clients.js';
import { eventually, freePort } from './helpers/ports.js';
import { api, type ApiAnswer } from './helpers/admin.js';

/** A rules directory's entries, less the lock of the proxy running on it (.edge-proxy.lock, docs/operations.md). */
const rulesListing = (dir: string): string[] => readdirSync(dir).filter((name) => name !== '.edge-proxy.lock');

/** A rule that publishes `tag` on <prefix>/<device> for each reading. */
const mark = (name: string, tag: string, prefix = name): string => `rule ${name}
when msg.topic matches "devices/+/telemetry"
then publish("seen/${prefix}/" + msg.deviceId, "${tag}")
end
`;

const patch = (proxy: ProxyProcess, body: unknown, token?: string | null): Promise<ApiAnswer> =>
  api(proxy, 'PATCH', '/api/v1/rules', { token, type: 'application/json', body: JSON.stringify(body) });

/** A proxy with rules files, a device, and a subscriber that shows which rules answered a reading. */
async function setup(
  t: Test,
  files: Record<string, string>,
): Promise<{ proxy: ProxyProcess; seen: Collected; send: () => Promise<string[]> }> {
  const dir = t.testdir();
  mkdirSync(join(dir, 'rules'));
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, 'rules', name), text);
  const proxy = await startProxy(dir);
  t.teardown(() => proxy.stop());
  const device = await connectClient(proxy.ports.mqtt, { clientId: 'add-dev' });
  t.teardown(() => device.endAsync());
  const watcher = await connectClient(proxy.ports.mqtt, { clientId: 'add-watch' });
  t.teardown(() => watcher.endAsync());
  const seen = await collect(watcher, 'seen/#');
  const end = await collect(watcher, 'end/#');
  let n = 0;
  return {
    proxy,
    seen,
    // Publish one reading and a marker after it; answer what the rules published for the reading, sorted.
    async send() {
      const before = seen.messages.length;
      const ends = end.messages.length;
      await device.publishAsync('devices/add-dev/telemetry', JSON.stringify({ n: ++n }), { qos: 1 });
      await watcher.publishAsync('end/x', 'x', { qos: 1 });
      await eventually('the marker came back', () => end.messages.length > ends);
      await new Promise((r) => setTimeout(r, 200));
      return seen.messages
        .slice(before)
        .map((m) => `${m.topic.split('/')[1]}=${m.payload.toString()}`)
        .sort();
    },
  };
}

t.test('PATCH adds a file, replaces one, removes one; the others keep running', async (t) => {
  const { proxy, send } = await setup(t, { 'a.rules': mark('a', 'a1'), 'b.rules': mark('b', 'b1') });
  t.same(await send(), ['a=a1', 'b=b1']);

  const added = await patch(proxy, { files: { 'c.rules': mark('c', 'c1') } });
  t.equal(added.status, 200, JSON.stringify(added.body));
  t.match(added.body, { version: 2, rules: 3, changed: true, sha256: /^[0-9a-f]{64}$/ });
  t.same(
    [added.body.files, added.body.replaced, added.body.added, added.body.removed],
    [['a.rules', 'b.rules', 'c.rules'], [], ['c.rules'], []],
    'the answer says what runs and what was added',
  );
  t.same(await send(), ['a=a1', 'b=b1', 'c=c1'], 'the new file runs, and the others still do');
  t.same(rulesListing(join(proxy.dir, 'rules')).sort(), ['a.rules', 'b.rules', 'c.rules']);

  const replaced = await patch(proxy, { files: { 'a.rules': mark('a', 'a2') } });
  t.match(replaced.body, { version: 3, rules: 3, changed: true, files: ['a.rules', 'b.rules', 'c.rules'] });
  t.same([replaced.body.replaced, replaced.body.added, replaced.body.removed], [['a.rules'], [], []], 'a.rules replaced');
  t.same(await send(), ['a=a2', 'b=b1', 'c=c1']);
  t.equal(readFileSync(join(proxy.dir, 'rules', 'a.rules'), 'utf8'), mark('a', 'a2'));

  const same = await patch(proxy, { files: { 'a.rules': mark('a', 'a2') } });
  t.match(same.body, { version: 3, changed: false, replaced: [], added: [], removed: [] }, 'the running text again: no version');

  const removed = await patch(proxy, { remove: ['b.rules'] });
  t.match(removed.body, { version: 4, rules: 2, changed: true, files: ['a.rules', 'c.rules'] });
  t.same([removed.body.replaced, removed.body.added, removed.body.removed], [['b.rules'], [], ['b.rules']]);
  t.same(await send(), ['a=a2', 'c=c1'], 'the removed file no longer runs');
  t.same(rulesListing(join(proxy.dir, 'rules')).sort(), ['a.rules', 'c.rules']);

  const both = await patch(proxy, { files: { 'd.rules': mark('d', 'd1'), 'c.rules': mark('c', 'c2') }, remove: ['a.rules'] });
  t.match(both.body, { version: 5, rules: 2, files: ['c.rules', 'd.rules'] }, 'one change may add, replace and remove');
  t.same([both.body.replaced, both.body.added, both.body.removed], [['a.rules', 'c.rules'], ['d.rules'], ['a.rules']]);
  t.same(await send(), ['c=c2', 'd=d1']);

  t.match((await api(proxy, 'GET', '/api/v1/rules')).body, {
    version: 5,
    files: { 'c.rules': mark('c', 'c2'), 'd.rules': mark('d', 'd1') },
  });
  t.equal(await proxy.metric('edge_rules_version'), 5);
  t.equal(await proxy.metric('edge_rules_pushes_total', 'source="api",result="applied"'), 4, 'counted as pushes from the admin API');
  t.equal(await proxy.metric('edge_rules_pushes_total', 'source="api",result="unchanged"'), 1);
  t.ok(proxy.logs.some((l) => l.msg === 'rules version 5 running (api)'));
});

t.test('a change with an error, of a name not running, or that leaves no rule changes nothing', async (t) => {
  const { proxy, send } = await setup(t, { 'a.rules': mark('a', 'a1'), 'b.rules': mark('b', 'b1') });

  const bad = await patch(proxy, {
    files: { 'c.rules': 'rule c\nwhen payload.t > 1\nthen lgo("info", "x")\nend\n', 'bad name.rules': mark('d', 'd1') },
  });
  t.equal(bad.status, 422);
  t.match(bad.body.errors, [
    { file: 'bad name.rules', line: 1, col: 1, code: 'E_RULE_FILE_NAME' },
    { file: 'c.rules', line: 3, col: 6, code: 'E_RULE_UNKNOWN_ACTION' },
  ]);
  t.equal((bad.body.errors as unknown[]).length, 2, 'every error, with its file name');
  const clash = await patch(proxy, { files: { 'c.rules': mark('a', 'again') } });
  t.equal(clash.status, 422, 'the resulting whole set is checked: a rule name taken by a running file');
  t.match(clash.body.errors, [{ code: /^E_RULE_/ }]);
  t.equal(await proxy.metric('edge_rules_reload_failures_total'), 2, 'each set with errors is counted');

  const missing = await patch(proxy, { remove: ['b.rules', 'zz.rules'] });
  t.match(missing, {
    status: 404,
    body: { code: 'E_RULES_NO_FILE', error: /has no file zz\.rules to remove; nothing changed\. Its files: a\.rules, b\.rules/ },
  });

  const last = await patch(proxy, { remove: ['a.rules', 'b.rules'] });
  t.match(last, { status: 422, body: { code: 'E_RULES_EMPTY', error: /^the change leaves no rules file: it would remove every rule/ } });
  const comments = await patch(proxy, { files: { 'a.rules': '# later\n' }, remove: ['b.rules'] });
  t.match(comments, { status: 422, body: { code: 'E_RULES_EMPTY', error: /^the change leaves 1 file but no rule/ } });

  for (const [body, error] of [
    [{}, /names no file to add, replace or remove/],
    [{ remove: 'a.rules' }, /"remove" must be an array/],
    [{ files: { 'a.rules': mark('a', 'x') }, remove: ['a.rules'] }, /both in "files" and in "remove"/],
    [{ files: { 'a.rules': 1 } }, /files\["a\.rules"\] is a number/],
    [{ file: {} }, /unknown field "file"/],
  ] as const) {
    const r = await patch(proxy, body);
    t.match(r, { status: 400, body: { code: 'E_RULES_REQUEST', error } }, JSON.stringify(body));
  }
  const notJson = await api(proxy, 'PATCH', '/api/v1/rules', { type: 'text/plain', body: 'rule x' });
  t.match(notJson, { status: 400, body: { code: 'E_RULES_REQUEST', error: /not valid JSON/ } });
  t.equal((await patch(proxy, { remove: ['a.rules'] }, null)).status, 401, 'a change needs the token');
  t.equal((await patch(proxy, { remove: ['a.rules'] }, 'wrong')).status, 401);

  t.same(await send(), ['a=a1', 'b=b1'], 'none of it changed the running rules');
  t.same(rulesListing(join(proxy.dir, 'rules')).sort(), ['a.rules', 'b.rules'], 'nor the directory');
  t.equal(await proxy.metric('edge_rules_version'), 1);
  t.equal(await proxy.metric('edge_rules_pushes_total', 'source="api",result="rejected"'), 5, 'refusals of the store are counted');

  const emptied = await patch(proxy, { remove: ['a.rules', 'b.rules'], allowEmpty: true });
  t.match(emptied, { status: 200, body: { version: 2, rules: 0, files: [], removed: ['a.rules', 'b.rules'] } }, 'unless asked for');
  t.same(rulesListing(join(proxy.dir, 'rules')), []);
  t.same(await send(), []);
});

t.test('a rollback after an add goes back to the set before it', async (t) => {
  const { proxy, send } = await setup(t, { 'a.rules': mark('a', 'a1') });
  const before = await api(proxy, 'GET', '/api/v1/rules');
  t.match((await patch(proxy, { files: { 'c.rules': mark('c', 'c1') } })).body, { version: 2 });
  t.same(await send(), ['a=a1', 'c=c1']);
  const back = await api(proxy, 'POST', '/api/v1/rules/rollback');
  t.match(back, { status: 200, body: { version: 3, sha256: before.body.sha256, files: ['a.rules'], replaced: ['c.rules'] } });
  t.same(await send(), ['a=a1']);
  t.same(rulesListing(join(proxy.dir, 'rules')), ['a.rules']);
});

t.test('rules add and rules remove, end to end', async (t) => {
  const dir = t.testdir();
  mkdirSync(join(dir, 'rules'));
  writeFileSync(join(dir, 'rules', 'a.rules'), mark('a', 'a1'));
  writeFileSync(join(dir, 'rules', 'b.rules'), mark('b', 'b1'));
  const proxy = await startProxy(dir);
  t.teardown(() => proxy.stop());
  const work = join(dir, 'work');
  mkdirSync(join(work, 'site'), { recursive: true });
  writeFileSync(join(work, 'site', 'c.rules'), mark('c', 'c1'));
  writeFileSync(join(work, 'a.rules'), mark('a', 'a2'));
  const cfg = ['--config', proxy.configFile];

  const add = await runCli(['rules', 'add', 'site/c.rules', 'a.rules', ...cfg], work);
  t.equal(add.status, 0, add.stderr);
  t.match(add.stdout, /^added: version 2: 3 rules \(sha256 [0-9a-f]{12}\) running; added c\.rules; replaced a\.rules; 3 files now\n$/);
  t.same(rulesListing(join(dir, 'rules')).sort(), ['a.rules', 'b.rules', 'c.rules'], 'stored under their base names, b.rules kept');

  const again = await runCli(['rules', 'add', 'site/c.rules', ...cfg], work);
  t.equal(again.status, 0);
  t.match(again.stdout, /^unchanged: version 2: 3 rules/);

  writeFileSync(join(work, 'broken.rules'), 'rule broken\nwhen msg.topic matches "devices/#"\nthen uplnk()\nend\n');
  const bad = await runCli(['rules', 'add', 'broken.rules', ...cfg], work);
  t.equal(bad.status, 1);
  t.equal(
    bad.stderr,
    'broken.rules:3:6: E_RULE_UNKNOWN_ACTION: unknown action "uplnk"; did you mean "uplink"?\n  then uplnk()\n       ^\n1 error: nothing changed, the running rules keep running\n',
  );

  const remove = await runCli(['rules', 'remove', 'b.rules', ...cfg], work);
  t.equal(remove.status, 0, remove.stderr);
  t.match(remove.stdout, /^removed: version 3: 2 rules \(sha256 [0-9a-f]{12}\) running; removed b\.rules; 2 files now\n$/);
  t.same(rulesListing(join(dir, 'rules')).sort(), ['a.rules', 'c.rules']);

  const missing = await runCli(['rules', 'remove', 'b.rules', ...cfg], work);
  t.equal(missing.status, 1, 'a name that does not run');
  t.match(missing.stderr, /answered 404: the running set \(version 3\) has no file b\.rules to remove; .*\(E_RULES_NO_FILE\)/);

  const last = await runCli(['rules', 'remove', 'a.rules', 'c.rules', ...cfg], work);
  t.equal(last.status, 1, 'removing the last rules is refused');
  t.match(last.stderr, /\(E_RULES_EMPTY\)\nto run no rules on purpose: edge-proxy rules remove --allow-empty NAME\.\.\.\n$/);
  t.equal((await api(proxy, 'GET', '/api/v1/rules')).body.version, 3, 'nothing changed');

  const path = await runCli(['rules', 'remove', 'rules/a.rules', ...cfg], work);
  t.equal(path.status, 2, 'a path is not a name');
  t.match(path.stderr, /give the name of a running rules file/);
  t.equal((await runCli(['rules', 'remove', ...cfg], work)).status, 2, 'no NAME is a usage error');
  t.equal((await runCli(['rules', 'add', ...cfg], work)).status, 2, 'no FILE is a usage error');

  const token = readFileSync(join(dir, 'data', 'admin-token'), 'utf8').trim();
  const nowhere = await runCli(['rules', 'add', 'a.rules', '--admin', `http://127.0.0.1:${await freePort()}`, '--token', token], work);
  t.equal(nowhere.status, 2, 'exit 2 when the proxy cannot be reached');
  const wrong = await runCli(['rules', 'remove', 'a.rules', '--admin', `http://127.0.0.1:${proxy.ports.admin}`, '--token', 'wrong'], work);
  t.equal(wrong.status, 1);
  t.match(wrong.stderr, /answered 401: .*\(E_ADMIN_AUTH\)/);

  const wipe = await runCli(['rules', 'remove', '--allow-empty', 'a.rules', 'c.rules', ...cfg], work);
  t.equal(wipe.status, 0, wipe.stderr);
  t.match(wipe.stdout, /^removed: version 4: 0 rules .* running; removed a\.rules, c\.rules; 0 files now\n$/);
  t.same(rulesListing(join(dir, 'rules')), []);
});
