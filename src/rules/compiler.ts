import type { Expr, Rule } from './dsl/ast.js';
import type { BoundArgs, CheckedRule } from './dsl/checker.js';
import { FUNCTIONS, matches } from './functions.js';
import { compareCodePoints, equal, finite, index, member, type Value } from './values.js';
import { CountWindow, PreviousWindow, SeriesWindow, type WindowLimits } from './windows.js';

/** What a compiled expression reads while one message is evaluated. */
export interface EvalState {
  seq: number;
  ts: number;
  deviceId: string;
  msg: Value;
  payload(): Value;
  device: Value;
  edge: Value;
}

type Compiled = (s: EvalState) => Value;

type WindowState = SeriesWindow | PreviousWindow | CountWindow;

/**
 * One window of one expression, per device, shared by every rule that has the same expression,
 * the same scope (so the same stream of values) and the same state TTL (so the same sweep: each
 * rule's state lives for its own TTL). Its state for the current message's device
 * is looked up once, when the message is recorded, and read from `current` after that.
 */
export class WindowDef {
  readonly byDevice = new Map<string, WindowState>();
  lastSeq = -1;
  current!: WindowState;
  readonly rules: string[] = [];

  constructor(
    readonly key: string,
    readonly fn: string,
    readonly value: Compiled | null,
    readonly shape: { kind: 'time'; ms: number } | { kind: 'count'; n: number } | { kind: 'previous' },
    private readonly limits: WindowLimits,
  ) {}

  /** Record this message's value (before any condition is evaluated), once per message. */
  record(s: EvalState): void {
    if (this.lastSeq === s.seq) return;
    this.lastSeq = s.seq;
    let st = this.byDevice.get(s.deviceId);
    if (!st) {
      st =
        this.shape.kind === 'previous'
          ? new PreviousWindow()
          : this.fn === 'count'
            ? new CountWindow(this.shape, this.limits)
            : new SeriesWindow(this.shape, this.limits);
      this.byDevice.set(s.deviceId, st);
    }
    st.lastSeen = s.ts;
    this.current = st;
    if (st instanceof CountWindow) {
      st.record(s.ts);
      return;
    }
    const v = this.value!(s);
    if (v === null) return; // null values are not recorded
    if (st instanceof PreviousWindow) st.record(v, s.seq);
    else if (typeof v === 'number') st.record(v, s.ts);
  }

  /** Release devices not seen for `ttlMs`. */
  sweep(now: number, ttlMs: number): void {
    for (const [device, st] of this.byDevice) if (now - st.lastSeen > ttlMs) this.byDevice.delete(device);
  }

  longestMs(): number {
    return this.shape.kind === 'time' ? this.shape.ms : 0;
  }
}

interface CompiledAction {
  name: string;
  /** evaluates the arguments; a constant when every argument is a literal */
  args: (s: EvalState) => Record<string, Value>;
  constant: boolean;
}

export interface CompiledRule {
  rule: Rule;
  /** the MQTT topic filters of the rule's scope: all conjuncts must match, each by one of its filters */
  scope: string[][];
  condition: Compiled;
  windows: WindowDef[];
  actions: CompiledAction[];
}

/** Canonical text of an expression, positions left out: equal text, equal expression. */
function canonical(e: Expr): string {
  switch (e.kind) {
    case 'literal':
      return JSON.stringify(e.value) + (e.duration ? 'ms' : '');
    case 'name':
      return e.name;
    case 'member':
      return `${canonical(e.object)}.${e.name}`;
    case 'index':
      return `${canonical(e.object)}[${canonical(e.index)}]`;
    case 'unary':
      return `(${e.op} ${canonical(e.operand)})`;
    case 'binary':
      return `(${canonical(e.left)} ${e.op} ${canonical(e.right)})`;
    case 'call':
      return `${e.name}(${e.args.map((a) => canonical(a.value)).join(',')})`;
    case 'list':
      return `[${e.items.map(canonical).join(',')}]`;
    case 'object':
      return `{${e.entries.map((x) => `${JSON.stringify(x.key)}:${canonical(x.value)}`).join(',')}}`;
  }
}

const truthy = (v: Value): boolean => v === true;

function scopeOf(e: Expr): string[] | null {
  if (
    e.kind === 'binary' &&
    e.op === 'matches' &&
    e.left.kind === 'member' &&
    e.left.name === 'topic' &&
    e.left.object.kind === 'name' &&
    e.left.object.name === 'msg' &&
    e.right.kind === 'literal' &&
    typeof e.right.value === 'string'
  ) {
    return [e.right.value];
  }
  if (e.kind === 'binary' && e.op === 'or') {
    const l = scopeOf(e.left);
    const r = scopeOf(e.right);
    return l && r ? [...l, ...r] : null;
  }
  return null;
}

function conjuncts(e: Expr): Expr[] {
  return e.kind === 'binary' && e.op === 'and' ? [...conjuncts(e.left), ...conjuncts(e.right)] : [e];
}

interface CompileContext {
  /** window definitions of the whole ruleset, by state TTL, scope and expression */
  windows: Map<string, WindowDef>;
  /** conditions of the whole ruleset, by state TTL, scope and expression: each evaluated once per message */
  conditions: Map<string, { seq: number; value: boolean; fn: Compiled }>;
  limits: (rule: string) => WindowLimits;
  /** how long this rule keeps a silent device's state (see stateTtlMs) */
  ttlMs: number;
}

/**
 * How long a rule keeps a device's window and throttle state without a message in its scope:
 * rules.stateTtlSeconds, or the rule's longest time window or throttle if longer.
 */
export function stateTtlMs(checked: CheckedRule, stateTtlSeconds: number): number {
  let longest = Math.max(stateTtlSeconds * 1000, checked.rule.throttleMs ?? 0);
  const walk = (e: Expr): void => {
    switch (e.kind) {
      case 'call': {
        const w = e.args[e.args.length - 1]?.value;
        if (
          Object.hasOwn(windowNames, e.name) &&
          e.name !== 'delta' &&
          e.name !== 'last' &&
          e.name !== 'changed' &&
          w &&
          w.kind === 'literal' &&
          w.duration
        )
          longest = Math.max(longest, w.value as number);
        for (const a of e.args) walk(a.value);
        return;
      }
      case 'member':
        return walk(e.object);
      case 'index':
        walk(e.object);
        return walk(e.index);
      case 'unary':
        return walk(e.operand);
      case 'binary':
        walk(e.left);
        return walk(e.right);
      case 'list':
        for (const x of e.items) walk(x);
        return;
      case 'object':
        for (const x of e.entries) walk(x.value);
        return;
      default:
        return;
    }
  };
  walk(checked.rule.when);
  for (const { args } of checked.actions) for (const e of args.values()) walk(e);
  return longest;
}

export function compileRule(checked: CheckedRule, ctx: CompileContext): CompiledRule {
  const rule = checked.rule;
  const parts = conjuncts(rule.when);
  const scope: string[][] = [];
  const rest: Expr[] = [];
  for (const p of parts) {
    const filters = scopeOf(p);
    if (filters) scope.push(filters);
    else rest.push(p);
  }
  const scopeKey = scope.map((c) => c.join('|')).join('&');
  const windows: WindowDef[] = [];

  const compileWindow = (e: Extract<Expr, { kind: 'call' }>): Compiled => {
    const key = `${ctx.ttlMs}@${scopeKey}#${canonical(e)}`;
    let def = ctx.windows.get(key);
    if (!def) {
      const takesValue = e.name !== 'count';
      const w = e.args[e.args.length - 1]!.value;
      const shape =
        e.name === 'delta' || e.name === 'last' || e.name === 'changed'
          ? { kind: 'previous' as const }
          : w.kind === 'literal' && w.duration
            ? { kind: 'time' as const, ms: w.value as number }
            : { kind: 'count' as const, n: (w as { value: number }).value };
      // a truncation counts for every rule that holds the window
      const holder: { def?: WindowDef } = {};
      const limits: WindowLimits = {
        maxValues: ctx.limits(rule.name).maxValues,
        truncated: () => {
          for (const r of holder.def!.rules) ctx.limits(r).truncated();
        },
      };
      def = holder.def = new WindowDef(key, e.name, takesValue ? compile(e.args[0]!.value) : null, shape, limits);
      ctx.windows.set(key, def);
    }
    if (!def.rules.includes(rule.name)) def.rules.push(rule.name);
    if (!windows.includes(def)) windows.push(def);
    const d = def;
    switch (e.name) {
      case 'avg':
        return (s) => {
          const w = d.current as SeriesWindow;
          w.expire(s.ts);
          return w.avg();
        };
      case 'sum':
        return (s) => {
          const w = d.current as SeriesWindow;
          w.expire(s.ts);
          return w.sum();
        };
      case 'minOf':
        return (s) => {
          const w = d.current as SeriesWindow;
          w.expire(s.ts);
          return w.minOf();
        };
      case 'maxOf':
        return (s) => {
          const w = d.current as SeriesWindow;
          w.expire(s.ts);
          return w.maxOf();
        };
      case 'rate':
        return (s) => {
          const w = d.current as SeriesWindow;
          w.expire(s.ts);
          return w.rate();
        };
      case 'count':
        return (s) => (d.current as CountWindow).count(s.ts);
      case 'delta':
        return (s) => (d.current as PreviousWindow).delta(s.seq);
      case 'last':
        return (s) => (d.current as PreviousWindow).last(s.seq);
      default:
        return (s) => (d.current as PreviousWindow).changed(s.seq);
    }
  };

  const compile = (e: Expr): Compiled => {
    switch (e.kind) {
      case 'literal': {
        const v = e.value;
        return () => v;
      }
      case 'name':
        switch (e.name) {
          case 'msg':
            return (s) => s.msg;
          case 'payload':
            return (s) => s.payload();
          case 'device':
            return (s) => s.device;
          default:
            return (s) => s.edge;
        }
      case 'member': {
        const name = e.name;
        if (e.object.kind === 'name' && e.object.name === 'payload') return (s) => member(s.payload(), name);
        const obj = compile(e.object);
        return (s) => member(obj(s), name);
      }
      case 'index': {
        const obj = compile(e.object);
        const i = compile(e.index);
        return (s) => index(obj(s), i(s));
      }
      case 'unary': {
        const x = compile(e.operand);
        return e.op === '-'
          ? (s) => {
              const v = x(s);
              return typeof v === 'number' ? -v : null;
            }
          : (s) => x(s) !== true;
      }
      case 'binary':
        return binary(e.op, compile(e.left), compile(e.right));
      case 'list': {
        const items = e.items.map(compile);
        return (s) => items.map((f) => f(s));
      }
      case 'object': {
        const entries = e.entries.map((x) => [x.key, compile(x.value)] as const);
        return (s) => {
          // A null-prototype object: keys such as "toString" stay plain data.
          const o: Record<string, Value> = Object.create(null) as Record<string, Value>;
          for (const [k, f] of entries) o[k] = f(s);
          return o;
        };
      }
      case 'call': {
        if (e.name === 'now') return (s) => s.ts;
        if (Object.hasOwn(windowNames, e.name)) return compileWindow(e);
        const fn = FUNCTIONS[e.name]!.fn;
        const args = e.args.map((a) => compile(a.value));
        if (args.length === 1) {
          const a0 = args[0]!;
          return (s) => fn(a0(s));
        }
        if (args.length === 2) {
          const a0 = args[0]!;
          const a1 = args[1]!;
          return (s) => fn(a0(s), a1(s));
        }
        return (s) => fn(...args.map((f) => f(s)));
      }
    }
  };

  const rest0 = rest[0];
  const plain: Compiled =
    rest.length === 0
      ? () => true
      : rest.length === 1
        ? compile(rest0!)
        : rest.slice(1).reduce<Compiled>((acc, p) => {
            const next = compile(p);
            return (s) => truthy(acc(s)) && truthy(next(s));
          }, compile(rest0!));
  // Rules with the same scope and the same condition (a fleet's rules often differ only in their
  // actions) share one evaluation per message: expressions are pure and windows are shared too.
  const conditionKey = `${ctx.ttlMs}@${scopeKey}#${rest.map(canonical).join('&')}`;
  let memo = ctx.conditions.get(conditionKey);
  if (!memo) {
    memo = { seq: -1, value: false, fn: plain };
    ctx.conditions.set(conditionKey, memo);
  }
  const m = memo;
  const condition: Compiled = (s) => {
    if (m.seq !== s.seq) {
      m.value = m.fn(s) === true;
      m.seq = s.seq;
    }
    return m.value;
  };

  const actions = checked.actions.map(({ action, args }) => compileAction(action.name, args, compile));
  return { rule, scope, condition, windows, actions };
}

const windowNames: Record<string, true> = {
  avg: true,
  sum: true,
  minOf: true,
  maxOf: true,
  count: true,
  rate: true,
  delta: true,
  last: true,
  changed: true,
};

function compileAction(name: string, bound: BoundArgs, compile: (e: Expr) => Compiled): CompiledAction {
  const entries = [...bound].map(([k, e]) => [k, e] as const);
  if (entries.every(([, e]) => e.kind === 'literal')) {
    // Literal arguments: one object for every firing, no work per message.
    const constant: Record<string, Value> = {};
    for (const [k, e] of entries) constant[k] = (e as { value: Value }).value;
    return { name, args: () => constant, constant: true };
  }
  const compiled = entries.map(([k, e]) => [k, compile(e)] as const);
  return {
    name,
    constant: false,
    args: (s) => {
      const out: Record<string, Value> = {};
      for (const [k, f] of compiled) out[k] = f(s);
      return out;
    },
  };
}

function binary(op: string, l: Compiled, r: Compiled): Compiled {
  switch (op) {
    case 'and':
      return (s) => truthy(l(s)) && truthy(r(s));
    case 'or':
      return (s) => truthy(l(s)) || truthy(r(s));
    case '==':
      return (s) => equal(l(s), r(s));
    case '!=':
      return (s) => !equal(l(s), r(s));
    case '<':
      return (s) => order(l(s), r(s)) < 0;
    case '<=':
      return (s) => order(l(s), r(s)) <= 0;
    case '>':
      return (s) => order(l(s), r(s)) > 0;
    case '>=':
      return (s) => order(l(s), r(s)) >= 0;
    case 'matches':
      return (s) => matches(l(s), r(s));
    case 'contains':
      return (s) => contains(l(s), r(s));
    case 'in':
      return (s) => contains(r(s), l(s));
    case '+':
      return (s) => add(l(s), r(s));
    case '-':
      return (s) => {
        const a = l(s);
        const b = r(s);
        return typeof a === 'number' && typeof b === 'number' ? finite(a - b) : null;
      };
    case '*':
      return (s) => {
        const a = l(s);
        const b = r(s);
        return typeof a === 'number' && typeof b === 'number' ? finite(a * b) : null;
      };
    case '/':
      return (s) => {
        const a = l(s);
        const b = r(s);
        return typeof a === 'number' && typeof b === 'number' && b !== 0 ? finite(a / b) : null;
      };
    default:
      return (s) => {
        const a = l(s);
        const b = r(s);
        return typeof a === 'number' && typeof b === 'number' && b !== 0 ? finite(a % b) : null;
      };
  }
}

/** Two numbers, or two strings by code point: negative, zero or positive; anything else NaN (every comparison false). */
function order(a: Value, b: Value): number {
  if (typeof a === 'number' && typeof b === 'number') return a < b ? -1 : a > b ? 1 : a === b ? 0 : NaN;
  if (typeof a === 'string' && typeof b === 'string') return compareCodePoints(a, b);
  return NaN;
}

function add(a: Value, b: Value): Value {
  if (typeof a === 'number' && typeof b === 'number') return finite(a + b);
  if (typeof a === 'string' && (typeof b === 'string' || typeof b === 'number')) return a + String(b);
  if (typeof a === 'number' && typeof b === 'string') return String(a) + b;
  return null;
}

function contains(b: Value, a: Value): boolean {
  if (typeof b === 'string') return typeof a === 'string' && b.includes(a);
  if (Array.isArray(b)) return b.some((x) => equal(x, a));
  if (b !== null && typeof b === 'object')
    return typeof a === 'string' && a !== '__proto__' && a !== 'constructor' && a !== 'prototype' && Object.hasOwn(b, a);
  return false;
}
