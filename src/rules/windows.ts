// What a window keeps for one device: recent values of one expression, by time (`5m`, over
// msg.ts) or by count (`10`), or just the previous value (delta, last, changed).

import type { Value } from './values.js';
import { equal } from './values.js';

export interface WindowLimits {
  maxValues: number;
  /** called when the oldest values go because the window holds maxValues */
  truncated(): void;
}

/** A time or count window: timestamps and numeric values, oldest first, with a running sum. */
export class SeriesWindow {
  private ts: number[] = [];
  private vs: number[] = [];
  private head = 0;
  private total = 0;
  lastSeen = 0;

  constructor(
    private readonly shape: { kind: 'time'; ms: number } | { kind: 'count'; n: number },
    private readonly limits: WindowLimits,
  ) {}

  record(v: number, ts: number): void {
    this.ts.push(ts);
    this.vs.push(v);
    this.total += v;
    this.expire(ts);
    const cap = this.shape.kind === 'count' ? Math.min(this.shape.n, this.limits.maxValues) : this.limits.maxValues;
    let dropped = false;
    while (this.size() > cap) {
      this.dropOldest();
      dropped = this.shape.kind === 'time' || this.limits.maxValues < this.shape.n ? true : dropped;
    }
    if (dropped) this.limits.truncated();
  }

  /** Drop what fell out of a time window as of `now`. */
  expire(now: number): void {
    if (this.shape.kind !== 'time') return;
    const from = now - this.shape.ms;
    while (this.head < this.ts.length && this.ts[this.head]! <= from) this.dropOldest();
  }

  private dropOldest(): void {
    this.total -= this.vs[this.head]!;
    this.head++;
    // Compact now and then, and recompute the sum so floating-point error does not build up.
    if (this.head > 1024 && this.head * 2 > this.ts.length) {
      this.ts = this.ts.slice(this.head);
      this.vs = this.vs.slice(this.head);
      this.head = 0;
      this.total = this.vs.reduce((a, b) => a + b, 0);
    }
  }

  size(): number {
    return this.ts.length - this.head;
  }

  sum(): Value {
    return this.size() === 0 ? 0 : this.total;
  }

  avg(): Value {
    const n = this.size();
    return n === 0 ? null : this.total / n;
  }

  minOf(): Value {
    if (this.size() === 0) return null;
    let m = Infinity;
    for (let i = this.head; i < this.vs.length; i++) if (this.vs[i]! < m) m = this.vs[i]!;
    return m;
  }

  maxOf(): Value {
    if (this.size() === 0) return null;
    let m = -Infinity;
    for (let i = this.head; i < this.vs.length; i++) if (this.vs[i]! > m) m = this.vs[i]!;
    return m;
  }

  rate(): Value {
    if (this.size() < 2) return null;
    const dt = (this.ts[this.ts.length - 1]! - this.ts[this.head]!) / 1000;
    if (dt <= 0) return null;
    return (this.vs[this.vs.length - 1]! - this.vs[this.head]!) / dt;
  }
}

/** delta, last, changed: the value recorded for this message, and the one before it. */
export class PreviousWindow {
  private prev: Value | undefined = undefined;
  private cur: Value | undefined = undefined;
  private curSeq = -1;
  lastSeen = 0;

  record(v: Value, seq: number): void {
    this.prev = this.cur;
    this.cur = v;
    this.curSeq = seq;
  }

  /** The previous value as of message `seq`: null on the first. */
  last(seq: number): Value {
    const v = this.curSeq === seq ? this.prev : this.cur;
    return v === undefined ? null : v;
  }

  delta(seq: number): Value {
    if (this.curSeq !== seq || typeof this.cur !== 'number' || typeof this.prev !== 'number') return null;
    return this.cur - this.prev;
  }

  changed(seq: number): boolean {
    return this.curSeq === seq && this.prev !== undefined && !equal(this.cur as Value, this.prev);
  }
}

/** count(W): how many messages in scope fell in the window, this one included. */
export class CountWindow {
  private readonly series: SeriesWindow;
  lastSeen = 0;

  constructor(shape: { kind: 'time'; ms: number } | { kind: 'count'; n: number }, limits: WindowLimits) {
    this.series = new SeriesWindow(shape, limits);
  }

  record(ts: number): void {
    this.series.record(1, ts);
  }

  count(now: number): number {
    this.series.expire(now);
    return this.series.size();
  }
}
