import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { hashToken, makeToken } from '../src/auth/token.js';
import { loadDeviceId, startLoad } from './load.js';
import { sampleProc } from './proc.js';
import { startBaseline, startMosquitto, startProxy } from './services.js';

export interface ForwardOptions {
  devices: number;
  inflight: number;
  warmupSeconds: number;
  seconds: number;
  /** measure the bare aedes + MQTT.js forwarder instead of the proxy */
  baseline?: boolean;
  /**
   * The proxy's auth.mode (default open). In token mode the bench registers its devices in a
   * devices.yaml and each connects with username = device id, password = its token.
   */
  auth?: AuthMode;
  dataDir?: string;
}

export type AuthMode = 'open' | 'token';

export interface ForwardResult {
  /** the proxy's auth.mode; the baseline has no authentication and says open */
  auth: AuthMode;
  devices: number;
  inflight: number;
  acked: number;
  seconds: number;
  messagesPerSecond: number;
  cpuMicrosPerMessage: number;
  cpuCoresUsed: number;
  rssMiB: number;
  peakRssMiB: number;
  diskBytesPerMessage: number;
  atCloud: number;
}

/**
 * Durable forwarding: simulated devices publish QoS 1 telemetry as fast as the proxy acknowledges
 * it (each ack committed to the SQLite cache first); the proxy forwards to a loopback Mosquitto.
 * CPU, memory and disk writes are the proxy process's own, read from /proc.
 */
export async function benchForward(opts: ForwardOptions, progress: (line: string) => void): Promise<ForwardResult> {
  const dir = opts.dataDir ?? mkdtempSync(join(tmpdir(), 'edge-bench-'));
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
  const proxy = opts.baseline
    ? await startBaseline(join(dir, 'baseline'), cloud.url)
    : await startProxy(
        join(dir, 'proxy'),
        [
          'edge: { id: bench }',
          `dataDir: ${join(dir, 'proxy/data')}`,
          `rules: { dir: ${join(dir, 'proxy/rules')} }`,
          'mqtt: { port: 0 }',
          'http: { port: 0 }',
          'admin: { port: 0 }',
          `auth: { mode: ${auth} }`,
          ...(tokens ? [`devicesFile: ${devicesFile}`] : []),
          `uplink: { url: "${cloud.url}", maxInflight: 256 }`,
          'log: { level: warn }',
          '',
        ].join('\n'),
      );
  if (tokens) {
    try {
      await refusesAWrongToken(proxy.ports.mqtt);
    } catch (err) {
      await proxy.stop();
      await cloud.stop();
      if (!opts.dataDir) rmSync(dir, { recursive: true, force: true });
      throw err;
    }
  }
  let atCloud = 0;
  const counter = await mqtt.connectAsync(cloud.url, { clientId: 'bench-counter' });
  counter.on('message', () => {
    atCloud++;
  });
  await counter.subscribeAsync('edge/bench/up/#', { qos: 0 });

  const fleet = startLoad({ port: proxy.ports.mqtt, devices: opts.devices, inflight: opts.inflight, tokens });
  try {
    await fleet.ready;
    progress(`  ${opts.devices} devices connected, ${opts.inflight} in flight each; warming up ${opts.warmupSeconds} s`);
    await new Promise((r) => setTimeout(r, opts.warmupSeconds * 1000));
    const pid = proxy.child.pid!;
    const a0 = fleet.acked();
    const p0 = sampleProc(pid);
    const t0 = process.hrtime.bigint();
    let peakRss = p0.rssBytes;
    for (let s = 1; s <= opts.seconds; s++) {
      await new Promise((r) => setTimeout(r, 1000));
      const p = sampleProc(pid);
      peakRss = Math.max(peakRss, p.rssBytes);
      if (s % 5 === 0 || s === opts.seconds)
        progress(`  ${s}/${opts.seconds} s: ${Math.round((fleet.acked() - a0) / s)} msg/s, RSS ${(p.rssBytes / 2 ** 20).toFixed(0)} MiB`);
    }
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const p1 = sampleProc(pid);
    const acked = fleet.acked() - a0;
    const cpu = p1.cpuSeconds - p0.cpuSeconds;
    return {
      auth,
      devices: opts.devices,
      inflight: opts.inflight,
      acked,
      seconds,
      messagesPerSecond: acked / seconds,
      cpuMicrosPerMessage: (cpu / acked) * 1e6,
      cpuCoresUsed: cpu / seconds,
      rssMiB: p1.rssBytes / 2 ** 20,
      peakRssMiB: peakRss / 2 ** 20,
      diskBytesPerMessage: (p1.writeBytes - p0.writeBytes) / acked,
      atCloud,
    };
  } finally {
    await fleet.stop();
    await counter.endAsync();
    await proxy.stop();
    await cloud.stop();
    if (!opts.dataDir) rmSync(dir, { recursive: true, force: true });
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
