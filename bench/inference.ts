import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseDocument } from 'yaml';
import { deviceVibration } from '../firmware-sim/device.js';
import { VIBRATION_SAMPLE_RATE_HZ } from '../firmware-sim/vibration.js';
import { InferLoad, quantile, type PhaseFigures } from './load-infer.js';
import { loadDeviceId } from './load.js';
import { sampleProc } from './proc.js';
import { startProxy, type Service } from './services.js';
import { SessionWorker } from '../src/inference/session-worker.js';
import pino from 'pino';

/**
 * Local inference in the real proxy: vibration devices publish 1024-sample windows, a rule runs the
 * shipped bearing model on each (`infer("bearing")` on devices/+/vibration), and a local subscriber
 * to ml/bearing/# receives every result. Measured: results a second at the highest rate the proxy
 * sustains, micro-batched (the shipped yaml's batch: up to 32 inputs, waiting at most 5 ms) and one
 * input a run; arrival → result at a steady 1,000 windows a second; and how long the proxy's event
 * loop was held up in each run and at rest, from its own /metrics.
 */
export interface InferenceBenchOptions {
  devices: number;
  /** windows each device keeps awaiting their result in the closed-loop runs */
  inflight: number;
  /** windows a second of the paced run */
  rate: number;
  warmupSeconds: number;
  seconds: number;
  idleSeconds: number;
}

export const INFERENCE_TARGETS = {
  /** batched results/s over unbatched */
  speedup: 5,
  /** arrival → result p99 at the paced rate, ms */
  p99Ms: 10,
  /** the event loop's longest stall, ms */
  stallMs: 5,
} as const;

export interface Quantiles {
  p50: number;
  p99: number;
  max: number;
}

/** The proxy's event loop over a run, from prom-client's default metrics (perf_hooks.monitorEventLoopDelay). */
export interface LoopFigures {
  /** the longest interval between two ticks of the monitor's timer, ms */
  maxIntervalMs: number;
  p99IntervalMs: number;
  /** the longest stall: the longest interval less the monitor's period */
  stallMs: number;
}

export interface RunFigures {
  resultsPerSecond: number;
  results: number;
  sent: number;
  /** arrival → result inside the proxy (the result's latencyMs) */
  proxyMs: Quantiles;
  /** publish → result at the subscriber */
  endToEndMs: Quantiles;
  meanBatch: number;
  shed: number;
  errors: number;
  byLabel: Record<string, number>;
  loop: LoopFigures;
  /** the proxy's CPU over the run, in cores: its main thread (the event loop) and all its other threads (the inference worker, ONNX Runtime's pool) */
  cpu: { main: number; others: number };
  /** windows that never had a result once the load stopped */
  lost: number;
}

export interface InferenceResult {
  model: { version: string; length: number };
  devices: number;
  inflight: number;
  /** measured a run */
  seconds: number;
  /** the event-loop monitor's period the proxy runs with, ms (its timer ticks this often at rest) */
  monitorPeriodMs: number;
  idle: LoopFigures;
  batched: RunFigures;
  unbatched: RunFigures;
  paced: RunFigures & { rate: number };
  speedup: number;
  /** the model alone: the inference worker fed decoded windows, one run after the other */
  modelOnly: { batchedPerSecond: number; unbatchedPerSecond: number; batch: number; speedup: number };
  targets: typeof INFERENCE_TARGETS;
  met: { speedup: boolean; p99: boolean; stall: boolean };
  /** results whose window could not be told (a pairing gone wrong), over every run */
  unpaired: number;
}

const REPO = new URL('../../', import.meta.url).pathname;

/** The shipped model's files, or why the bench cannot run. */
function shippedModel(): { onnx: string; yaml: string } {
  const onnx = join(REPO, 'models/bearing.onnx');
  const yaml = join(REPO, 'models/bearing.yaml');
  if (!existsSync(onnx) || !existsSync(yaml))
    throw new Error(`the inference bench runs the shipped model: ${onnx} and ${yaml} are missing (npm run train writes them)`);
  return { onnx, yaml };
}

/** A models directory with the shipped model and its yaml, the batch set to `maxSize`. */
function modelsDir(dir: string, maxSize: number): { version: string; length: number } {
  const shipped = shippedModel();
  mkdirSync(dir, { recursive: true });
  copyFileSync(shipped.onnx, join(dir, 'bearing.onnx'));
  const doc = parseDocument(readFileSync(shipped.yaml, 'utf8'));
  doc.set('batch', doc.createNode({ maxSize, maxDelayMs: 5 }, { flow: true }));
  writeFileSync(join(dir, 'bearing.yaml'), doc.toString());
  const version = doc.get('version');
  return {
    version: typeof version === 'string' || typeof version === 'number' ? String(version) : '(none)',
    length: Number(doc.getIn(['input', 'length'])),
  };
}

async function startInferenceProxy(
  dir: string,
  maxSize: number,
): Promise<{ proxy: Service & { ports: { mqtt: number; admin: number } }; model: { version: string; length: number } }> {
  const model = modelsDir(join(dir, 'models'), maxSize);
  mkdirSync(join(dir, 'rules'), { recursive: true });
  writeFileSync(
    join(dir, 'rules/bench.rules'),
    'rule bearing_check\nwhen msg.topic matches "devices/+/vibration"\nthen infer("bearing")\nend\n',
  );
  const proxy = await startProxy(
    dir,
    [
      'edge: { id: bench }',
      `dataDir: ${join(dir, 'data')}`,
      `rules: { dir: ${join(dir, 'rules')} }`,
      `models: { dir: ${join(dir, 'models')} }`,
      'mqtt: { port: 0 }',
      'coap: { port: 0 }',
      'http: { port: 0 }',
      // Stalls of a few ms are the target: the loop monitor at 1 ms.
      'admin: { port: 0, loopMonitorMs: 1 }',
      // The windows stay on the board: what is measured is inference, not the cache.
      'routing: { default: local }',
      'log: { level: warn }',
      '',
    ].join('\n'),
  );
  try {
    await until('the model to load', async () => (await scrape(proxy.ports.admin)).sum('edge_models_loaded_total') >= 1, 30_000);
  } catch (err) {
    await proxy.stop();
    throw err;
  }
  return { proxy, model };
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Scrape {
  /** the sum of a metric over its label sets (0 when absent) */
  sum(name: string): number;
}

/**
 * GET /metrics. Each scrape also restarts prom-client's event-loop histogram, so a scrape at the
 * start of a run and one at its end give the loop's figures over the run alone.
 */
async function scrape(adminPort: number): Promise<Scrape> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  const sums = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})? ([-+0-9.eE]+|NaN)$/.exec(line);
    if (m) sums.set(m[1]!, (sums.get(m[1]!) ?? 0) + Number(m[2]));
  }
  return { sum: (name) => sums.get(name) ?? 0 };
}

function loopOf(s: Scrape, periodMs: number): LoopFigures {
  const maxIntervalMs = s.sum('nodejs_eventloop_lag_max_seconds') * 1000;
  return {
    maxIntervalMs,
    p99IntervalMs: s.sum('nodejs_eventloop_lag_p99_seconds') * 1000,
    stallMs: Math.max(0, maxIntervalMs - periodMs),
  };
}

/** CPU seconds of the whole process and of its main thread (/proc/<pid>/task/<pid>: the thread whose id is the process's). */
function cpuOf(pid: number): { all: number; main: number } {
  const stat = readFileSync(`/proc/${pid}/task/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { all: sampleProc(pid).cpuSeconds, main: (Number(fields[11]) + Number(fields[12])) / 100 };
}

/** Windows of real vibration (firmware-sim's bearing model), half the devices with a faulty bearing. */
function windowsOf(device: number, count: number): string[] {
  const id = loadDeviceId(device);
  const model = deviceVibration(1, id, device % 2 === 0 ? 'healthy' : 'fault');
  return Array.from({ length: count }, (_, seq) =>
    JSON.stringify({
      deviceId: id,
      seq,
      ts: 0,
      sampleRateHz: VIBRATION_SAMPLE_RATE_HZ,
      shaftHz: model.currentShaftHz,
      samples: model.nextWindow(),
    }),
  );
}

const q = (xs: number[]): Quantiles => ({ p50: quantile(xs, 0.5), p99: quantile(xs, 0.99), max: xs.length > 0 ? xs[xs.length - 1]! : NaN });

/** One measured run: warm up, scrape, measure, scrape, then stop sending and let the last results come. */
async function run(
  load: InferLoad,
  proxy: Service & { ports: { admin: number } },
  start: () => void,
  opts: InferenceBenchOptions,
  periodMs: number,
  label: string,
  progress: (line: string) => void,
): Promise<RunFigures> {
  start();
  await sleep(opts.warmupSeconds * 1000);
  const adminPort = proxy.ports.admin;
  const pid = proxy.child.pid!;
  const before = await scrape(adminPort);
  const cpu0 = cpuOf(pid);
  load.mark();
  for (let s = 5; s < opts.seconds; s += 5) {
    await sleep(5000);
    progress(`  ${label}: ${s}/${opts.seconds} s, ${Math.round(load.figures().perSecond)} results/s`);
  }
  await sleep((opts.seconds % 5 || 5) * 1000);
  const after = await scrape(adminPort);
  const f: PhaseFigures = load.figures();
  const cpu1 = cpuOf(pid);
  const lost = await load.drain();
  const delta = (name: string): number => after.sum(name) - before.sum(name);
  const batches = delta('edge_inference_batch_size_count');
  return {
    resultsPerSecond: f.perSecond,
    results: f.results,
    sent: f.sent,
    proxyMs: q(f.proxyMs),
    endToEndMs: q(f.endToEndMs),
    meanBatch: batches > 0 ? delta('edge_inference_batch_size_sum') / batches : NaN,
    shed: delta('edge_inference_shed_total'),
    errors: delta('edge_inference_errors_total'),
    byLabel: f.byLabel,
    loop: loopOf(after, periodMs),
    cpu: { main: (cpu1.main - cpu0.main) / f.seconds, others: (cpu1.all - cpu1.main - (cpu0.all - cpu0.main)) / f.seconds },
    lost,
  };
}

/**
 * What batching buys where the model is the bottleneck (a slower board, a larger model): the worker
 * and ONNX Runtime alone, fed windows already decoded, a batch of `batch` against one window a run.
 */
async function modelOnly(seconds: number, batch: number): Promise<InferenceResult['modelOnly']> {
  const worker = new SessionWorker(pino({ level: 'silent' }));
  worker.start();
  try {
    const onnx = readFileSync(join(REPO, 'models/bearing.onnx'));
    await worker.load('bench', onnx, 2);
    const window = Float32Array.from(deviceVibration(1, 'bench-0001').nextWindow());
    const rate = async (rows: number): Promise<number> => {
      const until = performance.now() + seconds * 1000;
      let done = 0;
      while (performance.now() < until) {
        const data = new Float32Array(rows * window.length);
        for (let r = 0; r < rows; r++) data.set(window, r * window.length);
        await worker.run('bench', 'input', 'probabilities', data, rows, window.length);
        done += rows;
      }
      return done / seconds;
    };
    await rate(1); // warm up
    const unbatchedPerSecond = await rate(1);
    const batchedPerSecond = await rate(batch);
    return { batchedPerSecond, unbatchedPerSecond, batch, speedup: batchedPerSecond / unbatchedPerSecond };
  } finally {
    await worker.stop();
  }
}

export async function benchInference(opts: InferenceBenchOptions, progress: (line: string) => void): Promise<InferenceResult> {
  shippedModel();
  const dir = mkdtempSync(join(tmpdir(), 'edge-bench-infer-'));
  const windows = (d: number): string[] => windowsOf(d, 4);
  let unpaired = 0;
  try {
    // (a) and (c): the shipped batching.
    progress(`  batched proxy: the shipped model, batch { maxSize: 32, maxDelayMs: 5 }`);
    const a = await startInferenceProxy(join(dir, 'batched'), 32);
    let idle: LoopFigures;
    let periodMs: number;
    let batched: RunFigures;
    let paced: RunFigures;
    try {
      // At rest the monitor's timer ticks once a period: its median interval is the period itself.
      await scrape(a.proxy.ports.admin);
      await sleep(opts.idleSeconds * 1000);
      const rest = await scrape(a.proxy.ports.admin);
      periodMs = Math.round(rest.sum('nodejs_eventloop_lag_p50_seconds') * 1000);
      idle = loopOf(rest, periodMs);
      progress(`  idle ${opts.idleSeconds} s: monitor period ${periodMs} ms, longest interval ${idle.maxIntervalMs.toFixed(2)} ms`);
      const load = await InferLoad.start({ port: a.proxy.ports.mqtt, devices: opts.devices, windows, results: 'ml/bearing/#' });
      try {
        batched = await run(load, a.proxy, () => load.closed(opts.inflight), opts, periodMs, 'batched', progress);
        progress(`  batched: ${batched.resultsPerSecond.toFixed(0)} results/s, mean batch ${batched.meanBatch.toFixed(1)}`);
        paced = await run(load, a.proxy, () => load.paced(opts.rate), opts, periodMs, `paced ${opts.rate}/s`, progress);
        progress(`  paced: p99 arrival -> result ${paced.proxyMs.p99.toFixed(2)} ms`);
        unpaired += load.unpaired();
      } finally {
        await load.stop();
      }
    } finally {
      await a.proxy.stop();
    }
    // (b): one input a run.
    progress(`  unbatched proxy: the same model, batch { maxSize: 1 }`);
    const b = await startInferenceProxy(join(dir, 'unbatched'), 1);
    let unbatched: RunFigures;
    try {
      const load = await InferLoad.start({ port: b.proxy.ports.mqtt, devices: opts.devices, windows, results: 'ml/bearing/#' });
      try {
        unbatched = await run(load, b.proxy, () => load.closed(opts.inflight), opts, periodMs, 'unbatched', progress);
        progress(`  unbatched: ${unbatched.resultsPerSecond.toFixed(0)} results/s`);
        unpaired += load.unpaired();
      } finally {
        await load.stop();
      }
    } finally {
      await b.proxy.stop();
    }
    const speedup = batched.resultsPerSecond / unbatched.resultsPerSecond;
    progress('  the model alone: the inference worker fed decoded windows');
    const model = await modelOnly(3, 32);
    return {
      model: a.model,
      devices: opts.devices,
      inflight: opts.inflight,
      seconds: opts.seconds,
      monitorPeriodMs: periodMs,
      idle,
      batched,
      unbatched,
      paced: { ...paced, rate: opts.rate },
      speedup,
      modelOnly: model,
      targets: INFERENCE_TARGETS,
      met: {
        speedup: speedup >= INFERENCE_TARGETS.speedup,
        p99: paced.proxyMs.p99 <= INFERENCE_TARGETS.p99Ms && paced.shed === 0,
        // At the paced rate: (a) and (b) run the main thread flat out, where a stall is its own work
        // and its garbage collection, not a model run.
        stall: paced.loop.stallMs <= INFERENCE_TARGETS.stallMs,
      },
      unpaired,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
