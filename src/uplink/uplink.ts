import type { Logger } from 'pino';
import type { Config, Priority } from '../config/types.js';
import type { EdgeMessage } from '../core/message.js';
import type { EdgeError } from '../core/errors.js';
import { topicMatches } from '../core/topic.js';
import type { Metrics } from '../admin/metrics.js';
import type { DurableCache } from './cache.js';
import { cloudTopic } from './envelope.js';

export type SubmitDone = (err: EdgeError | null) => void;

/**
 * The entry to the uplink stage: what goes up is committed to the durable cache here, and the
 * forwarder takes it from there. Messages whose cloud topic would land on the proxy's own
 * control topics never go up, so no device can push rules or inject downlink through it.
 */
export class Uplink {
  private readonly controlFilters: string[];

  constructor(
    private readonly cfg: Config['uplink'],
    private readonly cache: DurableCache,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    const cp = cfg.controlPrefix;
    this.controlFilters = [`${cp}status`, `${cp}down/#`, `${cp}rules/set`, `${cp}rules/result`];
  }

  isControlTopic(localTopic: string): boolean {
    const topic = cloudTopic(this.cfg.topicPrefix, localTopic);
    // Every control filter starts with the control prefix: most topics are ruled out here.
    if (!topic.startsWith(this.cfg.controlPrefix)) return false;
    for (const f of this.controlFilters) if (topicMatches(f, topic)) return true;
    return false;
  }

  /** Commit a message for the cloud; `done` runs once it is durable, or with why it was refused. */
  submit(msg: EdgeMessage, priority: Priority, done: SubmitDone): void {
    if (msg.protocol === 'cloud') {
      done(null); // what came from the cloud never goes back up
      return;
    }
    if (this.isControlTopic(msg.topic)) {
      this.metrics.dropped.labels('control_topic').inc();
      this.log.warn({ deviceId: msg.deviceId, topic: msg.topic }, 'not sent up: its cloud topic falls under the control prefix; choose device topics outside it or change uplink.topicPrefix');
      done(null);
      return;
    }
    this.cache.append(msg, priority, (err) => {
      if (err) {
        this.metrics.cacheRefused.inc();
        this.metrics.refused.labels('cache').inc();
      }
      done(err);
    });
  }
}
