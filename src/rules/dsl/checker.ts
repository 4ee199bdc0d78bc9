import type { Action, Arg, Expr, Pos, Rule } from './ast.js';
import type { RuleError, RuleErrorCode } from './errors.js';
import { FUNCTIONS, WINDOW_FUNCTIONS } from '../functions.js';
import { closestIdentifier } from '../../core/did-you-mean.js';
import { PRIORITIES } from '../../core/priority.js';

const ROOTS = ['msg', 'payload', 'device', 'edge'] as const;
const LOG_LEVELS = ['debug', 'info', 'warn', 'error'];
const RESERVED_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

const LIMITS = { maxDepth: 64, maxNodes: 100_000 } as const;
// Chains such as a.b.c... or 1 + 1 + ... are parsed in a loop, but walked here by recursion: past
// this depth (far past the limit, so the rule is refused anyway) the walk stops going down, so that
// a hostile file cannot exhaust the stack.
const MAX_WALK = 512;

interface Param {
  name: string;
  required: boolean;
  /** checks a literal argument; returns a problem, or null */
  literal?: (v: unknown) => string | null;
  /** only a literal is allowed: the value is fixed when the rules load (a metric label, an enum) */
  literalOnly?: boolean;
}

const isString =
  (what: string) =>
  (v: unknown): string | null =>
    typeof v === 'string' ? null : `${what} must be a string`;

const ACTIONS: Record<string, Param[]> = {
  uplink: [
    { name: 'topic', required: false, literal: isString('topic') },
    { name: 'payload', required: false },
    {
      name: 'priority',
      required: false,
      literalOnly: true,
      literal: (v) =>
        (PRIORITIES as readonly unknown[]).includes(v) ? null : `priority must be one of ${PRIORITIES.map((p) => `"${p}"`).join(', ')}`,
    },
  ],
  publish: [
    { name: 'topic', required: true, literal: isString('topic') },
    { name: 'payload', required: true },
    { name: 'qos', required: false, literalOnly: true, literal: (v) => (v === 0 || v === 1 ? null : 'qos must be 0 or 1') },
    {
      name: 'retain',
      required: false,
      literalOnly: true,
      literal: (v) => (typeof v === 'boolean' ? null : 'retain must be true or false'),
    },
  ],
  infer: [
    // A model name from a payload would let a device name metric series without bound.
    { name: 'model', required: true, literalOnly: true, literal: isString('the model name') },
    { name: 'to', required: false, literal: isString('to') },
  ],
  emit: [
    { name: 'name', required: true, literal: isString('the event name') },
    { name: 'data', required: true },
  ],
  drop: [],
  log: [
    {
      name: 'level',
      required: true,
      literalOnly: true,
      literal: (v) => (LOG_LEVELS.includes(v as string) ? null : `level must be one of ${LOG_LEVELS.map((l) => `"${l}"`).join(', ')}`),
    },
    { name: 'text', required: true },
  ],
};

/** Arguments bound to parameter names (positional first, then named). */
export type BoundArgs = Map<string, Expr>;

export interface CheckedRule {
  rule: Rule;
  actions: Array<{ action: Action; args: BoundArgs }>;
}

/**
 * Checks the rules of one set one at a time, rejecting what cannot run before anything runs:
 * unknown roots, functions and actions, wrong arity, bad literal arguments, nested windows,
 * reserved object keys, and the size limits (which count over the set). Null for a rule with errors.
 */
export function ruleChecker(errors: RuleError[]): (rule: Rule) => CheckedRule | null {
  let nodes = 0;
  let reportedTooLarge = false;
  const err = (rule: Rule, pos: Pos, code: RuleErrorCode, message: string): void => {
    errors.push({ file: rule.file, line: pos.line, col: pos.col, code, message });
  };

  return (rule: Rule): CheckedRule | null => {
    const before = errors.length;
    let deepest = 0;
    let deepestPos = rule.pos;

    const expr = (e: Expr, depth: number, inWindow: boolean): void => {
      nodes++;
      if (depth > deepest) {
        deepest = depth;
        deepestPos = e.pos;
      }
      if (depth > MAX_WALK) return;
      switch (e.kind) {
        case 'literal':
          return;
        case 'name':
          if (!(ROOTS as readonly string[]).includes(e.name)) {
            const close = closestIdentifier(e.name, ROOTS);
            err(
              rule,
              e.pos,
              'E_RULE_UNKNOWN_ROOT',
              `unknown name "${e.name}": a rule reads msg, payload, device and edge${close ? `; did you mean "${close}"?` : ''}`,
            );
          }
          return;
        case 'member':
          return expr(e.object, depth + 1, inWindow);
        case 'index':
          expr(e.object, depth + 1, inWindow);
          return expr(e.index, depth + 1, inWindow);
        case 'unary':
          return expr(e.operand, depth + 1, inWindow);
        case 'binary':
          expr(e.left, depth + 1, inWindow);
          return expr(e.right, depth + 1, inWindow);
        case 'list':
          for (const item of e.items) expr(item, depth + 1, inWindow);
          return;
        case 'object':
          for (const entry of e.entries) {
            if (RESERVED_KEYS.has(entry.key)) err(rule, entry.pos, 'E_RULE_ARG', `"${entry.key}" cannot be a key of an object`);
            expr(entry.value, depth + 1, inWindow);
          }
          return;
        case 'call':
          return call(e, depth, inWindow);
      }
    };

    const call = (e: Extract<Expr, { kind: 'call' }>, depth: number, inWindow: boolean): void => {
      for (const a of e.args)
        if (a.name !== undefined) err(rule, a.pos, 'E_RULE_ARG', `${e.name}() takes no named arguments ("${a.name} = ...")`);
      const win = Object.hasOwn(WINDOW_FUNCTIONS, e.name) ? WINDOW_FUNCTIONS[e.name]! : undefined;
      if (win) {
        if (inWindow) err(rule, e.pos, 'E_RULE_ARG', `window functions cannot be nested: ${e.name}() inside another window function`);
        const arity = (win.takesValue ? 1 : 0) + (win.takesWindow ? 1 : 0);
        if (e.args.length !== arity) {
          err(
            rule,
            e.pos,
            'E_RULE_ARITY',
            `${e.name}() takes ${arity} argument${arity === 1 ? '' : 's'}${win.takesWindow ? ` (${win.takesValue ? 'a value and ' : ''}a window such as 5m or 10)` : ''}, not ${e.args.length}`,
          );
        } else if (win.takesWindow) {
          const w = e.args[arity - 1]!.value;
          const ok =
            w.kind === 'literal' && typeof w.value === 'number' && (w.duration ? w.value > 0 : Number.isInteger(w.value) && w.value >= 1);
          if (!ok)
            err(
              rule,
              w.pos,
              'E_RULE_ARG',
              `the window of ${e.name}() must be a literal duration (5m, 30s) or a whole number of values (10)`,
            );
        }
        for (const a of e.args) expr(a.value, depth + 1, true);
        return;
      }
      const fn = Object.hasOwn(FUNCTIONS, e.name) ? FUNCTIONS[e.name]! : undefined;
      if (!fn) {
        const close = closestIdentifier(e.name, [...Object.keys(FUNCTIONS), ...Object.keys(WINDOW_FUNCTIONS)]);
        const isAction = Object.hasOwn(ACTIONS, e.name);
        err(
          rule,
          e.pos,
          'E_RULE_UNKNOWN_FUNCTION',
          `unknown function "${e.name}"${isAction ? ' (it is an action: actions go after "then")' : close ? `; did you mean "${close}"?` : ''}`,
        );
      } else if (e.args.length < fn.min || e.args.length > fn.max) {
        const want = fn.min === fn.max ? `${fn.min}` : `${fn.min} or ${fn.max}`;
        err(rule, e.pos, 'E_RULE_ARITY', `${e.name}() takes ${want} argument${fn.max === 1 ? '' : 's'}, not ${e.args.length}`);
      }
      for (const a of e.args) expr(a.value, depth + 1, inWindow);
    };

    const checkAction = (a: Action): BoundArgs => {
      nodes++;
      const bound: BoundArgs = new Map();
      const params = Object.hasOwn(ACTIONS, a.name) ? ACTIONS[a.name] : undefined;
      if (!params) {
        const close = closestIdentifier(a.name, Object.keys(ACTIONS));
        const isFn = Object.hasOwn(FUNCTIONS, a.name) || Object.hasOwn(WINDOW_FUNCTIONS, a.name);
        err(
          rule,
          a.pos,
          'E_RULE_UNKNOWN_ACTION',
          `unknown action "${a.name}"${close ? `; did you mean "${close}"?` : isFn ? ' (it is a function: actions are uplink, publish, infer, emit, drop and log)' : ''}`,
        );
        for (const arg of a.args) expr(arg.value, 2, false);
        return bound;
      }
      const beforeBinding = errors.length;
      bindArgs(a.name, a.args, params, bound, (pos, code, message) => err(rule, pos, code, message));
      // When the arguments could not be bound, "missing argument" would only repeat the same problem.
      const bindingFailed = errors.length > beforeBinding;
      if (a.args.length > params.length) {
        err(
          rule,
          a.pos,
          'E_RULE_ARITY',
          `${a.name}() takes at most ${params.length} argument${params.length === 1 ? '' : 's'}, not ${a.args.length}`,
        );
      }
      for (const p of params) {
        const v = bound.get(p.name);
        if (!v) {
          if (p.required && !bindingFailed) err(rule, a.pos, 'E_RULE_ARITY', `${a.name}() needs its ${p.name} argument`);
          continue;
        }
        if (p.literal && v.kind === 'literal') {
          const problem = p.literal(v.value);
          if (problem) err(rule, v.pos, 'E_RULE_ARG', `${a.name}(): ${problem}`);
        } else if (p.literalOnly) {
          err(rule, v.pos, 'E_RULE_ARG', `${a.name}(): ${p.name} must be a literal`);
        }
      }
      for (const arg of a.args) expr(arg.value, 2, false);
      return bound;
    };

    expr(rule.when, 1, false);
    const actions = rule.then.map((action) => ({ action, args: checkAction(action) }));
    if (deepest > LIMITS.maxDepth)
      err(
        rule,
        deepestPos,
        'E_RULE_TOO_LARGE',
        `rule "${rule.name}" nests expressions ${deepest > MAX_WALK ? `more than ${MAX_WALK}` : deepest} deep; the limit is ${LIMITS.maxDepth}`,
      );
    if (nodes > LIMITS.maxNodes && !reportedTooLarge) {
      reportedTooLarge = true;
      err(rule, rule.pos, 'E_RULE_TOO_LARGE', `the ruleset passes ${LIMITS.maxNodes} syntax nodes at rule "${rule.name}"`);
    }
    return errors.length === before ? { rule, actions } : null;
  };
}

function bindArgs(
  action: string,
  args: Arg[],
  params: Param[],
  bound: BoundArgs,
  err: (pos: Pos, code: RuleErrorCode, message: string) => void,
): void {
  let named = false;
  args.forEach((a, i) => {
    if (a.name === undefined) {
      if (named) {
        err(a.pos, 'E_RULE_ARG', `${action}(): a positional argument cannot follow a named one`);
        return;
      }
      const p = params[i];
      if (p) bound.set(p.name, a.value);
      return;
    }
    named = true;
    const p = params.find((q) => q.name === a.name);
    if (!p) {
      const close = closestIdentifier(
        a.name,
        params.map((q) => q.name),
      );
      err(
        a.pos,
        'E_RULE_ARG',
        `${action}() has no argument "${a.name}"${close ? `; did you mean "${close}"?` : params.length ? ` (it takes ${params.map((q) => q.name).join(', ')})` : ''}`,
      );
      return;
    }
    if (bound.has(a.name)) {
      err(a.pos, 'E_RULE_ARG', `${action}(): "${a.name}" is given twice`);
      return;
    }
    bound.set(a.name, a.value);
  });
}
