// Topic access control: which topics a device may publish to and which filters it may subscribe to.
// allowsTopic runs for every message, so the common filter shapes (an exact topic, `prefix/#`, `#`)
// are answered with a Set lookup or a startsWith, and the rest walk the strings in place.

import { EdgeError } from '../core/errors.js';

const SLASH = 0x2f;
const PLUS = 0x2b;
const HASH = 0x23;
const DOLLAR = 0x24;

/**
 * True when every topic `filter` can match is matched by `allowed` (MQTT 3.1.1 filters; `$` topics
 * are never matched by a leading `+`/`#`). False when either is not a well-formed filter.
 */
export function filterContains(allowed: string, filter: string): boolean {
  if (!isWellFormedFilter(allowed) || !isWellFormedFilter(filter)) return false;
  return levelsContain(allowed.split('/'), filter);
}

/** A device's publish or subscribe filters, compiled once. */
export class TopicAccess {
  readonly filters: readonly string[];
  private readonly exact = new Set<string>();
  private everything = false;
  /** `P/#` as [`P`, `P/`]: matches `P` itself and everything below it */
  private readonly prefixes: (readonly [string, string])[] = [];
  private readonly general: (readonly string[])[] = [];

  constructor(filters: readonly string[]) {
    this.filters = Object.freeze([...filters]);
    for (const filter of this.filters) this.compile(filter);
  }

  /** A publish to `topic` is allowed: some filter matches it. A topic holding a wildcard never is. */
  allowsTopic(topic: string): boolean {
    if (this.exact.has(topic)) return true;
    if (topic.length === 0 || hasWildcard(topic)) return false;
    if (this.everything && topic.charCodeAt(0) !== DOLLAR) return true;
    for (const [base, below] of this.prefixes) if (topic === base || topic.startsWith(below)) return true;
    for (const levels of this.general) if (levelsMatch(levels, topic)) return true;
    return false;
  }

  /** A subscription to `filter` is allowed: some filter contains every topic it can match. */
  allowsFilter(filter: string): boolean {
    if (!isWellFormedFilter(filter)) return false;
    if (this.exact.has(filter)) return true;
    if (this.everything && filter.charCodeAt(0) !== DOLLAR) return true;
    // `P/#` contains exactly the filters that are `P` or start with `P/`, wildcards after it included.
    for (const [base, below] of this.prefixes) if (filter === base || filter.startsWith(below)) return true;
    for (const levels of this.general) if (levelsContain(levels, filter)) return true;
    return false;
  }

  private compile(filter: string): void {
    if (!isWellFormedFilter(filter)) throw new EdgeError('E_ACL', `\`${filter}\` is not a valid MQTT topic filter`);
    if (!hasWildcard(filter)) this.exact.add(filter);
    else if (filter === '#') this.everything = true;
    else if (filter.endsWith('/#') && !hasWildcard(filter.slice(0, -2))) this.prefixes.push([filter.slice(0, -2), filter.slice(0, -1)]);
    else this.general.push(Object.freeze(filter.split('/')));
  }
}

function hasWildcard(s: string): boolean {
  return s.includes('+') || s.includes('#');
}

/** MQTT 3.1.1: not empty, no NUL, `#` only as the whole last level, `+` only as a whole level. */
function isWellFormedFilter(f: string): boolean {
  if (typeof f !== 'string' || f.length === 0) return false;
  const last = f.length - 1;
  for (let i = 0; i <= last; i++) {
    const c = f.charCodeAt(i);
    if (c === 0) return false;
    const startsLevel = i === 0 || f.charCodeAt(i - 1) === SLASH;
    if (c === HASH && (i !== last || !startsLevel)) return false;
    if (c === PLUS && (!startsLevel || (i !== last && f.charCodeAt(i + 1) !== SLASH))) return false;
  }
  return true;
}

/** The end (exclusive) of the level of `s` that starts at `pos`. */
function levelEnd(s: string, pos: number): number {
  const slash = s.indexOf('/', pos);
  return slash === -1 ? s.length : slash;
}

/** Does the filter given as levels match `topic`? Walks the topic in place, allocating nothing. */
function levelsMatch(levels: readonly string[], topic: string): boolean {
  if (topic.charCodeAt(0) === DOLLAR && (levels[0] === '+' || levels[0] === '#')) return false;
  let pos = 0; // where the topic's next level starts; past the end once the topic has no more levels
  for (const level of levels) {
    if (level === '#') return true; // also matches the parent: `a/#` matches `a`
    if (pos > topic.length) return false;
    const end = levelEnd(topic, pos);
    if (level !== '+' && (end - pos !== level.length || !topic.startsWith(level, pos))) return false;
    pos = end + 1;
  }
  return pos === topic.length + 1;
}

/** Does the filter given as levels contain every topic `filter` matches? `filter` is walked in place. */
function levelsContain(levels: readonly string[], filter: string): boolean {
  // A filter naming a `$` level reaches topics that a leading wildcard never matches.
  if (filter.charCodeAt(0) === DOLLAR && (levels[0] === '+' || levels[0] === '#')) return false;
  let pos = 0;
  for (const level of levels) {
    if (level === '#') return true;
    if (pos > filter.length) return false;
    const end = levelEnd(filter, pos);
    const single = end - pos === 1;
    // `#` in the filter reaches every depth, its parent included; only a `#` here could hold it.
    if (single && filter.charCodeAt(pos) === HASH) return false;
    // A literal level holds only itself (so not a `+` of the filter, which reaches other values too).
    if (level !== '+' && (end - pos !== level.length || !filter.startsWith(level, pos))) return false;
    pos = end + 1;
  }
  return pos === filter.length + 1;
}
