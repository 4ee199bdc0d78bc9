// A message's decoded payload while it is routed: parsed by the ingress gate while finding or checking
// its content type, or by the router when a rule or a model first reads it, and forgotten once the
// message is routed. A payload is parsed once per message: for a large one (a window of vibration
// samples) the parse is the largest cost of the message.
import type { EdgeMessage } from '../core/message.js';

const parsed = new WeakMap<EdgeMessage, unknown>();

export function keepParsed(msg: EdgeMessage, value: unknown): void {
  parsed.set(msg, value);
}

export function parsedOf(msg: EdgeMessage): { value: unknown } | null {
  return parsed.has(msg) ? { value: parsed.get(msg) } : null;
}

/** Forgets it: a message no rule read must not keep its parsed payload (a retained one lives long). */
export function dropParsed(msg: EdgeMessage): void {
  parsed.delete(msg);
}
