// What every verb shares: writing to the user's terminal, exiting with a status, and the
// configuration and admin endpoint a verb is pointed at.

import { readFileSync } from 'node:fs';
import { ConfigError, formatConfigProblem } from '../core/errors.js';
import { loadConfig } from '../config/load.js';
import type { Config } from '../config/types.js';
import { adminTarget, type AdminTarget } from './admin-client.js';

/** Prints `message` on stderr and exits: 2 (a usage error, an unreachable proxy) unless told otherwise. */
export function fail(message: string, code = 2): never {
  process.stderr.write(message.endsWith('\n') ? message : message + '\n');
  process.exit(code);
}

/**
 * A file the user named, as text; `-` is standard input. A file that cannot be read ends the command
 * with one line saying why (exit 2), never a stack trace.
 */
export function readUserFile(path: string, what: string): string {
  try {
    return readFileSync(path === '-' ? 0 : path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT'
        ? 'no such file (a shell pattern that matched nothing is passed on as it is)'
        : code === 'EISDIR'
          ? `it is a directory: name the files in it, such as ${path.replace(/\/$/, '')}/*.rules`
          : code === 'EACCES'
            ? 'permission denied'
            : (e as Error).message;
    fail(`cannot read ${what} ${path}: ${why} (E_USAGE)`);
  }
}

/** `1 rule`, `2 rules`. */
export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

export function printConfigError(err: ConfigError): void {
  process.stderr.write(`configuration has ${plural(err.problems.length, 'problem')}:\n`);
  for (const p of err.problems) process.stderr.write(formatConfigProblem(p) + '\n');
}

/** The configuration of `--config FILE` (else ./edge-proxy.yaml, else the defaults); exit 1 with its problems. */
export function configOrDefaults(file: string | undefined): Config {
  try {
    return loadConfig({ file, env: process.env, cwd: process.cwd() }).config;
  } catch (err) {
    if (err instanceof ConfigError) {
      printConfigError(err);
      process.exit(1);
    }
    throw err;
  }
}

/** The proxy an admin command talks to: --admin and --token, else the local one and its token. */
export function targetOf(values: { admin?: string; token?: string; config?: string }): AdminTarget {
  return adminTarget(values, () => configOrDefaults(values.config));
}
