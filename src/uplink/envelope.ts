import type { ContentType } from '../core/message.js';

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
 * The cloud envelope: {"id","ts","deviceId","topic","contentType","payload","edge"} (uplink-cache.md).
 * A `json` payload is already JSON text, checked when the message arrived, so its bytes are
 * spliced in as they are instead of being parsed and serialized again.
 */
export function encodeEnvelope(m: UplinkFields, edgeId: string): Buffer {
  const head = `{"id":"${m.id}","ts":${m.ts},"deviceId":${JSON.stringify(m.deviceId)},"topic":${JSON.stringify(m.topic)},"contentType":"${m.contentType}","payload":`;
  const tail = `,"edge":${JSON.stringify(edgeId)}}`;
  if (m.contentType === 'json') {
    const headLen = Buffer.byteLength(head);
    const tailLen = Buffer.byteLength(tail);
    const out = Buffer.allocUnsafe(headLen + m.payload.byteLength + tailLen);
    out.write(head, 0);
    out.set(m.payload, headLen);
    out.write(tail, headLen + m.payload.byteLength);
    return out;
  }
  const payload = m.contentType === 'text'
    ? JSON.stringify(Buffer.from(m.payload.buffer, m.payload.byteOffset, m.payload.byteLength).toString('utf8'))
    : `"${Buffer.from(m.payload.buffer, m.payload.byteOffset, m.payload.byteLength).toString('base64')}"`;
  return Buffer.from(head + payload + tail);
}

/** The cloud topic of a local topic. */
export function cloudTopic(topicPrefix: string, localTopic: string): string {
  return topicPrefix + localTopic;
}
