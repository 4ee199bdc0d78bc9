// Certificates for the TLS tests, made with the openssl command line in the test's own directory:
// a CA, a server certificate for 127.0.0.1 and localhost, client certificates with chosen CNs.
// EC P-256 keys keep it fast; every certificate lasts two days.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface CertFiles {
  cert: string;
  key: string;
}

export interface Ca extends CertFiles {
  name: string;
  dir: string;
}

export interface LeafOptions {
  /** the subject CN (a `/` in it is escaped for openssl); required unless `subject` is given */
  cn?: string;
  /** the whole subject as `openssl -subj` takes it, in place of `/O=edge-proxy tests/CN=<cn>`: for a subject without a CN */
  subject?: string;
  /** file base name; the CN when absent (required when the CN holds a `/` or there is none) */
  name?: string;
  /** `server`: for 127.0.0.1 and localhost (serverAuth); `client` (clientAuth) when absent */
  kind?: 'server' | 'client';
  /** the serial number, as a hex string without 0x; random when absent */
  serial?: string;
}

function openssl(args: string[], cwd: string): string {
  try {
    return execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] }).toString();
  } catch (err) {
    const e = err as { stderr?: Buffer; message: string };
    throw new Error(`openssl ${args.join(' ')} failed: ${e.stderr?.toString() ?? e.message}`, { cause: err });
  }
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

/** A self-signed CA (basicConstraints CA:TRUE, keyCertSign) in `<dir>/<name>.crt` and `.key`. */
export function makeCa(dir: string, name: string): Ca {
  mkdirSync(dir, { recursive: true });
  const conf = join(dir, `${name}.cnf`);
  writeFileSync(
    conf,
    [
      '[req]',
      'distinguished_name = dn',
      'x509_extensions = v3_ca',
      '[dn]',
      '[v3_ca]',
      'basicConstraints = critical,CA:TRUE',
      'keyUsage = critical,keyCertSign,cRLSign',
      'subjectKeyIdentifier = hash',
      '',
    ].join('\n'),
  );
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  openssl(
    ['req', '-x509', '-config', conf, ...EC, '-keyout', key, '-out', cert, '-days', '2', '-subj', `/O=edge-proxy tests/CN=${name}`],
    dir,
  );
  return { name, dir, cert, key };
}

/** A certificate signed by `ca`, in `<ca.dir>/<name>.crt` and `.key`; returns the files and the serial. */
export function makeCert(ca: Ca, opts: LeafOptions): CertFiles & { serial: string } {
  // openssl -subj separates the parts of a subject with `/`: one inside the CN is escaped.
  const subject = opts.subject ?? (opts.cn === undefined ? null : `/O=edge-proxy tests/CN=${opts.cn.replace(/[\\/]/g, '\\$&')}`);
  if (subject === null) throw new Error('makeCert: a cn or a subject is needed');
  const name = opts.name ?? opts.cn;
  if (!name || name.includes('/')) throw new Error(`makeCert: a file name (opts.name) is needed for the certificate of ${subject}`);
  const serial = (opts.serial ?? `4${randomBytes(7).toString('hex')}`).toUpperCase(); // positive, 8 bytes
  const kind = opts.kind ?? 'client';
  const ext = join(ca.dir, `${name}.ext`);
  writeFileSync(
    ext,
    [
      'basicConstraints = CA:FALSE',
      'keyUsage = critical,digitalSignature,keyAgreement',
      `extendedKeyUsage = ${kind === 'server' ? 'serverAuth' : 'clientAuth'}`,
      ...(kind === 'server' ? ['subjectAltName = IP:127.0.0.1,DNS:localhost'] : []),
      '',
    ].join('\n'),
  );
  const csr = join(ca.dir, `${name}.csr`);
  const cert = join(ca.dir, `${name}.crt`);
  const key = join(ca.dir, `${name}.key`);
  openssl(['req', '-new', ...EC, '-keyout', key, '-out', csr, '-subj', subject], ca.dir);
  openssl(
    [
      'x509',
      '-req',
      '-in',
      csr,
      '-CA',
      ca.cert,
      '-CAkey',
      ca.key,
      '-set_serial',
      `0x${serial}`,
      '-days',
      '2',
      '-extfile',
      ext,
      '-out',
      cert,
    ],
    ca.dir,
  );
  return { cert, key, serial };
}

/** Replaces `target`'s certificate and key by `source`'s the way renewal tools do: a new file renamed over the old one. */
export function installCert(source: CertFiles, target: CertFiles): void {
  for (const [from, to] of [
    [source.cert, target.cert],
    [source.key, target.key],
  ] as const) {
    const tmp = `${to}.new`;
    writeFileSync(tmp, readFileSync(from));
    renameSync(tmp, to);
  }
}

/** The serial number of a certificate file, uppercase hex, as node:tls reports it. */
export function serialOf(certFile: string): string {
  const out = openssl(['x509', '-noout', '-serial', '-in', certFile], '.');
  return out
    .trim()
    .replace(/^serial=/, '')
    .toUpperCase();
}
