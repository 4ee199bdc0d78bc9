import type { Logger } from 'pino';
import type { Config } from '../config/types.js';
import type { Metrics } from '../admin/metrics.js';
import type { CachedMessage, DurableCache } from './cache.js';
import type { CloudLink } from './cloud.js';
import { cloudTopic, encodeEnvelope } from './envelope.js';

// How many committed messages the forwarder holds in memory ahead of the cloud. Past this it
// stops taking them from commits and reads them back from SQLite, so a backlog lives on disk.
const READ_BATCH = 256;
const MAX_BUFFERED = 4096;

/**
 * Moves messages from the durable cache to the cloud, at most `maxInflight` unacknowledged at
 * a time, and deletes each only after the cloud broker's PUBACK (uplink-cache.md, guarantee 1).
 * On a disconnect everything not yet acknowledged is read again from the cache and resent with
 * its id (guarantee 2), in cache order (guarantee 3).
 */
export class Forwarder {
  private buffer: CachedMessage[] = [];
  private head = 0;
  /** seq of the last message taken into the buffer */
  private cursor = 0;
  /** true when everything committed after `cursor` will arrive through onCommitted */
  private caughtUp = false;
  private inflight = 0;
  private generation = 0;
  /** acknowledgements per second over the last ten seconds, a ring of one-second buckets */
  private readonly ackBuckets = new Array<number>(10).fill(0);
  private ackSecond = 0;

  constructor(
    private readonly cache: DurableCache,
    private readonly cloud: CloudLink,
    private readonly cfg: Config['uplink'],
    private readonly edgeId: string,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    cache.onCommitted((rows) => this.onCommitted(rows));
    cloud.on('up', () => this.restart());
    cloud.on('down', () => this.reset());
  }

  private reset(): void {
    this.generation++;
    this.buffer = [];
    this.head = 0;
    this.cursor = 0;
    this.caughtUp = false;
    this.inflight = 0;
  }

  private restart(): void {
    this.reset();
    const backlog = this.cache.messageCount();
    if (backlog > 0) this.log.info({ backlog }, 'draining the cached backlog to the cloud');
    this.pump();
  }

  private onCommitted(rows: CachedMessage[]): void {
    if (!this.cloud.connected) return;
    if (this.caughtUp && this.buffered() + rows.length <= MAX_BUFFERED) {
      for (const r of rows) this.buffer.push(r);
      this.cursor = rows[rows.length - 1]!.seq;
    } else {
      this.caughtUp = false;
    }
    this.pump();
  }

  private buffered(): number {
    return this.buffer.length - this.head;
  }

  private next(): CachedMessage | undefined {
    if (this.head >= this.buffer.length) {
      if (this.buffer.length > 0) {
        this.buffer = [];
        this.head = 0;
      }
      if (this.caughtUp) return undefined; // nothing committed that onCommitted has not handed over
      this.buffer = this.cache.readAfter(this.cursor, READ_BATCH);
      this.head = 0;
      if (this.buffer.length > 0) this.cursor = this.buffer[this.buffer.length - 1]!.seq;
      // A short read means the reader reached the end of what is committed.
      this.caughtUp = this.buffer.length < READ_BATCH;
      if (this.buffer.length === 0) return undefined;
    }
    return this.buffer[this.head++];
  }

  private pump(): void {
    const max = this.cfg.maxInflight;
    while (this.cloud.connected && this.inflight < max) {
      const m = this.next();
      if (!m || !this.send(m)) return;
    }
  }

  private send(m: CachedMessage): boolean {
    const generation = this.generation;
    const body = this.cfg.format === 'envelope' ? encodeEnvelope(m, this.edgeId) : Buffer.from(m.payload.buffer, m.payload.byteOffset, m.payload.byteLength);
    const sent = this.cloud.publish(cloudTopic(this.cfg.topicPrefix, m.topic), body, m.id, (err) => {
      if (generation !== this.generation) return; // a resend after the reconnect owns it now
      this.inflight--;
      if (err) {
        // The connection is going down; the message stays in the cache and goes again.
        return;
      }
      this.cache.ack(m);
      this.metrics.uplinkAcked.inc();
      this.noteAck();
      this.pump();
    });
    if (!sent) return false; // not connected after all; the message stays in the cache
    this.inflight++;
    this.metrics.uplinkSent.inc();
    return true;
  }

  private noteAck(): void {
    this.rollBuckets(Math.floor(Date.now() / 1000));
    this.ackBuckets[this.ackSecond % 10]!++;
  }

  private rollBuckets(second: number): void {
    if (second === this.ackSecond) return;
    const gap = Math.min(10, second - this.ackSecond);
    for (let i = 1; i <= gap; i++) this.ackBuckets[(this.ackSecond + i) % 10] = 0;
    this.ackSecond = second;
  }

  /** Messages acknowledged by the cloud per second, over the last 10 s. */
  drainRate(): number {
    this.rollBuckets(Math.floor(Date.now() / 1000));
    return this.ackBuckets.reduce((a, b) => a + b, 0) / 10;
  }

  inflightCount(): number {
    return this.inflight;
  }
}
