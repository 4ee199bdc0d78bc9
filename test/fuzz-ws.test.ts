// Bad input on the WebSocket endpoint (issue 11, "Bad input"): 10,000 random and mutated frames made
// by fast-check from a fixed seed (FUZZ_SEED overrides it; it is printed), against /ws and /mqtt of
// one proxy process in open mode, while well-behaved devices on MQTT over TCP, MQTT over /mqtt and
// /ws publish numbered QoS 1 messages to a real cloud Mosquitto and to a local subscriber.
//
// /ws: an oracle written from the contract (../shared/spec/protocols.md) and docs/websocket.md, not
// from the proxy's code, judges every frame from its bytes alone: an `error` frame and its codes, an
// ack, a pong, nothing (qos 0), or the close 1009 (a frame over the documented limit). A frame whose
// answer the documents leave open (base64 without padding, say) is not sent, and counted. Frames are
// pipelined; ids are unique per frame, so each answer is matched to its frame. Refusals are counted
// per connection: with http.errorWindowSeconds far longer than the run, the http.maxErrors-th one must
// close the connection with 1008, after its error frame. Every frame the proxy sends must be one JSON
// object of the protocol. A topic holding a control character or a Unicode non-character is taken as
// invalid (MQTT 3.1.1 §1.5.3; the cloud Mosquitto closes the uplink for one): see unsafeForMqtt.
//
// /mqtt: random bytes, valid packets (mqtt-packet) and mutated ones (bits flipped, truncated,
// extended, spliced), in binary messages after a CONNECT or instead of one. A connection may be closed
// only with a documented code; a packet that is malformed from its first bytes (a reserved packet
// type, a Remaining Length of five bytes), a text frame, an oversized message or packet must close it
// with 1002, 1003 or 1009.
//
// Throughout, nothing may happen to the other devices: each of their messages arrives once, at the
// cloud and locally, and none of them is disconnected; the proxy answers /healthz, never exits, and
// logs nothing fatal.
import t from 'tap';
import fc from 'fast-check';
import { WebSocket } from 'ws';
import mqtt, { type MqttClient } from 'mqtt';
import mqttPacket, { type Packet } from 'mqtt-packet';
import { cloudFor } from './helpers/mosquitto.js';
import { startProxy, type ProxyProcess } from './helpers/proxy.js';
import { collect, connectClient, type Collected } from './helpers/clients.js';
import { connectPacket } from './helpers/raw.js';
import { eventually, sleep } from './helpers/ports.js';

const SEED = process.env.FUZZ_SEED !== undefined && process.env.FUZZ_SEED !== '' ? Number(process.env.FUZZ_SEED) : 0x11_2024;
if (!Number.isInteger(SEED)) throw new Error(`FUZZ_SEED is an integer, not ${process.env.FUZZ_SEED}`);
const WS_FRAMES = 7_000;
const MQTT_FRAMES = 3_000;

const MAX_PAYLOAD = 4096;
const MAX_TOPIC = 256;
/** refusals before the 1008 close; the window is longer than the run, so each connection closes at exactly this many */
const MAX_ERRORS = 250;
/** docs/websocket.md: a frame over 6 × (limits.maxPayloadBytes + limits.maxTopicBytes) + 4 KiB is closed with 1009 */
const MAX_FRAME = 6 * (MAX_PAYLOAD + MAX_TOPIC) + 4096;
/** docs/websocket.md: a /ws connection holds at most 1,000 subscriptions */
const MAX_SUBSCRIPTIONS = 1_000;
/** docs/websocket.md (/mqtt): a message holds up to twice the largest packet, limits.maxPayloadBytes plus the topic */
const MQTT_OVERSIZE_MESSAGE = 2 * (MAX_PAYLOAD + MAX_TOPIC + 64);
/**
 * /mqtt closes (docs/websocket.md, src/adapters/mqtt/ws-stream.ts), and 1000 (ws-stream.ts CLOSE.normal)
 * where the broker ends a connection without an error: a second CONNECT, a first packet that is not a
 * CONNECT, a refused CONNECT after its CONNACK.
 */
const MQTT_CLOSES = new Set([1000, 1002, 1003, 1008, 1009]);
/** The contract's error codes. */
const CODES = new Set(['E_MALFORMED', 'E_TOO_LARGE', 'E_AUTH', 'E_ACL', 'E_RATE', 'E_CACHE_FULL', 'E_UNSUPPORTED']);

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Code = 'E_MALFORMED' | 'E_TOO_LARGE' | 'E_ACL' | 'E_UNSUPPORTED';
type Id = string | number;

// ---------------------------------------------------------------- generators

const LETTERS = [...'abcdefghijklmnopqrstuvwxyz0123456789'];
const word = fc.string({ unit: fc.constantFrom(...LETTERS), minLength: 1, maxLength: 6 });
/** Characters a topic or a string may hold that are not plain ASCII: controls, lone surrogates, non-characters, emoji... */
const oddChar = fc.oneof(
  fc.constantFrom(
    '\u00e9',
    '\u4e2d',
    '\u{1F600}',
    '\u200b',
    '\u202e',
    '\ufeff',
    '\ufffd',
    ' ',
    '"',
    '\\',
    '%',
    '*',
    '.',
    '\u0085',
    '\u00a0',
  ),
  fc.integer({ min: 0x01, max: 0x1f }).map((c) => String.fromCharCode(c)),
  fc.constantFrom('\ud800', '\udfff', '\ufffe', '\uffff', '\u007f'),
  fc.integer({ min: 0x80, max: 0x10ffff }).map((c) => String.fromCodePoint(c)),
);
const wildChar = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...LETTERS) },
  { weight: 1, arbitrary: fc.constantFrom('/', '+', '#', '$', '\u0000', '{', '}', '[', ']', ':', ',') },
  { weight: 3, arbitrary: oddChar },
);
const wildString = (maxLength: number): fc.Arbitrary<string> => fc.string({ unit: wildChar, maxLength });

/** Topics a device may publish to: not empty, no wildcard, no NUL, at most 256 bytes, not `$` (some with odd characters). */
const pubTopic: fc.Arbitrary<string> = fc
  .array(
    fc.oneof(
      { weight: 8, arbitrary: word },
      { weight: 2, arbitrary: fc.string({ unit: oddChar, minLength: 1, maxLength: 4 }) },
      { weight: 1, arbitrary: fc.constant('') },
    ),
    { minLength: 1, maxLength: 4 },
  )
  .map((levels) => `fz/${levels.join('/')}`);
/** Valid subscription filters, the reserved ones among them. */
const filter: fc.Arbitrary<string> = fc.oneof(
  { weight: 6, arbitrary: fc.array(fc.oneof(word, fc.constant('+')), { minLength: 1, maxLength: 3 }).map((l) => `fz/${l.join('/')}`) },
  {
    weight: 3,
    arbitrary: fc.array(fc.oneof(word, fc.constant('+')), { minLength: 0, maxLength: 3 }).map((l) => `fz/${[...l, '#'].join('/')}`),
  },
  { weight: 2, arbitrary: fc.constantFrom('#', '+', '+/#', '+/+', '$SYS/#', '$edge/#', '$edge', '$edge/x/+', 'fz/#', 'fz/\u00e9/+') },
);
/** Topics and filters that are wrong in some way, or right and odd. */
const weirdTopic: fc.Arbitrary<Json> = fc.oneof(
  fc.constantFrom('', '/', '//', '#', '+', 'fz/#/x', 'fz/a+', 'fz/+', 'fz/#', '$SYS/x', '$edge/x', '$', '$x', 'fz/\u0000', '\u0000', 'a b'),
  fc.integer({ min: MAX_TOPIC - 4, max: MAX_TOPIC + 300 }).map((n) => `fz/${'t'.repeat(n)}`),
  fc.integer({ min: 60, max: 120 }).map((n) => `fz/${'\u{1F600}'.repeat(n)}`),
  fc.integer({ min: 1_000, max: 20_000 }).map((n) => 'y'.repeat(n)),
  wildString(30),
  pubTopic,
  filter,
);
/** Any JSON value, for a field that should have been something else. */
const junk: fc.Arbitrary<Json> = fc.oneof(
  fc.constantFrom<Json>(null, true, false, 0, -1, 1.5, 1e300, -0, '', 'x', [], {}, ['pub'], { op: 'pub' }),
  fc.jsonValue({ maxDepth: 3 }) as fc.Arbitrary<Json>,
  wildString(20),
);
const payloadValue: fc.Arbitrary<Json> = fc.oneof(
  { weight: 3, arbitrary: fc.jsonValue({ maxDepth: 3 }) as fc.Arbitrary<Json> },
  { weight: 3, arbitrary: wildString(40) },
  { weight: 1, arbitrary: fc.constant('') },
  { weight: 2, arbitrary: fc.record({ seq: fc.nat(), text: wildString(20) }) },
);
const base64Body = fc.record({
  bytes: fc.uint8Array({ maxLength: 96 }),
  contentType: fc.constantFrom(undefined, 'binary', 'cbor'),
});

/** How a frame carries its id: valid ones are unique per frame (they hold its index), invalid ones are not echoed. */
type IdMode = 'none' | 'str' | 'num' | 'float' | 'long-ok' | 'unicode' | 'empty' | 'long-bad' | 'obj' | 'arr' | 'bool' | 'null';
const validIdMode: fc.Arbitrary<IdMode> = fc.oneof(
  { weight: 40, arbitrary: fc.constant<IdMode>('str') },
  { weight: 10, arbitrary: fc.constantFrom<IdMode>('num', 'float', 'long-ok', 'unicode') },
  { weight: 20, arbitrary: fc.constant<IdMode>('none') },
  { weight: 1, arbitrary: fc.constant<IdMode>('empty') },
);
const anyIdMode = fc.oneof(validIdMode, fc.constantFrom<IdMode>('long-bad', 'obj', 'arr', 'bool', 'null'));

function idFor(mode: IdMode, i: number): Json | undefined {
  switch (mode) {
    case 'none':
      return undefined;
    case 'str':
      return `f${i}`;
    case 'num':
      return 1_000_000 + i;
    case 'float':
      return i + 0.25;
    case 'long-ok':
      return `f${i}-`.padEnd(256, 'L');
    case 'unicode':
      return `f${i}-\u00fc\u{1F600}\ud800`;
    case 'empty':
      return '';
    case 'long-bad':
      return `f${i}-`.padEnd(257 + (i % 5_000), 'L');
    case 'obj':
      return { i };
    case 'arr':
      return [i];
    case 'bool':
      return true;
    case 'null':
      return null;
  }
}

/** A frame as an object, before its id: every op of the protocol. */
const validFrame: fc.Arbitrary<Record<string, Json | undefined>> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc
      .record({
        topic: fc.oneof({ weight: 9, arbitrary: pubTopic }, { weight: 1, arbitrary: fc.constantFrom('$SYS/fz', '$fz/x') }),
        qos: fc.constantFrom(0, 1, 1, 1, undefined),
        retain: fc.constantFrom(false, false, true, undefined),
        payload: payloadValue,
        b64: base64Body,
        binary: fc.nat(4),
      })
      .map(({ topic, qos, retain, payload, b64, binary }) =>
        binary === 0
          ? {
              op: 'pub',
              topic,
              qos,
              retain,
              payload: Buffer.from(b64.bytes).toString('base64'),
              encoding: 'base64',
              contentType: b64.contentType,
            }
          : { op: 'pub', topic, qos, retain, payload },
      ),
  },
  { weight: 2, arbitrary: filter.map((topic) => ({ op: 'sub', topic })) },
  { weight: 1, arbitrary: filter.map((topic) => ({ op: 'unsub', topic })) },
  { weight: 1, arbitrary: fc.constant({ op: 'ping' }) },
);

/** Deep nesting cannot be made as a value here (JSON.stringify would overflow): a marker string stands for it in the text. */
const DEEP_MARK = '\u0000deep\u0000';
type Deep = { depth: number; shape: 'arr' | 'obj' };
function deepText(d: Deep): string {
  return d.shape === 'arr' ? '['.repeat(d.depth) + ']'.repeat(d.depth) : '{"a":'.repeat(d.depth) + '1' + '}'.repeat(d.depth);
}
const deepArb: fc.Arbitrary<Deep> = fc.record({
  // ≤ 1,500 fits limits.maxPayloadBytes and must be carried; ≥ 2,100 does not, and deeper ones cannot be serialized at all.
  depth: fc.oneof(fc.integer({ min: 50, max: 1_500 }), fc.integer({ min: 2_100, max: 5_000 })),
  shape: fc.constantFrom<Deep['shape']>('arr', 'arr', 'obj'),
});

const FIELDS = ['op', 'topic', 'payload', 'qos', 'retain', 'id', 'encoding', 'contentType'];
type Mutation =
  | { m: 'drop'; key: string }
  | { m: 'set'; key: string; value: Json }
  | { m: 'topic'; value: Json }
  | { m: 'op'; value: Json }
  | { m: 'qos'; value: Json }
  | { m: 'retain'; value: Json }
  | { m: 'base64'; how: 'valid' | 'bad-char' | 'inner-pad' | 'length' | 'not-string'; bytes: Uint8Array; contentType: Json | undefined }
  | { m: 'encoding'; value: Json }
  | { m: 'junk-field'; key: string; value: Json }
  | { m: 'payload'; value: Json }
  | { m: 'deep'; key: string; deep: Deep }
  | { m: 'id'; mode: IdMode };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ m: fc.constant('drop' as const), key: fc.constantFrom(...FIELDS) }),
  fc.record({ m: fc.constant('set' as const), key: fc.constantFrom(...FIELDS), value: junk }),
  fc.record({ m: fc.constant('topic' as const), value: weirdTopic }),
  fc.record({
    m: fc.constant('op' as const),
    value: fc.oneof(
      fc.constantFrom<Json>('PUB', 'publish', 'Sub', 'subscribe', '', 'pong', 'ack', 'msg', 'error', 5, null, ['pub']),
      wildString(12),
    ),
  }),
  fc.record({ m: fc.constant('qos' as const), value: fc.constantFrom<Json>(2, -1, '1', 1.5, null, true, 1e300, 0, 1, 3, [1]) }),
  fc.record({ m: fc.constant('retain' as const), value: fc.constantFrom<Json>('yes', 1, 0, null, true, false, 'true') }),
  fc.record({
    m: fc.constant('base64' as const),
    how: fc.constantFrom('valid' as const, 'bad-char' as const, 'inner-pad' as const, 'length' as const, 'not-string' as const),
    bytes: fc.uint8Array({ minLength: 1, maxLength: 64 }),
    contentType: fc.constantFrom<Json | undefined>(undefined, 'binary', 'cbor', 'json', 'text', 5, null),
  }),
  fc.record({
    m: fc.constant('encoding' as const),
    value: fc.constantFrom<Json>('hex', 'BASE64', 'base-64', 'utf8', '', null, 64, ['base64']),
  }),
  fc.record({
    m: fc.constant('junk-field' as const),
    key: fc.oneof(fc.constantFrom('__proto__', 'constructor', 'toJSON', 'prototype', 'x', ''), wildString(8)),
    value: junk,
  }),
  fc.record({
    m: fc.constant('payload' as const),
    value: fc.oneof(
      payloadValue,
      fc.integer({ min: 100, max: 3_000 }).map((n) => '\u{1F600}'.repeat(n)),
    ),
  }),
  fc.record({ m: fc.constant('deep' as const), key: fc.constantFrom('payload', 'payload', 'topic', 'id', 'nested', 'op'), deep: deepArb }),
  fc.record({ m: fc.constant('id' as const), mode: anyIdMode }),
);

function mutate(frame: Record<string, Json | undefined>, mutations: Mutation[], i: number): Record<string, Json | undefined> {
  const f = { ...frame };
  for (const mu of mutations) {
    switch (mu.m) {
      case 'drop':
        delete f[mu.key];
        break;
      case 'set':
        f[mu.key] = mu.value;
        break;
      case 'topic':
      case 'op':
      case 'qos':
      case 'retain':
      case 'encoding':
      case 'payload':
        f[mu.m] = mu.value;
        break;
      case 'base64': {
        const good = Buffer.from(mu.bytes).toString('base64');
        const at = i % (good.length + 1);
        f.encoding = 'base64';
        f.contentType = mu.contentType;
        f.payload =
          mu.how === 'valid'
            ? good
            : mu.how === 'bad-char'
              ? good.slice(0, at) + '!*@ .\u00e9'[i % 6]! + good.slice(at)
              : mu.how === 'inner-pad'
                ? `${good.slice(0, 2)}=${good.slice(2)}${good.endsWith('=') ? '' : 'A'}`
                : mu.how === 'length'
                  ? `${good.replace(/=+$/, '')}${'AAAA'.slice(0, (5 - (good.replace(/=+$/, '').length % 4)) % 4)}`
                  : Array.from(mu.bytes);
        break;
      }
      case 'junk-field':
        f[mu.key] = mu.value;
        break;
      case 'deep':
        f[mu.key] = DEEP_MARK;
        break;
      case 'id':
        f.id = idFor(mu.mode, i);
        break;
    }
  }
  return f;
}

/** The frame's text; the first deep marker becomes the nesting it stands for. */
function frameText(f: Record<string, Json | undefined>, deep: Deep | null): string {
  const text = JSON.stringify(f);
  return deep ? text.replace(JSON.stringify(DEEP_MARK), deepText(deep)) : text;
}

type TextMutation =
  | { t: 'truncate'; at: number }
  | { t: 'insert'; at: number; s: string }
  | { t: 'delete'; at: number; n: number }
  | { t: 'dup'; at: number; n: number }
  | { t: 'wrap' }
  | { t: 'bom' }
  | { t: 'exponent' }
  | { t: 'single-quotes' }
  | { t: 'trailing-comma' }
  | { t: 'two-objects' };
const textMutation: fc.Arbitrary<TextMutation> = fc.oneof(
  fc.record({ t: fc.constant('truncate' as const), at: fc.double({ min: 0, max: 1, noNaN: true }) }),
  fc.record({ t: fc.constant('insert' as const), at: fc.double({ min: 0, max: 1, noNaN: true }), s: wildString(3) }),
  fc.record({ t: fc.constant('delete' as const), at: fc.double({ min: 0, max: 1, noNaN: true }), n: fc.integer({ min: 1, max: 4 }) }),
  fc.record({ t: fc.constant('dup' as const), at: fc.double({ min: 0, max: 1, noNaN: true }), n: fc.integer({ min: 1, max: 20 }) }),
  fc.constantFrom<TextMutation>(
    { t: 'wrap' },
    { t: 'bom' },
    { t: 'exponent' },
    { t: 'single-quotes' },
    { t: 'trailing-comma' },
    { t: 'two-objects' },
  ),
);

function mutateText(text: string, mu: TextMutation): string {
  const at = 'at' in mu ? Math.floor(mu.at * text.length) : 0;
  switch (mu.t) {
    case 'truncate':
      return text.slice(0, at);
    case 'insert':
      return text.slice(0, at) + mu.s + text.slice(at);
    case 'delete':
      return text.slice(0, at) + text.slice(at + mu.n);
    case 'dup':
      return text.slice(0, at + mu.n) + text.slice(at);
    case 'wrap':
      return `[${text}]`;
    case 'bom':
      return `\ufeff${text}`;
    case 'exponent':
      return text.replace(/\d+/, '1e999');
    case 'single-quotes':
      return text.replace(/"/g, "'");
    case 'trailing-comma':
      return text.replace(/}$/, ',}');
    case 'two-objects':
      return `${text}${text}`;
  }
}

/** Byte sequences that are never UTF-8 (a lone continuation, an overlong NUL, an encoded surrogate, a cut sequence, past U+10FFFF). */
const BAD_UTF8 = [
  [0xff],
  [0xfe],
  [0xc0, 0x80],
  [0xed, 0xa0, 0x80],
  [0xe2, 0x82],
  [0xf8, 0x88, 0x80, 0x80, 0x80],
  [0x80],
  [0xf4, 0x90, 0x80, 0x80],
];

interface WsFrame {
  kind: string;
  render(i: number): { data: Buffer; binary: boolean };
}

const text = (s: string): { data: Buffer; binary: boolean } => ({ data: Buffer.from(s, 'utf8'), binary: false });

const wsFrame: fc.Arbitrary<WsFrame> = fc.oneof(
  {
    weight: 300,
    arbitrary: fc.record({ f: validFrame, id: validIdMode }).map(({ f, id }): WsFrame => ({
      kind: `valid-${typeof f.op === 'string' ? f.op : '?'}`,
      render: (i) => text(JSON.stringify({ ...f, id: idFor(id, i) })),
    })),
  },
  {
    weight: 300,
    arbitrary: fc
      .record({ f: validFrame, id: validIdMode, mutations: fc.array(mutation, { minLength: 1, maxLength: 3 }) })
      .map(({ f, id, mutations }): WsFrame => {
        const deep = mutations.find((m): m is Extract<Mutation, { m: 'deep' }> => m.m === 'deep')?.deep ?? null;
        return {
          kind: `mutated-${mutations.map((m) => m.m).join('+')}`,
          render: (i) => text(frameText(mutate({ ...f, id: idFor(id, i) }, mutations, i), deep)),
        };
      }),
  },
  {
    weight: 120,
    arbitrary: fc
      .record({
        f: validFrame,
        id: validIdMode,
        mutations: fc.array(mutation, { maxLength: 2 }),
        textMutations: fc.array(textMutation, { minLength: 1, maxLength: 2 }),
      })
      .map(({ f, id, mutations, textMutations }): WsFrame => ({
        kind: `text-${textMutations.map((m) => m.t).join('+')}`,
        render: (i) => text(textMutations.reduce(mutateText, frameText(mutate({ ...f, id: idFor(id, i) }, mutations, i), null))),
      })),
  },
  {
    weight: 50,
    arbitrary: fc
      .record({ f: validFrame, id: validIdMode, at: fc.double({ min: 0, max: 1, noNaN: true }), bad: fc.constantFrom(...BAD_UTF8) })
      .map(({ f, id, at, bad }): WsFrame => ({
        kind: 'invalid-utf8',
        render: (i) => {
          const bytes = Buffer.from(JSON.stringify({ ...f, id: idFor(id, i) }));
          const cut = Math.floor(at * bytes.length);
          return { data: Buffer.concat([bytes.subarray(0, cut), Buffer.from(bad), bytes.subarray(cut)]), binary: false };
        },
      })),
  },
  {
    weight: 50,
    arbitrary: fc
      .oneof(
        fc.uint8Array({ maxLength: 200 }).map((b) => () => Buffer.from(b)),
        fc.record({ f: validFrame, id: validIdMode }).map(
          ({ f, id }) =>
            (i: number) =>
              Buffer.from(JSON.stringify({ ...f, id: idFor(id, i) })),
        ),
        fc.constant(() => Buffer.alloc(0)),
      )
      .map((make): WsFrame => ({ kind: 'binary', render: (i) => ({ data: make(i), binary: true }) })),
  },
  { weight: 10, arbitrary: fc.constant<WsFrame>({ kind: 'empty', render: () => text('') }) },
  {
    weight: 60,
    arbitrary: fc
      .oneof(
        wildString(60),
        fc.string({ unit: 'binary', maxLength: 40 }),
        fc.jsonValue({ maxDepth: 2 }).map((v) => JSON.stringify(v)),
      )
      .map((s): WsFrame => ({ kind: 'random-text', render: () => text(s) })),
  },
  {
    weight: 30,
    arbitrary: fc
      .uint8Array({ minLength: 1, maxLength: 200 })
      .map((b): WsFrame => ({ kind: 'random-bytes-as-text', render: () => ({ data: Buffer.from(b), binary: false }) })),
  },
  {
    weight: 30,
    arbitrary: fc
      .record({ deep: deepArb, where: fc.constantFrom('payload', 'top', 'junk'), id: validIdMode })
      .map(({ deep, where, id }): WsFrame => ({
        kind: `deep-${where}`,
        render: (i) => {
          if (where === 'top') return text(deepText(deep));
          const f = { op: 'pub', topic: 'fz/deep', qos: 1, id: idFor(id, i), payload: where === 'payload' ? DEEP_MARK : 1, x: DEEP_MARK };
          return text(frameText(f, deep));
        },
      })),
  },
  {
    weight: 40,
    arbitrary: fc
      .record({
        n: fc.oneof(
          fc.constantFrom(MAX_PAYLOAD - 1, MAX_PAYLOAD, MAX_PAYLOAD + 1),
          fc.integer({ min: MAX_PAYLOAD + 1, max: 4 * MAX_PAYLOAD }),
        ),
        how: fc.constantFrom('ascii', 'escaped', 'base64', 'emoji'),
        qos: fc.constantFrom(0, 1),
        id: validIdMode,
      })
      .map(({ n, how, qos, id }): WsFrame => ({
        kind: `size-${how}`,
        render: (i) => {
          // The payload's own size is n bytes; how it is written changes only the frame's.
          const payload =
            how === 'ascii'
              ? 'x'.repeat(n)
              : how === 'escaped'
                ? '\u0001'.repeat(Math.min(n, MAX_PAYLOAD + 700))
                : how === 'emoji'
                  ? '\u{1F600}'.repeat(Math.ceil(n / 4))
                  : Buffer.alloc(Math.min(n, 3 * MAX_PAYLOAD), 0xa5).toString('base64');
          const f = { op: 'pub', topic: 'fz/size', qos, id: idFor(id, i), payload, ...(how === 'base64' ? { encoding: 'base64' } : {}) };
          return text(JSON.stringify(f));
        },
      })),
  },
  {
    weight: 3,
    arbitrary: fc.record({ extra: fc.integer({ min: 1, max: 20_000 }), binary: fc.boolean() }).map(({ extra, binary }): WsFrame => ({
      kind: 'oversize',
      render: () => {
        const pad = 'z'.repeat(MAX_FRAME + extra);
        return { data: Buffer.from(`{"op":"pub","topic":"fz/huge","payload":"${pad}"}`), binary };
      },
    })),
  },
);

// ---------------------------------------------------------------- the /ws oracle

type Expect =
  | { answer: 'none' }
  | { answer: 'ack' | 'pong' }
  | { answer: 'error'; codes: Code[] }
  | { answer: 'close'; code: 1009 }
  /** the documents leave it open: not sent */
  | { answer: 'undecided'; why: string };

interface Judgement {
  expect: Expect;
  /** JSON of the id the answer must carry; null: an answer without id */
  key: string | null;
  subscription?: { add?: string; remove?: string };
}

const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** MQTT 3.1.1 §4.7 topic filters, within limits.maxTopicBytes. */
function validFilter(f: string): boolean {
  if (f === '' || f.includes('\u0000') || Buffer.byteLength(f) > MAX_TOPIC) return false;
  const levels = f.split('/');
  return levels.every((l, i) => (!l.includes('#') || (l === '#' && i === levels.length - 1)) && (!l.includes('+') || l === '+'));
}

/**
 * MQTT 3.1.1 §1.5.3: C0 and C1 controls and Unicode non-characters, which a receiver MAY close the
 * connection for (the cloud Mosquitto does). A publish to such a topic is refused as an invalid topic:
 * let through, it would close the uplink each time it is sent and hold up every message behind it.
 */
function unsafeForMqtt(s: string): boolean {
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if ((c >= 0x01 && c <= 0x1f) || (c >= 0x7f && c <= 0x9f) || (c >= 0xfdd0 && c <= 0xfdef) || (c & 0xfffe) === 0xfffe) return true;
  }
  return false;
}

/** RFC 4648 base64: valid, not, or neither (no padding, the URL-safe alphabet) that the documents do not settle. */
function base64Verdict(s: string): 'valid' | 'invalid' | 'undecided' {
  if (Buffer.from(s, 'base64').toString('base64') === s) return 'valid';
  if (/[^A-Za-z0-9+/=_-]/.test(s) || /=[^=]/.test(s) || /={3,}/.test(s) || s.replace(/=+$/, '').length % 4 === 1) return 'invalid';
  return 'undecided';
}

function depthOf(v: unknown): number {
  let depth = 0;
  let level: unknown[] = [v];
  while (level.length > 0) {
    const next: unknown[] = [];
    for (const x of level)
      if (typeof x === 'object' && x !== null) for (const y of Object.values(x as Record<string, unknown>)) next.push(y);
    depth++;
    level = next;
  }
  return depth - 1;
}

/** What the contract says a /ws frame gets, from its bytes and the connection's subscriptions. */
function judge(data: Buffer, binary: boolean, subscriptions: ReadonlySet<string>): Judgement {
  if (data.length > MAX_FRAME) return { expect: { answer: 'close', code: 1009 }, key: null };
  const refused = (codes: Code[], key: string | null = null): Judgement => ({ expect: { answer: 'error', codes }, key });
  if (binary) return refused(['E_UNSUPPORTED']);
  let value: unknown;
  try {
    value = JSON.parse(STRICT_UTF8.decode(data));
  } catch {
    return refused(['E_MALFORMED']);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return refused(['E_MALFORMED']);
  const o = value as Record<string, unknown>;
  const id = o.id;
  if (id !== undefined && !(typeof id === 'string' && id.length <= 256) && !(typeof id === 'number' && Number.isFinite(id)))
    return refused(['E_MALFORMED']);
  const key = id === undefined ? null : JSON.stringify(id);
  const ok = (answer: 'ack' | 'pong' | 'none', subscription?: Judgement['subscription']): Judgement => ({
    expect: { answer },
    key,
    ...(subscription ? { subscription } : {}),
  });
  const op = o.op;
  if (typeof op !== 'string') return refused(['E_MALFORMED'], key);
  switch (op) {
    case 'ping':
      return ok('pong');
    case 'sub':
    case 'unsub': {
      const f = o.topic;
      if (typeof f !== 'string' || !validFilter(f)) return refused(['E_MALFORMED'], key);
      if (op === 'unsub') return ok('ack', { remove: f });
      if (!subscriptions.has(f) && subscriptions.size >= MAX_SUBSCRIPTIONS) return refused(['E_UNSUPPORTED'], key);
      // devices.md: the `$edge/` tree belongs to the proxy; open mode allows every other filter, `$SYS/#` too.
      if (f === '$edge' || f.startsWith('$edge/')) return refused(['E_ACL'], key);
      return ok('ack', { add: f });
    }
    case 'pub': {
      const codes = new Set<Code>();
      const { topic, payload, encoding } = o;
      const qos = o.qos === undefined ? 0 : o.qos;
      const retain = o.retain === undefined ? false : o.retain;
      if (typeof topic !== 'string') codes.add('E_MALFORMED');
      if (qos === 2) codes.add('E_UNSUPPORTED');
      else if (qos !== 0 && qos !== 1) codes.add('E_MALFORMED');
      if (typeof retain !== 'boolean') codes.add('E_MALFORMED');
      if (!('payload' in o)) codes.add('E_MALFORMED');
      let bytes = -1;
      let deep = false;
      if (encoding !== undefined) {
        // docs/websocket.md lists neither for an unknown encoding: a mistyped field, or a feature not offered.
        if (encoding !== 'base64') codes.add('E_UNSUPPORTED').add('E_MALFORMED');
        else if (typeof payload !== 'string') codes.add('E_MALFORMED');
        else {
          const verdict = base64Verdict(payload);
          if (verdict === 'undecided') return { expect: { answer: 'undecided', why: 'base64 without padding or URL-safe' }, key };
          if (verdict === 'invalid') codes.add('E_MALFORMED');
          else bytes = Buffer.from(payload, 'base64').length;
        }
        if (o.contentType !== undefined && o.contentType !== 'binary' && o.contentType !== 'cbor') codes.add('E_MALFORMED');
      } else if (typeof payload === 'string') bytes = Buffer.byteLength(payload);
      else if ('payload' in o) {
        deep = depthOf(payload) > 2_000;
        try {
          bytes = Buffer.byteLength(JSON.stringify(payload));
        } catch {
          bytes = Infinity; // too deep to serialize: larger than any limit here
        }
      }
      if (codes.size > 0) return refused([...codes], key);
      const t = topic as string;
      if (t === '' || Buffer.byteLength(t) > MAX_TOPIC || t.includes('\u0000') || unsafeForMqtt(t) || t.includes('+') || t.includes('#'))
        return refused(['E_MALFORMED'], key);
      // docs/websocket.md: a publish to a `$` topic is acknowledged and dropped, as over MQTT; with a
      // payload nested too deep to serialize, whether it is dropped or refused the documents do not say.
      if (t.startsWith('$') && deep) return { expect: { answer: 'undecided', why: 'a $ topic with a payload nested too deep' }, key };
      if (t.startsWith('$')) return ok(qos === 1 ? 'ack' : 'none');
      // A nesting too deep to carry is refused; whether as too large or as malformed, the documents do not say.
      if (bytes > MAX_PAYLOAD) return refused(deep ? ['E_TOO_LARGE', 'E_MALFORMED'] : ['E_TOO_LARGE'], key);
      return ok(qos === 1 ? 'ack' : 'none');
    }
    default:
      return refused(['E_UNSUPPORTED'], key);
  }
}

// ---------------------------------------------------------------- /ws connections

interface Answer {
  op: string;
  id?: Id;
  code?: string;
  message?: unknown;
}

interface Sent {
  index: number;
  kind: string;
  expect: Expect;
  preview: string;
}

/** A frame as a line of a report: text with anything outside printable ASCII as \u{…}, bytes in hex. */
function preview(data: Buffer, binary: boolean): string {
  if (binary) return `<binary ${data.length} B> ${data.subarray(0, 60).toString('hex')}`;
  const head = data
    .subarray(0, 160)
    .toString('utf8')
    .replace(/[^\x20-\x7e]/gu, (c) => `\\u{${c.codePointAt(0)!.toString(16)}}`);
  return data.length > 160 ? `'${head}'… (${data.length} B)` : `'${head}'`;
}

/** What is wrong with a `msg` frame (protocols.md: topic, payload, contentType, ts, msgId; base64 for binary and CBOR), or null. */
function msgProblem(m: Record<string, unknown>): string | null {
  if (typeof m.topic !== 'string' || !('payload' in m)) return 'no topic or payload';
  if (typeof m.ts !== 'number' || typeof m.msgId !== 'string' || !/^[0-9A-HJKMNP-TV-Z]{26}$/.test(m.msgId)) return 'ts or msgId';
  if (m.contentType === 'binary' || m.contentType === 'cbor')
    return m.encoding === 'base64' && typeof m.payload === 'string' && base64Verdict(m.payload) === 'valid' ? null : 'bytes not in base64';
  if (m.encoding !== undefined) return 'an encoding for a JSON or text payload';
  if (m.contentType === 'text') return typeof m.payload === 'string' ? null : 'text that is not a string';
  return m.contentType === 'json' ? null : `contentType ${JSON.stringify(m.contentType)}`;
}

/** How long to wait for the answers owed, until some did not come. */
const patience = { ms: 15_000 };

/** One fuzzed /ws connection: what it was sent and expects, and what came back. */
class FuzzWs {
  readonly keyed = new Map<string, Answer[]>();
  readonly idless: Answer[] = [];
  readonly expectKeyed = new Map<string, Sent>();
  readonly expectIdless: Sent[] = [];
  /** keys of every id sent (answered or not): a repeat is not sent */
  readonly usedKeys = new Set<string>();
  readonly subscriptions = new Set<string>();
  readonly violations: string[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;
  closeInfo: { code: number; reason: string } | null = null;
  /** its number, in the order connections were opened */
  n = 0;
  refusals = 0;
  expected = 0;
  received = 0;
  msgs = 0;
  lastSent: Sent | null = null;

  constructor(readonly ws: WebSocket) {
    ws.on('message', (data: Buffer, isBinary: boolean) => this.onFrame(data, isBinary));
    ws.on('error', () => {}); // a close follows
    this.closed = new Promise((resolve) =>
      ws.once('close', (code: number, reason: Buffer) => {
        this.closeInfo = { code, reason: reason.toString() };
        resolve(this.closeInfo);
      }),
    );
  }

  private onFrame(data: Buffer, isBinary: boolean): void {
    let f: Answer;
    try {
      f = JSON.parse(data.toString('utf8')) as Answer;
    } catch {
      this.violations.push(`not JSON: ${preview(data, isBinary)}`);
      return;
    }
    if (isBinary) this.violations.push(`a binary frame: ${preview(data, isBinary)}`);
    if (typeof f !== 'object' || f === null || Array.isArray(f)) return void this.violations.push(`not an object: ${preview(data, false)}`);
    if (f.op === 'msg') {
      this.msgs++;
      if (!msgProblem(f as Answer & Record<string, unknown>)) return;
      return void this.violations.push(
        `a msg frame not of the contract (${msgProblem(f as Answer & Record<string, unknown>)}): ${preview(data, false)}`,
      );
    }
    if (f.op !== 'ack' && f.op !== 'pong' && f.op !== 'error') return void this.violations.push(`an unknown op: ${preview(data, false)}`);
    if (f.op === 'error' && (!CODES.has(String(f.code)) || typeof f.message !== 'string'))
      this.violations.push(`an error frame without a contract code or message: ${preview(data, false)}`);
    this.received++;
    if (f.id === undefined) this.idless.push(f);
    else {
      const key = JSON.stringify(f.id);
      const list = this.keyed.get(key) ?? [];
      list.push(f);
      this.keyed.set(key, list);
    }
  }

  expect(key: string | null, sent: Sent): void {
    this.lastSent = sent;
    if (sent.expect.answer === 'none' || sent.expect.answer === 'close') return;
    this.expected++;
    if (key === null) this.expectIdless.push(sent);
    else this.expectKeyed.set(key, sent);
  }

  get outstanding(): number {
    return this.expected - this.received;
  }

  /** Every answer owed has come (or the connection closed). */
  async settle(): Promise<boolean> {
    const deadline = Date.now() + patience.ms;
    while (this.received < this.expected && this.closeInfo === null) {
      if (Date.now() > deadline) {
        patience.ms = 1_000; // answers go missing: the test fails, and need not take minutes to say so
        return false;
      }
      await sleep(5);
    }
    return this.received >= this.expected;
  }

  /** Compare what came back with what the oracle said: problems, as lines. */
  verify(): string[] {
    const problems: string[] = [];
    const describe = (s: Sent): string => `frame #${s.index} (${s.kind}) ${s.preview}`;
    const fits = (e: Expect, a: Answer): boolean =>
      e.answer === 'error' ? a.op === 'error' && (e.codes as string[]).includes(String(a.code)) : a.op === e.answer;
    const want = (e: Expect): string => (e.answer === 'error' ? `error ${e.codes.join('|')}` : e.answer);
    for (const [key, sent] of this.expectKeyed) {
      const got = this.keyed.get(key) ?? [];
      if (got.length !== 1) problems.push(`${got.length} answers with id ${key}, expected one (${want(sent.expect)}): ${describe(sent)}`);
      else if (!fits(sent.expect, got[0]!))
        problems.push(`answered ${got[0]!.op} ${got[0]!.code ?? ''}, expected ${want(sent.expect)}: ${describe(sent)}`);
    }
    for (const [key, got] of this.keyed)
      if (!this.expectKeyed.has(key)) problems.push(`an answer nothing asked for: ${JSON.stringify(got[0])} (${got.length}×)`);
    // Id-less errors and pongs are written as each frame is read, in order; acks wait for the commit.
    const errorsExpected = this.expectIdless.filter((s) => s.expect.answer === 'error');
    const errorsGot = this.idless.filter((a) => a.op === 'error');
    // In order, so the first one out of place is the frame to look at; past it, a missing one shifts the rest.
    const shifted = errorsGot.length !== errorsExpected.length;
    if (shifted) problems.push(`${errorsGot.length} error frames without id, expected ${errorsExpected.length}`);
    for (const [i, s] of errorsExpected.entries()) {
      const a = errorsGot[i];
      if (a && fits(s.expect, a)) continue;
      problems.push(`id-less error ${i}: answered ${a ? `error ${a.code}` : 'nothing'}, expected ${want(s.expect)}: ${describe(s)}`);
      if (shifted) break;
    }
    for (const op of ['ack', 'pong'] as const) {
      const n = this.idless.filter((a) => a.op === op).length;
      const m = this.expectIdless.filter((s) => s.expect.answer === op).length;
      if (n !== m) problems.push(`${n} ${op} frames without id, expected ${m}`);
    }
    problems.push(...this.violations.map((v) => `the proxy sent ${v}`));
    return problems;
  }
}

function connectFuzzWs(url: string): Promise<FuzzWs> {
  const ws = new WebSocket(url);
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve(new FuzzWs(ws)));
    ws.once('error', reject);
  });
}

function within<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), ms)))]).finally(() =>
    clearTimeout(timer),
  );
}

interface WsReport {
  sent: Map<string, number>;
  skipped: Map<string, number>;
  answers: Map<string, number>;
  closes: Map<number, number>;
  connections: number;
  msgs: number;
  problems: string[];
}

function bump<K>(m: Map<K, number>, k: K, n = 1): void {
  m.set(k, (m.get(k) ?? 0) + n);
}

/** Send the frames, pipelined, over as many connections as the proxy's closes make; judge every answer. */
async function fuzzWs(url: string, frames: Array<[number, WsFrame]>, quota: number, report: WsReport): Promise<void> {
  let count = 0;
  const open = async (): Promise<FuzzWs> => {
    const c = await connectFuzzWs(url);
    c.n = ++report.connections;
    return c;
  };
  /** Judge a connection that ended (or that the test ends) and count what it got. */
  const finish = (c: FuzzWs): void => {
    report.problems.push(...c.verify().map((p) => `connection ${c.n}: ${p}`));
    for (const a of [...c.idless, ...[...c.keyed.values()].flat()]) bump(report.answers, a.op === 'error' ? `error ${a.code}` : a.op);
    report.msgs += c.msgs;
    if (c.closeInfo) bump(report.closes, c.closeInfo.code);
  };
  const awaitClose = async (c: FuzzWs, code: number, why: string): Promise<void> => {
    const closed = await within(c.closed, report.problems.length > 0 ? 1_000 : 10_000); // once failing, fail fast
    if (closed === 'timeout') report.problems.push(`no close ${code} after ${why}`);
    else if (closed.code !== code) report.problems.push(`closed with ${closed.code} (${closed.reason}), expected ${code} after ${why}`);
  };
  let c = await open();
  for (const [i, frame] of frames) {
    if (count === quota) break;
    if (c.closeInfo) {
      report.problems.push(
        `connection ${c.n} closed with ${c.closeInfo.code} (${c.closeInfo.reason}) where no close was due; the last frame sent: ${c.lastSent ? `#${c.lastSent.index} ${c.lastSent.preview}` : 'none'}`,
      );
      finish(c);
      c = await open();
    }
    const { data, binary } = frame.render(i);
    const j = judge(data, binary, c.subscriptions);
    if (j.expect.answer === 'undecided' || (j.key !== null && c.usedKeys.has(j.key))) {
      bump(report.skipped, j.expect.answer === 'undecided' ? j.expect.why : 'an id this connection used already');
      continue;
    }
    if (j.key !== null) c.usedKeys.add(j.key);
    const sent: Sent = { index: i, kind: frame.kind, expect: j.expect, preview: preview(data, binary) };
    bump(report.sent, frame.kind.replace(/^(mutated|text)-.*/, '$1'));
    count++;
    const refusal = j.expect.answer === 'error';
    const last = j.expect.answer === 'close' || (refusal && c.refusals + 1 === MAX_ERRORS);
    // The frame that ends the connection goes once everything before it is answered: a close drops answers still owed.
    if (last && !(await c.settle())) report.problems.push(`answers missing before frame #${i} (connection ${c.n})`);
    c.ws.send(data, { binary });
    c.expect(j.key, sent);
    if (refusal) c.refusals++;
    if (j.subscription?.add) c.subscriptions.add(j.subscription.add);
    if (j.subscription?.remove) c.subscriptions.delete(j.subscription.remove);
    if (last) {
      await awaitClose(
        c,
        j.expect.answer === 'close' ? 1009 : 1008,
        `frame #${i} (${frame.kind}${refusal ? `, refusal ${c.refusals}` : ''})`,
      );
      finish(c);
      c = await open();
    } else if (c.outstanding > 300 && !(await c.settle()))
      report.problems.push(`answers missing after frame #${i} (connection ${c.n}): ${c.outstanding} owed`);
  }
  // The end: every answer owed, and no stray one after a last round trip.
  if (!(await c.settle())) report.problems.push(`answers missing at the end: ${c.outstanding} owed`);
  c.ws.send(JSON.stringify({ op: 'ping', id: 'last' }));
  c.expect('"last"', { index: -1, kind: 'barrier', expect: { answer: 'pong' }, preview: 'the last ping' });
  await c.settle();
  await sleep(300);
  finish(c);
  c.ws.close();
  await within(c.closed, 5_000);
}

// ---------------------------------------------------------------- /mqtt

interface MqttMessage {
  kind: string;
  data: Buffer | string;
}

interface MqttSession {
  /** send CONNECT and wait for CONNACK first */
  connect: boolean;
  messages: MqttMessage[];
  /** a decidable message: the close it must get */
  closeWith?: number;
}

const messageId = fc.integer({ min: 1, max: 65_535 });
const packetArb: fc.Arbitrary<Record<string, unknown>> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      cmd: fc.constant('publish'),
      topic: fc.oneof({ weight: 4, arbitrary: pubTopic }, { weight: 1, arbitrary: weirdTopic.map(String) }),
      payload: fc.uint8Array({ maxLength: 120 }).map((b) => Buffer.from(b)),
      qos: fc.constantFrom(0, 1, 2),
      retain: fc.boolean(),
      dup: fc.boolean(),
      messageId,
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      cmd: fc.constant('subscribe'),
      messageId,
      subscriptions: fc.array(fc.record({ topic: filter, qos: fc.constantFrom(0, 1, 2) }), { minLength: 1, maxLength: 3 }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ cmd: fc.constant('unsubscribe'), messageId, unsubscriptions: fc.array(filter, { minLength: 1, maxLength: 3 }) }),
  },
  { weight: 1, arbitrary: fc.record({ cmd: fc.constantFrom('puback', 'pubrec', 'pubrel', 'pubcomp'), messageId }) },
  { weight: 2, arbitrary: fc.constant({ cmd: 'pingreq' }) },
  {
    weight: 1,
    arbitrary: fc.nat(1_000_000).map((n) => connectPacket(`fz-x-${n}`, { will: { topic: 'fz/will', payload: Buffer.from('w'), qos: 1 } })),
  },
);

function packetBytes(p: Record<string, unknown>): Buffer {
  try {
    return mqttPacket.generate(p as unknown as Packet, { protocolVersion: 4 });
  } catch {
    return Buffer.from([0xc0, 0x00]); // mqtt-packet would not write it: a PINGREQ instead
  }
}

type ByteMutation =
  | { b: 'flip'; at: number; bit: number }
  | { b: 'truncate'; at: number }
  | { b: 'extend'; bytes: Uint8Array }
  | { b: 'first'; byte: number }
  | { b: 'length'; byte: number }
  | { b: 'splice'; at: number; bytes: Uint8Array };
const byteMutation: fc.Arbitrary<ByteMutation> = fc.oneof(
  fc.record({ b: fc.constant('flip' as const), at: fc.double({ min: 0, max: 1, noNaN: true }), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ b: fc.constant('truncate' as const), at: fc.double({ min: 0, max: 1, noNaN: true }) }),
  fc.record({ b: fc.constant('extend' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 40 }) }),
  fc.record({ b: fc.constant('first' as const), byte: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ b: fc.constant('length' as const), byte: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ b: fc.constant('splice' as const), at: fc.double({ min: 0, max: 1, noNaN: true }), bytes: fc.uint8Array({ maxLength: 8 }) }),
);

function mutateBytes(bytes: Buffer, mu: ByteMutation): Buffer {
  const b = Buffer.from(bytes);
  const at = 'at' in mu ? Math.min(Math.floor(mu.at * b.length), Math.max(b.length - 1, 0)) : 0;
  switch (mu.b) {
    case 'flip':
      if (b.length > 0) b[at] = b[at]! ^ (1 << mu.bit);
      return b;
    case 'truncate':
      return b.subarray(0, at);
    case 'extend':
      return Buffer.concat([b, Buffer.from(mu.bytes)]);
    case 'first':
      if (b.length > 0) b[0] = mu.byte;
      return b;
    case 'length':
      if (b.length > 1) b[1] = mu.byte;
      return b;
    case 'splice':
      return Buffer.concat([b.subarray(0, at), Buffer.from(mu.bytes), b.subarray(at + mu.bytes.length)]);
  }
}

const chaosMessage: fc.Arbitrary<MqttMessage> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc
      .array(packetArb, { minLength: 1, maxLength: 3 })
      .map((ps) => ({ kind: 'valid', data: Buffer.concat(ps.map(packetBytes)) })),
  },
  {
    weight: 6,
    arbitrary: fc
      .record({ p: packetArb, mutations: fc.array(byteMutation, { minLength: 1, maxLength: 3 }) })
      .map(({ p, mutations }) => ({ kind: 'mutated', data: mutations.reduce(mutateBytes, packetBytes(p)) })),
  },
  { weight: 3, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 300 }).map((b) => ({ kind: 'random', data: Buffer.from(b) })) },
  { weight: 1, arbitrary: fc.constant({ kind: 'empty', data: Buffer.alloc(0) }) },
);

/** Messages whose close is decidable when they start at a packet boundary. */
const decidable: fc.Arbitrary<{ message: MqttMessage; close: number }> = fc.oneof(
  fc
    .record({ type: fc.constantFrom(0x0, 0xf), flags: fc.nat(15), body: fc.uint8Array({ maxLength: 100 }) })
    .map(({ type, flags, body }) => ({
      message: { kind: 'reserved-type', data: Buffer.concat([Buffer.from([(type << 4) | flags, body.length]), Buffer.from(body)]) },
      close: 1002,
    })),
  fc.uint8Array({ minLength: 1, maxLength: 20 }).map((tail) => ({
    message: { kind: 'length-5-bytes', data: Buffer.concat([Buffer.from([0x30, 0xff, 0xff, 0xff, 0x80]), Buffer.from(tail)]) },
    close: 1002,
  })),
  wildString(20).map((s) => ({ message: { kind: 'text-frame', data: s }, close: 1003 })),
  fc.integer({ min: MQTT_OVERSIZE_MESSAGE, max: MQTT_OVERSIZE_MESSAGE + 20_000 }).map((n) => ({
    message: { kind: 'oversize-message', data: Buffer.alloc(n).fill(Buffer.from([0xc0, 0x00])) },
    close: 1009,
  })),
  fc
    .record({ qos: fc.constantFrom(0, 1, 2), length: fc.integer({ min: 2 * (MAX_PAYLOAD + MAX_TOPIC), max: 2 ** 28 - 1 }) })
    .map(({ qos, length }) => {
      const header = [0x30 | (qos << 1)];
      for (let n = length; ;) {
        const b = n % 128;
        n = Math.floor(n / 128);
        header.push(n > 0 ? b | 0x80 : b);
        if (n === 0) break;
      }
      return { message: { kind: 'publish-over-limit', data: Buffer.from(header) }, close: 1009 };
    }),
);

const mqttSession: fc.Arbitrary<MqttSession> = fc.oneof(
  { weight: 2, arbitrary: decidable.map(({ message, close }) => ({ connect: true, messages: [message], closeWith: close })) },
  { weight: 8, arbitrary: fc.array(chaosMessage, { minLength: 1, maxLength: 25 }).map((messages) => ({ connect: true, messages })) },
  {
    weight: 2,
    arbitrary: fc
      .record({ first: fc.array(byteMutation, { maxLength: 2 }), n: fc.nat(1_000_000), rest: fc.array(chaosMessage, { maxLength: 5 }) })
      .map(({ first, n, rest }) => ({
        connect: false,
        messages: [{ kind: 'mutated-connect', data: first.reduce(mutateBytes, packetBytes(connectPacket(`fz-p-${n}`))) }, ...rest],
      })),
  },
);

interface MqttReport {
  sessions: number;
  sent: Map<string, number>;
  closes: Map<string, number>;
  problems: string[];
}

async function mqttOne(port: number, session: MqttSession, n: number, report: MqttReport): Promise<void> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/mqtt`, 'mqtt');
  const parser = mqttPacket.parser({ protocolVersion: 4 });
  const packets: Packet[] = [];
  const received = { parseError: null as string | null };
  parser.on('packet', (p) => packets.push(p));
  parser.on('error', (err: Error) => (received.parseError ??= err.message));
  ws.on('message', (data: Buffer) => parser.parse(data));
  ws.on('error', () => {});
  let closeInfo: { code: number; reason: string } | null = null;
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    ws.once('close', (code: number, reason: Buffer) => resolve((closeInfo = { code, reason: reason.toString() }))),
  );
  const opened = await within(
    new Promise<boolean>((resolve) => {
      ws.once('open', () => resolve(true));
      ws.once('error', () => resolve(false));
    }),
    5_000,
  );
  if (opened !== true) return void report.problems.push(`session ${n}: the /mqtt upgrade failed`);
  const label = `session ${n} (${session.messages.map((m) => m.kind).join(',')})`;
  const until = async (what: () => boolean, ms: number): Promise<boolean> => {
    const deadline = Date.now() + ms;
    while (!what() && closeInfo === null && Date.now() < deadline) await sleep(5);
    return what();
  };
  if (session.connect) {
    ws.send(packetBytes(connectPacket(`fz-m-${n}`)));
    if (!(await until(() => packets.some((p) => p.cmd === 'connack'), 5_000))) {
      report.problems.push(`${label}: no CONNACK (closed: ${JSON.stringify(closeInfo)})`);
      ws.terminate();
      return;
    }
    const connack = packets.find((p) => p.cmd === 'connack') as { returnCode?: number } | undefined;
    if (connack?.returnCode !== 0) report.problems.push(`${label}: CONNACK ${connack?.returnCode}`);
  }
  for (const m of session.messages) {
    if (closeInfo !== null || ws.readyState !== WebSocket.OPEN) break;
    ws.send(m.data, { binary: typeof m.data !== 'string' });
    bump(report.sent, m.kind);
  }
  if (session.closeWith !== undefined) {
    const got = await within(closed, 5_000);
    if (got === 'timeout') report.problems.push(`${label}: still open 5 s after a message that must close it with ${session.closeWith}`);
    else if (got.code !== session.closeWith)
      report.problems.push(`${label}: closed with ${got.code} (${got.reason}), expected ${session.closeWith}`);
  } else {
    // A round trip tells an open connection from one the proxy is closing; a cut packet may keep the reply, and that is fine.
    if (ws.readyState === WebSocket.OPEN) ws.send(packetBytes({ cmd: 'pingreq' }));
    await until(() => packets.some((p) => p.cmd === 'pingresp'), 300);
    if (closeInfo === null) await within(closed, 50);
  }
  const final = closeInfo as { code: number; reason: string } | null;
  bump(report.closes, final === null ? 'open (ended by the test)' : String(final.code));
  if (final !== null && !MQTT_CLOSES.has(final.code))
    report.problems.push(`${label}: an undocumented close ${final.code} (${final.reason})`);
  // The proxy speaks MQTT 3.1.1 to a connection it accepted; what answers a mangled CONNECT is not judged.
  if (received.parseError !== null && session.connect)
    report.problems.push(`${label}: the proxy sent bytes that are not MQTT: ${received.parseError}`);
  if (ws.readyState !== WebSocket.CLOSED) ws.terminate();
  await within(closed, 2_000);
}

async function fuzzMqtt(port: number, sessions: MqttSession[], concurrency: number): Promise<MqttReport> {
  const report: MqttReport = { sessions: sessions.length, sent: new Map(), closes: new Map(), problems: [] };
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < sessions.length) {
        const n = next++;
        await mqttOne(port, sessions[n]!, n, report);
      }
    }),
  );
  return report;
}

// ---------------------------------------------------------------- well-behaved devices

interface Steady {
  name: string;
  sent(): number;
  errors: string[];
  stop(): Promise<void>;
}

/** An MQTT.js device publishing {dev, seq} with QoS 1, one after the other, until stopped. */
function steadyMqtt(client: MqttClient, name: string): Steady {
  let seq = 0;
  let running = true;
  const errors: string[] = [];
  client.on('close', () => errors.push('its connection closed'));
  const loop = (async () => {
    while (running) {
      seq++;
      await client.publishAsync(`steady/${name}`, JSON.stringify({ dev: name, seq }), { qos: 1 }).catch((err: Error) => {
        errors.push(`publish ${seq}: ${err.message}`);
        running = false;
      });
      await sleep(15);
    }
  })();
  return {
    name,
    sent: () => seq,
    errors,
    stop: async () => {
      running = false;
      await loop;
    },
  };
}

/** A /ws device doing the same, each publish waiting for its ack. */
async function steadyWs(url: string, name: string): Promise<Steady> {
  const ws = new WebSocket(`${url}?d=${name}`);
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  const errors: string[] = [];
  const waiting = new Map<string, () => void>();
  ws.on('message', (data: Buffer) => {
    const f = JSON.parse(data.toString()) as Answer;
    if (f.op !== 'ack') errors.push(`got ${data.toString().slice(0, 200)}`);
    waiting.get(String(f.id))?.();
  });
  let seq = 0;
  let running = true;
  ws.on('close', (code: number) => {
    if (running) errors.push(`its connection closed (${code})`);
  });
  const loop = (async () => {
    while (running && ws.readyState === WebSocket.OPEN) {
      const id = `s-${++seq}`;
      const acked = new Promise<void>((resolve) => waiting.set(id, resolve));
      ws.send(JSON.stringify({ op: 'pub', topic: `steady/${name}`, payload: { dev: name, seq }, qos: 1, id }));
      if ((await within(acked, 10_000)) === 'timeout') errors.push(`no ack for ${id}`);
      waiting.delete(id);
      await sleep(15);
    }
  })();
  return {
    name,
    sent: () => seq,
    errors,
    stop: async () => {
      running = false;
      await loop;
      ws.close();
    },
  };
}

function seqs(messages: Array<{ deviceId?: string; topic: string; payload: unknown }>, name: string): number[] {
  return messages
    .filter((m) => m.topic === `steady/${name}` && (m.deviceId === undefined || m.deviceId === name))
    .map((m) => (m.payload as { seq: number }).seq);
}

/** Every number 1..n exactly once: the missing and the repeated ones, else null. */
function exactlyOnce(got: number[], n: number): string | null {
  const counts = new Map<number, number>();
  for (const s of got) counts.set(s, (counts.get(s) ?? 0) + 1);
  const missing = Array.from({ length: n }, (_, i) => i + 1).filter((s) => !counts.has(s));
  const repeated = [...counts].filter(([, c]) => c > 1).map(([s]) => s);
  const extra = [...counts.keys()].filter((s) => s < 1 || s > n);
  return missing.length + repeated.length + extra.length === 0
    ? null
    : `missing ${JSON.stringify(missing.slice(0, 20))} (${missing.length}), repeated ${JSON.stringify(repeated.slice(0, 20))} (${repeated.length}), unknown ${JSON.stringify(extra.slice(0, 5))}`;
}

function table<K>(m: Map<K, number>): string {
  return [...m]
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${String(k)}: ${v}`)
    .join(', ');
}

// ---------------------------------------------------------------- the test

t.test(`${WS_FRAMES + MQTT_FRAMES} random and mutated frames against /ws and /mqtt (seed ${SEED})`, async (t) => {
  t.comment(`fuzz seed ${SEED} (set FUZZ_SEED to run another, or this one again)`);
  const started = Date.now();
  const dir = t.testdir();
  const { url: cloudUrl, up } = await cloudFor(t, dir);
  const proxy: ProxyProcess = await startProxy(dir, {
    uplink: { url: cloudUrl },
    http: { maxErrors: MAX_ERRORS, errorWindowSeconds: 3600 },
    limits: { maxPayloadBytes: MAX_PAYLOAD, maxTopicBytes: MAX_TOPIC },
    log: { level: 'info' },
  });
  t.teardown(() => proxy.stop());
  let exitCode: number | null | 'running' = 'running';
  void proxy.exited.then((code) => (exitCode = code));
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);
  const wsUrl = `ws://127.0.0.1:${proxy.ports.http}/ws`;

  // Generated before anything is sent: the same seed, the same frames.
  // A few more than are sent: the ones the oracle cannot decide are left out and the next ones take their place.
  const wsFrames = fc.sample(wsFrame, { seed: SEED, numRuns: Math.ceil(WS_FRAMES * 1.1) });
  const sessions: MqttSession[] = [];
  let mqttCount = 0;
  for (const s of fc.sample(mqttSession, { seed: SEED + 1, numRuns: MQTT_FRAMES })) {
    if (mqttCount >= MQTT_FRAMES) break;
    const messages = s.messages.slice(0, MQTT_FRAMES - mqttCount);
    // A decidable message cut away would leave a session that expects a close it was never sent.
    if (s.closeWith !== undefined && messages.length === 0) continue;
    sessions.push({ ...s, messages });
    mqttCount += messages.length;
  }
  t.equal(mqttCount, MQTT_FRAMES, '/mqtt messages generated');

  // The well-behaved devices, and a local subscriber to what they send.
  const watcher = await connectClient(proxy.ports.mqtt, { clientId: 'steady-watch' });
  t.teardown(() => watcher.endAsync(true));
  const local: Collected = await collect(watcher, 'steady/#');
  const tcpClient = await connectClient(proxy.ports.mqtt, { clientId: 'steady-tcp' });
  t.teardown(() => tcpClient.endAsync(true));
  const mqttWsClient = await mqtt.connectAsync(`ws://127.0.0.1:${proxy.ports.http}/mqtt`, {
    clientId: 'steady-mqttws',
    reconnectPeriod: 0,
    connectTimeout: 5_000,
  });
  t.teardown(() => mqttWsClient.endAsync(true));
  const steady: Steady[] = [
    steadyMqtt(tcpClient, 'steady-tcp'),
    steadyMqtt(mqttWsClient, 'steady-mqttws'),
    await steadyWs(wsUrl, 'steady-ws'),
  ];
  t.teardown(() => Promise.all(steady.map((s) => s.stop())));
  await eventually('the steady devices under way', () => steady.every((s) => s.sent() >= 5));
  const sentBefore = new Map(steady.map((s) => [s.name, s.sent()]));

  const timed = async <T>(what: string, p: Promise<T>): Promise<T> => {
    const t0 = Date.now();
    const r = await p;
    t.comment(`${what} took ${Date.now() - t0} ms`);
    return r;
  };
  // Two connections at a time, each with its own share of the frames (ids stay unique across them).
  const wsReport: WsReport = {
    sent: new Map(),
    skipped: new Map(),
    answers: new Map(),
    closes: new Map(),
    connections: 0,
    msgs: 0,
    problems: [],
  };
  const WS_LANES = [0, 1].map((lane) => wsFrames.map((f, i): [number, WsFrame] => [i, f]).filter(([i]) => i % 2 === lane));
  const [, mqttReport] = await Promise.all([
    timed('/ws', Promise.all(WS_LANES.map((lane) => fuzzWs(wsUrl, lane, WS_FRAMES / WS_LANES.length, wsReport)))),
    timed('/mqtt', fuzzMqtt(proxy.ports.http, sessions, 12)),
  ]);
  const during = steady.map((s) => s.sent() - sentBefore.get(s.name)!);
  await sleep(500); // the steady devices go on a moment after the last bad frame
  await Promise.all(steady.map((s) => s.stop()));
  const fuzzMs = Date.now() - started;

  const wsSent = [...wsReport.sent.values()].reduce((a, b) => a + b, 0);
  const wsSkipped = [...wsReport.skipped.values()].reduce((a, b) => a + b, 0);
  t.comment(`/ws: ${wsSent} frames sent (${table(wsReport.sent)}); ${wsSkipped} not sent (${table(wsReport.skipped)})`);
  t.comment(
    `/ws: answers ${table(wsReport.answers)}; ${wsReport.msgs} msg frames; ${wsReport.connections} connections; closes ${table(wsReport.closes)}`,
  );
  t.comment(
    `/mqtt: ${mqttCount} messages in ${mqttReport.sessions} connections (${table(mqttReport.sent)}); closes ${table(mqttReport.closes)}`,
  );
  t.comment(`steady devices: ${steady.map((s) => `${s.name} ${s.sent()}`).join(', ')}; fuzzing took ${fuzzMs} ms`);

  t.equal(wsSent, WS_FRAMES, `${WS_FRAMES} /ws frames sent`);
  t.ok(wsSkipped <= WS_FRAMES * 0.03, `nearly every /ws frame generated was decidable and sent (${wsSkipped} left out)`);
  t.ok((wsReport.closes.get(1008) ?? 0) >= 2, 'the abuse limit closed connections with 1008');
  t.ok((wsReport.closes.get(1009) ?? 0) >= 1, 'frames over the limit closed connections with 1009');
  t.same(wsReport.problems.slice(0, 30), [], `/ws: every frame got what the contract says (${wsReport.problems.length} problems)`);
  t.same(
    mqttReport.problems.slice(0, 30),
    [],
    `/mqtt: only documented closes, and the decidable ones as documented (${mqttReport.problems.length} problems)`,
  );
  for (const code of ['1002', '1003', '1009']) t.ok((mqttReport.closes.get(code) ?? 0) >= 1, `/mqtt connections were closed with ${code}`);

  // The other devices: never disconnected, never refused, every message once at the cloud and locally.
  for (const [i, s] of steady.entries()) {
    t.same(s.errors, [], `${s.name} was never refused nor disconnected`);
    t.ok(during[i]! >= 10, `${s.name} kept publishing while the fuzz ran (${during[i]} messages)`);
  }
  type Envelope = { topic: string; deviceId: string; payload: unknown };
  const envelopes = (): Envelope[] =>
    up.messages.flatMap((m) => {
      try {
        return [JSON.parse(m.payload.toString()) as Envelope];
      } catch {
        return [];
      }
    });
  const localMessages = (): Array<{ topic: string; payload: unknown }> =>
    local.messages.map((m) => ({ topic: m.topic, payload: JSON.parse(m.payload.toString()) as unknown }));
  await eventually(
    'every steady message at the cloud and at the local subscriber',
    () => steady.every((s) => seqs(envelopes(), s.name).length >= s.sent() && seqs(localMessages(), s.name).length >= s.sent()),
    20_000,
  ).catch(() => {});
  await sleep(300); // a duplicate would come now
  for (const s of steady) {
    t.equal(exactlyOnce(seqs(envelopes(), s.name), s.sent()), null, `${s.name}: each of its ${s.sent()} messages reached the cloud once`);
    t.equal(exactlyOnce(seqs(localMessages(), s.name), s.sent()), null, `${s.name}: ... and the local subscriber once`);
  }
  t.equal(up.messages.length - envelopes().length, 0, 'every message at the cloud is a JSON envelope');

  // The proxy itself.
  t.equal(exitCode, 'running', 'the proxy did not exit');
  const health = await fetch(`http://127.0.0.1:${proxy.ports.admin}/healthz`);
  t.equal(health.status, 200, '/healthz answers 200');
  t.same(await health.json(), { status: 'ok' });
  const fatal = proxy.logs.filter((l) => Number(l.level) >= 60 || /uncaught|unhandled/i.test(String(l.msg)));
  t.same(fatal.slice(0, 5), [], 'no fatal or uncaught-error line in its log');
  t.notMatch(proxy.output(), /uncaughtException|UnhandledPromiseRejection|\n\s+at .+\(.+:\d+:\d+\)/, 'no stack trace on its output');
  t.ok((await proxy.metric('edge_messages_refused_total', 'reason="malformed"')) > 0, 'refusals were counted');
  t.comment(`the whole test: ${Date.now() - started} ms`);
});
