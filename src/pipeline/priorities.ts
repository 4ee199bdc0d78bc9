import type { Priority } from '../core/priority.js';
import { topicMatches } from '../core/topic.js';

export interface PriorityRule {
  readonly topic: string;
  readonly priority: Priority;
}

// Devices publish on a handful of topics each, so the answer per topic is remembered; the memory
// is bounded by starting afresh when the table is full.
const MAX_REMEMBERED = 10_000;

/** `routing.priorities`: the uplink priority of a topic, first matching filter wins, else `normal`. */
export class PriorityTable {
  private readonly remembered = new Map<string, Priority>();

  constructor(private readonly rules: readonly PriorityRule[]) {}

  priorityOf(topic: string): Priority {
    if (this.rules.length === 0) return 'normal';
    let p = this.remembered.get(topic);
    if (p !== undefined) return p;
    p = 'normal';
    for (const rule of this.rules) {
      if (topicMatches(rule.topic, topic)) {
        p = rule.priority;
        break;
      }
    }
    if (this.remembered.size >= MAX_REMEMBERED) this.remembered.clear();
    this.remembered.set(topic, p);
    return p;
  }
}
