import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import mqtt from 'mqtt';
import type { IClientOptions, IClientPublishOptions, MqttClient } from 'mqtt';
import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import { EdgeError } from '../core/errors.js';
import { redactUrl } from '../core/redact.js';

const noLog = (): void => undefined;

interface CloudEvents {
  up: [];
  down: [];
  /** a message under <controlPrefix>down/: its local topic, payload and retain flag */
  downlink: [localTopic: string, payload: Buffer, retain: boolean];
  /** a message on <controlPrefix>rules/set (a whole ruleset) or rules/change (some files of it) */
  rulesRequest: [kind: 'set' | 'change', payload: Buffer, retained: boolean];
}

type PublishDone = (err: Error | null) => void;

const MIN_BACKOFF_MS = 1_000;
const MAX_BACKOFF_MS = 60_000;

/**
 * Exponential backoff from 1 s to 60 s with full jitter: the delay is anywhere between 1 s and a
 * ceiling that doubles with each attempt (2 s, 4 s, ... 60 s), so a fleet does not reconnect in step.
 */
export function backoffDelay(attempt: number, random: () => number = Math.random): number {
  const ceiling = Math.min(MAX_BACKOFF_MS, MIN_BACKOFF_MS * 2 ** (Math.min(attempt, 16) + 1));
  return Math.round(MIN_BACKOFF_MS + random() * (ceiling - MIN_BACKOFF_MS));
}

// A link that drops soon after it came up (a duplicate client id, a broker that refuses the
// session) must keep backing off; the attempts count restarts only after this long connected.
const STABLE_AFTER_MS = 30_000;

/**
 * The one MQTT connection to the cloud broker. It never queues: publish() is only called while
 * connected, and every reconnect makes a new MQTT.js client, so MQTT.js's own offline queue and
 * its resends of a previous session can never duplicate or reorder what the cache drains.
 */
export class CloudLink extends EventEmitter<CloudEvents> {
  private client: MqttClient | null = null;
  private connectedNow = false;
  private attempt = 0;
  private connectedAt = 0;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private readonly statusTopic: string;
  private readonly downPrefix: string;
  private readonly rulesSetTopic: string;
  private readonly rulesChangeTopic: string;
  private readonly rulesResultTopic: string;
  private readonly tlsFiles: Pick<IClientOptions, 'ca' | 'cert' | 'key'>;
  /** the URL as log lines show it: without its password */
  private readonly shownUrl: string | null;

  constructor(
    private readonly cfg: Config['uplink'],
    private readonly log: Logger,
  ) {
    super();
    if (!cfg.url) throw new EdgeError('E_UPLINK_CONFIG', 'uplink.url is not set');
    this.shownUrl = redactUrl(cfg.url);
    this.statusTopic = `${cfg.controlPrefix}status`;
    this.downPrefix = `${cfg.controlPrefix}down/`;
    this.rulesSetTopic = `${cfg.controlPrefix}rules/set`;
    this.rulesChangeTopic = `${cfg.controlPrefix}rules/change`;
    this.rulesResultTopic = `${cfg.controlPrefix}rules/result`;
    this.tlsFiles = {};
    try {
      if (cfg.tls.ca) this.tlsFiles.ca = readFileSync(cfg.tls.ca);
      if (cfg.tls.cert) this.tlsFiles.cert = readFileSync(cfg.tls.cert);
      if (cfg.tls.key) this.tlsFiles.key = readFileSync(cfg.tls.key);
    } catch (err) {
      throw new EdgeError('E_UPLINK_CONFIG', `cannot read an uplink TLS file: ${(err as Error).message}`, { cause: err });
    }
  }

  get connected(): boolean {
    return this.connectedNow;
  }

  start(): void {
    this.stopped = false;
    this.connect();
  }

  private connect(): void {
    this.timer = null;
    if (this.stopped) return;
    const cfg = this.cfg;
    const options: IClientOptions = {
      clientId: cfg.clientId,
      protocolVersion: cfg.protocolVersion,
      clean: true,
      keepalive: cfg.keepalive,
      reconnectPeriod: 0,
      connectTimeout: 15_000,
      queueQoSZero: false,
      rejectUnauthorized: cfg.tls.rejectUnauthorized,
      will: { topic: this.statusTopic, payload: Buffer.from('offline'), qos: 1, retain: true },
      ...this.tlsFiles,
    };
    // MQTT.js logs each packet through `debug`, which allocates every call's arguments even when
    // its output is off: about a tenth of the proxy's allocations under load, and more garbage
    // collections. Left to `debug` only when DEBUG asks for it.
    if (!process.env.DEBUG) options.log = noLog;
    if (cfg.username !== null) options.username = cfg.username;
    if (cfg.password !== null) options.password = cfg.password;
    const client = mqtt.connect(cfg.url!, options);
    this.client = client;
    client.on('connect', () => this.onConnect(client));
    client.on('message', (topic, payload, packet) => {
      if (topic.startsWith(this.downPrefix) && topic.length > this.downPrefix.length) {
        this.emit('downlink', topic.slice(this.downPrefix.length), payload, packet.retain);
      } else if (topic === this.rulesSetTopic || topic === this.rulesChangeTopic) {
        this.emit('rulesRequest', topic === this.rulesSetTopic ? 'set' : 'change', payload, packet.retain);
      }
    });
    client.on('error', (err) => {
      this.log.warn({ url: this.shownUrl, err: err.message }, 'cloud broker connection error; messages stay in the cache until it is back');
    });
    client.on('close', () => this.onClose(client));
  }

  private onConnect(client: MqttClient): void {
    if (client !== this.client) return;
    this.connectedAt = Date.now();
    client.subscribe(`${this.downPrefix}#`, { qos: 1 }, (err) => {
      if (err)
        this.log.error(
          { err: err.message, topic: `${this.downPrefix}#` },
          'cannot subscribe to the cloud downlink; check the broker ACL for this client',
        );
    });
    client.subscribe([this.rulesSetTopic, this.rulesChangeTopic], { qos: 1 }, (err) => {
      if (err)
        this.log.error(
          { err: err.message, topics: [this.rulesSetTopic, this.rulesChangeTopic] },
          'cannot subscribe to the rules push topics; check the broker ACL for this client',
        );
    });
    client.publish(this.statusTopic, 'online', { qos: 1, retain: true });
    this.connectedNow = true;
    this.log.info({ url: this.shownUrl, clientId: this.cfg.clientId }, 'connected to the cloud broker');
    this.emit('up');
  }

  private onClose(client: MqttClient): void {
    if (client !== this.client) return;
    client.removeAllListeners();
    client.on('error', () => {});
    client.end(true);
    this.client = null;
    const wasConnected = this.connectedNow;
    this.connectedNow = false;
    if (wasConnected && Date.now() - this.connectedAt >= STABLE_AFTER_MS) this.attempt = 0;
    if (wasConnected) {
      this.log.warn({ url: this.shownUrl }, 'disconnected from the cloud broker; caching messages and reconnecting');
      this.emit('down');
    }
    if (this.stopped) return;
    const delay = backoffDelay(this.attempt++);
    this.log.debug({ delayMs: delay, attempt: this.attempt }, 'cloud reconnect scheduled');
    this.timer = setTimeout(() => this.connect(), delay);
    this.timer.unref();
  }

  /** Publish while connected; false (and `done` never called) when not connected. */
  publish(topic: string, payload: Buffer, id: string, done: PublishDone): boolean {
    const client = this.client;
    if (!client || !this.connectedNow) return false;
    const opts: IClientPublishOptions = { qos: this.cfg.qos };
    if (this.cfg.protocolVersion === 5 && this.cfg.format === 'raw') opts.properties = { userProperties: { id } };
    client.publish(topic, payload, opts, (err) => done(err ?? null));
    return true;
  }

  /** Answer a rules push on <controlPrefix>rules/result (QoS 1, not retained); dropped when not connected. */
  publishRulesResult(body: string): boolean {
    const client = this.client;
    if (!client || !this.connectedNow) return false;
    client.publish(this.rulesResultTopic, body, { qos: 1 }, (err) => {
      if (err)
        this.log.warn({ topic: this.rulesResultTopic, err: err.message }, 'the answer to a rules push from the cloud was not delivered');
    });
    return true;
  }

  /** Say `offline` (retained) and close cleanly. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    const client = this.client;
    if (!client) return;
    // Detached first, so that its close event is not taken for a lost connection.
    this.client = null;
    client.removeAllListeners('close');
    const wasConnected = this.connectedNow;
    this.connectedNow = false;
    if (wasConnected) this.emit('down');
    if (wasConnected) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 2_000);
        client.publish(this.statusTopic, 'offline', { qos: 1, retain: true }, () => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    await new Promise<void>((resolve) => client.end(false, {}, () => resolve()));
  }
}
