// `edge-proxy rules check` and `edge-proxy rules test`, run as an operator runs them (the built CLI).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { copyFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

const ROOT = new URL('..', import.meta.url).pathname;
const CLI = join(ROOT, 'dist/src/cli.js');

/** Runs the CLI in `cwd` (no edge-proxy.yaml there, no EDGE_PROXY_* overrides: the embedded defaults). */
function cli(args: string[], cwd: string): { status: number | null; stdout: string; stderr: string } {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('EDGE_PROXY_')));
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd, env, encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const GOOD = `# two rules
rule overheat priority 10
when msg.topic matches "devices/+/telemetry" and payload.temp > 40
then
  uplink(priority = "high")
  publish("devices/" + msg.deviceId + "/cmd/fan", { on: true })
end

rule quiet_debug
when msg.topic matches "devices/+/debug/#"
then drop()
end
`;

t.test('rules check: exit 0 and a summary when clean', async (t) => {
  const dir = t.testdir({ 'good.rules': GOOD, 'one.rules': 'rule single when true then log("info", "x") end\n' });
  const one = cli(['rules', 'check', 'good.rules'], dir);
  t.equal(one.status, 0, one.stderr);
  t.equal(one.stdout, '2 rules in 1 file: OK\n');
  t.equal(one.stderr, '');
  const two = cli(['rules', 'check', 'good.rules', 'one.rules'], dir);
  t.equal(two.status, 0, two.stderr);
  t.equal(two.stdout, '3 rules in 2 files: OK\n');
  const single = cli(['rules', 'check', 'one.rules'], dir);
  t.equal(single.stdout, '1 rule in 1 file: OK\n');
});

t.test('rules check: exit 1, every error of every file with its code frame', async (t) => {
  const dir = t.testdir({
    'good.rules': GOOD,
    'bad.rules':
      'rule warm\nwhen avgg(payload.t, 5m) > 1\nthen drop()\nend\n\nrule loud\nwhen true\nthen uplink(priority = "urgent")\nend\n',
    'dup.rules': 'rule overheat when true then drop() end\n',
  });
  const r = cli(['rules', 'check', 'good.rules', 'bad.rules', 'dup.rules'], dir);
  t.equal(r.status, 1);
  t.equal(r.stdout, '');
  t.equal(
    r.stderr,
    [
      'bad.rules:2:6: E_RULE_UNKNOWN_FUNCTION: unknown function "avgg"; did you mean "avg"?',
      '  when avgg(payload.t, 5m) > 1',
      '       ^',
      'bad.rules:8:24: E_RULE_ARG: uplink(): priority must be one of "critical", "high", "normal", "low"',
      '  then uplink(priority = "urgent")',
      '                         ^',
      // files are read in name order: dup.rules holds the first "overheat"
      'good.rules:2:1: E_RULE_DUPLICATE: a rule named "overheat" already exists at dup.rules:1:1',
      '  rule overheat priority 10',
      '  ^',
      '3 errors in 3 files',
      '',
    ].join('\n'),
  );
  const one = cli(['rules', 'check', 'bad.rules'], dir);
  t.equal(one.status, 1);
  t.match(one.stderr, /\n2 errors in 1 file\n$/);
  // the path is shown as given
  const sub = t.testdir({ rules: { 'x.rules': 'rule x when nope then drop() end\n' } });
  const nested = cli(['rules', 'check', 'rules/x.rules'], sub);
  t.equal(nested.status, 1);
  t.match(nested.stderr, /^rules\/x\.rules:1:13: E_RULE_UNKNOWN_ROOT: unknown name "nope"/);
});

t.test('rules check: the shipped rules are clean', async (t) => {
  const dir = t.testdir();
  const names = readdirSync(join(ROOT, 'rules')).filter((n) => n.endsWith('.rules'));
  for (const n of names) copyFileSync(join(ROOT, 'rules', n), join(dir, n));
  // With the shipped models: an infer() of a model that is not there would be a warning.
  const r = cli(['rules', 'check', ...names, '--models', join(ROOT, 'models')], dir);
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, new RegExp(`^\\d+ rules in ${names.length} files: OK\\n$`));
  t.equal(r.stderr, '');
});

// The two rules of GOOD, and more.
const TEST_RULES = `${GOOD}
rule stamp
when msg.topic matches "stamp/#" or msg.topic matches "devices/+/stamp"
then log("info", { ts: now(), deviceId: msg.deviceId, protocol: msg.protocol, qos: msg.qos, id: msg.id })
end

rule event
when msg.topic matches "devices/+/battery" and payload.v < 3.5
then emit("low_battery", { device: msg.deviceId, v: payload.v })
end

rule copy
when msg.topic matches "devices/+/raw"
then uplink(topic = "slim/" + msg.deviceId, payload = { t: payload.temp }, priority = "low")
end
`;

function jsonl(lines: unknown[]): string {
  return lines.map((l) => JSON.stringify(l)).join('\n') + '\n';
}

t.test('rules test: one JSON line per message, in the format of the spec', async (t) => {
  const dir = t.testdir({
    'site.rules': TEST_RULES,
    'in.jsonl':
      jsonl([
        { id: 'M1', topic: 'devices/d1/telemetry', payload: { temp: 45 } },
        { id: 'M2', topic: 'devices/d1/telemetry', payload: { temp: 20 } },
        { id: 'M3', topic: 'devices/d1/debug/x', payload: 'debug text' },
        { id: 'M4', topic: 'devices/d2/battery', payload: { v: 3.1 } },
        { id: 'M5', topic: 'devices/d3/raw', payload: { temp: 7, junk: true } },
        { id: 'M6', topic: 'cloud/cmd', protocol: 'cloud', payload: { x: 1 } },
        { id: 'M7', topic: 'devices/d1/telemetry', protocol: 'internal', payload: { temp: 1 } },
      ]) + '\n',
  });
  const r = cli(['rules', 'test', 'site.rules', '--input', 'in.jsonl'], dir);
  t.equal(r.status, 0, r.stderr);
  t.equal(r.stderr, '');
  const lines = r.stdout.trimEnd().split('\n');
  t.equal(lines.length, 7, 'one line per message (blank lines skipped)');
  const out = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  for (const o of out)
    t.same(Object.keys(o), ['id', 'topic', 'fired', 'uplink', 'dropped'], `${String(o.id)}: the fields of the spec, in order`);
  t.same(out[0], {
    id: 'M1',
    topic: 'devices/d1/telemetry',
    // as in the spec's example, uplink() lists what it sends: the topic, the priority and the payload
    fired: [
      {
        rule: 'overheat',
        actions: [
          { action: 'uplink', topic: 'devices/d1/telemetry', priority: 'high', payload: { temp: 45 } },
          { action: 'publish', topic: 'devices/d1/cmd/fan', payload: { on: true } },
        ],
      },
    ],
    uplink: [{ topic: 'devices/d1/telemetry', priority: 'high', payload: { temp: 45 } }],
    dropped: false,
  });
  t.same(
    out[1],
    {
      id: 'M2',
      topic: 'devices/d1/telemetry',
      fired: [],
      uplink: [{ topic: 'devices/d1/telemetry', priority: 'normal', payload: { temp: 20 } }],
      dropped: false,
    },
    'default routing is included',
  );
  t.same(out[2], {
    id: 'M3',
    topic: 'devices/d1/debug/x',
    fired: [{ rule: 'quiet_debug', actions: [{ action: 'drop' }] }],
    uplink: [],
    dropped: true,
  });
  t.same(
    out[3],
    {
      id: 'M4',
      topic: 'devices/d2/battery',
      fired: [{ rule: 'event', actions: [{ action: 'emit', name: 'low_battery', data: { device: 'd2', v: 3.1 } }] }],
      uplink: [{ topic: 'events/low_battery', priority: 'high', payload: { device: 'd2', v: 3.1 } }],
      dropped: false,
    },
    'an event goes up once as high; the message itself does not',
  );
  t.same(out[4], {
    id: 'M5',
    topic: 'devices/d3/raw',
    fired: [{ rule: 'copy', actions: [{ action: 'uplink', topic: 'slim/d3', payload: { t: 7 }, priority: 'low' }] }],
    uplink: [{ topic: 'slim/d3', priority: 'low', payload: { t: 7 } }],
    dropped: false,
  });
  t.same(out[5], { id: 'M6', topic: 'cloud/cmd', fired: [], uplink: [], dropped: false }, 'a message from the cloud never goes up');
  t.same(
    out[6],
    { id: 'M7', topic: 'devices/d1/telemetry', fired: [], uplink: [], dropped: false },
    'an internal message has no default routing',
  );
});

t.test('rules test: the defaults of missing input fields', async (t) => {
  const dir = t.testdir({
    'site.rules': TEST_RULES,
    'in.jsonl': jsonl([
      { topic: 'devices/d7/stamp' },
      { topic: 'devices/d7/stamp' },
      { topic: 'stamp/d9', ts: 5000 },
      { topic: 'stamp/d8', deviceId: 'explicit', protocol: 'ws', qos: 1, id: 'GIVEN' },
    ]),
  });
  const r = cli(['rules', 'test', 'site.rules', '--input', 'in.jsonl'], dir);
  t.equal(r.status, 0, r.stderr);
  const out = r.stdout
    .trimEnd()
    .split('\n')
    .map((l) => JSON.parse(l) as { id: string; fired: Array<{ actions: Array<{ text: Record<string, unknown> }> }> });
  const seen = out.map((o) => o.fired[0]!.actions[0]!.text);
  t.match(seen[0], { ts: 0, deviceId: 'd7', protocol: 'mqtt', qos: 0 }, 'ts 0 first; deviceId from devices/<id>/...; mqtt; qos 0');
  t.match(seen[1], { ts: 1000 }, 'the previous ts + 1000');
  t.match(seen[2], { ts: 5000, deviceId: 'test' }, 'a given ts; not a devices/<id>/... topic: "test"');
  t.match(seen[3], { ts: 6000, deviceId: 'explicit', protocol: 'ws', qos: 1, id: 'GIVEN' }, 'given fields are kept');
  t.type(out[0]!.id, 'string');
  t.ok(out[0]!.id.length > 0, 'an id is generated');
  t.not(out[0]!.id, out[1]!.id, 'a new id for each message');
  t.equal(seen[0]!.id, out[0]!.id, 'the rules saw the id printed');
  t.equal(out[3]!.id, 'GIVEN');
});

t.test('rules test --format text: the same, for people', async (t) => {
  const dir = t.testdir({
    'site.rules': TEST_RULES,
    'in.jsonl': jsonl([
      { topic: 'devices/d1/telemetry', payload: { temp: 45 } },
      { topic: 'devices/d1/debug/x', payload: {} },
      { topic: 'cloud/cmd', protocol: 'cloud', payload: {} },
    ]),
  });
  const r = cli(['rules', 'test', 'site.rules', '--input', 'in.jsonl', '--format', 'text'], dir);
  t.equal(r.status, 0, r.stderr);
  t.throws(() => JSON.parse(r.stdout.split('\n')[0]!) as unknown, 'not JSON');
  const lines = r.stdout.split('\n');
  t.equal(lines[0], 'devices/d1/telemetry (ts 0, d1)', 'each message: its topic, ts and device');
  t.match(
    lines[1],
    /^ {2}fired overheat: uplink\(.*priority="high".*\) publish\(topic="devices\/d1\/cmd\/fan", payload=\{"on":true\}\)$/,
    'what fired, actions with arguments by name',
  );
  t.equal(lines[2], '  up    devices/d1/telemetry [high] {"temp":45}', 'what goes up, with its priority and payload');
  t.equal(lines[3], 'devices/d1/debug/x (ts 1000, d1) DROPPED');
  t.equal(lines[4], '  fired quiet_debug: drop()');
  t.equal(lines[5], 'cloud/cmd (ts 2000, edge)', "a message from the cloud is the edge's own, as live");
  t.equal(lines[6], '  nothing fired, nothing goes up');
  t.same(lines.slice(7), [''], 'nothing else');
});

t.test('rules test: rules with errors, or a bad input line, exit 1', async (t) => {
  const dir = t.testdir({
    'bad.rules': 'rule r when nope then drop() end\n',
    'site.rules': TEST_RULES,
    'in.jsonl': jsonl([{ topic: 'a/b' }]),
    'broken.jsonl': '{"topic": "a/b"}\n{not json\n',
    'notopic.jsonl': '{"payload": 1}\n',
  });
  const bad = cli(['rules', 'test', 'bad.rules', '--input', 'in.jsonl'], dir);
  t.equal(bad.status, 1);
  t.equal(bad.stdout, '');
  t.match(bad.stderr, /^bad\.rules:1:13: E_RULE_UNKNOWN_ROOT: /);
  const broken = cli(['rules', 'test', 'site.rules', '--input', 'broken.jsonl'], dir);
  t.equal(broken.status, 1);
  t.match(broken.stderr, /^broken\.jsonl:2: /, 'the line of the input that is wrong');
  const notopic = cli(['rules', 'test', 'site.rules', '--input', 'notopic.jsonl'], dir);
  t.equal(notopic.status, 1);
  t.match(notopic.stderr, /notopic\.jsonl:1: every message needs a "topic"/);
  const noInput = cli(['rules', 'test', 'site.rules'], dir);
  t.equal(noInput.status, 2, 'usage error');
  t.match(noInput.stderr, /--input/);
});

t.test('rules test reads device.<attr> from the registry in token mode, as the running proxy does', async (t) => {
  const rulesText =
    'rule by_place\nwhen msg.topic matches "devices/+/telemetry"\nthen uplink(topic = "sites/" + device.location + "/" + msg.deviceId)\nend\n';
  const registry = ['- id: d1', `  tokenSha256: ${'a'.repeat(64)}`, '  attrs: { location: hall-2 }', ''].join('\n');
  const dir = t.testdir({
    'site.rules': rulesText,
    'devices.yaml': registry,
    'token.yaml': 'auth: { mode: token }\ndevicesFile: devices.yaml\n',
    'open.yaml': 'auth: { mode: open }\ndevicesFile: devices.yaml\n',
    'broken.yaml': 'auth: { mode: token }\ndevicesFile: broken-devices.yaml\n',
    'broken-devices.yaml': '- id: d1\n  tokenSha: x\n',
    'in.jsonl':
      jsonl([
        { id: 'M1', topic: 'devices/d1/telemetry', payload: { temp: 1 } },
        { id: 'M2', topic: 'devices/d9/telemetry', payload: { temp: 2 } },
      ]) + '\n',
  });
  const token = cli(['rules', 'test', 'site.rules', '--input', 'in.jsonl', '--config', 'token.yaml'], dir);
  t.equal(token.status, 0, token.stderr);
  type Line = { uplink: Array<{ topic: string }>; errors?: Array<{ error: string }> };
  const [m1, m9] = token.stdout
    .trimEnd()
    .split('\n')
    .map((l) => JSON.parse(l) as Line);
  t.same(
    m1!.uplink.map((u) => u.topic),
    ['sites/hall-2/d1'],
    'a registered device: its attribute',
  );
  t.same(m9!.uplink, [], 'an unknown device: device is null, so the topic is null and nothing goes up');
  t.match(m9!.errors, [{ error: /topic is null/ }]);
  const open = cli(['rules', 'test', 'site.rules', '--input', 'in.jsonl', '--config', 'open.yaml'], dir);
  const [o1] = open.stdout
    .trimEnd()
    .split('\n')
    .map((l) => JSON.parse(l) as Line);
  t.same(o1!.uplink, [], 'open mode: no registry, as live, so device is null');
  const broken = cli(['rules', 'test', 'site.rules', '--input', 'in.jsonl', '--config', 'broken.yaml'], dir);
  t.equal(broken.status, 1);
  t.match(broken.stderr, /broken-devices\.yaml:2:3: .*E_REGISTRY/, 'a registry with problems is named with file:line:col');
});

t.test('user errors are one line and an exit code, never a stack trace', async (t) => {
  const dir = t.testdir({ rules: { 'a.rules': GOOD }, 'bad.jsonl': '{"payload": 1}\n', 'junk.jsonl': 'null\n' });
  const noStack = (r: { stderr: string }, what: string): void => {
    t.notMatch(r.stderr, /\n\s+at /, `${what}: no stack trace`);
  };
  const dirArg = cli(['rules', 'check', 'rules/'], dir);
  t.equal(dirArg.status, 2);
  t.match(dirArg.stderr, /cannot read the rules file rules\/: it is a directory: name the files in it, such as rules\/\*\.rules/);
  noStack(dirArg, 'a directory');
  const missing = cli(['rules', 'check', 'nope.rules'], dir);
  t.equal(missing.status, 2);
  t.match(missing.stderr, /cannot read the rules file nope\.rules: no such file/);
  noStack(missing, 'a missing file');
  const unmatched = cli(['rules', 'check', 'rules/*.rulez'], dir);
  t.equal(unmatched.status, 2, 'an unmatched pattern, as a shell passes it');
  const input = cli(['rules', 'test', 'rules/a.rules', '--input', 'missing.jsonl'], dir);
  t.equal(input.status, 2);
  t.match(input.stderr, /cannot read the input missing\.jsonl: no such file/);
  noStack(input, 'a missing input');
  const bad = cli(['rules', 'test', 'rules/a.rules', '--input', 'bad.jsonl'], dir);
  t.equal(bad.status, 1);
  t.equal(bad.stderr.trim(), 'bad.jsonl:1: every message needs a "topic"', 'the place once, then what is wrong');
  const junk = cli(['rules', 'test', 'rules/a.rules', '--input', 'junk.jsonl'], dir);
  t.equal(junk.status, 1);
  t.match(junk.stderr, /^junk\.jsonl:1: every line must be a JSON object/);
  noStack(junk, 'a line that is not an object');
  const version = cli(['--version'], dir);
  t.equal(version.status, 0);
  t.match(version.stdout, /^\d+\.\d+\.\d+\n$/, '--version prints the version');
  const check = cli(['rules', 'check', 'rules/a.rules'], dir);
  t.match(check.stdout, /^2 rules in 1 file: OK/, 'plurals as English has them');
});

t.test('rules test --input - reads the messages from standard input', async (t) => {
  const dir = t.testdir({ 'site.rules': GOOD });
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('EDGE_PROXY_')));
  const r = spawnSync(process.execPath, [CLI, 'rules', 'test', 'site.rules', '--input', '-'], {
    cwd: dir,
    env,
    encoding: 'utf8',
    input: jsonl([{ topic: 'devices/d1/telemetry', payload: { temp: 45 } }]) + '\n',
    timeout: 30_000,
  });
  t.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim()) as { topic: string; fired: Array<{ rule: string }> };
  t.equal(out.topic, 'devices/d1/telemetry');
  t.same(
    out.fired.map((f) => f.rule),
    ['overheat'],
  );
});
