import type { Priority } from '../config/types.js';
import { PRIORITIES } from '../config/schema.js';

// A priority's rank is its place in PRIORITIES, most urgent first: the cache keys on it.
export { PRIORITIES };

export function priorityRank(p: Priority): number {
  return PRIORITIES.indexOf(p);
}

export function priorityName(rank: number): Priority {
  return PRIORITIES[rank] ?? 'normal';
}
