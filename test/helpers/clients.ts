import mqtt, { type MqttClient, type IClientOptions } from 'mqtt';
import { topicMatches } from '../../src/core/topic.js';

export async function connectClient(port: number, opts: IClientOptions = {}): Promise<MqttClient> {
  return mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, { reconnectPeriod: 0, connectTimeout: 5_000, ...opts });
}

export interface Received {
  topic: string;
  payload: Buffer;
  retain: boolean;
}

export interface Collected {
  messages: Received[];
  json<T = Record<string, unknown>>(): T[];
}

/** Subscribes and collects every message; `json()` parses the payloads. */
export async function collect(client: MqttClient, filter: string, qos: 0 | 1 = 1): Promise<Collected> {
  const messages: Received[] = [];
  client.on('message', (topic, payload, packet) => {
    if (topicMatches(filter, topic)) messages.push({ topic, payload, retain: packet.retain });
  });
  await client.subscribeAsync(filter, { qos });
  return { messages, json: <T>() => messages.map((m) => JSON.parse(m.payload.toString()) as T) };
}
