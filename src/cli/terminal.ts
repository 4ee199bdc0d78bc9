// What every verb shares: writing to the user's terminal, exiting with a status, and the
// configuration and admin endpoint a verb is pointed at.

import { readFileSync } from 'node:fs';
import { ConfigError, formatConfigProblem } from '../core/errors.js';
import { loadConfig } from '../config/load.js';
import type { Config, LoadedConfig } from '../config/types.js';
import { adminTarget, NoAdminTarget, type AdminTarget } from './admin-client.js';

/** Prints `message` on stderr and exits: 2 (a usage error, an unreachable proxy) unless told otherwise. */
export function fail(message: string, code = 2): never {
  process.stderr.write(message.endsWith('\n') ? message : message + '\n');
  process.exit(code);
}

/** What a user-named file that cannot be read is said to be, by kind: rules files, or a messages file. */
export type UserFileKind = 'rules' | 'messages';

/**
 * Why a file the user named cannot be read, in one line ending in (E_USAGE): the one wording of
 * `rules check`, `rules test`, `rules push` and `rules add`. `what` names it: "the rules file".
 */
export function unreadableFile(path: string, what: string, kind: UserFileKind, e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code;
  const pattern = /[*?[]/.test(path);
  const why =
    code === 'ENOENT'
      ? `no such file${pattern ? ' (a shell pattern that matched nothing is passed on as it is)' : ''}`
      : code === 'EISDIR'
        ? kind === 'rules'
          ? `it is a directory: name the files in it, such as ${path.replace(/\/$/, '')}/*.rules`
          : 'it is a directory: --input expects a JSONL messages file, one JSON object a line (or - for standard input)'
        : code === 'EACCES' || code === 'EPERM'
          ? 'permission denied'
          : (e as Error).message;
  return `cannot read ${what} ${path}: ${why} (E_USAGE)`;
}

/** A file the user named, as text (`-` is standard input), or why it cannot be read (unreadableFile). */
export function tryReadUserFile(path: string, what: string, kind: UserFileKind): { text: string } | { error: string } {
  try {
    return { text: readFileSync(path === '-' ? 0 : path, 'utf8') };
  } catch (e) {
    return { error: unreadableFile(path, what, kind, e) };
  }
}

/**
 * A file the user named, as text; `-` is standard input. A file that cannot be read ends the command
 * with one line saying why (exit 2), never a stack trace.
 */
export function readUserFile(path: string, what: string, kind: UserFileKind): string {
  const read = tryReadUserFile(path, what, kind);
  if ('error' in read) fail(read.error);
  return read.text;
}

/** `1 rule`, `2 rules`. */
export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

export function printConfigError(err: ConfigError): void {
  process.stderr.write(`configuration has ${plural(err.problems.length, 'problem')}:\n`);
  for (const p of err.problems) process.stderr.write(formatConfigProblem(p) + '\n');
}

/** The configuration of `--config FILE` (else ./edge-proxy.yaml, else the defaults) and its file; exit 1 with its problems. */
export function loadedOrDefaults(file: string | undefined): LoadedConfig {
  try {
    return loadConfig({ file, env: process.env, cwd: process.cwd() });
  } catch (err) {
    if (err instanceof ConfigError) {
      printConfigError(err);
      process.exit(1);
    }
    throw err;
  }
}

/** The configuration of `--config FILE` (else ./edge-proxy.yaml, else the defaults); exit 1 with its problems. */
export function configOrDefaults(file: string | undefined): Config {
  return loadedOrDefaults(file).config;
}

/**
 * The proxy an admin command talks to: --admin and --token, else the one running on the
 * configuration's data directory and its token. Exit 2 when there is none (a --admin that is no
 * http(s) URL, no proxy running on the data directory), saying why.
 */
export function targetOf(values: { admin?: string; token?: string; config?: string }): AdminTarget {
  try {
    return adminTarget(values, () => loadedOrDefaults(values.config));
  } catch (err) {
    if (err instanceof NoAdminTarget) fail(err.message);
    throw err;
  }
}
