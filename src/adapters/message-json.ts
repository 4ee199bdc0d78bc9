// A message as JSON text for devices that receive more than one topic on one stream: the /ws `msg`
// frame and a CoAP notification of a wildcard filter carry the same fields, encoded the same way
// (../shared/spec/protocols.md). Pure: no I/O, no state.
import type { EdgeMessage } from '../core/message.js';
import { asBuffer } from '../core/bytes.js';

/**
 * `{["op":<op>,]"topic","payload","contentType","ts","msgId"[,"encoding":"base64"][,"retain":true]}`,
 * made once per message and shared by every subscriber it goes to. A `json` payload is JSON text
 * checked when the message arrived, so it is spliced in as it is (as the cloud envelope does);
 * `text` is a string; `binary` and `cbor` are base64 with `"encoding":"base64"`. `retained`: handed
 * over when a subscription starts.
 */
export function messageJson(m: EdgeMessage, retained: boolean, op?: string): Buffer {
  const base64 = m.contentType === 'binary' || m.contentType === 'cbor';
  const head = `{${op === undefined ? '' : `"op":${JSON.stringify(op)},`}"topic":${JSON.stringify(m.topic)},"payload":`;
  const tail = `,"contentType":"${m.contentType}","ts":${m.ts},"msgId":"${m.id}"${base64 ? ',"encoding":"base64"' : ''}${retained ? ',"retain":true' : ''}}`;
  const bytes = asBuffer(m.payload);
  if (m.contentType === 'json' && bytes.byteLength > 0) {
    // A UTF-8 byte order mark may precede a JSON text but not stand inside a JSON document.
    const json = bytes.byteLength >= 3 && bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf ? bytes.subarray(3) : bytes;
    return Buffer.concat([Buffer.from(head), json, Buffer.from(tail)]);
  }
  const payload = base64 ? `"${bytes.toString('base64')}"` : JSON.stringify(bytes.toString('utf8'));
  return Buffer.from(head + payload + tail);
}
