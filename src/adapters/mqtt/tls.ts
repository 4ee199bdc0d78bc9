// The TLS endpoint's certificate, key and CA files: read at start, and read again when a file is
// renewed, so that a certificate rotated by the site's tooling is used without a restart.
import { readFileSync, unwatchFile, watchFile } from 'node:fs';
import { createSecureContext, type SecureContextOptions } from 'node:tls';
import { EdgeError } from '../../core/errors.js';

export interface TlsFiles {
  cert: string;
  key: string;
  /** with a CA, clients must present a certificate it signed */
  ca: string | null;
}

/** The files' contents as node:tls takes them; E_TLS naming the file that cannot be read. */
export function readTlsFiles(files: TlsFiles): SecureContextOptions {
  const read = (key: 'cert' | 'key' | 'ca', path: string): Buffer => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw new EdgeError('E_TLS', `cannot read mqtt.tls.${key} ${path}: ${(err as Error).message}`, { cause: err });
    }
  };
  const options = { cert: read('cert', files.cert), key: read('key', files.key), ...(files.ca ? { ca: read('ca', files.ca) } : {}) };
  try {
    createSecureContext(options); // a file that is not PEM, or a key that does not match its certificate
  } catch (err) {
    throw new EdgeError(
      'E_TLS',
      `mqtt.tls.cert ${files.cert} and mqtt.tls.key ${files.key}${files.ca ? ` (ca ${files.ca})` : ''} cannot be used: ${(err as Error).message}`,
      { cause: err },
    );
  }
  return options;
}

// Polled rather than watched: renewal tools replace files by rename, often through symlinks
// (certbot's live/ directory), which a stat poll follows and an inotify watch on the old inode does not.
const POLL_MS = 2_000;

/** Calls `changed` when any of the files is replaced or rewritten; returns the function that stops watching. */
export function watchTlsFiles(files: TlsFiles, changed: () => void): () => void {
  const paths = [files.cert, files.key, ...(files.ca ? [files.ca] : [])];
  let pending: NodeJS.Timeout | null = null;
  const listener = (now: { mtimeMs: number; ino: number }, before: { mtimeMs: number; ino: number }): void => {
    if (now.mtimeMs === before.mtimeMs && now.ino === before.ino) return;
    // A renewal writes the certificate and the key one after the other: read them once both are there.
    if (pending) clearTimeout(pending);
    pending = setTimeout(() => {
      pending = null;
      changed();
    }, 200);
    pending.unref();
  };
  for (const p of paths) watchFile(p, { interval: POLL_MS, persistent: false }, listener);
  return () => {
    if (pending) clearTimeout(pending);
    for (const p of paths) unwatchFile(p, listener);
  };
}
