// The durable cache on its own (docs/cache.md, guarantees 1, 3, 4, 5, 7): a real SQLite file
// and the real writer thread.
import t from 'tap';
import { writeFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { DurableCache, toRanges, type CacheOptions, type CachedMessage } from '../src/uplink/cache.js';
import type { EdgeMessage } from '../src/core/message.js';
import type { Priority } from '../src/core/priority.js';
import { newMessageId } from '../src/core/ids.js';
import { messageSize } from '../src/uplink/cache-schema.js';

interface Recorded {
  evicted: Array<[Priority, string, number]>;
  refused: string[];
  writeErrors: number;
  logs: Array<Record<string, unknown>>;
}

function options(dir: string, over: Partial<CacheOptions> = {}): { opts: CacheOptions; rec: Recorded } {
  const rec: Recorded = { evicted: [], refused: [], writeErrors: 0, logs: [] };
  const log = pino(
    { level: 'debug' },
    {
      write: (line: string) => {
        rec.logs.push(JSON.parse(line) as Record<string, unknown>);
      },
    },
  );
  return {
    rec,
    opts: {
      path: join(dir, 'cache.db'),
      maxBytes: 1024 * 1024,
      maxAgeSeconds: 3600,
      log,
      events: {
        writeError: () => rec.writeErrors++,
        evicted: (p, r, n) => rec.evicted.push([p, r, n]),
        refused: (r) => rec.refused.push(r),
      },
      ...over,
    },
  };
}

function message(deviceId: string, seq: number, opts: { bytes?: number; ts?: number } = {}): EdgeMessage {
  const body = JSON.stringify({ seq, pad: 'x'.repeat(Math.max(0, (opts.bytes ?? 40) - 20)) });
  const ts = opts.ts ?? Date.now();
  return {
    id: newMessageId(ts),
    ts,
    deviceId,
    protocol: 'mqtt',
    topic: `devices/${deviceId}/telemetry`,
    payload: Buffer.from(body),
    contentType: 'json',
    qos: 1,
    retain: false,
    props: {},
    hops: 0,
  };
}

function append(cache: DurableCache, msg: EdgeMessage, priority: Priority = 'normal'): Promise<Error | null> {
  return new Promise((resolve) => cache.append(msg, priority, resolve));
}

function seqs(rows: CachedMessage[]): number[] {
  return rows.map((r) => (JSON.parse(Buffer.from(r.payload).toString()) as { seq: number }).seq);
}

function readAll(cache: DurableCache, priority: Priority): CachedMessage[] {
  return cache.readQueue(priority, DurableCache.queueStart(priority), 1_000_000).messages;
}

t.test('committed messages survive a restart, in order, per priority; delivered ones do not', async (t) => {
  const dir = t.testdir();
  const { opts } = options(dir);
  const cache = await DurableCache.open(opts);
  const results = await Promise.all([
    ...[1, 2, 3].map((s) => append(cache, message('d1', s), 'normal')),
    ...[4, 5].map((s) => append(cache, message('d1', s), 'critical')),
    append(cache, message('d1', 6), 'low'),
  ]);
  t.same(results, [null, null, null, null, null, null], 'every append committed');
  t.same(seqs(readAll(cache, 'normal')), [1, 2, 3]);
  t.same(seqs(readAll(cache, 'critical')), [4, 5]);
  t.same(cache.messagesByPriority(), { critical: 2, high: 0, normal: 3, low: 1 });
  cache.ack(readAll(cache, 'normal')[0]!);
  t.equal(cache.messageCount(), 5, 'an acknowledged message is counted out at once');
  t.same(seqs(readAll(cache, 'normal')), [2, 3], 'and not read again');
  await cache.close();

  const again = await DurableCache.open(options(dir).opts);
  t.same(seqs(readAll(again, 'normal')), [2, 3], 'after a restart: what was not delivered');
  t.same(seqs(readAll(again, 'critical')), [4, 5]);
  t.same(again.messagesByPriority(), { critical: 2, high: 0, normal: 2, low: 1 });
  t.equal(
    again.bytes(),
    readAll(again, 'normal')
      .concat(readAll(again, 'critical'), readAll(again, 'low'))
      .reduce((n, m) => n + messageSize(m.payload.byteLength, m.topic, m.deviceId), 0),
    'bytes recounted from the file',
  );
  t.ok((await append(again, message('d1', 7))) === null, 'appends go on after a restart');
  t.same(seqs(readAll(again, 'normal')), [2, 3, 7], 'in arrival order after the restart too');
  await again.close();
});

t.test('group commit: many appends in one turn share one transaction and all commit', async (t) => {
  const { opts } = options(t.testdir());
  const cache = await DurableCache.open(opts);
  const n = 5000;
  const results = await Promise.all(Array.from({ length: n }, (_, i) => append(cache, message(`d${i % 50}`, i))));
  t.equal(results.filter((r) => r === null).length, n);
  t.equal(readAll(cache, 'normal').length, n);
  await cache.close();
});

t.test("byte bound: the oldest of the lowest priority go first, never above the new message's own priority", async (t) => {
  const size = messageSize(Buffer.byteLength(JSON.stringify({ seq: 1, pad: 'x'.repeat(80) })), 'devices/d1/telemetry', 'd1');
  const { opts, rec } = options(t.testdir(), { maxBytes: size * 4 });
  const cache = await DurableCache.open(opts);
  for (const [s, p] of [
    [1, 'low'],
    [2, 'low'],
    [3, 'normal'],
    [4, 'normal'],
  ] as Array<[number, Priority]>)
    t.equal(await append(cache, message('d1', s, { bytes: 100 }), p), null);
  t.equal(cache.bytes(), size * 4, 'exactly full: nothing evicted yet');
  t.same(rec.evicted, []);

  t.equal(await append(cache, message('d1', 5, { bytes: 100 }), 'normal'), null, 'a normal message makes room');
  t.same(seqs(readAll(cache, 'low')), [2], 'by evicting the oldest low one');
  t.same(rec.evicted, [['low', 'bytes', 1]]);

  t.equal(await append(cache, message('d1', 6, { bytes: 100 }), 'high'), null);
  t.same(seqs(readAll(cache, 'low')), [], 'low goes before normal');
  t.same(seqs(readAll(cache, 'normal')), [3, 4, 5]);

  const refused = await append(cache, message('d1', 7, { bytes: 100 }), 'low');
  t.match(refused, { code: 'E_CACHE_FULL' }, 'a low message may not evict normal ones: refused');
  t.same(rec.refused, ['full']);
  t.same(seqs(readAll(cache, 'normal')), [3, 4, 5], 'and nothing was evicted for it');

  t.equal(await append(cache, message('d1', 8, { bytes: 100 }), 'high'), null, 'high evicts normal when no low is left');
  t.same(seqs(readAll(cache, 'normal')), [4, 5]);
  t.ok(
    rec.logs.some((l) => l.level === 40 && String(l.msg).includes('evicted 1 normal message')),
    'each eviction is logged',
  );
  await cache.close();
});

t.test('critical messages are never evicted; a critical message that finds only critical ones is refused', async (t) => {
  const size = messageSize(Buffer.byteLength(JSON.stringify({ seq: 1, pad: 'x'.repeat(80) })), 'devices/d1/telemetry', 'd1');
  const { opts, rec } = options(t.testdir(), { maxBytes: size * 2 });
  const cache = await DurableCache.open(opts);
  t.equal(await append(cache, message('d1', 1, { bytes: 100 }), 'critical'), null);
  t.equal(await append(cache, message('d1', 2, { bytes: 100 }), 'critical'), null);
  t.match(await append(cache, message('d1', 3, { bytes: 100 }), 'critical'), { code: 'E_CACHE_FULL' });
  t.match(await append(cache, message('d1', 4, { bytes: 100 }), 'high'), { code: 'E_CACHE_FULL' });
  t.same(seqs(readAll(cache, 'critical')), [1, 2]);
  cache.sweepAge(Date.now() + 10 * 3600_000);
  t.same(seqs(readAll(cache, 'critical')), [1, 2], 'nor evicted by age');
  t.same(rec.evicted, []);
  await cache.close();
});

t.test('age bound: messages older than maxAgeSeconds are evicted, oldest first, critical exempt', async (t) => {
  const { opts, rec } = options(t.testdir(), { maxAgeSeconds: 60 });
  const cache = await DurableCache.open(opts);
  const now = Date.now();
  await append(cache, message('d1', 1, { ts: now - 120_000 }), 'low');
  await append(cache, message('d1', 2, { ts: now - 61_000 }), 'normal');
  await append(cache, message('d1', 3, { ts: now - 59_000 }), 'normal');
  await append(cache, message('d1', 4, { ts: now - 120_000 }), 'critical');
  cache.sweepAge(now);
  t.same(seqs(readAll(cache, 'low')), []);
  t.same(seqs(readAll(cache, 'normal')), [3], 'one second inside the bound stays, one second outside goes');
  t.same(seqs(readAll(cache, 'critical')), [4]);
  t.same(rec.evicted.sort(), [
    ['low', 'age', 1],
    ['normal', 'age', 1],
  ]);
  t.ok(cache.oldestAgeSeconds(now) >= 119, 'the oldest left is the critical one');
  await cache.drainWrites();
  await cache.close();
  const again = await DurableCache.open(options(opts.path.replace(/\/cache\.db$/, '')).opts);
  t.equal(again.messageCount(), 2, 'the evictions were written');
  await again.close();
});

t.test('a damaged cache file is moved aside, never deleted, and a new cache starts', async (t) => {
  const dir = t.testdir();
  writeFileSync(join(dir, 'cache.db'), Buffer.alloc(8192, 0x5a));
  const { opts, rec } = options(dir);
  const cache = await DurableCache.open(opts);
  t.ok((await append(cache, message('d1', 1))) === null, 'the new cache works');
  const aside = readdirSync(dir).filter((f) => f.startsWith('cache.db.damaged-'));
  t.equal(aside.length, 1, 'the damaged file is kept beside it');
  const line = rec.logs.find((l) => l.level === 50);
  t.match(line, { movedTo: join(dir, aside[0]!) });
  t.match(String(line?.msg), /\.recover/, 'the log says how to recover its messages');
  await cache.close();
});

t.test('delivered keys coalesce into ranges', async (t) => {
  t.same(toRanges([5, 3, 4, 9, 10, 1]), [
    [1, 1],
    [3, 5],
    [9, 10],
  ]);
  t.same(toRanges([7, 7, 8]), [[7, 8]]);
  t.same(toRanges([]), []);
});
