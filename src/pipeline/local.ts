import type { Logger } from 'pino';
import type { EdgeMessage, Protocol } from '../core/message.js';
import { RetainedStore } from './retained.js';

/** A way to reach local subscribers, registered by each adapter (MQTT, and later CoAP and WebSocket). */
export interface LocalSink {
  deliver(msg: EdgeMessage): void;
}

/** What local delivery reports; metrics hang on it. */
export interface LocalDeliveryEvents {
  delivered(source: Protocol): void;
}

/**
 * Local delivery across protocols: every accepted device message, every message a rule publishes
 * and every cloud downlink is handed here once, retained messages are kept in the one store every
 * adapter reads, and each adapter's sink fans the message out to its own subscribers. Adapters
 * register their sinks, so the pipeline never imports an adapter.
 */
export class LocalDelivery {
  readonly retained = new RetainedStore();
  private readonly sinks: LocalSink[] = [];

  constructor(
    private readonly events: LocalDeliveryEvents,
    private readonly log: Logger,
  ) {}

  register(sink: LocalSink): void {
    this.sinks.push(sink);
  }

  deliver(msg: EdgeMessage): void {
    if (msg.retain) this.retained.set(msg);
    this.events.delivered(msg.protocol);
    for (const sink of this.sinks) {
      try {
        sink.deliver(msg);
      } catch (err) {
        // One protocol's failure must not keep the message from the others, nor its sender unacknowledged.
        this.log.error({ topic: msg.topic.slice(0, 300), err: (err as Error).message }, 'local delivery to one protocol failed');
      }
    }
  }
}
