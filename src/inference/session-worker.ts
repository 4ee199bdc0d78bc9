// The main thread's side of the inference worker: requests answered as promises, and a new worker
// when one dies (its sessions die with it, so the registry loads its models again on 'restart').

import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import { EdgeError } from '../core/errors.js';
import type { TensorInfo, WorkerReply, WorkerRequest } from './worker-protocol.js';

type Pending = { resolve: (r: WorkerReply) => void; reject: (e: Error) => void };
type Request = WorkerRequest extends infer R ? (R extends WorkerRequest ? Omit<R, 'id'> : never) : never;

/** A worker that died this soon after the previous restart waits before the next one. */
const RESTART_BACKOFF_MS = 1000;

export interface SessionWorkerEvents {
  on(event: 'restart', listener: () => void): this;
}

export class SessionWorker extends EventEmitter implements SessionWorkerEvents {
  private worker: Worker | null = null;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private stopped = false;
  /** a worker died and its successor waits out the back-off: requests are refused until it runs */
  private restarting = false;
  private lastStart = 0;

  constructor(private readonly log: Logger) {
    super();
  }

  /** The worker itself starts with the first model: a proxy without models never loads ONNX Runtime. */
  start(): void {
    this.stopped = false;
  }

  private spawn(): void {
    this.lastStart = Date.now();
    const worker = new Worker(new URL('./worker.js', import.meta.url));
    // An idle worker must not keep a stopping process alive; requests in flight are awaited by callers.
    worker.unref();
    worker.on('message', (reply: WorkerReply) => {
      const p = this.pending.get(reply.id);
      if (!p) return;
      this.pending.delete(reply.id);
      p.resolve(reply);
    });
    worker.on('error', (err) => this.log.error({ err: err.message }, 'the inference worker failed; starting a new one'));
    worker.on('exit', (code) => {
      if (this.worker !== worker) return;
      this.worker = null;
      for (const p of this.pending.values()) p.reject(new EdgeError('E_MODEL', `the inference worker stopped (exit code ${code})`));
      this.pending.clear();
      if (this.stopped) return;
      this.restarting = true;
      const wait = Math.max(0, this.lastStart + RESTART_BACKOFF_MS - Date.now());
      setTimeout(() => {
        this.restarting = false;
        if (this.stopped || this.worker) return;
        this.spawn();
        this.emit('restart');
      }, wait).unref();
    });
    this.worker = worker;
  }

  request(req: Request, transfer: ArrayBuffer[] = []): Promise<WorkerReply> {
    if (!this.worker) {
      if (this.stopped) return Promise.reject(new EdgeError('E_STOPPING', 'the inference worker is stopped'));
      if (this.restarting) return Promise.reject(new EdgeError('E_MODEL', 'the inference worker is restarting'));
      this.spawn();
    }
    const worker = this.worker!;
    const id = this.nextId++;
    return new Promise<WorkerReply>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.postMessage({ ...req, id }, transfer);
    });
  }

  /** `bytes` is handed over to the worker (transferred, not copied): the caller must not use it after. */
  async load(key: string, bytes: Uint8Array, threads: number): Promise<{ inputs: TensorInfo[]; outputs: TensorInfo[] }> {
    const own = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes : bytes.slice();
    const r = await this.request({ op: 'load', key, bytes: own, threads }, [own.buffer as ArrayBuffer]);
    if (!r.ok) throw new EdgeError('E_MODEL', r.message);
    if (r.op !== 'load') throw new EdgeError('E_INTERNAL', `the inference worker answered ${r.op} to load`);
    return { inputs: r.inputs, outputs: r.outputs };
  }

  async run(
    key: string,
    input: string,
    output: string,
    data: Float32Array,
    rows: number,
    length: number,
  ): Promise<{ data: Float32Array; dims: number[]; runMs: number }> {
    const r = await this.request({ op: 'run', key, input, output, data, rows, length }, [data.buffer as ArrayBuffer]);
    if (!r.ok) throw new EdgeError('E_MODEL', r.message);
    if (r.op !== 'run') throw new EdgeError('E_INTERNAL', `the inference worker answered ${r.op} to run`);
    return r;
  }

  async release(key: string): Promise<void> {
    if (!this.worker) return;
    await this.request({ op: 'release', key }).catch(() => undefined);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    const worker = this.worker;
    this.worker = null;
    for (const p of this.pending.values()) p.reject(new EdgeError('E_STOPPING', 'the proxy is stopping'));
    this.pending.clear();
    if (worker) await worker.terminate();
  }
}
