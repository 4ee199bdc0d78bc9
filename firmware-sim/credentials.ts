/**
 * Device credentials for a proxy in token mode: tokens (`<deviceId>.<secret>`, the secret being
 * 32 random bytes in base64url) and the files that hold them; and the device a client certificate
 * names (its CN). Pure functions, no I/O.
 */
import { X509Certificate } from 'node:crypto';

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

/**
 * The device a client certificate (PEM) names: its subject CN, as the proxy's TLS port takes it
 * (docs/devices.md, Client certificates). A problem instead when it is no certificate, has no CN or
 * more than one, or a CN that is not a device id (the proxy refuses those).
 */
export function certificateDeviceId(pem: Buffer | string): { id: string } | { problem: string } {
  let subject: string;
  try {
    subject = new X509Certificate(pem).subject;
  } catch (err) {
    return { problem: `not a PEM certificate (${err instanceof Error ? err.message : String(err)})` };
  }
  const cns = subject
    .split('\n')
    .filter((part) => part.startsWith('CN='))
    .map((part) => part.slice(3).replace(/\\(.)/g, '$1'));
  if (cns.length !== 1) {
    return {
      problem: `its subject ${JSON.stringify(subject.replace(/\n/g, ', '))} has ${cns.length === 0 ? 'no CN' : `${cns.length} CNs`}: the proxy takes the one CN of a client certificate as the device id`,
    };
  }
  const id = cns[0]!;
  if (!DEVICE_ID.test(id) || id === 'edge') {
    return {
      problem: `its CN ${JSON.stringify(id)} is not a device id (1 to 128 of A-Z a-z 0-9 _ . : -, not "edge"): the proxy refuses it`,
    };
  }
  return { id };
}
