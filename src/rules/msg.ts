import type { EdgeMessage } from '../core/message.js';
import type { Value } from './values.js';

/** The `msg` root as rules read it (docs/rules.md, What a rule can read): the message's fields, not its payload. */
export function msgValue(msg: EdgeMessage): Value {
  return {
    id: msg.id,
    ts: msg.ts,
    topic: msg.topic,
    deviceId: msg.deviceId,
    protocol: msg.protocol,
    qos: msg.qos,
    retain: msg.retain,
    props: { ...msg.props },
    hops: msg.hops,
    parentId: msg.parentId ?? null,
  };
}
