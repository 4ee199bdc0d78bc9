import type { IncomingMessage } from 'node:http';
import type { RawData, WebSocket } from 'ws';
import type { Logger } from 'pino';
import type { Config } from '../../config/types.js';
import { EdgeError } from '../../core/errors.js';
import { FilterIndex } from '../../core/filter-index.js';
import type { EdgeMessage } from '../../core/message.js';
import type { Identity } from '../../auth/service.js';
import type { RegistryChange } from '../../auth/device-registry.js';
import type { AdapterDeps, DeviceAdapter, Endpoint } from '../adapter.js';
import type { Admission } from '../http/endpoint.js';
import { ErrorWindow, WsConnection, type Subscription } from './connection.js';
import { credentialsOf, remoteOf } from './identity.js';
import { Outbox } from './outbox.js';
import {
  ackFrame,
  decodeFrame,
  errorFrame,
  maxFrameBytes,
  msgFrame,
  pongFrame,
  type ClientFrame,
  type FrameRefusal,
  type WsErrorCode,
} from './frames.js';

/** The slice of the configuration the /ws adapter reads. */
export interface WsAdapterConfig {
  http: Pick<Config['http'], 'sendBufferBytes' | 'maxErrors' | 'errorWindowSeconds'>;
  limits: Pick<Config['limits'], 'maxPayloadBytes' | 'maxTopicBytes'>;
}

/** Close codes: RFC 6455 §7.4.1, and the contract's 4401 (auth) and 4403 (access). */
const CLOSE = { goingAway: 1001, policy: 1008, tryAgainLater: 1013, auth: 4401, access: 4403 } as const;

/** A subscriber over http.sendBufferBytes for this long is closed with 1013 (the contract's 10 s). */
const SLOW_CLOSE_MS = 10_000;
/**
 * A subscriber closed with 1013 has this long to read its backlog and answer the close frame; then
 * its socket is destroyed with an error. ws's own close timeout (30 s) destroys it without one, and
 * Node then makes an Error for each write still queued: ~100 ms of the event loop for a few MiB.
 */
const SLOW_CUT_MS = 10_000;
/** How often lagging subscribers are looked at. */
const SWEEP_MS = 500;
/**
 * QoS 1 publishes of one connection in the pipeline at once; past this its reads pause until half
 * of them are answered, so that a device that does not wait for its acks cannot fill the heap.
 */
const MAX_INFLIGHT = 256;
/** Subscriptions one connection may hold: each is a place in the adapter's filter index and a retained replay. */
const MAX_SUBSCRIPTIONS = 1_000;

type FramingReason = 'malformed' | 'too_large' | 'unsupported';

/**
 * The JSON WebSocket protocol on GET /ws (../shared/spec/protocols.md): one JSON object per text
 * frame. Identity is decided at the upgrade by the ingress gate; publishes, subscriptions and
 * deliveries go through the gate as MQTT's do, so the answers differ and the checks do not.
 */
export class WsAdapter implements DeviceAdapter {
  readonly protocol = 'ws';
  private readonly connections = new Set<WsConnection>();
  /** connections under the filters they subscribe to, until their close: a message costs what its subscribers cost */
  private readonly subscribers = new FilterIndex<WsConnection>();
  /** each connection's socket, to cut a slow consumer (closeSlow) */
  private readonly sockets = new WeakMap<WsConnection, IncomingMessage['socket']>();
  private readonly onRegistryChange = (change: RegistryChange): void => this.registryChanged(change);
  private sweeper: NodeJS.Timeout | null = null;
  private stopping = false;
  /** past this, even a delivery that is not dropped (QoS 1, an answer) closes the connection with 1013 */
  private readonly hardBufferBytes: number;

  constructor(
    private readonly cfg: WsAdapterConfig,
    private readonly deps: AdapterDeps,
  ) {
    // Room for the QoS 0 limit several times over, and for two of the largest frames.
    this.hardBufferBytes = 4 * cfg.http.sendBufferBytes + 2 * maxFrameBytes(cfg.limits);
  }

  private get log(): Logger {
    return this.deps.log;
  }

  start(): Promise<Endpoint[]> {
    this.deps.http.route<Identity>({
      path: '/ws',
      subprotocols: [],
      frames: { maxPayload: maxFrameBytes(this.cfg.limits), skipUTF8Validation: true },
      admit: (req, url) => this.admit(req, url),
      open: (ws, req, identity) => this.open(ws, req, identity),
    });
    this.deps.auth.on('change', this.onRegistryChange);
    this.sweeper = setInterval(() => this.sweep(), SWEEP_MS);
    this.sweeper.unref();
    // The shared HTTP endpoint listens and reports `http`; this adapter has no listener of its own.
    return Promise.resolve([]);
  }

  // ---- connections

  private admit(req: IncomingMessage, url: URL): Admission<Identity> {
    if (this.stopping) return { ok: false, status: 503, reason: 'unavailable', message: 'the proxy is stopping' };
    const { address, port } = remoteOf(req);
    const credentials = credentialsOf(req, url);
    const result = this.deps.gate.authenticate('ws', credentials, `${address}:${port}`);
    if (result.ok) return { ok: true, context: result.identity };
    const how = 'send the device token as Authorization: Bearer <token> or ?token=<token>';
    return {
      ok: false,
      status: 401,
      reason: 'auth',
      message: credentials.token === null ? `a device token is required: ${how}` : `${result.detail}; ${how}`,
    };
  }

  private open(ws: WebSocket, req: IncomingMessage, identity: Identity): void {
    const { address, port } = remoteOf(req);
    const conn = new WsConnection(
      ws,
      identity,
      `${address}:${port}`,
      new ErrorWindow(this.cfg.http.maxErrors, this.cfg.http.errorWindowSeconds * 1000),
      this.subscribers,
      ws.extensions === '' ? new Outbox(req.socket) : null,
    );
    this.connections.add(conn);
    this.sockets.set(conn, req.socket);
    this.deps.events.connectionOpened('ws', 'ws');
    this.log.debug({ deviceId: identity.deviceId, remote: conn.remote }, 'ws device connected');
    ws.on('message', (data: RawData, isBinary: boolean) => this.onFrame(conn, toBuffer(data), isBinary));
    ws.on('error', (err: Error & { code?: string }) => {
      // ws closes the connection itself after a frame it cannot read (1009 past maxPayload, 1002).
      const tooLarge = err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH';
      this.deps.events.framingRefused(tooLarge ? 'too_large' : 'malformed');
      const hint = tooLarge ? ` (a frame may hold ${maxFrameBytes(this.cfg.limits)} bytes; limits.maxPayloadBytes)` : '';
      this.log.info({ deviceId: identity.deviceId, remote: conn.remote, err: err.message }, `ws connection closed by a bad frame${hint}`);
    });
    ws.once('close', (code: number) => {
      conn.closing = true;
      this.connections.delete(conn);
      conn.unsubscribeAll();
      this.deps.events.connectionClosed('ws', 'ws');
      this.log.debug({ deviceId: identity.deviceId, remote: conn.remote, code }, 'ws device disconnected');
    });
  }

  private onFrame(conn: WsConnection, data: Buffer, isBinary: boolean): void {
    if (conn.closing) return;
    const decoded = decodeFrame(data, isBinary, this.cfg.limits.maxTopicBytes);
    if (!decoded.ok) {
      const { ok: _, ...refusal } = decoded;
      this.refuse(conn, refusal, framingReason(decoded.code));
      return;
    }
    const frame = decoded.frame;
    switch (frame.op) {
      case 'pub':
        return this.publish(conn, frame);
      case 'sub':
        return this.subscribe(conn, frame.topic, frame.id);
      case 'unsub':
        conn.unsubscribe(frame.topic);
        this.send(conn, ackFrame(frame.id), false);
        return;
      case 'ping':
        this.send(conn, pongFrame(frame.id), false);
        return;
    }
  }

  /**
   * A refused frame gets its error frame and the connection stays, unless it is the
   * http.maxErrors-th refusal within http.errorWindowSeconds: then it closes with 1008.
   * `counted`: refused here from its framing; the gate counts its own refusals.
   */
  private refuse(conn: WsConnection, refusal: FrameRefusal, counted: FramingReason | null): void {
    if (counted) this.deps.events.framingRefused(counted);
    this.send(conn, errorFrame(refusal), false);
    if (!conn.errors.note(Date.now())) return;
    const { maxErrors, errorWindowSeconds } = this.cfg.http;
    this.close(
      conn,
      CLOSE.policy,
      `${maxErrors} refused frames within ${errorWindowSeconds} s`,
      `closed ws device ${conn.identity.deviceId}: ${maxErrors} refused frames within ${errorWindowSeconds} s (http.maxErrors, http.errorWindowSeconds); the last: ${refusal.code} ${refusal.message.slice(0, 200)}`,
    );
  }

  // ---- publish

  private publish(conn: WsConnection, f: Extract<ClientFrame, { op: 'pub' }>): void {
    const { id, qos } = f;
    if (this.stopping) {
      // Read from a chunk already in hand when reads paused: the device sends it again to the next proxy run.
      if (qos === 1)
        this.send(conn, errorFrame({ id, code: 'E_CACHE_FULL', message: 'the proxy is stopping; send it again later' }), false);
      else this.deps.events.notAccepted('ws', 0);
      return;
    }
    const verdict = this.deps.gate.checkPublish(conn.identity, 'ws', {
      topic: f.topic,
      payload: f.payload,
      qos,
      retain: f.retain,
      ...(f.contentType ? { contentType: f.contentType } : {}),
    });
    if (verdict.kind === 'drop') {
      // A `$` topic: acknowledged and delivered nowhere, as over MQTT; in its place in line.
      if (qos === 1) conn.answers.reserve(() => this.send(conn, ackFrame(id), false))(null);
      return;
    }
    if (verdict.kind === 'refuse') {
      this.refuse(conn, { id, code: wireCode(verdict.error), message: verdict.error.message }, null);
      return;
    }
    if (qos === 0) {
      this.deps.gate.accept(verdict.msg, (err) => {
        if (err) this.deps.events.notAccepted('ws', 0);
      });
      return;
    }
    // The ack goes out once the router says the message is safe (committed where it goes up), as a PUBACK.
    const answer = conn.answers.reserve((err) => {
      if (!err) this.send(conn, ackFrame(id), false);
      else this.send(conn, errorFrame({ id, code: wireCode(err), message: `not accepted, send it again later: ${err.message}` }), false);
    });
    conn.inflight++;
    if (conn.inflight >= MAX_INFLIGHT) this.pauseReads(conn);
    this.deps.gate.accept(verdict.msg, (err) => {
      conn.inflight--;
      if (err) this.deps.events.notAccepted('ws', 1);
      if (conn.paused && !this.stopping && conn.inflight <= MAX_INFLIGHT / 2) this.resumeReads(conn);
      answer(err);
    });
  }

  private pauseReads(conn: WsConnection): void {
    if (conn.paused) return;
    conn.paused = true;
    conn.ws.pause();
  }

  private resumeReads(conn: WsConnection): void {
    if (!conn.paused) return;
    conn.paused = false;
    conn.ws.resume();
  }

  // ---- subscriptions and deliveries

  private subscribe(conn: WsConnection, filter: string, id: ClientFrame['id']): void {
    if (!conn.subscriptions.has(filter) && conn.subscriptions.size >= MAX_SUBSCRIPTIONS) {
      this.refuse(
        conn,
        { id, code: 'E_UNSUPPORTED', message: `more than ${MAX_SUBSCRIPTIONS} subscriptions on one connection` },
        'unsupported',
      );
      return;
    }
    const denied = this.deps.gate.checkSubscribe(conn.identity, 'ws', filter);
    if (denied) {
      this.refuse(conn, { id, code: 'E_ACL', message: denied.message }, null);
      return;
    }
    // Subscribing again to the same filter replaces it and hands its retained messages over again, as in MQTT.
    const sub: Subscription = { id };
    conn.subscribe(filter, sub);
    this.send(conn, ackFrame(id), false);
    this.replayRetained(conn, filter, sub);
  }

  /**
   * The retained messages a new subscription receives, with `"retain":true`, paced by the send
   * buffer: past http.sendBufferBytes the next one waits until the one before it was written, so
   * a `#` over a large retained store is never copied into the heap at once.
   */
  private replayRetained(conn: WsConnection, filter: string, sub: Subscription): void {
    const pending = this.deps.retained.matching(filter);
    const next = (): void => {
      for (;;) {
        if (!conn.open || conn.subscriptions.get(filter) !== sub) return;
        const r = pending.next();
        if (r.done) return;
        if (!this.deps.gate.mayReceive(conn.identity, r.value.topic)) continue;
        const over = conn.buffered > this.cfg.http.sendBufferBytes;
        const sent = this.send(conn, msgFrame(r.value, true), false, over ? () => next() : undefined);
        if (!sent || over) return;
      }
    };
    next();
  }

  /** Local delivery's sink: the message to every connection subscribed to its topic, once each. */
  deliver(msg: EdgeMessage): void {
    if (this.subscribers.size === 0) return;
    let frame: Buffer | null = null;
    for (const conn of this.subscribers.match(msg.topic)) {
      // Access is asked at every delivery: the registry may have narrowed since the subscription.
      if (!conn.open || !this.deps.gate.mayReceive(conn.identity, msg.topic)) continue;
      frame ??= msgFrame(msg, false);
      if (!this.send(conn, frame, msg.qos === 0)) this.deps.events.deliveryDropped('ws', 'slow_consumer');
    }
  }

  /**
   * Queue a frame for a connection. Past http.sendBufferBytes a `droppable` one (a QoS 0
   * delivery) is left out; past the hard limit anything closes the connection with 1013, so
   * nothing queues without bound. False when it was not sent.
   */
  private send(conn: WsConnection, data: string | Buffer, droppable: boolean, written?: (err?: Error) => void): boolean {
    if (!conn.open) return false;
    const limit = this.cfg.http.sendBufferBytes;
    const buffered = conn.buffered;
    if (buffered <= limit) conn.overSince = null;
    else {
      conn.overSince ??= Date.now();
      if (droppable) return false;
      if (buffered > this.hardBufferBytes) {
        this.closeSlow(conn, `its send buffer passed ${this.hardBufferBytes} bytes`);
        return false;
      }
    }
    conn.send(data, written);
    if (conn.overSince === null && conn.buffered > limit) conn.overSince = Date.now();
    return true;
  }

  /** Lagging subscribers: one over its limit for SLOW_CLOSE_MS is closed with 1013. */
  private sweep(): void {
    const now = Date.now();
    for (const conn of this.connections) {
      if (conn.overSince === null || !conn.open) continue;
      if (conn.buffered <= this.cfg.http.sendBufferBytes) conn.overSince = null;
      else if (now - conn.overSince >= SLOW_CLOSE_MS)
        this.closeSlow(
          conn,
          `its send buffer stayed over http.sendBufferBytes (${this.cfg.http.sendBufferBytes}) for ${SLOW_CLOSE_MS / 1000} s`,
        );
    }
  }

  private closeSlow(conn: WsConnection, why: string): void {
    this.deps.events.slowConsumerClosed('ws');
    this.close(conn, CLOSE.tryAgainLater, 'slow consumer', `closed ws device ${conn.identity.deviceId} (1013): ${why}`);
    // Its backlog waits behind the close frame; destroyed with an error, the queued writes go at once.
    const socket = this.sockets.get(conn);
    if (!socket) return;
    const cut = setTimeout(() => socket.destroy(new Error('a slow consumer did not finish the close handshake')), SLOW_CUT_MS);
    cut.unref();
    conn.ws.once('close', () => clearTimeout(cut));
  }

  // ---- registry changes

  /**
   * A removed or re-keyed device is closed with 4401. One whose filters changed loses each
   * subscription now outside them, with an E_ACL error frame, and is closed with 4403 only when
   * nothing it held is allowed any more.
   */
  private registryChanged(change: RegistryChange): void {
    const gone = new Set(change.removed);
    const rotated = new Set(change.rotated);
    const narrowed = new Set(change.filtersChanged);
    for (const conn of this.connections) {
      if (!conn.open) continue;
      const { deviceId, by } = conn.identity;
      if (gone.has(deviceId)) this.closeAuth(conn, 'the device was removed from the registry');
      else if (rotated.has(deviceId) && by === 'token') this.closeAuth(conn, "the device's token was replaced");
      else if (narrowed.has(deviceId)) this.recheckSubscriptions(conn);
    }
  }

  private closeAuth(conn: WsConnection, why: string): void {
    this.send(conn, errorFrame({ code: 'E_AUTH', message: why }), false);
    this.close(conn, CLOSE.auth, why, `closed ws device ${conn.identity.deviceId} (4401): ${why}`);
  }

  private recheckSubscriptions(conn: WsConnection): void {
    let dropped = 0;
    for (const [filter, sub] of conn.subscriptions) {
      if (this.deps.gate.stillMaySubscribe(conn.identity, filter)) continue;
      conn.unsubscribe(filter);
      dropped++;
      this.send(
        conn,
        errorFrame({
          id: sub.id,
          code: 'E_ACL',
          message: `the subscription to "${filter.slice(0, 300)}" is outside the device's subscribe filters now; it was dropped`,
          topic: filter,
        }),
        false,
      );
    }
    if (dropped > 0 && conn.subscriptions.size === 0)
      this.close(
        conn,
        CLOSE.access,
        'no subscription it held is allowed any more',
        `closed ws device ${conn.identity.deviceId} (4403): none of its subscriptions is inside its new subscribe filters`,
      );
  }

  /** The proxy closes a connection: nothing more is read or sent on it. */
  private close(conn: WsConnection, code: number, reason: string, logLine: string): void {
    if (conn.closing) return;
    conn.closing = true;
    this.log.info({ deviceId: conn.identity.deviceId, remote: conn.remote, code }, logLine);
    // A paused connection would never read the peer's close frame.
    this.resumeReads(conn);
    // The close frame follows the backlog (a slow reader that wakes up reads both).
    conn.outbox?.pump(true);
    conn.ws.close(code, closeReason(reason));
  }

  connectedCount(): number {
    return this.connections.size;
  }

  /**
   * Stop reading, let `settle` commit what is in hand so that its acks go out, then close every
   * connection with 1001; one that does not answer the close within a second is cut.
   */
  async stop(settle: () => Promise<void>): Promise<void> {
    this.stopping = true;
    this.deps.auth.off('change', this.onRegistryChange);
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = null;
    for (const conn of this.connections) this.pauseReads(conn);
    await settle();
    await new Promise<void>((resolve) => setImmediate(resolve)); // the acks of the last commit are queued
    const conns = [...this.connections];
    const closed = Promise.all(
      conns.map((c) => new Promise<void>((resolve) => (c.ws.readyState === c.ws.CLOSED ? resolve() : c.ws.once('close', () => resolve())))),
    );
    for (const conn of conns)
      this.close(conn, CLOSE.goingAway, 'the proxy is stopping', `closing ws device ${conn.identity.deviceId}: the proxy is stopping`);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([closed, new Promise<void>((resolve) => (timer = setTimeout(resolve, 1_000)))]);
    clearTimeout(timer);
    for (const conn of conns) if (conn.ws.readyState !== conn.ws.CLOSED) conn.ws.terminate();
  }
}

/** The error frame code of an error from the gate or the pipeline. */
function wireCode(err: Error): WsErrorCode {
  if (!(err instanceof EdgeError)) return 'E_CACHE_FULL'; // not the device's fault: it may send it again
  switch (err.code) {
    case 'E_ACL':
    case 'E_MALFORMED':
    case 'E_TOO_LARGE':
    case 'E_AUTH':
    case 'E_CACHE_FULL':
      return err.code;
    default:
      // The pipeline cannot take it now (a cache write failing, the proxy stopping): the device sends it again later.
      return err.retryable ? 'E_CACHE_FULL' : 'E_MALFORMED';
  }
}

function framingReason(code: WsErrorCode): FramingReason | null {
  return code === 'E_MALFORMED' ? 'malformed' : code === 'E_TOO_LARGE' ? 'too_large' : code === 'E_UNSUPPORTED' ? 'unsupported' : null;
}

/** ws reads binary frames as Buffer (binaryType nodebuffer); the other shapes only for safety. */
function toBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

/** A close reason is at most 123 bytes (RFC 6455 §5.5.1). */
function closeReason(text: string): string {
  let out = text;
  while (Buffer.byteLength(out) > 123) out = out.slice(0, -1);
  return out;
}
