// The CLI's side of the admin API: finding the proxy to talk to and its token, and requests.

import { readFileSync } from 'node:fs';
import type { Config } from '../config/types.js';
import { readLocalAdminPort, readLocalToken } from '../admin/local-files.js';

/** The admin endpoint the CLI talks to, and the token it presents. */
export interface AdminTarget {
  url: string;
  token: string | null;
}

/**
 * `--admin URL` and `--token T` when given, else the proxy the configuration describes: its
 * running admin port from <dataDir>/ports.json and the token it made in <dataDir>/admin-token.
 */
export function adminTarget(given: { admin?: string; token?: string }, config: () => Config): AdminTarget {
  if (given.admin && given.token) return { url: given.admin, token: given.token };
  const cfg = config();
  const h = cfg.admin.host;
  const host = h === '0.0.0.0' ? '127.0.0.1' : h === '::' ? '[::1]' : h.includes(':') ? `[${h}]` : h;
  return {
    url: given.admin ?? `http://${host}:${readLocalAdminPort(cfg.dataDir) ?? cfg.admin.port}`,
    token: given.token ?? cfg.admin.token ?? (cfg.admin.tokenFile ? readTokenFile(cfg.admin.tokenFile) : readLocalToken(cfg.dataDir)),
  };
}

function readTokenFile(file: string): string | null {
  try {
    return readFileSync(file, 'utf8').trim() || null;
  } catch {
    return null;
  }
}

/** The proxy did not answer at all (not running, wrong URL): the CLI exits 2. */
export class AdminUnreachable extends Error {
  constructor(
    readonly url: string,
    cause: Error,
  ) {
    super(
      `cannot reach the proxy at ${url}: ${(cause.cause as Error | undefined)?.message ?? cause.message}. Is it running? (systemctl status edge-proxy)`,
    );
    this.name = 'AdminUnreachable';
  }
}

export interface AdminAnswer {
  status: number;
  body: Record<string, unknown>;
}

/** One request to the admin API; the answer's JSON body whatever its status. */
export async function adminRequest(
  target: AdminTarget,
  method: string,
  path: string,
  body?: { type: string; data: string },
): Promise<AdminAnswer> {
  const headers: Record<string, string> = {};
  if (target.token) headers.authorization = `Bearer ${target.token}`;
  if (body) headers['content-type'] = body.type;
  let res: Response;
  try {
    res = await fetch(new URL(path, target.url), { method, headers, ...(body ? { body: body.data } : {}) });
  } catch (err) {
    throw new AdminUnreachable(target.url, err as Error);
  }
  const text = await res.text();
  try {
    return { status: res.status, body: JSON.parse(text) as Record<string, unknown> };
  } catch {
    return { status: res.status, body: { error: text.slice(0, 500) } };
  }
}
