import type { Priority } from '../config/types.js';

// Stored as small integers so that "ORDER BY priority" drains the most urgent first.
export const PRIORITIES: readonly Priority[] = ['critical', 'high', 'normal', 'low'];

export function priorityRank(p: Priority): number {
  return PRIORITIES.indexOf(p);
}

export function priorityName(rank: number): Priority {
  return PRIORITIES[rank] ?? 'normal';
}
