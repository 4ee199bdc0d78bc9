// Values of the rule language and their semantics: missing data is null, never an error.

export type Value = null | boolean | number | string | Value[] | { [key: string]: Value };

/** Names that never read as a field, whatever the object holds: no way to the prototype. */
const BLOCKED = new Set(['__proto__', 'constructor', 'prototype']);

export function isObject(v: unknown): v is { [key: string]: Value } {
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
  if (typeof a === 'number') return Number.isNaN(a) && Number.isNaN(b as number);
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

/** A number result, or null when arithmetic left the finite numbers. */
export function finite(n: number): Value {
  return Number.isFinite(n) ? n : null;
}

/** Converts a JSON-like value from outside (a parsed payload) into a Value; undefined becomes null. */
export function fromJson(v: unknown): Value {
  return v === undefined ? null : (v as Value);
}
