// Pure translation between MQTT packets and EdgeMessages: no I/O, no routing.
import type { EdgeMessage, QoS } from '../../core/message.js';
import { EDGE_DEVICE_ID, isValidDeviceId } from '../../core/message.js';
import { sniffContentType } from '../../core/content-type.js';
import { newMessageId } from '../../core/ids.js';
import { asBuffer } from '../../core/bytes.js';

export interface MqttPublishFields {
  topic: string;
  payload: Buffer | Uint8Array | string;
  qos: QoS;
  retain: boolean;
}

/** In open mode the device id is the MQTT username, else the client id (protocols.md). */
export function deviceIdFor(username: string | undefined, clientId: string): string {
  return username !== undefined && username !== '' ? username : clientId;
}

/** Why an id cannot be a device's, or null when it can. */
export function deviceIdProblem(id: string): string | null {
  if (id === EDGE_DEVICE_ID) return `"${EDGE_DEVICE_ID}" is reserved for the proxy itself`;
  if (!isValidDeviceId(id)) return 'a device id is 1 to 128 of A-Z a-z 0-9 _ . : -';
  return null;
}

export function mqttToEdgeMessage(p: MqttPublishFields, deviceId: string, now: number = Date.now()): EdgeMessage {
  const payload = typeof p.payload === 'string' ? Buffer.from(p.payload) : p.payload;
  return {
    id: newMessageId(now),
    ts: now,
    deviceId,
    protocol: 'mqtt',
    topic: p.topic,
    payload,
    contentType: sniffContentType(payload).contentType,
    qos: p.qos,
    retain: p.retain,
    props: {},
    hops: 0,
  };
}

/** The packet that publishes an EdgeMessage to local MQTT subscribers. */
export function edgeMessageToMqtt(msg: EdgeMessage): MqttPublishFields & { cmd: 'publish'; dup: false } {
  const payload = asBuffer(msg.payload);
  return { cmd: 'publish', topic: msg.topic, payload, qos: msg.qos, retain: msg.retain, dup: false };
}
