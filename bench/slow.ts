import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker, isMainThread, parentPort, workerData, type MessagePort } from 'node:worker_threads';
import mqtt from 'mqtt';
import WebSocket from 'ws';
import { loadDeviceId, startLoad } from './load.js';
import { sampleProc } from './proc.js';
import { measure, startRig } from './rig.js';
import { figures, type LatencyFigures } from './swap.js';

/** The target: a healthy subscriber's p99 with slow consumers at most 20 % over its p99 without, or 2 ms over. */
export const SLOW_TARGET = { ratio: 1.2, slackMs: 2 } as const;

export interface SlowOptions {
  /** TCP MQTT publishers, devices/<id>/telemetry */
  devices: number;
  /** messages/s over all publishers, every other one QoS 0 */
  rate: number;
  warmupSeconds: number;
  /** measured seconds of each phase */
  seconds: number;
  /** slow /ws consumers in phase B at once (each replaced once the proxy closes it) */
  slowConsumers: number;
  /** rounds of the two phases (A, B, A, B, ...); the latency figures pool the rounds' messages */
  runs: number;
}

export interface SubscriberFigures {
  all: LatencyFigures;
  qos0: LatencyFigures;
  qos1: LatencyFigures;
  /** messages published in the phase that this subscriber did not receive */
  missing: number;
}

export interface SlowPhase {
  label: PhaseLabel;
  /** measured seconds, over every round */
  seconds: number;
  /** publishes sent in the phase (QoS 0 and 1) */
  published: number;
  /** latency publish -> delivery at each healthy subscriber, the rounds' messages pooled */
  tcp: SubscriberFigures;
  ws: SubscriberFigures;
  /** each round's p99 (ms) */
  rounds: Array<{ tcpP99: number; wsP99: number }>;
  /** the proxy's CPU over the phase (mean over the rounds) */
  cpuCoresUsed: number;
  /** the proxy's resident memory at the phase's start, its peak and its end (from /proc), MiB */
  rssMiB: { start: number; peak: number; end: number };
  /** the proxy's V8 heap in use (nodejs_heap_size_used_bytes), its peak and its end, MiB */
  heapUsedMiB: { peak: number; end: number };
  /** the proxy's Buffers and other memory outside the V8 heap (nodejs_external_memory_bytes), MiB */
  externalMiB: { peak: number; end: number };
  /**
   * the proxy's full garbage collections (mark-compact) over the phase and the event loop time
   * they and incremental marking took (nodejs_gc_duration_seconds): under a steady load, what sets
   * the latency's tail
   */
  fullGcs: number;
  gcPauseMs: number;
  /** edge_messages_dropped_total{reason="slow_consumer"} and edge_slow_consumers_closed_total{protocol="ws"} over the phase */
  dropped: number;
  closed: number;
  /** seconds of the phase in which the dropped counter rose (a slow consumer over its limit) */
  laggingSeconds: number;
}

export interface SlowConsumerRecord {
  round: number;
  /**
   * Reads again as soon as the proxy closed it (a device that wakes up: it drains its backlog and
   * finds the close frame); the others never read again (a dead device) until phase B is over.
   */
  readsAgain: boolean;
  /** seconds after the round's first slow consumer joined */
  joinedAt: number;
  /** seconds from its join until the proxy counted it closed (edge_slow_consumers_closed_total, read once a second) */
  closedAfter: number | null;
  /** the close frame's code and reason, read once it reads again */
  code: number | null;
  reason: string;
  /** still lagging, not closed, when its phase B ended: the bench cut it (its code is then 1006) */
  cutAtEnd: boolean;
}

export interface Verdict {
  p99A: number;
  p99B: number;
  allowedMs: number;
  within: boolean;
}

export interface SlowResult {
  devices: number;
  rate: number;
  runs: number;
  /** each round: from the first slow consumer's join until the proxy first dropped for it, s */
  firstLagAfter: number[];
  a: SlowPhase;
  b: SlowPhase;
  c: SlowPhase;
  consumers: SlowConsumerRecord[];
  /** each healthy subscriber: B's p99 within max(A's x 1.2, A's + 2 ms) */
  verdict: { tcp: Verdict; ws: Verdict };
  /** each healthy subscriber: B's p99 held against C's as the target holds it against A's */
  againstReaders: { tcp: Verdict; ws: Verdict };
  withinTarget: boolean;
  target: typeof SLOW_TARGET;
}

/**
 * A: no slow consumer. B: slow consumers. C: as many /ws subscribers to devices/# as B has slow
 * consumers, reading as fast as they are sent to: what B costs for its subscribers alone, whatever
 * their pace, so that B against C is the cost of their slowness.
 */
export type PhaseLabel = 'A' | 'B' | 'C';

/** One latency sample: when it was published (performance.now()), how long it took to arrive, its QoS. */
type Sample = [sentAt: number, ms: number, qos: 0 | 1];

/** Every other message QoS 0 (odd sequence numbers), the rest QoS 1. */
const isQos0 = (seq: number): boolean => seq % 2 === 1;

/** ~120 bytes of JSON like the other benches' telemetry, with the publish time `t` to a microsecond. */
function payload(device: number, seq: number, t: number): string {
  return `{"deviceId":"${loadDeviceId(device)}","seq":${seq},"t":${t.toFixed(3)},"temp":${(21 + (seq % 30) / 10).toFixed(2)},"humidity":45.0,"battery":97}`;
}

function sample(payloadValue: unknown, now: number): Sample | null {
  if (typeof payloadValue !== 'object' || payloadValue === null) return null;
  const { seq, t } = payloadValue as { seq?: unknown; t?: unknown };
  return typeof seq === 'number' && typeof t === 'number' ? [t, now - t, isQos0(seq) ? 0 : 1] : null;
}

/** A healthy subscriber to devices/+/telemetry: every message's latency, publish to delivery, in this process's clock. */
interface Healthy {
  stop(): Promise<void>;
}

async function tcpSubscriber(port: number, samples: Sample[]): Promise<Healthy> {
  const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, { clientId: 'bench-slow-tcp', clean: true, reconnectPeriod: 0 });
  client.on('message', (_topic, body) => {
    const s = sample(JSON.parse(body.toString('utf8')), performance.now());
    if (s) samples.push(s);
  });
  await client.subscribeAsync('devices/+/telemetry', { qos: 1 });
  return { stop: () => client.endAsync(true) };
}

/** A /ws client subscribed to `filter`, once the proxy acknowledged the subscription; `onMsg` reads what follows. */
function wsSubscribe(
  port: number,
  id: string,
  filter: string,
  onMsg?: (frame: { op?: string; payload?: unknown }) => void,
): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws?d=${encodeURIComponent(id)}`, { perMessageDeflate: false });
    let subscribed = false;
    ws.once('error', reject);
    ws.on('open', () => ws.send(JSON.stringify({ op: 'sub', topic: filter, id: 'sub-1' })));
    ws.on('message', (data: Buffer) => {
      if (subscribed) {
        if (onMsg) onMsg(JSON.parse(data.toString('utf8')) as { op?: string; payload?: unknown });
        return;
      }
      const frame = JSON.parse(data.toString('utf8')) as { op?: string; id?: unknown };
      if (frame.op === 'ack' && frame.id === 'sub-1') {
        subscribed = true;
        resolve(ws);
      } else reject(new Error(`${id}: subscribing to ${filter} was answered ${data.toString('utf8').slice(0, 200)}`));
    });
  });
}

async function wsSubscriber(port: number, samples: Sample[]): Promise<Healthy> {
  const ws = await wsSubscribe(port, 'bench-slow-ws', 'devices/+/telemetry', (frame) => {
    const s = frame.op === 'msg' ? sample(frame.payload, performance.now()) : null;
    if (s) samples.push(s);
  });
  return {
    stop: () =>
      new Promise<void>((resolve) => {
        ws.once('close', () => resolve());
        ws.close(1000);
      }),
  };
}

// ---- slow consumers, in a worker thread of their own

/**
 * A slow consumer is a /ws subscriber to devices/# that stops reading once subscribed (its socket
 * paused), so that what the proxy sends it piles up in the kernel's buffers, then in the proxy's.
 * Once the proxy counted it closed, every other one reads again at once, to find the close frame
 * behind its backlog; the others read only when phase B is over, and find what the proxy did to a
 * peer that never answered. The consumers live in a worker thread: megabytes of backlog read at
 * once would otherwise stall this thread's event loop, and with it the healthy subscribers' clocks.
 */
const SLOW_WORKER = 'bench-slow-consumers';

type ToWorker = { op: 'join'; id: string; port: number; reads: boolean } | { op: 'resume'; id: string } | { op: 'cut'; id: string };
type FromWorker =
  { op: 'joined'; id: string } | { op: 'failed'; id: string; message: string } | { op: 'closed'; id: string; code: number; reason: string };

function consumerWorker(port: MessagePort): void {
  const sockets = new Map<string, WebSocket>();
  const tell = (m: FromWorker): void => port.postMessage(m);
  port.on('message', (m: ToWorker) => {
    if (m.op === 'join')
      wsSubscribe(m.port, m.id, 'devices/#').then(
        (ws) => {
          if (!m.reads) ws.pause();
          sockets.set(m.id, ws);
          ws.once('close', (code: number, reason: Buffer) => {
            sockets.delete(m.id);
            tell({ op: 'closed', id: m.id, code, reason: reason.toString('utf8') });
          });
          tell({ op: 'joined', id: m.id });
        },
        (err: Error) => tell({ op: 'failed', id: m.id, message: err.message }),
      );
    else if (m.op === 'resume') sockets.get(m.id)?.resume();
    else sockets.get(m.id)?.terminate();
  });
}

if (!isMainThread && parentPort && (workerData as { role?: unknown } | null)?.role === SLOW_WORKER) consumerWorker(parentPort);

interface SlowConsumer {
  id: string;
  record: SlowConsumerRecord;
  joinedAt: number;
  /** when the proxy counted it closed */
  closedAt: number | null;
  /** reading again */
  resumed: boolean;
  closed: Promise<void>;
}

/** The slow consumers, driven in their worker thread. */
class SlowConsumers {
  readonly all: SlowConsumer[] = [];
  private readonly worker = new Worker(new URL(import.meta.url), { workerData: { role: SLOW_WORKER } });
  private readonly joining = new Map<string, { resolve: () => void; reject: (err: Error) => void }>();
  private readonly closing = new Map<string, (m: { code: number; reason: string }) => void>();
  private joined = 0;

  constructor(
    private readonly port: number,
    progress: (line: string) => void,
  ) {
    this.worker.on('error', (err) => progress(`  the slow consumers' worker failed: ${err.message}`));
    this.worker.on('message', (m: FromWorker) => {
      if (m.op === 'closed') return this.closing.get(m.id)?.(m);
      const j = this.joining.get(m.id);
      this.joining.delete(m.id);
      if (m.op === 'joined') j?.resolve();
      else j?.reject(new Error(m.message));
    });
  }

  async join(round: number, since: number): Promise<SlowConsumer> {
    const id = `bench-slow-consumer-${++this.joined}`;
    // Every other one reads again once closed (a device that wakes up), the others never (a dead one).
    const readsAgain = this.joined % 2 === 1;
    const record: SlowConsumerRecord = { round, readsAgain, joinedAt: 0, closedAfter: null, code: null, reason: '', cutAtEnd: false };
    const closed = new Promise<void>((resolve) =>
      this.closing.set(id, (m) => {
        record.code = m.code;
        record.reason = m.reason;
        resolve();
      }),
    );
    await this.open(id, false);
    const joinedAt = performance.now();
    record.joinedAt = (joinedAt - since) / 1000;
    const c: SlowConsumer = { id, record, joinedAt, closedAt: null, resumed: false, closed };
    this.all.push(c);
    return c;
  }

  /** A /ws subscriber to devices/# in the worker, reading (`reads`) or paused from the start. */
  private open(id: string, reads: boolean): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.joining.set(id, { resolve, reject });
      this.worker.postMessage({ op: 'join', id, port: this.port, reads } satisfies ToWorker);
    });
  }

  /** Phase C's subscribers: they read all along; `cut` ends them. */
  async joinReaders(count: number): Promise<string[]> {
    const ids = Array.from({ length: count }, (_, k) => `bench-reader-${++this.joined}-${k}`);
    await Promise.all(ids.map((id) => this.open(id, true)));
    return ids;
  }

  cutReaders(ids: string[]): void {
    for (const id of ids) this.worker.postMessage({ op: 'cut', id } satisfies ToWorker);
  }

  resume(c: SlowConsumer): void {
    c.resumed = true;
    this.worker.postMessage({ op: 'resume', id: c.id } satisfies ToWorker);
  }

  cut(c: SlowConsumer): void {
    this.worker.postMessage({ op: 'cut', id: c.id } satisfies ToWorker);
  }

  async stop(): Promise<void> {
    await this.worker.terminate();
  }
}

// ---- the proxy, seen from outside

interface Metrics {
  dropped: number;
  closed: number;
  heapUsed: number;
  /** memory outside the V8 heap held by JS objects: Buffers (nodejs_external_memory_bytes) */
  external: number;
  /** nodejs_gc_duration_seconds_count{kind="major"} */
  fullGcs: number;
  /** nodejs_gc_duration_seconds_sum of major and incremental, in ms */
  gcPauseMs: number;
}

/** The counters of /metrics this bench reads (loopback reads need no admin token). */
async function readMetrics(adminPort: number): Promise<Metrics> {
  const res = await fetch(`http://127.0.0.1:${adminPort}/metrics`);
  const text = await res.text();
  const value = (re: RegExp): number => Number(re.exec(text)?.[1] ?? 0);
  return {
    dropped: value(/^edge_messages_dropped_total\{[^}]*reason="slow_consumer"[^}]*\} (\S+)$/m),
    closed: value(/^edge_slow_consumers_closed_total\{[^}]*protocol="ws"[^}]*\} (\S+)$/m),
    heapUsed: value(/^nodejs_heap_size_used_bytes (\S+)$/m),
    external: value(/^nodejs_external_memory_bytes (\S+)$/m),
    fullGcs: value(/^nodejs_gc_duration_seconds_count\{kind="major"\} (\S+)$/m),
    gcPauseMs:
      (value(/^nodejs_gc_duration_seconds_sum\{kind="major"\} (\S+)$/m) +
        value(/^nodejs_gc_duration_seconds_sum\{kind="incremental"\} (\S+)$/m)) *
      1000,
  };
}

/** One reading a second, in both phases alike (a scrape costs the proxy a little: both pay it). */
interface Reading extends Metrics {
  at: number;
  rss: number;
}

/** One measured window of a phase. */
interface Window {
  label: PhaseLabel;
  t0: number;
  t1: number;
  cpu: number;
  rss0: number;
}

const MiB = 2 ** 20;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Slow consumers against a steady load on one durable proxy (as the forward bench makes it): TCP
 * MQTT devices publish at a fixed moderate rate, every other message QoS 0; a TCP MQTT and a /ws
 * subscriber to devices/+/telemetry measure each message's latency, publish to delivery. Phase A
 * runs so; phase B adds /ws subscribers to devices/# that stop reading, each replaced once the
 * proxy closes it, so that one is over http.sendBufferBytes all along. The healthy subscribers' p99
 * in B is held against A's, the proxy's memory is followed in both, and the close codes and the
 * counters of /metrics show that the proxy dropped and closed as docs/websocket.md says.
 */
export async function benchSlow(opts: SlowOptions, progress: (line: string) => void): Promise<SlowResult> {
  const rig = await startRig({ dir: mkdtempSync(join(tmpdir(), 'edge-bench-slow-')), devices: opts.devices });
  const pid = rig.proxy.child.pid!;
  const { mqtt: mqttPort, admin: adminPort } = rig.proxy.ports;
  const httpPort = rig.proxy.ports.http!;
  const tcpSamples: Sample[] = [];
  const wsSamples: Sample[] = [];
  /** when each message was published */
  const sentAt: number[] = [];
  const readings: Reading[] = [];
  const windows: Window[] = [];
  const firstLagAfter: number[] = [];
  const stops: Array<() => Promise<void>> = [];
  const consumers = new SlowConsumers(httpPort, progress);
  let monitoring = true;
  /** phase B of `round` is under way: a consumer the proxy closes is replaced */
  let joining = false;
  let round = 0;
  let roundStart = 0;

  const replace = (): void => {
    if (joining) void consumers.join(round, roundStart).catch((err: Error) => progress(`  a slow consumer could not join: ${err.message}`));
  };
  const monitor = (async (): Promise<void> => {
    while (monitoring) {
      const at = performance.now();
      try {
        const m = await readMetrics(adminPort);
        const last = readings.at(-1);
        readings.push({ ...m, at, rss: sampleProc(pid).rssBytes });
        // Closed by the proxy: the oldest one not counted closed yet (they pass the limit in the order
        // they joined); while B lasts another takes its place, so that one is always lagging.
        for (let k = last ? m.closed - last.closed : 0; k > 0; k--) {
          const next = consumers.all.find((c) => c.closedAt === null && !c.record.cutAtEnd);
          if (!next) break;
          next.closedAt = at;
          next.record.closedAfter = (at - next.joinedAt) / 1000;
          replace();
        }
        for (const c of consumers.all) if (c.closedAt !== null && !c.resumed && c.record.readsAgain) consumers.resume(c);
      } catch (err) {
        progress(`  reading /metrics failed: ${(err as Error).message}`);
      }
      await sleep(1000 - (performance.now() - at));
    }
  })();

  try {
    const tcp = await tcpSubscriber(mqttPort, tcpSamples);
    stops.push(() => tcp.stop());
    const ws = await wsSubscriber(httpPort, wsSamples);
    stops.push(() => ws.stop());
    const load = startLoad({
      port: mqttPort,
      devices: opts.devices,
      inflight: 16,
      rate: opts.rate,
      qos0: (_d, seq) => isQos0(seq),
      payload: (d, seq) => {
        const t = performance.now();
        sentAt.push(t);
        return payload(d, seq, t);
      },
    });
    stops.push(() => load.stop());
    await load.ready;
    progress(
      `  ${opts.devices} TCP MQTT devices, ${opts.rate} msg/s (half QoS 0, half QoS 1); healthy subscribers: TCP MQTT and /ws; warming up ${opts.warmupSeconds} s`,
    );
    await sleep(opts.warmupSeconds * 1000);
    const handled = (): number => load.acked() + load.sentQos0();
    const phase = async (label: PhaseLabel): Promise<void> => {
      const rss0 = sampleProc(pid).rssBytes;
      const t0 = performance.now();
      const m = await measure(pid, handled, { warmupSeconds: 0, seconds: opts.seconds }, progress);
      windows.push({ label, t0, t1: performance.now(), cpu: m.cpuCoresUsed, rss0 });
      progress(
        `  phase ${label}: ${m.messagesPerSecond.toFixed(0)} msg/s, proxy ${m.cpuCoresUsed.toFixed(2)} cores, RSS ${m.rssMiB.toFixed(0)} MiB`,
      );
    };

    for (round = 1; round <= opts.runs; round++) {
      const of = opts.runs > 1 ? ` (round ${round}/${opts.runs})` : '';
      progress(`  phase A${of}: no slow consumer, ${opts.seconds} s`);
      await phase('A');

      // B is measured once the first slow consumer is over its limit (the proxy drops for it); the
      // others join then, so that one lags while the first waits out its 10 s.
      roundStart = performance.now();
      joining = true;
      const dropped0 = readings.at(-1)?.dropped ?? 0;
      await consumers.join(round, roundStart);
      progress(`  phase B${of}: a /ws subscriber to devices/# stopped reading; waiting for the proxy to drop for it`);
      const deadline = performance.now() + 120_000;
      while ((readings.at(-1)?.dropped ?? 0) === dropped0) {
        if (performance.now() > deadline) throw new Error('the proxy never dropped for the slow consumer within 120 s');
        await sleep(100);
      }
      firstLagAfter.push((performance.now() - roundStart) / 1000);
      progress(
        `  over its limit ${firstLagAfter.at(-1)!.toFixed(1)} s after it joined; ${opts.slowConsumers} slow consumer(s) from now, ${opts.seconds} s`,
      );
      for (let k = 1; k < opts.slowConsumers; k++) await consumers.join(round, roundStart);
      await phase('B');
      joining = false;
      await sleep(1500); // the last deliveries of B arrive, and a reading counts the last closes
      // Those the proxy closed read again now, for their close frames; those still lagging are cut.
      const ofRound = consumers.all.filter((c) => c.record.round === round);
      const until = performance.now() + 15_000;
      while (ofRound.some((c) => c.closedAt !== null && c.record.code === null) && performance.now() < until) {
        for (const c of ofRound) if (c.closedAt !== null && !c.resumed) consumers.resume(c);
        await sleep(100);
      }
      for (const c of ofRound)
        if (c.record.code === null) {
          c.record.cutAtEnd = true;
          consumers.cut(c);
        }
      await Promise.race([Promise.all(ofRound.map((c) => c.closed)), sleep(2000)]);
      await sleep(3000); // the proxy lets go of their backlogs before C

      const readers = await consumers.joinReaders(opts.slowConsumers);
      progress(`  phase C${of}: ${opts.slowConsumers} /ws subscriber(s) to devices/# that keep reading, ${opts.seconds} s`);
      await sleep(1000);
      await phase('C');
      consumers.cutReaders(readers);
      if (round < opts.runs) await sleep(2000);
    }
    await load.stop();
    stops.pop();
  } finally {
    joining = false;
    monitoring = false;
    await monitor;
    await consumers.stop();
    for (const s of stops.reverse()) await s().catch(() => undefined);
    await rig.stop();
  }

  const phaseFigures = (label: PhaseLabel): SlowPhase => {
    const wins = windows.filter((w) => w.label === label);
    const inWindow = (w: Window) => (t: number) => t >= w.t0 && t < w.t1;
    const inPhase = (t: number): boolean => wins.some((w) => inWindow(w)(t));
    const sent = sentAt.filter(inPhase).length;
    const subscriber = (samples: Sample[]): SubscriberFigures => {
      const of = samples.filter((s) => inPhase(s[0]));
      return {
        all: figures(of.map((s) => s[1])),
        qos0: figures(of.filter((s) => s[2] === 0).map((s) => s[1])),
        qos1: figures(of.filter((s) => s[2] === 1).map((s) => s[1])),
        missing: sent - of.length,
      };
    };
    const p99Of = (samples: Sample[], w: Window): number => figures(samples.filter((s) => inWindow(w)(s[0])).map((s) => s[1])).p99;
    // Readings from the last one before a window to the first one after it.
    const around = (w: Window): Reading[] => {
      const first = readings.filter((r) => r.at <= w.t0).at(-1);
      return [...(first ? [first] : []), ...readings.filter((r) => r.at > w.t0 && r.at <= w.t1 + 1000)];
    };
    let dropped = 0;
    let closed = 0;
    let lagging = 0;
    let fullGcs = 0;
    let gcPauseMs = 0;
    const during: Reading[] = [];
    for (const w of wins) {
      const rs = around(w);
      if (rs.length === 0) continue;
      dropped += rs.at(-1)!.dropped - rs[0]!.dropped;
      closed += rs.at(-1)!.closed - rs[0]!.closed;
      fullGcs += rs.at(-1)!.fullGcs - rs[0]!.fullGcs;
      gcPauseMs += rs.at(-1)!.gcPauseMs - rs[0]!.gcPauseMs;
      for (let i = 1; i < rs.length; i++) if (rs[i]!.at <= w.t1 && rs[i]!.dropped > rs[i - 1]!.dropped) lagging++;
      during.push(...rs.slice(1));
    }
    const end = during.at(-1);
    return {
      label,
      seconds: wins.reduce((s, w) => s + (w.t1 - w.t0) / 1000, 0),
      published: sent,
      tcp: subscriber(tcpSamples),
      ws: subscriber(wsSamples),
      rounds: wins.map((w) => ({ tcpP99: p99Of(tcpSamples, w), wsP99: p99Of(wsSamples, w) })),
      cpuCoresUsed: wins.reduce((s, w) => s + w.cpu, 0) / wins.length,
      rssMiB: {
        start: (wins[0]?.rss0 ?? 0) / MiB,
        peak: Math.max(...wins.map((w) => w.rss0), ...during.map((r) => r.rss)) / MiB,
        end: (end?.rss ?? 0) / MiB,
      },
      heapUsedMiB: { peak: Math.max(0, ...during.map((r) => r.heapUsed)) / MiB, end: (end?.heapUsed ?? 0) / MiB },
      externalMiB: { peak: Math.max(0, ...during.map((r) => r.external)) / MiB, end: (end?.external ?? 0) / MiB },
      fullGcs,
      gcPauseMs,
      dropped,
      closed,
      laggingSeconds: lagging,
    };
  };
  const a = phaseFigures('A');
  const b = phaseFigures('B');
  const c = phaseFigures('C');
  const verdict = (p99A: number, p99B: number): Verdict => {
    const allowedMs = Math.max(p99A * SLOW_TARGET.ratio, p99A + SLOW_TARGET.slackMs);
    return { p99A, p99B, allowedMs, within: p99B <= allowedMs };
  };
  const v = { tcp: verdict(a.tcp.all.p99, b.tcp.all.p99), ws: verdict(a.ws.all.p99, b.ws.all.p99) };
  const againstReaders = { tcp: verdict(c.tcp.all.p99, b.tcp.all.p99), ws: verdict(c.ws.all.p99, b.ws.all.p99) };
  return {
    devices: opts.devices,
    rate: opts.rate,
    runs: opts.runs,
    firstLagAfter,
    a,
    b,
    c,
    consumers: consumers.all.map((c) => c.record),
    verdict: v,
    againstReaders,
    withinTarget: v.tcp.within && v.ws.within,
    target: SLOW_TARGET,
  };
}
