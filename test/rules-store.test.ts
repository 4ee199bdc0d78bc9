// The rules store on its own, in this process, on real directories: what a push does to a
// directory holding a refused edit, how the start-time warm-up gives way to a push, and that
// nothing changes once the proxy is stopping.
import t, { type Test } from 'tap';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { RulesStore } from '../src/rules/store.js';

function store(t: Test, files: Record<string, string>): { store: RulesStore; dir: string; logs: Array<Record<string, unknown>> } {
  const root = t.testdir();
  const dir = join(root, 'rules');
  mkdirSync(dir);
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      logs.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      done();
    },
  });
  const s = new RulesStore({
    dir,
    dataDir: join(root, 'data'),
    limits: { maxFileBytes: 4 * 2 ** 20, maxRules: 100_000 },
    engine: { maxWindowValues: 10_000, stateTtlSeconds: 3600, onTruncated() {} },
    log: pino({ level: 'debug' }, sink),
    onReloadFailure() {},
    onSwap() {},
  });
  s.start();
  t.teardown(() => s.stop());
  return { store: s, dir, logs };
}

const rule = (name: string): string => `rule ${name}\nwhen msg.topic matches "devices/#"\nthen log("info", "${name}")\nend\n`;

t.test('a push of the running set puts back a directory that holds a refused edit', async (t) => {
  const { store: s, dir } = store(t, { 'a.rules': rule('a') });
  writeFileSync(join(dir, 'a.rules'), 'rule a\nwhen\nthen drop()\nend\n');
  const reload = await s.reload('file change');
  t.equal(reload.errors.length, 1, 'the edit is refused');
  const r = await s.push([{ name: 'a.rules', text: rule('a') }], 'api');
  t.match(r, { ok: true, version: 1, changed: false }, 'the running set is pushed: no new version');
  t.equal(readFileSync(join(dir, 'a.rules'), 'utf8'), rule('a'), 'and the directory holds it again, so the next start loads it');
});

t.test('the warm-up after a start gives way to the first push', async (t) => {
  let big = '';
  for (let i = 0; i < 3000; i++) big += rule(`r${i}`);
  const { store: s, logs } = store(t, { 'big.rules': big });
  const r = await s.push([{ name: 'small.rules', text: rule('small') }], 'api');
  t.match(r, { ok: true, version: 2, rules: 1 });
  await s.stop();
  t.ok(
    logs.some((l) => l.msg === 'rules compiler warm-up given up for a change or a stop'),
    'the warm-up stopped for the push',
  );
});

t.test('once stopping, a push or a rollback changes nothing and says why', async (t) => {
  const { store: s, dir } = store(t, { 'a.rules': rule('a') });
  t.match(await s.push([{ name: 'b.rules', text: rule('b') }], 'api'), { ok: true, version: 2 });
  await s.stop();
  await t.rejects(s.push([{ name: 'c.rules', text: rule('c') }], 'api'), { code: 'E_STOPPING' });
  await t.rejects(s.rollback(), { code: 'E_STOPPING' });
  t.same(readdirSync(dir), ['b.rules'], 'the directory holds the last set applied before the stop');
  t.equal(s.version?.version, 2);
});

t.test('a push without a rule is refused unless allowEmpty; a rollback to a set without rules is not', async (t) => {
  const { store: s, dir } = store(t, { 'a.rules': rule('a') });
  await t.rejects(s.push([], 'api'), { code: 'E_RULES_EMPTY', status: 422 });
  await t.rejects(s.push([{ name: 'b.rules', text: '# later\n' }], 'cloud'), { code: 'E_RULES_EMPTY' });
  await t.rejects(s.validate([]), { code: 'E_RULES_EMPTY' });
  t.same(readdirSync(dir), ['a.rules'], 'nothing changed');
  t.match(await s.push([], 'api', { allowEmpty: true }), { ok: true, version: 2, rules: 0, files: [], replaced: ['a.rules'] });
  t.same(readdirSync(dir), []);
  t.match(await s.rollback(), { ok: true, version: 3, rules: 1, files: ['a.rules'], replaced: [] });
  t.match(await s.rollback(), { ok: true, version: 4, rules: 0, files: [], replaced: ['a.rules'] }, 'back to the empty set, asked for');
});
