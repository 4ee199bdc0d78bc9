import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import type { Priority } from '../config/types.js';
import type { ContentType, EdgeMessage } from '../core/message.js';
import { CONTENT_TYPES } from '../core/message.js';
import { EdgeError } from '../core/errors.js';
import type { CacheGaugeSource } from '../admin/metrics.js';
import { PRIORITIES, priorityName, priorityRank } from './priority.js';

/** A message as the cache holds it: what the uplink needs to send it, and its place in the queue. */
export interface CachedMessage {
  seq: number;
  id: string;
  ts: number;
  deviceId: string;
  topic: string;
  contentType: ContentType;
  payload: Uint8Array;
  priority: Priority;
}

export type AppendCallback = (err: EdgeError | null) => void;

interface PendingAppend {
  msg: EdgeMessage;
  rank: number;
  done: AppendCallback;
}

interface Row {
  seq: number;
  id: string;
  ts: number;
  device_id: string;
  topic: string;
  content_type: number;
  priority: number;
  payload: Buffer;
}

// Counted size of a message in the cache: its variable fields plus a fixed row overhead.
const ROW_OVERHEAD = 48;
function sizeOf(m: { payload: Uint8Array; topic: string; deviceId: string }): number {
  return m.payload.byteLength + Buffer.byteLength(m.topic) + m.deviceId.length + 26 + ROW_OVERHEAD;
}

/**
 * The durable store-and-forward cache: SQLite in WAL mode with synchronous=FULL, so a commit
 * survives a power cut. Appends are group-committed: everything that arrives while the event
 * loop is busy is written in one transaction at the next setImmediate, and each append's
 * callback runs only after that transaction committed (uplink-cache.md, guarantee 1:
 * "committed to disk before the acknowledgement is sent").
 */
export class DurableCache implements CacheGaugeSource {
  private readonly db: Database.Database;
  private readonly insert: Database.Statement;
  private readonly remove: Database.Statement;
  private readonly readAfterStmt: Database.Statement;
  private readonly oldestStmt: Database.Statement;
  private pending: PendingAppend[] = [];
  private commitScheduled = false;
  private readonly deletes: number[] = [];
  private readonly deleteSet = new Set<number>();
  private readonly counts = [0, 0, 0, 0];
  private totalBytes = 0;
  private isWritable = true;
  private closed = false;
  private readonly committedListeners: Array<(rows: CachedMessage[]) => void> = [];

  constructor(readonly path: string, private readonly log: Logger, private readonly onWriteError: () => void = () => {}) {
    try {
      mkdirSync(dirname(path), { recursive: true });
      this.db = new Database(path);
      this.db.pragma('journal_mode = WAL');
      // FULL: a committed transaction survives a power cut, not only a process crash.
      this.db.pragma('synchronous = FULL');
      this.db.exec(`CREATE TABLE IF NOT EXISTS messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL,
        ts INTEGER NOT NULL,
        device_id TEXT NOT NULL,
        topic TEXT NOT NULL,
        content_type INTEGER NOT NULL,
        priority INTEGER NOT NULL,
        payload BLOB NOT NULL
      )`);
    } catch (err) {
      throw new EdgeError('E_CACHE_OPEN', `cannot open the cache at ${path}: ${(err as Error).message}; check that the data directory is writable`, { cause: err });
    }
    this.insert = this.db.prepare('INSERT INTO messages (id, ts, device_id, topic, content_type, priority, payload) VALUES (?, ?, ?, ?, ?, ?, ?)');
    this.remove = this.db.prepare('DELETE FROM messages WHERE seq = ?');
    this.readAfterStmt = this.db.prepare('SELECT seq, id, ts, device_id, topic, content_type, priority, payload FROM messages WHERE seq > ? ORDER BY seq LIMIT ?');
    // Rows are appended in arrival order, so the first by seq is the oldest; this reads one row, not the table.
    this.oldestStmt = this.db.prepare('SELECT ts FROM messages ORDER BY seq LIMIT 1');
    const stats = this.db.prepare('SELECT priority, count(*) AS n, sum(length(payload) + length(CAST(topic AS BLOB)) + length(device_id)) AS b FROM messages GROUP BY priority').all() as Array<{ priority: number; n: number; b: number }>;
    for (const s of stats) {
      this.counts[s.priority] = s.n;
      this.totalBytes += s.b + s.n * (26 + ROW_OVERHEAD);
    }
  }

  /** Queue a message for the next group commit; `done` runs once it is on disk (or failed). */
  append(msg: EdgeMessage, priority: Priority, done: AppendCallback): void {
    if (this.closed) {
      done(new EdgeError('E_CACHE_WRITE', 'the cache is closed', { retryable: true }));
      return;
    }
    this.pending.push({ msg, rank: priorityRank(priority), done });
    if (!this.commitScheduled) {
      this.commitScheduled = true;
      setImmediate(() => this.commit());
    }
  }

  /** Mark a message as delivered: it is deleted with the next commit. */
  ack(m: CachedMessage): void {
    if (this.deleteSet.has(m.seq)) return;
    this.deletes.push(m.seq);
    this.deleteSet.add(m.seq);
    this.counts[priorityRank(m.priority)]!--;
    this.totalBytes -= sizeOf(m);
    if (!this.commitScheduled) {
      this.commitScheduled = true;
      setImmediate(() => this.commit());
    }
  }

  onCommitted(listener: (rows: CachedMessage[]) => void): void {
    this.committedListeners.push(listener);
  }

  /** Committed messages after `seq` in queue order, leaving out those already acknowledged. */
  readAfter(seq: number, limit: number): CachedMessage[] {
    const rows = this.readAfterStmt.all(seq, limit) as Row[];
    const out: CachedMessage[] = [];
    for (const r of rows) {
      if (this.deleteSet.has(r.seq)) continue;
      out.push({
        seq: r.seq, id: r.id, ts: r.ts, deviceId: r.device_id, topic: r.topic,
        contentType: CONTENT_TYPES[r.content_type] ?? 'binary', priority: priorityName(r.priority), payload: r.payload,
      });
    }
    return out;
  }

  /** Write everything queued now, synchronously (used at shutdown). */
  flush(): void {
    this.commit();
  }

  private commit(): void {
    this.commitScheduled = false;
    if (this.closed) return;
    const batch = this.pending;
    this.pending = [];
    const deletes = this.deletes.splice(0);
    if (batch.length === 0 && deletes.length === 0) return;
    const rows: CachedMessage[] = new Array(batch.length);
    try {
      this.db.transaction(() => {
        for (let i = 0; i < batch.length; i++) {
          const { msg, rank } = batch[i]!;
          const info = this.insert.run(msg.id, msg.ts, msg.deviceId, msg.topic, CONTENT_TYPES.indexOf(msg.contentType), rank, msg.payload);
          rows[i] = {
            seq: Number(info.lastInsertRowid), id: msg.id, ts: msg.ts, deviceId: msg.deviceId, topic: msg.topic,
            contentType: msg.contentType, payload: msg.payload, priority: PRIORITIES[rank]!,
          };
        }
        for (const seq of deletes) this.remove.run(seq);
      })();
    } catch (err) {
      this.failCommit(batch, deletes, err as NodeJS.ErrnoException);
      return;
    }
    for (const seq of deletes) this.deleteSet.delete(seq);
    if (!this.isWritable) {
      this.isWritable = true;
      this.log.info({ path: this.path }, 'cache writes succeed again; accepting uplink messages');
    }
    for (const r of rows) {
      this.counts[priorityRank(r.priority)]!++;
      this.totalBytes += sizeOf(r);
    }
    for (const p of batch) p.done(null);
    if (rows.length > 0) for (const l of this.committedListeners) l(rows);
  }

  private failCommit(batch: PendingAppend[], deletes: number[], err: NodeJS.ErrnoException): void {
    this.onWriteError();
    // Deletes are retried with the next commit: a delivered message that is resent is a copy
    // the cloud can drop by id, never a loss.
    this.deletes.unshift(...deletes);
    if (this.isWritable) {
      this.isWritable = false;
      this.log.error({ path: this.path, err: err.message, code: err.code }, 'cache write failed; uplink messages are refused until a write succeeds. Check free space and the disk (df, dmesg)');
    }
    const error = new EdgeError('E_CACHE_WRITE', `cache write failed: ${err.message}`, { retryable: true, cause: err });
    for (const p of batch) p.done(error);
  }

  messagesByPriority(): Record<string, number> {
    const out: Record<string, number> = {};
    PRIORITIES.forEach((p, i) => { out[p] = this.counts[i]!; });
    return out;
  }

  messageCount(): number {
    return this.counts.reduce((a, b) => a + b, 0);
  }

  bytes(): number {
    return this.totalBytes;
  }

  oldestAgeSeconds(): number {
    if (this.closed) return 0;
    const row = this.oldestStmt.get() as { ts: number } | undefined;
    return row === undefined ? 0 : Math.max(0, (Date.now() - row.ts) / 1000);
  }

  writable(): boolean {
    return this.isWritable && !this.closed;
  }

  close(): void {
    if (this.closed) return;
    this.commit();
    this.closed = true;
    this.db.close();
  }
}
