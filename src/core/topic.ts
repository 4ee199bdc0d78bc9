// Topics and MQTT topic filters, shared by every protocol.
import { EDGE_DEVICE_ID, isValidDeviceId } from './message.js';

const DEVICES_PREFIX = 'devices/';

/**
 * The device a topic of the `devices/<id>/...` convention names, or null. This is the one rule for
 * a message whose sender named no device (an MQTT client in open mode with no username and an id the
 * broker assigned), and for `edge-proxy rules test` when a recorded message gives no deviceId.
 */
export function deviceIdOfTopic(topic: string): string | null {
  if (!topic.startsWith(DEVICES_PREFIX)) return null;
  const end = topic.indexOf('/', DEVICES_PREFIX.length);
  const id = topic.slice(DEVICES_PREFIX.length, end === -1 ? undefined : end);
  return isValidDeviceId(id) && id !== EDGE_DEVICE_ID ? id : null;
}

const RESERVED_PREFIX = '$edge/';

type TopicProblem = 'empty' | 'too_long' | 'nul' | 'control' | 'wildcard' | 'reserved';

/**
 * Code points MQTT 3.1.1 §1.5.3 says a topic SHOULD NOT hold and a receiver MAY close the connection
 * for (Mosquitto does): control characters and the Unicode non-characters. Let through, one such
 * message would close the uplink each time it is sent, and hold up every message queued behind it.
 */
const UNSAFE_CODE_POINT = /[\p{Cc}\p{Noncharacter_Code_Point}]/u;

/** Why a topic may not be published by a device, or null when it may. */
export function checkDeviceTopic(topic: string, maxTopicBytes: number): TopicProblem | null {
  if (topic.length === 0) return 'empty';
  if (Buffer.byteLength(topic, 'utf8') > maxTopicBytes) return 'too_long';
  if (topic.includes('\u0000')) return 'nul';
  if (UNSAFE_CODE_POINT.test(topic)) return 'control';
  if (topic.includes('+') || topic.includes('#')) return 'wildcard';
  // `$SYS/`, `$edge/` and any `$` name a broker or the proxy may use: never a device's [MQTT-4.7.2].
  if (topic.startsWith('$')) return 'reserved';
  return null;
}

/** True when a subscription filter reaches into the reserved tree. */
export function filterTouchesReserved(filter: string): boolean {
  // A leading '#' or '+' never matches a '$' topic [MQTT-4.7.2-1], so only explicit '$edge' filters reach it.
  return filter === '$edge' || filter.startsWith(RESERVED_PREFIX);
}

/** MQTT topic filter matching ('+' one level, '#' the rest, '$' topics not matched by a leading wildcard). */
export function topicMatches(filter: string, topic: string): boolean {
  if (topic.startsWith('$') && (filter.startsWith('+') || filter.startsWith('#'))) return false;
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    const level = f[i];
    if (level === '#') return true;
    if (i >= t.length) return false;
    if (level !== '+' && level !== t[i]) return false;
  }
  return f.length === t.length;
}
