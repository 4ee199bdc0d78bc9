// A model's yaml (docs/inference.md): what its ONNX file is fed and what its output means. Pure: text
// in, a spec or every problem with file:line:col out. Checking the spec against the ONNX file itself
// needs the runtime and happens in the registry.

import { isMap, LineCounter, parseDocument, type Document, type Node as YamlNode } from 'yaml';
import { closestName } from '../core/did-you-mean.js';

/** Where the numbers a model is fed come from in a message's payload: `payload.samples` → ['samples']. */
export type PayloadPath = readonly (string | number)[];

export interface ModelInput {
  tensor: string;
  /** a numeric array in each message */
  from: { path: PayloadPath; text: string } | null;
  /** or one numeric field per message, gathered per device: a run each `stride` new values once `size` are there */
  window: { path: PayloadPath; text: string; size: number; stride: number } | null;
  /** values per example: shorter inputs are refused, longer ones cut */
  length: number;
  /** (x - mean) / std, each a scalar or one value per position */
  normalize: { mean: number | readonly number[]; std: number | readonly number[] } | null;
}

export interface ModelSpec {
  name: string;
  version: string;
  input: ModelInput;
  output: {
    tensor: string;
    labels: readonly string[];
    /** a single score: labels[1] at or above it, else labels[0]; null: one score per label, arg-max */
    threshold: number | null;
  };
  batch: { maxSize: number; maxDelayMs: number };
}

export interface SpecProblem {
  file: string;
  line: number;
  col: number;
  key: string;
  message: string;
}

export const MAX_BATCH_SIZE = 1024;
export const MAX_INPUT_LENGTH = 1 << 20;
export const MAX_SPEC_BYTES = 1 << 20;
export const DEFAULT_BATCH = { maxSize: 32, maxDelayMs: 5 } as const;

const KEYS: Record<string, readonly string[]> = {
  '': ['name', 'version', 'input', 'output', 'batch'],
  input: ['tensor', 'from', 'window', 'length', 'normalize'],
  'input.window': ['field', 'size', 'stride'],
  'input.normalize': ['mean', 'std'],
  output: ['tensor', 'labels', 'threshold'],
  batch: ['maxSize', 'maxDelayMs'],
};

/** `payload.samples`, `payload.axes.x`, `payload.frames[0]` → the path under the payload, or null. */
export function parsePayloadPath(text: string): PayloadPath | null {
  const m = /^payload((?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])+)$/.exec(text);
  if (!m || m[1] === undefined) return null;
  const parts: (string | number)[] = [];
  for (const p of m[1].match(/\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\]/g) ?? []) {
    parts.push(p.startsWith('.') ? p.slice(1) : Number(p.slice(1, -1)));
  }
  return parts;
}

/** Reads `<name>.yaml`; `name` is the file's stem, which the `name` key must repeat when it is given. */
export function parseModelSpec(
  text: string,
  file: string,
  name: string,
  fallbackVersion: string,
): { spec: ModelSpec | null; problems: SpecProblem[] } {
  return new SpecReader(text, file).read(name, fallbackVersion);
}

class SpecReader {
  readonly problems: SpecProblem[] = [];
  private readonly lines = new LineCounter();
  private readonly doc: Document;

  constructor(
    text: string,
    private readonly file: string,
  ) {
    this.doc = parseDocument(text, { lineCounter: this.lines, prettyErrors: false, uniqueKeys: true });
  }

  read(stem: string, fallbackVersion: string): { spec: ModelSpec | null; problems: SpecProblem[] } {
    for (const e of this.doc.errors) this.problemAt(e.pos[0], '', e.message);
    if (this.problems.length > 0) return this.done(null);
    let root: unknown;
    try {
      root = this.doc.toJS({ maxAliasCount: 10 });
    } catch (err) {
      this.problemAt(0, '', (err as Error).message);
      return this.done(null);
    }
    if (!isRecord(root)) {
      this.problem([], 'a model file is a mapping with input, output and (optionally) name, version and batch');
      return this.done(null);
    }
    this.unknownKeys(root, []);
    const name = root['name'] === undefined ? stem : this.string(root['name'], ['name']);
    if (name !== undefined && name !== stem)
      this.problem(['name'], `the name is "${name}" but the file is ${stem}.yaml; the name must be the file's name`);
    const versionRaw = root['version'];
    const version =
      versionRaw === undefined
        ? fallbackVersion
        : typeof versionRaw === 'number'
          ? String(versionRaw)
          : this.string(versionRaw, ['version']);
    const input = this.input(root['input']);
    const output = this.output(root['output']);
    const batch = this.batch(root['batch']);
    if (this.problems.length > 0 || !input || !output || !batch || version === undefined) return this.done(null);
    return this.done({ name: stem, version, input, output, batch });
  }

  private done(spec: ModelSpec | null): { spec: ModelSpec | null; problems: SpecProblem[] } {
    return { spec: this.problems.length > 0 ? null : spec, problems: this.problems.sort((a, b) => a.line - b.line || a.col - b.col) };
  }

  private input(v: unknown): ModelInput | null {
    const at = ['input'];
    if (!isRecord(v)) {
      this.problem(
        at,
        v === undefined ? 'missing: say which tensor is fed and from where (input: { tensor, from, length })' : 'must be a mapping',
      );
      return null;
    }
    const tensor = this.requiredString(v, 'tensor', at);
    let from: ModelInput['from'] = null;
    let window: ModelInput['window'] = null;
    if (v['from'] !== undefined && v['window'] !== undefined) this.problem(['input', 'window'], 'give either from or window, not both');
    else if (v['from'] !== undefined) {
      const text = this.string(v['from'], ['input', 'from']);
      if (text !== undefined) {
        const path = parsePayloadPath(text);
        if (path) from = { path, text };
        else this.problem(['input', 'from'], `"${text}" is not a payload field: write payload.<field>, e.g. payload.samples`);
      }
    } else if (v['window'] !== undefined) {
      const w = v['window'];
      const wat = ['input', 'window'];
      if (!isRecord(w)) this.problem(wat, 'must be a mapping { field, size, stride }');
      else {
        const text = this.requiredString(w, 'field', wat);
        const size = this.integer(w['size'], [...wat, 'size'], 1, MAX_INPUT_LENGTH, true);
        const stride = w['stride'] === undefined ? size : this.integer(w['stride'], [...wat, 'stride'], 1, MAX_INPUT_LENGTH, true);
        const path = text === undefined ? null : parsePayloadPath(text);
        if (text !== undefined && !path)
          this.problem([...wat, 'field'], `"${text}" is not a payload field: write payload.<field>, e.g. payload.rms`);
        if (path && text !== undefined && size !== undefined && stride !== undefined) window = { path, text, size, stride };
      }
    } else this.problem(at, 'say where the values come from: from: payload.<array> or window: { field, size, stride }');
    let length = v['length'] === undefined ? window?.size : this.integer(v['length'], ['input', 'length'], 1, MAX_INPUT_LENGTH, true);
    if (v['length'] === undefined && !window && from) this.problem(at, 'length is missing: the number of values the model takes');
    if (window && length !== undefined && length !== window.size) {
      this.problem(['input', 'length'], `length ${length} differs from window.size ${window.size}; a window feeds exactly its size`);
      length = undefined;
    }
    const normalize = length === undefined ? null : this.normalize(v['normalize'], length);
    if (tensor === undefined || length === undefined || (!from && !window) || normalize === undefined) return null;
    return { tensor, from, window, length, normalize };
  }

  private normalize(v: unknown, length: number): ModelInput['normalize'] | undefined {
    if (v === undefined || v === null) return null;
    const at = ['input', 'normalize'];
    if (!isRecord(v)) {
      this.problem(at, 'must be a mapping { mean, std }');
      return undefined;
    }
    const each = (key: 'mean' | 'std', dflt: number): number | readonly number[] | undefined => {
      const x = v[key];
      if (x === undefined) return dflt;
      const ok = (n: unknown): n is number => typeof n === 'number' && Number.isFinite(n) && (key === 'mean' || n > 0);
      const what = key === 'std' ? 'a number > 0' : 'a number';
      if (typeof x === 'number') {
        if (ok(x)) return x;
        this.problem([...at, key], `must be ${what}, or a list of ${length} of them`);
        return undefined;
      }
      if (Array.isArray(x) && x.length === length && x.every(ok)) return x;
      this.problem(
        [...at, key],
        Array.isArray(x) && x.length !== length
          ? `has ${x.length} values but input.length is ${length}`
          : `must be ${what}, or a list of ${length} of them`,
      );
      return undefined;
    };
    const mean = each('mean', 0);
    const std = each('std', 1);
    return mean === undefined || std === undefined ? undefined : { mean, std };
  }

  private output(v: unknown): ModelSpec['output'] | null {
    const at = ['output'];
    if (!isRecord(v)) {
      this.problem(
        at,
        v === undefined ? 'missing: say which tensor holds the scores and their labels (output: { tensor, labels })' : 'must be a mapping',
      );
      return null;
    }
    const tensor = this.requiredString(v, 'tensor', at);
    let labels: string[] | undefined;
    const l = v['labels'];
    if (!Array.isArray(l) || l.length < 2 || !l.every((x) => typeof x === 'string' && x !== '')) {
      this.problem(
        ['output', 'labels'],
        l === undefined ? 'missing: the names of the classes, e.g. [healthy, fault]' : 'must be a list of at least two names',
      );
    } else if (new Set(l).size !== l.length) this.problem(['output', 'labels'], 'the labels must differ from each other');
    else labels = l as string[];
    let threshold: number | null = null;
    if (v['threshold'] !== undefined) {
      const t = v['threshold'];
      if (typeof t !== 'number' || !Number.isFinite(t)) this.problem(['output', 'threshold'], 'must be a number');
      else threshold = t;
      if (labels && labels.length !== 2)
        this.problem(['output', 'threshold'], `a single score with a threshold chooses between two labels, not ${labels.length}`);
    }
    if (tensor === undefined || !labels) return null;
    return { tensor, labels, threshold };
  }

  private batch(v: unknown): ModelSpec['batch'] | null {
    if (v === undefined) return { ...DEFAULT_BATCH };
    if (!isRecord(v)) {
      this.problem(['batch'], 'must be a mapping { maxSize, maxDelayMs }');
      return null;
    }
    const maxSize =
      v['maxSize'] === undefined ? DEFAULT_BATCH.maxSize : this.integer(v['maxSize'], ['batch', 'maxSize'], 1, MAX_BATCH_SIZE, false);
    let maxDelayMs: number | undefined = DEFAULT_BATCH.maxDelayMs;
    if (v['maxDelayMs'] !== undefined) {
      const d = v['maxDelayMs'];
      if (typeof d !== 'number' || !Number.isFinite(d) || d < 0 || d > 1000) {
        this.problem(['batch', 'maxDelayMs'], 'must be a number of milliseconds from 0 to 1000');
        maxDelayMs = undefined;
      } else maxDelayMs = d;
    }
    return maxSize === undefined || maxDelayMs === undefined ? null : { maxSize, maxDelayMs };
  }

  private unknownKeys(v: Record<string, unknown>, at: string[]): void {
    const known = KEYS[at.join('.')];
    if (!known) return;
    for (const [k, child] of Object.entries(v)) {
      if (!known.includes(k)) {
        const close = closestName(k, known);
        this.problem(
          [...at, k],
          `unknown key "${k}"${close ? `; did you mean "${close}"?` : `; the keys here are ${known.join(', ')}`}`,
          true,
        );
      } else if (isRecord(child)) this.unknownKeys(child, [...at, k]);
    }
  }

  private requiredString(v: Record<string, unknown>, key: string, at: string[]): string | undefined {
    if (v[key] === undefined) {
      this.problem(at, `${key} is missing`);
      return undefined;
    }
    return this.string(v[key], [...at, key]);
  }

  private string(v: unknown, at: string[]): string | undefined {
    if (typeof v === 'string' && v !== '') return v;
    this.problem(at, 'must be a non-empty text');
    return undefined;
  }

  private integer(v: unknown, at: string[], min: number, max: number, required: boolean): number | undefined {
    if (v === undefined && !required) return undefined;
    if (typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max) return v;
    this.problem(at, `must be a whole number from ${min} to ${max}`);
    return undefined;
  }

  /** A problem at a key path; `atKey` points at the key itself rather than its value. */
  private problem(path: string[], message: string, atKey = false): void {
    this.problemAt(this.offsetOf(path, atKey), path.join('.'), message);
  }

  private offsetOf(path: string[], atKey: boolean): number {
    let node: unknown = this.doc.contents;
    let offset = rangeStart(node);
    for (const key of path) {
      if (!isMap(node)) break;
      const pair = node.items.find((p) => (p.key as { value?: unknown } | null)?.value === key);
      if (!pair) break;
      offset = atKey && key === path[path.length - 1] ? rangeStart(pair.key) : rangeStart(pair.value ?? pair.key);
      node = pair.value;
    }
    return offset;
  }

  private problemAt(offset: number, key: string, message: string): void {
    const { line, col } = this.lines.linePos(offset);
    this.problems.push({ file: this.file, line, col, key, message });
  }
}

function rangeStart(node: unknown): number {
  return (node as YamlNode | null)?.range?.[0] ?? 0;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

export function formatSpecProblem(p: SpecProblem): string {
  return `${p.file}:${p.line}:${p.col}: ${p.key ? `${p.key}: ` : ''}${p.message}`;
}
