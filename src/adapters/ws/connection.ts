// One /ws connection: its device, its subscriptions, the answers it is owed in order, the refused
// frames it sent lately, and how far behind it reads. The adapter decides; this keeps the state.
import type { WebSocket } from 'ws';
import type { Identity } from '../../auth/service.js';
import type { FilterIndex } from '../../core/filter-index.js';
import { OrderedAcks } from '../ordered-acks.js';
import type { FrameId } from './frames.js';
import type { Outbox } from './outbox.js';

/** A subscription: the `sub` frame's id, so that a later E_ACL drop names the request it undoes. */
export interface Subscription {
  readonly id: FrameId | undefined;
}

/**
 * The last `max` refusals' times, in a ring: the connection is abusive when `max` of them fall
 * within `windowMs`. Allocated at the first refusal; memory is `max` numbers, whatever the device sends.
 */
export class ErrorWindow {
  private times: Float64Array | null = null;
  private count = 0;

  constructor(
    private readonly max: number,
    private readonly windowMs: number,
  ) {}

  /** Record one refusal at `now`; true when it is the `max`-th within the window. */
  note(now: number): boolean {
    this.times ??= new Float64Array(this.max);
    this.times[this.count % this.max] = now;
    this.count++;
    if (this.count < this.max) return false;
    // The slot written next holds the oldest of the last `max`.
    return now - this.times[this.count % this.max]! < this.windowMs;
  }
}

export class WsConnection {
  private readonly subs = new Map<string, Subscription>();
  /** `ack` and `error` answers to qos 1 publishes leave in the order the publishes arrived */
  readonly answers = new OrderedAcks();
  /** qos 1 publishes handed to the pipeline and not answered yet */
  inflight = 0;
  /** reads paused: too many publishes in hand, or the proxy is stopping */
  paused = false;
  /** when its send buffer went over http.sendBufferBytes, while it stays over */
  overSince: number | null = null;
  /** set once the proxy decided to close it: nothing more is sent or read */
  closing = false;

  constructor(
    readonly ws: WebSocket,
    readonly identity: Identity,
    readonly remote: string,
    readonly errors: ErrorWindow,
    /** the adapter's connections under their filters: kept here in step with `subscriptions` */
    private readonly index: FilterIndex<WsConnection>,
    /**
     * where frames wait while its socket takes no more; null with permessage-deflate, whose
     * compressed messages `ws` may still hold while it compresses them, so only `ws` may order them
     */
    readonly outbox: Outbox | null,
  ) {}

  get subscriptions(): ReadonlyMap<string, Subscription> {
    return this.subs;
  }

  /** Subscribe, or replace the subscription to the same filter. */
  subscribe(filter: string, sub: Subscription): void {
    if (!this.subs.has(filter)) this.index.add(filter, this);
    this.subs.set(filter, sub);
  }

  /** False when it held no subscription to `filter`. */
  unsubscribe(filter: string): boolean {
    if (!this.subs.delete(filter)) return false;
    this.index.remove(filter, this);
    return true;
  }

  /** At its close: the adapter's index keeps nothing of it. */
  unsubscribeAll(): void {
    for (const filter of this.subs.keys()) this.index.remove(filter, this);
    this.subs.clear();
  }

  /** Bytes queued for it and not yet handed to the kernel. */
  get buffered(): number {
    return this.ws.bufferedAmount + (this.outbox?.bytes ?? 0);
  }

  /** A text frame to it, after everything queued before it. */
  send(data: string | Buffer, written?: (err?: Error) => void): void {
    if (this.outbox?.holding) this.outbox.push(typeof data === 'string' ? Buffer.from(data) : data, written);
    else this.ws.send(data, { binary: false }, written);
  }

  get open(): boolean {
    return !this.closing && this.ws.readyState === this.ws.OPEN;
  }
}
