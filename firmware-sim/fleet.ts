/**
 * A fleet of simulated devices (telemetry and vibration sensors): starts them, logs what they send,
 * aggregates stats and produces the final summary. Usable in-process by tests and
 * benchmarks via `startFleet()`.
 */
import { randomInt } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import type { IClientOptions } from 'mqtt';
import {
  SimDevice,
  parseRate,
  type DeviceCommand,
  type DeviceStats,
  type QoS,
  type Rate,
  type SensorKind,
  type SentMessage,
  type UpgradeTokenIn,
} from './device.js';
import type { BearingCondition } from './vibration.js';
import { tokenDeviceId } from './credentials.js';
import { LinkError, WEBSOCKET_PROTOCOLS, type Protocol } from './links.js';
import { parseSeed } from './sensors.js';

export type { QoS, Rate, SensorKind } from './device.js';
export type { Protocol } from './links.js';

/** Above this total rate, per-message log lines are replaced by periodic stats. */
export const PER_MESSAGE_LOG_MAX_RATE = 20;

export type StopReason = 'count' | 'duration' | 'SIGINT' | 'SIGTERM' | 'stop';

export interface FleetOptions {
  /**
   * The MQTT devices' broker (mqtt:// or mqtts://; default mqtt://127.0.0.1:1883). A ws:// or wss://
   * URL is the endpoint of a fleet of one WebSocket protocol: ws://host:8080/mqtt (mqtt-ws, the
   * default protocol then) or ws://host:8080/ws (ws, the default when the path is /ws).
   */
  url?: string;
  /**
   * How the devices connect, given to them in turn (device 1 the first, device 2 the second, ...):
   * `['mqtt', 'ws']` makes half of them each, `['mqtt', 'mqtt', 'ws']` two thirds MQTT. Default
   * `['mqtt']` (or the protocol of a ws:// `url`).
   */
  protocols?: readonly Protocol[];
  /**
   * The proxy's http endpoint, ws://host:port or wss://host:port (http:// and https:// too), where
   * mqtt-ws devices connect to /mqtt and ws devices to /ws. Default: port 8080 on the host of `url`,
   * wss:// when `url` is mqtts://.
   */
  httpUrl?: string;
  /**
   * The proxy's CoAP endpoint, coap://host:port, where coap devices send their requests. Default:
   * port 5683 on the host of `url`.
   */
  coapUrl?: string;
  /**
   * WebSocket devices in token mode give their token at the upgrade: as `Authorization: Bearer`
   * (header) or `?token=` (query). Default: header for /ws devices; /mqtt devices send it as the
   * CONNECT password, as over TCP.
   */
  upgradeToken?: UpgradeTokenIn;
  devices?: number;
  /**
   * What the devices measure, given to them in turn as `protocols` are: `['telemetry', 'vibration']`
   * makes every second device a vibration sensor, publishing windows of samples on
   * devices/<id>/vibration. Default `['telemetry']`.
   */
  sensors?: readonly SensorKind[];
  /** The bearing of every vibration sensor at the start (default healthy); not with `faulty`. */
  bearing?: BearingCondition;
  /** The first N vibration sensors start with a developing bearing fault, the others healthy; not with `bearing`. */
  faulty?: number;
  rate?: Rate;
  qos?: QoS;
  /** Telemetry padded to this many bytes (a "pad" field); over 1024 a coap device sends it block-wise. */
  payloadBytes?: number;
  /** Messages per device; the fleet stops once every device sent and settled them. */
  count?: number;
  /** Seconds until the fleet stops by itself. */
  duration?: number;
  prefix?: string;
  /** The devices' ids, instead of `prefix` + a number; `devices`, when given, must be their count. */
  ids?: readonly string[];
  usernameAsId?: boolean;
  /**
   * Device id -> token, for a proxy in token mode: each device connects with username = its id and
   * password = its token. Every device of the fleet needs one.
   */
  tokens?: Readonly<Record<string, string>>;
  /** PEM files for an mqtts:// or wss:// URL: the CA to trust, and a client certificate with its key. */
  tls?: TlsFiles;
  /** In-flight messages per device in 'max' mode. */
  inflight?: number;
  /** Makes sensor readings reproducible; random when omitted (reported in the summary). */
  seed?: number | string;
  /** Seconds between stats lines (default 5). */
  statsInterval?: number;
  /** Only warnings, errors and commands are logged. */
  quiet?: boolean;
  /** Sink for log lines (default: stderr). */
  log?: (line: string) => void;
  /** How long stop() waits for unacknowledged publishes before forcing (default 5000 ms). */
  stopGraceMs?: number;
  /** Extra MQTT.js options for every MQTT device (mqtt and mqtt-ws). */
  mqttOptions?: Partial<IClientOptions>;
}

export interface TlsFiles {
  /** CA certificate(s) to trust instead of the system's (the proxy's own, for a self-signed one) */
  ca?: string;
  /** client certificate; on the proxy's TLS port its CN is the device id */
  cert?: string;
  /** the client certificate's private key */
  key?: string;
}

export interface FleetSummary {
  event: 'summary';
  devices: number;
  sent: number;
  acked: number;
  failed: number;
  seconds: number;
  /** Achieved rate: acknowledged messages per second over the whole run. */
  rate: number;
  targetRate: Rate;
  qos: QoS;
  seed: number;
  reason: StopReason;
  /** devices per protocol */
  protocols: Partial<Record<Protocol, number>>;
  /** devices per kind of sensor */
  sensors: Partial<Record<SensorKind, number>>;
  /** the vibration sensors whose bearing had a fault at the end */
  faulty: string[];
  lastSeq: Record<string, number>;
}

export interface FleetStats {
  devices: number;
  connected: number;
  sent: number;
  acked: number;
  failed: number;
  inflight: number;
  perDevice: DeviceStats[];
}

export interface FleetEvents {
  connect: [deviceId: string, first: boolean];
  sent: [msg: SentMessage];
  command: [cmd: DeviceCommand];
}

export const DEFAULT_URL = 'mqtt://127.0.0.1:1883';
/** The port of the proxy's http endpoint (`http.port`) unless configured otherwise. */
export const DEFAULT_HTTP_PORT = 8080;
/** The port of the proxy's CoAP endpoint (`coap.port`) unless configured otherwise. */
export const DEFAULT_COAP_PORT = 5683;
export const DEFAULT_DEVICES = 5;
export const DEFAULT_PREFIX = 'sim-';

export function deviceId(prefix: string, index: number, total: number): string {
  return `${prefix}${String(index).padStart(Math.max(4, String(total).length), '0')}`;
}

export interface Endpoints {
  /** each device's protocol is `protocols[(n - 1) % protocols.length]` for device n */
  protocols: readonly Protocol[];
  /** where the devices of each protocol of the fleet connect */
  urls: Partial<Record<Protocol, string>>;
}

const TLS_SCHEMES = ['mqtts:', 'ssl:', 'wss:'];

/**
 * Where the devices of a fleet connect, by protocol (see `url`, `protocols` and `httpUrl`). Throws a
 * RangeError for a combination that does not fit together, such as a ws:// `url` for MQTT devices.
 */
export function fleetEndpoints(
  options: Pick<FleetOptions, 'url' | 'protocols' | 'httpUrl' | 'coapUrl'>,
  /** how the messages name the options (the CLI's --url, --http-url, --coap-url) */
  names: { url: string; httpUrl: string; coapUrl: string } = { url: 'url', httpUrl: 'httpUrl', coapUrl: 'coapUrl' },
): Endpoints {
  const url = options.url ?? DEFAULT_URL;
  const parsed = parseUrl(names.url, url);
  const wsUrl = parsed.protocol === 'ws:' || parsed.protocol === 'wss:';
  const implied: Protocol = !wsUrl ? 'mqtt' : parsed.pathname.replace(/\/+$/, '') === '/ws' ? 'ws' : 'mqtt-ws';
  const protocols = options.protocols ?? [implied];
  if (protocols.length === 0) throw new RangeError('protocols must name at least one protocol');
  const distinct = [...new Set(protocols)];
  const urls: Partial<Record<Protocol, string>> = {};
  if (wsUrl) {
    if (distinct.length > 1 || !WEBSOCKET_PROTOCOLS.includes(distinct[0]!)) {
      throw new RangeError(
        `${names.url} ${url} is a WebSocket URL, where devices of one protocol (mqtt-ws or ws) connect; for ${distinct.join(' and ')} devices give the MQTT broker as ${names.url} (mqtt://host:1883) and the proxy's http endpoint as ${names.httpUrl} (ws://host:8080)`,
      );
    }
    if (options.httpUrl !== undefined) {
      throw new RangeError(
        `${names.url} ${url} is already where the ${distinct[0]} devices connect: give ${names.url} or ${names.httpUrl}, not both`,
      );
    }
    urls[distinct[0]!] = url;
    return { protocols, urls };
  }
  if (distinct.includes('mqtt')) urls.mqtt = url;
  if (distinct.includes('coap')) urls.coap = coapBase(names.coapUrl, options.coapUrl ?? `coap://${parsed.hostname}:${DEFAULT_COAP_PORT}`);
  if (distinct.some((p) => WEBSOCKET_PROTOCOLS.includes(p))) {
    const base = httpBase(
      names.httpUrl,
      options.httpUrl ?? `${TLS_SCHEMES.includes(parsed.protocol) ? 'wss' : 'ws'}://${parsed.hostname}:${DEFAULT_HTTP_PORT}`,
    );
    if (distinct.includes('mqtt-ws')) urls['mqtt-ws'] = `${base}/mqtt`;
    if (distinct.includes('ws')) urls.ws = `${base}/ws`;
  }
  return { protocols, urls };
}

/** Whether any device of the fleet connects over TLS (mqtts://, wss://). */
export function usesTls(endpoints: Endpoints): boolean {
  return Object.values(endpoints.urls).some((u) => TLS_SCHEMES.includes(new URL(u).protocol));
}

function parseUrl(name: string, url: string): URL {
  try {
    return new URL(url);
  } catch {
    throw new RangeError(`${name} is not a valid URL: "${url}"`);
  }
}

/** coap://host:port, the endpoint alone (the devices add /ps/<topic> and their query). */
function coapBase(name: string, coapUrl: string): string {
  const u = parseUrl(name, coapUrl);
  if (u.protocol === 'coaps:')
    throw new RangeError(`${name}: coaps:// (DTLS) is not supported by the proxy; use coap://, got "${coapUrl}"`);
  if (u.protocol !== 'coap:') throw new RangeError(`${name} must be coap://host:port, got "${coapUrl}"`);
  if (u.hostname === '') throw new RangeError(`${name} names no host: "${coapUrl}"`);
  if ((u.pathname !== '' && u.pathname !== '/') || u.search !== '' || u.hash !== '') {
    throw new RangeError(
      `${name} is the endpoint alone, coap://host:port; /ps/<topic> and ?d=&k= are added for each request: "${coapUrl}"`,
    );
  }
  return `coap://${u.host}${u.port === '' ? `:${DEFAULT_COAP_PORT}` : ''}`;
}

/** ws(s)://host:port[/prefix] without a trailing slash; http(s):// becomes ws(s)://. */
function httpBase(name: string, httpUrl: string): string {
  const u = parseUrl(name, httpUrl);
  const scheme = ({ 'ws:': 'ws:', 'http:': 'ws:', 'wss:': 'wss:', 'https:': 'wss:' } as Record<string, string>)[u.protocol];
  if (scheme === undefined) throw new RangeError(`${name} must be ws://, wss://, http:// or https://, got "${httpUrl}"`);
  if (u.search !== '' || u.hash !== '') throw new RangeError(`${name} is the endpoint alone, without a query or fragment: "${httpUrl}"`);
  const path = u.pathname.replace(/\/+$/, '');
  if (path === '/mqtt' || path === '/ws') {
    throw new RangeError(`${name} is the endpoint, ws://host:port; /mqtt and /ws are added for each device: "${httpUrl}"`);
  }
  return `${scheme}//${u.host}${path}`;
}

export class Fleet extends EventEmitter<FleetEvents> {
  /** where the first protocol's devices connect (the broker URL of an MQTT fleet) */
  readonly url: string;
  readonly endpoints: Endpoints;
  readonly seed: number;
  readonly qos: QoS;
  readonly targetRate: Rate;
  readonly devices: readonly SimDevice[];
  /** Resolves with the summary once the fleet stopped and every client ended. */
  readonly done: Promise<FleetSummary>;
  /** Resolves once every device connected for the first time. */
  readonly ready: Promise<void>;

  private readonly opts: FleetOptions;
  private readonly writeLog: (line: string) => void;
  private resolveDone!: (s: FleetSummary) => void;
  private resolveReady!: () => void;
  private startedAt = 0;
  private started = false;
  private stopping = false;
  private connectedOnce = new Set<string>();
  private completed = new Set<string>();
  private totalRate = 0;
  private durationTimer: NodeJS.Timeout | undefined;
  private statsTimer: NodeJS.Timeout | undefined;
  // Stats-interval bookkeeping.
  private lastStatsAt = 0;
  private lastStatsSent = 0;
  private lastStatsAcked = 0;
  private lastStatsSeq = new Map<string, number>();
  private unloggedSinceStats = false;
  private lastError = new Map<string, string>();

  constructor(options: FleetOptions = {}) {
    super();
    this.opts = options;
    const n = options.ids?.length ?? options.devices ?? DEFAULT_DEVICES;
    if (!Number.isInteger(n) || n < 1) throw new RangeError(`devices must be a positive integer, got ${n}`);
    if (options.ids && options.devices !== undefined && options.devices !== n) {
      throw new RangeError(`devices is ${options.devices} but ${plural(n, 'id')} ${n === 1 ? 'is' : 'are'} given`);
    }
    if (options.ids && new Set(options.ids).size !== n) throw new RangeError('device ids must be distinct');
    const rate = parseRate(options.rate ?? 1);
    if (rate === undefined) throw new RangeError(`invalid rate: ${String(options.rate)}`);
    if (options.count !== undefined && (!Number.isInteger(options.count) || options.count < 1)) {
      throw new RangeError(`count must be a positive integer, got ${options.count}`);
    }
    if (options.duration !== undefined && !(options.duration > 0)) {
      throw new RangeError(`duration must be > 0 seconds, got ${options.duration}`);
    }
    this.endpoints = fleetEndpoints(options);
    this.url = this.endpoints.urls[this.endpoints.protocols[0]!]!;
    this.qos = options.qos ?? 1;
    this.targetRate = rate;
    this.seed = options.seed === undefined ? randomInt(0, 2 ** 32) : parseSeed(options.seed);
    this.writeLog = options.log ?? ((line) => process.stderr.write(`${line}\n`));
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
    this.ready = new Promise((resolve) => (this.resolveReady = resolve));

    const prefix = options.prefix ?? DEFAULT_PREFIX;
    const ids = options.ids ?? Array.from({ length: n }, (_, i) => deviceId(prefix, i + 1, n));
    const tokens = options.tokens;
    if (tokens) {
      const missing = ids.filter((id) => !Object.hasOwn(tokens, id));
      if (missing.length > 0) throw new RangeError(`no token for ${missingList(missing)}`);
      const wrong = ids.filter((id) => tokenDeviceId(tokens[id]!) !== id);
      if (wrong.length > 0) throw new RangeError(`the token given for ${missingList(wrong)} names another device`);
    }
    const tls = readTlsFiles(options.tls);
    const protocols = this.endpoints.protocols;
    const kinds = options.sensors ?? ['telemetry'];
    if (kinds.length === 0) throw new RangeError('sensors must name at least one kind of sensor');
    const kindOf = (i: number): SensorKind => kinds[i % kinds.length]!;
    const vibrationCount = ids.filter((_, i) => kindOf(i) === 'vibration').length;
    if (options.faulty !== undefined) {
      if (options.bearing !== undefined) throw new RangeError('give bearing (every vibration sensor) or faulty (the first N), not both');
      if (!Number.isInteger(options.faulty) || options.faulty < 0 || options.faulty > vibrationCount) {
        throw new RangeError(
          `faulty must be an integer from 0 to the number of vibration sensors (${vibrationCount}), got ${options.faulty}`,
        );
      }
    }
    const devices: SimDevice[] = [];
    let vibrationIndex = 0;
    for (const [i, id] of ids.entries()) {
      const protocol = protocols[i % protocols.length]!;
      const kind = kindOf(i);
      const bearing: BearingCondition | undefined =
        kind !== 'vibration' ? undefined : (options.bearing ?? (vibrationIndex++ < (options.faulty ?? 0) ? 'fault' : 'healthy'));
      devices.push(
        new SimDevice({
          id,
          url: this.endpoints.urls[protocol]!,
          protocol,
          upgradeToken: options.upgradeToken,
          tls,
          rate,
          qos: this.qos,
          ...(options.payloadBytes !== undefined ? { payloadBytes: options.payloadBytes } : {}),
          count: options.count,
          inflight: options.inflight,
          seed: this.seed,
          kind,
          ...(bearing !== undefined ? { bearing } : {}),
          usernameAsId: options.usernameAsId,
          password: tokens?.[id],
          // Spread a fleet's publishes over the interval instead of all
          // devices firing in the same millisecond.
          initialDelayMs: rate !== 'max' && n > 1 ? Math.random() * Math.min(1000 / rate, 1000) : 0,
          mqttOptions: options.mqttOptions,
        }),
      );
    }
    this.devices = devices;
    for (const d of devices) this.wire(d);
    this.recomputeTotalRate();
  }

  start(): this {
    if (this.started) return this;
    this.started = true;
    this.startedAt = this.lastStatsAt = performance.now();
    const mode = this.targetRate === 'max' ? `max (inflight ${this.opts.inflight ?? 1})` : `${this.targetRate}/s`;
    const credentials = [...(this.opts.tokens ? ['tokens'] : []), ...(this.opts.tls?.cert ? ['client certificate'] : [])];
    this.info(
      `starting ${plural(this.devices.length, 'device')} -> ${this.describeEndpoints()}, rate ${mode} per device, qos ${this.qos}` +
        `${credentials.length ? `, ${credentials.join(' and ')}` : ''}` +
        `${this.opts.count ? `, count ${this.opts.count}` : ''}` +
        `${this.opts.duration ? `, duration ${this.opts.duration}s` : ''}, seed ${this.seed}${this.describeSensors()}`,
    );
    for (const d of this.devices) d.start();
    if (this.opts.duration !== undefined) {
      this.durationTimer = setTimeout(() => void this.stop('duration'), this.opts.duration * 1000);
    }
    const every = (this.opts.statsInterval ?? 5) * 1000;
    if (every > 0 && Number.isFinite(every)) this.statsTimer = setInterval(() => this.statsTick(), every);
    return this;
  }

  stats(): FleetStats {
    const perDevice = this.devices.map((d) => d.stats());
    const sum = (k: 'sent' | 'acked' | 'failed' | 'inflight'): number => perDevice.reduce((acc, s) => acc + s[k], 0);
    return {
      devices: perDevice.length,
      connected: perDevice.filter((s) => s.connected).length,
      sent: sum('sent'),
      acked: sum('acked'),
      failed: sum('failed'),
      inflight: sum('inflight'),
      perDevice,
    };
  }

  /** Stop every device, end every client; resolves like `done`. Idempotent. */
  stop(reason: StopReason = 'stop'): Promise<FleetSummary> {
    if (this.stopping) return this.done;
    this.stopping = true;
    clearTimeout(this.durationTimer);
    clearInterval(this.statsTimer);
    const pending = this.stats().inflight;
    this.info(`stopping (${reason})${pending ? `, waiting for ${pending} unacknowledged ${pending === 1 ? 'message' : 'messages'}` : ''}`);
    const grace = this.opts.stopGraceMs ?? 5000;
    void Promise.all(this.devices.map((d) => d.stop(grace))).then((perDevice) => {
      const seconds = this.started ? (performance.now() - this.startedAt) / 1000 : 0;
      const sum = (k: 'sent' | 'acked' | 'failed'): number => perDevice.reduce((a, s) => a + s[k], 0);
      const summary: FleetSummary = {
        event: 'summary',
        devices: perDevice.length,
        sent: sum('sent'),
        acked: sum('acked'),
        failed: sum('failed'),
        seconds: round(seconds, 3),
        rate: seconds > 0 ? round(sum('acked') / seconds, 2) : 0,
        targetRate: this.targetRate,
        qos: this.qos,
        seed: this.seed,
        reason,
        protocols: this.protocolCounts(),
        sensors: this.sensorCounts(),
        faulty: this.faultyIds(),
        lastSeq: Object.fromEntries(perDevice.map((s) => [s.id, s.lastSeq])),
      };
      if (summary.failed > 0) this.warn(`${plural(summary.failed, 'message')} ${summary.failed === 1 ? 'was' : 'were'} never acknowledged`);
      this.info(`stopped: sent ${summary.sent}, acked ${summary.acked} in ${summary.seconds}s`);
      this.resolveDone(summary);
    });
    return this.done;
  }

  private wire(d: SimDevice): void {
    d.on('connect', (first) => {
      this.lastError.delete(d.id);
      this.emit('connect', d.id, first);
      if (!first) {
        this.info(`${d.id} reconnected`);
        return;
      }
      this.info(`${d.id} connected to ${d.url}`);
      this.connectedOnce.add(d.id);
      if (this.connectedOnce.size === this.devices.length) this.resolveReady();
    });
    d.on('offline', () => this.warn(`${d.id} connection lost, reconnecting`));
    d.on('clientError', (err) => {
      // A dead broker produces the same error every second; say it once.
      if (this.lastError.get(d.id) === err.message) return;
      this.lastError.set(d.id, err.message);
      this.warn(`${d.id} error: ${err.message}${this.errorHint(err, d.id)}`);
    });
    d.on('backpressure', (inflight) => this.warn(`${d.id} throttled: ${inflight} messages unacknowledged, rate not reachable`));
    d.on('sent', (msg) => {
      if (this.totalRate <= PER_MESSAGE_LOG_MAX_RATE && !this.opts.quiet) {
        if (msg.sensor === 'telemetry') {
          const t = msg.telemetry;
          this.writeLog(`${msg.deviceId} -> ${msg.topic} seq=${t.seq} temp=${t.temp} humidity=${t.humidity} (${msg.bytes} B)`);
        } else {
          const bearing = msg.condition === 'fault' ? `fault severity=${msg.severity.toFixed(3)}` : msg.condition;
          this.writeLog(
            `${msg.deviceId} -> ${msg.topic} seq=${msg.seq} samples=${msg.vibration.samples.length} rms=${msg.level.rms.toFixed(3)}g ` +
              `peak=${msg.level.peak.toFixed(3)}g bearing=${bearing} (${msg.bytes} B)`,
          );
        }
      } else {
        this.unloggedSinceStats = true;
      }
      this.emit('sent', msg);
    });
    d.on('command', (cmd) => {
      this.writeLog(`${cmd.deviceId} command ${cmd.command} ${JSON.stringify(cmd.payload)}: ${cmd.detail}`);
      this.recomputeTotalRate();
      this.emit('command', cmd);
    });
    d.on('complete', () => {
      this.completed.add(d.id);
      if (this.completed.size === this.devices.length) void this.stop('count');
    });
  }

  private protocolCounts(): Partial<Record<Protocol, number>> {
    const counts: Partial<Record<Protocol, number>> = {};
    for (const d of this.devices) counts[d.protocol] = (counts[d.protocol] ?? 0) + 1;
    return counts;
  }

  private sensorCounts(): Partial<Record<SensorKind, number>> {
    const counts: Partial<Record<SensorKind, number>> = {};
    for (const d of this.devices) counts[d.kind] = (counts[d.kind] ?? 0) + 1;
    return counts;
  }

  private faultyIds(): string[] {
    return this.devices.filter((d) => d.bearing === 'fault').map((d) => d.id);
  }

  /** ", 2 vibration sensors (faulty: sim-0002)" for a fleet with vibration sensors, else nothing. */
  private describeSensors(): string {
    const n = this.sensorCounts().vibration ?? 0;
    if (n === 0) return '';
    const faulty = this.faultyIds();
    return `, ${n} vibration ${n === 1 ? 'sensor' : 'sensors'} (${faulty.length === 0 ? 'all healthy' : `faulty: ${missingList(faulty)}`})`;
  }

  /** "mqtt://127.0.0.1:1883", or for a mix "mqtt://127.0.0.1:1883 (2 mqtt), ws://127.0.0.1:8080/ws (1 ws)". */
  private describeEndpoints(): string {
    const counts = this.protocolCounts();
    const used = Object.keys(counts) as Protocol[];
    if (used.length === 1) return this.endpoints.urls[used[0]!]!;
    return used.map((p) => `${this.endpoints.urls[p]!} (${counts[p]} ${p})`).join(', ');
  }

  private recomputeTotalRate(): void {
    let total = 0;
    for (const d of this.devices) {
      if (d.isPaused) continue;
      const r = d.currentRate;
      total += r === 'max' ? Infinity : r;
    }
    this.totalRate = total;
  }

  private statsTick(): void {
    const now = performance.now();
    const s = this.stats();
    const seconds = (now - this.lastStatsAt) / 1000;
    const sentRate = seconds > 0 ? (s.sent - this.lastStatsSent) / seconds : 0;
    const ackRate = seconds > 0 ? (s.acked - this.lastStatsAcked) / seconds : 0;
    const ranges = s.perDevice.map((d) => ({
      id: d.id,
      from: (this.lastStatsSeq.get(d.id) ?? 0) + 1,
      to: d.lastSeq,
    }));
    // Quiet intervals are skipped unless a device is down: that is worth repeating.
    const show = !this.opts.quiet && (this.unloggedSinceStats || s.connected < s.devices);
    this.lastStatsAt = now;
    this.lastStatsSent = s.sent;
    this.lastStatsAcked = s.acked;
    for (const d of s.perDevice) this.lastStatsSeq.set(d.id, d.lastSeq);
    this.unloggedSinceStats = false;
    if (!show) return;
    const fmt = (r: { from: number; to: number }): string => (r.to >= r.from ? `${r.from}..${r.to}` : '-');
    let seqPart: string;
    if (ranges.length <= 8) {
      seqPart = ranges.map((r) => `${r.id} ${fmt(r)}`).join(', ');
    } else {
      // One range per device would flood the terminal for big fleets.
      // (Loops, not Math.min(...spread): that overflows the stack for huge fleets.)
      let from = Infinity;
      let minLast = Infinity;
      let maxLast = 0;
      for (const r of ranges) {
        from = Math.min(from, r.from);
        minLast = Math.min(minLast, r.to);
        maxLast = Math.max(maxLast, r.to);
      }
      seqPart = `${fmt({ from, to: maxLast })} (last seq min ${minLast}, max ${maxLast})`;
    }
    this.writeLog(
      `stats: ${s.connected}/${s.devices} connected, sent ${s.sent}, acked ${s.acked}, inflight ${s.inflight}, ` +
        `${sentRate.toFixed(1)} msg/s sent, ${ackRate.toFixed(1)} acked/s over ${seconds.toFixed(1)}s; seq ${seqPart}`,
    );
  }

  /** What to do about a refused CONNECT (CONNACK 4: bad token, 5: not in the registry) or TLS error. */
  private errorHint(err: Error, id: string): string {
    if (err instanceof LinkError && err.statusCode !== undefined) return this.upgradeHint(err.statusCode);
    if (err instanceof LinkError && err.code.startsWith('COAP_')) return this.coapHint(err.code, id);
    const code = (err as Error & { code?: unknown }).code;
    if (typeof code === 'string') {
      if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return ' (connect to a host name or address the certificate lists)';
      if (/SELF_SIGNED|UNABLE_TO_(VERIFY|GET_ISSUER)/.test(code)) {
        return this.opts.tls?.ca
          ? ' (--ca is not the certificate or CA the server uses)'
          : " (give --ca with the proxy's certificate or its CA)";
      }
      return '';
    }
    if (code !== 4 && code !== 5) return '';
    if (this.opts.tls?.cert && code === 5) {
      return ` (the proxy admits a client certificate as the device its CN names, when the registry has it: is ${id} the CN? \`edge-proxy devices add ${id}\` registers it)`;
    }
    if (!this.opts.tokens) {
      return ' (is the proxy in token mode? give --token or --token-file, or on its TLS port a client certificate with --cert and --key)';
    }
    return code === 4
      ? ' (the proxy does not accept this token: use the one `edge-proxy devices add` or `devices rotate` printed last)'
      : ` (the proxy does not know this device: \`edge-proxy devices add ${id}\` registers it)`;
  }

  /** What to do about a CoAP refusal or silence (docs/coap.md). */
  private coapHint(code: string, id: string): string {
    switch (code) {
      case 'COAP_4.01':
        return this.opts.tokens
          ? ' (the proxy does not accept this token: use the one `edge-proxy devices add` or `devices rotate` printed last)'
          : ' (the proxy is in token mode: give --token or --token-file)';
      case 'COAP_4.03':
        return ` (the registry's publish or subscribe filters of ${id} do not allow the topic)`;
      case 'COAP_4.13':
        return this.devices.find((d) => d.id === id)?.kind === 'vibration'
          ? " (a vibration window is about 8 KB: the proxy's limits.maxPayloadBytes is smaller)"
          : ' (give a smaller --payload-bytes)';
      case 'COAP_TIMEOUT':
        return ' (is the proxy running, and is --coap-url its CoAP endpoint? coap.port, default 5683)';
      default:
        return '';
    }
  }

  /** What to do about a refused WebSocket upgrade (docs/websocket.md). */
  private upgradeHint(status: number): string {
    switch (status) {
      case 401:
        return this.opts.tokens
          ? ' (the proxy does not accept this token: use the one `edge-proxy devices add` or `devices rotate` printed last)'
          : ' (the proxy is in token mode: give --token or --token-file)';
      case 404:
        return " (no /mqtt or /ws there: is the URL the proxy's http endpoint, http.port, default 8080?)";
      case 426:
        return ' (the proxy wants a WebSocket upgrade there)';
      case 503:
        return ' (the proxy is not taking connections, or this address holds http.maxConnectionsPerAddress already)';
      default:
        return '';
    }
  }

  private info(line: string): void {
    if (!this.opts.quiet) this.writeLog(line);
  }

  private warn(line: string): void {
    this.writeLog(`warning: ${line}`);
  }
}

/** Create and start a fleet. `await fleet.done` for the summary, `fleet.stop()` to end early. */
export function startFleet(options: FleetOptions = {}): Fleet {
  return new Fleet(options).start();
}

/** "sim-0001", "sim-0001 and sim-0002", "sim-0001, sim-0002, sim-0003 and 7 more" */
function missingList(ids: readonly string[]): string {
  const shown = ids.slice(0, 3);
  const more = ids.length - shown.length;
  if (more > 0) return `${shown.join(', ')} and ${more} more`;
  return shown.length === 1 ? shown[0]! : `${shown.slice(0, -1).join(', ')} and ${shown.at(-1)!}`;
}

/** The PEM files as MQTT.js wants them; an unreadable file throws (its message names it). */
export function readTlsFiles(files: TlsFiles | undefined): { ca?: Buffer; cert?: Buffer; key?: Buffer } {
  const out: { ca?: Buffer; cert?: Buffer; key?: Buffer } = {};
  if (files?.ca !== undefined) out.ca = readFileSync(files.ca);
  if (files?.cert !== undefined) out.cert = readFileSync(files.cert);
  if (files?.key !== undefined) out.key = readFileSync(files.key);
  return out;
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** "1 device", "2 devices". */
function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}
