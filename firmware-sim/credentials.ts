/**
 * Device credentials for a proxy in token mode: tokens (`<deviceId>.<secret>`, the secret being
 * 32 random bytes in base64url) and the files that hold them. Pure functions, no I/O.
 */

/** base64url without padding: what the secret of a token is made of. */
const SECRET = /^[A-Za-z0-9_-]+$/;
/** A device id (message-model.md): it may hold dots, so a token is split at its last one. */
const DEVICE_ID = /^[A-Za-z0-9_.:-]{1,128}$/;

/**
 * The device a token names: everything before its last `.` (the secret holds no `.`).
 * Undefined when the text is not shaped like a token.
 */
export function tokenDeviceId(token: string): string | undefined {
  const dot = token.lastIndexOf('.');
  if (dot <= 0) return undefined;
  const id = token.slice(0, dot);
  const secret = token.slice(dot + 1);
  if (!SECRET.test(secret) || !DEVICE_ID.test(id)) return undefined;
  return id;
}

export interface TokenFile {
  /** device id -> token */
  tokens: Map<string, string>;
  /** one line per problem: `line N: ...` */
  problems: string[];
}

/**
 * A token file: one token per line; blank lines and lines starting with `#` are ignored.
 * A line that is not a token, or a second token for the same device, is a problem.
 */
export function parseTokenFile(text: string): TokenFile {
  const tokens = new Map<string, string>();
  const lineOf = new Map<string, number>();
  const problems: string[] = [];
  text.split(/\r?\n/).forEach((raw, index) => {
    const line = raw.trim();
    const n = index + 1;
    if (line === '' || line.startsWith('#')) return;
    const id = tokenDeviceId(line);
    if (id === undefined) {
      problems.push(`line ${n}: not a token (expected <deviceId>.<secret>)`);
      return;
    }
    const first = lineOf.get(id);
    if (first !== undefined) {
      if (tokens.get(id) !== line) problems.push(`line ${n}: a second token for device ${id} (the first is on line ${first})`);
      return;
    }
    tokens.set(id, line);
    lineOf.set(id, n);
  });
  return { tokens, problems };
}
