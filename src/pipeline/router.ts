import type { Config } from '../config/types.js';
import type { EdgeMessage } from '../core/message.js';
import type { EdgeError } from '../core/errors.js';
import type { Metrics } from '../admin/metrics.js';
import type { LocalDelivery } from './local.js';
import { PriorityTable } from './priorities.js';

/** What the router needs of the uplink stage. */
export interface UplinkStage {
  submit(msg: EdgeMessage, priority: 'critical' | 'high' | 'normal' | 'low', done: (err: EdgeError | null) => void): void;
}

/**
 * accept → route → act. Until the rule language exists, routing is `routing.default`: device
 * messages go up (or stay local), cloud messages are delivered locally and never go up.
 * `done` is the acceptance: it runs once the message is safe (committed where it goes up), and
 * the adapter acknowledges the device only then.
 */
export class Router {
  private readonly priorities: PriorityTable;

  constructor(
    private readonly routing: Config['routing'],
    private readonly uplink: UplinkStage | null,
    private readonly local: LocalDelivery,
    private readonly metrics: Metrics,
  ) {
    this.priorities = new PriorityTable(routing.priorities);
  }

  /**
   * A message from a device. Its adapter's own broker delivers it to local subscribers of its
   * topic (as the embedded MQTT broker does); the router decides whether and how it goes up.
   */
  acceptFromDevice(msg: EdgeMessage, done: (err: EdgeError | null) => void): void {
    this.metrics.receivedFrom(msg.protocol).inc();
    if (this.routing.default === 'uplink' && this.uplink) {
      this.uplink.submit(msg, this.priorities.priorityOf(msg.topic), done);
    } else {
      done(null);
    }
  }

  /** A message from the cloud downlink: published locally, never sent back up. */
  acceptFromCloud(msg: EdgeMessage): void {
    this.metrics.receivedFrom('cloud').inc();
    this.local.deliver(msg);
  }
}
