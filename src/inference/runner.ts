// infer(): inputs from every device queued per model, run together in micro-batches on the worker,
// and each result handed back as a derived message's payload. The queue is bounded (the oldest input
// is shed, counted) and so are the per-device windows (in bytes, the least recently fed goes first).

import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import type { EdgeMessage } from '../core/message.js';
import { index, member, type Value } from '../rules/values.js';
import type { PayloadPath } from './model-spec.js';
import type { LoadedModel, ModelRegistry } from './registry.js';
import type { SessionWorker } from './session-worker.js';

/** One infer() action on one message. */
export interface InferRequest {
  rule: string;
  model: string;
  /** the result's topic; null: ml/<model>/<deviceId> */
  to: string | null;
  msg: EdgeMessage;
  /** the decoded payload, decoded only when needed */
  payload: () => Value;
}

/** A result, ready to become a derived message of `parent` on `topic`. */
export interface InferenceResult {
  parent: EdgeMessage;
  rule: string;
  topic: string;
  payload: Value;
}

export type InferenceErrorReason = 'unknown_model' | 'input' | 'run' | 'output' | 'load' | 'unloaded' | 'stopping';

export interface InferenceEvents {
  result(model: string, label: string, inputSeconds: number): void;
  batch(model: string, size: number, seconds: number): void;
  error(model: string, reason: InferenceErrorReason): void;
  shed(model: string): void;
  windowEvicted(model: string): void;
  windowBytes(bytes: number): void;
}

export interface InferenceRunnerOptions {
  /** inputs waiting per model; past it the oldest is shed */
  queueSize: number;
  /** all per-device windows together */
  windowBytes: number;
}

interface Queued {
  req: InferRequest;
  /** the numbers, as the payload or the window gave them: cut and normalized when the batch is made */
  source: ArrayLike<Value | number>;
  arrived: number;
}

interface Window {
  /** the model version whose window.size it was made for */
  key: string;
  values: Float32Array;
  /** values seen so far, and since the last run */
  filled: number;
  sinceRun: number;
  next: number;
}

interface ModelState {
  queue: Queued[];
  running: boolean;
  timer: NodeJS.Timeout | null;
  stats: ModelStats;
}

export interface ModelStats {
  inferences: number;
  byLabel: Record<string, number>;
  errors: number;
  shed: number;
  /** recent arrival → result times (ms), for the status page's percentiles */
  recentMs: number[];
}

const RECENT = 512;
const WINDOW_OVERHEAD_BYTES = 160;

export class InferenceRunner {
  private readonly models = new Map<string, ModelState>();
  /** per `model\0deviceId`, least recently fed first */
  private readonly windows = new Map<string, Window>();
  private windowBytesHeld = 0;
  private stopped = false;

  constructor(
    private readonly opts: InferenceRunnerOptions,
    private readonly registry: ModelRegistry,
    private readonly worker: SessionWorker,
    private readonly events: InferenceEvents,
    private readonly log: Logger,
    private readonly deliver: (r: InferenceResult) => void,
  ) {}

  /**
   * Queues the message for the model; null when it is queued (or waits for more window values),
   * else why not, for the rule's error count and log line.
   */
  submit(req: InferRequest): string | null {
    if (this.stopped) return 'the proxy is stopping';
    const model = this.registry.peek(req.model);
    if (!model) {
      this.events.error(req.model, 'unknown_model');
      const known = this.registry.names();
      return `no model "${req.model}" is loaded (${known.length > 0 ? `loaded: ${known.join(', ')}` : 'the models directory holds none'})`;
    }
    const input = model.spec.input;
    let source: ArrayLike<Value | number> | null;
    if (input.from) {
      const v = at(req.payload(), input.from.path);
      if (!Array.isArray(v))
        return this.refuse(req.model, `${input.from.text} is ${v === undefined ? 'missing' : `not a list (${describe(v)})`}`);
      if (v.length < input.length)
        return this.refuse(req.model, `${input.from.text} has ${v.length} values; model "${req.model}" takes ${input.length}`);
      source = v;
    } else {
      const w = input.window;
      if (!w) return this.refuse(req.model, 'the model has no input source');
      const v = at(req.payload(), w.path);
      if (typeof v !== 'number' || !Number.isFinite(v))
        return this.refuse(req.model, `${w.text} is ${v === undefined ? 'missing' : `not a number (${describe(v)})`}`);
      source = this.feedWindow(model, req.msg.deviceId, v);
      if (!source) return null;
    }
    const state = this.stateOf(req.model);
    if (state.queue.length >= this.opts.queueSize) {
      state.queue.shift();
      state.stats.shed++;
      this.events.shed(req.model);
    }
    state.queue.push({ req, source, arrived: performance.now() });
    this.pump(req.model, state);
    return null;
  }

  stats(name: string): ModelStats | null {
    return this.models.get(name)?.stats ?? null;
  }

  queued(name: string): number {
    return this.models.get(name)?.queue.length ?? 0;
  }

  stop(): void {
    this.stopped = true;
    for (const [name, s] of this.models) {
      if (s.timer) clearTimeout(s.timer);
      for (let i = 0; i < s.queue.length; i++) this.events.error(name, 'stopping');
      s.queue = [];
    }
    this.windows.clear();
    this.windowBytesHeld = 0;
  }

  private refuse(model: string, why: string): string {
    this.events.error(model, 'input');
    this.stateOf(model).stats.errors++;
    return why;
  }

  private stateOf(name: string): ModelState {
    let s = this.models.get(name);
    if (!s) {
      s = { queue: [], running: false, timer: null, stats: { inferences: 0, byLabel: {}, errors: 0, shed: 0, recentMs: [] } };
      this.models.set(name, s);
    }
    return s;
  }

  /** The window's values in order once `size` are there and `stride` arrived since the last run; else null. */
  private feedWindow(model: LoadedModel, deviceId: string, value: number): Float32Array | null {
    const spec = model.spec.input.window;
    if (!spec) return null;
    const id = `${model.name}\0${deviceId}`;
    let w = this.windows.get(id);
    if (w && w.key !== model.key) {
      // A new version may gather another size: its window starts afresh.
      this.dropWindow(id, w);
      w = undefined;
    }
    if (w) this.windows.delete(id);
    else {
      const bytes = spec.size * 4 + WINDOW_OVERHEAD_BYTES + id.length;
      while (this.windowBytesHeld + bytes > this.opts.windowBytes && this.windows.size > 0) {
        const [oldId, old] = this.windows.entries().next().value as [string, Window];
        this.dropWindow(oldId, old);
        this.events.windowEvicted(oldId.slice(0, oldId.indexOf('\0')));
      }
      if (this.windowBytesHeld + bytes > this.opts.windowBytes) return null;
      w = { key: model.key, values: new Float32Array(spec.size), filled: 0, sinceRun: 0, next: 0 };
      this.windowBytesHeld += bytes;
      this.events.windowBytes(this.windowBytesHeld);
    }
    this.windows.set(id, w); // most recently fed last
    w.values[w.next] = value;
    w.next = (w.next + 1) % spec.size;
    w.filled = Math.min(spec.size, w.filled + 1);
    w.sinceRun++;
    if (w.filled < spec.size || w.sinceRun < spec.stride) return null;
    w.sinceRun = 0;
    const ordered = new Float32Array(spec.size);
    ordered.set(w.values.subarray(w.next), 0);
    ordered.set(w.values.subarray(0, w.next), spec.size - w.next);
    return ordered;
  }

  private dropWindow(id: string, w: Window): void {
    this.windows.delete(id);
    this.windowBytesHeld -= w.values.length * 4 + WINDOW_OVERHEAD_BYTES + id.length;
    this.events.windowBytes(this.windowBytesHeld);
  }

  /** Runs a batch when it is full or its oldest input has waited maxDelayMs; one batch per model at a time. */
  private pump(name: string, state: ModelState): void {
    if (state.running || state.queue.length === 0 || this.stopped) return;
    const model = this.registry.acquire(name);
    if (!model) {
      for (let i = 0; i < state.queue.length; i++) this.events.error(name, 'unloaded');
      state.stats.errors += state.queue.length;
      this.log.warn({ model: name, dropped: state.queue.length }, `model "${name}" was removed with inputs queued; they are dropped`);
      state.queue = [];
      return;
    }
    const max = model.batchOfOne ? 1 : model.spec.batch.maxSize;
    const first = state.queue[0];
    const waited = first ? performance.now() - first.arrived : 0;
    if (state.queue.length < max && waited < model.spec.batch.maxDelayMs) {
      this.registry.release(model);
      if (!state.timer) {
        state.timer = setTimeout(() => {
          state.timer = null;
          this.pump(name, state);
        }, model.spec.batch.maxDelayMs - waited);
      }
      return;
    }
    if (state.timer) {
      clearTimeout(state.timer);
      state.timer = null;
    }
    const taken = state.queue.splice(0, max);
    this.run(model, state, taken);
  }

  private run(model: LoadedModel, state: ModelState, taken: Queued[]): void {
    const { length, normalize } = model.spec.input;
    const data = new Float32Array(taken.length * length);
    const items: Queued[] = [];
    for (const item of taken) {
      const row = items.length * length;
      let ok = true;
      for (let j = 0; j < length; j++) {
        const v = item.source[j];
        if (typeof v !== 'number' || !Number.isFinite(v)) {
          ok = false;
          break;
        }
        data[row + j] = normalize ? (v - pick(normalize.mean, j)) / pick(normalize.std, j) : v;
      }
      if (ok) items.push(item);
      else {
        this.events.error(model.name, 'input');
        state.stats.errors++;
      }
    }
    if (items.length === 0) {
      this.registry.release(model);
      this.pump(model.name, state);
      return;
    }
    state.running = true;
    const started = performance.now();
    // Transferred to the worker: a copy only when refused inputs left rows unused.
    const rows = items.length === taken.length ? data : data.slice(0, items.length * length);
    this.worker
      .run(model.key, model.spec.input.tensor, model.spec.output.tensor, rows, items.length, length)
      .then(
        (out) => {
          this.events.batch(model.name, items.length, (performance.now() - started) / 1000);
          this.results(model, state, items, out.data, out.dims);
        },
        (err: Error) => {
          for (let i = 0; i < items.length; i++) this.events.error(model.name, this.stopped ? 'stopping' : 'run');
          state.stats.errors += items.length;
          if (!this.stopped)
            this.log.error(
              { model: model.name, version: model.version, inputs: items.length, err: err.message },
              `model "${model.name}" failed to run a batch; its inputs are dropped`,
            );
        },
      )
      .finally(() => {
        state.running = false;
        this.registry.release(model);
        this.pump(model.name, state);
      });
  }

  private results(model: LoadedModel, state: ModelState, items: Queued[], out: Float32Array, dims: number[]): void {
    const labels = model.spec.output.labels;
    const threshold = model.spec.output.threshold;
    const width = threshold === null ? labels.length : 1;
    if (dims.length !== 2 || dims[0] !== items.length || dims[1] !== width) {
      for (let i = 0; i < items.length; i++) this.events.error(model.name, 'output');
      state.stats.errors += items.length;
      this.log.error(
        { model: model.name, dims },
        `model "${model.name}" gave output of shape [${dims.join(',')}], not [${items.length},${width}]; its results are dropped`,
      );
      return;
    }
    const now = performance.now();
    items.forEach((item, i) => {
      const scores: Record<string, number> = {};
      let label: string;
      if (threshold !== null) {
        const s = out[i] ?? NaN;
        scores[labels[0] ?? ''] = round6(1 - s);
        scores[labels[1] ?? ''] = round6(s);
        label = (s >= threshold ? labels[1] : labels[0]) ?? '';
        if (!Number.isFinite(s)) label = '';
      } else {
        let best = -1;
        let bestScore = -Infinity;
        for (let k = 0; k < width; k++) {
          const s = out[i * width + k] ?? NaN;
          scores[labels[k] ?? ''] = round6(s);
          if (s > bestScore) {
            bestScore = s;
            best = k;
          }
        }
        label = best >= 0 && Number.isFinite(bestScore) ? (labels[best] ?? '') : '';
      }
      if (label === '') {
        this.events.error(model.name, 'output');
        state.stats.errors++;
        return;
      }
      const latencyMs = now - item.arrived;
      state.stats.inferences++;
      state.stats.byLabel[label] = (state.stats.byLabel[label] ?? 0) + 1;
      if (state.stats.recentMs.length >= RECENT) state.stats.recentMs.shift();
      state.stats.recentMs.push(latencyMs);
      this.events.result(model.name, label, latencyMs / 1000);
      const { msg, rule, to } = item.req;
      this.deliver({
        parent: msg,
        rule,
        topic: to ?? `ml/${model.name}/${msg.deviceId}`,
        payload: {
          model: model.name,
          version: model.version,
          label,
          score: scores[label] ?? 0,
          scores,
          source: msg.id,
          latencyMs: Math.round(latencyMs * 1000) / 1000,
        },
      });
    });
  }
}

function pick(v: number | readonly number[], j: number): number {
  return typeof v === 'number' ? v : (v[j] ?? 0);
}

function round6(x: number): number {
  return Math.round(x * 1e6) / 1e6;
}

function at(v: Value, path: PayloadPath): Value | undefined {
  let cur: Value = v;
  for (const p of path) {
    if (cur === null) return undefined;
    cur = typeof p === 'number' ? index(cur, p) : member(cur, p);
  }
  return cur === null ? undefined : cur;
}

function describe(v: Value | undefined): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'string') return 'a text';
  return typeof v;
}
