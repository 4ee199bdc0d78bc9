// `edge-proxy rules`: check and test rules files here; push, add, remove and rollback are in rules-remote.ts.

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import type { Config } from '../config/types.js';
import { EDGE_DEVICE_ID, type EdgeMessage, type Protocol } from '../core/message.js';
import { deviceIdOfTopic } from '../core/topic.js';
import { newMessageId } from '../core/ids.js';
import { PriorityTable } from '../pipeline/priorities.js';
import { planActions } from '../pipeline/plan.js';
import { compileRuleset, formatErrors, type CompileResult } from '../rules/loader.js';
import { formatRegistryProblem, parseRegistry } from '../auth/registry.js';
import { deviceValueOf } from '../auth/service.js';
import { msgValue } from '../rules/msg.js';
import { fromJson, type Value } from '../rules/values.js';
import { rulesChange, rulesPush, rulesRollback } from './rules-remote.js';
import type { AdminTarget } from './admin-client.js';
import { configOrDefaults, fail, plural, readUserFile, targetOf } from './terminal.js';

export const RULES_HELP = `edge-proxy rules check FILE... [--config FILE]
  Compiles the files as one ruleset and prints every error as file:line:col: CODE: message with the
  line and a caret. Exit 0 when clean, 1 with errors.

edge-proxy rules test FILE... --input MESSAGES.jsonl [--format json|text] [--config FILE]
  Runs the rules over recorded messages (one JSON object a line: topic, payload as JSON, and any
  other EdgeMessage field; ts defaults to the previous line's + 1000, deviceId to the <id> of a
  devices/<id>/... topic, else "test") without sending anything, and prints per message what fired
  and what would go up. --input - reads the messages from standard input.
  In token mode the rules read device.<attr> from the registry (devicesFile), as the running proxy does.

edge-proxy rules push FILE... [--allow-empty] [--dry-run] [--admin URL] [--token T] [--config FILE]
  Replaces every rules file of a running proxy with FILEs (stored under their base names) and runs
  them as a new version, or changes nothing and prints every error as rules check does. Says which
  files of the previous set it replaced. FILEs that define no rule are refused (E_RULES_EMPTY): they
  would remove every rule. --allow-empty pushes them anyway; with no FILE it removes every rule.
  --dry-run: the proxy checks the files and says what the push would do, changing nothing.
  Without --admin: the proxy running on the configuration's data directory, at the admin port in
  <dataDir>/ports.json (none running there exits 2); without --token, the token in
  <dataDir>/admin-token (or admin.token, admin.tokenFile). --admin is an http:// or https:// URL.
  Exit 0 when the files run, 1 with errors or a refused token, 2 when no proxy runs on the data
  directory or it cannot be reached, and on a usage error (a FILE that cannot be read).

edge-proxy rules add FILE... [--allow-empty] [--dry-run] [--admin URL] [--token T] [--config FILE]
  Adds FILEs to the rules of a running proxy (stored under their base names), each replacing the
  running file of its name if there is one; the other files keep running. The whole set that
  results is checked and runs as a new version, or nothing changes and every error is printed.
  Says which files it added and replaced; --dry-run says it without changing anything. Exit
  statuses as for rules push.

edge-proxy rules remove NAME... [--allow-empty] [--dry-run] [--admin URL] [--token T] [--config FILE]
  Removes the running rules files NAMEd (base names, such as alarms.rules); the other files keep
  running, as a new version. A NAME that does not run changes nothing (exit 1, E_RULES_NO_FILE).
  Removing the last rules refuses (E_RULES_EMPTY) unless --allow-empty. --dry-run as for add.
  Exit statuses as for push.

edge-proxy rules rollback [--admin URL] [--token T] [--config FILE]
  Runs the rules of the version before the running one again, as a new version (two rollbacks in a
  row come back to where they started). Exit 0, 1 when there is no earlier version, 2 unreachable.
`;

export async function rules(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  if (sub !== 'check' && sub !== 'test' && sub !== 'push' && sub !== 'add' && sub !== 'remove' && sub !== 'rollback') {
    if (sub === '--help' || sub === undefined) return void process.stdout.write(RULES_HELP);
    fail(`unknown rules command "${sub}": rules check, test, push, add, remove or rollback (E_USAGE)\n\n${RULES_HELP}`);
  }
  const out = (s: string): void => void process.stdout.write(s);
  const err = (s: string): void => void process.stderr.write(s);
  if (sub === 'push' || sub === 'add' || sub === 'remove' || sub === 'rollback') {
    const { values, positionals } = parseArgs({
      args: rest,
      allowPositionals: sub !== 'rollback',
      strict: true,
      options: {
        config: { type: 'string' },
        admin: { type: 'string' },
        token: { type: 'string' },
        help: { type: 'boolean' },
        'allow-empty': { type: 'boolean' },
        'dry-run': { type: 'boolean' },
      },
    });
    if (values.help) return void process.stdout.write(RULES_HELP);
    const allowEmpty = values['allow-empty'] === true;
    const dryRun = values['dry-run'] === true;
    if (sub === 'rollback' && (allowEmpty || dryRun))
      fail(`--${allowEmpty ? 'allow-empty' : 'dry-run'} is an option of rules push, add and remove (E_USAGE)`);
    if (sub === 'push' && positionals.length === 0 && !allowEmpty)
      fail('rules push needs at least one FILE (E_USAGE); to remove every rule on purpose: rules push --allow-empty');
    if ((sub === 'add' || sub === 'remove') && positionals.length === 0)
      fail(`rules ${sub} needs at least one ${sub === 'add' ? 'FILE' : 'NAME'} (E_USAGE)`);
    // Found once the files are read: a file that cannot be read is said first, whatever runs.
    const target = (): AdminTarget => targetOf(values);
    process.exit(
      sub === 'push'
        ? await rulesPush(positionals, target, out, err, { allowEmpty, dryRun })
        : sub === 'rollback'
          ? await rulesRollback(target, out, err)
          : await rulesChange(sub, positionals, target, out, err, { allowEmpty, dryRun }),
    );
  }
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    strict: true,
    options: {
      config: { type: 'string' },
      input: { type: 'string' },
      format: { type: 'string', default: 'json' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) return void process.stdout.write(RULES_HELP);
  if (positionals.length === 0) fail(`rules ${sub} needs at least one FILE (E_USAGE)`);
  const cfg = configOrDefaults(values.config);
  if (sub === 'check') process.exit(rulesCheck(positionals, cfg, out, err));
  if (!values.input) fail('rules test needs --input MESSAGES.jsonl (E_USAGE)');
  if (values.format !== 'json' && values.format !== 'text') fail('--format is json or text (E_USAGE)');
  process.exit(rulesTest(positionals, values.input, values.format, cfg, out, err));
}

/** Compiles the given files as one ruleset, with the limits of the configuration. */
function compileFiles(paths: string[], cfg: Config): CompileResult {
  const files = paths.map((p) => ({ name: p, text: readUserFile(p, 'the rules file', 'rules') }));
  return compileRuleset(
    files,
    { maxFileBytes: cfg.rules.maxFileBytes, maxRules: cfg.rules.maxRules },
    {
      maxWindowValues: cfg.rules.maxWindowValues,
      stateTtlSeconds: cfg.rules.stateTtlSeconds,
      onTruncated: () => {},
    },
  );
}

/** `edge-proxy rules check FILE...`: every error with its code frame; exit 1 with errors, 0 when clean. */
function rulesCheck(paths: string[], cfg: Config, out: (s: string) => void, err: (s: string) => void): number {
  const result = compileFiles(paths, cfg);
  if (result.errors.length > 0) {
    err(formatErrors(result) + '\n');
    err(`${plural(result.errors.length, 'error')} in ${plural(paths.length, 'file')}\n`);
    return 1;
  }
  out(`${plural(result.rules, 'rule')} in ${plural(paths.length, 'file')}: OK\n`);
  return 0;
}

interface InputLine {
  id?: string;
  ts?: number;
  deviceId?: string;
  protocol?: Protocol;
  topic?: string;
  payload?: unknown;
  qos?: 0 | 1 | 2;
  retain?: boolean;
  props?: Record<string, string>;
  hops?: number;
  parentId?: string;
}

function toMessage(line: InputLine, previousTs: number | null): EdgeMessage {
  if (typeof line !== 'object' || line === null || Array.isArray(line))
    throw new Error('every line must be a JSON object, such as {"topic": "devices/d1/telemetry", "payload": {"temp": 21}}');
  if (typeof line.topic !== 'string' || line.topic === '') throw new Error('every message needs a "topic"');
  const ts = typeof line.ts === 'number' ? line.ts : previousTs === null ? 0 : previousTs + 1000;
  const payload = line.payload === undefined ? null : line.payload;
  const text = typeof payload === 'string';
  return {
    id: line.id ?? newMessageId(Date.now()),
    ts,
    // As the proxy does: the cloud's messages are the edge's own; a sender that names no device is
    // the one its devices/<id>/... topic names (core/topic.ts).
    deviceId: line.deviceId ?? (line.protocol === 'cloud' ? EDGE_DEVICE_ID : (deviceIdOfTopic(line.topic) ?? 'test')),
    protocol: line.protocol ?? 'mqtt',
    topic: line.topic,
    payload: Buffer.from(text ? payload : JSON.stringify(payload)),
    contentType: text ? 'text' : 'json',
    qos: line.qos ?? 0,
    retain: line.retain ?? false,
    props: line.props ?? {},
    hops: line.hops ?? 0,
    ...(line.parentId ? { parentId: line.parentId } : {}),
  };
}

/**
 * What rules read as `device`, as the running proxy gives it: the registry's attrs in token mode,
 * nothing in open mode. Null (after printing why) when the registry cannot be read.
 */
function deviceAttrs(cfg: Config, err: (s: string) => void): ((deviceId: string) => Value) | null {
  if (cfg.auth.mode !== 'token') return () => null;
  let text: string;
  try {
    text = readFileSync(cfg.devicesFile, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return () => null; // no device registered yet
    err(`cannot read the device registry ${cfg.devicesFile}: ${(e as Error).message}\n`);
    return null;
  }
  const { devices, problems } = parseRegistry(text, cfg.devicesFile);
  if (problems.length > 0) {
    err(problems.map(formatRegistryProblem).join('\n') + '\n');
    return null;
  }
  return (deviceId) => {
    const entry = devices.get(deviceId);
    return entry ? deviceValueOf(entry) : null;
  };
}

/**
 * `edge-proxy rules test FILE... --input messages.jsonl`: runs the rules over recorded messages,
 * sending nothing, and prints for each what fired and what would go up (default routing included).
 */
function rulesTest(
  paths: string[],
  inputPath: string,
  format: 'json' | 'text',
  cfg: Config,
  out: (s: string) => void,
  err: (s: string) => void,
): number {
  const result = compileFiles(paths, cfg);
  if (result.errors.length > 0 || !result.ruleset) {
    err(formatErrors(result) + '\n');
    return 1;
  }
  const rules = result.ruleset;
  const priorities = new PriorityTable(cfg.routing.priorities);
  const attrs = deviceAttrs(cfg, err);
  if (!attrs) return 1;
  const lines = readUserFile(inputPath, 'the input', 'messages').split('\n');
  let previousTs: number | null = null;
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!.trim();
    if (raw === '') continue;
    let msg: EdgeMessage;
    let line: InputLine;
    try {
      line = JSON.parse(raw) as InputLine;
      msg = toMessage(line, previousTs);
    } catch (e) {
      err(`${inputPath}:${i + 1}: ${(e as Error).message}\n`);
      return 1;
    }
    previousTs = msg.ts;
    // The payload as the rules read it: the JSON value given, a string for text.
    const decoded: Value = fromJson(line.payload ?? null);
    const ev = rules.evaluate(msg, {
      payload: () => decoded,
      msgValue: () => msgValue(msg),
      device: attrs(msg.deviceId),
      edge: { id: cfg.edge.id, uplinkConnected: true },
    });
    const plan = planActions(msg, ev, cfg.routing.default, (t) => priorities.priorityOf(t));
    const uplink = plan.sends.map((u) => ({
      topic: u.topic,
      priority: u.priority,
      payload: u.payload === undefined ? decoded : u.payload,
    }));
    // An uplink action lists what it sends: its topic, payload and priority, resolved.
    const resolve = (name: string, args: Record<string, Value>): Record<string, Value> =>
      name !== 'uplink'
        ? args
        : {
            topic: typeof args.topic === 'string' ? args.topic : msg.topic,
            priority:
              typeof args.priority === 'string'
                ? args.priority
                : priorities.priorityOf(typeof args.topic === 'string' ? args.topic : msg.topic),
            payload: Object.hasOwn(args, 'payload') ? args.payload! : decoded,
          };
    const record = {
      id: msg.id,
      topic: msg.topic,
      fired: ev.fired.map((f) => ({ rule: f.rule, actions: f.actions.map((a) => ({ action: a.name, ...resolve(a.name, a.args) })) })),
      uplink,
      dropped: ev.dropped,
      ...(ev.errors.length || plan.faults.length
        ? {
            errors: [
              ...ev.errors.map((e) => ({ rule: e.rule, error: e.error.message })),
              ...plan.faults.map((f) => ({ rule: f.rule, error: f.message })),
            ],
          }
        : {}),
    };
    if (format === 'json') {
      out(JSON.stringify(record) + '\n');
    } else {
      out(`${msg.topic} (ts ${msg.ts}, ${msg.deviceId})${record.dropped ? ' DROPPED' : ''}\n`);
      for (const f of record.fired)
        out(
          `  fired ${f.rule}: ${f.actions
            .map(
              (a) =>
                `${a.action}(${Object.entries(a)
                  .filter(([k]) => k !== 'action')
                  .map(([k, v]) => `${k}=${JSON.stringify(v)}`)
                  .join(', ')})`,
            )
            .join(' ')}\n`,
        );
      for (const u of uplink) out(`  up    ${u.topic} [${u.priority}] ${JSON.stringify(u.payload)}\n`);
      if (record.fired.length === 0 && uplink.length === 0) out('  nothing fired, nothing goes up\n');
    }
  }
  return 0;
}
