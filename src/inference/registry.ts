// The models directory: `<name>.onnx` + `<name>.yaml` pairs, loaded at start and again whenever their
// files change. A pair is swapped in only once its session is created and its yaml fits the file, so
// a bad model never stops the proxy and never replaces a good one.

import { createHash } from 'node:crypto';
import { existsSync, readdirSync, statSync, watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { checkModelFit } from './model-check.js';
import { formatSpecProblem, MAX_SPEC_BYTES, parseModelSpec, type ModelSpec } from './model-spec.js';
import type { SessionWorker } from './session-worker.js';

/** A model whose session is in the worker. Batches hold it while they run. */
export interface LoadedModel {
  readonly name: string;
  readonly version: string;
  readonly spec: ModelSpec;
  /** the worker's session key: a new one for every load, so a batch never runs on another version */
  readonly key: string;
  readonly batchOfOne: boolean;
  readonly loadedAt: number;
  readonly sha256: string;
}

export interface ModelStatus {
  name: string;
  state: 'ready' | 'failed';
  version: string | null;
  loadedAt: string | null;
  /** why the last load failed; while an earlier version runs, state stays ready */
  error: string | null;
  input: { tensor: string; length: number; source: string } | null;
  labels: string[];
  batch: { maxSize: number; maxDelayMs: number } | null;
}

export interface ModelRegistryEvents {
  loaded(name: string): void;
  loadFailed(name: string): void;
}

export interface ModelRegistryOptions {
  dir: string;
  threads: number;
  worker: SessionWorker;
  events: ModelRegistryEvents;
  log: Logger;
}

/** Editors save in several steps (write, rename, chmod): one load after they settle. */
const SETTLE_MS = 200;
/** fs.watch misses a directory created after start and some network file systems: a cheap look as well. */
const POLL_MS = 5000;
/** Larger files are refused before they are read: a board has no memory for them. */
export const MAX_MODEL_BYTES = 256 * 1024 * 1024;

interface Entry {
  current: LoadedModel | null;
  /** what the last attempt read, so that an unchanged pair is not loaded again */
  fingerprint: string;
  error: string | null;
}

interface Held {
  users: number;
  retired: boolean;
}

export class ModelRegistry {
  private readonly entries = new Map<string, Entry>();
  private readonly held = new Map<string, Held>();
  private generation = 0;
  private scanning: Promise<void> = Promise.resolve();
  private rescan = false;
  private watcher: FSWatcher | null = null;
  private settleTimer: NodeJS.Timeout | null = null;
  private pollTimer: NodeJS.Timeout | null = null;
  private stopped = false;

  constructor(private readonly opts: ModelRegistryOptions) {
    opts.worker.on('restart', () => {
      // The sessions died with the worker: no model runs until it is loaded again.
      for (const [name, e] of this.entries) {
        e.fingerprint = '';
        if (!e.current) continue;
        this.opts.log.warn({ model: name }, `model "${name}" is loaded again: the inference worker stopped and was restarted`);
        this.retire(e.current);
        e.current = null;
        e.error = 'loading again: the inference worker stopped and was restarted';
      }
      this.schedule(0);
    });
  }

  async start(): Promise<void> {
    if (!existsSync(this.opts.dir))
      this.opts.log.info(
        { dir: this.opts.dir },
        'no models directory: infer() fails until one holds a model (the proxy looks again every few seconds)',
      );
    await this.scan();
    this.watch();
    this.pollTimer = setInterval(() => {
      if (!this.watcher) this.watch();
      // Not while a change settles: a look now could take a new .onnx with the old .yaml.
      if (!this.settleTimer) this.schedule(0);
    }, POLL_MS);
    this.pollTimer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.watcher?.close();
    this.watcher = null;
    if (this.settleTimer) clearTimeout(this.settleTimer);
    if (this.pollTimer) clearInterval(this.pollTimer);
    await this.scanning;
  }

  /** The running version of a model, held until `release`: a swap waits for it before dropping the session. */
  acquire(name: string): LoadedModel | null {
    const m = this.entries.get(name)?.current ?? null;
    if (m) this.holdOf(m.key).users++;
    return m;
  }

  release(model: LoadedModel): void {
    const h = this.held.get(model.key);
    if (!h) return;
    h.users--;
    this.dropIfDone(model.key, h);
  }

  names(): string[] {
    return [...this.entries]
      .filter(([, e]) => e.current)
      .map(([n]) => n)
      .sort();
  }

  /** The model as it runs now, without holding it. */
  peek(name: string): LoadedModel | null {
    return this.entries.get(name)?.current ?? null;
  }

  status(): ModelStatus[] {
    return [...this.entries.entries()]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([name, e]) => {
        const m = e.current;
        const input = m?.spec.input;
        return {
          name,
          state: m ? 'ready' : 'failed',
          version: m?.version ?? null,
          loadedAt: m ? new Date(m.loadedAt).toISOString() : null,
          error: e.error,
          input: input
            ? { tensor: input.tensor, length: input.length, source: input.from?.text ?? `window of ${input.window?.text}` }
            : null,
          labels: m ? [...m.spec.output.labels] : [],
          batch: m ? { ...m.spec.batch } : null,
        };
      });
  }

  /** Look at the directory again now (tests, and the admin API after an upload). */
  reload(): Promise<void> {
    return this.scan();
  }

  private holdOf(key: string): Held {
    let h = this.held.get(key);
    if (!h) this.held.set(key, (h = { users: 0, retired: false }));
    return h;
  }

  private dropIfDone(key: string, h: Held): void {
    if (!h.retired || h.users > 0) return;
    this.held.delete(key);
    void this.opts.worker.release(key);
  }

  private retire(model: LoadedModel): void {
    const h = this.holdOf(model.key);
    h.retired = true;
    this.dropIfDone(model.key, h);
  }

  private watch(): void {
    if (this.stopped || this.watcher || !existsSync(this.opts.dir)) return;
    try {
      this.watcher = watch(this.opts.dir, () => this.schedule(SETTLE_MS));
      this.watcher.on('error', () => {
        this.watcher?.close();
        this.watcher = null;
      });
    } catch {
      this.watcher = null;
    }
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    if (this.settleTimer) clearTimeout(this.settleTimer);
    this.settleTimer = setTimeout(() => {
      this.settleTimer = null;
      void this.scan();
    }, ms);
    this.settleTimer.unref();
  }

  /** One scan at a time; a change seen during a scan gets one more. */
  private scan(): Promise<void> {
    this.rescan = true;
    this.scanning = this.scanning
      .then(async () => {
        while (this.rescan && !this.stopped) {
          this.rescan = false;
          await this.scanOnce();
        }
      })
      .catch((err: unknown) => {
        // The next change or look tries again; a fault here must never end the proxy.
        this.opts.log.error({ dir: this.opts.dir, err: (err as Error).message }, 'reading the models directory failed');
      });
    return this.scanning;
  }

  private async scanOnce(): Promise<void> {
    const dir = this.opts.dir;
    let files: string[];
    try {
      files = readdirSync(dir);
    } catch {
      files = []; // no directory (yet): no models
    }
    const stems = new Set<string>();
    for (const f of files) {
      const m = /^(.+)\.(onnx|yaml|yml)$/.exec(f);
      if (m?.[1] && /^[A-Za-z0-9_.-]{1,64}$/.test(m[1])) stems.add(m[1]);
    }
    for (const [name, e] of this.entries) {
      if (stems.has(name)) continue;
      if (e.current) {
        this.opts.log.info(
          { model: name, version: e.current.version },
          `model "${name}" removed from the models directory; infer("${name}") fails from now on`,
        );
        this.retire(e.current);
      }
      this.entries.delete(name);
    }
    for (const name of [...stems].sort()) {
      if (this.stopped) return;
      await this.loadPair(name, files);
    }
  }

  private async loadPair(name: string, files: string[]): Promise<void> {
    const dir = this.opts.dir;
    const yamlName = files.includes(`${name}.yaml`) ? `${name}.yaml` : `${name}.yml`;
    const onnxFile = join(dir, `${name}.onnx`);
    const yamlFile = join(dir, yamlName);
    const entry = this.entries.get(name) ?? { current: null, fingerprint: '', error: null };
    this.entries.set(name, entry);
    const fingerprint = stamp(onnxFile) + '|' + stamp(yamlFile);
    if (fingerprint === entry.fingerprint) return;
    entry.fingerprint = fingerprint;

    const fail = (message: string): void => {
      entry.error = message;
      this.opts.events.loadFailed(name);
      const keeps = entry.current ? `; version ${entry.current.version} keeps running` : `; infer("${name}") fails until it is fixed`;
      this.opts.log.error({ model: name, code: 'E_MODEL', err: message }, `model "${name}" not loaded: ${message}${keeps}`);
    };
    if (!files.includes(`${name}.onnx`)) return fail(`${yamlName} has no ${name}.onnx beside it`);
    if (!files.includes(yamlName)) return fail(`${name}.onnx has no ${name}.yaml beside it (what it is fed and what its scores mean)`);
    let onnx: Buffer;
    let yamlText: string;
    try {
      const size = statSync(onnxFile).size;
      if (size > MAX_MODEL_BYTES) return fail(`${name}.onnx is ${size} bytes, more than the ${MAX_MODEL_BYTES} a model may have`);
      if (statSync(yamlFile).size > MAX_SPEC_BYTES) return fail(`${yamlName} is larger than ${MAX_SPEC_BYTES} bytes`);
      // Read off the event loop: a model of tens of MB on an SD card takes a while.
      onnx = await readFile(onnxFile);
      yamlText = await readFile(yamlFile, 'utf8');
    } catch (err) {
      return fail(`cannot read the files: ${(err as Error).message}`);
    }
    const onnxHash = await sha256Off(onnx);
    const sha256 = createHash('sha256').update(onnxHash).update('\0').update(yamlText).digest('hex');
    if (entry.current?.sha256 === sha256) {
      entry.error = null;
      return;
    }
    const { spec, problems } = parseModelSpec(yamlText, yamlFile, name, `sha256:${onnxHash.slice(0, 12)}`);
    if (!spec) return fail(problems.map(formatSpecProblem).join('; '));

    const key = `${name}#${++this.generation}`;
    let meta;
    try {
      meta = await this.opts.worker.load(key, onnx, this.opts.threads);
    } catch (err) {
      return fail(`${onnxFile}: ONNX Runtime cannot load it: ${(err as Error).message.replace(/\.$/, '')}`);
    }
    const fit = checkModelFit(spec, onnxFile, yamlFile, meta.inputs, meta.outputs);
    if (fit.problems.length > 0) {
      void this.opts.worker.release(key);
      return fail(fit.problems.join('; '));
    }
    const old = entry.current;
    entry.current = { name, version: spec.version, spec, key, batchOfOne: fit.batchOfOne, loadedAt: Date.now(), sha256 };
    entry.error = null;
    this.opts.events.loaded(name);
    this.opts.log.info(
      {
        model: name,
        version: spec.version,
        previous: old?.version ?? null,
        input: spec.input.tensor,
        length: spec.input.length,
        labels: spec.output.labels,
      },
      old
        ? `model "${name}" reloaded: version ${spec.version} replaces ${old.version}`
        : `model "${name}" loaded (version ${spec.version})`,
    );
    if (old) this.retire(old);
  }
}

function stamp(file: string): string {
  try {
    const s = statSync(file);
    return `${s.size}:${s.mtimeMs}:${s.ino}`;
  } catch {
    return '-';
  }
}

/** sha256 in slices, yielding between them: a large model must not hold the event loop. */
async function sha256Off(bytes: Uint8Array): Promise<string> {
  const hash = createHash('sha256');
  const SLICE = 4 * 1024 * 1024;
  for (let i = 0; i < bytes.byteLength; i += SLICE) {
    hash.update(bytes.subarray(i, i + SLICE));
    if (i + SLICE < bytes.byteLength) await new Promise((resolve) => setImmediate(resolve));
  }
  return hash.digest('hex');
}
