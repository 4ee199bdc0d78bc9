// Local inference as one service of the proxy: the worker that runs the models, the registry of the
// models directory and the runner that batches inputs, started and stopped together.

import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import { ModelRegistry, type ModelRegistryEvents, type ModelStatus } from './registry.js';
import { InferenceRunner, type InferenceEvents, type InferenceResult, type InferRequest } from './runner.js';
import { SessionWorker } from './session-worker.js';

/** A model as GET /api/v1/status and `edge-proxy status` show it. */
export interface ModelView extends ModelStatus {
  inferences: number;
  byLabel: Record<string, number>;
  errors: number;
  shed: number;
  queued: number;
  /** arrival → result over the recent results, null before the first */
  latencyMs: { p50: number; p99: number } | null;
}

export class InferenceService {
  private readonly worker: SessionWorker;
  readonly registry: ModelRegistry;
  private readonly runner: InferenceRunner;

  constructor(
    cfg: Pick<Config, 'models' | 'inference'>,
    events: InferenceEvents & ModelRegistryEvents,
    log: Logger,
    deliver: (r: InferenceResult) => void,
  ) {
    this.worker = new SessionWorker(log);
    this.registry = new ModelRegistry({ dir: cfg.models.dir, threads: cfg.inference.threads, worker: this.worker, events, log });
    this.runner = new InferenceRunner(
      { queueSize: cfg.inference.queueSize, windowBytes: cfg.inference.windowBytes },
      this.registry,
      this.worker,
      events,
      log,
      deliver,
    );
  }

  async start(): Promise<void> {
    this.worker.start();
    await this.registry.start();
  }

  async stop(): Promise<void> {
    this.runner.stop();
    await this.registry.stop();
    await this.worker.stop();
  }

  submit(req: InferRequest): string | null {
    return this.runner.submit(req);
  }

  status(): ModelView[] {
    return this.registry.status().map((m) => {
      const s = this.runner.stats(m.name);
      const recent = s ? [...s.recentMs].sort((a, b) => a - b) : [];
      const q = (p: number): number => Math.round((recent[Math.min(recent.length - 1, Math.floor(p * recent.length))] ?? 0) * 1000) / 1000;
      return {
        ...m,
        inferences: s?.inferences ?? 0,
        byLabel: { ...(s?.byLabel ?? {}) },
        errors: s?.errors ?? 0,
        shed: s?.shed ?? 0,
        queued: this.runner.queued(m.name),
        latencyMs: recent.length > 0 ? { p50: q(0.5), p99: q(0.99) } : null,
      };
    });
  }
}
