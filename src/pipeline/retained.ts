import type { EdgeMessage } from '../core/message.js';
import { topicMatches } from '../core/topic.js';

/**
 * The retained messages of every protocol, one per topic: what an MQTT subscription, a CoAP GET
 * and a WebSocket `sub` are handed first. A retained message with an empty payload clears its
 * topic, as in MQTT [MQTT-3.3.1-10].
 */
export class RetainedStore {
  private readonly byTopic = new Map<string, EdgeMessage>();
  private payloadBytes = 0;

  set(msg: EdgeMessage): void {
    const old = this.byTopic.get(msg.topic);
    if (old) this.payloadBytes -= old.payload.byteLength + Buffer.byteLength(old.topic);
    if (msg.payload.byteLength === 0) {
      this.byTopic.delete(msg.topic);
      return;
    }
    this.byTopic.set(msg.topic, msg);
    this.payloadBytes += msg.payload.byteLength + Buffer.byteLength(msg.topic);
  }

  get(topic: string): EdgeMessage | undefined {
    return this.byTopic.get(topic);
  }

  /** Every retained message a subscription to `filter` receives. */
  *matching(filter: string): Generator<EdgeMessage> {
    if (!filter.includes('+') && !filter.includes('#')) {
      const one = this.byTopic.get(filter);
      if (one) yield one;
      return;
    }
    for (const msg of this.byTopic.values()) if (topicMatches(filter, msg.topic)) yield msg;
  }

  get size(): number {
    return this.byTopic.size;
  }

  /** payload and topic bytes held */
  get bytes(): number {
    return this.payloadBytes;
  }
}
