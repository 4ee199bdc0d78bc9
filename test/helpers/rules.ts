// A harness for the rule language: compile rule texts as one ruleset, send messages through it
// one after the other (msg.ts is the clock of time windows and throttles), and see what the rules
// decided (the Evaluation) and what the proxy would do with it (planActions), as the router does.
import { compileRuleset, formatErrors, type CompileResult, type RuleFile } from '../../src/rules/loader.js';
import type { Evaluation, RuleSet } from '../../src/rules/engine.js';
import type { RuleError } from '../../src/rules/dsl/errors.js';
import { planActions, type Plan } from '../../src/pipeline/plan.js';
import { PriorityTable, type PriorityRule } from '../../src/pipeline/priorities.js';
import { msgValue } from '../../src/rules/msg.js';
import { fromJson, type Value } from '../../src/rules/values.js';
import type { ContentType, EdgeMessage, Protocol, QoS } from '../../src/core/message.js';
import type { Priority } from '../../src/core/priority.js';

export interface HarnessOptions {
  maxFileBytes?: number;
  maxRules?: number;
  maxWindowValues?: number;
  stateTtlSeconds?: number;
  routingDefault?: 'uplink' | 'local';
  priorities?: PriorityRule[];
}

/** One text (stored as `test.rules`), texts by file name, or files. */
export type Sources = string | Record<string, string> | RuleFile[];

export const DEFAULTS = { maxFileBytes: 1024 * 1024, maxRules: 10_000, maxWindowValues: 10_000, stateTtlSeconds: 3600 } as const;

function toFiles(sources: Sources): RuleFile[] {
  if (typeof sources === 'string') return [{ name: 'test.rules', text: sources }];
  if (Array.isArray(sources)) return sources;
  return Object.entries(sources).map(([name, text]) => ({ name, text }));
}

export interface Compiled extends CompileResult {
  /** the rule names onTruncated was called with, in order */
  truncated: string[];
}

/** Compiles a ruleset; never throws on rule errors (they are in `errors`). */
export function compileRules(sources: Sources, opts: HarnessOptions = {}): Compiled {
  const truncated: string[] = [];
  const result = compileRuleset(
    toFiles(sources),
    { maxFileBytes: opts.maxFileBytes ?? DEFAULTS.maxFileBytes, maxRules: opts.maxRules ?? DEFAULTS.maxRules },
    {
      maxWindowValues: opts.maxWindowValues ?? DEFAULTS.maxWindowValues,
      stateTtlSeconds: opts.stateTtlSeconds ?? DEFAULTS.stateTtlSeconds,
      onTruncated: (rule) => truncated.push(rule),
    },
  );
  return Object.assign(result, { truncated });
}

/** The errors of a ruleset, as the operator sees them: `file:line:col: code: message` heads. */
export function errorsOf(sources: Sources, opts: HarnessOptions = {}): RuleError[] {
  return compileRules(sources, opts).errors;
}

export interface MessageInput {
  topic: string;
  /** a JSON value, encoded as the payload (contentType json) */
  payload?: unknown;
  /** the payload's exact JSON text (for keys such as "__proto__" that a JS object literal cannot hold) */
  json?: string;
  /** a text payload (contentType text) */
  text?: string;
  /** a binary payload */
  binary?: Uint8Array;
  id?: string;
  /** default: the previous message's ts + 1000, the first 0 */
  ts?: number;
  /** default: the topic's second level, else "test" */
  deviceId?: string;
  protocol?: Protocol;
  qos?: QoS;
  retain?: boolean;
  props?: Record<string, string>;
  hops?: number;
  parentId?: string;
  /** the `device` root: null for an unknown device */
  device?: Value;
  /** the `edge` root */
  edge?: Value;
}

export interface ActionView {
  rule: string;
  name: string;
  args: Record<string, unknown>;
}

export interface Outcome {
  msg: EdgeMessage;
  ev: Evaluation;
  plan: Plan;
  /** names of the rules that fired, in firing order */
  fired: string[];
  /** the collected actions, in order, with plain-object arguments */
  actions: ActionView[];
  dropped: boolean;
  routed: boolean;
  /** what goes up: topic, priority, whether it is the message itself, the payload of a new message */
  uplinks: Array<{ topic: string; priority: Priority; self: boolean; payload: unknown }>;
}

/** A value as plain JSON-like data (object literals evaluate to null-prototype objects). */
export function plain(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(plain);
  if (v !== null && typeof v === 'object') {
    const o: Record<string, unknown> = {};
    for (const k of Object.keys(v)) o[k] = plain((v as Record<string, unknown>)[k]);
    return o;
  }
  return v;
}

let ids = 0;

export class Harness {
  readonly ruleset: RuleSet;
  readonly truncated: string[];
  private previousTs: number | null = null;
  private readonly priorities: PriorityTable;
  private readonly routingDefault: 'uplink' | 'local';

  constructor(
    readonly compiled: Compiled,
    opts: HarnessOptions = {},
  ) {
    if (!compiled.ruleset) throw new Error(`the rules do not compile:\n${formatErrors(compiled)}`);
    this.ruleset = compiled.ruleset;
    this.truncated = compiled.truncated;
    this.priorities = new PriorityTable(opts.priorities ?? []);
    this.routingDefault = opts.routingDefault ?? 'uplink';
  }

  priorityOf(topic: string): Priority {
    return this.priorities.priorityOf(topic);
  }

  /** Builds the EdgeMessage of an input, with the defaults of `rules test`. */
  message(input: MessageInput): EdgeMessage {
    const ts = input.ts ?? (this.previousTs === null ? 0 : this.previousTs + 1000);
    let payload: Uint8Array;
    let contentType: ContentType;
    if (input.text !== undefined) {
      payload = Buffer.from(input.text);
      contentType = 'text';
    } else if (input.binary !== undefined) {
      payload = input.binary;
      contentType = 'binary';
    } else if (input.json !== undefined) {
      payload = Buffer.from(input.json);
      contentType = 'json';
    } else {
      payload = Buffer.from(JSON.stringify(input.payload === undefined ? {} : input.payload));
      contentType = 'json';
    }
    return {
      id: input.id ?? `msg-${++ids}`,
      ts,
      deviceId: input.deviceId ?? input.topic.split('/')[1] ?? 'test',
      protocol: input.protocol ?? 'mqtt',
      topic: input.topic,
      payload,
      contentType,
      qos: input.qos ?? 0,
      retain: input.retain ?? false,
      props: input.props ?? {},
      hops: input.hops ?? 0,
      ...(input.parentId !== undefined ? { parentId: input.parentId } : {}),
    };
  }

  /** Evaluates one message as the router does, and plans what happens to it. */
  send(input: MessageInput): Outcome {
    const msg = this.message(input);
    this.previousTs = msg.ts;
    const decoded = decode(msg);
    const ev = this.ruleset.evaluate(msg, {
      payload: () => decoded,
      msgValue: () => msgValue(msg),
      device: input.device === undefined ? null : input.device,
      edge: input.edge === undefined ? { id: 'test-edge', uplinkConnected: true } : input.edge,
    });
    const plan = planActions(msg, ev, this.routingDefault, (t) => this.priorityOf(t));
    return {
      msg,
      ev,
      plan,
      fired: ev.fired.map((f) => f.rule),
      actions: ev.actions.map((a) => ({ rule: a.rule, name: a.name, args: plain(a.args) as Record<string, unknown> })),
      dropped: ev.dropped,
      routed: ev.routed,
      uplinks: plan.uplinks.map((u) => ({ topic: u.topic, priority: u.priority, self: u.self, payload: plain(u.payload) })),
    };
  }

  sendAll(inputs: MessageInput[]): Outcome[] {
    return inputs.map((i) => this.send(i));
  }

  /** Releases state as the proxy's periodic sweep does, at time `now` (ms, the clock of msg.ts). */
  sweep(now: number): void {
    this.ruleset.sweep(now);
  }
}

/** The payload as the router decodes it: JSON parsed, text as a string, binary as null. */
function decode(msg: EdgeMessage): Value {
  const text = Buffer.from(msg.payload).toString('utf8');
  if (msg.contentType === 'text') return text;
  if (msg.contentType !== 'json') return null;
  try {
    return fromJson(JSON.parse(text));
  } catch {
    return null;
  }
}

/** Compiles and returns a harness; throws with the formatted errors when the rules do not compile. */
export function load(sources: Sources, opts: HarnessOptions = {}): Harness {
  return new Harness(compileRules(sources, opts), opts);
}

/**
 * The value of one expression for one message: the argument of a `log` action of a rule that
 * always fires. Plain data (object literals as ordinary objects).
 */
export function valueOf(expr: string, input: Partial<MessageInput> = {}): unknown {
  const h = load(`rule probe\nwhen true\nthen log("info", ${expr})\nend\n`);
  const out = h.send({ topic: 'probe/test', ...input });
  if (out.ev.errors.length) throw out.ev.errors[0]!.error;
  const action = out.actions[0];
  if (!action) throw new Error(`the probe rule did not fire for ${expr}`);
  return action.args.text;
}

/** Whether a rule with this condition fires for one message. */
export function fires(condition: string, input: Partial<MessageInput> = {}): boolean {
  const h = load(`rule probe\nwhen ${condition}\nthen drop()\nend\n`);
  const out = h.send({ topic: 'probe/test', ...input });
  if (out.ev.errors.length) throw out.ev.errors[0]!.error;
  return out.fired.includes('probe');
}

/** Line and column (from 1) of the first occurrence of `needle` in `text`, for exact error positions. */
export function posOf(text: string, needle: string, occurrence = 1): { line: number; col: number } {
  let at = -1;
  for (let i = 0; i < occurrence; i++) {
    at = text.indexOf(needle, at + 1);
    if (at < 0) throw new Error(`"${needle}" does not occur ${occurrence} time(s)`);
  }
  const before = text.slice(0, at);
  const line = before.split('\n').length;
  return { line, col: at - before.lastIndexOf('\n') };
}
