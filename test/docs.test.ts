// The documentation's shell examples, run: README.md and docs/*.md against a running proxy and a
// real Mosquitto as the cloud, so that the docs cannot drift from what the proxy does.
//
// The convention. An example that can run on one machine has a marker on the line just before its
// fence (```sh or ```console):
//
//   <!-- doc-test -->                                    run it; it must exit 0
//   <!-- doc-test status=1 expect="^unchanged: " -->     another exit status; a regex (multiline) its output must match
//                                                        (repeatable; in single quotes when it holds a `"`)
//   <!-- doc-test setup=token -->                        the proxy it needs (below)
//   <!-- doc-test background expect="edge/pi-hall-2/up/" -->
//                                                        each command started in the background (a mosquitto_sub, the
//                                                        simulator), as in a terminal of its own, until the session ends
//   <!-- doc-test check=rules-result,shown-output -->    named checks of this file, run after the block
//   <!-- doc-test session=cli -->                        a session of its own (default: the setup's name)
//   <!-- doc-test file=rules/50-site.rules -->           any other block ("Put this in rules/50-site.rules"): written there
//
// Options combine. Examples that need a remote host, a systemd install, apt or a command that never
// ends (`npm start`) stay unmarked. Each block is an assertion `<doc>:<line>`: it must finish with the
// expected status (its first failing command's, as `set -e` would see it, else 0), print no stack
// trace, match every `expect`, and pass its checks. In a transcript (lines with a `$ ` prompt) only
// the prompted commands run; the other lines are what the doc says they print, which `shown-output`
// compares.
//
// The world. The blocks of one document and one session run in order in one bash session (a
// variable such as TOKEN carries from one block to the next), in a scratch directory that holds a
// copy of rules/ and alarms.rules (a copy of rules/10-alarms.rules, the file the examples push). The
// session's proxy runs there as `npm start` would, with EDGE_PROXY_MQTT_PORT=0, EDGE_PROXY_ADMIN_PORT=0,
// EDGE_PROXY_EDGE_ID=pi-hall-2 and EDGE_PROXY_UPLINK_URL at a Mosquitto of its own, so that the CLI
// finds it through ./data/ports.json and ./data/admin-token. The commands do not see those variables.
//   setup=open      (default) open mode; rules.dir ./rules
//   setup=token     token mode: ./edge-proxy.yaml says `auth: { mode: token }` and `devicesFile: ./devices.yaml`, no device yet
//   setup=no-rules  open mode, on an empty rules directory of its own (data/rules), so that pushing ./rules makes a version
//   setup=tls       open mode with the TLS endpoint README.md shows: server.pem (for localhost), server-key.pem and
//                   devices-ca.pem (with devices-ca.key); server-ca.pem signed server.pem
//
// The substitution table: what the examples type, and what runs.
//   sudo, sudo -u USER                          dropped
//   npx edge-proxy, edge-proxy (as a command)   node dist/src/cli.js
//   npm run sim --                              node dist/firmware-sim/cli.js --url mqtt://127.0.0.1:<proxy's MQTT port>
//   mqtt(s)://broker.example.com:PORT           the cloud Mosquitto's URL
//   -h broker.example.com, -h broker            -h 127.0.0.1 -p <cloud port>
//   -h edge.local -p 8883                       -h localhost -p <proxy's TLS port>
//   -p 1883; mosquitto_pub|sub -h 127.0.0.1     -p <proxy's MQTT port>
//   127.0.0.1:9180, localhost:9180              127.0.0.1:<admin port>
//   /var/lib/edge-proxy                         <scratch>/data, the proxy's data directory
// and after `edge-proxy devices add|rotate|remove`, `sleep 1`: a running proxy follows the registry
// "within a second" (docs/devices.md), which a user typing the next command never notices.
import t, { type Test } from 'tap';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { editsRegistry, markedBlocks, substitute, type DocBlock } from './helpers/doc-blocks.js';
import { EDGE_ID, ROOT, startWorld, type DocWorld } from './helpers/doc-world.js';
import type { ShellRun } from './helpers/doc-session.js';
import { sleep } from './helpers/ports.js';

const STACK = /^\s+at .+\(.*:\d+:\d+\)/m;
const ULID = /^[0-9A-HJKMNP-TV-Z]{26}$/;
const UP = `edge/${EDGE_ID}/up/`;

/** The documents whose examples run, README.md first. */
const DOCS = [
  'README.md',
  ...readdirSync(join(ROOT, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .sort()
    .map((f) => `docs/${f}`),
];

interface CheckContext {
  world: DocWorld;
  block: DocBlock;
  /** what the block printed (for a background block, so far) */
  output: string;
  /** how many messages the cloud and the local subscriber had seen when the block started */
  cloudFrom: number;
  localFrom: number;
  /** a command in the block's session, after it */
  sh(command: string): Promise<ShellRun>;
}

type Check = (t: Test, c: CheckContext) => Promise<void>;

/** Polls `f` until it answers something truthy, at most `ms`; undefined past that. */
async function waitFor<T>(
  f: () => T | undefined | null | false | Promise<T | undefined | null | false>,
  ms = 10_000,
): Promise<T | undefined> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) return undefined;
    await sleep(50);
  }
}

function json(payload: Buffer): Record<string, unknown> {
  return JSON.parse(payload.toString()) as Record<string, unknown>;
}

/** The envelope a device's reading reached the cloud in, after the block started. */
async function upFrom(c: CheckContext, device: string, channel = 'telemetry'): Promise<Record<string, unknown> | undefined> {
  const up = await waitFor(() => c.world.cloudSeen.on(`${UP}devices/${device}/${channel}`, c.cloudFrom)[0]);
  return up && json(up.payload);
}

/** The answers on rules/result since the block started, once there are `n`. */
async function rulesResults(c: CheckContext, n: number): Promise<Array<Record<string, unknown>>> {
  const answers = await waitFor(() => {
    const seen = c.world.cloudSeen.on(`edge/${EDGE_ID}/rules/result`, c.cloudFrom);
    return seen.length >= n && seen;
  });
  return (answers ?? []).map((m) => json(m.payload));
}

/**
 * A line a transcript shows, as a pattern of what it prints in the world: ULIDs and device tokens
 * differ every run, `/etc/edge-proxy/` is wherever the file is, `...` stands for the rest of the
 * line, and a table's columns are as wide as their longest value.
 */
function shownPattern(line: string): RegExp {
  const parts = line.trimEnd().split(/(\.\.\.|\/etc\/edge-proxy\/| {2,}|"id":"[0-9A-HJKMNP-TV-Z]{26}"|\b[\w.:-]+\.[A-Za-z0-9_-]{43}\b)/);
  const source = parts
    .map((p, i) => {
      if (i % 2 === 0) return p.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
      if (p === '...') return '.*';
      if (p === '/etc/edge-proxy/') return '\\S*/';
      if (p.startsWith('"id"')) return '"id":"[0-9A-HJKMNP-TV-Z]{26}"';
      if (p.trim() === '') return ' +';
      return '[\\w.:-]+\\.[A-Za-z0-9_-]{43}';
    })
    .join('');
  return new RegExp(`^${source}\\s*$`);
}

const checks: Record<string, Check> = {
  /** Every line a transcript shows is printed, in that order (see shownPattern). */
  async 'shown-output'(t, c) {
    const printed = c.output.split('\n');
    const shown = c.block.shown.filter((l) => l.text.trim() !== '');
    t.ok(shown.length > 0, 'the transcript shows output');
    let at = 0;
    for (const line of shown) {
      const pattern = shownPattern(line.text);
      const found = printed.findIndex((p, i) => i >= at && pattern.test(p));
      t.ok(found >= 0, `${c.block.doc}:${line.line} is printed (in order): ${line.text}`, { pattern: pattern.source, printed: c.output });
      if (found >= 0) at = found + 1;
    }
  },

  /** README: the device's reading reaches the cloud as the envelope the README describes. */
  async 'device-up'(t, c) {
    const env = await upFrom(c, 'pump-7');
    t.ok(env, `pump-7's reading arrived on ${UP}devices/pump-7/telemetry`);
    if (!env) return;
    t.same(Object.keys(env), ['id', 'ts', 'deviceId', 'topic', 'contentType', 'payload', 'edge'], 'the envelope has the documented fields');
    t.match(env, { id: ULID, ts: Number, deviceId: 'pump-7', topic: 'devices/pump-7/telemetry', contentType: 'json', edge: EDGE_ID });
    t.same(env.payload, { temp: 41.5 });
  },

  /** README: a CoAP device's confirmable publish (libcoap) reaches the cloud under its `?d=` id. */
  async 'pump-9-up'(t, c) {
    const env = await upFrom(c, 'pump-9');
    t.match(
      env,
      { deviceId: 'pump-9', topic: 'devices/pump-9/telemetry', contentType: 'json', payload: { temp: 41.5 } },
      "pump-9's reading reached the cloud",
    );
  },

  /** README: `npm run sim -- --devices 5` is five devices whose telemetry goes up. */
  async 'sim-up'(t, c) {
    const devices = await waitFor(() => {
      const ids = new Set(
        c.world.cloudSeen.messages
          .slice(c.cloudFrom)
          .map((m) => /^edge\/pi-hall-2\/up\/devices\/(sim-\d{4})\/telemetry$/.exec(m.topic)?.[1])
          .filter((id) => id !== undefined),
      );
      return ids.size >= 5 && [...ids].sort();
    });
    t.same(devices, ['sim-0001', 'sim-0002', 'sim-0003', 'sim-0004', 'sim-0005'], 'five simulated devices send up');
  },

  /** A device that connected with its token: its reading reached the cloud, under its id. */
  async 'pump-7-up'(t, c) {
    const env = await upFrom(c, 'pump-7');
    t.match(env, { deviceId: 'pump-7', payload: { temp: 41.5 } }, "pump-7's reading reached the cloud");
  },

  /** README: the cloud's down/T reaches local subscribers of T; the cloud keeps a retained `online`. */
  async downlink(t, c) {
    const local = c.world.localSeen;
    t.ok(local, 'a local subscriber watched');
    const down = await waitFor(() => local?.on('devices/pump-7/cmd/fan', c.localFrom).find((m) => m.payload.toString() === '{"on":true}'));
    t.ok(down, 'the message published on edge/pi-hall-2/down/devices/pump-7/cmd/fan reached a local subscriber of devices/pump-7/cmd/fan');
    const client = await mqtt.connectAsync(c.world.cloudUrl, { reconnectPeriod: 0 });
    try {
      const status = new Promise<{ payload: string; retain: boolean }>((resolve) =>
        client.on('message', (_topic, payload, packet) => resolve({ payload: payload.toString(), retain: packet.retain })),
      );
      await client.subscribeAsync(`edge/${EDGE_ID}/status`);
      t.same(
        await Promise.race([status, sleep(5_000).then(() => null)]),
        { payload: 'online', retain: true },
        'a retained online on edge/pi-hall-2/status',
      );
    } finally {
      await client.endAsync(true);
    }
  },

  /** Every push from the cloud in the block was answered 200 on rules/result. */
  async 'rules-result'(t, c) {
    const pushes = c.block.commands.filter((cmd) => /\/rules\/set\b/.test(cmd.text)).length;
    t.ok(pushes > 0, 'the block publishes on rules/set');
    const answers = await rulesResults(c, pushes);
    t.equal(answers.length, pushes, 'each push from the cloud is answered on edge/pi-hall-2/rules/result', { answers });
    for (const a of answers) t.match(a, { status: 200, version: Number }, 'answered 200 with the version');
  },

  /** The pushed alarms.rules is the only rules file that runs (a text push is stored as pushed.rules). */
  async 'alarms-only'(t, c) {
    const running = await c.world.api('/api/v1/rules');
    t.same(running.files, { 'pushed.rules': readFileSync(join(c.world.dir, 'alarms.rules'), 'utf8') }, 'alarms.rules is the running set');
  },

  /** A push of no rule with allowEmpty: the set runs no rule. */
  async 'no-rule-runs'(t, c) {
    const running = await c.world.api('/api/v1/rules');
    t.match(running, { rules: 0, files: {} });
    t.same(Object.keys(running.files as object), [], 'no rules file');
  },

  /** rules.md: a running proxy picks rules/50-site.rules up by itself. */
  async 'site-rules-running'(t, c) {
    const text = readFileSync(join(c.world.dir, 'rules/50-site.rules'), 'utf8');
    const running = await waitFor(async () => {
      const r = await c.world.api('/api/v1/rules');
      return (r.files as Record<string, string>)['50-site.rules'] === text && r;
    });
    t.match(running, { version: 2 }, 'the edit runs as version 2, without a restart');
  },

  /** configuration.md: the documented EDGE_PROXY_ROUTING_PRIORITIES is valid, and its problems are reported as documented. */
  async 'priorities-env'(t, c) {
    const good = await c.sh(`EDGE_PROXY_ROUTING_PRIORITIES="$EDGE_PROXY_ROUTING_PRIORITIES" node ${c.world.cli} check-config`);
    t.equal(good.status, 0, `check-config takes it: ${good.output}`);
    const bad = await c.sh(`EDGE_PROXY_ROUTING_PRIORITIES="\${EDGE_PROXY_ROUTING_PRIORITIES/low/lowest}" node ${c.world.cli} check-config`);
    t.equal(bad.status, 1, 'a wrong priority in it is refused');
    t.match(
      bad.output,
      /^env:EDGE_PROXY_ROUTING_PRIORITIES:1:1: routing\.priorities\[1\]\.priority: E_CONFIG_VALUE/m,
      'with the entry index in the key',
    );
  },

  /** devices.md: after the session, the registry holds pump-7 alone, and its rotated token works. */
  async 'devices-session'(t, c) {
    const list = await c.sh(`node ${c.world.cli} devices list --json`);
    t.equal(list.status, 0);
    t.same(
      JSON.parse(list.output) as unknown,
      [
        {
          id: 'pump-7',
          publish: ['devices/pump-7/#'],
          subscribe: ['devices/pump-7/#', 'broadcast/#'],
          attrs: { location: 'hall-2', model: 'P200' },
        },
      ],
      'list --json: an array of {"id","publish","subscribe","attrs"}',
    );
    t.match(
      await upFrom(c, 'pump-7'),
      { deviceId: 'pump-7', payload: { temp: 41.5 } },
      'the reading sent with the rotated token reached the cloud',
    );
  },

  /** cache.md: `edge-proxy status` prints the lines the doc shows, in that order. */
  async 'status-lines'(t, c) {
    const label = (l: string): string | undefined => /^([a-z]+):/.exec(l)?.[1];
    const shown = c.block.shown.map((l) => l.text);
    const printed = c.output.split('\n');
    t.match(printed[0], new RegExp(`^edge-proxy \\S+ on ${EDGE_ID}, up `), 'the first line names the version and the edge');
    t.match(shown[0], /^edge-proxy \S+ on pi-hall-2, up /, 'as the doc shows it');
    t.same(printed.map(label).filter(Boolean), shown.map(label).filter(Boolean), 'the same lines, in the same order');
  },
};

/** The script a block runs: its commands mapped onto the world, a `sleep 1` after each registry edit. */
function scriptOf(block: DocBlock, world: DocWorld): { script: string; lines: number[] } {
  const out: string[] = [];
  const lines: number[] = [];
  for (const c of block.commands) {
    substitute(c.text, world)
      .split('\n')
      .forEach((l, k) => {
        out.push(l);
        lines.push(c.line + k);
      });
    if (editsRegistry(c.text)) {
      out.push('sleep 1');
      lines.push(c.line);
    }
  }
  return { script: out.join('\n') + '\n', lines };
}

/** Background: each command in a subshell of its own, its output appended to one file, its status in another. */
function backgroundScript(block: DocBlock, world: DocWorld, name: string): { script: string; output: string; statuses: string[] } {
  const output = join(world.harness, `${name}.out`);
  const statuses = block.commands.map((_c, k) => join(world.harness, `${name}.${k}.status`));
  const script = block.commands
    .map((c, k) => `(\n${substitute(c.text, world)}\necho $? > '${statuses[k]}'\n) >> '${output}' 2>&1 < /dev/null &\n`)
    .join('');
  writeFileSync(output, '');
  return { script, output, statuses };
}

function readOr(file: string, otherwise: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return otherwise;
  }
}

async function runChecks(t: Test, block: DocBlock, context: Omit<CheckContext, 'block'>): Promise<void> {
  for (const name of block.marker.checks) {
    const check = checks[name];
    t.ok(check, `check ${name} exists`);
    if (check) await t.test(`check ${name}`, (t) => check(t, { ...context, block }));
  }
}

async function runBlock(t: Test, world: DocWorld, block: DocBlock): Promise<void> {
  const where = `${block.doc}:${block.line}`;
  const { marker } = block;
  const cloudFrom = world.cloudSeen.messages.length;
  const localFrom = world.localSeen?.messages.length ?? 0;
  const sh = (command: string): Promise<ShellRun> => world.shell.run(command + '\n', 20_000);
  if (marker.file !== null) {
    writeFileSync(join(world.dir, marker.file), block.text);
    t.equal(readFileSync(join(world.dir, marker.file), 'utf8'), block.text, `${where}: written to ${marker.file}`);
    await runChecks(t, block, { world, output: '', cloudFrom, localFrom, sh });
    return;
  }
  let output: string;
  if (marker.background) {
    const name = `bg-${block.line}`;
    const bg = backgroundScript(block, world, name);
    const started = await world.shell.run(bg.script, 10_000);
    t.equal(started.status, 0, `${where}: started in the background`, { output: started.output });
    // Give it a second, and up to ten for what it must print.
    await sleep(1_000);
    await waitFor(() => marker.expect.every((re) => re.test(readOr(bg.output, ''))));
    output = readOr(bg.output, '');
    bg.statuses.forEach((file, k) => {
      const status = readOr(file, 'running').trim();
      const cmd = block.commands[k]!;
      t.ok(status === '0' || status === 'running', `${block.doc}:${cmd.line}: exits 0 or keeps running (${status})`, { output });
    });
  } else {
    const { script, lines } = scriptOf(block, world);
    const run = await world.shell.run(script, 30_000);
    output = run.output;
    const failedAt = run.failedLine > 0 ? ` (first failure: ${block.doc}:${lines[run.failedLine - 1] ?? '?'})` : '';
    t.equal(run.status, marker.status, `${where}: exit status ${marker.status}${failedAt}`, { output });
  }
  t.notMatch(output, STACK, `${where}: no stack trace`, { output });
  for (const re of marker.expect) t.match(output, re, `${where}: the output matches ${re}`, { output });
  await runChecks(t, block, { world, output, cloudFrom, localFrom, sh });
}

// A marker that cannot be read fails the convention test below, naming its place.
const problems: string[] = [];
const blocksOf = new Map<string, DocBlock[]>(
  DOCS.map((doc): [string, DocBlock[]] => {
    try {
      return [doc, markedBlocks(ROOT, doc)];
    } catch (err) {
      problems.push((err as Error).message);
      return [doc, []];
    }
  }),
);

t.test('the convention holds: every check is used, every session has one setup', async (t) => {
  const all = [...blocksOf.values()].flat();
  t.same(problems, [], 'every marker can be read, each just before a fence');
  t.ok(all.length > 0, 'there are marked examples');
  const used = new Set(all.flatMap((b) => b.marker.checks));
  t.same(
    Object.keys(checks).filter((name) => !used.has(name)),
    [],
    'every check of this file is used by a marker',
  );
  t.same(
    [...used].filter((name) => !(name in checks)),
    [],
    'every check a marker names exists',
  );
  for (const [doc, blocks] of blocksOf) {
    const setups = new Map<string, Set<string>>();
    for (const b of blocks) setups.set(b.marker.session, (setups.get(b.marker.session) ?? new Set()).add(b.marker.setup));
    for (const [session, s] of setups) t.equal(s.size, 1, `${doc}: session ${session} has one setup (${[...s].join(', ')})`);
  }
});

for (const [doc, blocks] of blocksOf) {
  if (blocks.length === 0) continue;
  t.test(doc, async (t) => {
    const sessions = [...new Set(blocks.map((b) => b.marker.session))];
    for (const session of sessions) {
      const mine = blocks.filter((b) => b.marker.session === session);
      const world = await startWorld(mine[0]!.marker.setup);
      try {
        for (const block of mine) await t.test(`${doc}:${block.line}`, (t) => runBlock(t, world, block));
      } finally {
        await world.close();
      }
    }
  });
}
