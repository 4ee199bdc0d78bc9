// A push replaces the rules directory whole (docs/rules.md, Pushing rules). A file there that never
// ran (a hand edit the proxy refused) is not lost with it: the push moves it to
// <dataDir>/rules-discarded/<timestamp>-<name>, says so in the log and in its answer (`discarded`),
// and keeps the newest 20 such copies.
import t from 'tap';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startProxy } from './helpers/proxy.js';
import { api, pushFiles } from './helpers/admin.js';
import { eventually } from './helpers/ports.js';

const rule = (tag: string, name = 'mark'): string => `rule ${name}
when msg.topic matches "devices/+/telemetry"
then publish("seen/" + msg.deviceId, "${tag}")
end
`;
const BROKEN = 'rule half\nwhen msg.topic matches\n';
/** The rules files of a directory (not the running proxy's lock). */
const rulesFiles = (dir: string): string[] => readdirSync(dir).filter((n) => n.endsWith('.rules'));
const STAMP = /^\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}\.\d{3}Z-/;

t.test('a push keeps a copy of a refused hand edit it replaces, and says where', async (t) => {
  const dir = t.testdir({ rules: { 'a.rules': rule('v1') } });
  const proxy = await startProxy(dir);
  t.teardown(() => proxy.stop());
  const discarded = join(dir, 'data', 'rules-discarded');

  // A hand edit with an error: refused, so it never runs and never becomes a version.
  writeFileSync(join(dir, 'rules', 'broken.rules'), BROKEN);
  await eventually('the edit is refused', async () => (await proxy.metric('edge_rules_reload_failures_total')) === 1, 10_000);
  t.equal((await api(proxy, 'GET', '/api/v1/rules')).body.version, 1, 'the running set is unchanged');

  const pushed = await pushFiles(proxy, { 'b.rules': rule('v2') });
  t.equal(pushed.status, 200);
  t.match(pushed.body, { version: 2, files: ['b.rules'], replaced: ['a.rules'], discarded: ['broken.rules'] }, 'the answer names it');
  t.same(rulesFiles(join(dir, 'rules')), ['b.rules'], 'the directory holds the pushed set');
  const copies = readdirSync(discarded);
  t.equal(copies.length, 1);
  t.match(copies[0], STAMP, '<timestamp>-<name>');
  t.ok(copies[0]!.endsWith('-broken.rules'));
  const copy = join(discarded, copies[0]!);
  t.equal(readFileSync(copy, 'utf8'), BROKEN, 'its text is kept');
  const line = proxy.logs.find((l) => l.copy === copy);
  t.equal(line?.level, 'warn', 'the log says so');
  t.match(String(line?.msg), new RegExp(`broken\\.rules .* its text is kept in ${copy.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));

  // Running files replaced by a push are in the history, not copied; nothing unapplied: no `discarded`.
  const again = await pushFiles(proxy, { 'c.rules': rule('v3') });
  t.equal(again.status, 200);
  t.notOk('discarded' in again.body, 'no `discarded` when nothing was');
  t.equal(readdirSync(discarded).length, 1);

  // An unapplied file the push brings with the same text is not lost: not copied.
  writeFileSync(join(dir, 'rules', 'd.rules'), rule('d', 'd').replace('seen/', 'other/'));
  const same = await pushFiles(proxy, { 'c.rules': rule('v3'), 'd.rules': rule('d', 'd').replace('seen/', 'other/') });
  t.equal(same.status, 200);
  t.notOk('discarded' in same.body, 'a file the push leaves as it is was not lost');
});

t.test('a refused edit of a running file, put back by a push of the running set, is kept too', async (t) => {
  const dir = t.testdir({ rules: { 'a.rules': rule('v1') } });
  const proxy = await startProxy(dir);
  t.teardown(() => proxy.stop());
  const edited = rule('v1') + BROKEN;
  writeFileSync(join(dir, 'rules', 'a.rules'), edited);
  await eventually('the edit is refused', async () => (await proxy.metric('edge_rules_reload_failures_total')) === 1, 10_000);

  const pushed = await pushFiles(proxy, { 'a.rules': rule('v1') });
  t.equal(pushed.status, 200);
  t.match(pushed.body, { version: 1, changed: false, discarded: ['a.rules'] }, 'the running set, put back; the edit named');
  t.equal(readFileSync(join(dir, 'rules', 'a.rules'), 'utf8'), rule('v1'), 'the directory holds the running file again');
  const [copy] = readdirSync(join(dir, 'data', 'rules-discarded'));
  t.equal(readFileSync(join(dir, 'data', 'rules-discarded', copy!), 'utf8'), edited, 'and the edit is kept');
});

t.test('the newest 20 copies are kept', async (t) => {
  const dir = t.testdir({ rules: { 'a.rules': rule('v0') } });
  const proxy = await startProxy(dir, { log: { level: 'info' } });
  t.teardown(() => proxy.stop());
  const discarded = join(dir, 'data', 'rules-discarded');
  for (let i = 1; i <= 23; i++) {
    writeFileSync(join(dir, 'rules', `broken-${i}.rules`), BROKEN);
    const r = await pushFiles(proxy, { 'a.rules': rule(`v${i}`) });
    t.same(r.body.discarded, [`broken-${i}.rules`], `push ${i}`);
  }
  const kept = readdirSync(discarded).sort();
  t.equal(kept.length, 20);
  t.same(
    kept.map((n) => n.replace(STAMP, '')),
    Array.from({ length: 20 }, (_, i) => `broken-${i + 4}.rules`),
    'the oldest three are gone',
  );
  t.notOk(existsSync(join(dir, 'data', 'rules-push.json')), 'no journal left');
});

t.test('a copy that cannot be kept refuses the push: nothing changed, nothing lost', async (t) => {
  const dir = t.testdir({ rules: { 'a.rules': rule('v1') } });
  const proxy = await startProxy(dir);
  t.teardown(() => proxy.stop());
  writeFileSync(join(dir, 'data', 'rules-discarded'), 'a file where the directory would be\n');
  writeFileSync(join(dir, 'rules', 'broken.rules'), BROKEN);
  await eventually('the edit is refused', async () => (await proxy.metric('edge_rules_reload_failures_total')) === 1, 10_000);
  const pushed = await pushFiles(proxy, { 'b.rules': rule('v2') });
  t.equal(pushed.status, 500);
  t.equal(pushed.body.code, 'E_RULES_WRITE');
  t.match(pushed.body.error, /a copy of them cannot be kept in .*rules-discarded .*nothing changed/);
  t.same(rulesFiles(join(dir, 'rules')).sort(), ['a.rules', 'broken.rules'], 'the directory is as it was');
  t.equal(readFileSync(join(dir, 'rules', 'broken.rules'), 'utf8'), BROKEN);
  t.notOk(existsSync(join(dir, 'data', 'rules-push.json')), 'no journal: a restart does not apply the push either');
  t.match((await api(proxy, 'GET', '/api/v1/rules')).body, { version: 1 }, 'the running set keeps running');
});
