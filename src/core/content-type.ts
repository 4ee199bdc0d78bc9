import { isUtf8 } from 'node:buffer';
import type { ContentType } from './message.js';

/** What detection learnt: the type, and the decoded value when detection had to parse it anyway. */
interface Detected {
  contentType: ContentType;
  /** the parsed JSON value for `json`, the string for `text`, undefined otherwise */
  decoded?: unknown;
}

// A native check, then a decode: cheaper than a fatal TextDecoder that throws on bad input.
function decodeUtf8(bytes: Uint8Array): string | undefined {
  if (!isUtf8(bytes)) return undefined;
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8');
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text; // a byte order mark is not content
}

/**
 * MQTT 3.1.1 carries no content type, so it is sniffed: a JSON object or array is `json`,
 * other valid UTF-8 is `text`, anything else `binary` (docs/message-model.md, Content type).
 */
export function sniffContentType(bytes: Uint8Array): Detected {
  const text = decodeUtf8(bytes);
  if (text === undefined) return { contentType: 'binary' };
  const first = firstNonSpace(text);
  if (first === '{' || first === '[') {
    try {
      return { contentType: 'json', decoded: JSON.parse(text) as unknown };
    } catch {
      // looks like JSON but is not: it is still text
    }
  }
  return { contentType: 'text', decoded: text };
}

function firstNonSpace(s: string): string {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c !== 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0d) return s[i]!;
  }
  return '';
}

/** A declared payload checked: what is wrong with it, or its parsed value where checking parsed it. */
export type DeclaredContent = { problem: string } | { problem: null; decoded?: unknown };

/**
 * A payload whose content type the device declared (a CoAP Content-Format, a /ws frame): the bytes
 * must be what it says. Text must be UTF-8 and JSON a JSON text, as every consumer downstream (the
 * cloud envelope, `/ws` frames, the rules) takes them to be; CBOR and binary are carried as bytes,
 * so nothing is checked for them. The value parsed on the way is kept, so nobody parses it again.
 */
export function checkDeclaredContent(type: ContentType, bytes: Uint8Array): DeclaredContent {
  if (type !== 'json' && type !== 'text') return { problem: null };
  const text = decodeUtf8(bytes);
  if (text === undefined) return { problem: `the payload is declared ${type === 'json' ? 'JSON' : 'text'} but is not UTF-8` };
  if (type === 'text') return { problem: null, decoded: text };
  try {
    return { problem: null, decoded: JSON.parse(text) as unknown };
  } catch {
    return {
      problem: text.trim() === '' ? 'the payload is declared JSON but is empty' : 'the payload is declared JSON but does not parse as JSON',
    };
  }
}
