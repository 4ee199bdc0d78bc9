/**
 * How a simulated device talks to the proxy: MQTT (MQTT.js over TCP, TLS or WebSocket), the
 * proxy's JSON WebSocket protocol on /ws (docs/websocket.md) with the `ws` package, or CoAP
 * (coap-link.ts). A device sees one interface for all of them: connect, publish with a callback
 * once the publish is settled (PUBACK, the `ack` frame of a qos 1 `pub`, a CoAP 2.04), subscribe,
 * messages in, reconnects.
 */
import { EventEmitter } from 'node:events';
import { connect, type IClientOptions, type MqttClient } from 'mqtt';
import WebSocket from 'ws';

/**
 * How a device reaches the proxy: MQTT over TCP (or TLS), MQTT over WebSocket (/mqtt), the JSON
 * protocol (/ws), CoAP over UDP (coap-link.ts).
 */
export type Protocol = 'mqtt' | 'mqtt-ws' | 'ws' | 'coap';
export const PROTOCOLS: readonly Protocol[] = ['mqtt', 'mqtt-ws', 'ws', 'coap'];

/** The protocols that connect to the proxy's http endpoint. */
export const WEBSOCKET_PROTOCOLS: readonly Protocol[] = ['mqtt-ws', 'ws'];

export function isProtocol(s: string): s is Protocol {
  return (PROTOCOLS as readonly string[]).includes(s);
}

export interface LinkEvents {
  /** Every (re)connect: CONNACK, or the WebSocket open on /ws. */
  connect: [];
  close: [];
  reconnect: [];
  error: [err: Error];
  /** A message on a subscribed topic, its payload as UTF-8 text. */
  message: [topic: string, payload: string];
}

export abstract class DeviceLink extends EventEmitter<LinkEvents> {
  abstract readonly connected: boolean;
  /** `done` once settled: acknowledged (qos 1) or written (qos 0), or failed. */
  abstract publish(topic: string, payload: string, qos: 0 | 1, done: (err?: Error) => void): void;
  /** Subscribe (qos 1); kept across reconnects. */
  abstract subscribe(filter: string, done: (err?: Error) => void): void;
  /** End the connection: cleanly, or at once when `force`. Pending publishes then fail. */
  abstract end(force: boolean): Promise<void>;
}

/** MQTT.js: mqtt://, mqtts://, or ws:// and wss:// for MQTT over WebSocket. */
export class MqttLink extends DeviceLink {
  private readonly client: MqttClient;

  constructor(url: string, options: IClientOptions) {
    super();
    this.client = connect(url, options);
    this.client.on('connect', () => this.emit('connect'));
    this.client.on('close', () => this.emit('close'));
    this.client.on('reconnect', () => this.emit('reconnect'));
    this.client.on('error', (err) => this.emit('error', err));
    this.client.on('message', (topic, payload) => this.emit('message', topic, payload.toString('utf8')));
  }

  get connected(): boolean {
    return this.client.connected;
  }

  publish(topic: string, payload: string, qos: 0 | 1, done: (err?: Error) => void): void {
    // MQTT.js owns the packet from here: if the connection drops before the PUBACK it resends
    // this exact packet after reconnecting.
    this.client.publish(topic, payload, { qos }, (err) => done(err ?? undefined));
  }

  subscribe(filter: string, done: (err?: Error) => void): void {
    // MQTT.js subscribes again by itself after the reconnect of a clean session.
    this.client.subscribe(filter, { qos: 1 }, (err) => done(err ?? undefined));
  }

  async end(force: boolean): Promise<void> {
    await this.client.endAsync(force);
  }
}

/** An `error` frame of /ws, a refused upgrade, a CoAP error: `code` is E_…, HTTP_<status> or COAP_<code> (COAP_4.01). */
export class LinkError extends Error {
  override name = 'LinkError';
  constructor(
    message: string,
    readonly code: string,
    /** the HTTP status of a refused upgrade */
    readonly statusCode?: number,
  ) {
    super(message);
  }
}

export interface JsonWsOptions {
  /** headers of the upgrade request (Authorization: Bearer …) */
  headers?: Record<string, string>;
  /** ms between reconnect attempts (default 1000) */
  reconnectPeriod?: number;
  /** ms the upgrade may take (default 10000) */
  connectTimeout?: number;
  /** ms between WebSocket pings; a connection whose ping went unanswered by the next one is dropped (default 30000) */
  pingInterval?: number;
  /** for a wss:// URL */
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  /** ms before a `pub` refused with E_CACHE_FULL is sent again (default 1000) */
  cacheFullRetryMs?: number;
}

interface Pending {
  kind: 'pub' | 'sub';
  frame: string;
  /** the filter of a `sub` */
  filter?: string;
  qos: 0 | 1;
  done: (err?: Error) => void;
  /** refused with E_CACHE_FULL: sent again by this timer */
  retry?: NodeJS.Timeout;
}

/** Close codes of /ws worth a line in the log (docs/websocket.md). */
const CLOSE_REASONS: Record<number, string> = {
  1001: 'the proxy is stopping',
  1008: 'too many refused frames',
  1009: 'a frame too large',
  1013: 'a slow reader',
  4401: 'the device was removed or given a new token',
  4403: 'its filters no longer allow its subscriptions',
};

/**
 * The JSON protocol of /ws: `pub` frames with an `id` (acknowledged by `{"op":"ack","id"}` once
 * committed, for qos 1), `sub` for the command topic, `msg` frames in. Like MQTT.js it reconnects,
 * sends again what was not acknowledged, subscribes again, and sends again a publish refused with
 * E_CACHE_FULL after a while (the proxy's answer for "send it again later").
 */
export class JsonWsLink extends DeviceLink {
  private ws: WebSocket | undefined;
  private isOpen = false;
  private ended = false;
  private nextId = 0;
  /** frames sent or to send that wait for their answer (qos 0 pubs: to be written), in the order they were made */
  private readonly pending = new Map<number, Pending>();
  /** acknowledged subscriptions, sent again after a reconnect */
  private readonly subscriptions = new Set<string>();
  private reconnectTimer: NodeJS.Timeout | undefined;
  private pingTimer: NodeJS.Timeout | undefined;
  private awaitingPong = false;

  constructor(
    readonly url: string,
    private readonly options: JsonWsOptions = {},
  ) {
    super();
    this.open();
  }

  get connected(): boolean {
    return this.isOpen;
  }

  publish(topic: string, payload: string, qos: 0 | 1, done: (err?: Error) => void): void {
    const id = ++this.nextId;
    const frame = `{"op":"pub","topic":${JSON.stringify(topic)},"payload":${payloadJson(payload)},"qos":${qos},"id":${id}}`;
    this.pending.set(id, { kind: 'pub', frame, qos, done });
    if (this.isOpen) this.sendPending(id);
  }

  subscribe(filter: string, done: (err?: Error) => void): void {
    const id = ++this.nextId;
    this.pending.set(id, { kind: 'sub', frame: subFrame(filter, id), filter, qos: 1, done });
    this.subscriptions.add(filter);
    if (this.isOpen) this.sendPending(id);
  }

  async end(force: boolean): Promise<void> {
    this.ended = true;
    clearTimeout(this.reconnectTimer);
    this.stopPinging();
    const ws = this.ws;
    if (ws && ws.readyState !== WebSocket.CLOSED) {
      const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()));
      if (force || ws.readyState !== WebSocket.OPEN) ws.terminate();
      else ws.close(1000, 'done');
      const timer = setTimeout(() => ws.terminate(), 3000);
      await closed;
      clearTimeout(timer);
    }
    this.isOpen = false;
    this.failPending(new Error('connection closed'));
  }

  private open(): void {
    const o = this.options;
    const ws = new WebSocket(this.url, {
      headers: o.headers,
      handshakeTimeout: o.connectTimeout ?? 10_000,
      perMessageDeflate: false,
      ...(o.ca ? { ca: o.ca } : {}),
      ...(o.cert ? { cert: o.cert } : {}),
      ...(o.key ? { key: o.key } : {}),
    });
    this.ws = ws;
    ws.on('open', () => {
      this.isOpen = true;
      this.startPinging(ws);
      // Subscriptions first, then whatever was not acknowledged, in the order it was made.
      const waiting = new Set([...this.pending.values()].map((p) => p.filter));
      for (const filter of this.subscriptions) if (!waiting.has(filter)) this.resubscribe(filter);
      for (const id of [...this.pending.keys()]) this.sendPending(id);
      this.emit('connect');
    });
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      this.onFrame(rawText(data));
    });
    ws.on('pong', () => {
      this.awaitingPong = false;
    });
    ws.on('error', (err) => {
      if (this.ended) return;
      const status = /Unexpected server response: (\d+)/.exec(err.message)?.[1];
      this.emit('error', status === undefined ? err : new LinkError(`upgrade refused: HTTP ${status}`, `HTTP_${status}`, Number(status)));
    });
    ws.on('close', (code, reason) => {
      const wasOpen = this.isOpen;
      this.isOpen = false;
      this.stopPinging();
      for (const p of this.pending.values()) clearTimeout(p.retry);
      if (this.ended) return;
      const why = CLOSE_REASONS[code];
      if (wasOpen && why !== undefined) {
        this.emit('error', new LinkError(`closed by the proxy: ${code} ${reason.toString() || why}`, `CLOSE_${code}`));
      }
      if (wasOpen) this.emit('close');
      this.reconnectTimer = setTimeout(() => {
        if (this.ended) return;
        this.emit('reconnect');
        this.open();
      }, this.options.reconnectPeriod ?? 1000);
    });
  }

  private onFrame(text: string): void {
    let frame: unknown;
    try {
      frame = JSON.parse(text);
    } catch {
      this.emit('error', new Error(`a frame from the proxy that is not JSON: ${text.slice(0, 100)}`));
      return;
    }
    if (typeof frame !== 'object' || frame === null || Array.isArray(frame)) return;
    const f = frame as Record<string, unknown>;
    const id = typeof f.id === 'number' ? f.id : undefined;
    switch (f.op) {
      case 'ack': {
        const p = id === undefined ? undefined : this.pending.get(id);
        if (!p || id === undefined) return;
        this.pending.delete(id);
        p.done();
        return;
      }
      case 'error': {
        const code = typeof f.code === 'string' ? f.code : 'E_UNKNOWN';
        const message = `${code}: ${typeof f.message === 'string' ? f.message : ''}`;
        const p = id === undefined ? undefined : this.pending.get(id);
        if (!p || id === undefined) {
          // An E_ACL drop of a subscription, or an answer to nothing this link sent.
          this.emit('error', new LinkError(message, code));
          return;
        }
        if (code === 'E_CACHE_FULL' && p.kind === 'pub') {
          clearTimeout(p.retry);
          p.retry = setTimeout(() => {
            p.retry = undefined;
            if (this.isOpen && this.pending.get(id) === p) this.sendPending(id);
          }, this.options.cacheFullRetryMs ?? 1000);
          return;
        }
        this.pending.delete(id);
        if (p.filter !== undefined) this.subscriptions.delete(p.filter);
        p.done(new LinkError(message, code));
        return;
      }
      case 'msg': {
        if (typeof f.topic !== 'string') return;
        const payload = f.payload;
        let text: string;
        if (f.encoding === 'base64' && typeof payload === 'string') text = Buffer.from(payload, 'base64').toString('utf8');
        else if (typeof payload === 'string') text = payload;
        else text = JSON.stringify(payload) ?? '';
        this.emit('message', f.topic, text);
        return;
      }
      default:
      // pong, and ops of a newer proxy: nothing to do.
    }
  }

  private sendPending(id: number): void {
    const p = this.pending.get(id);
    const ws = this.ws;
    if (!p || !ws || !this.isOpen) return;
    clearTimeout(p.retry);
    p.retry = undefined;
    if (p.qos === 0) {
      // Settled once written, as MQTT.js settles a QoS 0 publish.
      this.pending.delete(id);
      ws.send(p.frame, (err) => p.done(err ?? undefined));
      return;
    }
    ws.send(p.frame);
  }

  private resubscribe(filter: string): void {
    const id = ++this.nextId;
    this.pending.set(id, {
      kind: 'sub',
      frame: subFrame(filter, id),
      filter,
      qos: 1,
      done: (err) => {
        if (err) this.emit('error', err);
      },
    });
  }

  private failPending(err: Error): void {
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) {
      clearTimeout(p.retry);
      p.done(err);
    }
  }

  private startPinging(ws: WebSocket): void {
    this.stopPinging();
    this.awaitingPong = false;
    this.pingTimer = setInterval(() => {
      if (this.awaitingPong) {
        // No pong since the last ping: a dead connection. Its close reconnects.
        ws.terminate();
        return;
      }
      this.awaitingPong = true;
      ws.ping();
    }, this.options.pingInterval ?? 30_000);
    this.pingTimer.unref();
  }

  private stopPinging(): void {
    clearInterval(this.pingTimer);
    this.pingTimer = undefined;
  }
}

function rawText(data: WebSocket.RawData): string {
  if (Buffer.isBuffer(data)) return data.toString('utf8');
  if (Array.isArray(data)) return Buffer.concat(data).toString('utf8');
  return Buffer.from(data).toString('utf8');
}

function subFrame(filter: string, id: number): string {
  return `{"op":"sub","topic":${JSON.stringify(filter)},"id":${id}}`;
}

/**
 * A payload as the `payload` of a `pub`: JSON text of an object or array goes as that JSON value
 * (so the proxy takes it as `json`, as it sniffs the same bytes over MQTT); anything else as a string.
 */
function payloadJson(payload: string): string {
  const first = payload.trimStart()[0];
  if (first === '{' || first === '[') {
    try {
      JSON.parse(payload);
      return payload;
    } catch {
      // not JSON after all: a string
    }
  }
  return JSON.stringify(payload);
}
