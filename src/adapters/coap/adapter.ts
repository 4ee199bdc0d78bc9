import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import type { Logger } from 'pino';
import type { Config } from '../../config/types.js';
import { EdgeError } from '../../core/errors.js';
import type { EdgeMessage } from '../../core/message.js';
import type { Credentials, Identity } from '../../auth/service.js';
import type { AdapterDeps, DeviceAdapter, Endpoint } from '../adapter.js';
import {
  LINK_FORMAT,
  contentTypeOf,
  emptyMessage,
  encodeResponse,
  readDatagram,
  requestOf,
  type CoapRequest,
  type Response,
} from './codec.js';
import { Exchanges, type Exchange } from './exchanges.js';
import { MessageIds } from './message-ids.js';
import { Uploads } from './block1.js';
import type { Peer } from './observers.js';
import { Reads } from './reads.js';
import type { RegistryChange } from '../../auth/device-registry.js';

/** The slice of the configuration the CoAP adapter reads. */
export interface CoapAdapterConfig {
  coap: Config['coap'];
  limits: Pick<Config['limits'], 'maxPayloadBytes' | 'maxTopicBytes'>;
}

/**
 * A confirmable request not answered within this long gets an empty ACK, and its response goes
 * later as a separate confirmable message (RFC 7252 §5.2.2). Well under ACK_TIMEOUT (2 s), so the
 * client does not retransmit; long enough that a commit of the usual few ms is piggybacked.
 */
const SEPARATE_AFTER_MS = 500;
/** RFC 7252 §4.8 transmission parameters, for separate responses and notifications. */
const ACK_TIMEOUT_MS = 2_000;
const ACK_RANDOM_FACTOR = 1.5;
const MAX_RETRANSMIT = 4;
/** How often pending exchanges and separate responses are looked at: one timer, not one per request. */
const TICK_MS = 100;
/** Memory for deduplication, across all endpoints. */
const DEDUP_MAX_BYTES = 16 * 1024 * 1024;
/** The same for non-confirmable requests, remembered for NON_LIFETIME (RFC 7252 §4.8.2). */
const NON_DEDUP_MAX_BYTES = 4 * 1024 * 1024;
const NON_LIFETIME_MS = 145_000;
/** What a non-confirmable request's exchange holds as its answer: nothing to send again. */
const SILENCE = Buffer.alloc(0);
/** Publishes in the pipeline at once; past this a confirmable one is answered 5.03. */
const MAX_PENDING = 10_000;
/** Their payloads' bytes at once (a slow disk with uploads of 256 KiB in hand); past this, 5.03 too. */
const MAX_PENDING_BYTES = 32 * 1024 * 1024;
/** Bookkeeping per publish in hand besides its payload: the request, the message, the closures. */
const PENDING_OVERHEAD = 600;
/** Max-Age of a 5.03: when a device may try again. */
const RETRY_AFTER_S = 10;
/** A request whose answer waits for the pipeline. */
interface Pending {
  peer: Peer;
  req: CoapRequest;
  ex: Exchange | null;
  since: number;
  /** an empty ACK went out: the answer is a separate response */
  separate: boolean;
  /** what it counts against MAX_PENDING_BYTES */
  bytes: number;
}

/** A separate (confirmable) response waiting for its ACK. */
interface Outgoing {
  peer: Peer;
  data: Buffer;
  attempts: number;
  timeoutMs: number;
  dueAt: number;
}

const CODE = {
  changed: '2.04',
  content: '2.05',
  continue: '2.31',
  badRequest: '4.00',
  unauthorized: '4.01',
  badOption: '4.02',
  forbidden: '4.03',
  notFound: '4.04',
  methodNotAllowed: '4.05',
  incomplete: '4.08',
  tooLarge: '4.13',
  unsupportedFormat: '4.15',
  internal: '5.00',
  unavailable: '5.03',
} as const;

/**
 * CoAP over UDP (../shared/spec/protocols.md, docs/coap.md) on its own server loop over
 * coap-packet: node-coap's server makes a stream and a timer per request, acknowledges after 50 ms
 * whatever the commit, and deduplicates only once a response is sent. Here one timer serves every
 * exchange, a confirmable publish is answered 2.04 only once it is committed, and a retransmission
 * is recognized from the moment the original arrives. GETs, observations and their notifications
 * are reads.ts's.
 */
export class CoapAdapter implements DeviceAdapter {
  readonly protocol = 'coap';
  private readonly sockets: Socket[] = [];
  private readonly exchanges: Exchanges;
  private readonly nonExchanges: Exchanges;
  private readonly uploads: Uploads;
  private readonly pending = new Set<Pending>();
  private pendingBytes = 0;
  private readonly outgoing = new Map<string, Outgoing>();
  private readonly messageIds = new MessageIds();
  private ticker: NodeJS.Timeout | null = null;
  private stopping = false;
  /** datagrams handed to a socket and not sent yet; `flushed` runs when none is left */
  private sending = 0;
  private flushed: (() => void) | null = null;
  private readonly reads: Reads;
  private readonly onRegistryChange = (change: RegistryChange): void => this.reads.registryChanged(change);

  constructor(
    private readonly cfg: CoapAdapterConfig,
    private readonly deps: AdapterDeps,
  ) {
    this.exchanges = new Exchanges(DEDUP_MAX_BYTES, { evicted: () => deps.events.coapExchange('evicted') });
    this.nonExchanges = new Exchanges(NON_DEDUP_MAX_BYTES, { evicted: () => deps.events.coapExchange('evicted') }, NON_LIFETIME_MS);
    this.uploads = new Uploads(
      { maxPayloadBytes: cfg.limits.maxPayloadBytes },
      { evicted: () => deps.events.coapBlock1('evicted'), expired: () => deps.events.coapBlock1('expired') },
    );
    this.reads = new Reads(
      { maxTopicBytes: cfg.limits.maxTopicBytes, retryAfterS: RETRY_AFTER_S },
      deps,
      { send: (peer, data) => this.send(peer, data), mid: (peer) => this.mid(peer) },
      { ackTimeoutMs: ACK_TIMEOUT_MS, randomFactor: ACK_RANDOM_FACTOR, maxRetransmit: MAX_RETRANSMIT },
    );
  }

  private get log(): Logger {
    return this.deps.log;
  }

  async start(): Promise<Endpoint[]> {
    const { host, host6, port } = this.cfg.coap;
    const endpoints: Endpoint[] = [];
    const v4 = await this.bind('udp4', host, port);
    endpoints.push({ name: 'coap', host, port: v4 });
    if (host6 !== null) {
      // The same port as IPv4 when the configuration says port 0, so a device needs one number.
      let v6: number;
      try {
        v6 = await this.bind('udp6', host6, v4).catch((err: unknown) => {
          if (port !== 0) throw err;
          return this.bind('udp6', host6, 0);
        });
      } catch (err) {
        // A start that fails leaves nothing bound.
        await this.closeSockets();
        throw err;
      }
      endpoints.push({ name: 'coap6', host: host6, port: v6 });
    }
    this.ticker = setInterval(() => {
      try {
        this.tick();
      } catch (err) {
        // A fault in the sweep must not stop the proxy; the next tick tries again.
        this.log.error({ err: (err as Error).message }, 'coap sweep failed');
      }
    }, TICK_MS);
    this.ticker.unref();
    this.deps.auth.on('change', this.onRegistryChange);
    return endpoints;
  }

  private bind(type: 'udp4' | 'udp6', host: string, port: number): Promise<number> {
    const socket = createSocket(type === 'udp6' ? { type, ipv6Only: true } : { type });
    return new Promise((resolve, reject) => {
      socket.once('error', (err: NodeJS.ErrnoException) => {
        socket.close();
        reject(new EdgeError('E_LISTEN', `coap cannot listen on ${host}:${port} (${type}): ${err.code ?? err.message}`, { cause: err }));
      });
      socket.bind({ address: host, port }, () => {
        socket.removeAllListeners('error');
        socket.on('error', (err) => this.log.warn({ err: err.message }, 'coap socket error'));
        socket.on('message', (buf, rinfo) => this.onDatagram(socket, buf, rinfo));
        this.sockets.push(socket);
        resolve(socket.address().port);
      });
    });
  }

  // ---- the server loop

  private onDatagram(socket: Socket, buf: Buffer, rinfo: RemoteInfo): void {
    const peer: Peer = { socket, address: rinfo.address, port: rinfo.port };
    try {
      this.handle(peer, buf);
    } catch (err) {
      // Nothing a datagram holds may stop the loop for the other devices.
      this.log.error({ remote: `${peer.address}:${peer.port}`, err: (err as Error).message }, 'coap datagram handling failed');
    }
  }

  private handle(peer: Peer, buf: Buffer): void {
    const framing = readDatagram(buf);
    if (!framing.ok) {
      this.deps.events.framingRefused('malformed');
      this.log.debug({ remote: `${peer.address}:${peer.port}`, why: framing.why }, 'coap datagram that cannot be read');
      if (framing.type === 'con' && framing.mid !== null) this.send(peer, emptyMessage('rst', framing.mid));
      return;
    }
    const { packet, type } = framing;
    if (type === 'ack' || type === 'rst') {
      // The end of a separate response's retransmissions (a reset also says the client forgot the request).
      this.outgoing.delete(`${peer.address}|${peer.port}|${packet.messageId}`);
      // Or of a notification's; a reset to a notification deregisters (RFC 7641 §3.6).
      if (type === 'ack') this.reads.acknowledged(peer, packet.messageId);
      else this.reads.reset(peer, packet.messageId);
      return;
    }
    if (packet.code === '0.00') {
      // A CoAP ping (RFC 7252 §4.3): answered with a reset; an empty NON is meaningless.
      if (type === 'con') this.send(peer, emptyMessage('rst', packet.messageId));
      return;
    }
    if (!packet.code.startsWith('0.')) {
      // A response nobody asked for.
      if (type === 'con') this.send(peer, emptyMessage('rst', packet.messageId));
      return;
    }
    const req = requestOf(packet, type);
    let ex: Exchange | null = null;
    if (type === 'con') {
      const key = Exchanges.key(peer.address, peer.port, req.mid);
      const seen = this.exchanges.get(key);
      if (seen) {
        this.deps.events.coapExchange('duplicate');
        const answer = Exchanges.answerOf(seen);
        if (answer) this.send(peer, answer);
        else seen.waiting++;
        return;
      }
      ex = this.exchanges.begin(key, Date.now());
    } else {
      // RFC 7252 §4.5: a non-confirmable message that comes again (the same id from the same endpoint) is processed once.
      const key = Exchanges.key(peer.address, peer.port, req.mid);
      if (this.nonExchanges.get(key)) {
        this.deps.events.coapExchange('duplicate');
        return;
      }
      this.nonExchanges.answered(this.nonExchanges.begin(key, Date.now()), SILENCE);
    }
    try {
      this.request(peer, req, ex);
    } catch (err) {
      // Answered, so that the exchange does not wait for an answer for ever and its retransmissions get one.
      if (ex && ex.answer === null && req.type === 'con')
        this.ackWith(peer, ex, encodeResponse(diag(CODE.internal, 'the proxy failed on this request'), 'ack', req.mid, req.token));
      throw err;
    }
  }

  private request(peer: Peer, req: CoapRequest, ex: Exchange | null): void {
    const answer = (res: Response): void => this.respond({ peer, req, ex, since: 0, separate: false, bytes: 0 }, res);
    if (req.badOption !== null) {
      // RFC 7252 §5.4.1: a critical option not understood; a non-confirmable one is ignored in silence.
      if (req.type === 'con') answer(diag(CODE.badOption, `option ${req.badOption} is not supported`));
      return;
    }
    const [first, ...rest] = req.path;
    if (first === '.well-known' && rest.length === 1 && rest[0] === 'core') {
      if (req.code !== '0.01') return answer(diag(CODE.methodNotAllowed, 'only GET on /.well-known/core'));
      return answer({ code: CODE.content, contentFormat: LINK_FORMAT, payload: Buffer.from('</ps>;rt="core.ps";ct="0 42 50 60"') });
    }
    if (first !== 'ps' || rest.length === 0)
      return answer(diag(CODE.notFound, 'not found: publish and read under /ps/<topic>, see /.well-known/core'));
    const topic = rest.join('/');
    const identity = this.identify(peer, req);
    if (!identity.ok) return answer(diag(CODE.unauthorized, identity.detail));
    switch (req.code) {
      case '0.02':
      case '0.03':
        return this.publish(peer, req, ex, identity.identity, topic);
      case '0.01':
        return answer(this.reads.get(peer, req, identity.identity, topic));
      default:
        return answer(diag(CODE.methodNotAllowed, 'use POST or PUT to publish, GET to read the retained message or observe'));
    }
  }

  /** `?d=<id>&k=<token>` on every request; in open mode `d`, else coap-<ip>-<port>. */
  private identify(peer: Peer, req: CoapRequest): { ok: true; identity: Identity } | { ok: false; detail: string } {
    const d = req.query.get('d');
    const k = req.query.get('k');
    const credentials: Credentials = {
      claimedId: d === undefined || d === '' ? null : d,
      token: k === undefined || k === '' ? null : k,
      certificateId: null,
      fallbackId: `coap-${peer.address}-${peer.port}`,
    };
    const result = this.deps.gate.authenticate('coap', credentials, `${peer.address}:${peer.port}`);
    if (result.ok) return result;
    const how = 'send ?d=<deviceId>&k=<token> on every request';
    return { ok: false, detail: credentials.token === null ? `a device token is required: ${how}` : `${result.detail}; ${how}` };
  }

  // ---- publish

  private publish(peer: Peer, req: CoapRequest, ex: Exchange | null, identity: Identity, topic: string): void {
    const answer = (res: Response): void => this.respond({ peer, req, ex, since: 0, separate: false, bytes: 0 }, res);
    const max = this.cfg.limits.maxPayloadBytes;
    if (req.badBlock1 !== null) return answer(diag(CODE.badRequest, `Block1: ${req.badBlock1}`));
    if (req.block1) {
      // One block of an upload (block1.ts); each block was identified on its own in request().
      const block1 = req.block1;
      if (block1.num === 0 && block1.more) {
        // What the last block would be refused for whatever it holds is said before the upload is kept.
        const early = this.refusedUpload(identity, topic, req);
        if (early) return answer(early);
      }
      const step = this.uploads.block(
        {
          endpoint: `${peer.address}|${peer.port}`,
          key: uploadKey(peer, req),
          block: block1,
          payload: req.payload,
          size1: req.size1,
          contentFormat: req.contentFormat,
        },
        Date.now(),
      );
      switch (step.kind) {
        case 'continue':
          // RFC 7959 §2.3: 2.31 with the block's Block1, and the next block may come.
          return answer({ code: CODE.continue, block1 });
        case 'incomplete':
          this.deps.events.coapBlock1('incomplete');
          return answer(diag(CODE.incomplete, step.detail));
        case 'too_large':
          this.deps.events.coapBlock1('too_large');
          this.deps.events.framingRefused('too_large');
          return answer(tooLarge(step.size, max));
        case 'bad':
          return answer(diag(CODE.badRequest, step.detail));
        case 'complete':
          // The whole upload goes on below as one publish; respond() puts this Block1 on its answer.
          this.deps.events.coapBlock1('completed');
          req.payload = step.payload;
          req.contentFormat = step.contentFormat;
      }
    }
    let contentType;
    if (req.contentFormat !== null) {
      contentType = contentTypeOf(req.contentFormat);
      if (contentType === undefined)
        return answer(diag(CODE.unsupportedFormat, `Content-Format ${req.contentFormat}: use 0 text, 42 octet-stream, 50 json or 60 cbor`));
    }
    const qos = req.type === 'con' ? 1 : 0;
    const bytes = PENDING_OVERHEAD + req.payload.length;
    if (this.stopping || this.pending.size >= MAX_PENDING || this.pendingBytes + bytes > MAX_PENDING_BYTES) {
      if (qos === 0) this.deps.events.notAccepted('coap', 0);
      return answer({
        ...diag(CODE.unavailable, this.stopping ? 'the proxy is stopping' : 'too many publishes in hand'),
        maxAge: RETRY_AFTER_S,
      });
    }
    const verdict = this.deps.gate.checkPublish(identity, 'coap', {
      topic,
      payload: ownBytes(req.payload),
      qos,
      retain: req.query.get('r') === '1',
      ...(contentType ? { contentType } : {}),
    });
    if (verdict.kind === 'drop') return answer({ code: CODE.changed });
    if (verdict.kind === 'refuse') return answer(this.refusal(verdict.error));
    const p: Pending = { peer, req, ex, since: Date.now(), separate: false, bytes };
    this.pending.add(p);
    this.pendingBytes += bytes;
    req.payload = SILENCE; // the message holds it now; the request waits only for its answer
    // The 2.04 goes out once the router says the message is safe (committed where it goes up).
    this.deps.gate.accept(verdict.msg, (err) => {
      this.pending.delete(p);
      this.pendingBytes -= p.bytes;
      if (err) this.deps.events.notAccepted('coap', qos);
      this.respond(p, err ? this.refusal(err) : { code: CODE.changed });
    });
  }

  /** An upload's first block: its Content-Format and its topic (syntax, access) checked as its publish will be. */
  private refusedUpload(identity: Identity, topic: string, req: CoapRequest): Response | null {
    if (req.contentFormat !== null && contentTypeOf(req.contentFormat) === undefined)
      return diag(CODE.unsupportedFormat, `Content-Format ${req.contentFormat}: use 0 text, 42 octet-stream, 50 json or 60 cbor`);
    const verdict = this.deps.gate.checkPublish(identity, 'coap', { topic, payload: SILENCE, qos: 0, retain: false });
    return verdict.kind === 'refuse' ? this.refusal(verdict.error) : null;
  }

  private refusal(err: Error): Response {
    const max = this.cfg.limits.maxPayloadBytes;
    if (!(err instanceof EdgeError)) return { ...diag(CODE.unavailable, 'not accepted now, send it again later'), maxAge: RETRY_AFTER_S };
    switch (err.code) {
      case 'E_ACL':
        return diag(CODE.forbidden, err.message);
      case 'E_AUTH':
        return diag(CODE.unauthorized, err.message);
      case 'E_TOO_LARGE':
        return tooLarge(null, max);
      case 'E_MALFORMED':
        return diag(CODE.badRequest, err.message);
      default:
        return err.retryable
          ? { ...diag(CODE.unavailable, `not accepted, send it again later: ${err.message}`), maxAge: RETRY_AFTER_S }
          : diag(CODE.badRequest, err.message);
    }
  }

  // ---- answers

  /**
   * The answer to a request. Confirmable: piggybacked on the ACK, or, once an empty ACK went out,
   * a separate confirmable response. Non-confirmable: a non-confirmable response.
   */
  private respond(p: Pending, res: Response): void {
    const { peer, req, ex } = p;
    // RFC 7959 §2.3: the answer to an upload's last block carries that block's Block1.
    if (req.block1 && res.block1 === undefined && res.code.startsWith('2.')) res = { ...res, block1: req.block1 };
    if (req.type === 'non') {
      this.send(peer, encodeResponse(res, 'non', this.mid(peer), req.token));
      return;
    }
    if (p.separate) {
      const data = encodeResponse(res, 'con', this.mid(peer), req.token);
      const mid = data.readUInt16BE(2);
      const timeoutMs = ACK_TIMEOUT_MS * (1 + Math.random() * 0.5);
      this.outgoing.set(`${peer.address}|${peer.port}|${mid}`, { peer, data, attempts: 0, timeoutMs, dueAt: Date.now() + timeoutMs });
      this.send(peer, data);
      return;
    }
    this.ackWith(peer, ex, encodeResponse(res, 'ack', req.mid, req.token));
  }

  /** The ACK-layer answer of an exchange, to the original and to every retransmission that waited for it. */
  private ackWith(peer: Peer, ex: Exchange | null, data: Buffer): void {
    const copies = 1 + (ex?.waiting ?? 0);
    if (ex) {
      ex.waiting = 0;
      this.exchanges.answered(ex, data);
    }
    for (let i = 0; i < copies; i++) this.send(peer, data);
  }

  private tick(): void {
    const now = Date.now();
    for (const p of this.pending) {
      if (p.separate || p.req.type !== 'con' || now - p.since < SEPARATE_AFTER_MS) continue;
      p.separate = true;
      this.deps.events.coapExchange('separate_response');
      this.ackWith(p.peer, p.ex, emptyMessage('ack', p.req.mid));
    }
    for (const [key, o] of this.outgoing) {
      if (o.dueAt > now) continue;
      if (o.attempts >= MAX_RETRANSMIT) {
        this.outgoing.delete(key);
        this.deps.events.coapExchange('separate_unacknowledged');
        continue;
      }
      o.attempts++;
      o.timeoutMs *= 2;
      o.dueAt = now + o.timeoutMs;
      this.send(o.peer, o.data);
    }
    this.exchanges.expire(now);
    this.nonExchanges.expire(now);
    this.messageIds.expire(now);
    this.reads.tick(now);
    this.uploads.expire(now);
    const held = this.reads.heldBytes;
    this.deps.events.memoryHeld('coap', 'dedup', this.exchanges.bytes + this.nonExchanges.bytes);
    this.deps.events.memoryHeld('coap', 'uploads', this.uploads.bytes);
    this.deps.events.memoryHeld('coap', 'blocks', held.blocks);
    this.deps.events.memoryHeld('coap', 'observe_queues', held.observeQueues);
  }

  private mid(peer: Peer): number {
    return this.messageIds.next(`${peer.address}|${peer.port}`, Date.now());
  }

  private send(peer: Peer, data: Buffer): void {
    // A commit's answer may come after stop() closed the sockets: nobody is there to send it.
    if (this.sockets.length === 0) return;
    this.sending++;
    peer.socket.send(data, peer.port, peer.address, (err) => {
      if (--this.sending === 0) this.flushed?.();
      if (err) this.log.debug({ remote: `${peer.address}:${peer.port}`, err: err.message }, 'coap send failed');
    });
  }

  /** Local delivery's sink: a notification to each observation that matches (reads.ts). */
  deliver(msg: EdgeMessage): void {
    this.reads.deliver(msg);
  }

  /** UDP has no connections: the endpoints (address and port) observing anything. */
  connectedCount(): number {
    return this.reads.connectedCount();
  }

  /**
   * Stop taking publishes (answered 5.03 from now on), let `settle` commit what is in hand so its
   * 2.04s go out (and the notifications of what it delivers), end every observation with a 5.03,
   * then close the sockets.
   */
  async stop(settle: () => Promise<void>): Promise<void> {
    this.stopping = true;
    this.deps.auth.off('change', this.onRegistryChange);
    await settle();
    await new Promise<void>((resolve) => setImmediate(resolve)); // the answers of the last commit are sent
    this.reads.stop();
    if (this.ticker) clearInterval(this.ticker);
    this.ticker = null;
    // A socket closed with sends still queued drops them: the 5.03s that end observations go first.
    if (this.sending > 0) {
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        this.flushed = resolve;
        timer = setTimeout(resolve, 1_000);
      });
      clearTimeout(timer);
    }
    await this.closeSockets();
  }

  private async closeSockets(): Promise<void> {
    const sockets = this.sockets.splice(0);
    await Promise.all(sockets.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }
}

/**
 * A payload that owns its memory: a slice of a datagram keeps the whole datagram alive in whatever
 * holds the message (the retained store, queues), and a datagram padded with options may be 64 KiB.
 */
function ownBytes(payload: Buffer): Buffer {
  if (payload.buffer.byteLength <= payload.length + 64) return payload;
  const own = Buffer.allocUnsafeSlow(payload.length);
  payload.copy(own);
  return own;
}

function diag(code: string, text: string): Response {
  // A diagnostic payload is short (RFC 7252 §5.5.2): a client shows it, a log keeps it.
  return { code, payload: Buffer.from(text.slice(0, 200)) };
}

/** What makes blocks one upload: the endpoint, the method, the path and the query (with the device's d and k), not the token. */
function uploadKey(peer: Peer, req: CoapRequest): string {
  return JSON.stringify([peer.address, peer.port, req.code, req.path, [...req.query]]);
}

function tooLarge(size: number | null, max: number): Response {
  const what = size === null ? 'the payload' : `a payload of ${size} bytes`;
  return { ...diag(CODE.tooLarge, `${what} is over limits.maxPayloadBytes (${max})`), size1: max };
}
