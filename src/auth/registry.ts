// The device registry file (devicesFile): YAML text in, device entries and problems out. Pure, so the
// live registry, the CLI and the tests all judge a file the same way. Every problem is collected, each
// with the file:line:col of the key or value at fault, so an operator fixes a file in one go.

import { isAlias, isMap, isScalar, isSeq, LineCounter, parseDocument, visit, type Document, type Pair } from 'yaml';
import { topicFilterProblem } from '../config/schema.js';
import { closestName } from '../core/did-you-mean.js';
import { EDGE_DEVICE_ID, isValidDeviceId } from '../core/message.js';
import { TopicAccess } from './acl.js';

export interface DeviceEntry {
  readonly id: string;
  readonly tokenSha256: string;
  /** default when absent: devices/<id>/# */
  readonly publish: TopicAccess;
  /** default when absent: devices/<id>/# and broadcast/# */
  readonly subscribe: TopicAccess;
  /** read by rules as device.<attr> */
  readonly attrs: Readonly<Record<string, string | number | boolean>>;
}

export interface RegistryProblem {
  source: string;
  line: number;
  col: number;
  /** where in the file: `[2].publish[0]`, `` for the document itself */
  key: string;
  code: 'E_REGISTRY';
  message: string;
}

/** A file larger than this is refused before it is parsed: no site has that many devices. */
export const MAX_REGISTRY_BYTES = 16 * 1024 * 1024;
/** Per list, publish or subscribe. */
export const MAX_FILTERS = 1000;
export const ATTR_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
export const REGISTRY_KEYS = ['id', 'tokenSha256', 'publish', 'subscribe', 'attrs'] as const;
const SHA256_HEX = /^[0-9a-fA-F]{64}$/;

export function defaultPublishFilters(id: string): string[] {
  return [`devices/${id}/#`];
}

export function defaultSubscribeFilters(id: string): string[] {
  return [`devices/${id}/#`, 'broadcast/#'];
}

export function formatRegistryProblem(p: RegistryProblem): string {
  return `${p.source}:${p.line}:${p.col}: ${p.key || '(root)'}: ${p.code}: ${p.message}`;
}

/**
 * Parses and checks a registry. `devices` holds every device, in file order, only when `problems` is
 * empty: a file with any problem yields no device at all, so nobody runs on half a registry.
 */
export function parseRegistry(text: string, source: string): { devices: ReadonlyMap<string, DeviceEntry>; problems: RegistryProblem[] } {
  const none: ReadonlyMap<string, DeviceEntry> = new Map();
  const bytes = Buffer.byteLength(text, 'utf8');
  if (bytes > MAX_REGISTRY_BYTES) {
    const message = `the file is ${bytes} bytes, more than the ${MAX_REGISTRY_BYTES} a registry may have`;
    return { devices: none, problems: [{ source, line: 1, col: 1, key: '', code: 'E_REGISTRY', message }] };
  }
  const checker = new Checker(text, source);
  const devices = checker.run();
  const problems = checker.problems.sort((a, b) => a.line - b.line || a.col - b.col);
  return problems.length > 0 ? { devices: none, problems } : { devices, problems };
}

type Node = unknown;

/** Walks one parsed file; problems accumulate in `problems`. */
class Checker {
  readonly problems: RegistryProblem[] = [];
  private readonly lineCounter = new LineCounter();
  private readonly doc: Document;
  /** id -> the line its first entry names it on, for duplicates */
  private readonly seen = new Map<string, number>();

  constructor(
    text: string,
    private readonly source: string,
  ) {
    this.doc = parseDocument(text, { lineCounter: this.lineCounter, prettyErrors: false, uniqueKeys: true });
  }

  run(): Map<string, DeviceEntry> {
    const devices = new Map<string, DeviceEntry>();
    for (const e of [...this.doc.errors, ...this.doc.warnings]) this.problem(e.pos[0], '', e.message);
    // A file with syntax errors may be cut anywhere; checking its keys would only add noise.
    if (this.problems.length > 0 || !this.aliasesAreSafe()) return devices;
    const root = this.deref(this.doc.contents);
    if (root === null || (isScalar(root) && root.value === null)) return devices; // empty, or only comments
    if (!isSeq(root)) {
      this.problem(this.offset(root), '', `the registry must be a list of devices (\`- id: pump-7\` ...), not ${describe(root)}`);
      return devices;
    }
    root.items.forEach((item, i) => {
      const entry = this.device(this.deref(item), `[${i}]`);
      if (entry) devices.set(entry.id, entry);
    });
    return devices;
  }

  /** Expands every alias once, within a budget: a few aliases may be handy, a billion laughs is not. */
  private aliasesAreSafe(): boolean {
    try {
      this.doc.toJS({ maxAliasCount: 100 });
      return true;
    } catch (err) {
      let offset = 0;
      visit(this.doc, {
        Alias(_key, node) {
          offset = node.range?.[0] ?? 0;
          return visit.BREAK;
        },
      });
      this.problem(offset, '', `${(err as Error).message}; write the values out instead of using aliases`);
      return false;
    }
  }

  private device(node: Node, key: string): DeviceEntry | null {
    if (!isMap(node)) {
      this.problem(this.offset(node), key, `each device must be a mapping with at least id and tokenSha256, not ${describe(node)}`);
      return null;
    }
    const before = this.problems.length;
    const fields = this.fields(node.items, key);
    const id = this.id(fields.get('id'), node, key);
    const tokenSha256 = this.tokenSha256(fields.get('tokenSha256'), node, key);
    const publish = this.filters(fields.get('publish'), `${key}.publish`);
    const subscribe = this.filters(fields.get('subscribe'), `${key}.subscribe`);
    const attrs = this.attrs(fields.get('attrs'), `${key}.attrs`);
    if (this.problems.length > before || id === undefined || tokenSha256 === undefined) return null;
    return Object.freeze({
      id,
      tokenSha256: tokenSha256.toLowerCase(),
      publish: new TopicAccess(publish ?? defaultPublishFilters(id)),
      subscribe: new TopicAccess(subscribe ?? defaultSubscribeFilters(id)),
      attrs: attrs ?? frozenAttrs([]),
    });
  }

  /** The item's keys, each known one with its pair; unknown and unreadable keys are problems. */
  private fields(pairs: readonly Pair[], key: string): Map<string, Pair> {
    const fields = new Map<string, Pair>();
    for (const pair of pairs) {
      const name = textOf(pair.key);
      if (name === undefined) {
        this.problem(this.offset(pair.key), key, `a key must be a plain name, one of ${REGISTRY_KEYS.join(', ')}`);
      } else if ((REGISTRY_KEYS as readonly string[]).includes(name)) {
        fields.set(name, pair);
      } else {
        const hint = closestName(name, REGISTRY_KEYS);
        const tail = hint ? `: did you mean \`${hint}\`?` : `; the keys are ${REGISTRY_KEYS.join(', ')}`;
        this.problem(this.offset(pair.key), `${key}.${name}`, `unknown key \`${name}\`${tail}`);
      }
    }
    return fields;
  }

  private id(pair: Pair | undefined, item: Node, key: string): string | undefined {
    if (!pair) {
      this.problem(this.offset(item), key, 'the device has no `id`');
      return undefined;
    }
    const at = this.valueOffset(pair);
    const id = textOf(this.deref(pair.value));
    if (id === undefined) {
      this.problem(at, `${key}.id`, `id must be a device id, not ${describe(this.deref(pair.value))}`);
    } else if (!isValidDeviceId(id)) {
      this.problem(at, `${key}.id`, `\`${id}\` is not a valid device id: 1 to 128 characters from A-Z a-z 0-9 _ . : -`);
    } else if (id === EDGE_DEVICE_ID) {
      this.problem(at, `${key}.id`, `\`${EDGE_DEVICE_ID}\` is reserved for the proxy's own messages; choose another id`);
    } else {
      const first = this.seen.get(id);
      if (first === undefined) {
        this.seen.set(id, this.lineCounter.linePos(at ?? 0).line);
        return id;
      }
      this.problem(at, `${key}.id`, `device id \`${id}\` is already used by the device on line ${first}; ids must be unique`);
    }
    return undefined;
  }

  private tokenSha256(pair: Pair | undefined, item: Node, key: string): string | undefined {
    if (!pair) {
      this.problem(this.offset(item), key, 'the device has no `tokenSha256`; `edge-proxy devices add` or `devices rotate` writes one');
      return undefined;
    }
    const value = textOf(this.deref(pair.value));
    if (value !== undefined && SHA256_HEX.test(value)) return value;
    const got = value === undefined ? describe(this.deref(pair.value)) : `${value.length} character${value.length === 1 ? '' : 's'}`;
    this.problem(
      this.valueOffset(pair),
      `${key}.tokenSha256`,
      `tokenSha256 must be the SHA-256 of the device's token as 64 hex characters (got ${got}); \`edge-proxy devices rotate\` writes a new one`,
    );
    return undefined;
  }

  /** publish or subscribe: undefined when absent (the defaults apply) or wrong. */
  private filters(pair: Pair | undefined, key: string): string[] | undefined {
    if (!pair) return undefined;
    const list = this.deref(pair.value);
    if (!isSeq(list)) {
      this.problem(
        this.valueOffset(pair),
        key,
        `must be a list of topic filters, as in ["devices/pump-7/#"], not ${describe(list)}; leave the key out for the default`,
      );
      return undefined;
    }
    if (list.items.length > MAX_FILTERS) {
      this.problem(
        this.valueOffset(pair),
        key,
        `${list.items.length} filters, more than the ${MAX_FILTERS} allowed; a shorter list with wildcards says the same`,
      );
      return undefined;
    }
    const filters: string[] = [];
    list.items.forEach((item, j) => {
      const node = this.deref(item);
      const filter = textOf(node);
      const at = this.offset(node) ?? this.valueOffset(pair);
      if (filter === undefined) {
        this.problem(at, `${key}[${j}]`, `must be a topic filter, not ${describe(node)}`);
        return;
      }
      const problem = topicFilterProblem(filter);
      if (problem === null) filters.push(filter);
      else this.problem(at, `${key}[${j}]`, `\`${filter}\` is not a valid topic filter: ${problem}`);
    });
    return filters;
  }

  private attrs(pair: Pair | undefined, key: string): Readonly<Record<string, string | number | boolean>> | undefined {
    if (!pair) return undefined;
    const map = this.deref(pair.value);
    if (!isMap(map)) {
      this.problem(this.valueOffset(pair), key, `must be a mapping of names to values, as in { location: hall-2 }, not ${describe(map)}`);
      return undefined;
    }
    const entries: [string, string | number | boolean][] = [];
    for (const attr of map.items) {
      const name = textOf(attr.key);
      if (name === undefined || !ATTR_NAME.test(name)) {
        const shown = name === undefined ? describe(attr.key) : `\`${name}\``;
        this.problem(
          this.offset(attr.key),
          name === undefined ? key : `${key}.${name}`,
          `${shown} is not an attribute name: a letter or _ then letters, digits or _, so rules can read it as device.<name>`,
        );
        continue;
      }
      if (name === 'id') {
        this.problem(this.offset(attr.key), `${key}.id`, 'an attribute cannot be named `id`: rules read the device id as device.id');
        continue;
      }
      const node = this.deref(attr.value);
      const value = isScalar(node) ? node.value : undefined;
      if (typeof value === 'string' || typeof value === 'boolean' || (typeof value === 'number' && Number.isFinite(value))) {
        entries.push([name, value]);
      } else {
        this.problem(
          this.valueOffset(attr),
          `${key}.${name}`,
          `an attribute must be a string, a finite number or a boolean, not ${describe(node)}`,
        );
      }
    }
    return frozenAttrs(entries);
  }

  private deref(node: Node): Node {
    return isAlias(node) ? (node.resolve(this.doc) ?? null) : node;
  }

  private problem(offset: number | undefined, key: string, message: string): void {
    const { line, col } = this.lineCounter.linePos(offset ?? 0);
    this.problems.push({ source: this.source, line, col, key, code: 'E_REGISTRY', message });
  }

  private offset(node: Node): number | undefined {
    if (typeof node !== 'object' || node === null || !('range' in node)) return undefined;
    return (node as { range?: readonly number[] | null }).range?.[0];
  }

  /** The value's position; the key's when the value is missing (`publish:` with nothing after it). */
  private valueOffset(pair: Pair): number | undefined {
    const value = pair.value;
    const empty = isScalar(value) && value.value === null && value.source === '';
    return (empty ? undefined : this.offset(value)) ?? this.offset(pair.key);
  }
}

/**
 * The text of a scalar. A plain scalar YAML reads as something else (`id: 007`, a hash that happens
 * to look like `1234e56...`) is taken as written: ids, hashes and filters are text.
 */
function textOf(node: Node): string | undefined {
  if (!isScalar(node)) return undefined;
  if (typeof node.value === 'string') return node.value;
  if (node.value !== null && node.type === 'PLAIN' && typeof node.source === 'string' && node.source !== '') return node.source;
  return undefined;
}

function describe(node: Node): string {
  if (isMap(node)) return 'a mapping';
  if (isSeq(node)) return 'a list';
  const value = isScalar(node) ? node.value : node;
  if (value === null || value === undefined) return 'an empty value';
  if (typeof value === 'string') return 'a string';
  if (typeof value === 'number' || typeof value === 'boolean') return `a ${typeof value} (${String(value)})`;
  return `a ${typeof value}`;
}

/** No prototype, so a rule asking for device.toString finds nothing rather than a function. */
function frozenAttrs(entries: readonly [string, string | number | boolean][]): Readonly<Record<string, string | number | boolean>> {
  const attrs = Object.fromEntries(entries) as Record<string, string | number | boolean>;
  Object.setPrototypeOf(attrs, null);
  return Object.freeze(attrs);
}
