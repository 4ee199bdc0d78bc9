import { benchForward, type AuthMode, type ForwardResult } from './forward.js';
import { median } from './rig.js';

/** The target: token mode costs at most this much more proxy CPU per message than open mode. */
export const TOKEN_CPU_TARGET = 0.05;

export interface CompareAuthOptions {
  devices: number;
  inflight: number;
  warmupSeconds: number;
  seconds: number;
  /** runs of each mode */
  runs: number;
}

export interface ModeFigures {
  runs: number;
  /** medians over the mode's runs */
  messagesPerSecond: number;
  cpuMicrosPerMessage: number;
  /** max/min - 1 of CPU per message over the mode's runs: how far apart its runs are */
  cpuSpread: number;
}

export interface CompareAuthResult {
  /** every run in the order it ran: open, token, open, token, ... */
  runs: ForwardResult[];
  open: ModeFigures;
  token: ModeFigures;
  /** token/open of the median CPU per message */
  cpuRatio: number;
  /** token/open of the median messages per second */
  rateRatio: number;
  target: number;
  withinTarget: boolean;
}

function figures(results: readonly ForwardResult[]): ModeFigures {
  const cpu = results.map((r) => r.cpuMicrosPerMessage);
  return {
    runs: results.length,
    messagesPerSecond: median(results.map((r) => r.messagesPerSecond)),
    cpuMicrosPerMessage: median(cpu),
    cpuSpread: Math.max(...cpu) / Math.min(...cpu) - 1,
  };
}

/**
 * The forward bench in open and in token mode, interleaved (open, token, open, token, ...) so that
 * a drift of the machine (thermal throttling, a neighbour's load, the page cache) falls on both
 * modes alike; each run is a fresh proxy and a fresh loopback Mosquitto. Medians, not means: one
 * disturbed run does not decide the answer.
 */
export async function compareAuth(opts: CompareAuthOptions, progress: (line: string) => void): Promise<CompareAuthResult> {
  const runs: ForwardResult[] = [];
  const shape = { devices: opts.devices, inflight: opts.inflight, seconds: opts.seconds, warmupSeconds: opts.warmupSeconds };
  for (let i = 0; i < opts.runs; i++) {
    for (const auth of ['open', 'token'] as const satisfies readonly AuthMode[]) {
      progress(`run ${runs.length + 1}/${2 * opts.runs}: auth.mode ${auth}`);
      const r = await benchForward({ ...shape, auth }, progress);
      progress(`  ${r.messagesPerSecond.toFixed(0)} msg/s, ${r.cpuMicrosPerMessage.toFixed(1)} us CPU per message`);
      runs.push(r);
    }
  }
  const open = figures(runs.filter((r) => r.auth === 'open'));
  const token = figures(runs.filter((r) => r.auth === 'token'));
  const cpuRatio = token.cpuMicrosPerMessage / open.cpuMicrosPerMessage;
  return {
    runs,
    open,
    token,
    cpuRatio,
    rateRatio: token.messagesPerSecond / open.messagesPerSecond,
    target: TOKEN_CPU_TARGET,
    withinTarget: cpuRatio <= 1 + TOKEN_CPU_TARGET,
  };
}
