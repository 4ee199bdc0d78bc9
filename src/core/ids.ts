import { monotonicFactory } from 'ulid';

// Monotonic: ids made within one millisecond still sort in creation order, which the
// cache relies on for per-device order and the cloud for de-duplication.
const nextUlid = monotonicFactory();

export function newMessageId(now: number = Date.now()): string {
  return nextUlid(now);
}
