// The CLI's side of the admin API: finding the proxy to talk to and its token, and requests.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Config } from '../config/types.js';
import { ADMIN_TOKEN_FILE, readLocalAdminPort, readLocalToken, RUNTIME_PORTS_FILE } from '../admin/local-files.js';

/** The admin endpoint the CLI talks to, and the token it presents. */
export interface AdminTarget {
  url: string;
  token: string | null;
  /**
   * Where the port and the token came from, said when the proxy cannot be reached: with the wrong
   * --config or dataDir, the CLI looks for a proxy that is not there, and only the paths show it.
   */
  from?: string;
}

/**
 * `--admin URL` and `--token T` when given, else the proxy the configuration describes: its
 * running admin port from <dataDir>/ports.json and the token it made in <dataDir>/admin-token.
 */
export function adminTarget(given: { admin?: string; token?: string }, config: () => Config): AdminTarget {
  if (given.admin && given.token) return { url: given.admin, token: given.token, from: '--admin and --token given' };
  const cfg = config();
  const h = cfg.admin.host;
  const host = h === '0.0.0.0' ? '127.0.0.1' : h === '::' ? '[::1]' : h.includes(':') ? `[${h}]` : h;
  const portsFile = join(cfg.dataDir, RUNTIME_PORTS_FILE);
  const running = given.admin ? null : readLocalAdminPort(cfg.dataDir);
  const url = given.admin ?? `http://${host}:${running ?? cfg.admin.port}`;
  const port = given.admin
    ? 'URL from --admin'
    : running !== null
      ? `admin port from ${portsFile}`
      : `admin port from admin.port, as there is none in ${portsFile}`;
  const token = given.token ? { token: given.token, from: 'token from --token' } : tokenOf(cfg);
  return { url, token: token.token, from: `${port}; ${token.from}` };
}

/** The token the configuration leads to, and where it was found (or looked for). */
function tokenOf(cfg: Config): { token: string | null; from: string } {
  if (cfg.admin.token) return { token: cfg.admin.token, from: 'token from admin.token' };
  const file = cfg.admin.tokenFile ?? join(cfg.dataDir, ADMIN_TOKEN_FILE);
  const token = cfg.admin.tokenFile ? readTokenFile(file) : readLocalToken(cfg.dataDir);
  return { token, from: token === null ? `no token: cannot read ${file}` : `token from ${file}` };
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
    from?: string,
  ) {
    const why = (cause.cause as Error | undefined)?.message ?? cause.message;
    super(`cannot reach the proxy at ${url}: ${why}${from ? ` (${from})` : ''}. Is it running? (systemctl status edge-proxy)`);
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
    throw new AdminUnreachable(target.url, err as Error, target.from);
  }
  const text = await res.text();
  try {
    return { status: res.status, body: JSON.parse(text) as Record<string, unknown> };
  } catch {
    return { status: res.status, body: { error: text.slice(0, 500) } };
  }
}
