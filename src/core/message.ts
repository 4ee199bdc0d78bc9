// The unified message model: every message, whatever its protocol, becomes an EdgeMessage
// before anything else looks at it. This module imports nothing on purpose.

export type Protocol = 'mqtt' | 'coap' | 'ws' | 'internal' | 'cloud';
export type ContentType = 'json' | 'cbor' | 'text' | 'binary';
export type QoS = 0 | 1 | 2;

export interface EdgeMessage {
  /** ULID: unique, sortable, monotonic within one proxy; kept through the cache and retries */
  readonly id: string;
  /** ms since the Unix epoch when the proxy received or created it */
  readonly ts: number;
  readonly deviceId: string;
  readonly protocol: Protocol;
  readonly topic: string;
  readonly payload: Uint8Array;
  readonly contentType: ContentType;
  readonly qos: QoS;
  readonly retain: boolean;
  readonly props: Readonly<Record<string, string>>;
  /** 0 from a device or the cloud; a derived message has its parent's hops + 1 */
  readonly hops: number;
  readonly parentId?: string;
}

/** The device id of messages from the cloud and of messages with no source device. */
export const EDGE_DEVICE_ID = 'edge';

const DEVICE_ID = /^[A-Za-z0-9_.:-]{1,128}$/;

export function isValidDeviceId(id: string): boolean {
  return DEVICE_ID.test(id);
}

export const CONTENT_TYPES: readonly ContentType[] = ['json', 'cbor', 'text', 'binary'];
