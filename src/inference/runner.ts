// infer(): inputs from every device queued per model, run together in micro-batches on the worker,
// and each result handed back as a derived message's payload. An input is checked, cut and
// normalized when it arrives, by the version running then, and runs on that version: a swap never
// feeds a version what another one was given. Queues are bounded (the oldest input is shed,
// counted) and so are the per-device windows (in bytes, the least recently fed goes first).

import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import type { EdgeMessage } from '../core/message.js';
import { index, member, type Value } from '../rules/values.js';
import type { ModelInput, PayloadPath } from './model-spec.js';
import type { LoadedModel, ModelRegistry } from './registry.js';
import type { SessionWorker } from './session-worker.js';

/** One infer() action on one message. */
export interface InferRequest {
  rule: string;
  model: string;
  /** the result's topic; null: ml/<model>/<deviceId> */
  to: string | null;
  /** the message the result is made from; held until the result is made, so without its payload */
  parent: EdgeMessage;
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

export type InferenceErrorReason = 'unknown_model' | 'input' | 'window_too_large' | 'run' | 'output' | 'load' | 'stopping';

export interface InferenceEvents {
  /** an input is queued: exactly one of result, shed or error (run, output, stopping) follows for it */
  queued(model: string): void;
  result(model: string, label: string, inputSeconds: number): void;
  batch(model: string, size: number, seconds: number): void;
  error(model: string, reason: InferenceErrorReason): void;
  shed(model: string): void;
  windowEvicted(model: string): void;
  windowBytes(bytes: number): void;
  queueBytes(bytes: number): void;
}

export interface InferenceRunnerOptions {
  /** inputs waiting per model; past it the oldest is shed */
  queueSize: number;
  /** all per-device windows together */
  windowBytes: number;
}

interface Queued {
  req: InferRequest;
  /** the version that checked it, held until it has run or is dropped */
  model: LoadedModel;
  /** its values, cut and normalized by that version */
  values: Float32Array;
  arrived: number;
}

interface Window {
  /** the window spec it gathers for: a version with the same field and size keeps it */
  spec: string;
  values: Float32Array;
  /** values seen so far, and since the last run */
  filled: number;
  sinceRun: number;
  next: number;
  bytes: number;
}

interface ModelState {
  queue: Deque<Queued>;
  running: boolean;
  timer: NodeJS.Timeout | null;
  stats: ModelStats;
}

export interface ModelStats {
  inferences: number;
  byLabel: Record<string, number>;
  errors: number;
  shed: number;
  /** recent arrival → result times (ms), a ring of RECENT, for the status page's percentiles */
  recentMs: number[];
  recentNext: number;
}

const RECENT = 512;
const WINDOW_OVERHEAD_BYTES = 160;
const QUEUED_OVERHEAD_BYTES = 200;

export class InferenceRunner {
  private readonly models = new Map<string, ModelState>();
  /** per `model\0deviceId`, least recently fed first */
  private readonly windows = new Map<string, Window>();
  private windowBytesHeld = 0;
  private queueBytesHeld = 0;
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
    const model = this.registry.acquire(req.model);
    if (!model) {
      // Model names are literals of the rules, so these labels are bounded by the rules.
      this.events.error(req.model, 'unknown_model');
      const known = this.registry.names();
      return `no model "${req.model}" is loaded (${known.length > 0 ? `loaded: ${known.join(', ')}` : 'the models directory holds none'})`;
    }
    let values: Float32Array | string | null;
    try {
      values = this.valuesOf(model, req);
    } catch (err) {
      values = (err as Error).message;
    }
    if (values === null || typeof values === 'string') {
      this.registry.release(model);
      return values;
    }
    const state = this.stateOf(req.model);
    if (state.queue.length >= this.opts.queueSize) {
      const oldest = state.queue.shift();
      if (oldest) this.finish(oldest);
      state.stats.shed++;
      this.events.shed(req.model);
    }
    state.queue.push({ req, model, values, arrived: performance.now() });
    this.queueBytesHeld += values.byteLength + QUEUED_OVERHEAD_BYTES;
    this.events.queueBytes(this.queueBytesHeld);
    this.events.queued(req.model);
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
      for (let q = s.queue.shift(); q; q = s.queue.shift()) {
        this.events.error(name, 'stopping');
        s.stats.errors++;
        this.finish(q);
      }
    }
    this.windows.clear();
    this.windowBytesHeld = 0;
    this.events.windowBytes(0);
  }

  /** The input's values cut to the version's length and normalized; null: a window still filling; text: why not. */
  private valuesOf(model: LoadedModel, req: InferRequest): Float32Array | string | null {
    const input = model.spec.input;
    if (input.from) {
      const v = at(req.payload(), input.from.path);
      if (!Array.isArray(v))
        return this.refuse(model.name, `${input.from.text} is ${v === undefined ? 'missing' : `not a list (${describe(v)})`}`);
      if (v.length < input.length)
        return this.refuse(model.name, `${input.from.text} has ${v.length} values; model "${model.name}" takes ${input.length}`);
      const out = new Float32Array(input.length);
      for (let j = 0; j < input.length; j++) {
        const x = v[j];
        if (typeof x !== 'number' || !Number.isFinite(x))
          return this.refuse(model.name, `${input.from.text}[${j}] is not a number (${describe(x)})`);
        out[j] = x;
      }
      return normalized(out, input);
    }
    const w = input.window;
    if (!w) return this.refuse(model.name, 'the model has no input source');
    const v = at(req.payload(), w.path);
    if (typeof v !== 'number' || !Number.isFinite(v))
      return this.refuse(model.name, `${w.text} is ${v === undefined ? 'missing' : `not a number (${describe(v)})`}`);
    return this.feedWindow(model, req.parent.deviceId, v);
  }

  private refuse(model: string, why: string, reason: 'input' | 'window_too_large' = 'input'): string {
    this.events.error(model, reason);
    this.stateOf(model).stats.errors++;
    return why;
  }

  private stateOf(name: string): ModelState {
    let s = this.models.get(name);
    if (!s) {
      s = {
        queue: new Deque(),
        running: false,
        timer: null,
        stats: { inferences: 0, byLabel: {}, errors: 0, shed: 0, recentMs: [], recentNext: 0 },
      };
      this.models.set(name, s);
    }
    return s;
  }

  /** The window's values in order once `size` are there and `stride` arrived since the last run; else null. */
  private feedWindow(model: LoadedModel, deviceId: string, value: number): Float32Array | string | null {
    const spec = model.spec.input.window;
    if (!spec) return null;
    const id = `${model.name}\0${deviceId}`;
    // A version that gathers the same field in the same size keeps what the devices sent so far.
    const key = `${spec.text}\0${spec.size}`;
    let w = this.windows.get(id);
    if (w && w.spec !== key) {
      this.dropWindow(id, w);
      w = undefined;
    }
    if (w) this.windows.delete(id);
    else {
      const bytes = spec.size * 4 + WINDOW_OVERHEAD_BYTES + id.length * 2;
      if (bytes > this.opts.windowBytes)
        return this.refuse(
          model.name,
          `a window of ${spec.size} values takes ${bytes} bytes, more than inference.windowBytes (${this.opts.windowBytes})`,
          'window_too_large',
        );
      while (this.windowBytesHeld + bytes > this.opts.windowBytes) {
        const oldest = this.windows.entries().next().value;
        if (!oldest) break;
        this.dropWindow(oldest[0], oldest[1]);
        this.events.windowEvicted(oldest[0].slice(0, oldest[0].indexOf('\0')));
      }
      w = { spec: key, values: new Float32Array(spec.size), filled: 0, sinceRun: 0, next: 0, bytes };
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
    return normalized(ordered, model.spec.input);
  }

  private dropWindow(id: string, w: Window): void {
    this.windows.delete(id);
    this.windowBytesHeld -= w.bytes;
    this.events.windowBytes(this.windowBytesHeld);
  }

  /** An input leaves the queue: its version is no longer held for it. */
  private finish(q: Queued): void {
    this.queueBytesHeld -= q.values.byteLength + QUEUED_OVERHEAD_BYTES;
    this.events.queueBytes(this.queueBytesHeld);
    this.registry.release(q.model);
  }

  /**
   * Runs a batch when it is full or its oldest input has waited maxDelayMs; one batch per model at a
   * time. A batch is inputs of one version: after a swap, the old version's inputs go first.
   */
  private pump(name: string, state: ModelState): void {
    if (state.running || this.stopped) return;
    const first = state.queue.peek();
    if (!first) return;
    const model = first.model;
    const max = model.batchOfOne ? 1 : model.spec.batch.maxSize;
    let sameVersion = 0;
    while (sameVersion < max && state.queue.at(sameVersion)?.model === model) sameVersion++;
    const waited = performance.now() - first.arrived;
    const complete = sameVersion < state.queue.length; // a newer version's inputs wait behind these
    if (sameVersion < max && !complete && waited < model.spec.batch.maxDelayMs) {
      state.timer ??= setTimeout(() => {
        state.timer = null;
        this.pump(name, state);
      }, model.spec.batch.maxDelayMs - waited);
      return;
    }
    if (state.timer) {
      clearTimeout(state.timer);
      state.timer = null;
    }
    const taken: Queued[] = [];
    for (let i = 0; i < sameVersion; i++) taken.push(state.queue.shift()!);
    this.run(model, state, taken);
  }

  private run(model: LoadedModel, state: ModelState, items: Queued[]): void {
    const { length } = model.spec.input;
    const data = new Float32Array(items.length * length);
    items.forEach((item, i) => data.set(item.values, i * length));
    state.running = true;
    const started = performance.now();
    this.worker
      .run(model.key, model.spec.input.tensor, model.spec.output.tensor, data, items.length, length)
      .then(
        (out) => {
          this.events.batch(model.name, items.length, (performance.now() - started) / 1000);
          if (!this.stopped) this.results(model, state, items, out.data, out.dims);
        },
        (err: Error) => {
          for (let i = 0; i < items.length; i++) this.events.error(model.name, this.stopped ? 'stopping' : 'run');
          state.stats.errors += items.length;
          if (!this.stopped)
            this.log.error(
              { model: model.name, version: model.version, inputs: items.length, err: err.message },
              `model "${model.name}" failed to run a batch; its ${items.length} input(s) are dropped (counted in edge_inference_errors_total)`,
            );
        },
      )
      .catch((err: unknown) => {
        // A fault in handing results on must not end the proxy; the batch's inputs are done with.
        this.log.error({ model: model.name, err: (err as Error).message }, `handing on model "${model.name}"'s results failed`);
      })
      .finally(() => {
        for (const item of items) this.finish(item);
        state.running = false;
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
        `model "${model.name}" gave an output of shape [${dims.join(',')}], not [${items.length},${width}]; its results are dropped`,
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
        label = Number.isFinite(s) ? ((s >= threshold ? labels[1] : labels[0]) ?? '') : '';
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
        this.log.warn({ model: model.name, scores }, `model "${model.name}" gave a score that is not a number; the result is dropped`);
        return;
      }
      const latencyMs = now - item.arrived;
      state.stats.inferences++;
      state.stats.byLabel[label] = (state.stats.byLabel[label] ?? 0) + 1;
      state.stats.recentMs[state.stats.recentNext] = latencyMs;
      state.stats.recentNext = (state.stats.recentNext + 1) % RECENT;
      this.events.result(model.name, label, latencyMs / 1000);
      const { parent, rule, to } = item.req;
      this.deliver({
        parent,
        rule,
        topic: to ?? `ml/${model.name}/${parent.deviceId}`,
        payload: {
          model: model.name,
          version: model.version,
          label,
          score: scores[label] ?? 0,
          scores,
          source: parent.id,
          latencyMs: Math.round(latencyMs * 1000) / 1000,
        },
      });
    });
  }
}

/** A queue with O(1) shift, so that shedding under overload costs the same at any queue size. */
class Deque<T> {
  private items: (T | undefined)[] = [];
  private head = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  push(x: T): void {
    this.items.push(x);
  }

  peek(): T | undefined {
    return this.items[this.head];
  }

  at(i: number): T | undefined {
    return this.items[this.head + i];
  }

  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const x = this.items[this.head];
    this.items[this.head++] = undefined;
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return x;
  }
}

function normalized(values: Float32Array, input: ModelInput): Float32Array {
  const n = input.normalize;
  if (!n) return values;
  for (let j = 0; j < values.length; j++) values[j] = ((values[j] ?? 0) - pick(n.mean, j)) / pick(n.std, j);
  return values;
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
  if (v === null || v === undefined) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'string') return 'a text';
  return typeof v;
}
