// The cache's writer thread. Every write (inserts, deletes) happens here, so the fsync of a commit
// never stalls the event loop that serves devices: the main thread keeps reading packets while
// the disk confirms the previous batch, and the next batch is whatever arrived meanwhile.
import { parentPort, workerData } from 'node:worker_threads';
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

const insert = db.prepare('INSERT OR REPLACE INTO messages (key, id, ts, device_id, topic, content_type, payload) VALUES (?, ?, ?, ?, ?, ?, ?)');
const deleteRange = db.prepare('DELETE FROM messages WHERE key >= ? AND key <= ?');
const touch = db.prepare("INSERT INTO meta (k, v) VALUES ('probe', ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v");

const writeBatch = db.transaction((b: WriteBatch) => {
  const ins = b.inserts;
  let start = 0;
  for (let i = 0; i < ins.keys.length; i++) {
    const end = ins.ends[i]!;
    insert.run(ins.keys[i], ins.ids[i], ins.ts[i], ins.devices[i], ins.topics[i], ins.contentTypes[i], ins.payloads.subarray(start, end));
    start = end;
  }
  for (const [lo, hi] of b.deletes) deleteRange.run(lo, hi);
});

function errorCode(err: unknown): string {
  const code = (err as { code?: string }).code ?? 'UNKNOWN';
  return code;
}

port.on('message', (req: WriterRequest) => {
  switch (req.type) {
    case 'write':
      try {
        writeBatch(req.batch);
        reply({ type: 'done', batch: req.batch.batch });
      } catch (err) {
        reply({ type: 'failed', batch: req.batch.batch, code: errorCode(err), message: (err as Error).message });
      }
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
});

reply({ type: 'ready' });
