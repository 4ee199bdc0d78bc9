import { randomBytes, timingSafeEqual, createHash } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Config } from '../config/types.js';
import { ADMIN_TOKEN_FILE } from './local-files.js';

/**
 * The admin token: `admin.token`, else the content of `admin.tokenFile`, else one made at the
 * first start and kept in <dataDir>/admin-token, readable by the proxy's own user only, where
 * the CLI on the same machine finds it. `created` tells the caller to log where it is.
 */
export function resolveAdminToken(cfg: Config): { token: string; file: string | null; created: boolean } {
  if (cfg.admin.token) return { token: cfg.admin.token, file: null, created: false };
  const file = cfg.admin.tokenFile ?? join(cfg.dataDir, ADMIN_TOKEN_FILE);
  try {
    const token = readFileSync(file, 'utf8').trim();
    if (token) return { token, file, created: false };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || cfg.admin.tokenFile) throw err;
  }
  const token = randomBytes(32).toString('base64url');
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, token + '\n', { mode: 0o600, flag: 'wx' });
  chmodSync(file, 0o600);
  return { token, file, created: true };
}

/** Constant-time comparison of a presented bearer token with the admin token. */
export function tokenMatches(presented: string | undefined, token: string): boolean {
  if (!presented) return false;
  const a = createHash('sha256').update(presented).digest();
  const b = createHash('sha256').update(token).digest();
  return timingSafeEqual(a, b);
}
