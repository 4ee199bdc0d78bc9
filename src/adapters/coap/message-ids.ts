// Message ids of what the proxy sends on its own (separate responses, notifications, answers to
// non-confirmable requests). RFC 7252 §4.4 asks that an id not be used again with the same
// endpoint within EXCHANGE_LIFETIME; one counter for everyone would come round in 65,536 messages,
// which one busy peer forces in seconds, and an ACK or reset meant for one message would then end
// another. So each endpoint has its own counter, started at random (§4.4), remembered for
// EXCHANGE_LIFETIME after its last use, and the endpoints remembered are bounded in count.
import { randomInt } from 'node:crypto';
import { EXCHANGE_LIFETIME_MS } from './exchanges.js';

/** Endpoints whose counters are remembered; past it the one used the longest ago is forgotten. */
export const MESSAGE_ID_ENDPOINTS = 20_000;

interface Counter {
  mid: number;
  at: number;
}

export class MessageIds {
  // Least recently used first: each use moves an endpoint to the end.
  private readonly byEndpoint = new Map<string, Counter>();

  constructor(
    private readonly maxEndpoints = MESSAGE_ID_ENDPOINTS,
    private readonly lifetimeMs = EXCHANGE_LIFETIME_MS,
  ) {}

  /** The next id for `endpoint` (address|port). */
  next(endpoint: string, now: number): number {
    let c = this.byEndpoint.get(endpoint);
    if (c) this.byEndpoint.delete(endpoint);
    else {
      c = { mid: randomInt(0x10000), at: now };
      if (this.byEndpoint.size >= this.maxEndpoints) this.byEndpoint.delete(this.byEndpoint.keys().next().value!);
    }
    c.mid = (c.mid + 1) & 0xffff;
    c.at = now;
    this.byEndpoint.set(endpoint, c);
    return c.mid;
  }

  /** Forget counters unused for EXCHANGE_LIFETIME (called from the adapter's sweep). */
  expire(now: number): void {
    for (const [endpoint, c] of this.byEndpoint) {
      if (c.at + this.lifetimeMs > now) break;
      this.byEndpoint.delete(endpoint);
    }
  }

  get size(): number {
    return this.byEndpoint.size;
  }
}
