import { connect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import mqtt from 'mqtt';
import mqttPacket from 'mqtt-packet';
import { loadDeviceId } from './load.js';

/**
 * Vibration devices for the inference bench, and the subscriber that times what comes back.
 *
 * Each device is a raw MQTT 3.1.1 connection publishing windows at QoS 0, the packets built once
 * before the run: a window is several kilobytes of JSON, and building it per publish would spend
 * the bench's CPU, which shares the machine with the proxy, on the client. A subscriber to the
 * results (MQTT.js) reads each one's `latencyMs`, measured in the proxy from arrival to result, and
 * times publish → result itself: a device's results come back in the order it sent its windows (one
 * model, inputs queued in arrival order), so each pairs with the oldest window of its device still
 * waiting. Two ways to send: closed (each device keeps `k` windows awaiting their result, sending
 * the next as a result comes: the highest rate the proxy sustains) or paced (a steady rate over all
 * devices, whatever comes back).
 */
export interface InferLoadOptions {
  /** the proxy's MQTT port */
  port: number;
  devices: number;
  /** the payloads device `d` cycles through */
  windows: (device: number) => string[];
  /** the results' topic filter; the device id is the topic's last level */
  results: string;
}

export interface PhaseFigures {
  seconds: number;
  sent: number;
  results: number;
  /** results a second over the measured seconds */
  perSecond: number;
  /** arrival → result in the proxy (the result's latencyMs), ms, sorted */
  proxyMs: number[];
  /** publish → result at the subscriber, ms, sorted */
  endToEndMs: number[];
  byLabel: Record<string, number>;
}

interface Device {
  id: string;
  socket: Socket;
  packets: Buffer[];
  next: number;
  /** send times of the windows awaiting their result, oldest first */
  waiting: number[];
}

export class InferLoad {
  private readonly devices: Device[] = [];
  private readonly byId = new Map<string, Device>();
  private subscriber: mqtt.MqttClient | null = null;
  private mode: { kind: 'closed'; k: number } | { kind: 'paced'; rate: number } | null = null;
  private pacer: NodeJS.Timeout | null = null;
  private sent = 0;
  private results = 0;
  private proxyMs: number[] = [];
  private endToEndMs: number[] = [];
  private byLabel: Record<string, number> = {};
  private markedAt = 0;
  private unmatched = 0;

  private constructor(private readonly opts: InferLoadOptions) {}

  static async start(opts: InferLoadOptions): Promise<InferLoad> {
    const load = new InferLoad(opts);
    await load.open();
    return load;
  }

  private async open(): Promise<void> {
    const { port } = this.opts;
    this.subscriber = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, { clientId: 'bench-results', reconnectPeriod: 0 });
    this.subscriber.on('message', (topic, payload) => this.onResult(topic, payload));
    await this.subscriber.subscribeAsync(this.opts.results, { qos: 0 });
    const opened: Promise<void>[] = [];
    for (let d = 0; d < this.opts.devices; d++) {
      const id = loadDeviceId(d);
      const topic = `devices/${id}/vibration`;
      const packets = this.opts
        .windows(d)
        .map((payload) => mqttPacket.generate({ cmd: 'publish', topic, payload, qos: 0, retain: false, dup: false }));
      const socket = connect(port, '127.0.0.1');
      socket.setNoDelay(true);
      const device: Device = { id, socket, packets, next: 0, waiting: [] };
      this.devices.push(device);
      this.byId.set(id, device);
      opened.push(
        new Promise<void>((resolve, reject) => {
          socket.once('error', reject);
          socket.once('connect', () =>
            socket.write(
              mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: id, clean: true, keepalive: 60 }),
            ),
          );
          // CONNACK is the only packet a device hears: QoS 0 publishes are not acknowledged.
          socket.once('data', (chunk: Buffer) =>
            chunk[0] === 0x20 && chunk[3] === 0 ? resolve() : reject(new Error(`${id}: the proxy refused the connection`)),
          );
        }),
      );
    }
    await Promise.all(opened);
  }

  /** Each device keeps `k` windows awaiting their result from now on. */
  closed(k: number): void {
    this.halt();
    this.mode = { kind: 'closed', k };
    for (const d of this.devices) while (d.waiting.length < k) this.send(d);
  }

  /** `rate` windows a second over all devices, in turn, from now on. */
  paced(rate: number): void {
    this.halt();
    this.mode = { kind: 'paced', rate };
    const start = performance.now();
    let turn = 0;
    const tick = (): void => {
      const due = Math.floor(((performance.now() - start) * rate) / 1000) - paced;
      for (let i = 0; i < due; i++) {
        this.send(this.devices[turn % this.devices.length]!);
        turn++;
        paced++;
      }
    };
    let paced = 0;
    this.pacer = setInterval(tick, 1);
  }

  /** Counting starts afresh now (after a warm-up). */
  mark(): void {
    this.sent = 0;
    this.results = 0;
    this.proxyMs = [];
    this.endToEndMs = [];
    this.byLabel = {};
    this.markedAt = performance.now();
  }

  /** What came back since mark(). */
  figures(): PhaseFigures {
    const seconds = (performance.now() - this.markedAt) / 1000;
    return {
      seconds,
      sent: this.sent,
      results: this.results,
      perSecond: this.results / seconds,
      proxyMs: [...this.proxyMs].sort((a, b) => a - b),
      endToEndMs: [...this.endToEndMs].sort((a, b) => a - b),
      byLabel: { ...this.byLabel },
    };
  }

  /** Stops sending and waits (up to `timeoutMs`) for the windows still awaiting their result; how many never got one. */
  async drain(timeoutMs = 5000): Promise<number> {
    this.halt();
    const deadline = Date.now() + timeoutMs;
    const waiting = (): number => this.devices.reduce((n, d) => n + d.waiting.length, 0);
    while (waiting() > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const lost = waiting();
    for (const d of this.devices) d.waiting = [];
    return lost;
  }

  /** Results that came with no window of their device waiting (a pairing that went wrong), over the run. */
  unpaired(): number {
    return this.unmatched;
  }

  async stop(): Promise<void> {
    this.halt();
    for (const d of this.devices) d.socket.destroy();
    await this.subscriber?.endAsync(true);
  }

  private halt(): void {
    if (this.pacer) clearInterval(this.pacer);
    this.pacer = null;
    this.mode = null;
  }

  private send(d: Device): void {
    d.waiting.push(performance.now());
    d.socket.write(d.packets[d.next]!);
    d.next = (d.next + 1) % d.packets.length;
    this.sent++;
  }

  private onResult(topic: string, payload: Buffer): void {
    const now = performance.now();
    const d = this.byId.get(topic.slice(topic.lastIndexOf('/') + 1));
    const sentAt = d?.waiting.shift();
    if (!d || sentAt === undefined) {
      this.unmatched++;
      return;
    }
    const r = JSON.parse(payload.toString('utf8')) as { label?: string; latencyMs?: number };
    // Results of windows sent before mark() are not this phase's.
    if (sentAt >= this.markedAt) {
      this.results++;
      this.endToEndMs.push(now - sentAt);
      if (typeof r.latencyMs === 'number') this.proxyMs.push(r.latencyMs);
      if (typeof r.label === 'string') this.byLabel[r.label] = (this.byLabel[r.label] ?? 0) + 1;
    }
    if (this.mode?.kind === 'closed' && d.waiting.length < this.mode.k) this.send(d);
  }
}

/** The value at quantile `q` of sorted `xs` (NaN when empty). */
export function quantile(xs: readonly number[], q: number): number {
  if (xs.length === 0) return NaN;
  return xs[Math.min(xs.length - 1, Math.floor(q * xs.length))]!;
}
