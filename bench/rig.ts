// What the benches that load a durable proxy share: the rig (a loopback Mosquitto as the cloud, the
// built proxy forwarding to it, a counter of what arrives there, device tokens in token mode) and
// the measurement of a load (warm-up, then the proxy's CPU, memory and disk writes from /proc).
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { hashToken, makeToken } from '../src/auth/token.js';
import { loadDeviceId } from './load.js';
import { sampleProc } from './proc.js';
import { startBaseline, startMosquitto, startProxy, type Service } from './services.js';

export type AuthMode = 'open' | 'token';

export interface RigOptions {
  /** a directory of its own; removed by stop() unless `keepDir` */
  dir: string;
  keepDir?: boolean;
  /** the load devices (bench-0000, ...): in token mode each is registered with a token */
  devices: number;
  /** the proxy's auth.mode (default open) */
  auth?: AuthMode;
  /** the bare aedes + MQTT.js forwarder (bench/baseline.ts) instead of the proxy */
  baseline?: boolean;
}

export interface Rig {
  /** the proxy (or the baseline) as its own process; `http` is the proxy's WebSocket endpoint */
  proxy: Service & { ports: { mqtt: number; admin: number; http?: number } };
  /** device id -> token in token mode */
  tokens: Map<string, string> | undefined;
  /** messages that arrived at the cloud under edge/bench/up/ */
  atCloud: () => number;
  stop(): Promise<void>;
}

/**
 * A loopback Mosquitto as the cloud and the proxy forwarding to it (durable: the SQLite cache,
 * every QoS 1 publish acknowledged once committed), on ports they pick, as the forward bench has
 * always run it. In token mode a run that would not really be in token mode is refused.
 */
export async function startRig(opts: RigOptions): Promise<Rig> {
  const { dir } = opts;
  const auth: AuthMode = opts.baseline ? 'open' : (opts.auth ?? 'open');
  // One token per device, made and hashed as `edge-proxy devices add` does.
  const tokens =
    auth === 'token'
      ? new Map(Array.from({ length: opts.devices }, (_, d) => [loadDeviceId(d), makeToken(loadDeviceId(d))] as const))
      : undefined;
  const devicesFile = join(dir, 'proxy/devices.yaml');
  if (tokens) {
    mkdirSync(join(dir, 'proxy'), { recursive: true });
    writeFileSync(devicesFile, [...tokens].map(([id, token]) => `- id: ${id}\n  tokenSha256: ${hashToken(token)}\n`).join(''));
  }
  const cloud = await startMosquitto(join(dir, 'cloud'));
  const stops: Array<() => Promise<void>> = [() => cloud.stop()];
  const stop = async (): Promise<void> => {
    for (const s of stops.reverse()) await s();
    if (!opts.keepDir) rmSync(dir, { recursive: true, force: true });
  };
  try {
    const proxy = opts.baseline
      ? await startBaseline(join(dir, 'baseline'), cloud.url)
      : await startProxy(
          join(dir, 'proxy'),
          [
            'edge: { id: bench }',
            `dataDir: ${join(dir, 'proxy/data')}`,
            `rules: { dir: ${join(dir, 'proxy/rules')} }`,
            'mqtt: { port: 0 }',
            'coap: { port: 0 }',
            // Every load device may come from 127.0.0.1 over WebSocket at once.
            `http: { port: 0, maxConnectionsPerAddress: ${Math.max(100, opts.devices + 10)} }`,
            'admin: { port: 0 }',
            `auth: { mode: ${auth} }`,
            ...(tokens ? [`devicesFile: ${devicesFile}`] : []),
            `uplink: { url: "${cloud.url}", maxInflight: 256 }`,
            'log: { level: warn }',
            '',
          ].join('\n'),
        );
    stops.push(() => proxy.stop());
    if (tokens) await refusesAWrongToken(proxy.ports.mqtt);
    let atCloud = 0;
    const counter = await mqtt.connectAsync(cloud.url, { clientId: 'bench-counter' });
    stops.push(() => counter.endAsync());
    counter.on('message', () => {
      atCloud++;
    });
    await counter.subscribeAsync('edge/bench/up/#', { qos: 0 });
    return { proxy, tokens, atCloud: () => atCloud, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/**
 * A run meant to measure token mode must really be in token mode: a device presenting a wrong
 * token is refused (CONNACK 4), or the figures would be open mode's under another name.
 */
async function refusesAWrongToken(port: number): Promise<void> {
  const id = loadDeviceId(0);
  const wrong = makeToken(id);
  let client: mqtt.MqttClient | undefined;
  try {
    client = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, {
      clientId: 'bench-auth-check',
      username: id,
      password: wrong,
      reconnectPeriod: 0,
      connectTimeout: 5000,
    });
  } catch (err) {
    if ((err as { code?: unknown }).code === 4) return;
    throw new Error(`checking that the proxy refuses a wrong token: expected CONNACK 4, got ${(err as Error).message}`, { cause: err });
  }
  await client.endAsync(true);
  throw new Error('the proxy accepted a wrong token, so it is not in token mode: the run would measure open mode');
}

export interface Measurement {
  /** messages acknowledged in the measured seconds */
  acked: number;
  seconds: number;
  messagesPerSecond: number;
  /** the proxy process's CPU time (user + system) per acknowledged message */
  cpuMicrosPerMessage: number;
  cpuCoresUsed: number;
  rssMiB: number;
  peakRssMiB: number;
  diskBytesPerMessage: number;
}

/**
 * Measure a running load: `warmupSeconds` first, then `seconds` of acknowledged messages against
 * the proxy process's CPU time, memory and disk writes read from /proc (from outside, as an
 * operator would), with a progress line every 5 s.
 */
export async function measure(
  pid: number,
  acked: () => number,
  opts: { warmupSeconds: number; seconds: number },
  progress: (line: string) => void,
): Promise<Measurement> {
  await new Promise((r) => setTimeout(r, opts.warmupSeconds * 1000));
  const a0 = acked();
  const p0 = sampleProc(pid);
  const t0 = process.hrtime.bigint();
  let peakRss = p0.rssBytes;
  for (let s = 1; s <= opts.seconds; s++) {
    await new Promise((r) => setTimeout(r, 1000));
    const p = sampleProc(pid);
    peakRss = Math.max(peakRss, p.rssBytes);
    if (s % 5 === 0 || s === opts.seconds)
      progress(`  ${s}/${opts.seconds} s: ${Math.round((acked() - a0) / s)} msg/s, RSS ${(p.rssBytes / 2 ** 20).toFixed(0)} MiB`);
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const p1 = sampleProc(pid);
  const n = acked() - a0;
  const cpu = p1.cpuSeconds - p0.cpuSeconds;
  return {
    acked: n,
    seconds,
    messagesPerSecond: n / seconds,
    cpuMicrosPerMessage: (cpu / n) * 1e6,
    cpuCoresUsed: cpu / seconds,
    rssMiB: p1.rssBytes / 2 ** 20,
    peakRssMiB: peakRss / 2 ** 20,
    diskBytesPerMessage: (p1.writeBytes - p0.writeBytes) / n,
  };
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}
