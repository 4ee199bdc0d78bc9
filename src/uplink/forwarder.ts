import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import { DurableCache, type CachedMessage } from './cache.js';
import type { CloudLink } from './cloud.js';
import { cloudTopic, encodeEnvelope } from './envelope.js';
import { PRIORITIES, priorityRank, type Priority } from '../core/priority.js';

// How many committed messages the forwarder holds in memory per priority, ahead of the cloud.
// Past this it stops taking them from commits and reads them back from SQLite: a backlog lives
// on disk, not in the heap, whatever its size.
const READ_BATCH = 512;
const MAX_BUFFERED = 4096;

/** What the forwarder reports; metrics hang on these. */
export interface ForwarderEvents {
  sent(): void;
  acked(): void;
  dropped(reason: 'cloud_refused'): void;
}

/** One priority's queue as the forwarder sees it: a window of the cache, read in key order. */
class Lane {
  buffer: CachedMessage[] = [];
  head = 0;
  /** key of the last message taken into the buffer */
  cursor: number;
  /** true when everything committed after `cursor` will arrive through onCommitted */
  caughtUp = false;

  constructor(readonly priority: Priority) {
    this.cursor = DurableCache.queueStart(priority);
  }

  buffered(): number {
    return this.buffer.length - this.head;
  }
}

/**
 * Moves messages from the durable cache to the cloud: at most `maxInflight` unacknowledged at a
 * time, at most `maxRate` a second when set, the highest priority first, and each deleted only
 * after the cloud broker's PUBACK (docs/cache.md: guarantees 1 to 4, The drain). On a disconnect
 * everything not yet acknowledged is read again from the cache and resent with its id.
 */
export class Forwarder {
  private lanes: Lane[] = PRIORITIES.map((p) => new Lane(p));
  private inflight = 0;
  private generation = 0;
  private stopping = false;
  private readonly refillAt: number;
  private settled: (() => void) | null = null;
  private tokens = 0;
  private lastRefill = Date.now();
  private rateTimer: NodeJS.Timeout | null = null;

  constructor(
    private readonly cache: DurableCache,
    private readonly cloud: CloudLink,
    private readonly cfg: Config['uplink'],
    private readonly edgeId: string,
    private readonly events: ForwarderEvents,
    private readonly log: Logger,
  ) {
    this.refillAt = Math.floor(cfg.maxInflight / 2);
    cache.onCommitted((rows) => this.onCommitted(rows));
    cloud.on('up', () => this.restart());
    cloud.on('down', () => this.reset());
  }

  private reset(): void {
    this.generation++;
    this.lanes = PRIORITIES.map((p) => new Lane(p));
    this.inflight = 0;
    if (this.rateTimer) {
      clearTimeout(this.rateTimer);
      this.rateTimer = null;
    }
  }

  private restart(): void {
    this.reset();
    const backlog = this.cache.messageCount();
    if (backlog > 0)
      this.log.info(
        { backlog, byPriority: this.cache.messagesByPriority() },
        'draining the cached backlog to the cloud, highest priority first',
      );
    this.pump();
  }

  private onCommitted(rows: CachedMessage[]): void {
    if (!this.cloud.connected) return;
    for (const r of rows) {
      const lane = this.lanes[priorityRank(r.priority)]!;
      // The reader may have seen this commit before its callback arrived: never take a row twice.
      if (r.key <= lane.cursor) continue;
      if (lane.caughtUp && lane.buffered() < MAX_BUFFERED) {
        lane.buffer.push(r);
        lane.cursor = r.key;
      } else {
        lane.caughtUp = false; // read from the cache when this lane's buffer runs dry
      }
    }
    this.pump();
  }

  /** The next message to send: the highest priority that has one. */
  private next(): CachedMessage | undefined {
    for (const lane of this.lanes) {
      while (lane.head < lane.buffer.length) {
        const m = lane.buffer[lane.head++]!;
        if (!this.cache.isEvicted(m)) return m;
      }
      if (lane.buffer.length > 0) {
        lane.buffer = [];
        lane.head = 0;
      }
      if (lane.caughtUp) continue; // nothing committed that onCommitted has not handed over
      const read = this.cache.readQueue(lane.priority, lane.cursor, READ_BATCH);
      lane.buffer = read.messages;
      lane.cursor = read.lastKey;
      // A short read means the reader reached the end of what is committed.
      lane.caughtUp = read.rows < READ_BATCH;
      if (lane.buffer.length > 0) return lane.buffer[lane.head++];
      if (!lane.caughtUp) return this.next(); // a whole batch already delivered or evicted: read on
    }
    return undefined;
  }

  private pump(): void {
    const max = this.cfg.maxInflight;
    while (!this.stopping && this.cloud.connected && this.inflight < max) {
      if (!this.takeToken()) return;
      const m = this.next();
      if (!m) {
        if (this.cfg.maxRate > 0) this.tokens++; // not used
        return;
      }
      if (!this.send(m)) return;
    }
  }

  /** uplink.maxRate as a token bucket, one second deep; 0 means no limit. */
  private takeToken(): boolean {
    const rate = this.cfg.maxRate;
    if (rate <= 0) return true;
    const now = Date.now();
    this.tokens = Math.min(rate, this.tokens + ((now - this.lastRefill) / 1000) * rate);
    this.lastRefill = now;
    if (this.tokens >= 1) {
      this.tokens--;
      return true;
    }
    if (!this.rateTimer) {
      this.rateTimer = setTimeout(
        () => {
          this.rateTimer = null;
          this.pump();
        },
        Math.max(1, Math.ceil(((1 - this.tokens) / rate) * 1000)),
      );
    }
    return false;
  }

  private send(m: CachedMessage): boolean {
    const generation = this.generation;
    const body =
      this.cfg.format === 'envelope'
        ? encodeEnvelope(m, this.edgeId)
        : Buffer.from(m.payload.buffer, m.payload.byteOffset, m.payload.byteLength);
    const sent = this.cloud.publish(cloudTopic(this.cfg.topicPrefix, m.topic), body, m.id, (err) => {
      if (generation !== this.generation) return; // a resend after the reconnect owns it now
      this.inflight--;
      if (err) {
        if (!this.refusedByCloud(m, err)) return; // the connection is going down: it goes again later
      } else {
        this.events.acked();
      }
      this.cache.ack(m);
      if (this.inflight === 0) this.settled?.();
      // Refill once half the window is free rather than one publish per PUBACK: the publishes of
      // one refill leave in one socket write, where one each would cost a system call each.
      if (this.inflight <= this.refillAt) this.pump();
    });
    if (!sent) return false; // not connected after all; the message stays in the cache
    this.inflight++;
    this.events.sent();
    return true;
  }

  /**
   * An MQTT 5 PUBACK with a failure reason code (0x80 and up, e.g. 0x87 not authorized): the
   * broker received the message and will refuse it again, so resending it would only hold up
   * the queue. It is dropped, counted and logged. Any other error means the link went down.
   */
  private refusedByCloud(m: CachedMessage, err: Error): boolean {
    const reasonCode = (err as { code?: unknown }).code;
    if (typeof reasonCode !== 'number' || reasonCode < 0x80) return false;
    this.events.dropped('cloud_refused');
    this.log.error(
      { deviceId: m.deviceId, topic: m.topic, id: m.id, reasonCode },
      `the cloud broker refused a message (reason code 0x${reasonCode.toString(16)}: ${err.message}); it is dropped. Check the broker's ACL and size limits for this topic`,
    );
    return true;
  }

  inflightCount(): number {
    return this.inflight;
  }

  /** Stop sending and wait, at most `timeoutMs`, for the publishes in flight to be acknowledged. */
  async settle(timeoutMs: number): Promise<void> {
    this.stopping = true;
    if (this.inflight === 0 || !this.cloud.connected) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.settled = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    this.settled = null;
  }
}
