// `edge-proxy devices`, called in-process on a registry file in a fresh directory.
import t from 'tap';
import { readFileSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { devicesCommand } from '../src/cli/devices.js';
import { parseRegistry } from '../src/auth/registry.js';
import { hashToken, tokenMatchesHash } from '../src/auth/token.js';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function devices(file: string, ...args: string[]): Promise<Run> {
  let stdout = '';
  let stderr = '';
  const code = await devicesCommand(
    args,
    file,
    (s) => (stdout += s),
    (s) => (stderr += s),
  );
  return { code, stdout, stderr };
}

function registryFile(t: Tap, text?: string): string {
  const dir = t.testdir(text === undefined ? {} : { 'devices.yaml': text });
  return join(dir, 'devices.yaml');
}

type Tap = Pick<typeof t, 'testdir'>;

/** The token add or rotate printed: the only line on stdout. */
function tokenOf(run: Run): string {
  const lines = run.stdout.split('\n').filter(Boolean);
  if (lines.length !== 1) throw new Error(`expected one line on stdout, got ${JSON.stringify(run.stdout)}`);
  return lines[0]!;
}

function hashIn(file: string, id: string): string | undefined {
  return parseRegistry(readFileSync(file, 'utf8'), file).devices.get(id)?.tokenSha256;
}

t.test('add prints a token once; only its hash is stored', async (t) => {
  const file = registryFile(t);
  const run = await devices(
    file,
    'add',
    'pump-7',
    '--attr',
    'location=hall-2',
    '--attr',
    'floor=2',
    '--attr',
    'serial=007',
    '--attr',
    'spare=false',
  );
  t.equal(run.code, 0, run.stderr);
  const token = tokenOf(run);
  t.match(token, /^pump-7\.[A-Za-z0-9_-]{43}$/);
  t.match(run.stderr, /shown only once/);
  t.match(run.stderr, /username = pump-7 and password = the token/);
  t.match(run.stderr, /within a second/);
  t.ok(run.stderr.includes(file), 'names the file');
  t.equal(run.stderr.trim().split('\n').length, 1, 'one short line on stderr');

  const text = readFileSync(file, 'utf8');
  t.notOk(text.includes(token.split('.')[1]!), 'the secret is not in the file');
  t.ok(text.includes(hashToken(token)), 'its hash is');
  const stored = hashIn(file, 'pump-7');
  t.ok(stored && tokenMatchesHash(token, stored), 'the printed token matches the stored hash');
  const entry = parseRegistry(text, file).devices.get('pump-7')!;
  t.same(
    { ...entry.attrs },
    { location: 'hall-2', floor: 2, serial: '007', spare: false },
    'numbers and booleans typed; leading zeros stay text',
  );
  t.same(entry.publish.filters, ['devices/pump-7/#'], 'default filters when none given');
  t.notOk(/publish|subscribe/.test(text), 'the defaults are not written out');
  t.equal(statSync(file).mode & 0o777, 0o640, 'a new file is created 0640');
});

t.test('add with filters; add of an existing, invalid or reserved id is refused', async (t) => {
  const file = registryFile(t);
  t.equal(
    (await devices(file, 'add', 'gw-1', '--publish', 'devices/gw-1/#', '--publish', 'site/+/status', '--subscribe', 'broadcast/#')).code,
    0,
  );
  const entry = parseRegistry(readFileSync(file, 'utf8'), file).devices.get('gw-1')!;
  t.same(entry.publish.filters, ['devices/gw-1/#', 'site/+/status']);
  t.same(entry.subscribe.filters, ['broadcast/#']);

  const before = readFileSync(file, 'utf8');
  const twice = await devices(file, 'add', 'gw-1');
  t.equal(twice.code, 1);
  t.equal(twice.stdout, '', 'no token printed');
  t.match(twice.stderr, /E_REGISTRY: device `gw-1` is already in .*devices\.yaml/);
  for (const args of [
    ['add', 'bad id'],
    ['add', 'edge'],
    ['add', 'x', '--publish', 'a/#/b'],
    ['add', 'x', '--subscribe', 'a+'],
    ['add', 'x', '--attr', 'novalue'],
    ['add', 'x', '--attr', '9x=1'],
  ]) {
    const run = await devices(file, ...args);
    t.equal(run.code, 1, `${args.join(' ')}: refused`);
    t.equal(run.stdout, '', `${args.join(' ')}: no token`);
  }
  t.equal(readFileSync(file, 'utf8'), before, 'the file is unchanged');
});

t.test('comments and order survive edits', async (t) => {
  const file = registryFile(
    t,
    [
      '# Devices of hall 2. Edit with edge-proxy devices.',
      '- id: pump-7   # the big one',
      '  tokenSha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  # set by hand',
      '  attrs: { location: hall-2 }',
      '# spares',
      '- id: 007',
      `  tokenSha256: ${'a'.repeat(64)}`,
      '',
    ].join('\n'),
  );
  t.equal((await devices(file, 'add', 'fan-1')).code, 0);
  t.equal((await devices(file, 'rotate', 'pump-7')).code, 0);
  const text = readFileSync(file, 'utf8');
  for (const comment of ['# Devices of hall 2. Edit with edge-proxy devices.', '# the big one', '# set by hand', '# spares']) {
    t.ok(text.includes(comment), `keeps ${comment}`);
  }
  t.same([...parseRegistry(text, file).devices.keys()], ['pump-7', '007', 'fan-1'], 'order kept, the new device last');
  t.match(text, /id: "007"/, 'an id YAML would read as a number is written as text, not as 7');

  t.equal((await devices(file, 'remove', 'pump-7')).code, 0);
  const after = readFileSync(file, 'utf8');
  t.ok(after.includes('# Devices of hall 2.'), 'the header survives the removal of the first device');
  t.ok(after.includes('# spares'));
  t.notOk(after.includes('# the big one'), "the removed device's own line comment goes with it");
});

t.test('list and list --json show ids, filters and attrs, never hashes', async (t) => {
  const file = registryFile(t);
  const empty = await devices(file, 'list');
  t.equal(empty.code, 0);
  t.match(empty.stdout, /no devices in .*devices\.yaml/);
  t.same(JSON.parse((await devices(file, 'list', '--json')).stdout), []);

  await devices(file, 'add', 'pump-7', '--attr', 'location=hall-2');
  await devices(file, 'add', 'gw-1', '--publish', 'site/#');
  const json = await devices(file, 'list', '--json');
  t.equal(json.code, 0);
  t.same(JSON.parse(json.stdout), [
    { id: 'pump-7', publish: ['devices/pump-7/#'], subscribe: ['devices/pump-7/#', 'broadcast/#'], attrs: { location: 'hall-2' } },
    { id: 'gw-1', publish: ['site/#'], subscribe: ['devices/gw-1/#', 'broadcast/#'], attrs: {} },
  ]);
  const text = await devices(file, 'list');
  t.equal(text.code, 0);
  t.match(text.stdout, /^ID +PUBLISH +SUBSCRIBE +ATTRS$/m);
  t.match(text.stdout, /^pump-7 +devices\/pump-7\/# +devices\/pump-7\/#,broadcast\/# +location=hall-2$/m);
  for (const out of [json.stdout, text.stdout]) t.notOk(/[0-9a-f]{64}|tokenSha256/.test(out), 'no hash shown');
});

t.test('rotate changes the hash; the old token no longer matches', async (t) => {
  const file = registryFile(t);
  const old = tokenOf(await devices(file, 'add', 'pump-7'));
  const oldHash = hashIn(file, 'pump-7')!;
  const run = await devices(file, 'rotate', 'pump-7');
  t.equal(run.code, 0, run.stderr);
  const fresh = tokenOf(run);
  t.not(fresh, old);
  t.match(run.stderr, /shown only once/);
  t.match(run.stderr, /old token no longer works/);
  const newHash = hashIn(file, 'pump-7')!;
  t.not(newHash, oldHash);
  t.ok(tokenMatchesHash(fresh, newHash));
  t.notOk(tokenMatchesHash(old, newHash), 'the old token no longer matches');

  const unknown = await devices(file, 'rotate', 'pump_7');
  t.equal(unknown.code, 1);
  t.match(unknown.stderr, /no device `pump_7` in .*devices\.yaml: did you mean `pump-7`\?/);
});

t.test('remove; an unknown id is refused', async (t) => {
  const file = registryFile(t);
  await devices(file, 'add', 'pump-7');
  await devices(file, 'add', 'pump-8');
  const run = await devices(file, 'remove', 'pump-7');
  t.equal(run.code, 0, run.stderr);
  t.match(run.stdout, /pump-7 removed from .*devices\.yaml/);
  t.same([...parseRegistry(readFileSync(file, 'utf8'), file).devices.keys()], ['pump-8']);
  const again = await devices(file, 'remove', 'pump-7');
  t.equal(again.code, 1);
  t.match(again.stderr, /no device `pump-7`/);
});

t.test('an existing file keeps its mode', async (t) => {
  const file = registryFile(t, '# empty for now\n');
  chmodSync(file, 0o600);
  t.equal((await devices(file, 'add', 'pump-7')).code, 0);
  t.equal(statSync(file).mode & 0o777, 0o600);
  t.ok(readFileSync(file, 'utf8').startsWith('# empty for now'));
});

t.test('a file with problems refuses every edit and names file:line:col', async (t) => {
  const text = `- id: pump-7\n  tokenSha256: ${'a'.repeat(64)}\n  publsh: [x]\n- id: pump-8\n`;
  const file = registryFile(t, text);
  for (const args of [['add', 'fan-1'], ['remove', 'pump-7'], ['rotate', 'pump-7'], ['list']]) {
    const run = await devices(file, ...args);
    t.equal(run.code, 1, `${args[0]} refused`);
    t.equal(run.stdout, '');
    t.ok(
      run.stderr.includes(`${file}:3:3: [0].publsh: E_REGISTRY: unknown key \`publsh\`: did you mean \`publish\`?`),
      `${args[0]}: ${run.stderr}`,
    );
    t.ok(run.stderr.includes(`${file}:4:3: [1]: E_REGISTRY: the device has no \`tokenSha256\``));
  }
  t.equal(readFileSync(file, 'utf8'), text, 'unchanged');
});

t.test('usage errors exit 2; help exits 0', async (t) => {
  const file = registryFile(t);
  for (const args of [
    [],
    ['bogus'],
    ['lst'],
    ['add'],
    ['remove'],
    ['rotate'],
    ['add', 'a', 'b'],
    ['add', 'a', '--nope'],
    ['list', '--jsn'],
    ['list', 'x'],
    ['add', 'a', '--publish'],
  ]) {
    const run = await devices(file, ...args);
    t.equal(run.code, 2, `devices ${args.join(' ')}`);
    t.equal(run.stdout, '');
  }
  t.match((await devices(file, 'lst')).stderr, /did you mean `devices list`/);
  for (const args of [['--help'], ['help'], ['add', '--help'], ['list', '-h']]) {
    const run = await devices(file, ...args);
    t.equal(run.code, 0);
    t.match(run.stdout, /edge-proxy devices add <id>/);
  }
  t.throws(() => statSync(file), 'nothing was written');
  writeFileSync(file, '');
  t.equal((await devices(file, 'list')).code, 0, 'an empty file is an empty registry');
});
