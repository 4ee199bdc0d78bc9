// Block-wise responses (RFC 7959 §2.4), notifications included (§3.4). A representation larger
// than one block goes out as its first block with Block2, ETag and Size2, and is kept here so that
// the client's GETs for the following blocks are served from the same bytes, however the topic
// changes meanwhile. Representations are keyed by the endpoint and the path: the client's later
// GETs carry neither the token (libcoap takes a new one per block) nor an ETag. A newer
// representation for the same key replaces the older one, and its ETag tells the client that the
// representation changed under it (RFC 7959 §2.4), as does the ETag of the retained message read
// when the one being transferred is no longer held.
//
// Memory: one byte cap over every representation held; past it the one used the longest ago goes
// (counted), never the one just stored, so a client is never refused for room. A representation
// not asked for within BLOCKS_IDLE_MS is forgotten.
import { createHash } from 'node:crypto';
import type { BlockOption, Response } from './codec.js';

/** SZX 6, 1024 bytes: the proxy's block size unless a client asks for smaller blocks. */
export const MAX_SZX = 6;
/** Memory for representations in transfer, across all endpoints. */
export const BLOCKS_MAX_BYTES = 8 * 1024 * 1024;
/**
 * A representation not asked for within this long is forgotten. Longer than MAX_TRANSMIT_SPAN
 * (45 s, RFC 7252 §4.8.2), so a client still retransmitting its GET for a block finds it.
 */
export const BLOCKS_IDLE_MS = 60_000;
/** Bookkeeping per representation besides its key and bytes. */
const ENTRY_OVERHEAD = 160;
const CONTENT = '2.05';

/** What a response carries, before it is cut into blocks. */
export interface Representation {
  payload: Buffer;
  contentFormat?: number;
  /** identifies these exact bytes (etagOf) */
  etag: Buffer;
}

/** An ETag (8 bytes, RFC 7252 §5.10.6) for the representation that `what` names, e.g. a message id and its form. */
export function etagOf(what: string): Buffer {
  return createHash('sha256').update(what).digest().subarray(0, 8);
}

/** The key of what an endpoint transfers from a path. */
export function blockKey(endpoint: string, path: string): string {
  return `${endpoint}|${path}`;
}

export function blockSize(szx: number): number {
  return 1 << (szx + 4);
}

/** Block `num` of `rep` in blocks of 2 ** (szx + 4) bytes, or null past its end. */
export function blockOf(rep: Representation, num: number, szx: number): Response | null {
  const size = blockSize(szx);
  const start = num * size;
  const total = rep.payload.length;
  // Block 0 of an empty representation exists; any other block must start inside it.
  if (start >= total && !(num === 0 && total === 0)) return null;
  const end = Math.min(start + size, total);
  return {
    code: CONTENT,
    payload: rep.payload.subarray(start, end),
    ...(rep.contentFormat === undefined ? {} : { contentFormat: rep.contentFormat }),
    etag: rep.etag,
    block2: { num, more: end < total, szx },
    size2: total,
  };
}

export interface Block2Events {
  /** a representation held for a block-wise transfer */
  stored(): void;
  /** one dropped before its time to stay under the byte cap */
  evicted(): void;
  /** a block asked of a representation no longer held (nor readable again) */
  missing(): void;
}

interface Held {
  readonly key: string;
  readonly rep: Representation;
  last: number;
  /** its last block was served */
  done: boolean;
  readonly bytes: number;
}

export type BlockAnswer = { ok: true; res: Response } | { ok: false; why: 'missing' | 'past_end' };

export class Block2Store {
  // Least recently used first: a lookup moves an entry to the end.
  private readonly byKey = new Map<string, Held>();
  private held = 0;

  constructor(
    private readonly events: Block2Events,
    private readonly maxBytes = BLOCKS_MAX_BYTES,
    private readonly idleMs = BLOCKS_IDLE_MS,
  ) {}

  /**
   * The first response for a representation (or an empty 2.05 for none): whole when it fits in a
   * block of 2 ** (szx + 4) bytes, else its block 0, the representation held for the blocks after.
   */
  first(key: string, rep: Representation | null, szx: number, now: number): Response {
    if (!rep) return { code: CONTENT };
    if (rep.payload.length <= blockSize(szx))
      return { code: CONTENT, payload: rep.payload, ...(rep.contentFormat === undefined ? {} : { contentFormat: rep.contentFormat }) };
    this.remove(key);
    const entry: Held = { key, rep, last: now, done: false, bytes: ENTRY_OVERHEAD + key.length * 2 + rep.payload.length };
    this.byKey.set(key, entry);
    this.held += entry.bytes;
    this.events.stored();
    this.trim(entry);
    return blockOf(rep, 0, szx)!;
  }

  /**
   * Block `block.num` of what `key` holds; when nothing is held, of `current()` (a retained
   * message read again: its own ETag tells the client whether it is still the same).
   */
  next(key: string, block: BlockOption, now: number, current: () => Representation | null): BlockAnswer {
    const entry = this.byKey.get(key);
    let rep: Representation | null;
    if (entry) {
      this.byKey.delete(key);
      this.byKey.set(key, entry);
      entry.last = now;
      rep = entry.rep;
    } else {
      rep = current();
      if (!rep) {
        this.events.missing();
        return { ok: false, why: 'missing' };
      }
    }
    const res = blockOf(rep, block.num, block.szx);
    if (!res) return { ok: false, why: 'past_end' };
    if (entry && !res.block2!.more) entry.done = true;
    return { ok: true, res };
  }

  /** A block-wise transfer on `key` is under way: not all its blocks served, and one asked for within `waitMs`. */
  busy(key: string, now: number, waitMs: number): boolean {
    const entry = this.byKey.get(key);
    return entry !== undefined && !entry.done && now - entry.last < waitMs;
  }

  /** Forget representations idle past their time (called from the adapter's sweep). */
  expire(now: number): void {
    for (const entry of this.byKey.values()) {
      if (entry.last + this.idleMs > now) break;
      this.remove(entry.key);
    }
  }

  private trim(keep: Held): void {
    for (const entry of this.byKey.values()) {
      if (this.held <= this.maxBytes) return;
      if (entry === keep) continue;
      this.remove(entry.key);
      this.events.evicted();
    }
  }

  private remove(key: string): void {
    const entry = this.byKey.get(key);
    if (!entry) return;
    this.byKey.delete(key);
    this.held -= entry.bytes;
  }

  get size(): number {
    return this.byKey.size;
  }

  get bytes(): number {
    return this.held;
  }
}
