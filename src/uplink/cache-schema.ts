// What the cache's two connections (the writer thread and the main thread's reader) agree on:
// the schema, and how a row's key encodes its priority and its place in the queue.

/**
 * key = priority rank × 2^48 + sequence within that priority. One B-tree then holds four queues,
 * each a contiguous key range in arrival order: draining a priority, finding its oldest row and
 * deleting a run of delivered rows are all range operations on the primary key, with no second
 * index to keep up to date on every insert.
 */
const PRIORITY_SPAN = 2 ** 48;

export function keyOf(rank: number, seq: number): number {
  return rank * PRIORITY_SPAN + seq;
}

export function rankOfKey(key: number): number {
  return Math.floor(key / PRIORITY_SPAN);
}

export function seqOfKey(key: number): number {
  return key % PRIORITY_SPAN;
}

export const SCHEMA_SQL = `
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
  key INTEGER PRIMARY KEY,
  id TEXT NOT NULL,
  ts INTEGER NOT NULL,
  device_id TEXT NOT NULL,
  topic TEXT NOT NULL,
  content_type INTEGER NOT NULL,
  payload BLOB NOT NULL
);
`;

/** Counted size of a message in the cache: its variable fields plus a fixed row overhead. */
const ROW_OVERHEAD = 74;

export function messageSize(payloadBytes: number, topic: string, deviceId: string): number {
  return payloadBytes + Buffer.byteLength(topic) + deviceId.length + ROW_OVERHEAD;
}

/** The same size, computed by SQLite for rows already stored. */
export const SIZE_SQL = `length(payload) + length(CAST(topic AS BLOB)) + length(device_id) + ${ROW_OVERHEAD}`;

// Connection settings both sides use. FULL: a committed transaction survives a power cut, not only
// a crash. journal_size_limit: the WAL file is cut back after a checkpoint instead of staying at its
// largest size, so a burst does not hold disk space for good.
export const PRAGMAS = [
  'page_size = 1024',
  'journal_mode = WAL',
  'synchronous = FULL',
  'journal_size_limit = 16777216',
  'busy_timeout = 5000',
];

/** A batch the main thread hands the writer: one transaction. */
export interface WriteBatch {
  batch: number;
  inserts: {
    keys: number[];
    ids: string[];
    ts: number[];
    devices: string[];
    topics: string[];
    contentTypes: number[];
    /** all payloads, one after the other; ends[i] is where payload i ends */
    payloads: Uint8Array;
    ends: number[];
  };
  /** inclusive key ranges to delete (delivered or evicted messages) */
  deletes: Array<[number, number]>;
}

export type WriterRequest = { type: 'write'; batch: WriteBatch } | { type: 'probe'; batch: number } | { type: 'close' };

export type WriterReply =
  | { type: 'ready' }
  | { type: 'done'; batch: number }
  | { type: 'failed'; batch: number; code: string; message: string }
  | { type: 'fatal'; message: string };
