// Block-wise uploads (RFC 7959 §2.3, Block1), reassembled here. An upload is keyed by the endpoint
// and the request's method, path and query, not by its token: RFC 7959 lets a client keep one token
// or take a new one per block, and libcoap takes a new one. The query holds the device's `d` and `k`,
// so one device cannot add blocks to another's upload. Blocks come in order; one that does not
// continue an upload is answered 4.08 and changes nothing. A retransmitted block never comes here:
// the exchange layer (exchanges.ts) answers it from its memory by message id.
//
// Memory: every upload in progress counts its buffer and its bookkeeping against one byte cap.
// Past the cap, or past the bound per endpoint, the upload idle the longest is dropped (its next
// block gets 4.08 and the client starts again): an abandoned upload, say of a device that
// rebooted, then never blocks the ones still moving, and a new upload is never refused for room.
import type { BlockOption } from './codec.js';

/**
 * An upload with no block for this long is forgotten. Longer than MAX_TRANSMIT_SPAN (45 s, RFC 7252
 * §4.8.2), so a client still retransmitting its next block finds its upload there.
 */
export const UPLOAD_IDLE_MS = 60_000;
/** Memory for all uploads in progress, across all endpoints (raised to limits.maxPayloadBytes when that is larger). */
export const UPLOADS_MAX_BYTES = 8 * 1024 * 1024;
/** Uploads in progress from one address and port. */
export const UPLOADS_PER_ENDPOINT = 4;
/** Bookkeeping per upload besides its key and buffer: the Map and Set entries, the objects. */
const ENTRY_OVERHEAD = 200;

export interface UploadEvents {
  /** an upload in progress dropped to stay under the byte cap or the bound per endpoint */
  evicted(): void;
  /** an upload in progress forgotten after UPLOAD_IDLE_MS without a block */
  expired(): void;
}

/** One block of an upload, as the adapter read it. */
export interface UploadBlock {
  /** address|port */
  endpoint: string;
  /** the endpoint, method, path and query: what makes blocks one upload */
  key: string;
  block: BlockOption;
  payload: Buffer;
  /** the whole upload's size, when the client tells it (RFC 7959 §4) */
  size1: number | null;
  contentFormat: number | null;
}

export type BlockOutcome =
  /** more to come: answer 2.31 Continue with the request's Block1 */
  | { kind: 'continue' }
  /** the last block: the whole payload, to publish as any other */
  | { kind: 'complete'; payload: Buffer; contentFormat: number | null }
  /** a block that does not continue an upload in progress: 4.08, nothing changed */
  | { kind: 'incomplete'; detail: string }
  /** over limits.maxPayloadBytes (by Size1 when known, else by the bytes so far): 4.13, the upload forgotten */
  | { kind: 'too_large'; size: number | null }
  /** a block whose length does not match its size: 4.00, the upload forgotten */
  | { kind: 'bad'; detail: string };

interface Upload {
  readonly key: string;
  readonly endpoint: string;
  /** the bytes so far, at the start of a buffer that grows by doubling */
  buf: Buffer;
  received: number;
  /** the first block's Content-Format, for a last block that has none */
  contentFormat: number | null;
  last: number;
  bytes: number;
}

export interface UploadLimits {
  maxPayloadBytes: number;
  maxBytes?: number;
  perEndpoint?: number;
  idleMs?: number;
}

export class Uploads {
  // Least recently active first: touching an upload moves it to the end.
  private readonly byKey = new Map<string, Upload>();
  private readonly byEndpoint = new Map<string, Set<Upload>>();
  private held = 0;
  private readonly maxPayload: number;
  private readonly maxBytes: number;
  private readonly perEndpoint: number;
  private readonly idleMs: number;

  constructor(
    limits: UploadLimits,
    private readonly events: UploadEvents,
  ) {
    this.maxPayload = limits.maxPayloadBytes;
    this.maxBytes = Math.max(limits.maxBytes ?? UPLOADS_MAX_BYTES, limits.maxPayloadBytes);
    this.perEndpoint = limits.perEndpoint ?? UPLOADS_PER_ENDPOINT;
    this.idleMs = limits.idleMs ?? UPLOAD_IDLE_MS;
  }

  block(b: UploadBlock, now: number): BlockOutcome {
    const { num, more, size } = b.block;
    const len = b.payload.length;
    let up = this.byKey.get(b.key);
    // RFC 7959 §2.9.3: refused as soon as Size1 tells, on whichever block carries it.
    if (b.size1 !== null && b.size1 > this.maxPayload) return this.refuse(up, { kind: 'too_large', size: b.size1 });
    // Every block but the last is exactly the block size (RFC 7959 §2.2), else offsets mean nothing.
    if (more ? len !== size : len > size)
      return this.refuse(up, { kind: 'bad', detail: `block ${num} has ${len} bytes: the block size is ${size}${more ? '' : ' at most'}` });
    // The offset, not the number, places a block: a client may go on with smaller blocks (RFC 7959 §2.3).
    const offset = num * size;
    if (num === 0) {
      if (up) this.remove(up);
      up = undefined;
    } else if (!up) {
      return { kind: 'incomplete', detail: `no upload in progress for block ${num}: start again from block 0` };
    } else if (offset !== up.received) {
      return { kind: 'incomplete', detail: `block ${num} starts at byte ${offset}, the upload has ${up.received}: blocks come in order` };
    }
    if (offset + len > this.maxPayload) return this.refuse(up, { kind: 'too_large', size: null });
    if (!more) {
      if (!up) return { kind: 'complete', payload: b.payload, contentFormat: b.contentFormat };
      this.append(up, b.payload);
      this.remove(up);
      const whole = up.buf.length === up.received ? up.buf : Buffer.from(up.buf.subarray(0, up.received));
      return { kind: 'complete', payload: whole, contentFormat: b.contentFormat ?? up.contentFormat };
    }
    if (up) this.touch(up);
    else up = this.open(b);
    up.last = now;
    this.append(up, b.payload);
    this.trim(up);
    return { kind: 'continue' };
  }

  /** Forget uploads idle past their time (called from the adapter's sweep). */
  expire(now: number): void {
    for (const up of this.byKey.values()) {
      if (up.last + this.idleMs > now) break;
      this.remove(up);
      this.events.expired();
    }
  }

  get size(): number {
    return this.byKey.size;
  }

  get bytes(): number {
    return this.held;
  }

  private refuse(up: Upload | undefined, outcome: BlockOutcome): BlockOutcome {
    if (up) this.remove(up);
    return outcome;
  }

  private open(b: UploadBlock): Upload {
    let mine = this.byEndpoint.get(b.endpoint);
    if (!mine) this.byEndpoint.set(b.endpoint, (mine = new Set()));
    while (mine.size >= this.perEndpoint) {
      this.remove(mine.values().next().value!);
      this.events.evicted();
    }
    // Four blocks to start with, grown by doubling: Size1 is only a promise, and a tiny first block
    // claiming the limit would otherwise take a quarter megabyte of the shared cap at once.
    const capacity = Math.min(b.size1 !== null && b.size1 > 0 ? b.size1 : Infinity, 4 * b.block.size);
    const up: Upload = {
      key: b.key,
      endpoint: b.endpoint,
      buf: Buffer.allocUnsafeSlow(Math.min(capacity, this.maxPayload)),
      received: 0,
      contentFormat: b.contentFormat,
      last: 0,
      bytes: 0,
    };
    up.bytes = ENTRY_OVERHEAD + up.key.length * 2 + up.endpoint.length * 2 + up.buf.length;
    this.held += up.bytes;
    this.byKey.set(up.key, up);
    mine.add(up);
    return up;
  }

  private append(up: Upload, payload: Buffer): void {
    const need = up.received + payload.length;
    if (need > up.buf.length) {
      // A Size1 that lied, or none: double, within the payload limit (checked before this).
      const grown = Buffer.allocUnsafeSlow(Math.min(Math.max(need, up.buf.length * 2), this.maxPayload));
      up.buf.copy(grown, 0, 0, up.received);
      this.held += grown.length - up.buf.length;
      up.bytes += grown.length - up.buf.length;
      up.buf = grown;
    }
    payload.copy(up.buf, up.received);
    up.received = need;
  }

  private touch(up: Upload): void {
    this.byKey.delete(up.key);
    this.byKey.set(up.key, up);
    const mine = this.byEndpoint.get(up.endpoint)!;
    mine.delete(up);
    mine.add(up);
  }

  /** Past the cap, the uploads idle the longest go; the one just added to stays. */
  private trim(keep: Upload): void {
    for (const up of this.byKey.values()) {
      if (this.held <= this.maxBytes || up === keep) return;
      this.remove(up);
      this.events.evicted();
    }
  }

  private remove(up: Upload): void {
    if (this.byKey.get(up.key) !== up) return;
    this.byKey.delete(up.key);
    this.held -= up.bytes;
    const mine = this.byEndpoint.get(up.endpoint);
    mine?.delete(up);
    if (mine?.size === 0) this.byEndpoint.delete(up.endpoint);
  }
}
