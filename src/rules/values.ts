// Values of the rule language and their semantics: missing data is null, never an error.

export type Value = null | boolean | number | string | Value[] | { [key: string]: Value };

/** Names that never read as a field, whatever the object holds: no way to the prototype. */
const BLOCKED = new Set(['__proto__', 'constructor', 'prototype']);

function isObject(v: unknown): v is { [key: string]: Value } {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** `.name` reads an own property of a plain object; anything else is null. */
export function member(v: Value, name: string): Value {
  if (!isObject(v) || BLOCKED.has(name) || !Object.hasOwn(v, name)) return null;
  const out = v[name];
  return out === undefined ? null : out;
}

/** `[i]`: an integer index in range of a list, or a string key of an object; anything else is null. */
export function index(v: Value, i: Value): Value {
  if (Array.isArray(v)) {
    if (typeof i !== 'number' || !Number.isInteger(i) || i < 0 || i >= v.length) return null;
    return v[i] ?? null;
  }
  if (typeof i === 'string') return member(v, i);
  return null;
}

/** Equal type and value; lists and objects compared deeply. */
export function equal(a: Value, b: Value): boolean {
  if (a === b) return true;
  if (typeof a !== typeof b || a === null || b === null) return false;
  if (typeof a === 'number') return Number.isNaN(a) && Number.isNaN(b);
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!equal(a[i]!, b[i]!)) return false;
    return true;
  }
  if (isObject(a)) {
    if (!isObject(b)) return false;
    const ka = Object.keys(a);
    if (ka.length !== Object.keys(b).length) return false;
    for (const k of ka) if (!Object.hasOwn(b, k) || !equal(a[k]!, b[k]!)) return false;
    return true;
  }
  return false;
}

/**
 * Orders two strings by code point (which is also the byte order of their UTF-8): JavaScript's own
 * `<` compares UTF-16 units, which puts U+E000..U+FFFF after every code point above U+FFFF.
 */
export function compareCodePoints(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    // a surrogate is part of a code point above U+FFFF: after any unit that is not one
    const xs = x >= 0xd800 && x <= 0xdfff;
    const ys = y >= 0xd800 && y <= 0xdfff;
    return xs === ys ? x - y : xs ? 1 : -1;
  }
  return a.length - b.length;
}

/** A number result, or null when arithmetic left the finite numbers. */
export function finite(n: number): Value {
  return Number.isFinite(n) ? n : null;
}

/** Converts a JSON-like value from outside (a parsed payload) into a Value; undefined becomes null. */
export function fromJson(v: unknown): Value {
  return v === undefined ? null : (v as Value);
}
