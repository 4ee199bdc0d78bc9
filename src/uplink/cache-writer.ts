// The cache's writer thread. Every write (inserts, deletes) happens here, so the fsync of a commit
// never stalls the event loop that serves devices: the main thread keeps reading packets while
// the disk confirms the previous batch, and the next batch is whatever arrived meanwhile.
import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { PRAGMAS, SCHEMA_SQL, type WriteBatch, type WriterReply, type WriterRequest } from './cache-schema.js';

const port = parentPort!;
const reply = (r: WriterReply): void => port.postMessage(r);

let db: Database.Database;
try {
  db = new Database((workerData as { path: string }).path);
  for (const p of PRAGMAS) db.pragma(p);
  db.exec(SCHEMA_SQL);
} catch (err) {
  reply({ type: 'fatal', message: (err as Error).message });
  process.exit(1);
}

const insert = db.prepare(
  'INSERT OR REPLACE INTO messages (key, id, ts, device_id, topic, content_type, payload) VALUES (?, ?, ?, ?, ?, ?, ?)',
);
const deleteRange = db.prepare('DELETE FROM messages WHERE key >= ? AND key <= ?');
const touch = db.prepare("INSERT INTO meta (k, v) VALUES ('probe', ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v");

function applyBatch(b: WriteBatch): void {
  const ins = b.inserts;
  let start = 0;
  for (let i = 0; i < ins.keys.length; i++) {
    const end = ins.ends[i]!;
    insert.run(ins.keys[i], ins.ids[i], ins.ts[i], ins.devices[i], ins.topics[i], ins.contentTypes[i], ins.payloads.subarray(start, end));
    start = end;
  }
  for (const [lo, hi] of b.deletes) deleteRange.run(lo, hi);
}

// Group commit: every batch that queued up while the previous transaction was being committed
// goes into one transaction, so they share one fsync.
const writeBatches = db.transaction((batches: WriteBatch[]) => {
  for (const b of batches) applyBatch(b);
});

function errorCode(err: unknown): string {
  const code = (err as { code?: string }).code ?? 'UNKNOWN';
  return code;
}

function commit(batches: WriteBatch[]): void {
  if (batches.length === 0) return;
  try {
    writeBatches(batches);
    for (const b of batches) reply({ type: 'done', batch: b.batch });
  } catch (err) {
    for (const b of batches) reply({ type: 'failed', batch: b.batch, code: errorCode(err), message: (err as Error).message });
  }
}

port.on('message', (first: WriterRequest) => {
  // Take everything already queued, in order: consecutive writes become one transaction.
  const requests = [first];
  for (let next = receiveMessageOnPort(port); next; next = receiveMessageOnPort(port)) requests.push(next.message as WriterRequest);
  let writes: WriteBatch[] = [];
  for (const req of requests) {
    if (req.type === 'write') {
      writes.push(req.batch);
      continue;
    }
    commit(writes);
    writes = [];
    handle(req);
  }
  commit(writes);
});

function handle(req: WriterRequest): void {
  switch (req.type) {
    case 'write':
      commit([req.batch]);
      return;
    case 'probe':
      try {
        touch.run(String(Date.now()));
        reply({ type: 'done', batch: req.batch });
      } catch (err) {
        reply({ type: 'failed', batch: req.batch, code: errorCode(err), message: (err as Error).message });
      }
      return;
    case 'close':
      try {
        db.pragma('wal_checkpoint(TRUNCATE)');
      } catch {
        // a checkpoint that cannot run now runs at the next open
      }
      db.close();
      port.close();
      return;
  }
}

reply({ type: 'ready' });
