/**
 * A simulated CoAP device (RFC 7252 over UDP, docs/coap.md): publishes are `POST /ps/<topic>`,
 * confirmable for QoS 1 and non-confirmable for QoS 0, with `?d=<id>&k=<token>` on every request;
 * the command topic is observed (RFC 7641, `GET` with Observe 0); a payload over 1024 bytes goes
 * block-wise (RFC 7959, Block1).
 *
 * Confirmable requests and observations go through node-coap's agent, which retransmits a
 * confirmable request as RFC 7252 §4.2 says (ACK_TIMEOUT 2 s randomised by 1.5, doubled, 4 times),
 * acknowledges separate responses and notifications, segments an upload that carries a Block1
 * option and orders notifications (RFC 7641 §3.4). Each has an agent and a socket of its own: the
 * agent looks a datagram up by its message id before its token, whatever its type, so a notification
 * whose message id happens to equal that of a publish in flight would be acknowledged and dropped.
 * Non-confirmable publishes go out on a third socket over coap-packet: the agent keeps a
 * non-confirmable request in its table of message ids until the id is used again, 65,536 requests
 * later, which would hold tens of megabytes per device in a long QoS 0 run.
 */
import { createSocket, type Socket } from 'node:dgram';
import { lookup } from 'node:dns/promises';
import { randomBytes } from 'node:crypto';
import { isIP } from 'node:net';
import { generate, parse, type Option } from 'coap-packet';
import type { Agent, IncomingMessage, ObserveReadStream, OutgoingMessage } from 'coap';
import { DeviceLink, LinkError } from './links.js';

/**
 * MAX_TRANSMIT_WAIT (RFC 7252 §4.8.2): ACK_TIMEOUT × (2^(MAX_RETRANSMIT + 1) − 1) × ACK_RANDOM_FACTOR
 * = 2 s × 31 × 1.5. A publish unanswered this long is taken as lost and sent again as a new request.
 */
export const MAX_TRANSMIT_WAIT_MS = 2_000 * 31 * 1.5;
/** Payloads over this go block-wise, in blocks of this size (SZX 6, RFC 7959 §2.2). */
export const BLOCK_SIZE = 1024;
const BLOCK_SZX = 6;
/** Max-Age when a response carries none (RFC 7252 §5.10.5). */
const DEFAULT_MAX_AGE_S = 60;
/** Longest wait before a publish refused 5.03 is sent again, whatever its Max-Age says. */
const MAX_RETRY_AFTER_S = 300;
/** How long a clean end waits for the answer to an observation's deregistration. */
const DEREGISTER_WAIT_MS = 2_000;

/** Between attempts to resolve the proxy's name and bind. */
const OPEN_RETRY_MS = 1_000;

/** Content-Formats (RFC 7252 §12.3). */
const FORMAT_TEXT = 0;
const FORMAT_JSON = 50;

type CoapModule = typeof import('coap');

class MissingPackageError extends Error {
  override name = 'MissingPackageError';
}

export interface CoapLinkOptions {
  /** `d=` of every request: the device id */
  deviceId: string;
  /** `k=` of every request, for a proxy in token mode */
  token?: string;
}

interface PendingPublish {
  path: Buffer[];
  body: Buffer;
  format: number;
  qos: 0 | 1;
  done: (err?: Error) => void;
  req?: OutgoingMessage;
  /** no answer by then: lost */
  guard?: NodeJS.Timeout;
  /** refused 5.03: sent again by this timer */
  retry?: NodeJS.Timeout;
}

interface Observation {
  filter: string;
  path: Buffer[];
  /**
   * One token for the observation's life: a registration with the same endpoint and token replaces
   * the proxy's entry (RFC 7641 §4.1), where a new token would add one.
   */
  token: Buffer;
  /** the subscriber's callback, until the first answer */
  done?: (err?: Error) => void;
  /** a registration waiting for its answer, and when it is given up */
  req?: OutgoingMessage;
  guard?: NodeJS.Timeout;
  stream?: ObserveReadStream;
  /** re-registration once Max-Age passes without a notification */
  refresh?: NodeJS.Timeout;
  /** the proxy answered without an Observe option: said once */
  warnedUnsupported?: boolean;
}

/** The UDP endpoint of the proxy, resolved once. */
interface Target {
  address: string;
  port: number;
  type: 'udp4' | 'udp6';
}

export class CoapLink extends DeviceLink {
  private target: Target | undefined;
  /** confirmable publishes */
  private agent: Agent | undefined;
  /** observations */
  private observer: Agent | undefined;
  /** non-confirmable publishes, opened at the first */
  private nonSocket: Socket | undefined;
  private readonly sockets: Socket[] = [];
  private readonly query: Buffer[];
  private readonly pending = new Set<PendingPublish>();
  private readonly observations = new Map<string, Observation>();
  private up = false;
  private ready = false;
  private ended = false;
  private nextMid = Math.floor(Math.random() * 0x10000);

  constructor(
    readonly url: string,
    private readonly options: CoapLinkOptions,
  ) {
    super();
    // Query items go as Uri-Query options as they are: the proxy reads them without percent-decoding.
    this.query = [Buffer.from(`d=${options.deviceId}`), ...(options.token === undefined ? [] : [Buffer.from(`k=${options.token}`)])];
    this.open();
  }

  /**
   * UDP has no connection: the link is up from the moment its sockets are bound, down when a
   * confirmable request goes unanswered for MAX_TRANSMIT_WAIT, up again at the next answer.
   */
  get connected(): boolean {
    return this.up;
  }

  publish(topic: string, payload: string, qos: 0 | 1, done: (err?: Error) => void): void {
    const body = Buffer.from(payload, 'utf8');
    const p: PendingPublish = { path: uriPath(`ps/${topic}`), body, format: formatOf(payload), qos, done };
    this.pending.add(p);
    if (this.ready) this.send(p);
  }

  subscribe(filter: string, done: (err?: Error) => void): void {
    const o: Observation = { filter, path: uriPath(`ps/${filter}`), token: randomBytes(8), done };
    this.observations.set(filter, o);
    if (this.ready) this.register(o);
  }

  async end(force: boolean): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    const deregistered: Array<Promise<void>> = [];
    for (const o of this.observations.values()) {
      clearTimeout(o.refresh);
      if (o.stream) deregistered.push(this.deregister(o, force));
      else this.dropRegistration(o);
    }
    await Promise.all(deregistered);
    const all = [...this.pending];
    this.pending.clear();
    for (const p of all) {
      clearTimeout(p.guard);
      clearTimeout(p.retry);
      if (p.req) this.agent?.abort(p.req);
      p.done(new Error('connection closed'));
    }
    this.up = false;
    await Promise.all(this.sockets.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    this.sockets.length = 0;
  }

  /** Resolve the proxy's address and bind the sockets; on failure (a name that does not resolve) try again a second later. */
  private open(): void {
    this.tryOpen().catch((err: unknown) => {
      if (this.ended) return;
      this.emit('error', err instanceof Error ? err : new Error(String(err)));
      for (const s of this.sockets.splice(0)) s.close();
      if (!(err instanceof MissingPackageError)) setTimeout(() => this.open(), OPEN_RETRY_MS);
    });
  }

  private async tryOpen(): Promise<void> {
    let coap: CoapModule;
    try {
      // Loaded here, so that fleets without CoAP devices run without the package.
      coap = await import('coap');
    } catch (err) {
      throw new MissingPackageError(`CoAP devices need the coap package (npm install): ${(err as Error).message}`, { cause: err });
    }
    const url = new URL(this.url);
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    const family = isIP(host);
    const address = family !== 0 ? { address: host, family } : await lookup(host);
    this.target = { address: address.address, port: Number(url.port || 5683), type: address.family === 6 ? 'udp6' : 'udp4' };
    const agentSocket = await this.bind();
    const observerSocket = await this.bind();
    if (this.ended) {
      // end() came while the sockets were bound: they are this call's to close.
      for (const s of this.sockets.splice(0)) s.close();
      return;
    }
    this.agent = new coap.Agent({ socket: agentSocket });
    this.observer = new coap.Agent({ socket: observerSocket });
    this.agent.on('error', (err: Error) => this.emit('error', err));
    this.observer.on('error', (err: Error) => this.emit('error', err));
    this.ready = true;
    this.up = true;
    this.emit('connect');
    for (const o of this.observations.values()) this.register(o);
    for (const p of this.pending) this.send(p);
  }

  private async bind(): Promise<Socket> {
    const socket = createSocket(this.target!.type);
    this.sockets.push(socket);
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(0, () => {
        socket.off('error', reject);
        resolve();
      });
    });
    socket.on('error', (err) => {
      if (!this.ended) this.emit('error', err);
    });
    return socket;
  }

  // ---- publishes

  private send(p: PendingPublish): void {
    if (this.ended) return;
    // A block-wise upload needs the proxy's 2.31 answers, so it is confirmable whatever the QoS.
    if (p.qos === 0 && p.body.length <= BLOCK_SIZE) this.sendNon(p);
    else this.sendCon(p);
  }

  private sendCon(p: PendingPublish): void {
    const t = this.target!;
    const req = this.agent!.request({
      hostname: t.address,
      port: t.port,
      method: 'POST',
      confirmable: true,
      options: { 'Uri-Path': p.path, 'Uri-Query': this.query, 'Content-Format': p.format },
    });
    if (p.body.length > BLOCK_SIZE) {
      // node-coap's agent segments an upload whose request carries Block1 (num 0, SZX): RFC 7959 §2.5.
      req.setOption('Block1', Buffer.from([BLOCK_SZX]));
      // Size1 tells the proxy the whole size at once, so that one too large is refused at the first block.
      req.setOption('Size1', p.body.length);
    }
    p.req = req;
    const lost = (why: string): void => {
      if (p.req !== req) return;
      p.req = undefined;
      clearTimeout(p.guard);
      this.agent?.abort(req);
      this.lost(p, why);
    };
    req.on('response', (res: IncomingMessage) => {
      if (p.req !== req) return;
      p.req = undefined;
      clearTimeout(p.guard);
      this.answered(p, res);
    });
    req.on('timeout', () => lost('no answer'));
    req.on('error', (err: Error) => lost(err.message));
    // Also when an empty ACK came and the separate response never does (the agent then waits forever).
    p.guard = setTimeout(() => lost(`no answer in ${MAX_TRANSMIT_WAIT_MS / 1000} s`), MAX_TRANSMIT_WAIT_MS).unref();
    req.end(p.body);
  }

  private answered(p: PendingPublish, res: IncomingMessage): void {
    this.markUp();
    const code = res.code;
    if (code.startsWith('2.')) {
      this.pending.delete(p);
      p.done();
      return;
    }
    const text = `${code} ${res.payload.toString('utf8')}`.trim();
    if (code === '5.03') {
      // The proxy's "send it again later" (the cache full, the proxy stopping): after Max-Age.
      const after = Math.min(maxAgeOf(res), MAX_RETRY_AFTER_S);
      p.retry = setTimeout(() => {
        p.retry = undefined;
        if (this.pending.has(p)) this.send(p);
      }, after * 1000);
      return;
    }
    this.pending.delete(p);
    const err = new LinkError(`publish refused: ${text}`, `COAP_${code}`);
    // Said, not only counted, as a refused CONNECT or a closed connection is over MQTT (the fleet says each once).
    this.emit('error', err);
    p.done(err);
  }

  /** No answer: the proxy is taken as gone, and the publish goes again as a new request (as MQTT.js resends after a reconnect). */
  private lost(p: PendingPublish, why: string): void {
    if (!this.pending.has(p) || this.ended) return;
    if (this.up) {
      this.up = false;
      this.emit('error', new LinkError(`the proxy does not answer: ${why}`, 'COAP_TIMEOUT'));
      this.emit('close');
    }
    this.send(p);
  }

  private markUp(): void {
    if (this.up || this.ended) return;
    this.up = true;
    this.emit('reconnect');
    this.emit('connect');
    // The proxy may have restarted and forgotten its observers: register again.
    for (const o of this.observations.values()) this.reregister(o);
  }

  private sendNon(p: PendingPublish): void {
    const socket = this.nonSocket ?? this.openNonSocket();
    const t = this.target!;
    const options: Option[] = [
      ...p.path.map((value) => ({ name: 'Uri-Path' as const, value })),
      { name: 'Content-Format', value: uintBytes(p.format) },
      ...this.query.map((value) => ({ name: 'Uri-Query' as const, value })),
    ];
    this.nextMid = (this.nextMid + 1) & 0xffff;
    const datagram = generate({
      code: '0.02',
      messageId: this.nextMid,
      token: randomBytes(4),
      confirmable: false,
      options,
      payload: p.body,
    });
    socket.send(datagram, t.port, t.address, (err) => {
      if (!this.pending.delete(p)) return;
      // Settled once written, as MQTT.js settles a QoS 0 publish.
      p.done(err ?? undefined);
    });
  }

  private openNonSocket(): Socket {
    const socket = createSocket(this.target!.type);
    this.sockets.push(socket);
    this.nonSocket = socket;
    socket.on('error', (err) => {
      if (!this.ended) this.emit('error', err);
    });
    // The proxy answers a non-confirmable publish with a non-confirmable response: only a refusal is
    // worth reading, and said, since a QoS 0 publish is not sent again.
    socket.on('message', (buf) => {
      let packet;
      try {
        packet = parse(buf);
      } catch {
        return;
      }
      if (packet.code.startsWith('4.') || packet.code.startsWith('5.')) {
        this.emit('error', new LinkError(`publish refused: ${packet.code} ${packet.payload.toString('utf8')}`, `COAP_${packet.code}`));
      }
    });
    return socket;
  }

  // ---- observations

  private register(o: Observation): void {
    if (this.ended) return;
    this.dropRegistration(o);
    const t = this.target!;
    const req = this.observer!.request({
      hostname: t.address,
      port: t.port,
      method: 'GET',
      confirmable: true,
      observe: 0,
      token: o.token,
      options: { 'Uri-Path': o.path, 'Uri-Query': this.query },
    });
    o.req = req;
    const retry = (why: string): void => {
      if (o.req !== req) return;
      this.dropRegistration(o);
      this.settle(o, new LinkError(`observing ${o.filter}: ${why}`, 'COAP_TIMEOUT'));
      this.scheduleRefresh(o, DEFAULT_MAX_AGE_S);
    };
    o.guard = setTimeout(() => retry(`no answer in ${MAX_TRANSMIT_WAIT_MS / 1000} s`), MAX_TRANSMIT_WAIT_MS).unref();
    req.on('response', (res: ObserveReadStream | IncomingMessage) => {
      if (o.req !== req) return;
      o.req = undefined;
      clearTimeout(o.guard);
      this.markUp();
      this.onRegistration(o, res);
    });
    req.on('timeout', () => retry('no answer'));
    req.on('error', (err: Error) => retry(err.message));
    req.end();
  }

  private onRegistration(o: Observation, res: ObserveReadStream | IncomingMessage): void {
    const stream = isObserveStream(res) ? res : undefined;
    if (res.code !== '2.05') {
      this.settle(
        o,
        new LinkError(`observing ${o.filter} refused: ${res.code} ${res.payload.toString('utf8')}`.trim(), `COAP_${res.code}`),
      );
      return;
    }
    if (res.headers.Observe === undefined || !stream) {
      // RFC 7641 §3.1: an answer without Observe means the proxy did not register the observer.
      const err = o.warnedUnsupported
        ? undefined
        : new LinkError(
            `the proxy answered the observation of ${o.filter} without Observe: it does not send notifications, so commands do not reach this device (asked again every ${DEFAULT_MAX_AGE_S} s)`,
            'COAP_NO_OBSERVE',
          );
      o.warnedUnsupported = true;
      this.settle(o, err);
      this.scheduleRefresh(o, DEFAULT_MAX_AGE_S);
      return;
    }
    o.stream = stream;
    this.settle(o, undefined);
    stream.on('data', (payload: Buffer) => {
      if (o.stream !== stream) return;
      this.scheduleRefresh(o, maxAgeOf(stream));
      this.notification(o, payload);
    });
    stream.on('error', () => {});
    this.scheduleRefresh(o, maxAgeOf(stream));
  }

  /** A registration still waiting for its answer is given up. */
  private dropRegistration(o: Observation): void {
    clearTimeout(o.guard);
    if (o.req) this.observer?.abort(o.req);
    o.req = undefined;
  }

  /** The subscriber's callback once; later problems go to the `error` event. */
  private settle(o: Observation, err: Error | undefined): void {
    const done = o.done;
    o.done = undefined;
    if (done) done(err);
    else if (err) this.emit('error', err);
  }

  /**
   * RFC 7641 §3.3.1: a notification is fresh for its Max-Age; when that passes without a new one,
   * the client registers again. This also finds a proxy that restarted and forgot its observers.
   */
  private scheduleRefresh(o: Observation, maxAgeS: number): void {
    clearTimeout(o.refresh);
    if (this.ended) return;
    // A little past Max-Age, spread so that a fleet does not re-register in one burst.
    const ms = (maxAgeS + 2 + Math.random() * 3) * 1000;
    // Unreferenced: a refresh alone does not keep a finished program running.
    o.refresh = setTimeout(() => this.reregister(o), ms).unref();
  }

  /**
   * The stream of the previous registration is let go, not closed: node-coap forgets the token of a
   * stream that closes, and says so twice (at close() and again when the stream is destroyed, a tick
   * later), which would forget it under the new registration too; its notifications would then be
   * answered with a reset, which ends the observation at the proxy (RFC 7641 §3.6). The new
   * registration takes the token over in the agent, and the old stream is garbage.
   */
  private reregister(o: Observation): void {
    clearTimeout(o.refresh);
    o.stream = undefined;
    this.register(o);
  }

  private notification(o: Observation, payload: Buffer): void {
    if (payload.length === 0) return;
    if (!/[+#]/.test(o.filter)) {
      this.emit('message', o.filter, payload.toString('utf8'));
      return;
    }
    // On a filter with wildcards each notification is {"topic", "payload", "ts"}, the payload as in a /ws msg frame.
    let n: unknown;
    try {
      n = JSON.parse(payload.toString('utf8'));
    } catch {
      this.emit('error', new Error(`a notification on ${o.filter} that is not JSON: ${payload.toString('utf8').slice(0, 100)}`));
      return;
    }
    if (typeof n !== 'object' || n === null || typeof (n as { topic?: unknown }).topic !== 'string') return;
    const { topic, payload: body, encoding } = n as { topic: string; payload?: unknown; encoding?: unknown };
    let text: string;
    if (encoding === 'base64' && typeof body === 'string') text = Buffer.from(body, 'base64').toString('utf8');
    else if (typeof body === 'string') text = body;
    else text = JSON.stringify(body) ?? '';
    this.emit('message', topic, text);
  }

  /** RFC 7641 §3.6: a GET with Observe 1 and the observation's token ends it. */
  private async deregister(o: Observation, force: boolean): Promise<void> {
    this.dropRegistration(o);
    o.stream = undefined;
    const t = this.target!;
    const req = this.observer!.request({
      hostname: t.address,
      port: t.port,
      method: 'GET',
      confirmable: true,
      observe: 1,
      token: o.token,
      options: { 'Uri-Path': o.path, 'Uri-Query': this.query },
    });
    req.on('error', () => {});
    const answered = new Promise<void>((resolve) => {
      req.on('response', () => resolve());
      setTimeout(resolve, force ? 0 : DEREGISTER_WAIT_MS).unref();
    });
    req.end();
    await answered;
    this.observer?.abort(req);
  }
}

function isObserveStream(res: ObserveReadStream | IncomingMessage): res is ObserveReadStream {
  return typeof (res as ObserveReadStream).close === 'function' && typeof (res as ObserveReadStream).append === 'function';
}

/** `ps/devices/d1/cmd/#` as Uri-Path options, one a level, empty levels kept (they are the topic's). */
function uriPath(path: string): Buffer[] {
  return path.split('/').map((level) => Buffer.from(level, 'utf8'));
}

/** JSON text of an object or array is sent as JSON (Content-Format 50), anything else as text. */
function formatOf(payload: string): number {
  const first = payload.trimStart()[0];
  if (first !== '{' && first !== '[') return FORMAT_TEXT;
  try {
    JSON.parse(payload);
    return FORMAT_JSON;
  } catch {
    return FORMAT_TEXT;
  }
}

function maxAgeOf(res: IncomingMessage): number {
  const v = res.headers['Max-Age'];
  return typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : DEFAULT_MAX_AGE_S;
}

function uintBytes(n: number): Buffer {
  if (n === 0) return Buffer.alloc(0);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v % 256);
  return Buffer.from(bytes);
}
