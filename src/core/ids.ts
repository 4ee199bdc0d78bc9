import { randomFillSync } from 'node:crypto';
import { monotonicFactory } from 'ulid';

// ulid draws one random byte per character through crypto.getRandomValues; a pool refilled
// 4 KiB at a time gives the same entropy without a system call per character.
const pool = new Uint8Array(4096);
let used = pool.length;
function pooledRandom(): number {
  if (used >= pool.length) {
    randomFillSync(pool);
    used = 0;
  }
  return pool[used++]! / 0x100;
}

// Monotonic: ids made within one millisecond still sort in creation order, which the
// cache relies on for per-device order and the cloud for de-duplication.
const nextUlid = monotonicFactory(pooledRandom);

export function newMessageId(now: number = Date.now()): string {
  return nextUlid(now);
}
