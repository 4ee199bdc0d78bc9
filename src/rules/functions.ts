import type { Value } from './values.js';
import { finite } from './values.js';
import { topicMatches } from '../core/topic.js';

// The pure functions of the language. A function given a value of the wrong kind returns null.

const num = (v: Value): v is number => typeof v === 'number';
const str = (v: Value): v is string => typeof v === 'string';

function round(x: Value, digits: Value = 0): Value {
  if (!num(x) || !num(digits) || !Number.isInteger(digits) || digits < 0 || digits > 15) return null;
  const f = 10 ** digits;
  // Half away from zero, on the decimal the operator sees: 2.675 rounds to 2.68 at 2 digits.
  const scaled = Number((Math.abs(x) * f).toPrecision(15));
  return finite((Math.sign(x) * Math.round(scaled)) / f);
}

function toNumber(v: Value): Value {
  if (num(v)) return v;
  if (typeof v === 'boolean') return v ? 1 : 0;
  if (str(v)) {
    const t = v.trim();
    if (t === '' || !/^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$/.test(t)) return null;
    return finite(Number(t));
  }
  return null;
}

function toString(v: Value): Value {
  if (str(v)) return v;
  if (num(v) || typeof v === 'boolean') return String(v);
  if (v === null) return null;
  return JSON.stringify(v);
}

function toBool(v: Value): Value {
  if (typeof v === 'boolean') return v;
  if (num(v)) return v !== 0;
  if (v === 'true') return true;
  if (v === 'false') return false;
  return null;
}

function topicLevel(topic: Value, i: Value): Value {
  if (!str(topic) || !num(i) || !Number.isInteger(i)) return null;
  const levels = topic.split('/');
  const at = i < 0 ? levels.length + i : i;
  return at >= 0 && at < levels.length ? levels[at]! : null;
}

interface FunctionSpec {
  min: number;
  max: number;
  /** `now` reads the message's time: it is given it as its last argument */
  fn: (...args: Value[]) => Value;
}

export const FUNCTIONS: Record<string, FunctionSpec> = {
  abs: { min: 1, max: 1, fn: (x) => (num(x) ? Math.abs(x) : null) },
  // digits absent: 0; digits given but null (missing data) is a value of the wrong kind
  round: { min: 1, max: 2, fn: (x, d) => round(x, d === undefined ? 0 : d) },
  floor: { min: 1, max: 1, fn: (x) => (num(x) ? Math.floor(x) : null) },
  ceil: { min: 1, max: 1, fn: (x) => (num(x) ? Math.ceil(x) : null) },
  min: { min: 2, max: 2, fn: (a, b) => (num(a) && num(b) ? Math.min(a, b) : null) },
  max: { min: 2, max: 2, fn: (a, b) => (num(a) && num(b) ? Math.max(a, b) : null) },
  len: { min: 1, max: 1, fn: (x) => (str(x) || Array.isArray(x) ? x.length : null) },
  lower: { min: 1, max: 1, fn: (x) => (str(x) ? x.toLowerCase() : null) },
  upper: { min: 1, max: 1, fn: (x) => (str(x) ? x.toUpperCase() : null) },
  trim: { min: 1, max: 1, fn: (x) => (str(x) ? x.trim() : null) },
  startsWith: { min: 2, max: 2, fn: (s, p) => (str(s) && str(p) ? s.startsWith(p) : null) },
  endsWith: { min: 2, max: 2, fn: (s, p) => (str(s) && str(p) ? s.endsWith(p) : null) },
  number: { min: 1, max: 1, fn: (x) => toNumber(x) },
  string: { min: 1, max: 1, fn: (x) => toString(x) },
  bool: { min: 1, max: 1, fn: (x) => toBool(x) },
  topicLevel: { min: 2, max: 2, fn: (t, i) => topicLevel(t, i) },
  now: { min: 0, max: 0, fn: () => null }, // compiled specially: the current message's ts
};

export const WINDOW_FUNCTIONS: Record<string, { takesValue: boolean; takesWindow: boolean }> = {
  avg: { takesValue: true, takesWindow: true },
  sum: { takesValue: true, takesWindow: true },
  minOf: { takesValue: true, takesWindow: true },
  maxOf: { takesValue: true, takesWindow: true },
  count: { takesValue: false, takesWindow: true },
  rate: { takesValue: true, takesWindow: true },
  delta: { takesValue: true, takesWindow: false },
  last: { takesValue: true, takesWindow: false },
  changed: { takesValue: true, takesWindow: false },
};

/** `a matches f`: a string topic and an MQTT topic filter. */
export function matches(a: Value, f: Value): boolean {
  return str(a) && str(f) && topicMatches(f, a);
}
