// The contract every device protocol implements. An adapter owns its endpoints and its wire
// format; identity, access control, limits and normalization are the ingress gate's, and local
// delivery across protocols goes through the sink it registers. A new protocol is a new module
// that implements this, plus one line in the list of adapters in main.ts.
import type { Logger } from 'pino';
import type { EdgeMessage } from '../core/message.js';
import type { AuthService } from '../auth/service.js';
import type { DeviceProtocol, IngressGate } from '../pipeline/ingress.js';
import type { LocalSink } from '../pipeline/local.js';
import type { RetainedStore } from '../pipeline/retained.js';
import type { UpgradeRegistry } from './http/endpoint.js';

/** A listening endpoint, as the `listening` log line and the ports file name it (`mqtt`, `mqtt-tls`, ...). */
export interface Endpoint {
  name: string;
  host: string;
  port: number;
}

export type Transport = 'tcp' | 'tls' | 'ws' | 'udp';

/** What an adapter reports about its connections; metrics hang on these. */
export interface AdapterEvents {
  connectionOpened(protocol: DeviceProtocol, transport: Transport): void;
  connectionClosed(protocol: DeviceProtocol, transport: Transport): void;
  /** a packet refused from its framing, before the gate saw it (oversized, unparseable, not part of the protocol) */
  framingRefused(reason: 'too_large' | 'malformed' | 'unsupported'): void;
  /** a publish accepted by the gate that the pipeline could not take now (cache full, stopping) */
  notAccepted(protocol: DeviceProtocol, qos: 0 | 1 | 2): void;
  /** a delivery to a local subscriber left out: its send buffer is over its limit (a QoS 0 message) */
  deliveryDropped(protocol: DeviceProtocol, reason: 'slow_consumer'): void;
  /** a subscriber closed because it stayed too far behind (WebSocket close 1013) */
  slowConsumerClosed(protocol: DeviceProtocol): void;
  /**
   * CoAP exchanges: a retransmission answered from the deduplication memory, an answered exchange
   * forgotten early to keep that memory under its cap, a separate response (an empty ACK first),
   * a separate response never acknowledged.
   */
  coapExchange(event: 'duplicate' | 'evicted' | 'separate_response' | 'separate_unacknowledged'): void;
  /** bytes an adapter holds for its peers in one of its bounded structures, as they are now (each bound is in the adapter's docs) */
  memoryHeld(protocol: DeviceProtocol, structure: string, bytes: number): void;
  /**
   * CoAP block-wise uploads (Block1): reassembled whole, forgotten after their idle time, dropped
   * to stay under the memory cap, refused as over limits.maxPayloadBytes, a block out of order (4.08).
   */
  coapBlock1(event: 'completed' | 'expired' | 'evicted' | 'too_large' | 'incomplete'): void;
  /**
   * CoAP observations (RFC 7641): registered, replaced (the same endpoint and token again),
   * refused (over a bound: answered without Observe), deregistered (Observe 1), reset (a RST to a
   * notification), unacknowledged (a confirmable notification never acknowledged), revoked (ended
   * 4.01 or 4.03 by a registry change).
   */
  coapObserve(event: 'registered' | 'replaced' | 'refused' | 'deregistered' | 'reset' | 'unacknowledged' | 'revoked'): void;
  /**
   * CoAP block-wise responses (Block2): a representation held for its following blocks, one
   * dropped early to stay under the memory cap, a block asked of one no longer held.
   */
  coapBlock2(event: 'stored' | 'evicted' | 'missing'): void;
}

/** Everything an adapter is given besides its own configuration slice. */
export interface AdapterDeps {
  gate: IngressGate;
  /** registry changes: a removed or re-keyed device is disconnected, narrowed filters checked again */
  auth: Pick<AuthService, 'on' | 'off'>;
  /** the retained messages of every protocol, read when a subscription starts */
  retained: Pick<RetainedStore, 'matching' | 'get'>;
  events: AdapterEvents;
  /** the shared HTTP endpoint (http.*), where a WebSocket protocol registers its path */
  http: UpgradeRegistry;
  log: Logger;
}

export interface DeviceAdapter extends LocalSink {
  readonly protocol: DeviceProtocol;
  /** Listen on every endpoint the configuration enables. */
  start(): Promise<Endpoint[]>;
  /**
   * Stop reading, let `settle` commit what is in hand so that its acknowledgements go out, then
   * close every connection and endpoint.
   */
  stop(settle: () => Promise<void>): Promise<void>;
  /** Publish to this adapter's local subscribers (the pipeline's local delivery calls it). */
  deliver(msg: EdgeMessage): void;
  connectedCount(): number;
}
