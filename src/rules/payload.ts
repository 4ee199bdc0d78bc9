// A message's payload as the rules read it (docs/rules.md, What a rule can read): JSON and CBOR
// are decoded into the same values, so `payload.x` means the same whichever a device sends;
// text is a string; binary is null.
import { decode as decodeCbor } from 'cbor2';
import type { ContentType } from '../core/message.js';
import { fromJson, type Value } from './values.js';

/** The payload's value, or `undecodable` when its bytes are not what its content type says. */
export type DecodedPayload = { ok: true; value: Value } | { ok: false };

export function decodePayload(contentType: ContentType, bytes: Buffer): DecodedPayload {
  try {
    switch (contentType) {
      case 'text':
        return { ok: true, value: bytes.toString('utf8') };
      case 'json':
        return { ok: true, value: fromJson(JSON.parse(bytes.toString('utf8'))) };
      case 'cbor':
        return { ok: true, value: fromCbor(decodeCbor(bytes)) };
      case 'binary':
        return { ok: true, value: null };
    }
  } catch {
    return { ok: false };
  }
}

/**
 * CBOR's data model is wider than JSON's; what has no JSON counterpart reads as the nearest one:
 * integers beyond 2^53 as the nearest number, byte strings as base64 text, map keys that are
 * numbers as their decimal text (other non-text keys are left out), dates as ISO 8601 text,
 * tags as their content, undefined, NaN and infinities as null (as JSON cannot carry them).
 * Nesting is bounded by the decoder (1024 levels).
 */
function fromCbor(v: unknown): Value {
  switch (typeof v) {
    case 'string':
    case 'boolean':
      return v;
    case 'number':
      return Number.isFinite(v) ? v : null;
    case 'bigint':
      return Number(v);
    case 'object':
      break;
    default:
      return null;
  }
  if (v === null) return null;
  if (Array.isArray(v)) return v.map(fromCbor);
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64');
  if (v instanceof Date) return Number.isNaN(v.getTime()) ? null : v.toISOString();
  const out: { [key: string]: Value } = {};
  const entries: Iterable<[unknown, unknown]> = v instanceof Map ? v.entries() : Object.entries(v);
  if (!(v instanceof Map) && Object.getPrototypeOf(v) !== Object.prototype) {
    // A tag the decoder does not know: its content.
    const contents = (v as { contents?: unknown }).contents;
    return contents === undefined ? null : fromCbor(contents);
  }
  for (const [key, value] of entries) {
    const name = typeof key === 'string' ? key : typeof key === 'number' || typeof key === 'bigint' ? String(key) : null;
    // defineProperty: a key named __proto__ stays an ordinary field, as JSON.parse makes it.
    if (name !== null) Object.defineProperty(out, name, { value: fromCbor(value), enumerable: true, writable: true, configurable: true });
  }
  return out;
}
