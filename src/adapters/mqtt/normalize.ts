// Pure translation between MQTT packets and the pipeline's shapes: no I/O, no checks (the ingress gate's).
import type { EdgeMessage, QoS } from '../../core/message.js';
import type { PublishRequest } from '../../pipeline/ingress.js';
import { asBuffer } from '../../core/bytes.js';

export interface MqttPublishFields {
  topic: string;
  payload: Buffer | Uint8Array | string;
  qos: QoS;
  retain: boolean;
}

/** A PUBLISH as the gate takes it; MQTT 3.1.1 carries no content type, so the gate sniffs it. */
export function mqttToPublishRequest(p: MqttPublishFields): PublishRequest {
  return { topic: p.topic, payload: typeof p.payload === 'string' ? Buffer.from(p.payload) : p.payload, qos: p.qos, retain: p.retain };
}

/** The packet that publishes an EdgeMessage to local MQTT subscribers. */
export function edgeMessageToMqtt(msg: EdgeMessage): MqttPublishFields & { cmd: 'publish'; dup: false } {
  return { cmd: 'publish', topic: msg.topic, payload: asBuffer(msg.payload), qos: msg.qos, retain: msg.retain, dup: false };
}
