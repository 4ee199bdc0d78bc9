// `edge-proxy check-config`: every problem of a configuration, without starting anything.

import { parseArgs } from 'node:util';
import { ConfigError } from '../core/errors.js';
import { loadConfig } from '../config/load.js';
import { fail, printConfigError } from './terminal.js';

export const CHECK_CONFIG_HELP = `edge-proxy check-config [FILE]
  Validates FILE (default: ./edge-proxy.yaml, else the embedded defaults) with the environment overrides,
  prints every problem as file:line:col: key: CODE: message, and exits 1 if there is any (0 when clean).
`;

export function checkConfig(args: string[]): void {
  const { values, positionals } = parseArgs({ args, options: { help: { type: 'boolean' } }, allowPositionals: true, strict: true });
  if (values.help) return void process.stdout.write(CHECK_CONFIG_HELP);
  if (positionals.length > 1) fail('check-config takes at most one FILE');
  try {
    const loaded = loadConfig({ file: positionals[0], env: process.env, cwd: process.cwd() });
    process.stdout.write(`${loaded.file ?? '(embedded defaults)'}: OK\n`);
  } catch (err) {
    if (err instanceof ConfigError) {
      printConfigError(err);
      process.exit(1);
    }
    throw err;
  }
}
