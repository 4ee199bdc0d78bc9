// The CLI's side of the admin API: finding the proxy to talk to and its token, and requests.

import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Config } from '../config/types.js';
import { ADMIN_TOKEN_FILE, RUNTIME_PORTS_FILE } from '../admin/local-files.js';
import { DATA_DIR_LOCK_FILE, lockHolder } from '../core/data-lock.js';

/** Where the token the CLI presents came from, said when the proxy refuses it (401). */
export type TokenSource =
  | { kind: 'option' }
  | { kind: 'setting'; config: string | null }
  | { kind: 'file'; file: string; setting: 'admin.tokenFile' | 'dataDir'; problem: string | null };

/** The admin endpoint the CLI talks to, and the token it presents. */
export interface AdminTarget {
  url: string;
  token: string | null;
  /**
   * Where the port and the token came from, said when the proxy cannot be reached: with the wrong
   * --config or dataDir, the CLI looks for a proxy that is not there, and only the paths show it.
   */
  from?: string;
  tokenSource?: TokenSource;
}

/** The CLI has no proxy to talk to (a bad --admin, no proxy on the data directory): it exits 2 with the message. */
export class NoAdminTarget extends Error {
  override name = 'NoAdminTarget';
}

/** `--admin URL` as fetch needs it: http:// or https://, else a usage error. */
function adminUrl(given: string): string {
  let url: URL | null = null;
  try {
    url = new URL(given);
  } catch {
    // not a URL at all
  }
  if (url && (url.protocol === 'http:' || url.protocol === 'https:')) return given;
  // `localhost:9180` parses, as the scheme `localhost:`: what was meant is http://localhost:9180.
  const meant = /^[a-z][a-z0-9+.-]*:\/\//i.test(given) ? 'http://127.0.0.1:9180' : `http://${given}`;
  throw new NoAdminTarget(
    `--admin ${given} is not a URL the CLI can use: it needs http:// or https://, such as --admin ${meant} (E_USAGE)`,
  );
}

/** The owner recorded in <dataDir>/lock: `none` without the file, `unknown` when it cannot be read or judged. */
/**
 * The admin port of the proxy running on this data directory, from the ports file it writes once it
 * listens; or why there is none to talk to. Never the configuration's admin.port: on a data directory
 * without a running proxy, that port may well be another proxy's, which would answer for it.
 */
function localAdminPort(dataDir: string): { port: number; portsFile: string } | { problem: string } {
  const dir = resolve(dataDir);
  const portsFile = join(dir, RUNTIME_PORTS_FILE);
  const lockFile = join(dir, DATA_DIR_LOCK_FILE);
  let text: string;
  try {
    text = readFileSync(portsFile, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      const lock = lockHolder(lockFile);
      if (lock.state === 'runs')
        return {
          problem: `the proxy on data directory ${dir} (PID ${lock.pid}, holding ${lockFile}) has not written ${portsFile}: it is still starting, or its start is failing (see its log); wait and try again, or give --admin URL`,
        };
      return { problem: `no proxy is running on data directory ${dir} (no ${portsFile}): start it, or give --admin URL` };
    }
    const why = code === 'EACCES' || code === 'EPERM' ? 'permission denied' : (e as Error).message;
    return {
      problem: `cannot read ${portsFile}, where the proxy on data directory ${dir} writes its admin port: ${why}. Run this as a user who can read it (sudo, or a member of the proxy's group), or give --admin URL`,
    };
  }
  let port: unknown;
  try {
    port = (JSON.parse(text) as { admin?: unknown }).admin;
  } catch {
    port = undefined;
  }
  if (typeof port !== 'number' || !Number.isInteger(port) || port <= 0 || port > 65535)
    return { problem: `${portsFile} holds no admin port (it should be {"mqtt": PORT, "admin": PORT}): give --admin URL` };
  const lock = lockHolder(lockFile);
  if (lock.state === 'none')
    return {
      problem: `no proxy is running on data directory ${dir}: ${portsFile} was left by one that no longer runs (there is no ${lockFile}): start it, or give --admin URL`,
    };
  if (lock.state === 'gone')
    return {
      problem: `no proxy is running on data directory ${dir}: ${portsFile} was left by edge-proxy PID ${lock.pid}, which no longer runs (${lockFile}): start it, or give --admin URL`,
    };
  return { port, portsFile };
}

/**
 * `--admin URL` and `--token T` when given, else the proxy the configuration describes: its
 * running admin port from <dataDir>/ports.json and the token it made in <dataDir>/admin-token.
 * Throws NoAdminTarget for a --admin that is no http(s) URL, and when no proxy runs on the data
 * directory.
 */
export function adminTarget(given: { admin?: string; token?: string }, loaded: () => { config: Config; file: string | null }): AdminTarget {
  const admin = given.admin === undefined ? undefined : adminUrl(given.admin);
  if (admin && given.token) return { url: admin, token: given.token, from: '--admin and --token given', tokenSource: { kind: 'option' } };
  const { config: cfg, file } = loaded();
  let url: string;
  let port: string;
  if (admin) {
    url = admin;
    port = 'URL from --admin';
  } else {
    const local = localAdminPort(cfg.dataDir);
    if ('problem' in local) throw new NoAdminTarget(`${local.problem}${file ? ` (configuration ${file})` : ''}`);
    const h = cfg.admin.host;
    const host = h === '0.0.0.0' ? '127.0.0.1' : h === '::' ? '[::1]' : h.includes(':') ? `[${h}]` : h;
    url = `http://${host}:${local.port}`;
    port = `admin port from ${local.portsFile}`;
  }
  const token = given.token ? { token: given.token, source: { kind: 'option' } as const } : tokenOf(cfg, file);
  return { url, token: token.token, from: `${port}; ${describeToken(token.source)}`, tokenSource: token.source };
}

/** The token the configuration leads to, and where it was found (or looked for). */
function tokenOf(cfg: Config, config: string | null): { token: string | null; source: TokenSource } {
  if (cfg.admin.token) return { token: cfg.admin.token, source: { kind: 'setting', config } };
  const setting = cfg.admin.tokenFile ? 'admin.tokenFile' : 'dataDir';
  const file = resolve(cfg.admin.tokenFile ?? join(cfg.dataDir, ADMIN_TOKEN_FILE));
  try {
    const token = readFileSync(file, 'utf8').trim();
    return { token: token || null, source: { kind: 'file', file, setting, problem: token ? null : 'is empty' } };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const problem =
      code === 'ENOENT'
        ? 'does not exist'
        : code === 'EACCES' || code === 'EPERM'
          ? 'cannot be read: permission denied'
          : (e as Error).message;
    return { token: null, source: { kind: 'file', file, setting, problem } };
  }
}

function describeToken(s: TokenSource): string {
  if (s.kind === 'option') return 'token from --token';
  if (s.kind === 'setting') return 'token from admin.token';
  return s.problem === null ? `token from ${s.file}` : `no token: cannot read ${s.file}`;
}

/**
 * What to do about a 401: which token was sent, read from which file (or which file was missing or
 * unreadable), and how to pass the right one.
 */
export function unauthorizedHint(target: AdminTarget): string {
  const s = target.tokenSource;
  const pass = 'pass its admin token with --token T';
  if (!s || s.kind === 'option')
    return "the proxy refused the token given with --token: give that proxy's admin token (the content of admin-token in its data directory, unless its admin.token or admin.tokenFile sets one)";
  if (s.kind === 'setting')
    return `the proxy refused admin.token of ${s.config ?? 'the configuration'}: is that the configuration of the proxy at ${target.url}? Give its --config, or ${pass}`;
  if (s.problem === null)
    return `the proxy refused the token read from ${s.file}: is that the ${s.setting === 'dataDir' ? 'data directory' : 'admin.tokenFile'} of the proxy at ${target.url}? Give its --config, or ${pass}`;
  if (s.problem.includes('permission denied'))
    return `no token was sent: ${s.file} ${s.problem}. Run this as a user who can read it (sudo), or pass the token with --token "$(sudo cat ${s.file})"`;
  const made =
    s.setting === 'dataDir' && s.problem === 'does not exist'
      ? ' (a proxy makes it in its data directory at its first start, unless its admin.token or admin.tokenFile is set)'
      : '';
  return `no token was sent: ${s.file} ${s.problem}${made}. Give the --config of the proxy you mean, or ${pass}`;
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

/** A refused request in a few lines: the proxy's answer, and on a 401 which token was sent and how to pass another. */
export function describeRefusal(a: AdminAnswer, target: AdminTarget): string {
  const text = (v: unknown): string => (typeof v === 'string' ? v : JSON.stringify(v));
  const line = `${target.url} answered ${a.status}: ${text(a.body.error ?? a.body)}${a.body.code ? ` (${text(a.body.code)})` : ''}\n`;
  return a.status === 401 ? line + unauthorizedHint(target) + '\n' : line;
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
