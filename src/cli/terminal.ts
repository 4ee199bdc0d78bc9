// What every verb shares: writing to the user's terminal, exiting with a status, and the
// configuration and admin endpoint a verb is pointed at.

import { ConfigError, formatConfigProblem } from '../core/errors.js';
import { loadConfig } from '../config/load.js';
import type { Config } from '../config/types.js';
import { adminTarget, type AdminTarget } from './admin-client.js';

/** Prints `message` on stderr and exits: 2 (a usage error, an unreachable proxy) unless told otherwise. */
export function fail(message: string, code = 2): never {
  process.stderr.write(message.endsWith('\n') ? message : message + '\n');
  process.exit(code);
}

export function printConfigError(err: ConfigError): void {
  process.stderr.write(`configuration has ${err.problems.length} problem${err.problems.length === 1 ? '' : 's'}:\n`);
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
