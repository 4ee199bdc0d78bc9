// The CoAP wire format (RFC 7252 §3) as this adapter needs it: a strict check of a datagram's
// framing before coap-packet parses it (coap-packet reads past the end of a truncated option and
// accepts extended token lengths that RFC 7252 reserves), the request fields the contract reads,
// and the messages the proxy sends back. coap-packet's parser and generator do the byte work.
import { generate, parse, type ParsedPacket } from 'coap-packet';
import type { ContentType } from '../../core/message.js';

export type MessageType = 'con' | 'non' | 'ack' | 'rst';
const TYPES: readonly MessageType[] = ['con', 'non', 'ack', 'rst'];

/** Option numbers (RFC 7252 §12.2, RFC 7641, RFC 7959). */
export const OPT = {
  uriHost: 3,
  etag: 4,
  observe: 6,
  uriPort: 7,
  uriPath: 11,
  contentFormat: 12,
  maxAge: 14,
  uriQuery: 15,
  accept: 17,
  block2: 23,
  block1: 27,
  size2: 28,
  size1: 60,
  noResponse: 258,
} as const;

/**
 * The options this adapter reads or may ignore, with their value lengths and whether they may
 * repeat (RFC 7252 §5.10, RFC 7641 §2, RFC 7959 §2.1 and §4, RFC 7967 §2). An option out of its
 * range, or a repeat of one that may not repeat, is an unrecognized option (§5.4.3, §5.4.5): a
 * critical (odd) one makes the request 4.02, an elective one is ignored. Any other critical
 * option is 4.02 too (§5.4.1).
 */
const FORMATS: ReadonlyMap<number, { min: number; max: number; repeats: boolean }> = new Map([
  [OPT.uriHost, { min: 1, max: 255, repeats: false }],
  [OPT.etag, { min: 1, max: 8, repeats: true }],
  [OPT.observe, { min: 0, max: 3, repeats: false }],
  [OPT.uriPort, { min: 0, max: 2, repeats: false }],
  [OPT.uriPath, { min: 0, max: 255, repeats: true }],
  [OPT.contentFormat, { min: 0, max: 2, repeats: false }],
  [OPT.uriQuery, { min: 0, max: 255, repeats: true }],
  [OPT.accept, { min: 0, max: 2, repeats: false }],
  [OPT.block2, { min: 0, max: 3, repeats: false }],
  [OPT.block1, { min: 0, max: 3, repeats: false }],
  [OPT.size2, { min: 0, max: 4, repeats: false }],
  [OPT.size1, { min: 0, max: 4, repeats: false }],
  [OPT.noResponse, { min: 0, max: 1, repeats: false }],
]);

/** Content-Formats (RFC 7252 §12.3, RFC 8949) and the proxy's content types. */
const FORMAT_TO_TYPE: ReadonlyMap<number, ContentType> = new Map([
  [0, 'text'],
  [42, 'binary'],
  [50, 'json'],
  [60, 'cbor'],
]);
const TYPE_TO_FORMAT: Readonly<Record<ContentType, number>> = { text: 0, binary: 42, json: 50, cbor: 60 };
export const LINK_FORMAT = 40;

export function contentTypeOf(format: number): ContentType | undefined {
  return FORMAT_TO_TYPE.get(format);
}

export function formatOf(type: ContentType): number {
  return TYPE_TO_FORMAT[type];
}

/** What a datagram is, before anything looks at its meaning. */
export type Framing =
  | { ok: true; packet: ParsedPacket; type: MessageType }
  /**
   * A message that cannot be read. `mid` and `type` when the header was readable: a confirmable
   * one is rejected with a reset (RFC 7252 §4.2), anything else is ignored in silence (§4.3, and
   * §3 for an unknown version).
   */
  | { ok: false; type: MessageType | null; mid: number | null; why: string };

export function readDatagram(buf: Buffer): Framing {
  if (buf.length < 4) return { ok: false, type: null, mid: null, why: 'shorter than the 4-byte header' };
  const b0 = buf[0]!;
  if (b0 >> 6 !== 1) return { ok: false, type: null, mid: null, why: `version ${b0 >> 6}` };
  const type = TYPES[(b0 >> 4) & 3]!;
  const mid = buf.readUInt16BE(2);
  const bad = (why: string): Framing => ({ ok: false, type, mid, why });
  const tkl = b0 & 0x0f;
  const code = buf[1]!;
  if (tkl > 8) return bad(`token length ${tkl}`);
  const cls = code >> 5;
  if (cls === 1 || cls === 6 || cls === 7) return bad(`reserved code class ${cls}`);
  if (code === 0) {
    // An empty message is the header alone (RFC 7252 §4.1).
    if (buf.length !== 4) return bad('an empty message with a token, options or payload');
  } else {
    const problem = checkOptions(buf, 4 + tkl);
    if (problem) return bad(problem);
  }
  try {
    return { ok: true, packet: parse(buf), type };
  } catch (err) {
    return bad((err as Error).message);
  }
}

/** Option deltas and lengths stay within the datagram, and a payload marker has a payload after it. */
function checkOptions(buf: Buffer, start: number): string | null {
  let i = start;
  if (i > buf.length) return 'token past the end';
  while (i < buf.length) {
    const byte = buf[i]!;
    if (byte === 0xff) return i + 1 === buf.length ? 'payload marker without a payload' : null;
    i++;
    let delta = byte >> 4;
    let len = byte & 0x0f;
    if (delta === 15 || len === 15) return 'reserved option nibble 15';
    for (const which of ['delta', 'length'] as const) {
      const v = which === 'delta' ? delta : len;
      let ext = v;
      if (v === 13) {
        if (i + 1 > buf.length) return `option ${which} past the end`;
        ext = buf[i]! + 13;
        i += 1;
      } else if (v === 14) {
        if (i + 2 > buf.length) return `option ${which} past the end`;
        ext = buf.readUInt16BE(i) + 269;
        i += 2;
      }
      if (which === 'delta') delta = ext;
      else len = ext;
    }
    i += len;
    if (i > buf.length) return 'option value past the end';
  }
  return null;
}

/** The fields of a request the contract reads. */
export interface CoapRequest {
  type: 'con' | 'non';
  mid: number;
  token: Buffer;
  /** '0.01' GET ... */
  code: string;
  path: string[];
  query: Map<string, string>;
  contentFormat: number | null;
  observe: number | null;
  /** Block1 (RFC 7959 §2.2): this request carries one block of an upload */
  block1: BlockOption | null;
  /** why the Block1 option cannot be read (answered 4.00, RFC 7959 §2.2), else null */
  badBlock1: string | null;
  /** Block2 (RFC 7959 §2.2): which block of the response the client asks for, and its size */
  block2: BlockOption | null;
  /** why the Block2 option cannot be read (answered 4.00), else null */
  badBlock2: string | null;
  size1: number | null;
  /** the number of a critical option this adapter does not understand */
  badOption: number | null;
  payload: Buffer;
}

export function requestOf(packet: ParsedPacket, type: 'con' | 'non'): CoapRequest {
  const req: CoapRequest = {
    type,
    mid: packet.messageId,
    token: packet.token,
    code: packet.code,
    path: [],
    query: new Map(),
    contentFormat: null,
    observe: null,
    block1: null,
    badBlock1: null,
    block2: null,
    badBlock2: null,
    size1: null,
    badOption: null,
    payload: packet.payload,
  };
  const seen = new Set<number>();
  for (const o of packet.options) {
    const n = typeof o.name === 'number' ? o.name : optionNumber(o.name);
    const format = FORMATS.get(n);
    const usable = format !== undefined && o.value.length >= format.min && o.value.length <= format.max && (format.repeats || !seen.has(n));
    seen.add(n);
    if (!usable) {
      // Unrecognized (§5.4.1, §5.4.3, §5.4.5): critical ones refuse the request, elective ones are skipped.
      if (n % 2 === 1 && req.badOption === null) req.badOption = n;
      continue;
    }
    switch (n) {
      case OPT.uriPath:
        req.path.push(o.value.toString('utf8'));
        break;
      case OPT.uriQuery: {
        const q = o.value.toString('utf8');
        const eq = q.indexOf('=');
        // The first of a repeated key wins: a later one cannot override d or k.
        const key = eq < 0 ? q : q.slice(0, eq);
        if (!req.query.has(key)) req.query.set(key, eq < 0 ? '' : q.slice(eq + 1));
        break;
      }
      case OPT.contentFormat:
        req.contentFormat = uint(o.value);
        break;
      case OPT.observe:
        req.observe = uint(o.value);
        break;
      case OPT.block1: {
        const block = parseBlock(o.value);
        if (typeof block === 'string') req.badBlock1 = block;
        else req.block1 = block;
        break;
      }
      case OPT.block2: {
        const block = parseBlock(o.value);
        if (typeof block === 'string') req.badBlock2 = block;
        else req.block2 = block;
        break;
      }
      case OPT.size1:
        req.size1 = uint(o.value);
        break;
    }
  }
  return req;
}

const NAMED: Readonly<Record<string, number>> = {
  'If-Match': 1,
  'Uri-Host': 3,
  ETag: 4,
  'If-None-Match': 5,
  Observe: 6,
  'Uri-Port': 7,
  'Location-Path': 8,
  OSCORE: 9,
  'Uri-Path': 11,
  'Content-Format': 12,
  'Max-Age': 14,
  'Uri-Query': 15,
  'Hop-Limit': 16,
  Accept: 17,
  'Q-Block1': 19,
  'Location-Query': 20,
  Block2: 23,
  Block1: 27,
  Size2: 28,
  'Q-Block2': 31,
  'Proxy-Uri': 35,
  'Proxy-Scheme': 39,
  Size1: 60,
  'No-Response': 258,
  'OCF-Accept-Content-Format-Version': 2049,
  'OCF-Content-Format-Version': 2053,
};

/**
 * coap-packet names the options it knows and gives the others as decimal strings. A name not
 * known here (a newer coap-packet) is taken for an unrecognized critical option: refused, not
 * silently skipped.
 */
function optionNumber(name: string): number {
  const n = NAMED[name] ?? Number.parseInt(name, 10);
  return Number.isInteger(n) ? n : UNKNOWN_CRITICAL;
}

/** Stands for an option whose number cannot be read: odd, so critical, and in no table. */
const UNKNOWN_CRITICAL = 65_535;

export function uint(value: Buffer): number {
  let n = 0;
  for (const b of value.subarray(0, 4)) n = n * 256 + b;
  return n;
}

function uintBytes(n: number): Buffer {
  if (n === 0) return Buffer.alloc(0);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v % 256);
  return Buffer.from(bytes);
}

/** A Block1 or Block2 option (RFC 7959 §2.2): the block number, whether more follow, SZX and the block size it stands for. */
export interface BlockOption {
  num: number;
  more: boolean;
  szx: number;
  /** 2 ** (szx + 4): 16 to 1024 bytes */
  size: number;
}

/** A block option's value, or why it cannot be read: longer than 3 bytes, or the reserved SZX 7. */
export function parseBlock(value: Buffer): BlockOption | string {
  if (value.length > 3) return `a block option of ${value.length} bytes (at most 3)`;
  const v = uint(value);
  const szx = v & 7;
  if (szx === 7) return 'block size exponent (SZX) 7 is reserved';
  return { num: v >>> 4, more: (v & 8) !== 0, szx, size: 1 << (szx + 4) };
}

/** The shortest value that carries a block option (0 to 3 bytes). */
export function encodeBlock(b: Pick<BlockOption, 'num' | 'more' | 'szx'>): Buffer {
  return uintBytes(b.num * 16 + (b.more ? 8 : 0) + b.szx);
}

/** A response before it has a message type and id. */
export interface Response {
  code: string;
  payload?: Buffer;
  contentFormat?: number;
  maxAge?: number;
  size1?: number;
  /** RFC 7641: the sequence number of a notification (24 bits); present only while the observation stays */
  observe?: number;
  /** RFC 7252 §5.10.6: tells one representation from another across the blocks of a transfer */
  etag?: Buffer;
  /** RFC 7959 §2.2: which block of the representation this response carries */
  block2?: Pick<BlockOption, 'num' | 'more' | 'szx'>;
  /** RFC 7959 §4: the size of the whole representation */
  size2?: number;
  /** RFC 7959 §2.3: a block of an upload acknowledged (2.31) or the upload's last block answered */
  block1?: BlockOption;
}

export function encodeResponse(res: Response, type: MessageType, mid: number, token: Buffer): Buffer {
  const options: Array<{ name: number; value: Buffer }> = [];
  // coap-packet sorts the options by number itself.
  if (res.contentFormat !== undefined) options.push({ name: OPT.contentFormat, value: uintBytes(res.contentFormat) });
  if (res.maxAge !== undefined) options.push({ name: OPT.maxAge, value: uintBytes(res.maxAge) });
  if (res.size1 !== undefined) options.push({ name: OPT.size1, value: uintBytes(res.size1) });
  if (res.observe !== undefined) options.push({ name: OPT.observe, value: uintBytes(res.observe & 0xffffff) });
  if (res.etag !== undefined) options.push({ name: OPT.etag, value: res.etag });
  if (res.block2 !== undefined) options.push({ name: OPT.block2, value: encodeBlock(res.block2) });
  if (res.size2 !== undefined) options.push({ name: OPT.size2, value: uintBytes(res.size2) });
  if (res.block1 !== undefined) options.push({ name: OPT.block1, value: encodeBlock(res.block1) });
  return generate(
    {
      code: res.code,
      messageId: mid,
      token,
      options,
      confirmable: type === 'con',
      ack: type === 'ack',
      reset: type === 'rst',
      ...(res.payload && res.payload.length > 0 ? { payload: res.payload } : {}),
    },
    // No generator cap: the adapter bounds what it sends itself.
    65_507,
  );
}

/** An empty ACK or RST (RFC 7252 §4.2, §4.3): the four header bytes. */
export function emptyMessage(type: 'ack' | 'rst', mid: number): Buffer {
  const b = Buffer.alloc(4);
  b[0] = 0x40 | (TYPES.indexOf(type) << 4);
  b.writeUInt16BE(mid, 2);
  return b;
}
