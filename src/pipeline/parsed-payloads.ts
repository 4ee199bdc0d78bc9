// Payloads the ingress gate parsed while finding or checking their content type, handed once to the
// router's rules, so that a JSON payload is parsed once per message (it is the largest cost of a
// message with a large payload, such as a window of vibration samples).
import type { EdgeMessage } from '../core/message.js';

const parsed = new WeakMap<EdgeMessage, unknown>();

export function keepParsed(msg: EdgeMessage, value: unknown): void {
  parsed.set(msg, value);
}

/** The parsed payload, once: later calls find nothing and parse it themselves. */
export function takeParsed(msg: EdgeMessage): { value: unknown } | null {
  if (!parsed.has(msg)) return null;
  const value = parsed.get(msg);
  parsed.delete(msg);
  return { value };
}

/** Forgets it: a message no rule read must not keep its parsed payload (a retained one lives long). */
export function dropParsed(msg: EdgeMessage): void {
  parsed.delete(msg);
}
