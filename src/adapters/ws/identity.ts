// Who a /ws connection says it is, read from the upgrade request alone (browsers cannot set headers
// on a WebSocket, so the token may also come in the query). The gate decides what it proves.
import type { IncomingMessage } from 'node:http';
import type { Credentials } from '../../auth/service.js';
import { upgradeToken } from '../http/upgrade-token.js';

/** `host:port` of the peer, for log lines and the open-mode id. */
export function remoteOf(req: IncomingMessage): { address: string; port: number | null } {
  return { address: req.socket.remoteAddress ?? 'unknown', port: req.socket.remotePort ?? null };
}

/**
 * The credentials of an upgrade: the token (token mode), the `d` parameter as the claimed id, and
 * `ws-<ip>-<port>` for open mode when `d` is absent.
 */
export function credentialsOf(req: IncomingMessage, url: URL): Credentials {
  const { address, port } = remoteOf(req);
  const claimed = url.searchParams.get('d');
  return {
    claimedId: claimed === null || claimed === '' ? null : claimed,
    token: upgradeToken(req, url),
    certificateId: null,
    fallbackId: `ws-${address}-${port ?? 0}`,
  };
}
