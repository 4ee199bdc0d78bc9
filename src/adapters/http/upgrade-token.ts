// The token an upgrade request carries. Browsers cannot set headers on a WebSocket, so it may come
// in the query too; which of the two a client used changes nothing.
import type { IncomingMessage } from 'node:http';

const BEARER = /^Bearer[ \t]+(\S+)[ \t]*$/i;

/**
 * `Authorization: Bearer <token>`, else `?token=`; null when neither is there. Another scheme (a
 * client that sends Basic from a URL's user info) is not a token.
 */
export function upgradeToken(req: IncomingMessage, url: URL): string | null {
  const header = req.headers.authorization;
  const bearer = header === undefined ? undefined : BEARER.exec(header)?.[1];
  return bearer ?? (url.searchParams.get('token') || null);
}
