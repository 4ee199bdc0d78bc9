// A device registry file (devicesFile) for tests: entries in, tokens out. Only the SHA-256 of each
// token is written, as `edge-proxy devices add` does.
import { renameSync, writeFileSync } from 'node:fs';
import { stringify } from 'yaml';
import { hashToken, makeToken } from '../../src/auth/token.js';

export interface DeviceSpec {
  id: string;
  publish?: string[];
  subscribe?: string[];
  attrs?: Record<string, string | number | boolean>;
  /** keep this token (an unchanged device when the file is rewritten); a new one when absent */
  token?: string;
}

/**
 * Writes the registry and returns each device's token by id: by default a new file renamed over
 * the old one, as `edge-proxy devices` does; `in-place` rewrites the file itself, as some editors do.
 */
export function writeRegistry(file: string, devices: DeviceSpec[], how: 'rename' | 'in-place' = 'rename'): Record<string, string> {
  const tokens: Record<string, string> = {};
  const entries = devices.map(({ id, publish, subscribe, attrs, token }) => {
    const t = token ?? makeToken(id);
    tokens[id] = t;
    return {
      id,
      tokenSha256: hashToken(t),
      ...(publish ? { publish } : {}),
      ...(subscribe ? { subscribe } : {}),
      ...(attrs ? { attrs } : {}),
    };
  });
  if (how === 'in-place') writeFileSync(file, stringify(entries));
  else writeRaw(file, stringify(entries));
  return tokens;
}

/** Writes any text as the registry, by rename: for files with problems. */
export function writeRaw(file: string, text: string): void {
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, text);
  renameSync(tmp, file);
}
