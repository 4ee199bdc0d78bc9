import type { Logger } from 'pino';
import { EdgeError } from '../core/errors.js';
import type { ContentType, EdgeMessage, Protocol, QoS } from '../core/message.js';
import { EDGE_DEVICE_ID } from '../core/message.js';
import { newMessageId } from '../core/ids.js';
import { checkDeclaredContent, sniffContentType } from '../core/content-type.js';
import { keepParsed } from './parsed-payloads.js';
import { checkDeviceTopic, deviceIdOfTopic, filterTouchesReserved } from '../core/topic.js';
import type { AuthFailureReason, AuthResult, AuthService, Credentials, Identity } from '../auth/service.js';

export type DeviceProtocol = Extract<Protocol, 'mqtt' | 'coap' | 'ws'>;

/** What the gate hands on: the router, which calls `done` once the message is safe. */
export interface Acceptor {
  acceptFromDevice(msg: EdgeMessage, done: (err: EdgeError | null) => void): void;
  acceptFromCloud(msg: EdgeMessage): void;
}

/** A publish as any adapter decodes it, before it is a message. */
export interface PublishRequest {
  topic: string;
  payload: Uint8Array;
  qos: QoS;
  retain: boolean;
  /** from the protocol (a CoAP Content-Format), checked against the bytes; sniffed when absent */
  contentType?: ContentType;
  props?: Readonly<Record<string, string>>;
}

/**
 * The gate's answer to a publish. `drop`: acknowledge it and deliver it nowhere (a `$` topic, which
 * conformance suites publish to and expect to carry on). `refuse`: answer it the protocol's way;
 * the error's code says which (E_ACL, E_MALFORMED, E_TOO_LARGE), and `retryable` whether the
 * device may send it again later or is refused for good.
 */
export type PublishVerdict =
  { kind: 'accept'; msg: EdgeMessage } | { kind: 'drop'; reason: 'reserved_topic' } | { kind: 'refuse'; error: EdgeError };

export type RefuseReason = 'too_large' | 'malformed' | 'acl';

/** What the gate reports; metrics hang on these. */
export interface IngressEvents {
  authFailure(protocol: DeviceProtocol, reason: AuthFailureReason): void;
  refused(reason: RefuseReason): void;
  dropped(reason: 'reserved_topic' | 'downlink_invalid'): void;
  downlinkReceived(): void;
}

export interface IngressLimits {
  maxPayloadBytes: number;
  maxTopicBytes: number;
}

// Refusals are counted every time but logged once a minute per device; past this many devices
// the memory of who was logged starts afresh, so a flood of invented ids cannot grow it.
const LOG_EVERY_MS = 60_000;
const MAX_LOGGED = 10_000;

/**
 * The one way in for every adapter and the cloud downlink: identity → access control → limits →
 * normalization. Adapters translate their packets into PublishRequests and map the verdicts to
 * their protocol's answers; no adapter checks a topic, a size or an id itself (each still refuses
 * an oversized packet from its framing, before the payload is buffered).
 */
export class IngressGate {
  private readonly logged = new Map<string, number>();

  constructor(
    private readonly auth: AuthService,
    private readonly limits: IngressLimits,
    private readonly pipeline: Acceptor,
    private readonly events: IngressEvents,
    private readonly log: Logger,
  ) {}

  /** Who the device is; a failure is counted and logged here, the adapter only answers it. */
  authenticate(protocol: DeviceProtocol, credentials: Credentials, remote: string): AuthResult {
    const result = this.auth.authenticate(credentials);
    if (!result.ok) this.authFailed(protocol, result.reason, result.deviceId, remote, result.detail);
    return result;
  }

  /** A TLS handshake or client certificate the TLS layer refused. */
  tlsRefused(protocol: DeviceProtocol, remote: string, detail: string): void {
    this.authFailed(protocol, 'tls', null, remote, detail);
  }

  private authFailed(protocol: DeviceProtocol, reason: AuthFailureReason, deviceId: string | null, remote: string, detail: string): void {
    this.events.authFailure(protocol, reason);
    const hint =
      reason === 'unknown_device'
        ? ' (edge-proxy devices add <id> registers a device)'
        : reason === 'bad_token'
          ? ' (edge-proxy devices rotate <id> gives a device a new token)'
          : '';
    this.logOnce(
      `${reason}:${deviceId ?? remote}`,
      'warn',
      { code: reason === 'tls' ? 'E_TLS' : 'E_AUTH', protocol, reason, deviceId, remote },
      `${protocol} device refused: ${detail}${hint}`,
    );
  }

  /** A device publish: checked, normalized, and counted when refused. Hand an accepted message on with accept(). */
  checkPublish(identity: Identity, protocol: DeviceProtocol, req: PublishRequest): PublishVerdict {
    const problem = checkDeviceTopic(req.topic, this.limits.maxTopicBytes);
    if (problem === 'reserved') {
      this.events.dropped('reserved_topic');
      return { kind: 'drop', reason: 'reserved_topic' };
    }
    if (problem) return this.refuse('malformed', new EdgeError('E_MALFORMED', `invalid topic (${problem})`));
    if (!this.auth.mayPublish(identity, req.topic)) {
      this.events.authFailure(protocol, 'acl');
      this.logOnce(
        `acl:${identity.deviceId}`,
        'warn',
        { code: 'E_ACL', protocol, deviceId: identity.deviceId, topic: req.topic.slice(0, 300) },
        `${identity.deviceId} may not publish to "${req.topic.slice(0, 300)}": outside its publish filters in the registry; refused (MQTT closes the connection, /ws answers E_ACL; logged once a minute per device)`,
      );
      return this.refuse('acl', new EdgeError('E_ACL', `publish to "${req.topic.slice(0, 300)}" is outside the device's publish filters`));
    }
    if (req.payload.byteLength > this.limits.maxPayloadBytes) {
      return this.refuse(
        'too_large',
        new EdgeError(
          'E_TOO_LARGE',
          `PUBLISH payload of ${req.payload.byteLength} bytes exceeds the limit of ${this.limits.maxPayloadBytes}`,
        ),
      );
    }
    let decoded: unknown;
    if (req.contentType !== undefined) {
      // Downstream (the cloud envelope, /ws frames, the rules) takes a json payload for JSON text.
      const checked = checkDeclaredContent(req.contentType, req.payload);
      if (checked.problem !== null) return this.refuse('malformed', new EdgeError('E_MALFORMED', checked.problem));
      decoded = checked.decoded;
    }
    const deviceId = identity.fromTopic ? (deviceIdOfTopic(req.topic) ?? identity.deviceId) : identity.deviceId;
    return { kind: 'accept', msg: this.normalize(deviceId, protocol, req, decoded) };
  }

  private refuse(reason: RefuseReason, error: EdgeError): PublishVerdict {
    this.events.refused(reason);
    return { kind: 'refuse', error };
  }

  /** Hand an accepted message to the pipeline; `done` runs once it is safe (committed where it goes up). */
  accept(msg: EdgeMessage, done: (err: EdgeError | null) => void): void {
    this.pipeline.acceptFromDevice(msg, done);
  }

  /** A subscription: null when allowed, else why not (E_ACL), counted and logged. */
  checkSubscribe(identity: Identity, protocol: DeviceProtocol, filter: string): EdgeError | null {
    const reserved = filterTouchesReserved(filter);
    if (!reserved && this.auth.maySubscribe(identity, filter)) return null;
    this.events.authFailure(protocol, 'acl');
    const why = reserved ? 'the $edge/ tree is reserved for the proxy' : 'outside its subscribe filters in the registry';
    this.logOnce(
      `acl-sub:${identity.deviceId}`,
      'warn',
      { code: 'E_ACL', protocol, deviceId: identity.deviceId, filter: filter.slice(0, 300) },
      `${identity.deviceId} may not subscribe to "${filter.slice(0, 300)}": ${why} (logged once a minute per device)`,
    );
    return new EdgeError('E_ACL', `subscription to "${filter.slice(0, 300)}" refused: ${why}`);
  }

  /**
   * A message may reach this device: it is still admitted and one of its subscribe filters matches
   * the topic. Asked for every delivery, so that a narrowed registry applies to what is already queued.
   */
  mayReceive(identity: Identity, topic: string): boolean {
    return this.auth.mayReceive(identity, topic);
  }

  /** Still allowed to hold a subscription it made earlier (the registry may have narrowed its filters). */
  stillMaySubscribe(identity: Identity, filter: string): boolean {
    return this.auth.admitted(identity) && this.auth.maySubscribe(identity, filter);
  }

  /** A message from the cloud downlink, held to the same limits as a device's. */
  fromCloud(topic: string, payload: Buffer, retain: boolean): void {
    this.events.downlinkReceived();
    const problem =
      checkDeviceTopic(topic, this.limits.maxTopicBytes) ??
      (payload.length > this.limits.maxPayloadBytes ? `payload of ${payload.length} bytes over limits.maxPayloadBytes` : null);
    if (problem) {
      this.events.dropped('downlink_invalid');
      this.log.warn(
        { topic: topic.slice(0, 300), bytes: payload.length, problem },
        'a downlink message from the cloud was not delivered locally',
      );
      return;
    }
    this.pipeline.acceptFromCloud(this.normalize(EDGE_DEVICE_ID, 'cloud', { topic, payload, qos: 1, retain }));
  }

  private normalize(deviceId: string, protocol: Protocol, req: PublishRequest, decoded?: unknown): EdgeMessage {
    const now = Date.now();
    let contentType = req.contentType;
    if (contentType === undefined) {
      const sniffed = sniffContentType(req.payload);
      contentType = sniffed.contentType;
      decoded = sniffed.decoded;
    }
    const msg: EdgeMessage = {
      id: newMessageId(now),
      ts: now,
      deviceId,
      protocol,
      topic: req.topic,
      payload: req.payload,
      contentType,
      qos: req.qos,
      retain: req.retain,
      props: req.props ?? {},
      hops: 0,
    };
    if (decoded !== undefined) keepParsed(msg, decoded);
    return msg;
  }

  private logOnce(key: string, level: 'warn' | 'info', fields: Record<string, unknown>, message: string): void {
    const now = Date.now();
    if ((this.logged.get(key) ?? 0) > now - LOG_EVERY_MS) return;
    if (this.logged.size >= MAX_LOGGED) this.logged.clear();
    this.logged.set(key, now);
    this.log[level](fields, message);
  }
}
