// Bad input on the CoAP endpoint: 100,000 random and mutated datagrams made by fast-check from a
// fixed seed (FUZZ_SEED overrides it; it is printed), sent from several UDP source ports to one
// proxy process in token mode, while a well-behaved device on a port of its own publishes a
// confirmable message every few milliseconds, retransmitting as RFC 7252 §4.2 asks.
//
// The datagrams start from valid messages (publishes CON and NON with various options, GETs,
// /.well-known/core, pings, Observe registrations, Block1 blocks, responses and empty ACK/RST) and
// are mutated: bits flipped, truncated, extended, bytes spliced in, option delta and length nibbles
// set to 13, 14 or 15, token lengths 9-15, any code byte (reserved classes 1, 6, 7 among them),
// another version or type, huge option numbers, unknown critical options, a payload marker without
// a payload. Some confirmable ones are sent twice, back to back or after their answer.
//
// An oracle written from RFC 7252 and docs/coap.md, not from the proxy's code, judges every
// datagram from its bytes alone (see `judge`):
// - no 4-byte header, or a version other than 1: silence (§3);
// - a message format error (§3: token length 9-15, an option running past the end, nibble 15
//   outside a payload marker, a marker without a payload; §4.1: an Empty message with bytes after
//   the header) or a reserved code class 1, 6, 7: a CON is rejected with a Reset (§4.2), anything
//   else is ignored in silence (§4.3; docs/coap.md: "ignored otherwise");
// - ACK and RST: silence; an Empty CON (a ping): Reset; an Empty NON: silence; a response sent to
//   the proxy: Reset when confirmable, else silence;
// - a request with an unrecognized critical option (§5.4.1), which includes a supernumerary
//   occurrence of a non-repeatable critical option (§5.4.5) and a critical option whose length is
//   outside its range (§5.4.3): 4.02 to a CON, silence (or a Reset) to a NON; an elective one in
//   those cases is ignored;
// - any other request: the answer docs/coap.md gives (4.01, 4.03, 4.04, 4.05, 4.13, 4.15, 4.00,
//   2.04, 2.05), piggybacked on the ACK of a CON (or an empty ACK and a separate response), a NON
//   response to a NON; the order in which the documents check things is not written down, so when
//   several errors apply any of them is right. Error answers carry a UTF-8 diagnostic, 4.13 carries
//   Size1. A Content-Format 50 (JSON) publish whose payload is not JSON text is a malformed request
//   (4.00): the cloud envelope and /ws frames splice a `json` payload in as it is.
// Where the documents leave an answer open (marked `lenient` in the code: Observe and Block1/Block2
// while they are being built, Accept and 4.06, No-Response, invalid UTF-8 in a path, query or text
// payload, CBOR that is not CBOR, option numbers over 65535), every answer the RFC allows is taken.
//
// Every answer to one message id from one source port must be byte-identical (§4.5), and every
// datagram the proxy sends must answer something that was sent. The well-behaved device gets every
// publish answered 2.04 and each reaches the cloud Mosquitto exactly once; every fuzz publish
// answered 2.04 reaches the cloud exactly once (its payload carries a checksummed tag), none twice;
// every message at the cloud is a JSON envelope. The proxy never exits, answers /healthz, logs
// nothing fatal, and its heap stays bounded (sampled from /metrics throughout).
//
// A first test sends, one at a time, the kinds of datagram the fuzz found answered wrong.
import t from 'tap';
import fc from 'fast-check';
import { createSocket, type Socket } from 'node:dgram';
import { isUtf8 } from 'node:buffer';
import { join } from 'node:path';
import { cloudFor } from './helpers/mosquitto.js';
import { startProxy, type ProxyProcess } from './helpers/proxy.js';
import { eventually, sleep } from './helpers/ports.js';
import { writeRegistry } from './helpers/registry.js';
import {
  CoapClient,
  OPT,
  codeString,
  coapPort,
  decodeCoap,
  encodeCoap,
  uintBytes,
  uintOf,
  type CoapOption,
  type CoapType,
  type Decoded,
} from './helpers/coap.js';
import { topicMatches } from '../src/core/topic.js';

const SEED = process.env.FUZZ_SEED !== undefined && process.env.FUZZ_SEED !== '' ? Number(process.env.FUZZ_SEED) : 0x7252_0c0a;
if (!Number.isInteger(SEED)) throw new Error(`FUZZ_SEED is an integer, not ${process.env.FUZZ_SEED}`);
/** FUZZ_DATAGRAMS runs fewer (or more), to look at one seed quickly */
const DATAGRAMS = Number(process.env.FUZZ_DATAGRAMS ?? '') || 100_000;
/** source ports, each a device of its own in the registry */
const LANES = 8;
/** datagrams per lane that wait for an answer at once */
const WINDOW = 6;
/** datagrams per second, all lanes together: UDP has no backpressure, and the steady device must get through */
const RATE = 4_000;
/** how long an answer may take before the datagram counts as unanswered */
const ANSWER_MS = 6_000;
const MAX_PAYLOAD = 1024;
const MAX_TOPIC = 256;
const HEAP_GROWTH_LIMIT = 96 * 1024 * 1024;

const DEVICES = Array.from({ length: LANES }, (_, i) => `fz-${i}`);

// ---------------------------------------------------------------- generators

type TopicKind =
  | 'own'
  | 'own-deep'
  | 'own-root'
  | 'other'
  | 'broadcast'
  | 'dollar'
  | 'plus'
  | 'hash'
  | 'empty-level'
  | 'trailing'
  | 'long'
  | 'control'
  | 'slash'
  | 'nonchar'
  | 'none';
type Auth = 'ok' | 'wrong-token' | 'no-token' | 'unknown' | 'nothing' | 'other-ok' | 'dup-k' | 'dup-d';
type PayloadKind = 'json' | 'text' | 'binary' | 'cbor' | 'bad-json' | 'empty' | 'big';

interface RequestSeed {
  kind: 'request';
  type: 'con' | 'non';
  code: number;
  target: 'ps' | 'core' | 'other' | 'root';
  topic: TopicKind;
  channel: string;
  long: number;
  auth: Auth;
  retain: boolean;
  payload: PayloadKind;
  big: number;
  /** null: none; a number: its value; 'bytes3': a three-byte value */
  format: number | null | 'bytes3';
  observe: number | null;
  block1: { num: number; more: boolean; szx: number; size1: number | null } | null;
  extras: Array<{ number: number; value: Uint8Array }>;
  tokenLength: number;
}
type Seed =
  | RequestSeed
  | { kind: 'empty'; type: CoapType; tokenLength: number }
  | { kind: 'response'; type: CoapType; code: number; tokenLength: number }
  | { kind: 'random'; bytes: Uint8Array; header: boolean };

type Mutation =
  | { kind: 'none' }
  | { kind: 'flip'; bits: Array<[number, number]> }
  | { kind: 'truncate'; keep: number }
  | { kind: 'extend'; bytes: Uint8Array }
  | { kind: 'splice'; at: number; bytes: Uint8Array }
  | { kind: 'nibble'; which: 'delta' | 'length'; value: 13 | 14 | 15; option: number }
  | { kind: 'tkl'; value: number }
  | { kind: 'code'; value: number }
  | { kind: 'version'; value: number }
  | { kind: 'type'; value: number }
  | { kind: 'marker' };

interface Action {
  seed: Seed;
  mutation: Mutation;
  resend: 'none' | 'immediate' | 'after';
}

const word = fc.string({ unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789'), minLength: 1, maxLength: 8 });
const tokenLength = fc.oneof({ weight: 8, arbitrary: fc.constantFrom(2, 4, 8) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 8 }) });
const extraOption: fc.Arbitrary<{ number: number; value: Uint8Array }> = fc.oneof(
  // unknown critical options, huge option numbers, elective ones
  {
    weight: 4,
    arbitrary: fc.record({
      number: fc.constantFrom(1, 4, 5, 8, 9, 13, 19, 20, 21, 25, 29, 31, 33, 35, 39, 128, 2049, 2050, 3001, 65000, 65001, 65534, 65535),
      value: fc.uint8Array({ maxLength: 6 }),
    }),
  },
  { weight: 2, arbitrary: fc.record({ number: fc.integer({ min: 0, max: 65535 }), value: fc.uint8Array({ maxLength: 4 }) }) },
  // known options of the wrong length (RFC 7252 §5.4.3)
  {
    weight: 2,
    arbitrary: fc.constantFrom(
      { number: OPT.uriHost, value: new Uint8Array(0) },
      { number: OPT.uriHost, value: new Uint8Array(300).fill(0x68) },
      { number: OPT.uriPort, value: new Uint8Array([1, 2, 3]) },
      { number: OPT.accept, value: new Uint8Array([0, 0, 50]) },
      { number: OPT.block2, value: new Uint8Array([0, 0, 0, 6]) },
      { number: OPT.contentFormat, value: new Uint8Array([0, 0, 50]) },
      { number: OPT.observe, value: new Uint8Array([0, 0, 0, 0]) },
      { number: OPT.uriQuery, value: new Uint8Array(260).fill(0x71) },
    ),
  },
  // known options, well formed (some of them repeated when drawn twice)
  {
    weight: 4,
    arbitrary: fc.constantFrom(
      { number: OPT.uriHost, value: new Uint8Array(Buffer.from('localhost')) },
      { number: OPT.uriPort, value: new Uint8Array([0x16, 0x33]) },
      { number: OPT.accept, value: new Uint8Array([50]) },
      { number: OPT.accept, value: new Uint8Array(0) },
      { number: OPT.etag, value: new Uint8Array([1, 2, 3, 4]) },
      { number: OPT.maxAge, value: new Uint8Array([60]) },
      { number: OPT.block2, value: new Uint8Array([0x02]) },
      { number: OPT.size1, value: new Uint8Array([0x10]) },
      { number: OPT.size2, value: new Uint8Array(0) },
      { number: OPT.noResponse, value: new Uint8Array([2]) },
      { number: OPT.noResponse, value: new Uint8Array([26]) },
      { number: OPT.noResponse, value: new Uint8Array(0) },
      { number: OPT.contentFormat, value: new Uint8Array([99]) },
    ),
  },
);
const requestSeed: fc.Arbitrary<RequestSeed> = fc.record({
  kind: fc.constant<'request'>('request'),
  type: fc.oneof({ weight: 3, arbitrary: fc.constant<'con'>('con') }, { weight: 1, arbitrary: fc.constant<'non'>('non') }),
  code: fc.oneof(
    { weight: 12, arbitrary: fc.constant(2) },
    { weight: 4, arbitrary: fc.constant(1) },
    { weight: 3, arbitrary: fc.constant(3) },
    { weight: 1, arbitrary: fc.integer({ min: 4, max: 31 }) },
  ),
  target: fc.oneof(
    { weight: 30, arbitrary: fc.constant<'ps'>('ps') },
    { weight: 2, arbitrary: fc.constant<'core'>('core') },
    { weight: 1, arbitrary: fc.constantFrom<'other' | 'root'>('other', 'root') },
  ),
  topic: fc.oneof(
    { weight: 20, arbitrary: fc.constant<TopicKind>('own') },
    { weight: 3, arbitrary: fc.constantFrom<TopicKind>('own-deep', 'own-root', 'broadcast') },
    { weight: 3, arbitrary: fc.constant<TopicKind>('other') },
    {
      weight: 4,
      arbitrary: fc.constantFrom<TopicKind>(
        'dollar',
        'plus',
        'hash',
        'empty-level',
        'trailing',
        'long',
        'control',
        'slash',
        'nonchar',
        'none',
      ),
    },
  ),
  channel: word,
  long: fc.integer({ min: 220, max: 300 }),
  auth: fc.oneof(
    { weight: 20, arbitrary: fc.constant<Auth>('ok') },
    { weight: 1, arbitrary: fc.constantFrom<Auth>('wrong-token', 'no-token', 'unknown', 'nothing', 'other-ok', 'dup-k', 'dup-d') },
  ),
  retain: fc.oneof({ weight: 9, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
  payload: fc.oneof(
    { weight: 6, arbitrary: fc.constantFrom<PayloadKind>('json', 'text') },
    { weight: 2, arbitrary: fc.constantFrom<PayloadKind>('binary', 'cbor') },
    { weight: 1, arbitrary: fc.constantFrom<PayloadKind>('bad-json', 'empty', 'big') },
  ),
  big: fc.integer({ min: MAX_PAYLOAD - 60, max: MAX_PAYLOAD + 200 }),
  format: fc.oneof(
    { weight: 6, arbitrary: fc.constant(null) },
    { weight: 8, arbitrary: fc.constantFrom(0, 42, 50, 60) },
    { weight: 1, arbitrary: fc.constantFrom<number | 'bytes3'>(40, 99, 1000, 65535, 'bytes3') },
  ),
  observe: fc.oneof({ weight: 6, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.constantFrom(0, 0, 1, 5) }),
  block1: fc.oneof(
    { weight: 12, arbitrary: fc.constant(null) },
    {
      weight: 1,
      arbitrary: fc.record({
        num: fc.integer({ min: 0, max: 3 }),
        more: fc.boolean(),
        szx: fc.integer({ min: 0, max: 7 }),
        size1: fc.option(fc.integer({ min: 0, max: 4 * MAX_PAYLOAD })),
      }),
    },
  ),
  extras: fc.oneof(
    { weight: 5, arbitrary: fc.constant<Array<{ number: number; value: Uint8Array }>>([]) },
    { weight: 2, arbitrary: fc.array(extraOption, { minLength: 1, maxLength: 3 }) },
  ),
  tokenLength,
});
const seed: fc.Arbitrary<Seed> = fc.oneof(
  { weight: 80, arbitrary: requestSeed },
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant<'empty'>('empty'),
      type: fc.constantFrom<CoapType>('con', 'con', 'non', 'ack', 'rst'),
      tokenLength,
    }),
  },
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant<'response'>('response'),
      type: fc.constantFrom<CoapType>('con', 'non', 'ack', 'rst'),
      code: fc.constantFrom(0x41, 0x44, 0x45, 0x84, 0xa0),
      tokenLength,
    }),
  },
  {
    weight: 10,
    arbitrary: fc.record({
      kind: fc.constant<'random'>('random'),
      bytes: fc.uint8Array({ minLength: 0, maxLength: 80 }),
      header: fc.boolean(),
    }),
  },
);
const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 40, arbitrary: fc.constant<Mutation>({ kind: 'none' }) },
  {
    weight: 15,
    arbitrary: fc
      .array(fc.tuple(fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true }), fc.integer({ min: 0, max: 7 })), {
        minLength: 1,
        maxLength: 3,
      })
      .map((bits): Mutation => ({ kind: 'flip', bits })),
  },
  {
    weight: 8,
    arbitrary: fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true }).map((keep): Mutation => ({ kind: 'truncate', keep })),
  },
  { weight: 5, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 12 }).map((bytes): Mutation => ({ kind: 'extend', bytes })) },
  {
    weight: 4,
    arbitrary: fc
      .record({ at: fc.double({ min: 0, max: 1, noNaN: true }), bytes: fc.uint8Array({ minLength: 1, maxLength: 6 }) })
      .map(({ at, bytes }): Mutation => ({ kind: 'splice', at, bytes })),
  },
  {
    weight: 8,
    arbitrary: fc
      .record({
        which: fc.constantFrom<'delta' | 'length'>('delta', 'length'),
        value: fc.constantFrom<13 | 14 | 15>(13, 14, 15),
        option: fc.nat(6),
      })
      .map((m): Mutation => ({ kind: 'nibble', ...m })),
  },
  { weight: 5, arbitrary: fc.integer({ min: 9, max: 15 }).map((value): Mutation => ({ kind: 'tkl', value })) },
  {
    weight: 5,
    arbitrary: fc
      .oneof(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0x20, max: 0x3f }), fc.integer({ min: 0xc0, max: 0xff }))
      .map((value): Mutation => ({ kind: 'code', value })),
  },
  { weight: 2, arbitrary: fc.constantFrom(0, 2, 3).map((value): Mutation => ({ kind: 'version', value })) },
  { weight: 3, arbitrary: fc.integer({ min: 0, max: 3 }).map((value): Mutation => ({ kind: 'type', value })) },
  { weight: 4, arbitrary: fc.constant<Mutation>({ kind: 'marker' }) },
);
const action: fc.Arbitrary<Action> = fc.record({
  seed,
  mutation,
  resend: fc.oneof(
    { weight: 18, arbitrary: fc.constant<'none'>('none') },
    { weight: 1, arbitrary: fc.constantFrom<'immediate' | 'after'>('immediate', 'after') },
  ),
});

// ---------------------------------------------------------------- rendering

/** A tag in a payload that a mutation cannot turn into another datagram's: the lane, the index and a 16-bit check. */
function tagFor(lane: number, k: number): string {
  return `#L${lane}n${k}x${check(lane, k)}#`;
}
function check(lane: number, k: number): string {
  let h = 0x9e37 ^ (lane * 0x45d9f3b) ^ (k * 0x27d4eb2d);
  h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d);
  h = Math.imul(h ^ (h >>> 12), 0x297a2d39);
  return ((h ^ (h >>> 15)) & 0xffff).toString(16).padStart(4, '0');
}
const TAG = /#L(\d+)n(\d+)x([0-9a-f]{4})#/g;
function tagsIn(text: string): string[] {
  return [...text.matchAll(TAG)].filter((m) => check(Number(m[1]), Number(m[2])) === m[3]).map((m) => m[0]);
}

/** Token of the k-th datagram of a lane: unique per lane from two bytes on, so answers can be matched. */
function tokenFor(k: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = i === 0 ? (k >> 8) & 0xff : i === 1 ? k & 0xff : 0xa0 + i;
  return b;
}

interface Context {
  tokens: Record<string, string>;
}

function payloadOf(s: RequestSeed, tag: string): Buffer {
  switch (s.payload) {
    case 'json':
      return Buffer.from(JSON.stringify({ t: tag, v: s.channel }));
    case 'text':
      return Buffer.from(`reading ${tag} ${s.channel}`);
    case 'binary':
      return Buffer.concat([Buffer.from([0x00, 0xff, 0xfe]), Buffer.from(tag), Buffer.from([0x80, 0x81])]);
    case 'cbor': {
      const text = Buffer.from(tag);
      return Buffer.concat([Buffer.from([0x78, text.length]), text]);
    }
    case 'bad-json':
      return Buffer.from(`{"t":"${tag}",`);
    case 'empty':
      return Buffer.alloc(0);
    case 'big':
      return Buffer.from(`${tag} ${'x'.repeat(s.big)}`.slice(0, s.big));
  }
}

function topicLevels(s: RequestSeed, lane: number): string[] {
  const dev = DEVICES[lane]!;
  const other = DEVICES[(lane + 1) % LANES]!;
  switch (s.topic) {
    case 'own':
      return ['devices', dev, s.channel];
    case 'own-deep':
      return ['devices', dev, s.channel, 'x', 'y'];
    case 'own-root':
      return ['devices', dev];
    case 'other':
      return ['devices', other, s.channel];
    case 'broadcast':
      return ['broadcast', s.channel];
    case 'dollar':
      return [s.channel.length % 2 ? '$SYS' : '$edge', s.channel];
    case 'plus':
      return ['devices', dev, '+'];
    case 'hash':
      return ['devices', dev, '#'];
    case 'empty-level':
      return ['devices', dev, '', s.channel];
    case 'trailing':
      return ['devices', dev, s.channel, ''];
    case 'long':
      return ['devices', dev, 'l'.repeat(s.long)];
    case 'control':
      return ['devices', dev, `a\u0001${s.channel}`];
    case 'slash':
      return ['devices', dev, `${s.channel}/z`];
    case 'nonchar':
      return ['devices', dev, `n\ufffe${s.channel}`];
    case 'none':
      return [];
  }
}

function queryOf(s: RequestSeed, lane: number, ctx: Context): string[] {
  const dev = DEVICES[lane]!;
  const other = DEVICES[(lane + 1) % LANES]!;
  const tok = ctx.tokens[dev]!;
  const q: string[] = [];
  switch (s.auth) {
    case 'ok':
      q.push(`d=${dev}`, `k=${tok}`);
      break;
    case 'wrong-token':
      q.push(`d=${dev}`, `k=${tok.slice(0, -1)}${tok.endsWith('A') ? 'B' : 'A'}`);
      break;
    case 'no-token':
      q.push(`d=${dev}`);
      break;
    case 'unknown':
      q.push('d=ghost', `k=${tok}`);
      break;
    case 'nothing':
      break;
    case 'other-ok':
      q.push(`d=${other}`, `k=${ctx.tokens[other]!}`);
      break;
    case 'dup-k':
      q.push(`d=${dev}`, 'k=wrong', `k=${tok}`);
      break;
    case 'dup-d':
      q.push(`d=${dev}`, `d=${other}`, `k=${tok}`);
      break;
  }
  if (s.retain) q.push('r=1');
  return q;
}

function render(a: Action, lane: number, k: number, ctx: Context): Buffer {
  const s = a.seed;
  let buf: Buffer;
  switch (s.kind) {
    case 'random':
      buf = Buffer.from(s.bytes);
      // Half of them with a plausible first byte, so they get past the version check.
      if (s.header && buf.length > 0) buf[0] = 0x40 | (buf[0]! & 0x3f);
      break;
    case 'empty':
      buf = encodeCoap({ type: s.type, code: 0, mid: k, token: Buffer.alloc(0), options: [] });
      break;
    case 'response':
      buf = encodeCoap({
        type: s.type,
        code: s.code,
        mid: k,
        token: tokenFor(k, s.tokenLength),
        options: [],
        payload: Buffer.from('a response nobody asked for'),
      });
      break;
    case 'request': {
      const options: CoapOption[] = [];
      const path =
        s.target === 'core'
          ? ['.well-known', 'core']
          : s.target === 'other'
            ? ['other', s.channel]
            : s.target === 'root'
              ? []
              : ['ps', ...topicLevels(s, lane)];
      for (const p of path) options.push({ number: OPT.uriPath, value: Buffer.from(p) });
      for (const q of queryOf(s, lane, ctx)) options.push({ number: OPT.uriQuery, value: Buffer.from(q) });
      if (s.format === 'bytes3') options.push({ number: OPT.contentFormat, value: Buffer.from([0, 0, 50]) });
      else if (s.format !== null) options.push({ number: OPT.contentFormat, value: uintBytes(s.format) });
      if (s.observe !== null) options.push({ number: OPT.observe, value: uintBytes(s.observe) });
      let payload = s.code === 1 ? Buffer.alloc(0) : payloadOf(s, tagFor(lane, k));
      if (s.block1) {
        options.push({ number: OPT.block1, value: uintBytes((s.block1.num << 4) | (s.block1.more ? 8 : 0) | s.block1.szx) });
        if (s.block1.size1 !== null) options.push({ number: OPT.size1, value: uintBytes(s.block1.size1) });
        if (s.block1.more) payload = Buffer.concat([payload, Buffer.alloc(16 << s.block1.szx, 0x2e)]).subarray(0, 16 << s.block1.szx);
      }
      for (const e of s.extras) options.push({ number: e.number, value: Buffer.from(e.value) });
      buf = encodeCoap({ type: s.type, code: s.code, mid: k, token: tokenFor(k, s.tokenLength), options, payload });
      break;
    }
  }
  buf = mutate(buf, a.mutation);
  // Unique message ids and tokens per source port, whatever the mutation did.
  if (buf.length >= 4) {
    buf.writeUInt16BE(k, 2);
    const tkl = buf[0]! & 0x0f;
    if (tkl >= 2 && tkl <= 8 && buf.length >= 4 + tkl) tokenFor(k, tkl).copy(buf, 4);
  }
  return buf;
}

function mutate(input: Buffer, m: Mutation): Buffer {
  const buf = Buffer.from(input);
  const pos = (r: number): number => Math.min(buf.length - 1, Math.floor(r * buf.length));
  switch (m.kind) {
    case 'none':
      return buf;
    case 'flip':
      if (buf.length === 0) return buf;
      for (const [r, bit] of m.bits) buf[pos(r)]! ^= 1 << bit;
      return buf;
    case 'truncate':
      return buf.subarray(0, Math.floor(m.keep * buf.length));
    case 'extend':
      return Buffer.concat([buf, Buffer.from(m.bytes)]);
    case 'splice': {
      const at = Math.floor(m.at * buf.length);
      return Buffer.concat([buf.subarray(0, at), Buffer.from(m.bytes), buf.subarray(at)]);
    }
    case 'nibble': {
      const d = decodeCoap(buf);
      if (!d || d.options.length === 0) return buf;
      const o = d.options[m.option % d.options.length]!;
      buf[o.at] = m.which === 'delta' ? (m.value << 4) | (buf[o.at]! & 0x0f) : (buf[o.at]! & 0xf0) | m.value;
      return buf;
    }
    case 'tkl':
      if (buf.length > 0) buf[0] = (buf[0]! & 0xf0) | m.value;
      return buf;
    case 'code':
      if (buf.length > 1) buf[1] = m.value;
      return buf;
    case 'version':
      if (buf.length > 0) buf[0] = (m.value << 6) | (buf[0]! & 0x3f);
      return buf;
    case 'type':
      if (buf.length > 0) buf[0] = (buf[0]! & 0xcf) | (m.value << 4);
      return buf;
    case 'marker': {
      // A marker with nothing after it: the payload cut off, or a marker added to a message without one.
      const d = decodeCoap(buf);
      if (d && !d.formatError && d.payload.length > 0) return buf.subarray(0, buf.length - d.payload.length);
      return Buffer.concat([buf, Buffer.from([0xff])]);
    }
  }
}

// ---------------------------------------------------------------- the oracle

type Category =
  | 'framing'
  | 'empty and response messages'
  | 'unrecognized critical option'
  | 'option repeated or of the wrong length'
  | 'non-JSON payload as Content-Format 50'
  | 'request';

type Expect =
  | { kind: 'silence'; why: string; category: Category }
  | { kind: 'rst'; why: string; category: Category }
  | { kind: 'silence-or-rst'; why: string; category: Category }
  | {
      kind: 'answer';
      con: boolean;
      codes: ReadonlySet<string>;
      why: string;
      category: Category;
      /** No-Response (RFC 7967): the response may be left out */
      optional: boolean;
      /** a publish that goes up when answered 2.04: the tag its payload carries */
      up: string | null;
      /** 4.13 must carry Size1 */
      size1: boolean;
      /** the 2.05 of /.well-known/core: Content-Format 40 */
      core: boolean;
    };

/** Critical options the proxy recognizes (docs/coap.md, protocols.md: Uri-*, Accept, Block1, Block2). */
const RECOGNIZED_CRITICAL = new Set<number>([OPT.uriHost, OPT.uriPort, OPT.uriPath, OPT.uriQuery, OPT.accept, OPT.block2, OPT.block1]);
/** RFC 7252 Table 4, RFC 7641, RFC 7959, RFC 7967: the options that may not repeat. */
const NOT_REPEATABLE = new Set<number>([3, 5, 6, 7, 12, 14, 17, 23, 27, 28, 35, 39, 60, 258]);
/** RFC 7252 Table 4 and the others: value lengths. */
const LENGTHS: Readonly<Record<number, readonly [number, number]>> = {
  1: [0, 8],
  3: [1, 255],
  4: [1, 8],
  5: [0, 0],
  6: [0, 3],
  7: [0, 2],
  8: [0, 255],
  11: [0, 255],
  12: [0, 2],
  14: [0, 4],
  15: [0, 255],
  17: [0, 2],
  20: [0, 255],
  23: [0, 3],
  27: [0, 3],
  28: [0, 4],
  35: [1, 1034],
  39: [1, 255],
  60: [0, 4],
  258: [0, 1],
};
const UNSAFE_CODE_POINT = /[\p{Cc}\p{Noncharacter_Code_Point}]/u;

function judge(raw: Buffer, lane: number, ctx: Context): Expect {
  const d = decodeCoap(raw);
  if (!d) return { kind: 'silence', why: 'no 4-byte header', category: 'framing' };
  if (d.version !== 1) return { kind: 'silence', why: `version ${d.version}`, category: 'framing' };
  const con = d.type === 'con';
  const reject = (why: string, category: Category): Expect => (con ? { kind: 'rst', why, category } : { kind: 'silence', why, category });
  if (d.formatError) return reject(d.formatError, 'framing');
  const cls = d.code >> 5;
  if (cls === 1 || cls === 6 || cls === 7) return reject(`reserved code class ${cls}`, 'framing');
  if (d.type === 'ack' || d.type === 'rst')
    return { kind: 'silence', why: `an ${d.type} matching nothing`, category: 'empty and response messages' };
  if (d.code === 0) return reject('an Empty message (a ping when confirmable)', 'empty and response messages');
  if (cls !== 0) {
    return con
      ? { kind: 'rst', why: 'a response nobody asked for', category: 'empty and response messages' }
      : { kind: 'silence-or-rst', why: 'a response nobody asked for', category: 'empty and response messages' };
  }
  return judgeRequest(d, lane, ctx);
}

function judgeRequest(d: Decoded, lane: number, ctx: Context): Expect {
  const con = d.type === 'con';
  // Which occurrences count (RFC 7252 §5.4.1, §5.4.3, §5.4.5), and which make the request unrecognizable.
  const seen = new Map<number, number>();
  const effective: CoapOption[] = [];
  let unknownCritical: number | null = null;
  let badKnownCritical: number | null = null;
  let lenient = false;
  let ignoredElective = false;
  /** docs/coap.md answers a Block option longer than 3 bytes 4.00, RFC 7252 §5.4.3 4.02: either is taken */
  let blockTooLong = false;
  for (const o of d.options) {
    const n = seen.get(o.number) ?? 0;
    seen.set(o.number, n + 1);
    const range = LENGTHS[o.number];
    const outOfRange = range !== undefined && (o.value.length < range[0] || o.value.length > range[1]);
    const supernumerary = n >= 1 && NOT_REPEATABLE.has(o.number);
    const critical = o.number % 2 === 1;
    if (o.number > 65535) lenient = true;
    if (critical && !RECOGNIZED_CRITICAL.has(o.number)) unknownCritical ??= o.number;
    else if (critical && (outOfRange || supernumerary)) {
      badKnownCritical ??= o.number;
      if ((o.number === OPT.block1 || o.number === OPT.block2) && outOfRange && !supernumerary) blockTooLong = true;
    } else if (!outOfRange && !supernumerary) effective.push(o);
    else ignoredElective = true;
  }
  if (unknownCritical !== null || badKnownCritical !== null) {
    const category: Category = unknownCritical !== null ? 'unrecognized critical option' : 'option repeated or of the wrong length';
    const why = `critical option ${unknownCritical ?? badKnownCritical} not recognized`;
    if (!con) return { kind: 'silence-or-rst', why, category };
    const codes = new Set(['4.02']);
    if (blockTooLong && unknownCritical === null) codes.add('4.00');
    // RFC 7252 §5.7.2: an endpoint that is no proxy may answer Proxy-Uri and Proxy-Scheme with 5.05.
    if (seen.has(OPT.proxyUri) || seen.has(OPT.proxyScheme)) codes.add('5.05');
    return { kind: 'answer', con, codes, why, category, optional: false, up: null, size1: false, core: false };
  }
  const values = (n: number): Buffer[] => effective.filter((o) => o.number === n).map((o) => o.value);
  const first = (n: number): Buffer | undefined => values(n)[0];
  const pathBytes = values(OPT.uriPath);
  const queryBytes = values(OPT.uriQuery);
  // Strings in options are UTF-8 (RFC 7252 §3.2); what an invalid one means is not written anywhere.
  if ([...pathBytes, ...queryBytes].some((b) => !isUtf8(b))) lenient = true;
  const path = pathBytes.map((b) => b.toString('utf8'));
  const query = new Map<string, string>();
  for (const q of queryBytes.map((b) => b.toString('utf8'))) {
    const eq = q.indexOf('=');
    const key = eq < 0 ? q : q.slice(0, eq);
    if (!query.has(key)) query.set(key, eq < 0 ? '' : q.slice(eq + 1));
  }
  const noResponse = first(OPT.noResponse);
  const accept = first(OPT.accept);
  const block1 = first(OPT.block1) !== undefined;
  const block2 = first(OPT.block2) !== undefined;
  const observe = first(OPT.observe);
  const method = codeString(d.code);
  const answer = (codes: Iterable<string>, why: string, extra: Partial<Extract<Expect, { kind: 'answer' }>> = {}): Expect => {
    const set = new Set(codes);
    if (lenient) for (const c of ['4.00', '4.02', '4.04']) set.add(c);
    return {
      kind: 'answer',
      con,
      codes: set,
      why,
      category: ignoredElective ? 'option repeated or of the wrong length' : 'request',
      optional: noResponse !== undefined,
      up: null,
      size1: set.has('4.13'),
      core: false,
      ...extra,
    };
  };

  if (path.length === 2 && path[0] === '.well-known' && path[1] === 'core') {
    if (method !== '0.01') return answer(['4.05'], 'only GET on /.well-known/core');
    const codes = ['2.05'];
    if (accept !== undefined && uintOf(accept) !== 40) codes.push('4.06');
    return answer(codes, 'discovery', { core: true });
  }
  if (path[0] !== 'ps' || path.length < 2) return answer(['4.04'], 'not under /ps');
  const errors = new Set<string>();
  const d0 = query.get('d');
  const k0 = query.get('k');
  const authOk = d0 !== undefined && d0 !== '' && k0 !== undefined && k0 !== '' && ctx.tokens[d0] === k0;
  if (!authOk) errors.add('4.01');
  const topic = path.slice(1).join('/');
  if (method !== '0.01' && method !== '0.02' && method !== '0.03') {
    errors.add('4.05');
    return answer(errors, `method ${method}`);
  }
  if (method === '0.01') {
    // Observe and Block2 are being built: a GET carrying them may be answered as the RFCs allow.
    if (observe !== undefined || block2) {
      if (!authOk) return answer(['4.01'], 'unauthenticated GET');
      const codes = ['2.05', '4.04', '4.00', '4.03'];
      if (block2) codes.push('4.02', '4.08');
      if (accept !== undefined) codes.push('4.06');
      return answer(codes, 'GET with Observe or Block2 (lenient)');
    }
    if (topic.includes('+') || topic.includes('#')) errors.add('4.00');
    // A topic no device could publish to: docs/coap.md says 4.00 for an invalid topic; that nothing is retained there is also true.
    if (topic === '' || Buffer.byteLength(topic, 'utf8') > MAX_TOPIC || UNSAFE_CODE_POINT.test(topic)) errors.add('4.00').add('4.04');
    if (authOk && !(topicMatches(`devices/${d0}/#`, topic) || topicMatches('broadcast/#', topic))) errors.add('4.03');
    if (errors.size > 0) return answer(errors, 'GET refused');
    const codes = ['2.05', '4.04'];
    if (accept !== undefined) codes.push('4.06');
    return answer(codes, 'GET of a retained message');
  }
  // POST or PUT: a publish.
  if (block1) {
    if (!authOk) return answer(['4.01'], 'unauthenticated block');
    return answer(['2.31', '2.04', '4.08', '4.13', '4.02', '4.00', '4.03', '4.15', '5.03'], 'Block1 (lenient while reassembly is built)');
  }
  const cfBytes = first(OPT.contentFormat);
  const cf = cfBytes === undefined ? null : uintOf(cfBytes);
  if (cf !== null && ![0, 42, 50, 60].includes(cf)) errors.add('4.15');
  const bytes = Buffer.byteLength(topic, 'utf8');
  const dollar = topic.startsWith('$');
  const topicBad = topic === '' || bytes > MAX_TOPIC || UNSAFE_CODE_POINT.test(topic) || topic.includes('+') || topic.includes('#');
  if (topicBad) errors.add('4.00');
  if (authOk && !topicBad && !dollar && !topicMatches(`devices/${d0}/#`, topic)) errors.add('4.03');
  const payload = d.payload;
  const tooLarge = payload.length > MAX_PAYLOAD;
  if (tooLarge) errors.add('4.13');
  let json = false;
  if (cf === 50 && !isJsonText(payload)) {
    errors.add('4.00');
    json = true;
  }
  const tags = tagsIn(payload.toString('latin1'));
  const codes = new Set(errors);
  if (cf === 0 && !isUtf8(payload)) codes.add('4.00'); // text that is not UTF-8: not written down
  if (cf === 60) codes.add('4.00'); // CBOR that may not be CBOR: not written down
  // A `$` topic is acknowledged and dropped (docs/message-model.md); whether its size is checked first is not written down.
  if (dollar && !topicBad && authOk) codes.add('2.04');
  if (errors.size === 0) codes.add('2.04');
  const base = answer(codes, errors.size > 0 ? `publish refused (${[...errors].join(' ')})` : 'a publish') as Extract<
    Expect,
    { kind: 'answer' }
  >;
  return {
    ...base,
    category: json && errors.size === 1 ? 'non-JSON payload as Content-Format 50' : base.category,
    up: errors.size === 0 && !dollar && tags.length === 1 ? tags[0]! : null,
  };
}

function isJsonText(b: Buffer): boolean {
  if (!isUtf8(b)) return false;
  let s = b.toString('utf8');
  if (s.charCodeAt(0) === 0xfeff) s = s.slice(1);
  try {
    JSON.parse(s);
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------- the lanes (one source port each)

interface Sent {
  k: number;
  raw: Buffer;
  expect: Expect;
  resend: Action['resend'];
  /** transmissions of these bytes */
  copies: number;
  /** ACKs and RSTs with its message id */
  acks: Buffer[];
  /** CON or NON messages from the proxy with its token, matched to it */
  responses: Buffer[];
  waiting: boolean;
  since: number;
}

function tokenHexOf(raw: Buffer): string | null {
  if (raw.length < 4) return null;
  const tkl = raw[0]! & 0x0f;
  return tkl <= 8 && raw.length >= 4 + tkl ? raw.subarray(4, 4 + tkl).toString('hex') : null;
}

const EMPTY_ACK = 0x60;

class Lane {
  readonly sent: Sent[] = [];
  readonly unmatched: string[] = [];
  notifications = 0;
  /** responses with a token of 0 or 1 bytes: counted, not matched */
  shortTokenResponses = 0;
  private readonly byMid = new Map<number, Sent>();
  private readonly byToken = new Map<string, Sent[]>();
  private readonly observing = new Set<string>();
  private outstanding = 0;
  private slot: (() => void) | null = null;

  private constructor(
    readonly lane: number,
    private readonly socket: Socket,
    private readonly port: number,
  ) {
    socket.on('message', (raw) => this.onDatagram(raw));
  }

  static async open(lane: number, port: number): Promise<Lane> {
    const socket = createSocket('udp4');
    await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', () => resolve()));
    return new Lane(lane, socket, port);
  }

  close(): void {
    this.socket.close();
  }

  private transmit(s: Sent): void {
    s.copies++;
    this.socket.send(s.raw, this.port, '127.0.0.1');
  }

  /** Sends one datagram, and waits while WINDOW of this lane's datagrams wait for an answer. */
  async send(k: number, raw: Buffer, expect: Expect, resend: Action['resend']): Promise<void> {
    const s: Sent = { k, raw, expect, resend, copies: 0, acks: [], responses: [], waiting: false, since: Date.now() };
    this.sent.push(s);
    if (raw.length >= 4) this.byMid.set(raw.readUInt16BE(2), s);
    const token = tokenHexOf(raw);
    if (token !== null) this.byToken.set(token, [...(this.byToken.get(token) ?? []), s]);
    this.transmit(s);
    if (resend === 'immediate' && this.expectsAck(s)) this.transmit(s);
    if (!this.complete(s)) this.wait(s);
    else if (resend === 'after' && this.expectsAck(s)) this.again(s);
    while (this.outstanding >= WINDOW) await new Promise<void>((resolve) => (this.slot = resolve));
  }

  private expectsAck(s: Sent): boolean {
    return s.expect.kind === 'rst' || (s.expect.kind === 'answer' && s.expect.con);
  }

  /** Whether the lane has all it waits for: an ACK-layer answer per transmission, and the response. */
  private complete(s: Sent): boolean {
    const e = s.expect;
    if (e.kind === 'silence' || e.kind === 'silence-or-rst') return true;
    if (e.kind === 'rst') return s.acks.length >= s.copies;
    const shortToken = (tokenHexOf(s.raw) ?? '').length < 4;
    if (!e.con) return e.optional || shortToken || s.responses.length > 0;
    if (s.acks.length < s.copies) return false;
    const first = s.acks[0]!;
    if (first[0] === 0x70 || first.length > 4 || first[1] !== 0) return true; // a reset, or a piggybacked response
    return e.optional || shortToken || s.responses.length > 0;
  }

  private wait(s: Sent): void {
    s.waiting = true;
    s.since = Date.now();
    this.outstanding++;
  }

  private settle(s: Sent): void {
    if (!s.waiting) return;
    s.waiting = false;
    this.outstanding--;
    if (s.resend === 'after' && s.copies === 1 && this.expectsAck(s)) this.again(s);
    if (this.outstanding < WINDOW && this.slot) {
      const go = this.slot;
      this.slot = null;
      go();
    }
  }

  /** A retransmission after the answer: same bytes, same message id. */
  private again(s: Sent): void {
    this.transmit(s);
    this.wait(s);
  }

  /** Stops waiting for answers older than ANSWER_MS (they are judged missing at the end). */
  sweep(now: number): void {
    for (const s of this.sent.slice(-WINDOW * 4)) if (s.waiting && now - s.since > ANSWER_MS) this.settle(s);
    for (const s of this.sent) if (s.waiting && now - s.since > ANSWER_MS) this.settle(s);
  }

  get waiting(): number {
    return this.outstanding;
  }

  private reply(type: 'ack' | 'rst', mid: number): void {
    this.socket.send(encodeCoap({ type, code: 0, mid, token: Buffer.alloc(0), options: [] }), this.port, '127.0.0.1');
  }

  private onDatagram(raw: Buffer): void {
    const d = decodeCoap(raw);
    if (!d || d.formatError || d.version !== 1) {
      this.unmatched.push(`an unreadable datagram from the proxy: ${raw.toString('hex').slice(0, 80)}`);
      return;
    }
    if (d.type === 'ack' || d.type === 'rst') {
      const s = this.byMid.get(d.mid);
      if (!s) {
        this.unmatched.push(`an ${d.type} for message id ${d.mid}, never sent: ${raw.toString('hex').slice(0, 80)}`);
        return;
      }
      s.acks.push(raw);
      if (d.code === 0x45 && d.token.length >= 2 && d.options.some((o) => o.number === OPT.observe))
        this.observing.add(d.token.toString('hex'));
      if (s.waiting && this.complete(s)) this.settle(s);
      return;
    }
    // A response of its own (a NON response, a separate response) or an Observe notification.
    const token = d.token.toString('hex');
    if (d.token.length < 2) {
      // Tokens of 0 and 1 bytes repeat within a lane: such a response cannot be told apart (see verify).
      if (d.type === 'con') this.reply('ack', d.mid);
      this.shortTokenResponses++;
      return;
    }
    const candidates = this.byToken.get(token) ?? [];
    // The request that waits for it, else the latest with that token (which expected none: judged in verify).
    const s = candidates.find((c) => this.wantsResponse(c, d.mid)) ?? (this.observing.has(token) ? undefined : candidates.at(-1));
    if (s) {
      if (d.type === 'con') this.reply('ack', d.mid);
      // A retransmission of a separate response has the same message id: it is not a second response.
      if (!s.responses.some((r) => r.readUInt16BE(2) === d.mid)) s.responses.push(raw);
      if (d.code === 0x45 && d.options.some((o) => o.number === OPT.observe)) this.observing.add(token);
      if (s.waiting && this.complete(s)) this.settle(s);
      return;
    }
    if (this.observing.has(token)) {
      // Reset ends the observation (RFC 7641 §3.6): the lane asked only to see that it works.
      this.notifications++;
      this.reply('rst', d.mid);
      return;
    }
    if (d.type === 'con') this.reply('rst', d.mid);
    this.unmatched.push(`a ${d.type} ${codeString(d.code)} with token ${token}, matching no request: ${raw.toString('hex').slice(0, 80)}`);
  }

  /** Whether a response with this message id is the one `s` waits for (or a retransmission of the one it had). */
  private wantsResponse(s: Sent, mid: number): boolean {
    const e = s.expect;
    if (e.kind !== 'answer') return false;
    if (s.responses.length > 0) return s.responses.some((r) => r.readUInt16BE(2) === mid);
    if (!e.con) return true;
    return s.acks.length === 0 || (s.acks[0]!.length === 4 && s.acks[0]![0] === EMPTY_ACK);
  }
}

/** What is wrong with the answers one datagram got, or null. */
function verify(s: Sent): string | null {
  const e = s.expect;
  const acks = s.acks;
  const mid = s.raw.length >= 4 ? s.raw.readUInt16BE(2) : -1;
  if (acks.some((a) => !a.equals(acks[0]!))) return `its ${acks.length} ACK-layer answers differ (RFC 7252 §4.5)`;
  switch (e.kind) {
    case 'silence':
      return acks.length + s.responses.length === 0 ? null : `expected silence, got ${describe(acks[0] ?? s.responses[0]!)}`;
    case 'silence-or-rst':
      if (s.responses.length > 0) return `expected silence or RST, got ${describe(s.responses[0]!)}`;
      return acks.every((a) => isRst(a, mid)) ? null : `expected silence or RST, got ${describe(acks[0]!)}`;
    case 'rst':
      if (s.responses.length > 0) return `expected RST, got ${describe(s.responses[0]!)}`;
      if (acks.length < s.copies) return `expected RST, got ${acks.length === 0 ? 'nothing' : `${acks.length} of ${s.copies}`}`;
      return acks.every((a) => isRst(a, mid)) ? null : `expected RST, got ${describe(acks[0]!)}`;
    case 'answer': {
      const token = tokenHexOf(s.raw);
      // A response to a token of 0 or 1 bytes is not matched to its request (counted in the lane).
      const shortToken = (token ?? '').length < 4;
      let res: Buffer | undefined;
      if (e.con) {
        if (acks.length < s.copies)
          return `expected ACK with ${[...e.codes].join('|')}, got ${acks.length} answers to ${s.copies} transmissions`;
        const a = decodeCoap(acks[0]!)!;
        if (a.type !== 'ack') return `expected ACK with ${[...e.codes].join('|')}, got ${describe(acks[0]!)}`;
        if (a.code === 0) {
          if (acks[0]!.length !== 4) return 'an empty ACK with bytes after the header';
          if (s.responses.length === 0)
            return e.optional || shortToken ? null : `an empty ACK and no separate response (${[...e.codes].join('|')})`;
          res = s.responses[0];
        } else {
          res = acks[0];
          if (s.responses.length > 0) return `a piggybacked response and a separate one: ${describe(s.responses[0]!)}`;
        }
      } else {
        if (acks.length > 0) return `an ACK-layer answer to a NON: ${describe(acks[0]!)}`;
        if (s.responses.length === 0) return e.optional || shortToken ? null : `no response (${[...e.codes].join('|')})`;
        if (s.responses.length > 1) return `${s.responses.length} responses`;
        res = s.responses[0];
      }
      const r = decodeCoap(res!)!;
      const code = codeString(r.code);
      if (!e.codes.has(code)) return `expected ${[...e.codes].join('|')}, got ${describe(res!)}`;
      if (r.token.toString('hex') !== token) return `the response's token ${r.token.toString('hex')} is not the request's ${token}`;
      if (r.code >= 0x80 && (r.payload.length === 0 || !isUtf8(r.payload))) return `${code} without a UTF-8 diagnostic payload`;
      if (code === '4.13' && e.size1) {
        const size1 = r.options.find((o) => o.number === OPT.size1);
        if (!size1 || uintOf(size1.value) !== MAX_PAYLOAD) return '4.13 without Size1 = limits.maxPayloadBytes';
      }
      if (e.core && code === '2.05') {
        const cf = r.options.find((o) => o.number === OPT.contentFormat);
        if (!cf || uintOf(cf.value) !== 40) return '/.well-known/core without Content-Format 40';
      }
      return null;
    }
  }
}

/** The code a datagram was answered with in the end (the separate response's after an empty ACK), or null. */
function finalCode(s: Sent): string | null {
  const a = s.acks[0] ? decodeCoap(s.acks[0]) : null;
  if (a && a.type === 'ack' && a.code !== 0) return codeString(a.code);
  const r = s.responses[0] ? decodeCoap(s.responses[0]) : null;
  return r ? codeString(r.code) : null;
}

function isRst(raw: Buffer, mid: number): boolean {
  return raw.length === 4 && raw[0] === 0x70 && raw[1] === 0 && raw.readUInt16BE(2) === mid;
}

function describe(raw: Buffer): string {
  const d = decodeCoap(raw);
  if (!d) return `${raw.length} bytes`;
  const payload = d.payload.length > 0 ? ` "${d.payload.toString('utf8').slice(0, 80)}"` : '';
  return `${d.type.toUpperCase()} ${codeString(d.code)}${payload}`;
}

// ---------------------------------------------------------------- the well-behaved device

interface Steady {
  sent(): number;
  /** publishes that needed more than one transmission */
  retransmitted(): number;
  answered: string[];
  errors: string[];
  stop(): Promise<void>;
}

/** Publishes `{"seq":n}` as a CON every few ms, one at a time (NSTART 1), retransmitting as RFC 7252 asks. */
function steadyDevice(client: CoapClient, token: string): Steady {
  let n = 0;
  let again = 0;
  let running = true;
  const answered: string[] = [];
  const errors: string[] = [];
  const loop = (async () => {
    while (running) {
      const seq = n++;
      try {
        const ex = await client.request({
          code: 'POST',
          path: `ps/devices/steady/seq?d=steady&k=${token}`,
          options: [{ number: OPT.contentFormat, value: Buffer.from([50]) }],
          payload: JSON.stringify({ seq }),
        });
        answered.push(codeString(ex.response.code));
        if (ex.transmissions > 1) again++;
        if (codeString(ex.response.code) !== '2.04') errors.push(`seq ${seq}: ${describe(ex.raw)}`);
      } catch (err) {
        errors.push(`seq ${seq}: ${(err as Error).message}`);
      }
      await sleep(3);
    }
  })();
  return {
    sent: () => n,
    retransmitted: () => again,
    answered,
    errors,
    stop: async () => {
      running = false;
      await loop;
    },
  };
}

// ---------------------------------------------------------------- the test

function table(m: Map<string, number>): string {
  return [...m.entries()]
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
}

function bump(m: Map<string, number>, k: string): void {
  m.set(k, (m.get(k) ?? 0) + 1);
}

// The answers the fuzz found wrong, one datagram each, so that each can be looked at alone.
t.test('single datagrams: RFC 7252 options and JSON payloads', async (t) => {
  const dir = t.testdir();
  const { url: cloudUrl, up } = await cloudFor(t, dir);
  const proxy = await startProxy(dir, { uplink: { url: cloudUrl } });
  t.teardown(() => proxy.stop());
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);
  const client = await CoapClient.open(coapPort(proxy));
  t.teardown(() => client.close());
  const text = (s: string): Buffer => Buffer.from(s);
  /** A publish with these options after its Uri-Path and Uri-Query; its answer (or null for none within 500 ms). */
  const answer = async (topic: string, options: CoapOption[], payload: Buffer, con = true): Promise<Decoded | null> => {
    const mid = client.nextMid();
    const token = Buffer.from([0xc0, mid >> 8, mid & 0xff]);
    client.expect(token);
    const path = topic.split('/').map((p) => ({ number: OPT.uriPath, value: text(p) }));
    client.send(
      encodeCoap({
        type: con ? 'con' : 'non',
        code: 'POST',
        mid,
        token,
        options: [{ number: OPT.uriPath, value: text('ps') }, ...path, ...options],
        payload,
      }),
    );
    const got = await eventually(`an answer on ${topic}`, () => client.received.find((r) => r.msg?.token.equals(token)), 500).catch(
      () => null,
    );
    return got?.msg ?? null;
  };
  const code = (d: Decoded | null): string => (d ? codeString(d.code) : 'nothing');

  await t.test('an unknown critical option is answered 4.02 (RFC 7252 §5.4.1), whatever its number', async (t) => {
    // 2049 and 2053 are the ones coap-packet has names for (OCF-Accept-Content-Format-Version, OCF-Content-Format-Version).
    for (const n of [9, 2049, 2053, 65001]) {
      t.equal(code(await answer(`single/crit-${n}`, [{ number: n, value: Buffer.from([1]) }], text('x'))), '4.02', `option ${n}`);
    }
    t.equal(
      code(await answer('single/crit-non', [{ number: 2049, value: Buffer.from([1]) }], text('x'), false)),
      'nothing',
      'NON: ignored',
    );
  });

  await t.test(
    'a non-repeatable critical option repeated, or of the wrong length, is answered 4.02 (RFC 7252 §5.4.3, §5.4.5)',
    async (t) => {
      const twice = (n: number, v: Buffer): CoapOption[] => [
        { number: n, value: v },
        { number: n, value: v },
      ];
      t.equal(code(await answer('single/host-twice', twice(OPT.uriHost, text('localhost')), text('x'))), '4.02', 'Uri-Host twice');
      t.equal(code(await answer('single/accept-twice', twice(OPT.accept, Buffer.from([50])), text('x'))), '4.02', 'Accept twice');
      t.equal(
        code(await answer('single/host-empty', [{ number: OPT.uriHost, value: Buffer.alloc(0) }], text('x'))),
        '4.02',
        'Uri-Host of 0 bytes',
      );
      t.equal(
        code(await answer('single/port-3', [{ number: OPT.uriPort, value: Buffer.from([1, 2, 3]) }], text('x'))),
        '4.02',
        'Uri-Port of 3 bytes',
      );
      t.equal(
        code(await answer('single/accept-3', [{ number: OPT.accept, value: Buffer.from([0, 0, 50]) }], text('x'))),
        '4.02',
        'Accept of 3 bytes',
      );
      t.equal(
        code(await answer('single/query-300', [{ number: OPT.uriQuery, value: Buffer.alloc(300, 0x71) }], text('x'))),
        '4.02',
        'Uri-Query of 300 bytes',
      );
    },
  );

  await t.test('an elective option repeated or of the wrong length is ignored (RFC 7252 §5.4.3, §5.4.5)', async (t) => {
    const cf = (v: number[]): CoapOption => ({ number: OPT.contentFormat, value: Buffer.from(v) });
    t.equal(
      code(await answer('single/cf-twice', [cf([]), cf([99])], text('first wins'))),
      '2.04',
      'Content-Format 0, then 99: the second is ignored',
    );
    t.equal(code(await answer('single/cf-3', [cf([0, 0, 50])], text('not json'))), '2.04', 'a Content-Format of 3 bytes is ignored');
    const env = await eventually('single/cf-3 at the cloud', () => up.messages.find((m) => m.topic.endsWith('/single/cf-3')));
    t.match(env?.payload.toString(), /"contentType":"text","payload":"not json"/, 'the type sniffed, as without the option');
  });

  await t.test(
    'a Content-Format 50 publish that is not JSON text is a malformed request (4.00), and nothing invalid goes up',
    async (t) => {
      const cf50 = [{ number: OPT.contentFormat, value: Buffer.from([50]) }];
      t.equal(code(await answer('single/json-bad', cf50, text('{"t":'))), '4.00', 'JSON cut short');
      t.equal(code(await answer('single/json-empty', cf50, Buffer.alloc(0))), '4.00', 'no payload');
      t.equal(code(await answer('single/json-bytes', cf50, Buffer.from([0xff, 0xfe, 0x00]))), '4.00', 'not UTF-8');
      t.equal(code(await answer('single/json-non', cf50, text('nope'), false)), '4.00', 'NON: a NON 4.00');
      t.equal(code(await answer('single/json-good', cf50, text('{"ok":true}'))), '2.04', 'JSON text: 2.04');
      await eventually('single/json-good at the cloud', () => up.messages.some((m) => m.topic.endsWith('/single/json-good')));
      const bad = up.messages.filter((m) => {
        if (m.topic === 'edge/test-edge/status') return false;
        try {
          JSON.parse(m.payload.toString());
          return false;
        } catch {
          return true;
        }
      });
      t.same(
        bad.map((m) => m.payload.toString().slice(0, 200)),
        [],
        'every message at the cloud is a JSON envelope',
      );
    },
  );
});

t.test(`${DATAGRAMS} random and mutated datagrams against CoAP in token mode (seed ${SEED})`, async (t) => {
  t.comment(`fuzz seed ${SEED} (set FUZZ_SEED to run another, or this one again)`);
  const started = Date.now();
  const dir = t.testdir();
  const { url: cloudUrl, up } = await cloudFor(t, dir);
  const devicesFile = join(dir, 'devices.yaml');
  const tokens = writeRegistry(
    devicesFile,
    [...DEVICES, 'steady'].map((id) => ({ id })),
  );
  const proxy: ProxyProcess = await startProxy(dir, {
    auth: { mode: 'token' },
    devicesFile,
    uplink: { url: cloudUrl },
    limits: { maxPayloadBytes: MAX_PAYLOAD, maxTopicBytes: MAX_TOPIC },
    log: { level: 'info' },
  });
  t.teardown(() => proxy.stop());
  let exitCode: number | null | 'running' = 'running';
  void proxy.exited.then((code) => (exitCode = code));
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);
  const port = coapPort(proxy);
  const ctx: Context = { tokens };

  // Generated before anything is sent: the same seed, the same datagrams.
  const t0 = Date.now();
  const actions = fc.sample(action, { seed: SEED, numRuns: DATAGRAMS });
  t.comment(`${actions.length} datagrams generated in ${Date.now() - t0} ms`);

  const steadyClient = await CoapClient.open(port, { keep: false });
  t.teardown(() => steadyClient.close());
  const steady = steadyDevice(steadyClient, tokens.steady!);
  t.teardown(() => steady.stop());
  await eventually('the steady device under way', () => steady.answered.length >= 20);

  const memory = { heap0: 0, rss0: 0, heapMax: 0, rssMax: 0 };
  const sampleMemory = async (): Promise<void> => {
    const heap = await proxy.metric('nodejs_heap_size_used_bytes');
    const rss = await proxy.metric('process_resident_memory_bytes');
    memory.heapMax = Math.max(memory.heapMax, heap);
    memory.rssMax = Math.max(memory.rssMax, rss);
  };
  memory.heap0 = await proxy.metric('nodejs_heap_size_used_bytes');
  memory.rss0 = await proxy.metric('process_resident_memory_bytes');
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      await sampleMemory().catch(() => {});
      await sleep(1_000);
    }
  })();

  const lanes = await Promise.all(DEVICES.map((_, i) => Lane.open(i, port)));
  t.teardown(() => lanes.forEach((l) => l.close()));
  const sweeper = setInterval(() => lanes.forEach((l) => l.sweep(Date.now())), 250);
  t.teardown(() => clearInterval(sweeper));

  t.comment(`set up in ${Date.now() - started} ms`);
  const fuzzStarted = Date.now();
  let total = 0;
  const pace = async (): Promise<void> => {
    total++;
    const ahead = fuzzStarted + (total / RATE) * 1000 - Date.now();
    if (ahead > 5) await sleep(ahead);
  };
  const kinds = new Map<string, number>();
  await Promise.all(
    lanes.map(async (lane) => {
      for (let i = lane.lane, k = 0; i < actions.length; i += LANES, k++) {
        const a = actions[i]!;
        const raw = render(a, lane.lane, k, ctx);
        const expect = judge(raw, lane.lane, ctx);
        bump(kinds, `${expect.kind === 'answer' ? (expect.con ? 'CON request' : 'NON request') : expect.kind} (${expect.category})`);
        await lane.send(k, raw, expect, a.resend);
        await pace();
      }
    }),
  );
  const sendMs = Date.now() - fuzzStarted;
  const phase = (what: string, since: number): void => t.comment(`${what}: ${Date.now() - since} ms`);
  const tAnswers = Date.now();
  await eventually('every answer in', () => lanes.every((l) => l.waiting === 0), ANSWER_MS + 5_000).catch(() => {});
  phase('the last answers', tAnswers);
  await sleep(1_000); // anything the proxy still sends now is judged too
  const stillRunning = steady.sent();
  await sleep(300);
  await steady.stop();
  sampling = false;
  await sampler;
  await sampleMemory();
  const fuzzMs = Date.now() - fuzzStarted;

  // ---- every datagram's answer
  const problems = new Map<Category | 'answers to nothing', string[]>();
  const answered = new Map<string, number>();
  const expectedUp = new Map<string, Sent>();
  const refusedTags = new Map<string, Sent>();
  let copies = 0;
  let shortTokenAnswerable = 0;
  for (const lane of lanes) {
    for (const s of lane.sent) {
      copies += s.copies;
      if (s.expect.kind === 'answer' && (tokenHexOf(s.raw) ?? '').length < 4) shortTokenAnswerable += s.copies;
      const problem = verify(s);
      const code = finalCode(s);
      bump(answered, code ?? (s.acks[0] && isRst(s.acks[0], s.raw.readUInt16BE(2)) ? 'RST' : 'nothing'));
      if (problem) {
        const list = problems.get(s.expect.category) ?? [];
        list.push(`${problem}; ${s.expect.why}; lane ${lane.lane} #${s.k} sent ${s.copies}x: ${s.raw.toString('hex').slice(0, 160)}`);
        problems.set(s.expect.category, list);
      }
      const tags = s.raw.length >= 4 ? tagsIn(s.raw.toString('latin1')) : [];
      if (s.expect.kind === 'answer' && s.expect.up !== null && code === '2.04') expectedUp.set(s.expect.up, s);
      else if (code !== null && code >= '4.00') for (const tag of tags) refusedTags.set(tag, s);
    }
    if (lane.unmatched.length > 0) problems.set('answers to nothing', [...(problems.get('answers to nothing') ?? []), ...lane.unmatched]);
  }
  t.comment(`sent ${copies} datagrams (${DATAGRAMS} distinct) in ${sendMs} ms; the run took ${fuzzMs} ms`);
  t.comment(`judged: ${table(kinds)}`);
  t.comment(`answers: ${table(answered)}; Observe notifications reset: ${lanes.reduce((n, l) => n + l.notifications, 0)}`);
  const duplicates = await proxy.metric('edge_coap_exchanges_total', 'event="duplicate"');
  const evicted = await proxy.metric('edge_coap_exchanges_total', 'event="evicted"');
  const separate = await proxy.metric('edge_coap_exchanges_total', 'event="separate_response"');
  t.comment(`proxy counters: ${duplicates} duplicates, ${evicted} exchanges evicted, ${separate} separate responses`);
  t.equal(copies >= DATAGRAMS, true, `${DATAGRAMS} datagrams sent`);
  const shortTokenResponses = lanes.reduce((n, l) => n + l.shortTokenResponses, 0);
  t.ok(
    shortTokenResponses <= shortTokenAnswerable,
    `responses to tokens of 0 or 1 bytes (${shortTokenResponses}) no more than the requests that may have one (${shortTokenAnswerable})`,
  );
  for (const category of [
    'framing',
    'empty and response messages',
    'unrecognized critical option',
    'option repeated or of the wrong length',
    'non-JSON payload as Content-Format 50',
    'request',
    'answers to nothing',
  ] as const) {
    const list = problems.get(category) ?? [];
    if (list.length > 0) {
      const kinds = new Map<string, number>();
      for (const p of list) bump(kinds, p.replace(/ lane \d+ #\d+ sent .*$/, '').replace(/"[^"]*"/g, '"…"'));
      t.comment(
        `${category}: ${[...kinds.entries()]
          .sort((a, b) => b[1] - a[1])
          .slice(0, 12)
          .map(([k, n]) => `\n    ${n} × ${k}`)
          .join('')}`,
      );
    }
    t.same(list.slice(0, 8), [], `${category}: every datagram answered as RFC 7252 and docs/coap.md say (${list.length} problems)`);
  }

  // ---- the cloud: the steady device's messages once each, every fuzz publish answered 2.04 once, nothing refused
  type Envelope = { topic: string; deviceId: string; payload: unknown; contentType: string };
  const atCloud = new Map<string, number>();
  const steadyAt = new Map<number, number>();
  const notJsonExamples: string[] = [];
  let notJson = 0;
  let envelopes = 0;
  let read = 0;
  /** Reads what arrived at the cloud since the last call: tags (also inside base64 payloads) and steady sequence numbers. */
  const readCloud = (): void => {
    for (; read < up.messages.length; read++) {
      const m = up.messages[read]!;
      if (m.topic === 'edge/test-edge/status') continue;
      let e: Envelope;
      try {
        e = JSON.parse(m.payload.toString()) as Envelope;
      } catch {
        notJson++;
        if (notJsonExamples.length < 5) notJsonExamples.push(m.payload.toString('utf8').slice(0, 300));
        for (const tag of new Set(tagsIn(m.payload.toString('latin1')))) bump(atCloud, tag);
        continue;
      }
      envelopes++;
      if (e.topic === 'devices/steady/seq') {
        const seq = (e.payload as { seq: number }).seq;
        steadyAt.set(seq, (steadyAt.get(seq) ?? 0) + 1);
        continue;
      }
      const text =
        typeof e.payload === 'string' ? e.payload + Buffer.from(e.payload, 'base64').toString('latin1') : JSON.stringify(e.payload);
      for (const tag of new Set(tagsIn(text))) bump(atCloud, tag);
    }
  };
  const tCloud = Date.now();
  await eventually(
    'every fuzz publish and steady message at the cloud',
    () => {
      readCloud();
      return steadyAt.size >= steady.sent() && [...expectedUp.keys()].every((tag) => atCloud.has(tag));
    },
    30_000,
  ).catch(() => {});
  phase('the cloud', tCloud);
  await sleep(500); // a duplicate would come now
  readCloud();
  const missing = [...expectedUp.entries()].filter(([tag]) => !atCloud.has(tag)).map(([tag, s]) => `${tag}: ${s.raw.toString('hex')}`);
  const twice = [...atCloud.entries()].filter(([, n]) => n > 1).map(([tag]) => tag);
  const refusedUp = [...refusedTags.keys()].filter((tag) => atCloud.has(tag));
  t.comment(`cloud: ${envelopes} envelopes, ${expectedUp.size} fuzz publishes answered 2.04, ${atCloud.size} tags seen`);
  t.same(notJsonExamples, [], `every message at the cloud is a JSON envelope (${notJson} are not)`);
  t.same(missing.slice(0, 10), [], `every fuzz publish answered 2.04 reached the cloud (${missing.length} missing)`);
  t.same(twice.slice(0, 10), [], `no fuzz publish reached the cloud twice (${twice.length})`);
  t.same(refusedUp.slice(0, 10), [], `no publish answered with an error reached the cloud (${refusedUp.length})`);

  // ---- the well-behaved device
  t.comment(
    `steady device: ${steady.sent()} publishes, ${steady.answered.length} answered, ${steady.retransmitted()} after a retransmission`,
  );
  t.same(steady.errors.slice(0, 10), [], `the steady device got 2.04 for every publish (${steady.errors.length} did not)`);
  t.ok(stillRunning > 200, `it kept publishing throughout (${stillRunning})`);
  const steadyMissing = Array.from({ length: steady.sent() }, (_, i) => i).filter((i) => !steadyAt.has(i));
  const steadyTwice = [...steadyAt.entries()].filter(([, n]) => n > 1).map(([seq]) => seq);
  t.same(steadyMissing.slice(0, 10), [], `each steady publish reached the cloud (${steadyMissing.length} missing)`);
  t.same(steadyTwice.slice(0, 10), [], `... exactly once (${steadyTwice.length} twice)`);

  // ---- the proxy itself
  t.equal(exitCode, 'running', 'the proxy did not exit');
  const health = await fetch(`http://127.0.0.1:${proxy.ports.admin}/healthz`);
  t.equal(health.status, 200, '/healthz answers 200');
  t.same(await health.json(), { status: 'ok' });
  const after = await CoapClient.open(port);
  t.teardown(() => after.close());
  const last = await after.request({ code: 'POST', path: `ps/devices/steady/after?d=steady&k=${tokens.steady!}`, payload: 'still here' });
  t.equal(codeString(last.response.code), '2.04', 'a publish after the fuzz is answered 2.04');
  const fatal = proxy.logs.filter((l) => Number(l.level) >= 50 || /uncaught|unhandled/i.test(String(l.msg)));
  t.same(fatal.slice(0, 5), [], 'no error or fatal line in its log');
  t.notMatch(proxy.output(), /uncaughtException|UnhandledPromiseRejection|\n\s+at .+\(.+:\d+:\d+\)/, 'no stack trace on its output');
  const mib = (n: number): string => `${(n / 1024 / 1024).toFixed(1)} MiB`;
  t.comment(
    `proxy memory: heap ${mib(memory.heap0)} before, ${mib(memory.heapMax)} at most; RSS ${mib(memory.rss0)} before, ${mib(memory.rssMax)} at most`,
  );
  t.ok(memory.heapMax - memory.heap0 <= HEAP_GROWTH_LIMIT, `the heap grew by at most ${mib(HEAP_GROWTH_LIMIT)}`);
  t.comment(`the whole test: ${Date.now() - started} ms`);
});
