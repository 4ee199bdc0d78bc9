// The JSON frames of /ws (../shared/spec/protocols.md, "WebSocket JSON protocol"): what a device
// sends, decoded and checked for shape only, and what the proxy sends back. Topics, access control
// and payload sizes are the ingress gate's; nothing here decides them. Pure: no I/O, no state.
import { isUtf8 } from 'node:buffer';
import type { ErrorCode } from '../../core/errors.js';
import type { ContentType, EdgeMessage, QoS } from '../../core/message.js';
import { messageJson } from '../message-json.js';
import { topicFilterProblem } from '../../config/schema.js';

/**
 * The codes of `error` frames. Most are the catalogue's (core/errors.ts); E_UNSUPPORTED (a frame
 * the protocol does not have: binary, an unknown op, qos 2) and E_RATE (over limits.perDeviceRate,
 * once that exists) are wire codes of this protocol only.
 */
export type WsErrorCode =
  Extract<ErrorCode, 'E_MALFORMED' | 'E_TOO_LARGE' | 'E_AUTH' | 'E_ACL' | 'E_CACHE_FULL'> | 'E_RATE' | 'E_UNSUPPORTED';

/** A frame's `id`, echoed in its answer as the device sent it. */
export type FrameId = string | number;

export type ClientFrame =
  | { op: 'pub'; id?: FrameId; topic: string; payload: Buffer; contentType?: ContentType; qos: Extract<QoS, 0 | 1>; retain: boolean }
  | { op: 'sub'; id?: FrameId; topic: string }
  | { op: 'unsub'; id?: FrameId; topic: string }
  | { op: 'ping'; id?: FrameId };

export interface FrameRefusal {
  id?: FrameId;
  code: WsErrorCode;
  message: string;
}

export type Decoded = { ok: true; frame: ClientFrame } | ({ ok: false } & FrameRefusal);

const MAX_ID_CHARS = 256;
// Standard or URL-safe alphabet, padding optional: what Buffer.from(s, 'base64') reads losslessly.
const BASE64 = /^[A-Za-z0-9+/_-]*={0,2}$/;

/**
 * The largest frame that still carries a payload of `maxPayloadBytes`, however it is encoded: JSON
 * escaping turns one byte into at most six characters (`\u0001`), base64 into 4/3; the topic may be
 * escaped too, and the other fields of a `pub` take well under 4 KiB. A payload within the limit is
 * therefore never refused for its encoding; a larger one within this gets E_TOO_LARGE.
 */
export function maxFrameBytes(limits: { maxPayloadBytes: number; maxTopicBytes: number }): number {
  return 6 * (limits.maxPayloadBytes + limits.maxTopicBytes) + 4096;
}

function refuse(code: WsErrorCode, message: string, id?: FrameId): Decoded {
  return id === undefined ? { ok: false, code, message } : { ok: false, id, code, message };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** One frame as received. Unknown fields are ignored, so that a newer client still talks to this proxy. */
export function decodeFrame(data: Buffer, isBinary: boolean, maxTopicBytes: number): Decoded {
  if (isBinary) return refuse('E_UNSUPPORTED', 'binary frames are not part of the protocol: send text frames, one JSON object each');
  // ws leaves UTF-8 to this route (frames.skipUTF8Validation), so that bad text is answered, not closed with 1007.
  if (!isUtf8(data)) return refuse('E_MALFORMED', 'a text frame that is not valid UTF-8');
  let value: unknown;
  try {
    value = JSON.parse(data.toString('utf8'));
  } catch (err) {
    return refuse('E_MALFORMED', `not JSON: ${(err as Error).message.slice(0, 200)}`);
  }
  if (!isObject(value)) return refuse('E_MALFORMED', 'a frame is one JSON object, such as {"op":"ping"}');
  const id = value.id;
  if (id !== undefined && !(typeof id === 'string' && id.length <= MAX_ID_CHARS) && !(typeof id === 'number' && Number.isFinite(id)))
    return refuse('E_MALFORMED', `"id" is a string of at most ${MAX_ID_CHARS} characters or a number`);
  const op = value.op;
  if (typeof op !== 'string') return refuse('E_MALFORMED', 'no "op": one of pub, sub, unsub, ping', id);
  switch (op) {
    case 'pub':
      return decodePub(value, id);
    case 'sub':
    case 'unsub': {
      const topic = value.topic;
      if (typeof topic !== 'string') return refuse('E_MALFORMED', `${op}: "topic" is a string, an MQTT topic filter`, id);
      const problem = Buffer.byteLength(topic) > maxTopicBytes ? `it is longer than ${maxTopicBytes} bytes` : topicFilterProblem(topic);
      if (problem) return refuse('E_MALFORMED', `${op}: "${topic.slice(0, 300)}" is not a valid topic filter: ${problem}`, id);
      return { ok: true, frame: id === undefined ? { op, topic } : { op, id, topic } };
    }
    case 'ping':
      return { ok: true, frame: id === undefined ? { op } : { op, id } };
    default:
      return refuse('E_UNSUPPORTED', `unknown op "${op.slice(0, 50)}": the ops are pub, sub, unsub and ping`, id);
  }
}

/**
 * A `pub`: a string payload is text, any other JSON value is carried as its JSON text (`json` for an
 * object or array, `text` otherwise, as a rule's publish makes it); with `"encoding":"base64"` the
 * payload is the bytes the string encodes, `binary` unless `contentType` says `cbor`.
 */
function decodePub(v: Record<string, unknown>, id: FrameId | undefined): Decoded {
  const { topic, qos = 0, retain = false, encoding } = v;
  if (typeof topic !== 'string') return refuse('E_MALFORMED', 'pub: "topic" is a string', id);
  if (qos === 2) return refuse('E_UNSUPPORTED', 'pub: qos 2 is not part of this protocol; use 0 or 1', id);
  if (qos !== 0 && qos !== 1) return refuse('E_MALFORMED', 'pub: "qos" is 0 or 1', id);
  if (typeof retain !== 'boolean') return refuse('E_MALFORMED', 'pub: "retain" is true or false', id);
  if (!('payload' in v)) return refuse('E_MALFORMED', 'pub: no "payload"', id);
  const payload = v.payload;
  const head = { op: 'pub' as const, ...(id === undefined ? {} : { id }), topic, qos: qos === 1 ? (1 as const) : (0 as const), retain };
  if (encoding !== undefined) {
    if (encoding !== 'base64') return refuse('E_UNSUPPORTED', `pub: "encoding" is "base64" or absent, not ${JSON.stringify(encoding)}`, id);
    if (typeof payload !== 'string' || !BASE64.test(payload) || payload.length % 4 === 1)
      return refuse('E_MALFORMED', 'pub: a base64 "payload" is a string of base64', id);
    // Absent means binary; null is a mistyped field, as a null qos, retain or encoding is.
    const ct = v.contentType === undefined ? 'binary' : v.contentType;
    if (ct !== 'binary' && ct !== 'cbor')
      return refuse('E_MALFORMED', 'pub: a base64 payload is "binary" or "cbor"; send JSON as a JSON value and text as a string', id);
    return { ok: true, frame: { ...head, payload: Buffer.from(payload, 'base64'), contentType: ct } };
  }
  if (typeof payload === 'string') return { ok: true, frame: { ...head, payload: Buffer.from(payload, 'utf8'), contentType: 'text' } };
  let json: string;
  try {
    json = JSON.stringify(payload);
  } catch (err) {
    // A nesting too deep to serialize: the device's frame, not the proxy's fault.
    return refuse('E_MALFORMED', `pub: the payload cannot be carried: ${(err as Error).message.slice(0, 200)}`, id);
  }
  const contentType = typeof payload === 'object' && payload !== null ? 'json' : 'text';
  return { ok: true, frame: { ...head, payload: Buffer.from(json, 'utf8'), contentType } };
}

// ---- what the proxy sends

export function ackFrame(id: FrameId | undefined): string {
  return id === undefined ? '{"op":"ack"}' : `{"op":"ack","id":${JSON.stringify(id)}}`;
}

export function pongFrame(id: FrameId | undefined): string {
  return id === undefined ? '{"op":"pong"}' : `{"op":"pong","id":${JSON.stringify(id)}}`;
}

/** `{"op":"error","id"?,"code","message"}`; `topic` names the subscription an E_ACL drop is about. */
export function errorFrame(r: FrameRefusal & { topic?: string }): string {
  return JSON.stringify({
    op: 'error',
    ...(r.id === undefined ? {} : { id: r.id }),
    code: r.code,
    message: r.message,
    ...(r.topic === undefined ? {} : { topic: r.topic }),
  });
}

/**
 * `{"op":"msg","topic","payload","contentType","ts","msgId"}`, made once per message and shared by
 * every connection it goes to (message-json.ts: a CoAP notification of a filter is the same JSON).
 * `retained`: handed over when a `sub` starts, `"retain":true`.
 */
export function msgFrame(m: EdgeMessage, retained: boolean): Buffer {
  return messageJson(m, retained, 'msg');
}
