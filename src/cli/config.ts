// `edge-proxy check-config`: every problem of a configuration, without starting anything.

import { parseArgs } from 'node:util';
import { ConfigError } from '../core/errors.js';
import { checkConfig as checkConfiguration } from '../config/load.js';
import { fail, printConfigError } from './terminal.js';

export const CHECK_CONFIG_HELP = `edge-proxy check-config [FILE]
  Validates FILE (default: ./edge-proxy.yaml, else the embedded defaults) with the environment overrides,
  and checks the files it names as \`run\` uses them, through the same code: the TLS files of mqtt.tls,
  http.tls and uplink.tls loaded (PEM, the key the certificate's), admin.tokenFile, and devicesFile in token
  mode parsed as the registry (its problems at the registry's own file:line:col). Prints every problem at
  once as file:line:col: key: CODE: message, and exits 1 if there is any (0 when clean; warnings, such as
  a registry not written yet, do not count). \`run\` refuses the same configuration with the same lines.
`;

export function checkConfig(args: string[]): void {
  const { values, positionals } = parseArgs({ args, options: { help: { type: 'boolean' } }, allowPositionals: true, strict: true });
  if (values.help) return void process.stdout.write(CHECK_CONFIG_HELP);
  if (positionals.length > 1) fail('check-config takes at most one FILE');
  // The very function `run` loads its configuration with (config/load.ts), so a configuration
  // check-config passes is one run starts on, and both list the same problems.
  const result = checkConfiguration({ file: positionals[0], env: process.env, cwd: process.cwd(), checkFiles: true });
  for (const warning of result.warnings) process.stderr.write(warning + '\n');
  if (!result.loaded) {
    printConfigError(new ConfigError(result.problems));
    process.exit(1);
  }
  process.stdout.write(`${result.file ?? '(embedded defaults)'}: OK\n`);
}
