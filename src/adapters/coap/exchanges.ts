// Deduplication of confirmable requests (RFC 7252 §4.5): a retransmission, the same message id
// from the same endpoint, is answered with what the original was answered and never processed
// again. Unlike node-coap, the exchange is remembered from the moment the original arrives, not
// from the moment it is answered, so a retransmission that comes while the original is still being
// committed waits for that answer instead of being processed a second time.

/** RFC 7252 §4.8.2: how long a message id may come back from the same endpoint. */
export const EXCHANGE_LIFETIME_MS = 247_000;
/**
 * Bookkeeping per exchange besides its key and answer: the Map entry, the object, the strings'
 * headers, the key built in pieces (measured: about 340 bytes of heap per exchange with a 23-character
 * key and a 12-byte answer, all counted).
 */
const ENTRY_OVERHEAD = 280;
/** Past the cap, exchanges are forgotten down to this share of it, so that the scan for them runs once in many requests. */
const LOW_WATER = 7 / 8;

export interface Exchange {
  readonly key: string;
  readonly at: number;
  /**
   * The ACK-layer answer (a piggybacked response or an empty ACK), once there is one, as latin1
   * text: a string of a few dozen bytes costs a fraction of a Buffer's two objects.
   */
  answer: string | null;
  /** retransmissions that arrived before there was an answer: each gets a copy of it */
  waiting: number;
  bytes: number;
}

export interface ExchangeEvents {
  /** an answered exchange forgotten before its lifetime to stay under the byte cap */
  evicted(): void;
}

export class Exchanges {
  // Insertion order is arrival order, so the oldest is always first.
  private readonly byKey = new Map<string, Exchange>();
  private held = 0;

  constructor(
    private readonly maxBytes: number,
    private readonly events: ExchangeEvents,
    private readonly lifetimeMs = EXCHANGE_LIFETIME_MS,
  ) {}

  static key(address: string, port: number, mid: number): string {
    return `${address}|${port}|${mid}`;
  }

  get(key: string): Exchange | undefined {
    return this.byKey.get(key);
  }

  /** Remember a new exchange; its answer comes with answered(). */
  begin(key: string, now: number): Exchange {
    const ex: Exchange = { key, at: now, answer: null, waiting: 0, bytes: ENTRY_OVERHEAD + key.length * 2 };
    this.byKey.set(key, ex);
    this.held += ex.bytes;
    this.trim();
    return ex;
  }

  answered(ex: Exchange, answer: Buffer): void {
    if (this.byKey.get(ex.key) !== ex) return; // evicted or expired meanwhile
    this.held += answer.length - (ex.answer?.length ?? 0);
    ex.answer = answer.toString('latin1');
    ex.bytes = ENTRY_OVERHEAD + ex.key.length * 2 + answer.length;
    this.trim();
  }

  /** The bytes of an exchange's answer, to send again. */
  static answerOf(ex: Exchange): Buffer | null {
    return ex.answer === null ? null : Buffer.from(ex.answer, 'latin1');
  }

  /** Forget exchanges past their lifetime (called from the adapter's sweep). */
  expire(now: number): void {
    for (const ex of this.byKey.values()) {
      if (ex.at + this.lifetimeMs > now) break;
      // One still in hand stays: forgetting it would let its retransmission be processed twice.
      if (ex.answer === null) continue;
      this.remove(ex);
    }
  }

  /**
   * Past the byte cap the oldest answered exchanges go first. Those still in hand stay: the
   * adapter bounds how many there are (its in-flight limit), so they cannot grow without end.
   */
  private trim(): void {
    if (this.held <= this.maxBytes) return;
    // Down to the low-water mark at once: each scan starts past the gaps a Map keeps where entries were deleted.
    const target = this.maxBytes * LOW_WATER;
    for (const ex of this.byKey.values()) {
      if (this.held <= target) return;
      if (ex.answer === null) continue;
      this.remove(ex);
      this.events.evicted();
    }
  }

  private remove(ex: Exchange): void {
    this.byKey.delete(ex.key);
    this.held -= ex.bytes;
  }

  get size(): number {
    return this.byKey.size;
  }

  get bytes(): number {
    return this.held;
  }
}
