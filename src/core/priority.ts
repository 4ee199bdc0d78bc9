// The uplink priorities (docs/configuration.md, Uplink priorities; docs/cache.md, guarantee 4).

/** Every priority, most urgent first. A priority's rank is its place here: the cache keys on it. */
export const PRIORITIES = ['critical', 'high', 'normal', 'low'] as const;

export type Priority = (typeof PRIORITIES)[number];

/** 0 for the most urgent priority, and one more for each step down. */
export function priorityRank(p: Priority): number {
  return PRIORITIES.indexOf(p);
}
