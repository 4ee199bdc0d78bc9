// The auth primitives, table-driven: topic filter containment and access, tokens, the registry
// parser with the exact place of every problem, and the live registry following its file.
import t from 'tap';
import { renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { filterContains, TopicAccess } from '../src/auth/acl.js';
import { deviceIdOfToken, hashToken, makeToken, tokenMatchesHash } from '../src/auth/token.js';
import { formatRegistryProblem, parseRegistry } from '../src/auth/registry.js';
import { DeviceRegistry, type RegistryChange } from '../src/auth/device-registry.js';
import { EdgeError } from '../src/core/errors.js';
import { topicMatches } from '../src/core/topic.js';

// ---------------------------------------------------------------------------------------------
// Filters

/** [allowed, asked, contained] */
const CONTAINMENT: [string, string, boolean][] = [
  // a device's own tree
  ['devices/pump-7/#', 'devices/pump-7/#', true],
  ['devices/pump-7/#', 'devices/pump-7', true],
  ['devices/pump-7/#', 'devices/pump-7/telemetry', true],
  ['devices/pump-7/#', 'devices/pump-7/+', true],
  ['devices/pump-7/#', 'devices/pump-7/+/x/#', true],
  ['devices/pump-7/#', 'devices/+/#', false],
  ['devices/pump-7/#', 'devices/+', false],
  ['devices/pump-7/#', 'devices/#', false],
  ['devices/pump-7/#', 'devices/pump-8/#', false],
  ['devices/pump-7/#', 'devices/pump-77', false],
  ['devices/pump-7/#', 'devices', false],
  ['devices/pump-7/#', '#', false],
  ['devices/pump-7/#', '+/pump-7/#', false],
  // `#` everywhere but `$` topics
  ['#', '#', true],
  ['#', 'a/b', true],
  ['#', '+/#', true],
  ['#', '+', true],
  ['#', '$SYS/#', false],
  ['#', '$SYS/broker/load', false],
  ['#', '$SYS', false],
  ['+/#', '$SYS/x', false],
  ['+/+', '$SYS/x', false],
  ['+/#', '+/#', true],
  ['+/#', '#', false],
  // `$SYS` only when a filter names it
  ['$SYS/#', '$SYS/broker/+', true],
  ['$SYS/#', '$SYS', true],
  ['$SYS/#', '#', false],
  ['$SYS/#', '+/broker', false],
  // `+` at every position
  ['+', 'a', true],
  ['+', '+', true],
  ['+', '#', false],
  ['+', 'a/b', false],
  ['+/b/c', 'a/b/c', true],
  ['+/b/c', '+/b/c', true],
  ['+/b/c', '+/+/c', false],
  ['a/+/c', 'a/b/c', true],
  ['a/+/c', 'a/+/c', true],
  ['a/+/c', 'a/#', false],
  ['a/+/c', 'a/+/c/d', false],
  ['a/+/c', 'a/+', false],
  ['a/b/+', 'a/b/c', true],
  ['a/b/+', 'a/b/', true],
  ['a/b/+', 'a/b', false],
  ['a/b/+', 'a/b/#', false],
  ['devices/+/telemetry', 'devices/pump-7/telemetry', true],
  // `#` at every position it may stand
  ['a/#', 'a', true],
  ['a/#', 'a/#', true],
  ['a/b/#', 'a/#', false],
  ['a/+/#', 'a', false],
  ['a/+/#', 'a/b', true],
  ['a/+/#', 'a/+/#', true],
  ['a/+/#', 'a/#', false],
  // exact topics
  ['a/b', 'a/b', true],
  ['a/b', 'a/+', false],
  ['a/b', 'a/b/c', false],
  ['a/b', 'a', false],
  ['a/b', 'a/b/#', false],
  ['/a', '/a', true],
  ['/#', '/a/b', true],
  ['/#', 'a', false],
  // malformed filters contain nothing and are contained by nothing
  ['a/#', 'a/b#', false],
  ['#', '', false],
  ['a/b+', 'a/b+', false],
  ['#/a', 'x', false],
];

t.test('filterContains and TopicAccess.allowsFilter agree on every case', async (t) => {
  for (const [allowed, asked, expected] of CONTAINMENT) {
    t.equal(filterContains(allowed, asked), expected, `filterContains(${allowed}, ${asked})`);
    if (!allowed.includes('b+') && !allowed.startsWith('#/')) {
      t.equal(new TopicAccess([allowed]).allowsFilter(asked), expected, `TopicAccess([${allowed}]).allowsFilter(${asked})`);
    }
  }
});

t.test('a subscription is allowed when any one filter contains it', async (t) => {
  const access = new TopicAccess(['devices/pump-7/#', 'broadcast/#', 'site/+/alarm', 'exact/topic']);
  t.ok(access.allowsFilter('broadcast/fw/+'));
  t.ok(access.allowsFilter('site/hall-2/alarm'));
  t.ok(access.allowsFilter('site/+/alarm'));
  t.ok(access.allowsFilter('exact/topic'));
  t.notOk(access.allowsFilter('devices/+/#'), "another device's tree through a wildcard");
  t.notOk(access.allowsFilter('#'));
  t.notOk(access.allowsFilter('$SYS/#'));
  t.notOk(access.allowsFilter('site/#'));
  t.notOk(access.allowsFilter('exact/+'));
  t.notOk(new TopicAccess([]).allowsFilter('a'), 'no filter, no subscription');
  t.ok(new TopicAccess(['#']).allowsFilter('#'), '# only when # is allowed');
  t.ok(new TopicAccess(['#', '$SYS/#']).allowsFilter('$SYS/broker/uptime'));
});

/** [filters, topic, allowed] */
const PUBLISH: [string[], string, boolean][] = [
  [['devices/pump-7/#'], 'devices/pump-7', true],
  [['devices/pump-7/#'], 'devices/pump-7/telemetry', true],
  [['devices/pump-7/#'], 'devices/pump-7/a/b/c', true],
  [['devices/pump-7/#'], 'devices/pump-77', false],
  [['devices/pump-7/#'], 'devices/pump-7x/telemetry', false],
  [['devices/pump-7/#'], 'devices', false],
  [['devices/pump-7/#'], 'devices/pump-8/telemetry', false],
  [['#'], 'a', true],
  [['#'], '/a', true],
  [['#'], '$SYS/x', false],
  [['#'], '$edge', false],
  [['$SYS/#'], '$SYS/broker', true],
  [['+/x'], '$SYS/x', false],
  [['+/x'], 'a/x', true],
  [['+/x'], '/x', true],
  [['+'], 'a', true],
  [['+'], 'a/b', false],
  [['a/+/c'], 'a/b/c', true],
  [['a/+/c'], 'a//c', true],
  [['a/+/c'], 'a/b/c/d', false],
  [['a/+/c'], 'a/b', false],
  [['a/+/c'], 'a/bb/cc', false],
  [['a/+/#'], 'a', false],
  [['a/+/#'], 'a/b', true],
  [['a/+/#'], 'a/b/c/d', true],
  [['a/b'], 'a/b', true],
  [['a/b'], 'a/b/', false],
  [['a/b'], 'a/bc', false],
  [['a/#'], 'a/+', false],
  [['a/#'], 'a/#', false],
  [['a/+'], 'a/+', false],
  [['x/y', 'devices/+/t', 'z/#'], 'devices/p/t', true],
  [['x/y', 'devices/+/t', 'z/#'], 'z', true],
  [['x/y', 'devices/+/t', 'z/#'], 'x/y', true],
  [['x/y', 'devices/+/t', 'z/#'], 'x', false],
  [[], 'a', false],
];

t.test('TopicAccess.allowsTopic: table', async (t) => {
  for (const [filters, topic, expected] of PUBLISH) {
    t.equal(new TopicAccess(filters).allowsTopic(topic), expected, `${JSON.stringify(filters)} ${topic}`);
  }
});

t.test('TopicAccess.allowsTopic matches the reference matcher on every filter and topic pair', async (t) => {
  const filters = ['#', '+', 'a', 'a/#', 'a/+', 'a/b', 'a/+/c', '+/b/#', 'a/b/#', '$SYS/#', '+/+', '/#', '/+', 'a//c', 'ab/#', '+/#'];
  const topics = ['a', 'ab', 'a/b', 'a/b/c', 'a//c', 'a/', '/a', '/', 'b', 'ab/c', 'a/b/c/d', '$SYS', '$SYS/x', 'x/b/y', 'a/bc'];
  let checked = 0;
  for (const f of filters) {
    const access = new TopicAccess([f]);
    for (const topic of topics) {
      const expected = topicMatches(f, topic);
      if (access.allowsTopic(topic) !== expected) t.fail(`${f} on ${topic}: expected ${expected}`);
      checked++;
    }
  }
  t.equal(checked, filters.length * topics.length);
});

t.test('TopicAccess keeps its filters and refuses a malformed one', async (t) => {
  const access = new TopicAccess(['devices/a/#', 'broadcast/#']);
  t.same(access.filters, ['devices/a/#', 'broadcast/#']);
  t.ok(Object.isFrozen(access.filters));
  t.throws(() => new TopicAccess(['a/#/b']), { code: 'E_ACL' });
  t.throws(() => new TopicAccess(['']), { code: 'E_ACL' });
});

// ---------------------------------------------------------------------------------------------
// Tokens

t.test('tokens: format, hash, constant-time match', async (t) => {
  const token = makeToken('pump-7');
  t.match(token, /^pump-7\.[A-Za-z0-9_-]{43}$/, '<id>.<43 base64url characters>');
  t.equal(Buffer.from(token.slice('pump-7.'.length), 'base64url').length, 32, '32 random bytes');
  t.not(makeToken('pump-7'), token, 'fresh randomness each time');
  t.equal(hashToken('test'), '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08', 'SHA-256, lowercase hex');
  t.match(hashToken(token), /^[0-9a-f]{64}$/);

  const hash = hashToken(token);
  t.ok(tokenMatchesHash(token, hash));
  t.ok(tokenMatchesHash(token, hash.toUpperCase()), 'upper-case hex is the same hash');
  t.notOk(tokenMatchesHash(makeToken('pump-7'), hash), 'another token of the same device');
  const last = token.at(-1) === 'A' ? 'B' : 'A';
  t.notOk(tokenMatchesHash(token.slice(0, -1) + last, hash), 'one character changed');
  t.notOk(tokenMatchesHash(token + 'x', hash), 'one character longer');
  t.notOk(tokenMatchesHash('', hash));
  t.notOk(tokenMatchesHash(token, hash.slice(0, 63)), 'a hash one hex digit short');
  t.notOk(tokenMatchesHash(token, hash + '0'), 'a hash one hex digit long');
  t.notOk(tokenMatchesHash(token, 'g'.repeat(64)), 'not hex');
  t.notOk(tokenMatchesHash(token, ''), 'no hash');
  const loose = tokenMatchesHash as (a: unknown, b: unknown) => boolean;
  t.notOk(loose(undefined, hash), 'no token: false, no throw');
  t.notOk(loose(token, null), 'no hash: false, no throw');
  t.throws(() => makeToken('bad id'), { code: 'E_REGISTRY' });
});

t.test('deviceIdOfToken: the part before the last dot, when it is a valid device id', async (t) => {
  const cases: [string, string | null][] = [
    ['pump-7.abc', 'pump-7'],
    ['site.hall-2.pump-7.c2VjcmV0', 'site.hall-2.pump-7'],
    ['a:b_c.d', 'a:b_c'],
    ['nodot', null],
    ['.secret', null],
    ['', null],
    ['bad id.secret', null],
    ['devices/x.secret', null],
    [`${'a'.repeat(129)}.secret`, null],
  ];
  for (const [token, id] of cases) t.equal(deviceIdOfToken(token), id, JSON.stringify(token));
  for (const id of ['pump-7', 'site.hall-2.pump-7', 'x', 'a.b.c.']) t.equal(deviceIdOfToken(makeToken(id)), id, `round trip of ${id}`);
});

// ---------------------------------------------------------------------------------------------
// The registry file

const H1 = '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08';
const H2 = 'a'.repeat(64);
const H3 = 'b'.repeat(64);

function problemsOf(text: string): string[] {
  return parseRegistry(text, 'devices.yaml').problems.map(formatRegistryProblem);
}

t.test('parseRegistry: a good file, with the defaults filled in', async (t) => {
  const text = [
    '# the pumps of hall 2',
    '- id: pump-7',
    `  tokenSha256: ${H1.toUpperCase()}`,
    '  publish: ["devices/pump-7/#", alarms/pump-7]',
    '  subscribe: [broadcast/#]',
    '  attrs: { location: hall-2, model: P200, floor: 2, spare: false }',
    '- id: "007"',
    `  tokenSha256: ${H2}`,
    '- id: 42',
    `  tokenSha256: ${H3}`,
    '',
  ].join('\n');
  const { devices, problems } = parseRegistry(text, 'devices.yaml');
  t.same(problems, []);
  t.same([...devices.keys()], ['pump-7', '007', '42'], 'file order; plain numbers are read as the text written');
  const pump = devices.get('pump-7')!;
  t.equal(pump.tokenSha256, H1, 'stored lower case');
  t.same(pump.publish.filters, ['devices/pump-7/#', 'alarms/pump-7']);
  t.same(pump.subscribe.filters, ['broadcast/#']);
  t.same({ ...pump.attrs }, { location: 'hall-2', model: 'P200', floor: 2, spare: false });
  t.notOk('toString' in pump.attrs, 'attrs have no inherited members');
  const spare = devices.get('007')!;
  t.same(spare.publish.filters, ['devices/007/#'], 'default publish');
  t.same(spare.subscribe.filters, ['devices/007/#', 'broadcast/#'], 'default subscribe');
  t.same({ ...spare.attrs }, {});
  t.ok(Object.isFrozen(spare));
});

t.test('parseRegistry: an empty registry', async (t) => {
  for (const text of ['', '\n', '# nobody yet\n# add with edge-proxy devices add\n', '[]\n', '---\n']) {
    const { devices, problems } = parseRegistry(text, 'devices.yaml');
    t.same(problems, [], JSON.stringify(text));
    t.equal(devices.size, 0);
  }
});

/** [what, file text, the one problem as file:line:col: key: CODE: message (a regexp for the message)] */
const PROBLEMS: [string, string, string, RegExp][] = [
  ['not a list', 'id: pump-7\n', 'devices.yaml:1:1: (root)', /must be a list of devices/],
  ['an item that is not a mapping', `- id: a\n  tokenSha256: ${H1}\n- pump-8\n`, 'devices.yaml:3:3: [1]', /must be a mapping/],
  [
    'unknown key, close to a known one',
    `- id: a\n  tokenSha256: ${H1}\n  pubish: [a/b]\n`,
    'devices.yaml:3:3: [0].pubish',
    /unknown key `pubish`: did you mean `publish`\?/,
  ],
  [
    'unknown key, close to nothing',
    `- id: a\n  tokenSha256: ${H1}\n  color: red\n`,
    'devices.yaml:3:3: [0].color',
    /unknown key `color`; the keys are id, tokenSha256/,
  ],
  ['no id', `- tokenSha256: ${H1}\n`, 'devices.yaml:1:3: [0]', /no `id`/],
  ['an invalid id', `- id: pump 7\n  tokenSha256: ${H1}\n`, 'devices.yaml:1:7: [0].id', /`pump 7` is not a valid device id/],
  ['an id that is not text', `- id: [a]\n  tokenSha256: ${H1}\n`, 'devices.yaml:1:7: [0].id', /must be a device id, not a list/],
  ['the reserved id', `- id: edge\n  tokenSha256: ${H1}\n`, 'devices.yaml:1:7: [0].id', /`edge` is reserved/],
  [
    'a duplicate id',
    `- id: a\n  tokenSha256: ${H1}\n- id: b\n  tokenSha256: ${H2}\n-   id: a\n    tokenSha256: ${H3}\n`,
    'devices.yaml:5:9: [2].id',
    /`a` is already used by the device on line 1/,
  ],
  ['no tokenSha256', '- id: a\n', 'devices.yaml:1:3: [0]', /no `tokenSha256`/],
  [
    'a short tokenSha256',
    `- id: a\n  tokenSha256: ${H1.slice(1)}\n`,
    'devices.yaml:2:16: [0].tokenSha256',
    /64 hex characters \(got 63 characters\)/,
  ],
  [
    'a tokenSha256 that is not hex',
    `- id: a\n  tokenSha256: ${'z'.repeat(64)}\n`,
    'devices.yaml:2:16: [0].tokenSha256',
    /64 hex characters/,
  ],
  [
    'publish not a list',
    `- id: a\n  tokenSha256: ${H1}\n  publish: devices/a/#\n`,
    'devices.yaml:3:12: [0].publish',
    /must be a list of topic filters/,
  ],
  [
    'publish with no value',
    `- id: a\n  tokenSha256: ${H1}\n  publish:\n`,
    'devices.yaml:3:3: [0].publish',
    /must be a list of topic filters, .* not an empty value/,
  ],
  [
    'an invalid filter',
    `- id: a\n  tokenSha256: ${H1}\n  subscribe: [ok/#, "a/#/b"]\n`,
    'devices.yaml:3:21: [0].subscribe[1]',
    /`a\/#\/b` is not a valid topic filter: `#` may only/,
  ],
  [
    'a filter that is not text',
    `- id: a\n  tokenSha256: ${H1}\n  subscribe:\n    - ok/#\n    - { a: 1 }\n`,
    'devices.yaml:5:7: [0].subscribe[1]',
    /must be a topic filter, not a mapping/,
  ],
  [
    'too many filters',
    `- id: a\n  tokenSha256: ${H1}\n  publish: [${Array.from({ length: 1001 }, (_, i) => `t/${i}`).join(', ')}]\n`,
    'devices.yaml:3:12: [0].publish',
    /1001 filters, more than the 1000 allowed/,
  ],
  [
    'attrs not a mapping',
    `- id: a\n  tokenSha256: ${H1}\n  attrs: [x]\n`,
    'devices.yaml:3:10: [0].attrs',
    /must be a mapping of names to values/,
  ],
  [
    'an attribute name rules cannot read',
    `- id: a\n  tokenSha256: ${H1}\n  attrs: { ok: 1, my-attr: 2 }\n`,
    'devices.yaml:3:19: [0].attrs.my-attr',
    /`my-attr` is not an attribute name/,
  ],
  [
    'an attribute that is a list',
    `- id: a\n  tokenSha256: ${H1}\n  attrs:\n    tags: [a, b]\n`,
    'devices.yaml:4:11: [0].attrs.tags',
    /string, a finite number or a boolean, not a list/,
  ],
  [
    'an attribute with no value',
    `- id: a\n  tokenSha256: ${H1}\n  attrs: { note: }\n`,
    'devices.yaml:3:12: [0].attrs.note',
    /not an empty value/,
  ],
  ['YAML syntax', '- id: a\n  tokenSha256: [\n', 'devices.yaml:3:1: (root)', /.+/],
  ['a key twice', `- id: a\n  id: b\n  tokenSha256: ${H1}\n`, 'devices.yaml:2:3: (root)', /unique/],
];

t.test('parseRegistry: every kind of problem, at its line and column', async (t) => {
  for (const [what, text, where, message] of PROBLEMS) {
    const problems = problemsOf(text);
    t.equal(problems.length, 1, `${what}: one problem (${problems.join(' | ')})`);
    const [first = ''] = problems;
    t.equal(first.slice(0, where.length + 2), `${where}: `, `${what}: place`);
    t.ok(first.includes(': E_REGISTRY: '), `${what}: code`);
    t.match(first.slice(first.indexOf('E_REGISTRY: ') + 12), message, `${what}: message`);
    t.equal(parseRegistry(text, 'devices.yaml').devices.size, 0, `${what}: no device from a file with a problem`);
  }
});

t.test('parseRegistry: several problems at once, in file order', async (t) => {
  const text = [
    '- id: pump-7', // 1
    `  tokenSha256: ${H1}`, // 2
    '  publsh: [devices/pump-7/#]', // 3  unknown key
    '- id: edge', // 4  reserved
    '  tokenSha256: 1234', // 5  short hash
    '- id: pump-7', // 6  duplicate
    `  tokenSha256: ${H2}`, // 7
    '  attrs: { 9lives: true }', // 8  bad attribute name
    '',
  ].join('\n');
  t.same(
    problemsOf(text).map((p) => p.split(': E_REGISTRY')[0]),
    [
      'devices.yaml:3:3: [0].publsh',
      'devices.yaml:4:7: [1].id',
      'devices.yaml:5:16: [1].tokenSha256',
      'devices.yaml:6:7: [2].id',
      'devices.yaml:8:12: [2].attrs.9lives',
    ],
  );
});

t.test('parseRegistry: alias bombs and oversized files are refused', async (t) => {
  const bomb = [
    '- &a [x, x, x, x, x, x, x, x, x, x]',
    '- &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]',
    '- &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]',
    '- [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]',
  ].join('\n');
  t.match(problemsOf(bomb), [/^devices\.yaml:2:7: \(root\): E_REGISTRY: .*alias/i]);
  const few = `- &pump\n  id: a\n  tokenSha256: ${H1}\n  publish: &pub [shared/#]\n- id: b\n  tokenSha256: ${H2}\n  publish: *pub\n`;
  t.same(parseRegistry(few, 'devices.yaml').devices.get('b')?.publish.filters, ['shared/#'], 'a few aliases are fine');
  const huge = '#' + 'x'.repeat(16 * 1024 * 1024) + '\n';
  t.match(problemsOf(huge), [/^devices\.yaml:1:1: \(root\): E_REGISTRY: the file is \d+ bytes, more than/]);
});

// ---------------------------------------------------------------------------------------------
// The live registry

interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

function logger(): { log: pino.Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) });
  return { log, lines };
}

function entry(id: string, hash: string, extra = ''): string {
  return `- id: ${id}\n  tokenSha256: ${hash}\n${extra}`;
}

/** Replaces the file the way editors and the CLI do: a new file renamed over the old one. */
function replaceFile(file: string, text: string): void {
  writeFileSync(`${file}.new`, text);
  renameSync(`${file}.new`, file);
}

/**
 * The next change, with how long it took to come; rejects after `ms`. The wait is generous: how
 * quickly a change must come is asserted on `after`, so that a slow run fails that assertion alone.
 */
function nextChange(registry: DeviceRegistry, ms = 10_000): Promise<{ change: RegistryChange; after: number }> {
  const start = Date.now();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      registry.off('change', onChange);
      reject(new Error(`no change within ${ms} ms`));
    }, ms);
    const onChange = (change: RegistryChange) => {
      clearTimeout(timer);
      resolve({ change, after: Date.now() - start });
    };
    registry.once('change', onChange);
  });
}

/** The next refused edit (`invalid`), with every change emitted before it; rejects after `ms`. */
function nextInvalid(registry: DeviceRegistry, ms = 10_000): Promise<{ changes: RegistryChange[] }> {
  const changes: RegistryChange[] = [];
  const onChange = (change: RegistryChange) => changes.push(change);
  registry.on('change', onChange);
  return new Promise<{ changes: RegistryChange[] }>((resolve, reject) => {
    const timer = setTimeout(() => {
      registry.off('invalid', onInvalid);
      reject(new Error(`no invalid event within ${ms} ms (changes emitted meanwhile: ${JSON.stringify(changes)})`));
    }, ms);
    const onInvalid = () => {
      clearTimeout(timer);
      resolve({ changes });
    };
    registry.once('invalid', onInvalid);
  }).finally(() => registry.off('change', onChange));
}

t.test('DeviceRegistry: an edit is seen within a second, with each device in its category', async (t) => {
  const dir = t.testdir({
    'devices.yaml': [
      entry('gone', H1),
      entry('rotates', H1),
      entry('narrows', H1, '  publish: ["devices/narrows/#"]\n'),
      entry('renamed-attr', H1, '  attrs: { location: hall-1 }\n'),
      entry('same', H1, '  attrs: { location: hall-1 }\n'),
    ].join(''),
  });
  const file = join(dir, 'devices.yaml');
  const { log } = logger();
  const registry = new DeviceRegistry({ file, log, required: true });
  registry.start();
  t.teardown(() => registry.stop());
  t.equal(registry.size, 5);
  t.equal(registry.get('rotates')?.tokenSha256, H1);

  const seen = nextChange(registry);
  replaceFile(
    file,
    [
      '# a comment changes nothing',
      entry('rotates', H2),
      entry('narrows', H1, '  publish: ["devices/narrows/telemetry"]\n'),
      entry('renamed-attr', H1, '  attrs: { location: hall-2 }\n'),
      entry('same', H1, '  attrs: { location: hall-1 }\n'),
      entry('new-one', H3),
    ].join('\n'),
  );
  const { change, after } = await seen;
  t.same(change, {
    added: ['new-one'],
    removed: ['gone'],
    rotated: ['rotates'],
    filtersChanged: ['narrows'],
    attrsChanged: ['renamed-attr'],
  });
  t.ok(after < 1000, `seen after ${after} ms`);
  t.equal(registry.size, 5);
  t.equal(registry.get('gone'), undefined);
  t.equal(registry.get('rotates')?.tokenSha256, H2);
  t.ok(registry.get('narrows')?.publish.allowsTopic('devices/narrows/telemetry'));
  t.notOk(registry.get('narrows')?.publish.allowsTopic('devices/narrows/other'));

  // Written in place rather than replaced: seen as well.
  const again = nextChange(registry);
  writeFileSync(file, entry('rotates', H2) + entry('narrows', H1, '  subscribe: [broadcast/#]\n'));
  t.same((await again).change, {
    added: [],
    removed: ['renamed-attr', 'same', 'new-one'],
    rotated: [],
    filtersChanged: ['narrows'],
    attrsChanged: [],
  });
});

t.test('DeviceRegistry: a malformed file changes nothing and says where the problems are', async (t) => {
  const dir = t.testdir({ 'devices.yaml': entry('a', H1) + entry('b', H2) });
  const file = join(dir, 'devices.yaml');
  const { log, lines } = logger();
  const registry = new DeviceRegistry({ file, log, required: true });
  registry.start();
  t.teardown(() => registry.stop());

  const refused = nextInvalid(registry);
  replaceFile(file, entry('a', H3) + '- id: b\n  tokenSha256: nothex\n');
  t.same((await refused).changes, [], 'the edit was refused (invalid) and no change emitted');
  t.equal(registry.get('a')?.tokenSha256, H1, 'the old entries stay');
  t.equal(registry.size, 2);
  const error = lines.find((l) => l.level === 50);
  t.ok(error, 'logged as an error');
  t.match(error?.msg, /devices\.yaml:4:16: \[1\]\.tokenSha256: E_REGISTRY: .*nothing changed/s);
  t.match(error?.problems, [/devices\.yaml:4:16: \[1\]\.tokenSha256/]);

  const fixed = nextChange(registry);
  replaceFile(file, entry('a', H3) + entry('b', H2));
  t.same((await fixed).change.rotated, ['a'], 'the next good file is taken');
});

t.test('DeviceRegistry: a missing file is an empty registry, and its creation is seen', async (t) => {
  const dir = t.testdir({});
  const file = join(dir, 'devices.yaml');
  const { log, lines } = logger();
  const registry = new DeviceRegistry({ file, log, required: true });
  registry.start();
  t.teardown(() => registry.stop());
  t.equal(registry.size, 0);
  t.ok(
    lines.some((l) => l.level === 40 && l.msg.includes('edge-proxy devices add')),
    'a warning that says how to add a device',
  );

  const created = nextChange(registry);
  replaceFile(file, entry('pump-7', H1));
  t.same((await created).change.added, ['pump-7']);
  t.ok(registry.get('pump-7'));
});

t.test('DeviceRegistry: a file with problems stops the start, listing each', async (t) => {
  const dir = t.testdir({ 'devices.yaml': '- id: edge\n  tokenSha256: x\n' });
  const file = join(dir, 'devices.yaml');
  const registry = new DeviceRegistry({ file, log: logger().log, required: true });
  try {
    registry.start();
    t.fail('started');
  } catch (err) {
    t.ok(err instanceof EdgeError);
    t.equal((err as EdgeError).code, 'E_REGISTRY');
    const lines = (err as Error).message.split('\n');
    t.ok(
      lines.includes(`${file}:1:7: [0].id: E_REGISTRY: \`edge\` is reserved for the proxy's own messages; choose another id`),
      (err as Error).message,
    );
    t.ok(lines.some((l) => l.startsWith(`${file}:2:16: [0].tokenSha256: E_REGISTRY: `)));
  } finally {
    registry.stop();
  }
});
