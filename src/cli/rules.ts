// `edge-proxy rules`: check and test rules files here; push, add, remove and rollback are in rules-remote.ts.

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { parse as parseYaml } from 'yaml';
import type { Config } from '../config/types.js';
import { EDGE_DEVICE_ID, type EdgeMessage, type Protocol } from '../core/message.js';
import { checkDeviceTopic, deviceIdOfTopic } from '../core/topic.js';
import { newMessageId } from '../core/ids.js';
import { PriorityTable } from '../pipeline/priorities.js';
import { encodePayload, planActions } from '../pipeline/plan.js';
import type { InferenceResult } from '../inference/runner.js';
import { compileRuleset, formatErrors, type CompileResult, type RuleFile } from '../rules/loader.js';
import { decodePayload } from '../rules/payload.js';
import { formatRegistryProblem, parseRegistry } from '../auth/registry.js';
import { deviceValueOf } from '../auth/service.js';
import { msgValue } from '../rules/msg.js';
import { fromJson, type Value } from '../rules/values.js';
import { rulesChange, rulesPush, rulesRollback } from './rules-remote.js';
import type { AdminTarget } from './admin-client.js';
import { fail, loadedOrDefaults, plural, readUserFile, targetOf } from './terminal.js';
import { formatWarning, inferSites, isDirectory, missingModel, readModelsDir, TestInference } from './rules-models.js';

export const RULES_HELP = `edge-proxy rules check FILE... [--models DIR] [--config FILE]
  Compiles the files as one ruleset and prints every error as file:line:col: CODE: message with the
  line and a caret. Exit 0 when clean, 1 with errors.
  An infer("NAME") whose model is not in the models directory (--models DIR, else the configuration's
  models.dir, default ./models) is a warning, file:line:col: warning: ..., naming the models there,
  unless its rule is disabled; warnings do not change the exit status. A model is there when
  NAME.onnx and a NAME.yaml without problems are; the ONNX file itself is not opened (the proxy's
  log and rules test --models say whether it loads).

edge-proxy rules test FILE... --input MESSAGES.jsonl [--format json|text] [--models DIR] [--config FILE]
  Runs the rules over recorded messages (one JSON object a line: topic, payload as JSON, and any
  other EdgeMessage field; ts defaults to the previous line's + 1000, deviceId to the <id> of a
  devices/<id>/... topic, else "test") without sending anything, and prints per message what fired
  and what would go up. --input - reads the messages from standard input.
  In token mode the rules read device.<attr> from the registry (devicesFile), as the running proxy does.
  Without models, infer() is only listed among the actions that fired. With --models DIR (or a
  configuration that sets models.dir) the models of DIR really run: each result is printed after
  its message as the derived message the proxy makes (ml/<model>/<deviceId>, or infer's to, with
  parentId, hops and the result as payload: label, score, scores) and evaluated by the rules in
  turn, within limits.maxHops. A model that does not load, or a run that fails, is said on standard
  error; an infer() that cannot be queued (no such model, an input the model refuses) is one of its
  message's errors.

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
      models: { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) return void process.stdout.write(RULES_HELP);
  if (positionals.length === 0) fail(`rules ${sub} needs at least one FILE (E_USAGE)`);
  const loaded = loadedOrDefaults(values.config);
  const cfg = loaded.config;
  // A directory the user names must be one; the configuration's may be missing, as the proxy allows.
  if (values.models !== undefined && !isDirectory(values.models))
    fail(`--models ${values.models}: no such directory; name the directory that holds the <name>.onnx and <name>.yaml pairs (E_USAGE)`);
  if (sub === 'check') process.exit(rulesCheck(positionals, cfg, values.models ?? cfg.models.dir, out, err));
  if (!values.input) fail('rules test needs --input MESSAGES.jsonl (E_USAGE)');
  if (values.format !== 'json' && values.format !== 'text') fail('--format is json or text (E_USAGE)');
  const modelsDir = values.models ?? (setsModelsDir(loaded.file) ? cfg.models.dir : null);
  process.exit(await rulesTest(positionals, values.input, values.format, cfg, modelsDir, out, err));
}

/**
 * Whether the configuration names a models directory itself (its file, or EDGE_PROXY_MODELS_DIR),
 * rather than leaving the default: only then does `rules test` run models without --models.
 */
function setsModelsDir(file: string | null): boolean {
  if (process.env.EDGE_PROXY_MODELS_DIR !== undefined) return true;
  if (file === null) return false;
  try {
    const doc: unknown = parseYaml(readFileSync(file, 'utf8'));
    const models = (doc as { models?: unknown } | null)?.models;
    return typeof models === 'object' && models !== null && Object.hasOwn(models, 'dir');
  } catch {
    return false;
  }
}

function readFiles(paths: string[]): RuleFile[] {
  return paths.map((p) => ({ name: p, text: readUserFile(p, 'the rules file', 'rules') }));
}

/** Compiles the given files as one ruleset, with the limits of the configuration. */
function compileFiles(files: RuleFile[], cfg: Config): CompileResult {
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

/**
 * `edge-proxy rules check FILE...`: every error with its code frame; exit 1 with errors, 0 when clean.
 * An infer() of a model the models directory does not have is a warning: the set is valid, and the
 * model may be copied there later, but the proxy would fail that infer() until it is.
 */
function rulesCheck(paths: string[], cfg: Config, modelsDir: string, out: (s: string) => void, err: (s: string) => void): number {
  const files = readFiles(paths);
  const result = compileFiles(files, cfg);
  const sites = inferSites(files, cfg.rules.maxFileBytes);
  const models = sites.length > 0 ? readModelsDir(modelsDir) : null;
  const warnings = models
    ? sites.flatMap((site) => {
        const why = missingModel(site, models);
        return why === null ? [] : [{ site, why }];
      })
    : [];
  const warned = plural(warnings.length, 'warning');
  // Errors and warnings in the order of the files and their lines, as the proxy's log would list them.
  const lines = [
    ...result.errors.map((e) => ({ file: e.file, line: e.line, col: e.col, text: formatErrors({ errors: [e], sources: result.sources }) })),
    ...warnings.map((w) => ({ ...w.site, text: formatWarning(w.site, w.why, result.sources) })),
  ].sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : a.line - b.line || a.col - b.col));
  if (lines.length > 0) err(lines.map((l) => l.text).join('\n') + '\n');
  if (result.errors.length > 0) {
    err(`${plural(result.errors.length, 'error')}${warnings.length > 0 ? ` and ${warned}` : ''} in ${plural(paths.length, 'file')}\n`);
    return 1;
  }
  out(`${plural(result.rules, 'rule')} in ${plural(paths.length, 'file')}: OK${warnings.length > 0 ? `, ${warned}` : ''}\n`);
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

/** How a message `rules test` prints came to be, when a model's result made it. */
interface Origin {
  parentId: string;
  hops: number;
  rule: string;
  payload: Value;
}

/**
 * `edge-proxy rules test FILE... --input messages.jsonl`: runs the rules over recorded messages,
 * sending nothing, and prints for each what fired and what would go up (default routing included).
 * With a models directory, the models run and each result is printed, and evaluated, as the message
 * the proxy derives from it, right after the message it came from.
 */
async function rulesTest(
  paths: string[],
  inputPath: string,
  format: 'json' | 'text',
  cfg: Config,
  modelsDir: string | null,
  out: (s: string) => void,
  err: (s: string) => void,
): Promise<number> {
  const result = compileFiles(readFiles(paths), cfg);
  if (result.errors.length > 0 || !result.ruleset) {
    err(formatErrors(result) + '\n');
    return 1;
  }
  const rules = result.ruleset;
  const priorities = new PriorityTable(cfg.routing.priorities);
  const attrs = deviceAttrs(cfg, err);
  if (!attrs) return 1;
  const lines = readUserFile(inputPath, 'the input', 'messages').split('\n');

  /** Evaluates one message as the router does and prints what happens to it. */
  const handle = (msg: EdgeMessage, decoded: Value, origin: Origin | null): void => {
    const ev = rules.evaluate(msg, {
      payload: () => decoded,
      msgValue: () => msgValue(msg),
      device: attrs(msg.deviceId),
      edge: { id: cfg.edge.id, uplinkConnected: true },
    });
    const plan = planActions(msg, ev, cfg.routing.default, (t) => priorities.priorityOf(t));
    // Submitted before the line is printed: a refusal is one of this message's errors. A result
    // never comes back synchronously, so it is always printed after this message.
    const refusals: Array<{ rule: string; error: string }> = [];
    if (inference) {
      for (const i of plan.infers) {
        const refused = inference.submit({ rule: i.rule, model: i.model, to: i.to, parent: msg, payload: () => decoded });
        if (refused) refusals.push({ rule: i.rule, error: `infer("${i.model}"): ${refused}` });
      }
    }
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
    const errors = [
      ...ev.errors.map((e) => ({ rule: e.rule, error: e.error.message })),
      ...plan.faults.map((f) => ({ rule: f.rule, error: f.message })),
      ...refusals,
    ];
    const record = {
      id: msg.id,
      topic: msg.topic,
      ...(origin ? { parentId: origin.parentId, hops: origin.hops, payload: origin.payload } : {}),
      fired: ev.fired.map((f) => ({ rule: f.rule, actions: f.actions.map((a) => ({ action: a.name, ...resolve(a.name, a.args) })) })),
      uplink,
      dropped: ev.dropped,
      ...(errors.length > 0 ? { errors } : {}),
    };
    if (format === 'json') {
      out(JSON.stringify(record) + '\n');
      return;
    }
    out(
      origin
        ? `${msg.topic} (ts ${msg.ts}, ${msg.deviceId}) made by rule ${origin.rule} from ${origin.parentId}, hops ${origin.hops}${record.dropped ? ' DROPPED' : ''}\n  payload ${JSON.stringify(origin.payload)}\n`
        : `${msg.topic} (ts ${msg.ts}, ${msg.deviceId})${record.dropped ? ' DROPPED' : ''}\n`,
    );
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
    for (const e of refusals) out(`  error ${e.rule}: ${e.error}\n`);
    if (record.fired.length === 0 && uplink.length === 0) out('  nothing fired, nothing goes up\n');
  };

  /** A model's result, made into the message the proxy derives from it (router.ts), and handled. */
  const derived = (r: InferenceResult): void => {
    const parent = r.parent;
    const hops = parent.hops + 1;
    const origin: Origin = { parentId: parent.id, hops, rule: r.rule, payload: r.payload };
    const notMade = (why: string): void =>
      format === 'json'
        ? out(JSON.stringify({ topic: r.topic, parentId: parent.id, hops, payload: r.payload, notMade: why }) + '\n')
        : out(`${r.topic} from ${parent.id}, hops ${hops}: NOT MADE: ${why}\n  payload ${JSON.stringify(r.payload)}\n`);
    if (hops > cfg.limits.maxHops)
      return notMade(`hops ${hops} is over limits.maxHops (${cfg.limits.maxHops}): the proxy drops the result`);
    const problem = checkDeviceTopic(r.topic, cfg.limits.maxTopicBytes);
    if (problem) return notMade(`rule "${r.rule}": cannot make a message on topic "${r.topic.slice(0, 300)}": ${problem}`);
    const encoded = encodePayload(r.payload);
    const msg: EdgeMessage = {
      id: newMessageId(Date.now()),
      // The recorded clock, not the wall clock: windows and throttles see the input's time.
      ts: parent.ts,
      deviceId: parent.deviceId,
      protocol: 'internal',
      topic: r.topic,
      payload: encoded.bytes,
      contentType: encoded.contentType,
      qos: 0,
      retain: false,
      props: {},
      hops,
      parentId: parent.id,
    };
    const decoded = decodePayload(msg.contentType, encoded.bytes);
    handle(msg, decoded.ok ? decoded.value : null, origin);
  };

  let inference: TestInference | null = null;
  if (modelsDir !== null) {
    if (!isDirectory(modelsDir)) err(`no models directory ${modelsDir}: every infer() fails, as in a proxy on this configuration\n`);
    inference = await TestInference.start(modelsDir, cfg, derived, err);
  }
  try {
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
      handle(msg, fromJson(line.payload ?? null), null);
      // The results of this message (and of its results) before the next message, as in a quiet proxy.
      if (inference) await inference.settle();
    }
  } finally {
    await inference?.stop();
  }
  return 0;
}
