import type { EdgeMessage } from '../core/message.js';
import { topicMatches } from '../core/topic.js';
import { compileRule, stateTtlMs, type CompiledRule, type EvalState, type WindowDef } from './compiler.js';
import type { CheckedRule } from './dsl/checker.js';
import { TopicIndex } from './topic-index.js';
import { compareCodePoints, type Value } from './values.js';
import type { WindowLimits } from './windows.js';

// One sequence for every ruleset: window state carried from one set to the next compares
// sequence numbers, which must not start again at a swap.
let messageSeq = 0;

/** What the rules read of the message being evaluated; one class, so the closures stay monomorphic. */
class MessageState implements EvalState {
  readonly ts: number;
  readonly deviceId: string;
  readonly device: Value;
  readonly edge: Value;
  readonly payload: () => Value;
  private msgCache: Value | undefined;

  constructor(
    readonly seq: number,
    msg: EdgeMessage,
    private readonly env: { payload: () => Value; device: Value; edge: Value; msgValue: () => Value },
  ) {
    this.ts = msg.ts;
    this.deviceId = msg.deviceId;
    this.device = env.device;
    this.edge = env.edge;
    this.payload = env.payload;
  }

  get msg(): Value {
    return (this.msgCache ??= this.env.msgValue());
  }
}

/** One action a fired rule asked for, with its arguments evaluated. */
interface ActionCall {
  rule: string;
  name: string;
  args: Record<string, Value>;
}

/** What the rules decided for one message: the actions to carry out, in order. */
export interface Evaluation {
  fired: Array<{ rule: string; actions: ActionCall[] }>;
  actions: ActionCall[];
  dropped: boolean;
  /** a fired rule called uplink, emit or drop: default routing does not apply */
  routed: boolean;
  errors: Array<{ rule: string; error: Error }>;
}

export interface EngineOptions {
  maxWindowValues: number;
  stateTtlSeconds: number;
  /** per rule: counted and logged by the caller */
  onTruncated(rule: string): void;
}

interface RuleState {
  compiled: CompiledRule;
  /** when every argument of every action is a literal: the record of a firing, made once */
  constantFiring: { rule: string; actions: ActionCall[] } | null;
  drops: boolean;
  routes: boolean;
  /** last firing per device, by msg.ts, for throttle */
  lastFired: Map<string, number> | null;
  /** the scope conjuncts the index did not already check */
  otherScope: string[][];
  ttlMs: number;
}

/**
 * A compiled, immutable ruleset. Rules are ordered by descending priority, then file name, then
 * position; a message evaluates only the rules the topic index puts in its scope.
 */
export class RuleSet {
  private readonly rules: RuleState[] = [];
  private readonly index = new TopicIndex();
  readonly windows = new Map<string, WindowDef>();
  private readonly conditions = new Map<string, { seq: number; value: boolean; fn: (s: EvalState) => Value }>();
  private readonly limitsByRule = new Map<string, WindowLimits>();
  /** rules not compiled yet (only while build() works through them) */
  private pending: CheckedRule[];

  constructor(
    checked: CheckedRule[],
    private readonly opts: EngineOptions,
    deferred = false,
  ) {
    this.pending = [...checked]
      .filter((c) => !c.rule.disabled)
      .sort(
        (a, b) =>
          // file names in byte order (of their UTF-8), which is code point order
          b.rule.priority - a.rule.priority || compareCodePoints(a.rule.file, b.rule.file) || a.rule.index - b.rule.index,
      );
    if (!deferred)
      while (this.compileNext()) {
        /* all at once */
      }
  }

  /**
   * Compiles the set a few milliseconds at a time, giving the event loop back in between, so that
   * building a large set while messages flow does not hold them up. The set is used only once
   * the promise resolves.
   */
  static async build(checked: CheckedRule[], opts: EngineOptions, sliceMs = 2, signal?: AbortSignal): Promise<RuleSet> {
    const set = new RuleSet(checked, opts, true);
    let sliceStart = performance.now();
    while (set.compileNext()) {
      if (performance.now() - sliceStart < sliceMs) continue;
      await new Promise<void>((resolve) => setImmediate(resolve));
      signal?.throwIfAborted();
      sliceStart = performance.now();
    }
    return set;
  }

  private limits = (rule: string): WindowLimits => {
    let l = this.limitsByRule.get(rule);
    if (!l) {
      l = { maxValues: this.opts.maxWindowValues, truncated: () => this.opts.onTruncated(rule) };
      this.limitsByRule.set(rule, l);
    }
    return l;
  };

  /** Compiles the next pending rule; false when none is left. */
  private compileNext(): boolean {
    const i = this.rules.length;
    const c = this.pending[i];
    if (!c) {
      this.pending = [];
      return false;
    }
    const ttlMs = stateTtlMs(c, this.opts.stateTtlSeconds);
    const compiled = compileRule(c, { windows: this.windows, conditions: this.conditions, limits: this.limits, ttlMs });
    this.index.add(i, compiled.scope[0] ?? null);
    const names = c.actions.map((a) => a.action.name);
    const constant = compiled.actions.every((a) => a.constant);
    this.rules.push({
      compiled,
      constantFiring: constant
        ? { rule: c.rule.name, actions: compiled.actions.map((a) => ({ rule: c.rule.name, name: a.name, args: a.args(null as never) })) }
        : null,
      drops: names.includes('drop'),
      routes: names.some((n) => n === 'drop' || n === 'uplink' || n === 'emit'),
      lastFired: c.rule.throttleMs !== null ? new Map() : null,
      otherScope: compiled.scope.slice(1),
      ttlMs,
    });
    return true;
  }

  get size(): number {
    return this.rules.length;
  }

  names(): string[] {
    return this.rules.map((r) => r.compiled.rule.name);
  }

  /** Evaluate every rule in the message's scope. Never throws: a rule's fault is reported in `errors`. */
  evaluate(msg: EdgeMessage, env: { payload: () => Value; device: Value; edge: Value; msgValue: () => Value }): Evaluation {
    const result: Evaluation = { fired: [], actions: [], dropped: false, routed: false, errors: [] };
    const candidates = this.index.candidates(msg.topic);
    if (candidates.length === 0) return result;
    const state = new MessageState(++messageSeq, msg, env);
    for (let c = 0; c < candidates.length; c++) {
      const r = this.rules[candidates[c]!]!;
      if (r.otherScope.length > 0 && !r.otherScope.every((filters) => filters.some((f) => topicMatches(f, msg.topic)))) continue;
      const compiled = r.compiled;
      try {
        // Windows record every message in scope before any condition is evaluated, even after drop().
        const windows = compiled.windows;
        for (let w = 0; w < windows.length; w++) windows[w]!.record(state);
        if (result.dropped) continue;
        if (compiled.condition(state) !== true) continue;
        if (r.lastFired) {
          const last = r.lastFired.get(msg.deviceId);
          if (last !== undefined && msg.ts - last < compiled.rule.throttleMs!) continue;
        }
        this.fire(r, state, result);
        // Only a firing that happened starts the throttle period.
        r.lastFired?.set(msg.deviceId, msg.ts);
      } catch (err) {
        result.errors.push({ rule: compiled.rule.name, error: err as Error });
      }
    }
    return result;
  }

  private fire(r: RuleState, state: EvalState, result: Evaluation): void {
    const firing = r.constantFiring ?? {
      rule: r.compiled.rule.name,
      actions: r.compiled.actions.map((a) => ({ rule: r.compiled.rule.name, name: a.name, args: a.args(state) })),
    };
    result.fired.push(firing);
    if (r.routes) result.routed = true;
    const calls = firing.actions;
    for (let i = 0; i < calls.length; i++) {
      const call = calls[i]!;
      if (r.drops && call.name === 'drop') {
        // drop() discards the uplinks collected so far and stops the rules after it.
        result.actions = result.actions.filter((x) => x.name !== 'uplink');
        result.dropped = true;
      }
      result.actions.push(call);
    }
  }

  /**
   * Take over the window and throttle state of `previous` for every rule whose name and window
   * expressions are unchanged (docs/rules.md, Where rules live); the others start empty. Call before this
   * set evaluates its first message.
   */
  carryOver(previous: RuleSet): number {
    const before = new Map(previous.rules.map((r) => [r.compiled.rule.name, r] as const));
    let carried = 0;
    for (const r of this.rules) {
      const old = before.get(r.compiled.rule.name);
      if (!old) continue;
      const keys = r.compiled.windows.map((w) => w.key);
      const oldKeys = old.compiled.windows.map((w) => w.key);
      if (keys.length !== oldKeys.length || keys.some((k, i) => k !== oldKeys[i])) continue;
      r.compiled.windows.forEach((w, i) => {
        const from = old.compiled.windows[i]!;
        if (w.byDevice.size === 0) for (const [device, st] of from.byDevice) w.byDevice.set(device, st);
      });
      if (r.lastFired && old.lastFired) for (const [device, t] of old.lastFired) r.lastFired.set(device, t);
      carried++;
    }
    return carried;
  }

  /** Release per-device window and throttle state not used for each rule's TTL. */
  sweep(now: number): void {
    for (const r of this.rules) {
      for (const w of r.compiled.windows) w.sweep(now, r.ttlMs);
      if (r.lastFired) for (const [d, t] of r.lastFired) if (now - t > r.ttlMs) r.lastFired.delete(d);
    }
  }
}
