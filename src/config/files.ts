// The files a configuration names, checked as `run` will use them (LoadOptions.checkFiles): `check-config`
// and `run` both load the configuration through load.ts with this check, so they refuse the same files
// with the same lines, and `run` stops before anything starts.
//
// - the TLS files of the uplink (when uplink.url is set), of the MQTT TLS endpoint and of the https
//   endpoint (when their cert and key are set): readable, PEM, the key the certificate's, a CA that
//   holds certificates (core/tls-material.ts, the check node:tls would make at start or at connect);
// - admin.tokenFile (a configured one must exist and hold the token: only <dataDir>/admin-token is made
//   at start);
// - devicesFile in token mode, parsed by the registry's own parser (auth/registry.ts), each of its
//   problems at its own file:line:col, as the running registry reports them. A missing registry is an
//   empty one: a warning, not a problem.
//
// The check runs whatever else is wrong with the configuration: a key whose value is known (no problem
// was found at it or above it) has its file checked, so every problem is listed at once.

import { closeSync, fstatSync, openSync, readFileSync } from 'node:fs';
import { parseRegistry } from '../auth/registry.js';
import type { ConfigProblem } from '../core/errors.js';
import { tlsMaterialProblems, type TlsFile, type TlsMaterial } from '../core/tls-material.js';

type KeyPath = readonly string[];

/** The configuration as far as it is known. */
export interface ConfigView {
  /** what the configuration holds at a key, whatever it is (null or undefined when not set) */
  raw(path: KeyPath): unknown;
  /**
   * a path key's value, resolved as Config holds it (absolute), or null when not set; undefined when a
   * problem was found at the key or above it, so its value is not known
   */
  path(path: KeyPath): string | null | undefined;
}

/** Where the check puts what it finds. */
export interface FileFindings {
  /** a problem with the file a key names, reported at the key's value */
  problem(code: 'E_CONFIG_FILE' | 'E_TLS', path: KeyPath, message: string): void;
  /** a problem inside a file the configuration names, at that file's own line and column */
  inFile(problem: ConfigProblem): void;
  /** worth saying, stops nothing */
  warning(path: KeyPath, message: string): void;
}

/** Why a file cannot be read, in the words every E_CONFIG_FILE problem uses. */
export function whyUnreadable(err: unknown): string {
  switch ((err as NodeJS.ErrnoException).code) {
    case 'ENOENT':
      return 'no such file';
    case 'EACCES':
      return 'permission denied';
    case 'EISDIR':
      return 'it is a directory';
    default:
      return (err as Error).message;
  }
}

/** The file's contents, or why it cannot be read. */
function readNamed(file: string): { data: Buffer } | { why: string; missing: boolean } {
  try {
    const fd = openSync(file, 'r');
    try {
      if (fstatSync(fd).isDirectory()) return { why: 'it is a directory', missing: false };
      return { data: readFileSync(fd) };
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    return { why: whyUnreadable(err), missing: (err as NodeJS.ErrnoException).code === 'ENOENT' };
  }
}

export function checkNamedFiles(view: ConfigView, out: FileFindings): void {
  /** The file a key names, read; null when the key is unset or unknown, or the file unreadable (a problem). */
  const read = (path: KeyPath): TlsFile | null => {
    const file = view.path(path);
    if (typeof file !== 'string') return null;
    const got = readNamed(file);
    if ('why' in got) {
      out.problem('E_CONFIG_FILE', path, `cannot read ${file}: ${got.why}`);
      return null;
    }
    return { file, data: got.data };
  };
  const tls = (section: string, parts: ReadonlyArray<'cert' | 'key' | 'ca'>): void => {
    const material: TlsMaterial = {};
    for (const part of parts) material[part] = read([section, 'tls', part]);
    for (const p of tlsMaterialProblems(material)) out.problem('E_TLS', [section, 'tls', p.part], p.message);
  };
  const isSet = (path: KeyPath) => typeof view.raw(path) === 'string';
  // An endpoint runs only with both its certificate and its key: with one of them unknown, so is that.
  const endpointRuns = (section: string) =>
    typeof view.path([section, 'tls', 'cert']) === 'string' && typeof view.path([section, 'tls', 'key']) === 'string';

  // The uplink reads its files when it has somewhere to connect (a url, even one written wrong).
  if (isSet(['uplink', 'url'])) tls('uplink', ['ca', 'cert', 'key']);
  if (endpointRuns('mqtt')) tls('mqtt', ['cert', 'key', 'ca']);
  if (endpointRuns('http')) tls('http', ['cert', 'key']);

  if (!isSet(['admin', 'token'])) {
    const token = read(['admin', 'tokenFile']);
    if (token && token.data.toString('utf8').trim() === '')
      out.problem('E_CONFIG_FILE', ['admin', 'tokenFile'], `${token.file} is empty: write the admin token in it`);
  }

  if (view.raw(['auth', 'mode']) === 'token') checkRegistry(view, out);
}

/** devicesFile, judged by the parser the running registry uses, its problems at their own lines. */
function checkRegistry(view: ConfigView, out: FileFindings): void {
  const file = view.path(['devicesFile']);
  if (typeof file !== 'string') return;
  const got = readNamed(file);
  if ('why' in got && got.missing) {
    out.warning(
      ['devicesFile'],
      `${file} does not exist: the registry is empty, so token mode admits no device until \`edge-proxy devices add\` writes it`,
    );
    return;
  }
  if ('why' in got) return out.problem('E_CONFIG_FILE', ['devicesFile'], `cannot read ${file}: ${got.why}`);
  // The source is the path the running registry names the file by, so the lines are the ones it logs.
  for (const p of parseRegistry(got.data.toString('utf8'), file).problems) out.inFile(p);
}
