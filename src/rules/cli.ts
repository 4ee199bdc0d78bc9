import { readFileSync } from 'node:fs';
import type { Config } from '../config/types.js';
import type { EdgeMessage, Protocol } from '../core/message.js';
import { newMessageId } from '../core/ids.js';
import { PriorityTable } from '../pipeline/priorities.js';
import { msgValue } from '../pipeline/router.js';
import { planActions } from '../pipeline/plan.js';
import { compileRuleset, formatErrors, type CompileResult } from './loader.js';
import { fromJson, type Value } from './values.js';

/** Compiles the given files as one ruleset, with the limits of the configuration. */
export function compileFiles(paths: string[], cfg: Config): CompileResult {
  const files = paths.map((p) => ({ name: p, text: readFileSync(p, 'utf8') }));
  return compileRuleset(files, { maxFileBytes: cfg.rules.maxFileBytes, maxRules: cfg.rules.maxRules }, {
    maxWindowValues: cfg.rules.maxWindowValues, stateTtlSeconds: cfg.rules.stateTtlSeconds, onTruncated: () => {},
  });
}

/** `edge-proxy rules check FILE...`: every error with its code frame; exit 1 with errors, 0 when clean. */
export function rulesCheck(paths: string[], cfg: Config, out: (s: string) => void, err: (s: string) => void): number {
  const result = compileFiles(paths, cfg);
  if (result.errors.length > 0) {
    err(formatErrors(result) + '\n');
    err(`${result.errors.length} error${result.errors.length === 1 ? '' : 's'} in ${paths.length} file${paths.length === 1 ? '' : 's'}\n`);
    return 1;
  }
  out(`${result.rules} rule${result.rules === 1 ? '' : 's'} in ${paths.length} file${paths.length === 1 ? '' : 's'}: OK\n`);
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

function toMessage(line: InputLine, previousTs: number | null, where: string): EdgeMessage {
  if (typeof line.topic !== 'string' || line.topic === '') throw new Error(`${where}: every message needs a "topic"`);
  const ts = typeof line.ts === 'number' ? line.ts : previousTs === null ? 0 : previousTs + 1000;
  const payload = line.payload === undefined ? null : line.payload;
  const text = typeof payload === 'string';
  return {
    id: line.id ?? newMessageId(Date.now()),
    ts,
    deviceId: line.deviceId ?? line.topic.split('/')[1] ?? 'test',
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
 * `edge-proxy rules test FILE... --input messages.jsonl`: runs the rules over recorded messages,
 * sending nothing, and prints for each what fired and what would go up (default routing included).
 */
export function rulesTest(paths: string[], inputPath: string, format: 'json' | 'text', cfg: Config, out: (s: string) => void, err: (s: string) => void): number {
  const result = compileFiles(paths, cfg);
  if (result.errors.length > 0 || !result.ruleset) {
    err(formatErrors(result) + '\n');
    return 1;
  }
  const rules = result.ruleset;
  const priorities = new PriorityTable(cfg.routing.priorities);
  const lines = readFileSync(inputPath, 'utf8').split('\n');
  let previousTs: number | null = null;
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!.trim();
    if (raw === '') continue;
    let msg: EdgeMessage;
    let line: InputLine;
    try {
      line = JSON.parse(raw) as InputLine;
      msg = toMessage(line, previousTs, `${inputPath}:${i + 1}`);
    } catch (e) {
      err(`${inputPath}:${i + 1}: ${(e as Error).message}\n`);
      return 1;
    }
    previousTs = msg.ts;
    // The payload as the rules read it: the JSON value given, a string for text.
    const decoded: Value = fromJson(line.payload ?? null);
    const ev = rules.evaluate(msg, { payload: () => decoded, msgValue: () => msgValue(msg), device: null, edge: { id: cfg.edge.id, uplinkConnected: true } });
    const plan = planActions(msg, ev, cfg.routing.default, (t) => priorities.priorityOf(t));
    const uplink = plan.sends.map((u) => ({ topic: u.topic, priority: u.priority, payload: u.payload === undefined ? decoded : u.payload }));
    // An uplink action lists what it sends: its topic, payload and priority, resolved.
    const resolve = (name: string, args: Record<string, Value>): Record<string, Value> => name !== 'uplink' ? args : {
      topic: typeof args.topic === 'string' ? args.topic : msg.topic,
      priority: typeof args.priority === 'string' ? args.priority : priorities.priorityOf(typeof args.topic === 'string' ? args.topic : msg.topic),
      payload: Object.hasOwn(args, 'payload') ? args.payload! : decoded,
    };
    const record = {
      id: msg.id,
      topic: msg.topic,
      fired: ev.fired.map((f) => ({ rule: f.rule, actions: f.actions.map((a) => ({ action: a.name, ...resolve(a.name, a.args) })) })),
      uplink,
      dropped: ev.dropped,
      ...(ev.errors.length || plan.faults.length ? { errors: [...ev.errors.map((e) => ({ rule: e.rule, error: e.error.message })), ...plan.faults.map((f) => ({ rule: f.rule, error: f.message }))] } : {}),
    };
    if (format === 'json') {
      out(JSON.stringify(record) + '\n');
    } else {
      out(`${msg.topic} (ts ${msg.ts}, ${msg.deviceId})${record.dropped ? ' DROPPED' : ''}\n`);
      for (const f of record.fired) out(`  fired ${f.rule}: ${f.actions.map((a) => `${a.action}(${Object.entries(a).filter(([k]) => k !== 'action').map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(', ')})`).join(' ')}\n`);
      for (const u of uplink) out(`  up    ${u.topic} [${u.priority}] ${JSON.stringify(u.payload)}\n`);
      if (record.fired.length === 0 && uplink.length === 0) out('  nothing fired, nothing goes up\n');
    }
  }
  return 0;
}
