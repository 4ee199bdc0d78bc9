// GET /mqtt on the shared HTTP endpoint: MQTT over WebSocket (subprotocol `mqtt`), read by the same
// embedded broker as MQTT over TCP, so every MQTT feature and every check is the TCP one.
//
// A token at the upgrade is optional (a browser cannot set headers, and may not want a token in a
// URL): `Authorization: Bearer <token>` or `?token=<token>`. When one is given, the gate checks it
// before the handshake (a wrong one gets 401) and it is the connection's credential from then on:
// at CONNECT it stands in for the password, so the connection's device is the token's device, and
// a CONNECT whose username names another device is refused as that username with a wrong token
// would be on TCP (CONNACK 4, or 5 for a device not in the registry). A CONNECT password is not
// read on such a connection. Without a token, CONNECT decides exactly as on TCP.
import type { IncomingMessage } from 'node:http';
import { upgradeToken } from '../http/upgrade-token.js';
import type { WebSocket } from 'ws';
import type { IngressGate } from '../../pipeline/ingress.js';
import type { Admission, UpgradeRoute } from '../http/endpoint.js';
import { CLOSE, WebSocketStream } from './ws-stream.js';

export const MQTT_WS_PATH = '/mqtt';

/** What the upgrade hands to the connection. */
export interface MqttUpgrade {
  /** a registry token given at the upgrade and found right; null when none was given (or in open mode) */
  token: string | null;
  remote: string;
}

export interface MqttWebSocketOptions {
  gate: Pick<IngressGate, 'authenticate'>;
  /** the largest WebSocket message read (a message may hold several MQTT packets, or part of one) */
  maxMessageBytes: number;
  /** false before the broker runs and once the adapter stops: upgrades get 503 */
  accepting(): boolean;
  /** hand the connection to the broker */
  attach(stream: WebSocketStream, upgrade: MqttUpgrade): void;
}

export function mqttWebSocketRoute(opts: MqttWebSocketOptions): UpgradeRoute<MqttUpgrade> {
  return {
    path: MQTT_WS_PATH,
    subprotocols: ['mqtt'],
    // ws reads a message whole before it emits it: a larger one is refused from its frame header
    // (1009), before it is buffered, as the frame guard refuses an oversized packet on TCP.
    frames: { maxPayload: opts.maxMessageBytes },
    admit(req: IncomingMessage, url: URL): Admission<MqttUpgrade> {
      if (!opts.accepting()) return { ok: false, status: 503, reason: 'unavailable', message: 'the proxy is not taking connections now' };
      const remote = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
      const token = upgradeToken(req, url);
      if (token === null) return { ok: true, context: { token: null, remote } };
      // The gate decides, counts a failure under protocol mqtt, and logs it; nothing is checked here.
      const result = opts.gate.authenticate('mqtt', { claimedId: null, token, certificateId: null, fallbackId: remote }, remote);
      if (!result.ok) return { ok: false, status: 401, reason: 'auth', message: result.detail };
      // Open mode names a device at CONNECT (username, else client id), token or not.
      return { ok: true, context: { token: result.identity.by === 'token' ? token : null, remote } };
    },
    open(ws: WebSocket, _req: IncomingMessage, upgrade: MqttUpgrade): void {
      if (!opts.accepting()) {
        ws.close(CLOSE.goingAway, 'the proxy is stopping');
        return;
      }
      opts.attach(new WebSocketStream(ws), upgrade);
    },
  };
}
