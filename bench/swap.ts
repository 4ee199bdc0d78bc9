import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { startLoad } from './load.js';
import { startMosquitto, startProxy } from './services.js';

export interface SwapOptions {
  rules: number;
  /** steady load, messages/s over all devices */
  rate: number;
  devices: number;
  swaps: number;
  /** between two swaps */
  intervalMs: number;
  warmupSeconds: number;
}

export interface LatencyFigures {
  samples: number;
  p50: number;
  p99: number;
  max: number;
}

export interface SwapResult {
  rules: number;
  rate: number;
  swaps: number;
  /** PUT /api/v1/rules round trips: validate, compile, write, swap */
  swapMs: { median: number; max: number };
  /** what the proxy logged as the swap's own time (tookMs) */
  proxyMs: { median: number; max: number };
  /** PUBACK latency of messages sent while no swap was under way */
  quiet: LatencyFigures;
  /** PUBACK latency of messages sent while a swap was under way (or in the 100 ms after) */
  swapping: LatencyFigures;
  /** each push: its time and the worst PUBACK latency of the messages sent meanwhile */
  perSwap: Array<{ ms: number; worstLatencyMs: number }>;
  /** the proxy's log of each push: analyze (parse, check), compile and write times */
  phases: Array<{ analyzeMs: number; compileMs: number; writeMs: number }>;
  acked: number;
  atCloud: number;
  lost: number;
}

/**
 * A 1,000-rule set in the shape of bench/rules.ts: 100 rules in the telemetry's scope, each with a
 * condition and a window, that never fire (so default routing sends each message up once), and
 * 900 scoped to topics the load never uses. `variant` changes one literal: each push is a new version.
 */
function bigRuleset(n: number, variant: number): string {
  let text = '';
  for (let i = 0; i < n; i++) {
    const scope = i < n / 10 ? 'devices/+/telemetry' : `plant-${i}/+/telemetry`;
    text += `rule r${i}\nwhen msg.topic matches "${scope}" and payload.temp > ${1000 + variant} and avg(payload.temp, 10) > 25\nthen uplink(priority = "high")\nend\n`;
  }
  return text;
}

export function figures(samples: number[]): LatencyFigures {
  const s = [...samples].sort((a, b) => a - b);
  const at = (q: number): number => (s.length ? s[Math.min(s.length - 1, Math.floor(q * s.length))]! : 0);
  return { samples: s.length, p50: at(0.5), p99: at(0.99), max: s.length ? s[s.length - 1]! : 0 };
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;

/**
 * Pushing a 1,000-rule set to a proxy under a steady load: how long each push takes (validated,
 * compiled, written, swapped in), what a swap does to the latency of the messages in flight, and
 * whether every acknowledged message still reached the cloud.
 */
export async function benchSwap(opts: SwapOptions, progress: (line: string) => void): Promise<SwapResult> {
  const dir = mkdtempSync(join(tmpdir(), 'edge-bench-swap-'));
  const rulesDir = join(dir, 'proxy/rules');
  mkdirSync(rulesDir, { recursive: true });
  writeFileSync(join(rulesDir, 'big.rules'), bigRuleset(opts.rules, 0));
  const cloud = await startMosquitto(join(dir, 'cloud'));
  const proxy = await startProxy(
    join(dir, 'proxy'),
    [
      'edge: { id: bench }',
      `dataDir: ${join(dir, 'proxy/data')}`,
      `rules: { dir: ${rulesDir} }`,
      'mqtt: { port: 0 }',
      'coap: { port: 0 }',
      'http: { port: 0 }',
      'admin: { port: 0 }',
      `uplink: { url: "${cloud.url}", maxInflight: 256 }`,
      'log: { level: info }',
      '',
    ].join('\n'),
    { logFile: join(dir, 'proxy.log') },
  );
  const token = readFileSync(join(dir, 'proxy/data/admin-token'), 'utf8').trim();
  let atCloud = 0;
  const counter = await mqtt.connectAsync(cloud.url, { clientId: 'bench-swap-counter' });
  counter.on('message', () => {
    atCloud++;
  });
  await counter.subscribeAsync('edge/bench/up/#', { qos: 1 });

  const windows: Array<[number, number]> = [];
  const samples: Array<[number, number]> = [];
  const fleet = startLoad({
    port: proxy.ports.mqtt,
    devices: opts.devices,
    inflight: 16,
    rate: opts.rate,
    onAck: (sentAt, ms) => samples.push([sentAt, ms]),
  });
  try {
    await fleet.ready;
    progress(`  ${opts.devices} devices, ${opts.rate} msg/s steady; ${opts.rules} rules running; warming up ${opts.warmupSeconds} s`);
    await new Promise((r) => setTimeout(r, opts.warmupSeconds * 1000));
    samples.length = 0;
    const swapMs: number[] = [];
    for (let i = 1; i <= opts.swaps; i++) {
      await new Promise((r) => setTimeout(r, opts.intervalMs));
      const t0 = performance.now();
      const res = await fetch(`http://127.0.0.1:${proxy.ports.admin}/api/v1/rules`, {
        method: 'PUT',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'text/plain' },
        body: bigRuleset(opts.rules, i),
      });
      const body = (await res.json()) as { version?: number; errors?: unknown };
      const t1 = performance.now();
      if (res.status !== 200) throw new Error(`push ${i} answered ${res.status}: ${JSON.stringify(body)}`);
      windows.push([t0 - 50, t1 + 100]);
      swapMs.push(t1 - t0);
      if (i % 5 === 0 || i === opts.swaps) progress(`  ${i}/${opts.swaps} swaps: last ${(t1 - t0).toFixed(0)} ms, version ${body.version}`);
    }
    await new Promise((r) => setTimeout(r, opts.intervalMs));
    await fleet.stop();
    const total = fleet.acked();
    const deadline = Date.now() + 30_000;
    while (atCloud < total && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    const during = (t: number): boolean => windows.some(([a, b]) => t >= a && t <= b);
    const logged = readFileSync(join(dir, 'proxy.log'), 'utf8')
      .split('\n')
      .map((l) => {
        try {
          return JSON.parse(l) as { tookMs?: number; reason?: string; analyzeMs: number; compileMs: number; writeMs: number };
        } catch {
          return null;
        }
      })
      .filter((l) => l?.reason === 'api' && typeof l.tookMs === 'number');
    const took = logged.map((l) => l!.tookMs!);
    return {
      rules: opts.rules,
      rate: opts.rate,
      swaps: opts.swaps,
      swapMs: { median: median(swapMs), max: Math.max(...swapMs) },
      proxyMs: { median: median(took), max: took.length ? Math.max(...took) : 0 },
      phases: logged.map((l) => ({ analyzeMs: l!.analyzeMs, compileMs: l!.compileMs, writeMs: l!.writeMs })),
      quiet: figures(samples.filter(([t]) => !during(t)).map(([, ms]) => ms)),
      swapping: figures(samples.filter(([t]) => during(t)).map(([, ms]) => ms)),
      perSwap: windows.map(([a, b], i) => ({
        ms: swapMs[i]!,
        worstLatencyMs: Math.max(0, ...samples.filter(([t]) => t >= a && t <= b).map(([, ms]) => ms)),
      })),
      acked: total,
      atCloud,
      lost: total - atCloud,
    };
  } finally {
    await fleet.stop();
    await counter.endAsync();
    await proxy.stop();
    await cloud.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
