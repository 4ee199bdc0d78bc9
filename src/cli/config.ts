// `edge-proxy check-config`: every problem of a configuration, without starting anything.

import { parseArgs } from 'node:util';
import { ConfigError } from '../core/errors.js';
import { checkConfig as checkConfiguration } from '../config/load.js';
import { fail, printConfigError } from './terminal.js';

export const CHECK_CONFIG_HELP = `edge-proxy check-config [FILE]
  Validates FILE (default: ./edge-proxy.yaml, else the embedded defaults) with the environment overrides,
  and checks that the files it names (TLS files, admin.tokenFile, devicesFile in token mode) can be read,
  as \`run\` does. Prints every problem as file:line:col: key: CODE: message, and exits 1 if there is any
  (0 when clean; warnings, such as a registry not written yet, do not count).
`;

export function checkConfig(args: string[]): void {
  const { values, positionals } = parseArgs({ args, options: { help: { type: 'boolean' } }, allowPositionals: true, strict: true });
  if (values.help) return void process.stdout.write(CHECK_CONFIG_HELP);
  if (positionals.length > 1) fail('check-config takes at most one FILE');
  // The same checks as `run`, so a configuration check-config passes is one run starts on.
  const result = checkConfiguration({ file: positionals[0], env: process.env, cwd: process.cwd(), checkFiles: true });
  for (const warning of result.warnings) process.stderr.write(warning + '\n');
  if (!result.loaded) {
    printConfigError(new ConfigError(result.problems));
    process.exit(1);
  }
  process.stdout.write(`${result.file ?? '(embedded defaults)'}: OK\n`);
}
