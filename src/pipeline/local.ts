import type { EdgeMessage } from '../core/message.js';

/** A way to reach local devices, registered by an adapter (MQTT today; CoAP and WebSocket later). */
export type LocalSink = (msg: EdgeMessage) => void;

/**
 * Local delivery without an import cycle: adapters register their sinks here and the
 * pipeline calls them, so no stage imports the adapter that feeds it.
 */
export class LocalDelivery {
  private readonly sinks: LocalSink[] = [];

  register(sink: LocalSink): void {
    this.sinks.push(sink);
  }

  deliver(msg: EdgeMessage): void {
    for (const sink of this.sinks) sink(msg);
  }
}
