import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import type { Analysis, RuleFile, RuleLimits } from './loader.js';

interface Request {
  id: number;
  files: RuleFile[];
  limits: RuleLimits;
}

type Reply = { id: number; analysis: Analysis } | { id: number; failure: string };

// A set that was pushed is parsed and checked off the event loop: a large or hostile ruleset must
// not hold up the devices' messages while it is read. The thread lives while pushes come, and is
// let go after this long without one, so that it costs nothing on a board between pushes.
const IDLE_MS = 60_000;

/**
 * Parses and checks rulesets in a worker thread. One request at a time is in the thread; the
 * result is plain data (the checked syntax trees) that RuleSet.build() compiles on the main thread.
 */
export class RuleAnalyzer {
  private worker: Worker | null = null;
  private idle: NodeJS.Timeout | null = null;
  private nextId = 0;
  private readonly waiting = new Map<number, { resolve: (a: Analysis) => void; reject: (e: Error) => void }>();

  constructor(private readonly log: Logger) {}

  analyze(files: RuleFile[], limits: RuleLimits): Promise<Analysis> {
    if (this.idle) clearTimeout(this.idle);
    this.idle = null;
    const worker = this.worker ?? this.spawn();
    const id = ++this.nextId;
    return new Promise<Analysis>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      worker.postMessage({ id, files, limits } satisfies Request);
    });
  }

  private spawn(): Worker {
    // Built code runs analyze-worker.js; under a TypeScript loader (the tests), the .ts beside this file.
    const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
    const worker = new Worker(new URL(`./analyze-worker${ext}`, import.meta.url));
    worker.unref();
    worker.on('message', (reply: Reply) => {
      const w = this.waiting.get(reply.id);
      if (!w) return;
      this.waiting.delete(reply.id);
      if ('failure' in reply) w.reject(new Error(reply.failure));
      else w.resolve(reply.analysis);
      if (this.waiting.size === 0) this.scheduleIdle();
    });
    const fail = (err: Error): void => {
      this.log.error({ err: err.message }, 'the rules analyzer thread failed; the next push starts a new one');
      if (this.worker === worker) this.worker = null;
      for (const w of this.waiting.values()) w.reject(err);
      this.waiting.clear();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => { if (this.worker === worker && code !== 0) fail(new Error(`the rules analyzer thread exited with code ${code}`)); else if (this.worker === worker) this.worker = null; });
    this.worker = worker;
    return worker;
  }

  private scheduleIdle(): void {
    this.idle = setTimeout(() => {
      this.idle = null;
      const w = this.worker;
      this.worker = null;
      void w?.terminate();
    }, IDLE_MS);
    this.idle.unref();
  }

  async close(): Promise<void> {
    if (this.idle) clearTimeout(this.idle);
    const w = this.worker;
    this.worker = null;
    for (const p of this.waiting.values()) p.reject(new Error('the proxy is stopping'));
    this.waiting.clear();
    await w?.terminate();
  }
}
