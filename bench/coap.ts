import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startLoad } from './load.js';
import { startCoapLoad } from './load-coap.js';
import { measure, median, startRig, type AuthMode, type Measurement } from './rig.js';
import { caughtUp, type PhaseFigures } from './ws.js';

/** The target of the CoAP path: proxy CPU per message at most this many times TCP MQTT's. */
export const COAP_TARGET = 1.5;

export interface CoapBenchOptions {
  /** devices of each phase */
  devices: number;
  /** publishes each device keeps in flight, in both phases: 1 is RFC 7252's NSTART */
  inflight: number;
  warmupSeconds: number;
  /** measured seconds of each phase */
  seconds: number;
  /** rounds of the two phases; the figures are each phase's medians */
  runs: number;
  auth?: AuthMode;
}

export type CoapTransport = 'tcp' | 'coap';

export interface CoapPhase extends Measurement {
  transport: CoapTransport;
  /** publishes answered with an error code (CoAP), over the whole phase */
  failed: number;
  /** CoAP requests sent again for want of an answer */
  retransmitted: number;
  /** CoAP publishes answered by a separate response (an empty ACK first: the commit took over 500 ms) */
  separate: number;
}

export interface CoapResult {
  auth: AuthMode;
  devices: number;
  inflight: number;
  runs: number;
  /** every phase in the order it ran */
  phases: CoapPhase[];
  /** medians over the runs */
  tcp: PhaseFigures;
  coap: PhaseFigures;
  /** CoAP's CPU per message over TCP MQTT's (medians) */
  coapCpuRatio: number;
  target: number;
  withinTarget: boolean;
  /** acknowledged over all phases (warm-ups included), and what reached the cloud */
  acked: number;
  atCloud: number;
}

const PHASES: ReadonlyArray<{ transport: CoapTransport; label: string }> = [
  { transport: 'tcp', label: 'TCP MQTT' },
  { transport: 'coap', label: 'CoAP' },
];

/**
 * CoAP beside MQTT over TCP, on one proxy (durable, forwarding to a loopback Mosquitto, as in the
 * forward bench): a phase of TCP MQTT devices with QoS 1 publishes, then one of CoAP devices with
 * confirmable publishes (each answered 2.04 once committed), the same number of devices keeping the
 * same number in flight, each phase measured on its own. Between phases the proxy is left to send
 * up its backlog, so that one phase's forwarding is not counted in the next.
 */
export async function benchCoap(opts: CoapBenchOptions, progress: (line: string) => void): Promise<CoapResult> {
  const auth = opts.auth ?? 'open';
  const rig = await startRig({ dir: mkdtempSync(join(tmpdir(), 'edge-bench-coap-')), devices: opts.devices, auth });
  const pid = rig.proxy.child.pid!;
  const coapPort = (rig.proxy.ports as { coap?: number }).coap;
  const phases: CoapPhase[] = [];
  let acked = 0;
  try {
    if (!coapPort) throw new Error(`the proxy wrote no coap port: ${JSON.stringify(rig.proxy.ports)}`);
    for (let run = 1; run <= opts.runs; run++) {
      for (const { transport, label } of PHASES) {
        progress(
          `  ${opts.runs > 1 ? `run ${run}/${opts.runs}, ` : ''}${label}: ${opts.devices} devices, ${opts.inflight} in flight each; warming up ${opts.warmupSeconds} s`,
        );
        const load =
          transport === 'tcp'
            ? {
                ...startLoad({ transport, port: rig.proxy.ports.mqtt, devices: opts.devices, inflight: opts.inflight, tokens: rig.tokens }),
                retransmitted: () => 0,
                separate: () => 0,
              }
            : startCoapLoad({ port: coapPort, devices: opts.devices, inflight: opts.inflight, tokens: rig.tokens });
        try {
          await load.ready;
          const m = await measure(pid, () => load.acked(), opts, progress);
          phases.push({ transport, ...m, failed: load.failed(), retransmitted: load.retransmitted(), separate: load.separate() });
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
  const figures = (t: CoapTransport): PhaseFigures => {
    const of = phases.filter((p) => p.transport === t);
    const med = (k: keyof PhaseFigures): number => median(of.map((p) => p[k]));
    return {
      messagesPerSecond: med('messagesPerSecond'),
      cpuMicrosPerMessage: med('cpuMicrosPerMessage'),
      cpuCoresUsed: med('cpuCoresUsed'),
    };
  };
  const tcp = figures('tcp');
  const coap = figures('coap');
  const coapCpuRatio = coap.cpuMicrosPerMessage / tcp.cpuMicrosPerMessage;
  return {
    auth,
    devices: opts.devices,
    inflight: opts.inflight,
    runs: opts.runs,
    phases,
    tcp,
    coap,
    coapCpuRatio,
    target: COAP_TARGET,
    withinTarget: coapCpuRatio <= COAP_TARGET,
    acked,
    atCloud: rig.atCloud(),
  };
}
