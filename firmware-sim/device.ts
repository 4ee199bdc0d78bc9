/**
 * One simulated device: an MQTT.js client (over TCP, TLS or WebSocket), a client of the proxy's
 * JSON WebSocket protocol or a CoAP client, that publishes telemetry, or windows of a vibration
 * sensor on a bearing, at a paced rate (or as fast as acknowledgements come back) and obeys
 * downlink commands.
 */
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import type { IClientOptions } from 'mqtt';
import { CoapLink } from './coap-link.js';
import { JsonWsLink, MqttLink, type DeviceLink, type Protocol } from './links.js';
import { SensorModel, createRng, seedFrom, type Reading } from './sensors.js';
import { BearingVibration, MAX_SEVERITY, VIBRATION_SAMPLE_RATE_HZ, type BearingCondition } from './vibration.js';

/** Messages per second, or 'max': next publish as soon as the previous one is acknowledged. */
export type Rate = number | 'max';
export type QoS = 0 | 1;

/** Upper bound for a per-device rate; beyond this the timer math is meaningless. */
export const MAX_RATE = 100_000;
/** From this per-device rate on, publishes are batched per timer tick. */
export const BATCH_RATE = 200;
/** Tick length in batch mode: setTimeout cannot reliably fire more often. */
const BATCH_TICK_MS = 10;
/** After an event-loop stall, catch up at most this much backlog instead of bursting. */
const MAX_CATCHUP_SECONDS = 0.25;
/** Most publishes one device does in one timer tick (as ms worth of its rate). */
const MAX_BATCH_MS = 2 * BATCH_TICK_MS;
/** Retry delay while paced mode is throttled by too many unacknowledged messages. */
const BACKPRESSURE_RETRY_MS = 10;

/**
 * Normalise a rate given as a number or string ("5", "max", 0).
 * Returns undefined for anything invalid. 0 means 'max' (as fast as acked).
 */
export function parseRate(input: unknown): Rate | undefined {
  if (input === 'max') return 'max';
  let n: number;
  if (typeof input === 'number') n = input;
  else if (typeof input === 'string' && input.trim() !== '') n = Number(input.trim());
  else return undefined;
  if (!Number.isFinite(n) || n < 0 || n > MAX_RATE) return undefined;
  return n === 0 ? 'max' : n;
}

/** Parse the payload of a cmd/rate command: `{"rate": 5}`, `5`, `"max"` or `max`. */
export function parseRatePayload(text: string): Rate | undefined {
  const trimmed = text.trim();
  let parsed: unknown;
  try {
    parsed = JSON.parse(trimmed);
  } catch {
    return parseRate(trimmed);
  }
  if (parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed)) {
    return parseRate((parsed as Record<string, unknown>)['rate']);
  }
  return parseRate(parsed);
}

/** What a device measures: room telemetry (temp, humidity, ...) or the vibration of a bearing. */
export type SensorKind = 'telemetry' | 'vibration';
export const SENSOR_KINDS: readonly SensorKind[] = ['telemetry', 'vibration'];

export function isSensorKind(s: string): s is SensorKind {
  return (SENSOR_KINDS as readonly string[]).includes(s);
}

export const BEARING_CONDITIONS: readonly BearingCondition[] = ['healthy', 'fault'];

export function isBearingCondition(s: unknown): s is BearingCondition {
  return typeof s === 'string' && (BEARING_CONDITIONS as readonly string[]).includes(s);
}

export const telemetryTopic = (id: string): string => `devices/${id}/telemetry`;
export const vibrationTopic = (id: string): string => `devices/${id}/vibration`;
export const commandTopic = (id: string, command: string): string => `devices/${id}/cmd/${command}`;

export interface Telemetry extends Reading {
  deviceId: string;
  seq: number;
  ts: number;
  /** filler up to --payload-bytes */
  pad?: string;
}

/** The payload of a vibration sensor: one window of acceleration samples, in g. */
export interface VibrationWindow {
  deviceId: string;
  seq: number;
  ts: number;
  sampleRateHz: number;
  /** the shaft's rotation frequency when the window was taken */
  shaftHz: number;
  samples: number[];
}

/** A window's level, for the log: RMS and peak of the samples, in g. */
export interface WindowLevel {
  rms: number;
  peak: number;
}

interface SentBase {
  deviceId: string;
  topic: string;
  seq: number;
  payload: string;
  bytes: number;
}

export interface SentTelemetry extends SentBase {
  sensor: 'telemetry';
  telemetry: Telemetry;
}

export interface SentVibration extends SentBase {
  sensor: 'vibration';
  vibration: VibrationWindow;
  /** the simulated bearing when the window was taken */
  condition: BearingCondition;
  severity: number;
  level: WindowLevel;
}

export type SentMessage = SentTelemetry | SentVibration;

/** RMS and peak (largest magnitude) of a window. */
export function windowLevel(samples: readonly number[]): WindowLevel {
  let sum = 0;
  let peak = 0;
  for (const x of samples) {
    sum += x * x;
    peak = Math.max(peak, Math.abs(x));
  }
  return { rms: samples.length > 0 ? Math.sqrt(sum / samples.length) : 0, peak };
}

/** What a cmd/bearing asks for. */
export interface BearingCommand {
  condition: BearingCondition;
  severity?: number;
}

/**
 * Parse the payload of a cmd/bearing command: `{"condition": "fault"}`, `{"condition": "fault",
 * "severity": 0.5}`, `{"condition": "healthy"}`, or the condition alone (`fault`, `"fault"`).
 * Returns why it is refused as a string.
 */
export function parseBearingPayload(text: string): BearingCommand | string {
  const expected = `expected {"condition": "healthy"|"fault"} with an optional "severity" (a number > 0 and <= ${MAX_SEVERITY}) for a fault`;
  const trimmed = text.trim();
  let parsed: unknown;
  try {
    parsed = JSON.parse(trimmed);
  } catch {
    parsed = trimmed;
  }
  if (typeof parsed === 'string') return isBearingCondition(parsed) ? { condition: parsed } : expected;
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) return expected;
  const o = parsed as Record<string, unknown>;
  const extra = Object.keys(o).filter((k) => k !== 'condition' && k !== 'severity');
  if (extra.length > 0) return `unknown field ${JSON.stringify(extra[0])}: ${expected}`;
  if (!isBearingCondition(o.condition)) return `condition ${JSON.stringify(o.condition ?? null)}: ${expected}`;
  if (o.severity === undefined) return { condition: o.condition };
  if (o.condition !== 'fault') return 'a severity is for a fault: a healthy bearing has none';
  if (typeof o.severity !== 'number' || !Number.isFinite(o.severity) || o.severity <= 0 || o.severity > MAX_SEVERITY) {
    return `severity ${JSON.stringify(o.severity)}: expected a number > 0 and <= ${MAX_SEVERITY}`;
  }
  return { condition: 'fault', severity: o.severity };
}

/** A vibration sensor's model for one device of a seeded fleet: its own stream, whatever the fleet's size. */
export function deviceVibration(fleetSeed: number, deviceId: string, condition: BearingCondition = 'healthy'): BearingVibration {
  const model = new BearingVibration(createRng(seedFrom(fleetSeed, deviceId)));
  if (condition !== 'healthy') model.setCondition(condition);
  return model;
}

/** Where a WebSocket device gives its token at the upgrade. */
export type UpgradeTokenIn = 'header' | 'query';

export type CommandAction = 'rate' | 'pause' | 'resume' | 'bearing' | 'unknown' | 'invalid';

export interface DeviceCommand {
  deviceId: string;
  topic: string;
  /** Topic part after `cmd/`, e.g. "rate". */
  command: string;
  payload: string;
  action: CommandAction;
  /** Human-readable outcome for logs. */
  detail: string;
}

export interface DeviceStats {
  id: string;
  /** Publishes handed to MQTT.js (== last seq generated). */
  sent: number;
  /** PUBACKed (QoS 1) or written to the socket (QoS 0). */
  acked: number;
  /** Publishes whose callback reported an error (e.g. forced stop while unacknowledged). */
  failed: number;
  inflight: number;
  lastSeq: number;
  lastAckedSeq: number;
  rate: Rate;
  paused: boolean;
  connected: boolean;
  complete: boolean;
  sensor: SensorKind;
  /** a vibration sensor's bearing */
  bearing?: BearingCondition;
}

export interface DeviceOptions {
  id: string;
  /**
   * Where it connects: mqtt(s)://host:port, ws(s)://host:port/mqtt (MQTT over WebSocket),
   * ws(s)://host:port/ws or coap://host:port.
   */
  url: string;
  /** mqtt (default) and mqtt-ws: MQTT.js at `url`; ws: the JSON protocol at `url`; coap: CoAP at `url`. */
  protocol?: Protocol;
  /**
   * A WebSocket device's token at the upgrade: `Authorization: Bearer` or `?token=`. Default: the
   * header on /ws; on /mqtt none, the token being the CONNECT password as over TCP.
   */
  upgradeToken?: UpgradeTokenIn;
  /** PEM contents for a TLS URL (the CA to trust, a client certificate and its key). */
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer };
  rate?: Rate;
  qos?: QoS;
  /** Telemetry padded to this many bytes with a "pad" field (never cut when it is longer). */
  payloadBytes?: number;
  /** Stop generating after this many messages. */
  count?: number;
  /** Messages in flight in 'max' mode (default 1). */
  inflight?: number;
  /** Seed for the sensor model; ignored when `sensor` (or `vibration`) is given. */
  seed?: number;
  sensor?: SensorModel;
  /** What it measures (default telemetry): a vibration sensor publishes on devices/<id>/vibration. */
  kind?: SensorKind;
  /** A vibration sensor's bearing at the start (default healthy); ignored when `vibration` is given. */
  bearing?: BearingCondition;
  /** A vibration sensor's model (default: one seeded from `seed` and the id). */
  vibration?: BearingVibration;
  /** MQTT username = device id (default true). */
  usernameAsId?: boolean;
  /**
   * The device's token for a proxy in token mode (`<deviceId>.<secret>`): the MQTT password (the
   * username then being the device id whatever `usernameAsId` says), given at the upgrade of a
   * WebSocket device (`upgradeToken`), or `k=` of every CoAP request.
   */
  password?: string;
  /** Delay of the first paced publish, to spread a fleet's messages over the interval. */
  initialDelayMs?: number;
  /** Paced mode stops generating while this many publishes are unacknowledged. */
  maxUnacked?: number;
  /** Extra MQTT.js options (override the defaults; not used by a ws device). */
  mqttOptions?: Partial<IClientOptions>;
}

export interface DeviceEvents {
  /** Every (re)connect; `first` is true only for the initial one. */
  connect: [first: boolean];
  offline: [];
  reconnect: [];
  clientError: [err: Error];
  sent: [msg: SentMessage];
  ack: [seq: number];
  publishError: [seq: number, err: Error];
  command: [cmd: DeviceCommand];
  /** `count` messages were generated and all of them were settled. */
  complete: [];
  /** Paced mode is throttled because too many publishes are unacknowledged. */
  backpressure: [inflight: number];
}

export class SimDevice extends EventEmitter<DeviceEvents> {
  readonly id: string;
  readonly url: string;
  readonly protocol: Protocol;
  readonly qos: QoS;
  readonly count: number | undefined;
  readonly topic: string;
  readonly kind: SensorKind;
  private readonly inflightLimit: number;
  private readonly maxUnacked: number;
  private readonly sensor: SensorModel | undefined;
  private readonly vibration: BearingVibration | undefined;
  private readonly options: DeviceOptions;

  private client: DeviceLink | undefined;
  private rate: Rate;
  private paused = false;
  private stopping = false;
  private connected = false;
  private everConnected = false;
  private completed = false;
  private backpressured = false;

  private lastSeq = 0;
  private lastAckedSeq = 0;
  private acked = 0;
  private failed = 0;
  private inflight = 0;

  // Paced mode: messages are due at epochAt + k * interval; the epoch restarts
  // on every rate change / resume / reconnect so a change takes effect at once.
  private epochAt = 0;
  private epochSent = 0;
  private timer: NodeJS.Timeout | undefined;
  private pumpScheduled = false;
  private drainWaiters: Array<() => void> = [];
  private stopPromise: Promise<DeviceStats> | undefined;

  constructor(options: DeviceOptions) {
    super();
    const rate = parseRate(options.rate ?? 1);
    if (rate === undefined) throw new RangeError(`invalid rate: ${String(options.rate)}`);
    this.options = options;
    this.id = options.id;
    this.url = options.url;
    this.protocol = options.protocol ?? 'mqtt';
    this.qos = options.qos ?? 1;
    this.count = options.count;
    this.rate = rate;
    this.kind = options.kind ?? 'telemetry';
    this.inflightLimit = Math.max(1, Math.floor(options.inflight ?? 1));
    this.maxUnacked = Math.max(1, Math.floor(options.maxUnacked ?? 10_000));
    if (this.kind === 'vibration') {
      this.topic = vibrationTopic(options.id);
      this.vibration = options.vibration ?? deviceVibration(options.seed ?? 0, options.id, options.bearing);
    } else {
      this.topic = telemetryTopic(options.id);
      this.sensor = options.sensor ?? new SensorModel(createRng(seedFrom(options.seed ?? 0, options.id)));
    }
  }

  /** Connect and start publishing once connected. Returns immediately. */
  start(): this {
    if (this.client || this.stopping) return this;
    const client = this.connectLink();
    this.client = client;
    client.on('connect', () => this.onConnect());
    client.on('close', () => {
      if (!this.connected) return;
      this.connected = false;
      this.clearTimer();
      if (!this.stopping) this.emit('offline');
    });
    client.on('reconnect', () => this.emit('reconnect'));
    client.on('error', (err) => this.emit('clientError', err));
    client.on('message', (topic, payload) => this.onMessage(topic, payload));
    return this;
  }

  private connectLink(): DeviceLink {
    const o = this.options;
    const token = o.password;
    // ?d= names the device on every request: its id in open mode; in token mode the token's own.
    if (this.protocol === 'coap') return new CoapLink(this.url, { deviceId: this.id, ...(token !== undefined ? { token } : {}) });
    // Over TCP the token is the CONNECT password; a WebSocket device may give it at the upgrade.
    const via =
      token === undefined || this.protocol === 'mqtt' ? undefined : (o.upgradeToken ?? (this.protocol === 'ws' ? 'header' : undefined));
    const headers = via === 'header' ? { authorization: `Bearer ${token}` } : undefined;
    if (this.protocol === 'ws') {
      // ?d= names the device: its id in open mode; in token mode it must be the token's own.
      const query = [`d=${encodeURIComponent(this.id)}`, ...(via === 'query' ? [`token=${encodeURIComponent(token!)}`] : [])];
      return new JsonWsLink(withQuery(this.url, query), { headers, reconnectPeriod: 1000, connectTimeout: 10_000, ...o.tls });
    }
    // A token at the upgrade stands in for the password: CONNECT then carries the username alone.
    const password = via === undefined ? token : undefined;
    return new MqttLink(via === 'query' ? withQuery(this.url, [`token=${encodeURIComponent(token!)}`]) : this.url, {
      clientId: this.id,
      clean: true,
      reconnectPeriod: 1000,
      connectTimeout: 10_000,
      ...((o.usernameAsId ?? true) || token !== undefined ? { username: this.id } : {}),
      ...(password !== undefined ? { password } : {}),
      ...(headers ? { wsOptions: { headers } } : {}),
      ...o.tls,
      ...o.mqttOptions,
    });
  }

  stats(): DeviceStats {
    return {
      id: this.id,
      sent: this.lastSeq,
      acked: this.acked,
      failed: this.failed,
      inflight: this.inflight,
      lastSeq: this.lastSeq,
      lastAckedSeq: this.lastAckedSeq,
      rate: this.rate,
      paused: this.paused,
      connected: this.connected,
      complete: this.completed,
      sensor: this.kind,
      ...(this.vibration ? { bearing: this.vibration.condition } : {}),
    };
  }

  get currentRate(): Rate {
    return this.rate;
  }

  get isPaused(): boolean {
    return this.paused;
  }

  /** A vibration sensor's bearing; undefined for a telemetry device. */
  get bearing(): BearingCondition | undefined {
    return this.vibration?.condition;
  }

  /** How far a vibration sensor's fault has developed (0 when healthy); undefined for a telemetry device. */
  get severity(): number | undefined {
    return this.vibration?.severity;
  }

  /**
   * Switch a vibration sensor's bearing: a fault starts small and grows window by window (or at
   * `severity` when given). Throws a RangeError on a telemetry device.
   */
  setBearing(condition: BearingCondition, severity?: number): void {
    if (!this.vibration) throw new RangeError(`${this.id} is a telemetry sensor: it has no bearing`);
    this.vibration.setCondition(condition, severity === undefined ? undefined : { severity });
  }

  setRate(rate: Rate): void {
    const parsed = parseRate(rate);
    if (parsed === undefined) throw new RangeError(`invalid rate: ${String(rate)}`);
    this.rate = parsed;
    this.restartPacing(0);
  }

  pause(): void {
    this.paused = true;
    this.clearTimer();
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.restartPacing(0);
  }

  /**
   * Stop generating, give unacknowledged publishes up to `graceMs` to be
   * acknowledged (MQTT.js keeps retrying them across reconnects), then end
   * the client: a clean DISCONNECT if nothing is pending, forced otherwise.
   */
  stop(graceMs = 5000): Promise<DeviceStats> {
    if (this.stopPromise) return this.stopPromise;
    this.stopping = true;
    this.clearTimer();
    this.stopPromise = (async () => {
      const client = this.client;
      if (!client) return this.stats();
      if (this.inflight > 0) await this.waitDrained(graceMs);
      const force = this.inflight > 0 || !client.connected;
      // end() can wait on a stream that never opened; do not let that hang the fleet.
      await withTimeout(client.end(force), 3000).catch(() => void client.end(true).catch(() => {}));
      this.connected = false;
      return this.stats();
    })();
    return this.stopPromise;
  }

  private onConnect(): void {
    const first = !this.everConnected;
    this.everConnected = true;
    this.connected = true;
    if (first) {
      // Subscribed again after a reconnect by the link itself (MQTT.js does so for a clean session).
      this.client?.subscribe(commandTopic(this.id, '#'), (err) => {
        if (err) this.emit('clientError', err);
      });
    }
    this.emit('connect', first);
    this.restartPacing(first ? (this.options.initialDelayMs ?? 0) : 0);
  }

  private onMessage(topic: string, payload: string): void {
    const prefix = commandTopic(this.id, '');
    if (!topic.startsWith(prefix)) return;
    const command = topic.slice(prefix.length);
    const cmd = (action: CommandAction, detail: string): DeviceCommand => ({
      deviceId: this.id,
      topic,
      command,
      payload,
      action,
      detail,
    });
    let result: DeviceCommand;
    switch (command) {
      case 'rate': {
        const rate = parseRatePayload(payload);
        if (rate === undefined) {
          result = cmd('invalid', `invalid rate payload ${JSON.stringify(payload)}`);
        } else {
          this.setRate(rate);
          result = cmd('rate', `rate set to ${rate === 'max' ? 'max' : `${rate}/s`}`);
        }
        break;
      }
      case 'pause':
        this.pause();
        result = cmd('pause', 'publishing paused');
        break;
      case 'resume':
        this.resume();
        result = cmd('resume', 'publishing resumed');
        break;
      case 'bearing':
        result = this.onBearingCommand(payload, cmd);
        break;
      default:
        result = cmd('unknown', `unknown command "${command}" ignored`);
    }
    this.emit('command', result);
  }

  private onBearingCommand(payload: string, cmd: (action: CommandAction, detail: string) => DeviceCommand): DeviceCommand {
    if (!this.vibration) return cmd('unknown', `command "bearing" ignored: ${this.id} is a telemetry sensor, it has no bearing`);
    const parsed = parseBearingPayload(payload);
    if (typeof parsed === 'string')
      return cmd('invalid', `invalid bearing payload ${JSON.stringify(payload)}, bearing unchanged: ${parsed}`);
    this.setBearing(parsed.condition, parsed.severity);
    return cmd(
      'bearing',
      parsed.condition === 'fault'
        ? `bearing set to fault (severity ${round4(this.vibration.severity)}${parsed.severity === undefined ? ', growing' : ''})`
        : 'bearing set to healthy',
    );
  }

  private canPublish(): boolean {
    return this.connected && !this.paused && !this.stopping && (this.count === undefined || this.lastSeq < this.count);
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private restartPacing(firstDelayMs: number): void {
    this.clearTimer();
    if (!this.canPublish()) return;
    if (this.rate === 'max') {
      this.schedulePump();
      return;
    }
    this.epochAt = performance.now() + firstDelayMs;
    this.epochSent = 0;
    this.timer = setTimeout(this.tick, firstDelayMs);
  }

  private readonly tick = (): void => {
    this.timer = undefined;
    if (this.rate === 'max' || !this.canPublish()) return;
    const rate = this.rate;
    const interval = 1000 / rate;
    const now = performance.now();
    // Bounded batches keep one device from hogging the event loop when the
    // process cannot keep up with the requested rate.
    const batchCap = Math.max(1, Math.ceil((rate * MAX_BATCH_MS) / 1000));
    let owed = Math.floor((now - this.epochAt) / interval) + 1 - this.epochSent;
    if (owed > Math.max(batchCap, Math.ceil(rate * MAX_CATCHUP_SECONDS))) {
      // Far behind (event-loop stall, throttling): drop the backlog and resume
      // the cadence from now instead of flooding the broker.
      this.epochAt = now;
      this.epochSent = 0;
    }
    owed = Math.min(owed, batchCap);
    let throttled = false;
    for (let i = 0; i < owed && this.canPublish(); i++) {
      if (this.inflight >= this.maxUnacked) {
        throttled = true;
        break;
      }
      this.publishOne();
      this.epochSent++;
    }
    if (throttled !== this.backpressured) {
      this.backpressured = throttled;
      if (throttled) this.emit('backpressure', this.inflight);
    }
    if (!this.canPublish()) return;
    const nextDue = this.epochAt + this.epochSent * interval;
    const minDelay = throttled ? BACKPRESSURE_RETRY_MS : rate >= BATCH_RATE ? BATCH_TICK_MS : 0;
    this.timer = setTimeout(this.tick, Math.max(minDelay, nextDue - performance.now()));
  };

  // 'max' mode refills from a setImmediate rather than inside the ack
  // callback, so a synchronous callback cannot recurse and I/O gets a turn.
  private schedulePump(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      while (this.rate === 'max' && this.canPublish() && this.inflight < this.inflightLimit) {
        this.publishOne();
      }
    });
  }

  private publishOne(): void {
    const client = this.client;
    if (!client) return;
    const seq = ++this.lastSeq;
    if (this.vibration) {
      this.publishWindow(client, seq, this.vibration);
      return;
    }
    const telemetry: Telemetry = { deviceId: this.id, seq, ts: Date.now(), ...this.sensor!.next() };
    let payload = JSON.stringify(telemetry);
    const short = (this.options.payloadBytes ?? 0) - Buffer.byteLength(payload) - ',"pad":""'.length;
    if (short > 0) {
      telemetry.pad = 'x'.repeat(short);
      payload = JSON.stringify(telemetry);
    }
    this.inflight++;
    // The link owns the publish from here: if the connection drops before it is acknowledged it
    // sends this exact message (same seq) again after reconnecting.
    client.publish(this.topic, payload, this.qos, (err) => this.onSettled(seq, err));
    this.emit('sent', {
      deviceId: this.id,
      topic: this.topic,
      seq,
      payload,
      bytes: Buffer.byteLength(payload),
      sensor: 'telemetry',
      telemetry,
    });
  }

  /** A vibration sensor's report: a window taken now, as a condition-monitoring sensor takes a snapshot at each report. */
  private publishWindow(client: DeviceLink, seq: number, model: BearingVibration): void {
    const condition = model.condition;
    const severity = model.severity;
    // The speed of the window about to be taken: it wanders a little from one window to the next.
    const shaftHz = round4(model.currentShaftHz);
    const samples = model.nextWindow();
    const window: VibrationWindow = { deviceId: this.id, seq, ts: Date.now(), sampleRateHz: VIBRATION_SAMPLE_RATE_HZ, shaftHz, samples };
    const payload = JSON.stringify(window);
    this.inflight++;
    client.publish(this.topic, payload, this.qos, (err) => this.onSettled(seq, err));
    this.emit('sent', {
      deviceId: this.id,
      topic: this.topic,
      seq,
      payload,
      bytes: Buffer.byteLength(payload),
      sensor: 'vibration',
      vibration: window,
      condition,
      severity,
      level: windowLevel(samples),
    });
  }

  private onSettled(seq: number, err: Error | undefined): void {
    this.inflight--;
    if (err) {
      this.failed++;
      this.emit('publishError', seq, err);
    } else {
      this.acked++;
      if (seq > this.lastAckedSeq) this.lastAckedSeq = seq;
      this.emit('ack', seq);
    }
    if (this.inflight === 0) {
      for (const wake of this.drainWaiters.splice(0)) wake();
      if (!this.completed && this.count !== undefined && this.lastSeq >= this.count) {
        this.completed = true;
        this.emit('complete');
      }
    }
    if (this.rate === 'max') this.schedulePump();
  }

  private waitDrained(timeoutMs: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.drainWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

function round4(x: number): number {
  return Math.round(x * 10_000) / 10_000;
}

/** `url` with `params` (already encoded) added to its query. */
function withQuery(url: string, params: readonly string[]): string {
  if (params.length === 0) return url;
  const hash = url.indexOf('#');
  const base = hash < 0 ? url : url.slice(0, hash);
  return `${base}${base.includes('?') ? '&' : '?'}${params.join('&')}`;
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}
