// Pushing rules through the admin API (docs/rules.md, Pushing rules): a push replaces
// the directory's rules at once and answers its version, a bad one changes nothing and lists every
// error, writes need the token, validate applies nothing, rollback goes back, and all of it
// survives a restart.
import t, { type Test } from 'tap';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startProxy, type ProxyProcess } from './helpers/proxy.js';
import { collect, connectClient, type Collected } from './helpers/clients.js';
import { eventually } from './helpers/ports.js';
import { request } from 'node:http';
import { adminToken, api, pushFiles } from './helpers/admin.js';

/** A rules directory's entries, less the lock of the proxy running on it (.edge-proxy.lock, docs/operations.md). */
const listing = (dir: string): string[] => readdirSync(dir).filter((name) => name !== '.edge-proxy.lock');

const mark = (tag: string, name = 'mark'): string => `rule ${name}
when msg.topic matches "devices/+/telemetry"
then publish("seen/" + msg.deviceId, "${tag}")
end
`;

/** A proxy with one rules file, and a device and a local subscriber that shows which set ran. */
async function setup(
  t: Test,
  files: Record<string, string> = { 'a.rules': mark('v1') },
): Promise<{ proxy: ProxyProcess; seen: Collected; send: () => Promise<string> }> {
  const dir = t.testdir();
  mkdirSync(join(dir, 'rules'));
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, 'rules', name), text);
  const proxy = await startProxy(dir);
  t.teardown(() => proxy.stop());
  const device = await connectClient(proxy.ports.mqtt, { clientId: 'push-dev' });
  t.teardown(() => device.endAsync());
  const watcher = await connectClient(proxy.ports.mqtt, { clientId: 'push-watch' });
  t.teardown(() => watcher.endAsync());
  const seen = await collect(watcher, 'seen/#');
  let n = 0;
  return {
    proxy,
    seen,
    // Publish one reading and return what the rules published for it.
    async send() {
      const before = seen.messages.length;
      await device.publishAsync('devices/push-dev/telemetry', JSON.stringify({ n: ++n }), { qos: 1 });
      await eventually('the rules answered the reading', () => seen.messages.length > before);
      return seen.messages[seen.messages.length - 1]!.payload.toString();
    },
  };
}

t.test('a good push takes effect at once, answers its version, and replaces the directory', async (t) => {
  const { proxy, send } = await setup(t, { 'a.rules': mark('v1'), 'b.rules': mark('b', 'other').replace('seen/', 'other/') });
  t.equal(await send(), 'v1');
  const pushed = await api(proxy, 'PUT', '/api/v1/rules', { type: 'text/plain; charset=utf-8', body: mark('v2') });
  t.equal(pushed.status, 200);
  t.match(pushed.body, { version: 2, rules: 1, changed: true, sha256: /^[0-9a-f]{64}$/ });
  t.same(
    [pushed.body.files, pushed.body.replaced],
    [['pushed.rules'], ['a.rules', 'b.rules']],
    'the answer says what runs and what it replaced',
  );
  t.equal(await send(), 'v2', 'the next message is evaluated by the pushed set');
  t.same(listing(join(proxy.dir, 'rules')).sort(), ['pushed.rules'], 'a text push is stored as pushed.rules; the old files are gone');
  t.equal(readFileSync(join(proxy.dir, 'rules', 'pushed.rules'), 'utf8'), mark('v2'));
  const got = await api(proxy, 'GET', '/api/v1/rules');
  t.same(
    got.body,
    { version: 2, sha256: pushed.body.sha256, rules: 1, files: { 'pushed.rules': mark('v2') } },
    'GET answers the running set',
  );
  t.equal(await proxy.metric('edge_rules_version'), 2);

  const json = await pushFiles(proxy, { '10-a.rules': mark('v3'), '20-b.rules': mark('b', 'second').replace('seen/', 'other/') });
  t.match(json.body, { version: 3, rules: 2, files: ['10-a.rules', '20-b.rules'], replaced: ['pushed.rules'] });
  t.same(listing(join(proxy.dir, 'rules')).sort(), ['10-a.rules', '20-b.rules'], 'a JSON push stores each file under its name');
  t.equal(await send(), 'v3');

  const again = await pushFiles(proxy, { '10-a.rules': mark('v3'), '20-b.rules': mark('b', 'second').replace('seen/', 'other/') });
  t.match(again.body, { version: 3, changed: false }, 'pushing the running content again makes no version');
  t.same(again.body.replaced, [], 'and replaces nothing');
  const one = await pushFiles(proxy, { '10-a.rules': mark('v4'), '20-b.rules': mark('b', 'second').replace('seen/', 'other/') });
  t.match(one.body, { version: 4, files: ['10-a.rules', '20-b.rules'] });
  t.same(one.body.replaced, ['10-a.rules'], 'a file pushed again unchanged is not counted as replaced');
  t.equal(await send(), 'v4');
  t.equal(await proxy.metric('edge_rules_pushes_total', 'result="applied"'), 3);
  t.equal(await proxy.metric('edge_rules_pushes_total', 'result="unchanged"'), 1);
  t.ok(
    proxy.logs.some((l) => l.msg === 'rules version 3 running (api)' && typeof l.tookMs === 'number'),
    'the log says which version runs, where it came from and how long the swap took',
  );
});

t.test('a bad push answers 422 with every error and the old set keeps running', async (t) => {
  const { proxy, send } = await setup(t);
  const bad = await pushFiles(proxy, {
    'one.rules': 'rule a\nwhen payload.t > 1\nthen lgo("info", "x")\nend\n',
    'two.rules': 'rule b\nwhen avrg(payload.t, 5) > 1\nthen uplink(priority = "urgent")\nend\n',
    'bad name.rules': mark('x', 'c'),
  });
  t.equal(bad.status, 422);
  t.same(
    bad.body.errors,
    [
      {
        file: 'bad name.rules',
        line: 1,
        col: 1,
        code: 'E_RULE_FILE_NAME',
        message: bad.body.errors && (bad.body.errors as Array<{ message: string }>)[0]!.message,
      },
      { file: 'one.rules', line: 3, col: 6, code: 'E_RULE_UNKNOWN_ACTION', message: 'unknown action "lgo"; did you mean "log"?' },
      { file: 'two.rules', line: 2, col: 6, code: 'E_RULE_UNKNOWN_FUNCTION', message: 'unknown function "avrg"; did you mean "avg"?' },
      {
        file: 'two.rules',
        line: 3,
        col: 24,
        code: 'E_RULE_ARG',
        message: 'uplink(): priority must be one of "critical", "high", "normal", "low"',
      },
    ],
    'every error of every file, with file, line, column, code and message',
  );
  t.match((bad.body.errors as Array<{ message: string }>)[0]!.message, /ends with "\.rules"/);
  t.equal(await send(), 'v1', 'the old set keeps running');
  t.same(listing(join(proxy.dir, 'rules')), ['a.rules'], 'the directory is untouched');
  t.equal(await proxy.metric('edge_rules_version'), 1);
  t.equal(await proxy.metric('edge_rules_reload_failures_total'), 1, 'the refused set is counted');

  const notJson = await api(proxy, 'PUT', '/api/v1/rules', { type: 'application/json', body: '{"files": {"a.rules": "x"' });
  t.equal(notJson.status, 400);
  t.match(notJson.body, { code: 'E_RULES_REQUEST', error: /not valid JSON at line 1, column 26/ });
  const wrongShape = await api(proxy, 'PUT', '/api/v1/rules', { type: 'application/json', body: '{"files": {"a.rules": 7}}' });
  t.match(wrongShape, { status: 400, body: { code: 'E_RULES_REQUEST', error: 'files["a.rules"] is a number, not the file\'s text' } });
  const notUtf8 = await api(proxy, 'PUT', '/api/v1/rules', { type: 'text/plain', body: Buffer.from([0x72, 0x75, 0xff, 0xfe]) });
  t.match(notUtf8, { status: 400, body: { code: 'E_RULES_REQUEST', error: /not UTF-8/ } });
  const huge = await api(proxy, 'PUT', '/api/v1/rules', { type: 'text/plain', body: Buffer.alloc(17 * 2 ** 20, 0x20) });
  t.match(huge, { status: 413, body: { code: 'E_RULES_REQUEST' } });
  // The same without a content-length (chunked): refused once the limit is passed, answered all the same.
  const chunked = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: proxy.ports.admin,
        path: '/api/v1/rules',
        method: 'PUT',
        headers: { authorization: `Bearer ${adminToken(proxy)}`, 'content-type': 'text/plain' },
      },
      (res) => {
        let body = '';
        res.on('data', (d: Buffer) => {
          body += d.toString();
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('error', reject);
    const chunk = Buffer.alloc(2 ** 20, 0x20);
    for (let i = 0; i < 17; i++) req.write(chunk);
    req.end();
  });
  t.equal(chunked.status, 413, 'a chunked body over 16 MiB gets 413');
  t.match(JSON.parse(chunked.body), { code: 'E_RULES_REQUEST' });
  const tooMany = await pushFiles(proxy, Object.fromEntries(Array.from({ length: 1001 }, (_, i) => [`f${i}.rules`, ''])));
  t.match(tooMany, { status: 400, body: { code: 'E_RULES_REQUEST', error: 'the push carries 1001 files; at most 1000 are taken' } });
  t.equal(await send(), 'v1', 'none of them changed anything, and the proxy is still up');
});

t.test('a push that defines no rule is refused with E_RULES_EMPTY unless allowEmpty says so', async (t) => {
  const { proxy, send } = await setup(t, { 'a.rules': mark('v1'), 'b.rules': mark('b', 'other').replace('seen/', 'other/') });
  const refusals: Array<[string, Promise<{ status: number; body: Record<string, unknown> }>]> = [
    ['no file', pushFiles(proxy, {})],
    ['an empty text body', api(proxy, 'PUT', '/api/v1/rules', { type: 'text/plain', body: '' })],
    ['a text of comments', api(proxy, 'PUT', '/api/v1/rules', { type: 'text/plain', body: '# nothing yet\n\n' })],
    ['files without a rule', pushFiles(proxy, { 'a.rules': '', 'c.rules': '# later\n' })],
    ['allowEmpty false', api(proxy, 'PUT', '/api/v1/rules', { type: 'application/json', body: '{"files": {}, "allowEmpty": false}' })],
    ['?allowEmpty=0', api(proxy, 'PUT', '/api/v1/rules?allowEmpty=0', { type: 'text/plain', body: '' })],
  ];
  for (const [what, answer] of refusals) {
    const r = await answer;
    t.equal(r.status, 422, `${what}: 422`);
    t.equal(r.body.code, 'E_RULES_EMPTY', `${what}: E_RULES_EMPTY`);
  }
  const r = await pushFiles(proxy, {});
  t.match(
    r.body.error,
    /^the push carries no rules file: it would remove every rule, so it is refused; nothing changed, version 1 keeps running\. To run no rules on purpose, push \{"files": \{\}, "allowEmpty": true\}/,
    'the error says why and how to push an empty set on purpose',
  );
  t.equal(await send(), 'v1', 'the rules still run');
  t.same(listing(join(proxy.dir, 'rules')).sort(), ['a.rules', 'b.rules'], 'and their files are still there');
  t.equal(await proxy.metric('edge_rules_version'), 1);
  t.equal(await proxy.metric('edge_rules_pushes_total', 'source="api",result="rejected"'), 7, 'each refusal is a rejected push');
  t.equal(await proxy.metric('edge_rules_reload_failures_total'), 0, 'not a set with errors');
  t.ok(
    proxy.logs.some((l) => l.level === 'warn' && l.code === 'E_RULES_EMPTY' && String(l.msg).includes('allowEmpty')),
    'the log says why, and how',
  );

  const validate = await api(proxy, 'POST', '/api/v1/rules/validate', { type: 'application/json', body: '{"files": {}}' });
  t.match(validate, { status: 422, body: { code: 'E_RULES_EMPTY' } }, 'validate answers as the push would');
  const wouldEmpty = await api(proxy, 'POST', '/api/v1/rules/validate', {
    type: 'application/json',
    body: '{"files": {}, "allowEmpty": true}',
  });
  t.match(wouldEmpty, { status: 200, body: { version: 2, rules: 0, changed: true, files: [], replaced: ['a.rules', 'b.rules'] } });
  t.equal(await proxy.metric('edge_rules_pushes_total', 'result="rejected"'), 7, 'a validation counts nothing');
  const notBoolean = await api(proxy, 'PUT', '/api/v1/rules', { type: 'application/json', body: '{"files": {}, "allowEmpty": "yes"}' });
  t.match(notBoolean, { status: 400, body: { code: 'E_RULES_REQUEST', error: /"allowEmpty" is "yes"; it is true or false/ } });
  const badQuery = await api(proxy, 'PUT', '/api/v1/rules?allowEmpty=maybe', { type: 'text/plain', body: '' });
  t.match(badQuery, { status: 400, body: { code: 'E_RULES_REQUEST' } });
  t.equal(await send(), 'v1', 'none of that changed anything');

  const emptied = await api(proxy, 'PUT', '/api/v1/rules', { type: 'application/json', body: '{"files": {}, "allowEmpty": true}' });
  t.equal(emptied.status, 200, 'an empty set asked for is applied');
  t.match(emptied.body, { version: 2, rules: 0, changed: true, files: [], replaced: ['a.rules', 'b.rules'] });
  t.same(listing(join(proxy.dir, 'rules')), [], 'every rules file is gone');
  t.match((await api(proxy, 'GET', '/api/v1/rules')).body, { version: 2, rules: 0, files: {} });
  const text = await api(proxy, 'PUT', '/api/v1/rules?allowEmpty=1', { type: 'text/plain', body: '# rules come later\n' });
  t.match(text, { status: 200, body: { version: 3, rules: 0, files: ['pushed.rules'], replaced: [] } }, '?allowEmpty=1 for a text body');
});

t.test('a write without a valid token is refused; validate applies nothing', async (t) => {
  const { proxy, send } = await setup(t);
  for (const token of [null, 'not-the-token']) {
    const r = await api(proxy, 'PUT', '/api/v1/rules', { token, type: 'text/plain', body: mark('evil') });
    t.equal(r.status, 401, `a push with ${token ? 'a wrong' : 'no'} token gets 401`);
    t.equal(r.body.code, 'E_ADMIN_AUTH');
    t.equal((await api(proxy, 'POST', '/api/v1/rules/rollback', { token })).status, 401, 'so does a rollback');
    t.equal(
      (await api(proxy, 'POST', '/api/v1/rules/validate', { token, type: 'text/plain', body: mark('x') })).status,
      401,
      'and a validation',
    );
  }
  t.equal((await api(proxy, 'GET', '/api/v1/rules', { token: null })).status, 200, 'reads on loopback need no token');
  t.equal(await send(), 'v1', 'nothing changed');

  const ok = await api(proxy, 'POST', '/api/v1/rules/validate', { type: 'text/plain', body: mark('v2') });
  t.equal(ok.status, 200);
  t.match(ok.body, { version: 2, rules: 1, changed: true }, 'validate answers what a push would');
  const bad = await api(proxy, 'POST', '/api/v1/rules/validate', { type: 'text/plain', body: 'rule x\nwhen\nthen drop()\nend\n' });
  t.equal(bad.status, 422);
  t.match(bad.body, { errors: [{ file: 'pushed.rules', line: 3, col: 1, code: 'E_RULE_SYNTAX' }] });
  t.equal(await send(), 'v1', 'and applies nothing');
  t.equal(await proxy.metric('edge_rules_version'), 1);
  t.same(listing(join(proxy.dir, 'rules')), ['a.rules']);
  t.equal(await proxy.metric('edge_rules_reload_failures_total'), 0, 'a validation that finds errors is not a failed reload');
});

t.test('rollback restores the previous version as a new one; with none it answers 409', async (t) => {
  const { proxy, send } = await setup(t);
  const none = await api(proxy, 'POST', '/api/v1/rules/rollback');
  t.equal(none.status, 409);
  t.equal(none.body.code, 'E_RULES_NO_EARLIER');
  const v1 = await api(proxy, 'GET', '/api/v1/rules');

  t.equal((await pushFiles(proxy, { 'new.rules': mark('v2') })).body.version, 2);
  t.equal(await send(), 'v2');
  const back = await api(proxy, 'POST', '/api/v1/rules/rollback');
  t.equal(back.status, 200);
  t.match(back.body, { version: 3, sha256: v1.body.sha256, rules: 1 }, 'version 3 runs the content of version 1');
  t.equal(await send(), 'v1');
  t.same(listing(join(proxy.dir, 'rules')), ['a.rules'], 'the directory holds the rolled-back files');
  const forth = await api(proxy, 'POST', '/api/v1/rules/rollback');
  t.match(forth.body, { version: 4 }, 'a second rollback returns to where it started');
  t.equal(await send(), 'v2');
  t.equal(await proxy.metric('edge_rules_pushes_total', 'source="rollback",result="applied"'), 2);
});

t.test('a pushed set survives a restart, and an interrupted push is finished at the next start', async (t) => {
  const { proxy } = await setup(t);
  const pushed = await pushFiles(proxy, { 'p.rules': mark('pushed') });
  t.equal(pushed.body.version, 2);
  await proxy.stop();
  await proxy.restart();
  const device = await connectClient(proxy.ports.mqtt, { clientId: 'after-restart' });
  t.teardown(() => device.endAsync());
  const seen = await collect(device, 'seen/#');
  await device.publishAsync('devices/after-restart/telemetry', '{}', { qos: 1 });
  await eventually('the pushed rule answered', () => seen.messages.length === 1);
  t.equal(seen.messages[0]!.payload.toString(), 'pushed', 'after a push and a restart, the pushed set runs');
  t.match((await api(proxy, 'GET', '/api/v1/rules')).body, { version: 2, sha256: pushed.body.sha256 }, 'under the same version');

  // A power cut after the push journal was written but before every file was in place: the
  // journal is what a push leaves in that case, and the directory holds part of the new set.
  await proxy.stop();
  writeFileSync(
    join(proxy.dir, 'data', 'rules-push.json'),
    JSON.stringify({
      dir: join(proxy.dir, 'rules'),
      files: { 'x.rules': mark('x1', 'x'), 'y.rules': mark('y1', 'y').replace('seen/', 'other/') },
    }),
  );
  writeFileSync(join(proxy.dir, 'rules', 'x.rules'), mark('x1', 'x'));
  writeFileSync(join(proxy.dir, 'rules', '.y.rules.push-tmp'), 'rule y\nwhen');
  await proxy.restart();
  t.same(
    listing(join(proxy.dir, 'rules')).sort(),
    ['x.rules', 'y.rules'],
    'the start finished the push: the whole new set, nothing of the old one, no temporary file',
  );
  t.notOk(existsSync(join(proxy.dir, 'data', 'rules-push.json')), 'and removed the journal');
  t.match((await api(proxy, 'GET', '/api/v1/rules')).body, { version: 3, rules: 2 });
  t.ok(
    proxy.logs.some((l) => l.msg === 'finished a rules push that a stop or crash interrupted'),
    'the log says so',
  );
});

t.test('a missing rules directory is made at start (it holds the lock), and it is watched', async (t) => {
  const dir = t.testdir();
  const proxy = await startProxy(dir);
  t.teardown(() => proxy.stop());
  t.equal((await pushFiles(proxy, { 'a.rules': mark('a') })).body.version, 2);
  t.same(listing(join(dir, 'rules')), ['a.rules']);
  writeFileSync(join(dir, 'rules', 'b.rules'), mark('b', 'b').replace('seen/', 'other/'));
  await eventually('the edit in the new directory reloads', async () => (await proxy.metric('edge_rules_version')) === 3, 10_000);
});

// A rules directory the proxy cannot write: a small tmpfs the test mounts, then makes read-only.
const roDir = join(process.cwd(), '.tap', 'rules-ro-mount');
function mountReadOnly(files: Record<string, string>): string | null {
  if (process.getuid?.() !== 0) return 'mounting a tmpfs needs root';
  mkdirSync(roDir, { recursive: true });
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', roDir], { stdio: 'pipe' });
    for (const [name, text] of Object.entries(files)) writeFileSync(join(roDir, name), text);
    execFileSync('mount', ['-o', 'remount,ro', roDir], { stdio: 'pipe' });
    return null;
  } catch (err) {
    return (err as { stderr?: Buffer }).stderr?.toString().trim() || (err as Error).message;
  }
}
const roWhy = mountReadOnly({ 'a.rules': mark('v1') });

t.test(
  'a valid push to a directory that cannot be written answers 500 E_RULES_WRITE and changes nothing',
  { skip: roWhy ? `cannot mount a read-only file system here: ${roWhy}` : false },
  async (t) => {
    t.teardown(() => {
      try {
        execFileSync('umount', ['-l', roDir]);
      } catch {
        /* already gone */
      }
    });
    const dir = t.testdir();
    const proxy = await startProxy(dir, { rules: { dir: roDir } });
    t.teardown(() => proxy.stop());
    const r = await pushFiles(proxy, { 'b.rules': mark('v2') });
    t.equal(r.status, 500);
    t.equal(r.body.code, 'E_RULES_WRITE');
    t.match(r.body.error, /cannot write .*rules-ro-mount \(EROFS\); nothing changed/);
    t.match((await api(proxy, 'GET', '/api/v1/rules')).body, { version: 1, files: { 'a.rules': mark('v1') } }, 'the old set keeps running');
    t.notOk(existsSync(join(dir, 'data', 'rules-push.json')), 'no journal is left to apply the refused set at the next start');
    await proxy.stop();
    await proxy.restart();
    t.match((await api(proxy, 'GET', '/api/v1/rules')).body, { version: 1 }, 'and after a restart the old set still runs');

    // An interrupted push that cannot be finished, because the directory has become read-only since:
    // the proxy still starts (a crash loop would help nobody), says why, and keeps the journal.
    await proxy.stop();
    writeFileSync(join(dir, 'data', 'rules-push.json'), JSON.stringify({ dir: roDir, files: { 'z.rules': mark('z') } }));
    await proxy.restart();
    t.match((await api(proxy, 'GET', '/api/v1/rules')).body, { version: 1 }, 'the proxy starts on the directory as it is');
    t.ok(
      proxy.logs.some(
        (l) => l.level === 'error' && String(l.msg).startsWith('cannot finish a rules push that a stop or crash interrupted'),
      ),
      'and logs what to do',
    );
    t.ok(existsSync(join(dir, 'data', 'rules-push.json')), 'the journal stays for a start that can write the directory');
  },
);
