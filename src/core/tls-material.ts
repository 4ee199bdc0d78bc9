// Whether TLS files can be used as node:tls will use them: a PEM certificate, its PEM private key
// (without a passphrase), the two matching, and a CA that holds certificates. Pure (contents in,
// problems out): the configuration check (config/files.ts), which `check-config` and `run` both go
// through, uses it for mqtt.tls, http.tls and uplink.tls, and an endpoint that reads renewed files
// can use it to say which file is at fault.

import { X509Certificate } from 'node:crypto';
import { createSecureContext, type SecureContextOptions } from 'node:tls';

/** One file: its path (for messages only) and what it holds. */
export interface TlsFile {
  file: string;
  data: Buffer;
}

export interface TlsMaterial {
  cert?: TlsFile | null;
  key?: TlsFile | null;
  ca?: TlsFile | null;
}

export interface TlsMaterialProblem {
  /** the file at fault */
  part: 'cert' | 'key' | 'ca';
  /** what is wrong with it, naming it: `/etc/x.pem cannot be used: ...` */
  message: string;
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/** Why node:tls refuses these options, or null when it takes them. */
function refusal(options: SecureContextOptions): string | null {
  try {
    createSecureContext(options);
    return null;
  } catch (err) {
    return (err as Error).message;
  }
}

/** Why a CA file would vouch for nothing (node:tls takes one without a certificate silently), or null. */
function caRefusal(data: Buffer): string | null {
  const blocks = data.toString('latin1').match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) return 'it holds no PEM certificate (-----BEGIN CERTIFICATE-----), so every peer would be refused';
  for (const [i, block] of blocks.entries()) {
    try {
      new X509Certificate(block);
    } catch (err) {
      return `its certificate #${i + 1} does not parse (${(err as Error).message})`;
    }
  }
  return null;
}

/**
 * Every problem of the files given, each blamed on its file: a certificate or a key that is not PEM,
 * a key that is not the certificate's, a CA without a certificate. Empty when node:tls can use them.
 */
export function tlsMaterialProblems(m: TlsMaterial): TlsMaterialProblem[] {
  const problems: TlsMaterialProblem[] = [];
  const unusable = (part: TlsMaterialProblem['part'], f: TlsFile, why: string) =>
    problems.push({ part, message: `${f.file} cannot be used: ${why}` });
  const { cert, key, ca } = m;
  const certWhy = cert ? refusal({ cert: cert.data }) : null;
  if (cert && certWhy !== null) unusable('cert', cert, `it is not a PEM certificate (${certWhy})`);
  const keyWhy = key ? refusal({ key: key.data }) : null;
  if (key && keyWhy !== null) unusable('key', key, `it is not a PEM private key without a passphrase (${keyWhy})`);
  if (cert && key && certWhy === null && keyWhy === null) {
    const pairWhy = refusal({ cert: cert.data, key: key.data });
    if (pairWhy !== null) unusable('key', key, `it is not the private key of the certificate ${cert.file} (${pairWhy})`);
  }
  const caWhy = ca ? caRefusal(ca.data) : null;
  if (ca && caWhy !== null) unusable('ca', ca, caWhy);
  return problems;
}
