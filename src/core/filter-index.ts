// A subscription index: values (observations, connections) under MQTT topic filters, and the values
// whose filters match a topic, found by walking a trie of filter levels. The cost of a match grows
// with the trie nodes the topic can reach, not with the values indexed under filters it cannot
// match; the trie shrinks as filters go, so its memory follows what is indexed. Matching is exactly
// topicMatches (topic.ts), whatever the filter: `+` one level, `#` this level and every one below
// (what follows a `#` is never read), and no wildcard at the first level matches a `$` topic
// [MQTT-4.7.2-1]. Loops, not recursion: a topic of 64 KiB of `/` is 65,536 levels.

interface Node<V> {
  readonly parent: Node<V> | null;
  /** its level in the parent's `children`; null for the parent's `+` */
  readonly level: string | null;
  children: Map<string, Node<V>> | null;
  plus: Node<V> | null;
  /** values under filters that end here, with how many times each was added */
  exact: Map<V, number> | null;
  /** values under filters whose `#` stands here */
  rest: Map<V, number> | null;
}

const node = <V>(parent: Node<V> | null, level: string | null): Node<V> => ({
  parent,
  level,
  children: null,
  plus: null,
  exact: null,
  rest: null,
});

const EMPTY: readonly never[] = Object.freeze([]);

/**
 * Additions are counted: a value added twice under one filter (or under two filters that end at the
 * same place, `a/#/x` and `a/#/y`) stays until it is removed as often.
 */
export class FilterIndex<V> {
  private readonly root: Node<V> = node(null, null);
  private entries = 0;
  private nodes = 0;

  add(filter: string, value: V): void {
    let n = this.root;
    for (const level of filter.split('/')) {
      if (level === '#') {
        n.rest = count(n.rest, value, 1);
        this.entries++;
        return;
      }
      n = level === '+' ? (n.plus ??= this.grow(n, null)) : this.childOf(n, level);
    }
    n.exact = count(n.exact, value, 1);
    this.entries++;
  }

  /** Undo one `add(filter, value)`; false when there was none to undo. */
  remove(filter: string, value: V): boolean {
    let n: Node<V> | null = this.root;
    let hash = false;
    for (const level of filter.split('/')) {
      if (level === '#') {
        hash = true;
        break;
      }
      n = level === '+' ? n.plus : (n.children?.get(level) ?? null);
      if (!n) return false;
    }
    const slot = hash ? n.rest : n.exact;
    if (!slot?.has(value)) return false;
    const left = count(slot, value, -1);
    if (hash) n.rest = left;
    else n.exact = left;
    this.entries--;
    this.prune(n);
    return true;
  }

  /**
   * The values with a filter that matches `topic`, each once however many of its filters match. A
   * copy: the caller may add and remove while it goes through them.
   */
  match(topic: string): readonly V[] {
    if (this.entries === 0) return EMPTY;
    const levels = topic.split('/');
    // [MQTT-4.7.2-1]: a filter whose first level is a wildcard does not match a topic starting with `$`.
    const dollar = topic.startsWith('$');
    const hits: Array<Map<V, number>> = [];
    const stack: Array<Node<V>> = [this.root];
    const depth: number[] = [0];
    for (;;) {
      const n = stack.pop();
      if (!n) break;
      const i = depth.pop()!;
      const wild = !(dollar && i === 0);
      if (n.rest && wild) hits.push(n.rest);
      if (i === levels.length) {
        if (n.exact) hits.push(n.exact);
        continue;
      }
      const c = n.children?.get(levels[i]!);
      if (c) {
        stack.push(c);
        depth.push(i + 1);
      }
      if (n.plus && wild) {
        stack.push(n.plus);
        depth.push(i + 1);
      }
    }
    if (hits.length === 0) return EMPTY;
    if (hits.length === 1) return [...hits[0]!.keys()];
    const once = new Set<V>();
    for (const slot of hits) for (const v of slot.keys()) once.add(v);
    return [...once];
  }

  /** Additions not yet removed. */
  get size(): number {
    return this.entries;
  }

  /** Trie nodes besides the root: zero once everything was removed. */
  get nodeCount(): number {
    return this.nodes;
  }

  private childOf(n: Node<V>, level: string): Node<V> {
    n.children ??= new Map();
    let c = n.children.get(level);
    if (!c) {
      c = this.grow(n, level);
      n.children.set(level, c);
    }
    return c;
  }

  private grow(parent: Node<V>, level: string | null): Node<V> {
    this.nodes++;
    return node(parent, level);
  }

  /** Drop `n` and each ancestor left holding nothing, up to the root. */
  private prune(n: Node<V>): void {
    let cur = n;
    while (cur.parent && !cur.exact && !cur.rest && !cur.plus && !cur.children) {
      const p = cur.parent;
      if (cur.level === null) p.plus = null;
      else {
        p.children!.delete(cur.level);
        if (p.children!.size === 0) p.children = null;
      }
      this.nodes--;
      cur = p;
    }
  }
}

/** `slot` with `value`'s count moved by `delta`; null once it holds nothing. */
function count<V>(slot: Map<V, number> | null, value: V, delta: 1 | -1): Map<V, number> | null {
  const m = slot ?? new Map<V, number>();
  const n = (m.get(value) ?? 0) + delta;
  if (n > 0) m.set(value, n);
  else m.delete(value);
  return m.size > 0 ? m : null;
}
