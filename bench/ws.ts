import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startLoad, type LoadTransport } from './load.js';
import { measure, median, startRig, type AuthMode, type Measurement } from './rig.js';

/** The targets of the WebSocket paths: proxy CPU per message at most this many times TCP MQTT's. */
export const WS_TARGETS = { mqttWs: 1.25, ws: 1.5 } as const;

export interface WsOptions {
  /** devices of each phase */
  devices: number;
  /** QoS 1 publishes each device keeps in flight */
  inflight: number;
  warmupSeconds: number;
  /** measured seconds of each phase */
  seconds: number;
  /** rounds of the three phases; the figures are each phase's medians */
  runs: number;
  auth?: AuthMode;
}

export interface WsPhase extends Measurement {
  transport: LoadTransport;
  /** publishes refused with an error frame (/ws), over the whole phase */
  failed: number;
}

export interface PhaseFigures {
  messagesPerSecond: number;
  cpuMicrosPerMessage: number;
  cpuCoresUsed: number;
}

export interface WsResult {
  auth: AuthMode;
  devices: number;
  inflight: number;
  runs: number;
  /** every phase in the order it ran */
  phases: WsPhase[];
  /** medians over the runs */
  tcp: PhaseFigures;
  mqttWs: PhaseFigures;
  ws: PhaseFigures;
  /** CPU per message of /mqtt and /ws over TCP MQTT's (medians) */
  mqttWsCpuRatio: number;
  wsCpuRatio: number;
  targets: typeof WS_TARGETS;
  mqttWsWithinTarget: boolean;
  wsWithinTarget: boolean;
  /** acknowledged over all phases (warm-ups included), and what reached the cloud */
  acked: number;
  atCloud: number;
}

const PHASES: ReadonlyArray<{ transport: LoadTransport; label: string }> = [
  { transport: 'tcp', label: 'TCP MQTT' },
  { transport: 'mqtt-ws', label: '/mqtt' },
  { transport: 'ws', label: '/ws' },
];

/**
 * The WebSocket paths beside MQTT over TCP, on one proxy (durable, forwarding to a loopback
 * Mosquitto, as in the forward bench): a phase of TCP MQTT devices, one of /mqtt devices (MQTT over
 * WebSocket) and one of /ws devices (the JSON protocol), each at full speed with QoS 1 and measured
 * on its own. Between phases the proxy is left to send up its backlog, so that one phase's
 * forwarding is not counted in the next.
 */
export async function benchWs(opts: WsOptions, progress: (line: string) => void): Promise<WsResult> {
  const auth = opts.auth ?? 'open';
  const rig = await startRig({ dir: mkdtempSync(join(tmpdir(), 'edge-bench-ws-')), devices: opts.devices, auth });
  const pid = rig.proxy.child.pid!;
  const phases: WsPhase[] = [];
  let acked = 0;
  try {
    for (let run = 1; run <= opts.runs; run++) {
      for (const { transport, label } of PHASES) {
        progress(
          `  ${opts.runs > 1 ? `run ${run}/${opts.runs}, ` : ''}${label}: ${opts.devices} devices, ${opts.inflight} in flight each; warming up ${opts.warmupSeconds} s`,
        );
        const port = transport === 'tcp' ? rig.proxy.ports.mqtt : rig.proxy.ports.http!;
        const load = startLoad({ transport, port, devices: opts.devices, inflight: opts.inflight, tokens: rig.tokens });
        try {
          await load.ready;
          const m = await measure(pid, () => load.acked(), opts, progress);
          phases.push({ transport, ...m, failed: load.failed() });
          progress(`  ${label}: ${m.messagesPerSecond.toFixed(0)} msg/s, ${m.cpuMicrosPerMessage.toFixed(1)} us CPU per message`);
        } finally {
          await load.stop();
          acked += load.acked();
        }
        await caughtUp(rig.atCloud, acked, progress);
      }
    }
  } finally {
    await rig.stop();
  }
  const figures = (t: LoadTransport): PhaseFigures => {
    const of = phases.filter((p) => p.transport === t);
    const med = (k: keyof PhaseFigures): number => median(of.map((p) => p[k]));
    return {
      messagesPerSecond: med('messagesPerSecond'),
      cpuMicrosPerMessage: med('cpuMicrosPerMessage'),
      cpuCoresUsed: med('cpuCoresUsed'),
    };
  };
  const tcp = figures('tcp');
  const mqttWs = figures('mqtt-ws');
  const ws = figures('ws');
  const mqttWsCpuRatio = mqttWs.cpuMicrosPerMessage / tcp.cpuMicrosPerMessage;
  const wsCpuRatio = ws.cpuMicrosPerMessage / tcp.cpuMicrosPerMessage;
  return {
    auth,
    devices: opts.devices,
    inflight: opts.inflight,
    runs: opts.runs,
    phases,
    tcp,
    mqttWs,
    ws,
    mqttWsCpuRatio,
    wsCpuRatio,
    targets: WS_TARGETS,
    mqttWsWithinTarget: mqttWsCpuRatio <= WS_TARGETS.mqttWs,
    wsWithinTarget: wsCpuRatio <= WS_TARGETS.ws,
    acked,
    atCloud: rig.atCloud(),
  };
}

/** Wait (up to 60 s) until the cloud has what was acknowledged, so the next phase starts without a backlog. */
export async function caughtUp(atCloud: () => number, acked: number, progress: (line: string) => void): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (atCloud() < acked) {
    if (Date.now() > deadline) {
      progress(`  the cloud has ${atCloud()} of ${acked} acknowledged messages after 60 s; going on`);
      return;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
