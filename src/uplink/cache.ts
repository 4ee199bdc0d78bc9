import Database from 'better-sqlite3';
import { existsSync, mkdirSync, renameSync } from 'node:fs';
import { dirname } from 'node:path';
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import type { EdgeMessage } from '../core/message.js';
import { CONTENT_TYPES } from '../core/message.js';
import { EdgeError } from '../core/errors.js';
import { PRIORITIES, priorityRank, type Priority } from '../core/priority.js';
import type { UplinkFields } from './envelope.js';
import {
  PRAGMAS,
  SCHEMA_SQL,
  SIZE_SQL,
  keyOf,
  messageSize,
  rankOfKey,
  seqOfKey,
  type WriteBatch,
  type WriterReply,
  type WriterRequest,
} from './cache-schema.js';

/** A message as the cache holds it: what the uplink sends, and its place in its queue. */
export interface CachedMessage extends UplinkFields {
  key: number;
  priority: Priority;
}

export type AppendCallback = (err: EdgeError | null) => void;
export type EvictReason = 'bytes' | 'age';

/** What the cache tells about itself when asked: the metrics' gauges and the status read these. */
export interface CacheStats {
  messagesByPriority(): Record<string, number>;
  bytes(): number;
  oldestAgeSeconds(): number;
  writable(): boolean;
}

/** What the cache reports as it happens; metrics and logs hang on these. */
export interface CacheEvents {
  writeError(): void;
  evicted(priority: Priority, reason: EvictReason, count: number): void;
  refused(reason: 'full' | 'unwritable'): void;
}

export interface CacheOptions {
  path: string;
  maxBytes: number;
  maxAgeSeconds: number;
  log: Logger;
  events: CacheEvents;
}

interface PendingAppend {
  msg: EdgeMessage;
  key: number;
  size: number;
  done: AppendCallback;
}

interface InFlightBatch {
  batch: number;
  appends: PendingAppend[];
  deleteKeys: number[];
  probe: boolean;
}

/** A row as the drain reads it, in raw (array) mode: key, id, ts, device_id, topic, content_type, payload. */
type Row = [number, string, number, string, string, number, Buffer];

const RANKS = PRIORITIES.length;
const CRITICAL = 0;
// Deletes of delivered messages ride along with the next batch of inserts; during a drain with no
// new messages they are written once this many have gathered, or after DELETE_DELAY_MS.
const DELETE_BATCH = 2048;
const DELETE_DELAY_MS = 250;
const PROBE_INTERVAL_MS = 1000;

// SQLite's answers to a disk that cannot take writes: full, failing, or read-only.
const WRITE_ERRORS = /^SQLITE_(FULL|IOERR|READONLY|CANTOPEN|BUSY|LOCKED|NOMEM)/;
const DAMAGE_ERRORS = /^SQLITE_(CORRUPT|NOTADB)/;

function rowToMessage(r: Row, priority: Priority): CachedMessage {
  return {
    key: r[0],
    id: r[1],
    ts: r[2],
    deviceId: r[3],
    topic: r[4],
    contentType: CONTENT_TYPES[r[5]] ?? 'binary',
    payload: r[6],
    priority,
  };
}

/**
 * Consecutive keys coalesced into inclusive ranges: delivered messages of one priority are mostly
 * a run, which SQLite deletes as one range of its primary key.
 */
export function toRanges(keys: number[]): Array<[number, number]> {
  if (keys.length === 0) return [];
  const sorted = keys.slice().sort((a, b) => a - b);
  const ranges: Array<[number, number]> = [];
  let lo = sorted[0]!;
  let hi = lo;
  for (let i = 1; i < sorted.length; i++) {
    const k = sorted[i]!;
    if (k === hi + 1) hi = k;
    else if (k !== hi) {
      ranges.push([lo, hi]);
      lo = hi = k;
    }
  }
  ranges.push([lo, hi]);
  return ranges;
}

/**
 * Open the SQLite file, moving a damaged one aside (never deleting it) and starting a new one
 * (docs/cache.md, guarantee 7).
 */
function openReader(path: string, log: Logger): Database.Database {
  mkdirSync(dirname(path), { recursive: true });
  const open = (): Database.Database => {
    const db = new Database(path);
    try {
      for (const p of PRAGMAS) db.pragma(p);
      db.exec(SCHEMA_SQL);
      // Touches the table's pages: a damaged file says so here rather than in the middle of a drain.
      db.prepare('SELECT count(*) FROM messages').get();
      return db;
    } catch (err) {
      db.close();
      throw err;
    }
  };
  try {
    return open();
  } catch (err) {
    const code = (err as { code?: string }).code ?? '';
    if (!DAMAGE_ERRORS.test(code)) {
      throw new EdgeError(
        'E_CACHE_OPEN',
        `cannot open the cache at ${path}: ${(err as Error).message} (${code}); check that the data directory is writable`,
        { cause: err },
      );
    }
    const aside = `${path}.damaged-${new Date().toISOString().replace(/[:.]/g, '-')}`;
    for (const suffix of ['', '-wal', '-shm']) {
      if (existsSync(path + suffix)) renameSync(path + suffix, aside + suffix);
    }
    log.error(
      { path, movedTo: aside, code, err: (err as Error).message },
      `the cache file was damaged (${code}) and was moved aside to ${aside}; starting with a new, empty cache. ` +
        `Its messages may be recoverable: stop the proxy, run \`sqlite3 ${aside} .recover | sqlite3 recovered.db\`, ` +
        `and start the proxy once with cache.path set to recovered.db to send them up`,
    );
    return open();
  }
}

/**
 * The durable store-and-forward cache (docs/cache.md).
 *
 * Appends are group-committed without a timer: while one batch is being written by the writer
 * thread, new messages gather, and the next batch is everything that gathered. Each append's
 * callback runs only after its batch committed (guarantee 1), with synchronous=FULL so that a
 * commit survives a power cut. Reads (the drain, eviction) use this thread's own connection:
 * WAL lets them run beside the writer.
 */
export class DurableCache implements CacheStats {
  private readonly reader: Database.Database;
  private worker: Worker | null = null;
  private workerReady: Promise<void> = Promise.resolve();
  private readonly readRange: Database.Statement;
  private readonly oldestRows: Database.Statement;
  private readonly firstTs: Database.Statement;
  private readonly nextSeq: number[] = new Array<number>(RANKS).fill(1);
  private readonly counts: number[] = new Array<number>(RANKS).fill(0);
  private readonly byteCounts: number[] = new Array<number>(RANKS).fill(0);
  /** per priority: the highest key evicted; keys at or below it are gone */
  private readonly evictedThrough: number[] = PRIORITIES.map((_, r) => keyOf(r, 0));
  /** keys delivered or evicted whose delete is not committed yet */
  private readonly deleting = new Set<number>();
  private deleteQueue: number[] = [];
  private pending: PendingAppend[] = [];
  /** batches handed to the writer and not answered yet, in the order they were sent */
  private readonly inFlight = new Map<number, InFlightBatch>();
  private flushScheduled = false;
  private deleteTimer: NodeJS.Timeout | null = null;
  private probeTimer: NodeJS.Timeout | null = null;
  private ageTimer: NodeJS.Timeout | null = null;
  private batchNo = 0;
  private isWritable = true;
  private closing = false;
  private closed = false;
  private idleWaiters: Array<() => void> = [];
  private readonly committedListeners: Array<(rows: CachedMessage[]) => void> = [];
  private readonly log: Logger;

  private constructor(private readonly opts: CacheOptions) {
    this.log = opts.log;
    this.reader = openReader(opts.path, opts.log);
    // Raw mode: rows as arrays, which the drain reads by the hundred thousand.
    this.readRange = this.reader
      .prepare('SELECT key, id, ts, device_id, topic, content_type, payload FROM messages WHERE key > ? AND key < ? ORDER BY key LIMIT ?')
      .raw(true);
    this.oldestRows = this.reader.prepare(
      `SELECT key, ts, ${SIZE_SQL} AS size FROM messages WHERE key > ? AND key < ? ORDER BY key LIMIT ?`,
    );
    this.firstTs = this.reader.prepare('SELECT ts FROM messages WHERE key > ? AND key < ? ORDER BY key LIMIT 1');
    const maxKey = this.reader.prepare('SELECT max(key) AS k FROM messages WHERE key >= ? AND key < ?');
    const stats = this.reader.prepare(`SELECT count(*) AS n, coalesce(sum(${SIZE_SQL}), 0) AS b FROM messages WHERE key >= ? AND key < ?`);
    for (let r = 0; r < RANKS; r++) {
      const lo = keyOf(r, 0);
      const hi = keyOf(r + 1, 0);
      const k = (maxKey.get(lo, hi) as { k: number | null }).k;
      this.nextSeq[r] = k === null ? 1 : seqOfKey(k) + 1;
      const s = stats.get(lo, hi) as { n: number; b: number };
      this.counts[r] = s.n;
      this.byteCounts[r] = s.b;
    }
  }

  /** Opens the cache file and starts its writer thread. */
  static async open(opts: CacheOptions): Promise<DurableCache> {
    const cache = new DurableCache(opts);
    await cache.startWorker();
    cache.scheduleAgeSweep();
    return cache;
  }

  private startWorker(): Promise<void> {
    // The writer sits beside this module: .js in the build, .ts when tests run the sources.
    const writer = new URL(import.meta.url.endsWith('.ts') ? './cache-writer.ts' : './cache-writer.js', import.meta.url);
    const worker = new Worker(writer, { workerData: { path: this.opts.path } });
    this.worker = worker;
    this.workerReady = new Promise<void>((resolve, reject) => {
      const onReply = (r: WriterReply): void => {
        if (r.type === 'ready') resolve();
        else if (r.type === 'fatal') reject(new EdgeError('E_CACHE_OPEN', `the cache writer cannot open ${this.opts.path}: ${r.message}`));
        else this.onReply(r);
      };
      worker.on('message', onReply);
      worker.once('error', (err) => reject(new EdgeError('E_CACHE_OPEN', `the cache writer failed: ${err.message}`, { cause: err })));
    });
    worker.on('error', (err) =>
      this.log.error({ err: err.message }, 'the cache writer thread failed; uplink messages are refused until it is back'),
    );
    worker.on('exit', (code) => {
      if (this.worker !== worker) return;
      this.worker = null;
      if (this.closing) return;
      this.log.error({ code }, 'the cache writer thread exited; restarting it');
      this.failInFlight('SQLITE_IOERR', `the cache writer thread exited (code ${code})`);
    });
    return this.workerReady;
  }

  // --- appends ---------------------------------------------------------------------------------

  /** Queue a message for the next group commit; `done` runs once it is on disk, or with why not. */
  append(msg: EdgeMessage, priority: Priority, done: AppendCallback): void {
    if (this.closing) {
      done(new EdgeError('E_CACHE_WRITE', 'the cache is closing'));
      return;
    }
    if (!this.isWritable) {
      this.opts.events.refused('unwritable');
      done(new EdgeError('E_CACHE_WRITE', 'the cache cannot write to disk now (full or failing); retry later'));
      return;
    }
    const rank = priorityRank(priority);
    const size = messageSize(msg.payload.byteLength, msg.topic, msg.deviceId);
    const over = this.bytes() + size - this.opts.maxBytes;
    if (over > 0 && !this.evictForSpace(rank, over)) {
      this.opts.events.refused('full');
      done(
        new EdgeError(
          'E_CACHE_FULL',
          `the cache is full (cache.maxBytes=${this.opts.maxBytes}) and holds nothing of priority ${priority} or lower to evict`,
        ),
      );
      return;
    }
    const key = keyOf(rank, this.nextSeq[rank]!++);
    this.counts[rank]!++;
    this.byteCounts[rank]! += size;
    this.pending.push({ msg, key, size, done });
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    // setImmediate, not a timer: everything that arrives in this turn of the event loop joins.
    setImmediate(() => {
      this.flushScheduled = false;
      this.flush();
    });
  }

  /**
   * Hand everything gathered to the writer now, without waiting for the batch before it: the
   * writer takes every batch that queued up while it was committing into its next transaction,
   * so under load many batches share one fsync, and when idle a batch is written at once.
   */
  private flush(): void {
    if (!this.worker) return;
    if (!this.isWritable) return; // the probe brings it back
    const appends = this.pending;
    const deleteKeys = this.deleteQueue;
    if (appends.length === 0 && deleteKeys.length === 0) {
      this.notifyIdle();
      return;
    }
    this.pending = [];
    this.deleteQueue = [];
    if (this.deleteTimer) {
      clearTimeout(this.deleteTimer);
      this.deleteTimer = null;
    }
    const batch = this.batchNo++;
    const inserts: WriteBatch['inserts'] = {
      keys: [],
      ids: [],
      ts: [],
      devices: [],
      topics: [],
      contentTypes: [],
      payloads: new Uint8Array(0),
      ends: [],
    };
    let total = 0;
    for (const a of appends) total += a.msg.payload.byteLength;
    const payloads = new Uint8Array(total);
    let at = 0;
    for (const { msg, key } of appends) {
      inserts.keys.push(key);
      inserts.ids.push(msg.id);
      inserts.ts.push(msg.ts);
      inserts.devices.push(msg.deviceId);
      inserts.topics.push(msg.topic);
      inserts.contentTypes.push(CONTENT_TYPES.indexOf(msg.contentType));
      payloads.set(msg.payload, at);
      at += msg.payload.byteLength;
      inserts.ends.push(at);
    }
    inserts.payloads = payloads;
    this.inFlight.set(batch, { batch, appends, deleteKeys, probe: false });
    const req: WriterRequest = { type: 'write', batch: { batch, inserts, deletes: toRanges(deleteKeys) } };
    this.worker.postMessage(req, [payloads.buffer]);
  }

  private onReply(r: WriterReply): void {
    if (r.type !== 'done' && r.type !== 'failed') return;
    const batch = this.inFlight.get(r.batch);
    if (!batch) return;
    this.inFlight.delete(r.batch);
    if (r.type === 'failed') {
      this.onWriteFailed(batch, r.code, r.message);
      return;
    }
    if (!this.isWritable) {
      this.isWritable = true;
      this.stopProbing();
      this.log.info({ path: this.opts.path }, 'cache writes succeed again; accepting uplink messages');
    }
    for (const k of batch.deleteKeys) this.deleting.delete(k);
    if (batch.appends.length > 0) {
      const rows = new Array<CachedMessage>(batch.appends.length);
      for (let i = 0; i < batch.appends.length; i++) {
        const { msg, key } = batch.appends[i]!;
        rows[i] = {
          key,
          id: msg.id,
          ts: msg.ts,
          deviceId: msg.deviceId,
          topic: msg.topic,
          contentType: msg.contentType,
          payload: msg.payload,
          priority: PRIORITIES[rankOfKey(key)]!,
        };
      }
      for (const a of batch.appends) a.done(null);
      for (const l of this.committedListeners) l(rows);
    }
    if (this.deleteQueue.length >= DELETE_BATCH || (this.closing && this.deleteQueue.length > 0)) this.scheduleFlush();
    else if (this.deleteQueue.length > 0) this.scheduleDeletes();
    this.notifyIdle();
  }

  private onWriteFailed(batch: InFlightBatch, code: string, message: string): void {
    this.opts.events.writeError();
    // Nothing of the batch is on disk: its messages are refused, and its deletes wait for the next write.
    for (const a of batch.appends) {
      const rank = rankOfKey(a.key);
      this.counts[rank]!--;
      this.byteCounts[rank]! -= a.size;
    }
    this.deleteQueue = batch.deleteKeys.concat(this.deleteQueue);
    const wasWritable = this.isWritable;
    this.isWritable = false;
    const known = WRITE_ERRORS.test(code) || DAMAGE_ERRORS.test(code);
    if (wasWritable) {
      this.log.error(
        { path: this.opts.path, code, err: message },
        `cache write failed (${code}): new uplink messages are refused, local delivery goes on; retrying every ${PROBE_INTERVAL_MS / 1000} s. ` +
          (known ? 'Check free space and the disk (df -h, dmesg).' : ''),
      );
    }
    const error = new EdgeError('E_CACHE_WRITE', `cache write failed: ${message} (${code})`);
    for (const a of batch.appends) a.done(error);
    // Messages queued behind the failed batch never reached the disk either.
    const queued = this.pending;
    this.pending = [];
    for (const a of queued) {
      const rank = rankOfKey(a.key);
      this.counts[rank]!--;
      this.byteCounts[rank]! -= a.size;
      a.done(error);
    }
    this.startProbing();
    this.notifyIdle();
  }

  private failInFlight(code: string, message: string): void {
    const batches = [...this.inFlight.values()];
    this.inFlight.clear();
    for (const batch of batches) this.onWriteFailed(batch, code, message);
    if (batches.length === 0) {
      this.isWritable = false;
      this.startProbing();
    }
  }

  /** While writes fail, try a small write every second; the first that succeeds reopens the gate. */
  private startProbing(): void {
    if (this.probeTimer || this.closing) return;
    this.probeTimer = setInterval(() => {
      if (this.isWritable || this.inFlight.size > 0 || this.closing) return;
      if (!this.worker) {
        this.startWorker().then(
          () => this.log.info('the cache writer thread is back'),
          (err: Error) => this.log.error({ err: err.message }, 'cannot restart the cache writer thread'),
        );
        return;
      }
      const batch = this.batchNo++;
      this.inFlight.set(batch, { batch, appends: [], deleteKeys: [], probe: true });
      const req: WriterRequest = { type: 'probe', batch };
      this.worker.postMessage(req);
    }, PROBE_INTERVAL_MS);
    this.probeTimer.unref();
  }

  private stopProbing(): void {
    if (!this.probeTimer) return;
    clearInterval(this.probeTimer);
    this.probeTimer = null;
  }

  // --- deletes ---------------------------------------------------------------------------------

  /** The cloud acknowledged a message: it is deleted with a coming batch. */
  ack(m: CachedMessage): void {
    const key = m.key;
    const rank = rankOfKey(key);
    if (key <= this.evictedThrough[rank]! || this.deleting.has(key)) return; // already counted out
    this.deleting.add(key);
    this.deleteQueue.push(key);
    this.counts[rank]!--;
    this.byteCounts[rank]! -= messageSize(m.payload.byteLength, m.topic, m.deviceId);
    if (this.flushScheduled) return; // rides with the batch about to go
    if (this.deleteQueue.length >= DELETE_BATCH) this.scheduleFlush();
    else this.scheduleDeletes();
  }

  private scheduleDeletes(): void {
    if (this.deleteTimer) return;
    this.deleteTimer = setTimeout(() => {
      this.deleteTimer = null;
      this.scheduleFlush();
    }, DELETE_DELAY_MS);
    this.deleteTimer.unref();
  }

  // --- eviction (guarantee 5) ---------------------------------------------------------------------

  /**
   * Make room for `needed` bytes for a message of priority `rank` by evicting the oldest messages
   * of the lowest priority present, never above the message's own priority, never `critical`.
   * Returns false, evicting nothing, when that cannot free enough.
   */
  private evictForSpace(rank: number, needed: number): boolean {
    const plan: Array<{ rank: number; rows: Array<{ key: number; size: number }>; through: number }> = [];
    let freed = 0;
    for (let r = RANKS - 1; r >= Math.max(rank, CRITICAL + 1) && freed < needed; r--) {
      const chosen: Array<{ key: number; size: number }> = [];
      let through = this.evictedThrough[r]!;
      const end = keyOf(r + 1, 0);
      while (freed < needed) {
        const rows = this.oldestRows.all(through, end, 512) as Array<{ key: number; size: number }>;
        if (rows.length === 0) break;
        for (const row of rows) {
          through = row.key;
          if (this.deleting.has(row.key)) continue; // delivered already, its bytes already counted out
          chosen.push(row);
          freed += row.size;
          if (freed >= needed) break;
        }
      }
      if (chosen.length > 0) plan.push({ rank: r, rows: chosen, through });
    }
    if (freed < needed) return false;
    for (const p of plan) this.evict(p.rank, p.rows, p.through, 'bytes');
    return true;
  }

  private evict(rank: number, rows: Array<{ key: number; size: number }>, through: number, reason: EvictReason): void {
    const priority = PRIORITIES[rank]!;
    let bytes = 0;
    for (const { key, size } of rows) {
      this.deleting.add(key);
      this.deleteQueue.push(key);
      bytes += size;
    }
    this.counts[rank]! -= rows.length;
    this.byteCounts[rank]! -= bytes;
    this.evictedThrough[rank] = Math.max(this.evictedThrough[rank]!, through);
    if (rows.length === 0) return;
    this.opts.events.evicted(priority, reason, rows.length);
    this.log.warn(
      { priority, reason, count: rows.length, bytes, cacheBytes: this.bytes() },
      reason === 'bytes'
        ? `evicted ${rows.length} ${priority} message${rows.length === 1 ? '' : 's'} (${bytes} bytes), the oldest first, to make room: the cache is at cache.maxBytes=${this.opts.maxBytes}`
        : `evicted ${rows.length} ${priority} message${rows.length === 1 ? '' : 's'} older than cache.maxAgeSeconds=${this.opts.maxAgeSeconds}`,
    );
    this.scheduleFlush();
  }

  private scheduleAgeSweep(): void {
    const every = Math.max(1, Math.min(60, this.opts.maxAgeSeconds / 10)) * 1000;
    this.ageTimer = setInterval(() => this.sweepAge(), every);
    this.ageTimer.unref();
    this.sweepAge();
  }

  /** Evict messages older than cache.maxAgeSeconds (never `critical`). */
  sweepAge(now: number = Date.now()): void {
    if (this.closing || !this.isWritable) return;
    const cutoff = now - this.opts.maxAgeSeconds * 1000;
    for (let r = CRITICAL + 1; r < RANKS; r++) {
      const old: Array<{ key: number; size: number }> = [];
      let through = this.evictedThrough[r]!;
      const end = keyOf(r + 1, 0);
      for (;;) {
        const rows = this.oldestRows.all(through, end, 1024) as Array<{ key: number; ts: number; size: number }>;
        let stop = rows.length === 0;
        for (const row of rows) {
          // Rows are in arrival order, so the first young one ends the run of old ones.
          if (row.ts >= cutoff) {
            stop = true;
            break;
          }
          through = row.key;
          if (!this.deleting.has(row.key)) old.push(row);
        }
        if (stop) break;
      }
      if (through > this.evictedThrough[r]!) this.evict(r, old, through, 'age');
    }
  }

  // --- reads -----------------------------------------------------------------------------------

  onCommitted(listener: (rows: CachedMessage[]) => void): void {
    this.committedListeners.push(listener);
  }

  /**
   * Up to `limit` committed rows of one priority after `afterKey`, in queue order. `messages`
   * leaves out those delivered or evicted meanwhile; `lastKey` and `rows` describe what was read,
   * so a reader knows where to go on and whether it reached the end.
   */
  readQueue(priority: Priority, afterKey: number, limit: number): { messages: CachedMessage[]; lastKey: number; rows: number } {
    const rank = priorityRank(priority);
    const from = Math.max(afterKey, this.evictedThrough[rank]!);
    const rows = this.readRange.all(from, keyOf(rank + 1, 0), limit) as Row[];
    const messages: CachedMessage[] = [];
    for (const r of rows) if (!this.deleting.has(r[0])) messages.push(rowToMessage(r, priority));
    return { messages, lastKey: rows.length > 0 ? rows[rows.length - 1]![0] : from, rows: rows.length };
  }

  /** The key before the first of a priority: where a reader of that queue starts. */
  static queueStart(priority: Priority): number {
    return keyOf(priorityRank(priority), 0);
  }

  /** True when a message was evicted after it was read: it is not sent. */
  isEvicted(m: CachedMessage): boolean {
    return m.key <= this.evictedThrough[rankOfKey(m.key)]!;
  }

  // --- the operator's view -----------------------------------------------------------------------

  messagesByPriority(): Record<string, number> {
    const out: Record<string, number> = {};
    PRIORITIES.forEach((p, i) => {
      out[p] = this.counts[i]!;
    });
    return out;
  }

  messageCount(): number {
    return this.counts.reduce((a, b) => a + b, 0);
  }

  bytes(): number {
    return this.byteCounts.reduce((a, b) => a + b, 0);
  }

  oldestAgeSeconds(now: number = Date.now()): number {
    if (this.closed) return 0;
    let oldest = Infinity;
    for (let r = 0; r < RANKS; r++) {
      if (this.counts[r] === 0) continue;
      const row = this.firstTs.get(this.evictedThrough[r], keyOf(r + 1, 0)) as { ts: number } | undefined;
      if (row) oldest = Math.min(oldest, row.ts);
    }
    return oldest === Infinity ? 0 : Math.max(0, (now - oldest) / 1000);
  }

  writable(): boolean {
    return this.isWritable && !this.closing;
  }

  // --- shutdown --------------------------------------------------------------------------------

  private notifyIdle(): void {
    if (this.inFlight.size > 0 || this.pending.length > 0) return;
    for (const w of this.idleWaiters.splice(0)) w();
  }

  /** Resolves once everything queued so far, deletes included, is written (or has failed). */
  async drainWrites(): Promise<void> {
    if (this.inFlight.size === 0 && this.pending.length === 0 && this.deleteQueue.length === 0) return;
    await new Promise<void>((resolve) => {
      this.idleWaiters.push(resolve);
      this.flush();
    });
    if (this.deleteQueue.length > 0 && this.isWritable) await this.drainWrites();
  }

  /** Commit what is queued, stop the writer thread and close the file. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closing = true;
    for (const t of [this.deleteTimer, this.probeTimer]) if (t) clearTimeout(t);
    if (this.ageTimer) clearInterval(this.ageTimer);
    if (this.isWritable) await this.drainWrites();
    const worker = this.worker;
    if (worker) {
      await new Promise<void>((resolve) => {
        worker.once('exit', () => resolve());
        const req: WriterRequest = { type: 'close' };
        worker.postMessage(req);
      });
    }
    this.closed = true;
    this.reader.close();
  }
}
