// Which rules may care about a topic: a trie over the scope filters of the rules, so that the
// cost per message grows with the rules in scope, not with the rules whose scope cannot match.

interface Node {
  children: Map<string, Node>;
  plus: Node | null;
  /** rules whose filter ends with `#` here (matching this level and everything below) */
  hash: number[];
  /** rules whose filter ends exactly here */
  exact: number[];
}

const node = (): Node => ({ children: new Map(), plus: null, hash: [], exact: [] });

// Topics repeat (a device sends on the same few topics), so each topic's answer is remembered.
const MAX_REMEMBERED = 20_000;
const MAX_REMEMBERED_LENGTH = 2_000_000;

export class TopicIndex {
  private readonly root = node();
  private readonly everywhere: number[] = [];
  private readonly remembered = new Map<string, Int32Array>();
  private rememberedLength = 0;

  /** Index rule `id` under each of `filters` (one conjunct of its scope); no filters: every topic. */
  add(id: number, filters: string[] | null): void {
    if (!filters) {
      this.everywhere.push(id);
      return;
    }
    for (const f of filters) {
      let n = this.root;
      const levels = f.split('/');
      let done = false;
      for (const level of levels) {
        if (level === '#') {
          n.hash.push(id);
          done = true;
          break;
        }
        if (level === '+') {
          n.plus ??= node();
          n = n.plus;
        } else {
          let c = n.children.get(level);
          if (!c) {
            c = node();
            n.children.set(level, c);
          }
          n = c;
        }
      }
      if (!done) n.exact.push(id);
    }
  }

  /** The rules that may have `topic` in scope, in rule order, each once. */
  candidates(topic: string): Int32Array {
    let hit = this.remembered.get(topic);
    if (hit) return hit;
    const found = new Set<number>(this.everywhere);
    const levels = topic.split('/');
    // [MQTT-4.7.2-1]: a filter starting with a wildcard does not match a topic starting with '$'.
    const dollar = topic.startsWith('$');
    const walk = (n: Node, i: number): void => {
      if (!(dollar && i === 0)) for (const id of n.hash) found.add(id);
      if (i === levels.length) {
        for (const id of n.exact) found.add(id);
        return;
      }
      const c = n.children.get(levels[i]!);
      if (c) walk(c, i + 1);
      if (n.plus && !(dollar && i === 0)) walk(n.plus, i + 1);
    };
    walk(this.root, 0);
    hit = Int32Array.from(found).sort();
    // Bounded by entries and by their total length: many distinct topics times many rules
    // without a scope must not fill the heap.
    if (this.remembered.size >= MAX_REMEMBERED || this.rememberedLength + hit.length > MAX_REMEMBERED_LENGTH) {
      this.remembered.clear();
      this.rememberedLength = 0;
    }
    this.remembered.set(topic, hit);
    this.rememberedLength += hit.length;
    return hit;
  }
}
