import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startLoad } from './load.js';
import { measure, startRig, type AuthMode, type Measurement } from './rig.js';

export type { AuthMode } from './rig.js';

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

export interface ForwardResult extends Measurement {
  /** the proxy's auth.mode; the baseline has no authentication and says open */
  auth: AuthMode;
  devices: number;
  inflight: number;
  atCloud: number;
}

/**
 * Durable forwarding: simulated devices publish QoS 1 telemetry as fast as the proxy acknowledges
 * it (each ack committed to the SQLite cache first); the proxy forwards to a loopback Mosquitto.
 * CPU, memory and disk writes are the proxy process's own, read from /proc.
 */
export async function benchForward(opts: ForwardOptions, progress: (line: string) => void): Promise<ForwardResult> {
  const auth: AuthMode = opts.baseline ? 'open' : (opts.auth ?? 'open');
  const rig = await startRig({
    dir: opts.dataDir ?? mkdtempSync(join(tmpdir(), 'edge-bench-')),
    keepDir: opts.dataDir !== undefined,
    devices: opts.devices,
    auth,
    baseline: opts.baseline,
  });
  const fleet = startLoad({ port: rig.proxy.ports.mqtt, devices: opts.devices, inflight: opts.inflight, tokens: rig.tokens });
  try {
    await fleet.ready;
    progress(`  ${opts.devices} devices connected, ${opts.inflight} in flight each; warming up ${opts.warmupSeconds} s`);
    const m = await measure(rig.proxy.child.pid!, () => fleet.acked(), opts, progress);
    return { auth, devices: opts.devices, inflight: opts.inflight, ...m, atCloud: rig.atCloud() };
  } finally {
    await fleet.stop();
    await rig.stop();
  }
}
