import type { ContentType } from '../core/message.js';
import { asBuffer } from '../core/bytes.js';

/** The fields of a message that travel to the cloud. */
export interface UplinkFields {
  id: string;
  ts: number;
  deviceId: string;
  topic: string;
  contentType: ContentType;
  payload: Uint8Array;
}

/**
 * The cloud envelope: {"id","ts","deviceId","topic","contentType","payload","edge"} (docs/message-model.md, To the cloud).
 * A `json` payload is already JSON text, checked when the message arrived, so its bytes are
 * spliced in as they are instead of being parsed and serialized again.
 */
export function encodeEnvelope(m: UplinkFields, edgeId: string): Buffer {
  const head = `{"id":"${m.id}","ts":${m.ts},"deviceId":${JSON.stringify(m.deviceId)},"topic":${JSON.stringify(m.topic)},"contentType":"${m.contentType}","payload":`;
  const tail = `,"edge":${JSON.stringify(edgeId)}}`;
  if (m.contentType === 'json') {
    // A UTF-8 byte order mark is allowed before a JSON text but not inside a JSON document.
    const json = hasBom(m.payload) ? m.payload.subarray(3) : m.payload;
    const headLen = Buffer.byteLength(head);
    const tailLen = Buffer.byteLength(tail);
    const out = Buffer.allocUnsafe(headLen + json.byteLength + tailLen);
    out.write(head, 0);
    out.set(json, headLen);
    out.write(tail, headLen + json.byteLength);
    return out;
  }
  const payload =
    m.contentType === 'text' ? JSON.stringify(asBuffer(m.payload).toString('utf8')) : `"${asBuffer(m.payload).toString('base64')}"`;
  return Buffer.from(head + payload + tail);
}

function hasBom(b: Uint8Array): boolean {
  return b.byteLength >= 3 && b[0] === 0xef && b[1] === 0xbb && b[2] === 0xbf;
}

/** The cloud topic of a local topic. */
export function cloudTopic(topicPrefix: string, localTopic: string): string {
  return topicPrefix + localTopic;
}
