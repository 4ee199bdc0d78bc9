// What a running proxy leaves in its data directory for the CLI on the same machine
// (docs/operations.md, Command line): its real ports and the admin token it made.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/** `{"mqtt": PORT, "admin": PORT}`, the ports the proxy really listens on (port 0 in the config). */
export const RUNTIME_PORTS_FILE = 'ports.json';

/** The admin token made at the first start when neither admin.token nor admin.tokenFile is set. */
export const ADMIN_TOKEN_FILE = 'admin-token';

/** The admin port of the proxy running on this data directory, which may differ from the config's. */
export function readLocalAdminPort(dataDir: string): number | null {
  try {
    const ports = JSON.parse(readFileSync(join(dataDir, RUNTIME_PORTS_FILE), 'utf8')) as { admin?: number };
    return typeof ports.admin === 'number' ? ports.admin : null;
  } catch {
    return null;
  }
}

/** The admin token the proxy made in this data directory, if it did and this user can read it. */
export function readLocalToken(dataDir: string): string | null {
  try {
    return readFileSync(join(dataDir, ADMIN_TOKEN_FILE), 'utf8').trim() || null;
  } catch {
    return null;
  }
}
