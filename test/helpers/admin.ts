import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ProxyProcess } from './proxy.js';

export interface ApiAnswer {
  status: number;
  body: Record<string, unknown>;
}

/** The token the proxy made at its first start, as the CLI on the same machine finds it. */
export function adminToken(proxy: ProxyProcess): string {
  return readFileSync(join(proxy.dir, 'data', 'admin-token'), 'utf8').trim();
}

/** One request to the proxy's admin API; `token: null` sends none. */
export async function api(
  proxy: ProxyProcess,
  method: string,
  path: string,
  opts: { token?: string | null; body?: string | Buffer; type?: string } = {},
): Promise<ApiAnswer> {
  const token = opts.token === undefined ? adminToken(proxy) : opts.token;
  const headers: Record<string, string> = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (opts.type) headers['content-type'] = opts.type;
  const res = await fetch(`http://127.0.0.1:${proxy.ports.admin}${path}`, {
    method,
    headers,
    ...(opts.body !== undefined ? { body: opts.body } : {}),
  });
  const text = await res.text();
  return { status: res.status, body: JSON.parse(text) as Record<string, unknown> };
}

/** PUT /api/v1/rules with {"files": ...}. */
export function pushFiles(proxy: ProxyProcess, files: Record<string, string>, token?: string | null): Promise<ApiAnswer> {
  return api(proxy, 'PUT', '/api/v1/rules', { token, type: 'application/json', body: JSON.stringify({ files }) });
}
