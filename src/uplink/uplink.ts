import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import type { Priority } from '../core/priority.js';
import type { EdgeMessage } from '../core/message.js';
import type { EdgeError } from '../core/errors.js';
import type { DurableCache } from './cache.js';
import { cloudTopic } from './envelope.js';

export type SubmitDone = (err: EdgeError | null) => void;

/** What the uplink entry reports; metrics hang on it. */
export interface UplinkEvents {
  dropped(reason: 'control_topic'): void;
}

/**
 * The entry to the uplink stage: what goes up is committed to the durable cache here, and the
 * forwarder takes it from there. Messages whose cloud topic would land on the proxy's own
 * control topics never go up, so no device can push rules or inject downlink through it.
 */
export class Uplink {
  private readonly controlTopics: Set<string>;
  private readonly downPrefix: string;
  private lastControlLog = 0;

  constructor(
    private readonly cfg: Config['uplink'],
    private readonly cache: DurableCache,
    private readonly events: UplinkEvents,
    private readonly log: Logger,
  ) {
    const cp = cfg.controlPrefix;
    this.controlTopics = new Set([`${cp}status`, `${cp}down`, `${cp}rules/set`, `${cp}rules/change`, `${cp}rules/result`]);
    this.downPrefix = `${cp}down/`;
  }

  /** The proxy's own cloud topics: status, down/#, rules/set, rules/change, rules/result. */
  isControlTopic(localTopic: string): boolean {
    // A device topic holds no wildcards, so plain comparisons decide it.
    const topic = cloudTopic(this.cfg.topicPrefix, localTopic);
    return this.controlTopics.has(topic) || topic.startsWith(this.downPrefix);
  }

  /** Commit a message for the cloud; `done` runs once it is durable, or with why it was refused. */
  submit(msg: EdgeMessage, priority: Priority, done: SubmitDone): void {
    if (msg.protocol === 'cloud') {
      done(null); // what came from the cloud never goes back up
      return;
    }
    if (this.isControlTopic(msg.topic)) {
      this.events.dropped('control_topic');
      // Counted every time, logged at most once a minute: a device must not flood the log.
      const now = Date.now();
      if (now - this.lastControlLog < 60_000) {
        done(null);
        return;
      }
      this.lastControlLog = now;
      this.log.warn(
        { deviceId: msg.deviceId, topic: msg.topic },
        'not sent up: its cloud topic falls under the control prefix; choose device topics outside it or change uplink.topicPrefix',
      );
      done(null);
      return;
    }
    this.cache.append(msg, priority, done);
  }
}
