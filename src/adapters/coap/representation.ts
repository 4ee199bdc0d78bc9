// What a CoAP device receives for a message (../shared/spec/protocols.md, CoAP): for an exact
// topic the payload as it is with its Content-Format, for a filter with wildcards the JSON of the
// message as a /ws `msg` frame carries it (topic, payload, contentType, ts, msgId). Pure.
import type { EdgeMessage } from '../../core/message.js';
import { asBuffer } from '../../core/bytes.js';
import { messageJson } from '../message-json.js';
import { etagOf, type Representation } from './block2.js';
import { formatOf } from './codec.js';

const JSON_FORMAT = 50;

/** `exact`: a resource of one topic; else of a filter. `retained`: handed over when an observation starts. */
export function representationOf(msg: EdgeMessage, exact: boolean, retained: boolean): Representation {
  if (exact) return { payload: asBuffer(msg.payload), contentFormat: formatOf(msg.contentType), etag: etagOf(`payload|${msg.id}`) };
  // The retain flag is part of the JSON, so of what the ETag names.
  return { payload: messageJson(msg, retained), contentFormat: JSON_FORMAT, etag: etagOf(`json|${retained ? 1 : 0}|${msg.id}`) };
}

/** A topic filter with a wildcard level. */
export function isFilter(topic: string): boolean {
  return topic.split('/').some((level) => level === '+' || level === '#');
}
