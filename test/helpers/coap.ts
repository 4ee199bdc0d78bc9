// CoAP for the tests, written from RFC 7252 and not from the proxy's codec: an encoder that can also
// write what no well-behaved client sends (any option number, repeated options), a strict decoder
// that names the format error a datagram has, and a client on one UDP source port that behaves as
// RFC 7252 asks of a client: retransmits a confirmable request with exponential back-off (§4.2,
// §4.8), waits for a separate response after an empty ACK and acknowledges it (§5.2.2), and
// acknowledges or rejects Observe notifications (RFC 7641 §3.6).
import { createSocket, type Socket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import type { ProxyProcess } from './proxy.js';
import { eventually } from './ports.js';

/** RFC 7252 §4.8 transmission parameters. */
export const ACK_TIMEOUT_MS = 2_000;
export const ACK_RANDOM_FACTOR = 1.5;
export const MAX_RETRANSMIT = 4;

export type CoapType = 'con' | 'non' | 'ack' | 'rst';
export const TYPES: readonly CoapType[] = ['con', 'non', 'ack', 'rst'];

/** Option numbers (RFC 7252 §12.2, RFC 7641, RFC 7959, RFC 7967). */
export const OPT = {
  ifMatch: 1,
  uriHost: 3,
  etag: 4,
  ifNoneMatch: 5,
  observe: 6,
  uriPort: 7,
  locationPath: 8,
  uriPath: 11,
  contentFormat: 12,
  maxAge: 14,
  uriQuery: 15,
  accept: 17,
  locationQuery: 20,
  block2: 23,
  block1: 27,
  size2: 28,
  proxyUri: 35,
  proxyScheme: 39,
  size1: 60,
  noResponse: 258,
} as const;

export interface CoapOption {
  number: number;
  value: Buffer;
}

export interface CoapMessage {
  type: CoapType;
  /** '0.02', 'POST', or the code byte */
  code: string | number;
  mid: number;
  token: Buffer;
  options: CoapOption[];
  payload?: Buffer;
}

export function coapPort(proxy: ProxyProcess): number {
  const port = (proxy.ports as Record<string, number>).coap;
  if (!port) throw new Error(`the proxy wrote no coap port: ${JSON.stringify(proxy.ports)}`);
  return port;
}

const METHODS: Readonly<Record<string, number>> = { GET: 1, POST: 2, PUT: 3, DELETE: 4, FETCH: 5, PATCH: 6, iPATCH: 7 };

/** A code as its byte: `0x44`, `'2.04'`, or a method name (`'POST'`). */
export function codeByte(code: string | number): number {
  if (typeof code === 'number') return code;
  if (METHODS[code] !== undefined) return METHODS[code];
  const [c, d] = code.split('.').map(Number);
  return (c! << 5) | d!;
}

export function codeString(byte: number): string {
  return `${byte >> 5}.${String(byte & 0x1f).padStart(2, '0')}`;
}

export function uintBytes(n: number): Buffer {
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v % 256);
  return Buffer.from(bytes);
}

export function uintOf(value: Buffer): number {
  let n = 0;
  for (const b of value) n = n * 256 + b;
  return n;
}

/** Option nibble and extension bytes (RFC 7252 §3.1). */
function nibble(v: number): { n: number; ext: Buffer } {
  if (v < 13) return { n: v, ext: Buffer.alloc(0) };
  if (v < 269) return { n: 13, ext: Buffer.from([v - 13]) };
  const ext = Buffer.alloc(2);
  ext.writeUInt16BE(v - 269);
  return { n: 14, ext };
}

/** Encodes a message; options in the order of their numbers (a stable sort keeps repeats in order). */
export function encodeCoap(m: CoapMessage): Buffer {
  if (m.token.length > 15) throw new Error('a token over 15 bytes cannot be encoded');
  const head = Buffer.from([0x40 | (TYPES.indexOf(m.type) << 4) | m.token.length, codeByte(m.code), m.mid >> 8, m.mid & 0xff]);
  const parts: Buffer[] = [head, m.token];
  let last = 0;
  for (const o of [...m.options].sort((a, b) => a.number - b.number)) {
    const d = nibble(o.number - last);
    const l = nibble(o.value.length);
    parts.push(Buffer.from([(d.n << 4) | l.n]), d.ext, l.ext, o.value);
    last = o.number;
  }
  if (m.payload && m.payload.length > 0) parts.push(Buffer.from([0xff]), m.payload);
  return Buffer.concat(parts);
}

/** Where each option's header byte is in a datagram, for tests that change them. */
export interface OptionAt extends CoapOption {
  /** offset of the option's first byte (delta and length nibbles) */
  at: number;
}

export interface Decoded {
  version: number;
  type: CoapType;
  tkl: number;
  code: number;
  mid: number;
  token: Buffer;
  options: OptionAt[];
  payload: Buffer;
  /** the message format error (RFC 7252 §3, §4.1), or null */
  formatError: string | null;
}

/** RFC 7252 §3 as it is written: null without a 4-byte header, else the fields and any format error. */
export function decodeCoap(buf: Buffer): Decoded | null {
  if (buf.length < 4) return null;
  const b0 = buf[0]!;
  const d: Decoded = {
    version: b0 >> 6,
    type: TYPES[(b0 >> 4) & 3]!,
    tkl: b0 & 0x0f,
    code: buf[1]!,
    mid: buf.readUInt16BE(2),
    token: Buffer.alloc(0),
    options: [],
    payload: Buffer.alloc(0),
    formatError: null,
  };
  if (d.tkl > 8) return { ...d, formatError: `token length ${d.tkl} (9-15 are reserved)` };
  if (buf.length < 4 + d.tkl) return { ...d, formatError: 'the datagram ends inside the token' };
  d.token = Buffer.from(buf.subarray(4, 4 + d.tkl));
  let i = 4 + d.tkl;
  let number = 0;
  while (i < buf.length) {
    const at = i;
    const byte = buf[i++]!;
    if (byte === 0xff) {
      if (i === buf.length) return { ...d, formatError: 'a payload marker followed by a zero-length payload' };
      d.payload = Buffer.from(buf.subarray(i));
      break;
    }
    const ext = (n: number): number | string => {
      if (n === 15) return 'option nibble 15 that is not a payload marker';
      if (n === 13) {
        if (i + 1 > buf.length) return 'the datagram ends inside an option header';
        return buf[i++]! + 13;
      }
      if (n === 14) {
        if (i + 2 > buf.length) return 'the datagram ends inside an option header';
        const v = buf.readUInt16BE(i) + 269;
        i += 2;
        return v;
      }
      return n;
    };
    const delta = ext(byte >> 4);
    if (typeof delta === 'string') return { ...d, formatError: delta };
    const length = ext(byte & 0x0f);
    if (typeof length === 'string') return { ...d, formatError: length };
    if (i + length > buf.length) return { ...d, formatError: 'the datagram ends inside an option value' };
    number += delta;
    d.options.push({ number, value: Buffer.from(buf.subarray(i, i + length)), at });
    i += length;
  }
  // §4.1: an Empty message is the 4-byte header alone.
  if (d.code === 0 && buf.length > 4) return { ...d, formatError: 'an Empty message with bytes after the header' };
  return d;
}

export function option(d: Decoded, number: number): Buffer | undefined {
  return d.options.find((o) => o.number === number)?.value;
}

/** Uri-Path and Uri-Query options of a `path?query` string (segments and items as they are, no percent-decoding). */
export function uriOptions(pathAndQuery: string): CoapOption[] {
  const [path, query] = pathAndQuery.split('?', 2) as [string, string | undefined];
  const opts: CoapOption[] = path
    .replace(/^\//, '')
    .split('/')
    .map((s) => ({ number: OPT.uriPath, value: Buffer.from(s) }));
  for (const q of query ? query.split('&') : []) opts.push({ number: OPT.uriQuery, value: Buffer.from(q) });
  return opts;
}

export interface Received {
  raw: Buffer;
  msg: Decoded | null;
  at: number;
}

export interface Exchange {
  /** the response: piggybacked on the ACK, or the separate response */
  response: Decoded;
  raw: Buffer;
  /** the ACK-layer answer: the piggybacked response or the empty ACK */
  ack: Buffer | null;
  /** transmissions of the request, the first included */
  transmissions: number;
  separate: boolean;
  ms: number;
}

export class CoapRefused extends Error {
  constructor(
    message: string,
    readonly reset: boolean,
  ) {
    super(message);
  }
}

interface Waiter {
  mid: number;
  token: Buffer;
  con: boolean;
  onAck(raw: Buffer, d: Decoded): void;
  onResponse(raw: Buffer, d: Decoded): void;
  abort(): void;
}

export interface Observation {
  first: Exchange;
  notifications: Decoded[];
  /** deregisters with a GET carrying Observe 1 (RFC 7641 §3.6) */
  cancel(): Promise<Exchange>;
}

/** A CoAP endpoint on one UDP source port. */
export class CoapClient {
  readonly received: Received[] = [];
  private mid = Math.floor(Math.random() * 0x10000);
  private readonly waiters = new Set<Waiter>();
  private readonly observing = new Map<string, Decoded[]>();
  private listeners: Array<(r: Received) => void> = [];
  private readonly expected = new Set<string>();

  private constructor(
    readonly socket: Socket,
    readonly serverPort: number,
    readonly serverHost: string,
    /** every datagram is kept in `received`; off for clients that send thousands */
    private readonly keep: boolean,
  ) {
    socket.on('message', (raw) => this.onDatagram(raw));
  }

  static async open(serverPort: number, opts: { host?: string; keep?: boolean } = {}): Promise<CoapClient> {
    const host = opts.host ?? '127.0.0.1';
    const socket = createSocket(host.includes(':') ? 'udp6' : 'udp4');
    await new Promise<void>((resolve) => socket.bind(0, host, () => resolve()));
    return new CoapClient(socket, serverPort, host, opts.keep ?? true);
  }

  get port(): number {
    return this.socket.address().port;
  }

  nextMid(): number {
    this.mid = (this.mid + 1) & 0xffff;
    return this.mid;
  }

  /** Responses with this token answer a request sent with send(): acknowledged when confirmable, kept in `received`. */
  expect(token: Buffer): void {
    this.expected.add(token.toString('hex'));
  }

  onReceive(listener: (r: Received) => void): void {
    this.listeners.push(listener);
  }

  send(data: Buffer): void {
    this.socket.send(data, this.serverPort, this.serverHost);
  }

  private onDatagram(raw: Buffer): void {
    const msg = decodeCoap(raw);
    const r: Received = { raw, msg, at: Date.now() };
    if (this.keep) this.received.push(r);
    for (const l of this.listeners) l(r);
    if (!msg || msg.formatError || msg.version !== 1) return;
    if (msg.type === 'ack' || msg.type === 'rst') {
      for (const w of this.waiters) if (w.mid === msg.mid) w.onAck(raw, msg);
      return;
    }
    // A response or notification of its own (CON or NON): acknowledge a CON first (RFC 7252 §5.2.2).
    const mine = [...this.waiters].find((w) => w.token.equals(msg.token));
    const notes = this.observing.get(msg.token.toString('hex'));
    if (this.expected.has(msg.token.toString('hex'))) {
      if (msg.type === 'con') this.send(encodeCoap({ type: 'ack', code: 0, mid: msg.mid, token: Buffer.alloc(0), options: [] }));
      return;
    }
    if (mine || notes) {
      if (msg.type === 'con') this.send(encodeCoap({ type: 'ack', code: 0, mid: msg.mid, token: Buffer.alloc(0), options: [] }));
      if (mine) mine.onResponse(raw, msg);
      else notes!.push(msg);
      return;
    }
    // Nothing it asked for: rejected, which also ends an observation it forgot (RFC 7641 §3.6).
    if (msg.type === 'con' || msg.code !== 0)
      this.send(encodeCoap({ type: 'rst', code: 0, mid: msg.mid, token: Buffer.alloc(0), options: [] }));
  }

  /**
   * A request as a client does it: confirmable ones retransmitted after ACK_TIMEOUT × a random
   * factor, doubling, at most MAX_RETRANSMIT times (RFC 7252 §4.2); the response piggybacked or
   * separate. `ackTimeoutMs` shortens the schedule for tests that provoke losses on purpose.
   */
  request(
    req: { code: string; path: string; options?: CoapOption[]; payload?: Buffer | string; con?: boolean; token?: Buffer },
    opts: { ackTimeoutMs?: number; separateTimeoutMs?: number } = {},
  ): Promise<Exchange> {
    const con = req.con ?? true;
    const mid = this.nextMid();
    const token = req.token ?? randomBytes(4);
    const data = encodeCoap({
      type: con ? 'con' : 'non',
      code: req.code,
      mid,
      token,
      options: [...uriOptions(req.path), ...(req.options ?? [])],
      ...(req.payload !== undefined ? { payload: Buffer.from(req.payload) } : {}),
    });
    const started = Date.now();
    const ackTimeout = opts.ackTimeoutMs ?? ACK_TIMEOUT_MS;
    return new Promise<Exchange>((resolve, reject) => {
      let transmissions = 0;
      let timeoutMs = ackTimeout * (1 + Math.random() * (ACK_RANDOM_FACTOR - 1));
      let timer: NodeJS.Timeout | null = null;
      let ack: Buffer | null = null;
      const finish = (err: Error | null, ex?: Exchange): void => {
        if (timer) clearTimeout(timer);
        this.waiters.delete(w);
        if (err) reject(err);
        else resolve(ex!);
      };
      const transmit = (): void => {
        transmissions++;
        this.send(data);
        if (!con) {
          timer = setTimeout(() => finish(new Error(`no response to the NON ${req.code} ${req.path}`)), opts.separateTimeoutMs ?? 10_000);
          return;
        }
        if (transmissions > MAX_RETRANSMIT) {
          timer = setTimeout(() => finish(new Error(`no ACK to ${req.code} ${req.path} after ${transmissions} transmissions`)), timeoutMs);
          return;
        }
        timer = setTimeout(transmit, timeoutMs);
        timeoutMs *= 2;
      };
      const w: Waiter = {
        mid,
        token,
        con,
        onAck: (raw, d) => {
          if (d.type === 'rst') return finish(new CoapRefused(`reset in answer to ${req.code} ${req.path}`, true));
          if (ack) return; // a copy of the ACK for a retransmission
          ack = raw;
          if (d.code !== 0) {
            finish(null, { response: d, raw, ack, transmissions, separate: false, ms: Date.now() - started });
            return;
          }
          // An empty ACK: no more retransmissions, the response comes separately.
          if (timer) clearTimeout(timer);
          timer = setTimeout(() => finish(new Error(`no separate response to ${req.code} ${req.path}`)), opts.separateTimeoutMs ?? 30_000);
        },
        onResponse: (raw, d) => finish(null, { response: d, raw, ack, transmissions, separate: con, ms: Date.now() - started }),
        abort: () => finish(new Error(`the client closed before the response to ${req.code} ${req.path}`)),
      };
      this.waiters.add(w);
      transmit();
    });
  }

  /** GET with Observe 0 (RFC 7641); notifications collected until cancelled. */
  async observe(path: string, options: CoapOption[] = [], opts: { con?: boolean } = {}): Promise<Observation> {
    const token = randomBytes(6);
    const notes: Decoded[] = [];
    this.observing.set(token.toString('hex'), notes);
    const first = await this.request({
      code: 'GET',
      path,
      token,
      con: opts.con ?? true,
      options: [{ number: OPT.observe, value: Buffer.alloc(0) }, ...options],
    });
    return {
      first,
      notifications: notes,
      cancel: async () => {
        const ex = await this.request({
          code: 'GET',
          path,
          token,
          options: [{ number: OPT.observe, value: Buffer.from([1]) }, ...options],
        });
        this.observing.delete(token.toString('hex'));
        return ex;
      },
    };
  }

  /** The answers (ACK or RST) to one message id, in arrival order. */
  answersTo(mid: number): Received[] {
    return this.received.filter((r) => r.msg?.mid === mid && (r.msg.type === 'ack' || r.msg.type === 'rst'));
  }

  async waitAnswers(mid: number, n: number, ms = 5_000): Promise<Received[]> {
    await eventually(`${n} answer(s) to message id ${mid}`, () => this.answersTo(mid).length >= n, ms);
    return this.answersTo(mid);
  }

  close(): void {
    for (const w of this.waiters) w.abort();
    this.socket.close();
  }
}
