import { EventEmitter } from 'node:events';
import { createHash } from 'node:crypto';
import { EDGE_DEVICE_ID, isValidDeviceId } from '../core/message.js';
import type { DeviceEntry } from './registry.js';
import type { DeviceRegistry, RegistryChange } from './device-registry.js';
import { deviceIdOfToken, tokenMatchesHash } from './token.js';

export type AuthMode = 'open' | 'token';
export type AuthFailureReason = 'unknown_device' | 'bad_token' | 'acl' | 'tls';

/** What a device presents, whatever its protocol. */
export interface Credentials {
  /** the id it claims: the MQTT username, the CoAP or WebSocket `d` parameter */
  claimedId: string | null;
  /** the MQTT password, the CoAP `k` parameter, the WebSocket bearer token */
  token: string | null;
  /** the CN of a client certificate the TLS layer verified against the configured CA */
  certificateId: string | null;
  /** open mode, nothing claimed: what the device id is derived from (the MQTT client id, `coap-<ip>-<port>`) */
  fallbackId: string;
  /** the fallback id was made up by the proxy (an MQTT client that sent an empty client id): it names nobody */
  fallbackAssigned?: boolean;
}

/** Who a connection belongs to, decided once when it authenticates. */
export interface Identity {
  readonly deviceId: string;
  /** how it proved it; a certificate survives a token rotation */
  readonly by: 'open' | 'token' | 'certificate';
  /**
   * Open mode, a client that named no device (no username, an id the broker assigned): each of its
   * messages on a `devices/<id>/...` topic is that device's (core/topic.ts deviceIdOfTopic).
   */
  readonly fromTopic?: boolean;
}

export type AuthResult =
  { ok: true; identity: Identity } | { ok: false; reason: Exclude<AuthFailureReason, 'acl'>; deviceId: string | null; detail: string };

// Cut so that `<cut>-<16 hex>` stays within the 128 characters a device id may have.
const DERIVED_KEEP = 128 - 17;

/**
 * The device id open mode gives a client whose chosen id cannot be one (MQTT 3.1.1 allows spaces,
 * slashes and any UTF-8 in a client id; a device id is 1 to 128 of A-Z a-z 0-9 _ . : -): every run
 * of other characters becomes `_`, the result is cut to 111 characters, and `-` plus the first
 * 16 hex digits of the SHA-256 of the original id follow, so that two ids that differ only in the
 * replaced characters stay two devices. A valid id, `edge` aside, is kept as it is.
 */
export function deriveDeviceId(raw: string): string {
  if (isValidDeviceId(raw) && raw !== EDGE_DEVICE_ID) return raw;
  const hash = createHash('sha256').update(raw, 'utf8').digest('hex').slice(0, 16);
  const kept = raw.replace(/[^A-Za-z0-9_.:-]+/g, '_').slice(0, DERIVED_KEEP);
  return `${kept || 'device'}-${hash}`;
}

/** A device as rules read it: `device.id` and `device.<attr>`. */
export type DeviceValue = Readonly<Record<string, string | number | boolean>>;

/** The `device` of a registry entry: its attributes and its id (an attribute cannot be named `id`). */
export function deviceValueOf(entry: DeviceEntry): DeviceValue {
  return Object.freeze({ ...entry.attrs, id: entry.id });
}

/**
 * Who a device is and what it may do: open mode admits anyone under a derived id and allows
 * every topic but the reserved ones (the ingress gate refuses those); token mode admits the
 * devices of the registry, each on its own filters. Every decision reads the registry as it is
 * now, so an edit of the file applies to the next message; `change` tells adapters which
 * connections to drop or check again.
 */
export class AuthService extends EventEmitter<{ change: [RegistryChange] }> {
  // An entry is replaced, never changed, when the file changes: a value made for it stays right.
  private readonly values = new WeakMap<DeviceEntry, DeviceValue>();

  constructor(
    readonly mode: AuthMode,
    private readonly registry: DeviceRegistry | null,
  ) {
    super();
    registry?.on('change', (change) => this.emit('change', change));
  }

  authenticate(c: Credentials): AuthResult {
    const cn = c.certificateId;
    if (cn !== null && (!isValidDeviceId(cn) || cn === EDGE_DEVICE_ID)) {
      return {
        ok: false,
        reason: 'tls',
        deviceId: null,
        detail: `the client certificate's CN "${cn.slice(0, 128)}" is not a device id (1 to 128 of A-Z a-z 0-9 _ . : -, not "edge")`,
      };
    }
    if (this.mode === 'open' || !this.registry) return this.openIdentity(c);
    if (c.certificateId !== null) {
      const id = c.certificateId;
      if (c.claimedId && c.claimedId !== id)
        return {
          ok: false,
          reason: 'tls',
          deviceId: id,
          detail: `the username "${c.claimedId.slice(0, 128)}" is not the certificate's CN "${id}"`,
        };
      if (!this.registry.get(id))
        return {
          ok: false,
          reason: 'unknown_device',
          deviceId: id,
          detail: `the certificate's CN "${id.slice(0, 128)}" is not a device in the registry`,
        };
      return { ok: true, identity: { deviceId: id, by: 'certificate' } };
    }
    // A token names its device, so a client that sends only the token is still known.
    const id = c.claimedId || (c.token ? deviceIdOfToken(c.token) : null);
    if (!id)
      return {
        ok: false,
        reason: 'unknown_device',
        deviceId: null,
        detail: 'no device id: connect with username = device id and password = its token',
      };
    const entry = this.registry.get(id);
    if (!entry)
      return { ok: false, reason: 'unknown_device', deviceId: id, detail: `"${id.slice(0, 128)}" is not a device in the registry` };
    if (!c.token || !tokenMatchesHash(c.token, entry.tokenSha256))
      return {
        ok: false,
        reason: 'bad_token',
        deviceId: id,
        detail: c.token ? 'the token does not match the registry' : "no token: the password must be the device's token",
      };
    return { ok: true, identity: { deviceId: id, by: 'token' } };
  }

  private openIdentity(c: Credentials): AuthResult {
    const id = c.certificateId ?? deriveDeviceId(c.claimedId || c.fallbackId);
    if (c.certificateId !== null && c.claimedId && c.claimedId !== c.certificateId) {
      return {
        ok: false,
        reason: 'tls',
        deviceId: id,
        detail: `the username "${c.claimedId.slice(0, 128)}" is not the certificate's CN "${id}"`,
      };
    }
    const fromTopic = c.certificateId === null && !c.claimedId && c.fallbackAssigned === true;
    return { ok: true, identity: fromTopic ? { deviceId: id, by: 'open', fromTopic } : { deviceId: id, by: 'open' } };
  }

  /** The device's registry entry now; null in open mode or once it was removed. */
  entry(deviceId: string): DeviceEntry | null {
    return this.registry?.get(deviceId) ?? null;
  }

  /** Still admitted: in token mode, a device removed from the registry is not. */
  admitted(identity: Identity): boolean {
    return this.mode === 'open' || this.entry(identity.deviceId) !== null;
  }

  mayPublish(identity: Identity, topic: string): boolean {
    if (this.mode === 'open') return true;
    return this.entry(identity.deviceId)?.publish.allowsTopic(topic) ?? false;
  }

  /** A message on `topic` may reach the device: some subscribe filter of its own matches it. */
  mayReceive(identity: Identity, topic: string): boolean {
    if (this.mode === 'open') return true;
    return this.entry(identity.deviceId)?.subscribe.allowsTopic(topic) ?? false;
  }

  maySubscribe(identity: Identity, filter: string): boolean {
    if (this.mode === 'open') return true;
    return this.entry(identity.deviceId)?.subscribe.allowsFilter(filter) ?? false;
  }

  /**
   * What rules read as `device`: the registry's id and attributes, null for a device the registry
   * does not know (every device in open mode). Made once per registry entry, not per message.
   */
  deviceValue(deviceId: string): DeviceValue | null {
    const entry = this.entry(deviceId);
    if (!entry) return null;
    let value = this.values.get(entry);
    if (!value) {
      value = deviceValueOf(entry);
      this.values.set(entry, value);
    }
    return value;
  }
}
