// `edge-proxy run`, the default verb: the proxy itself, until SIGTERM or SIGINT.

import { parseArgs } from 'node:util';
import { ConfigError, EdgeError, RuleLoadError } from '../core/errors.js';
import { loadConfig } from '../config/load.js';
import { createLogger } from '../log.js';
import { startProxy } from '../main.js';
import { printConfigError } from './terminal.js';

export const RUN_HELP = `edge-proxy run [--config FILE] [--ports-file FILE]
  Starts the proxy. Logs JSON lines on stdout; one {"msg":"listening"} line per endpoint, then {"msg":"ready"}.
  --ports-file FILE   write {"mqtt": PORT, "admin": PORT} to FILE once every endpoint listens (useful with port 0)
  SIGTERM or SIGINT stops it cleanly: connections close, the cache is committed, the cloud is told "offline".
`;

export async function run(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { config: { type: 'string' }, 'ports-file': { type: 'string' }, help: { type: 'boolean' } },
    strict: true,
  });
  if (values.help) return void process.stdout.write(RUN_HELP);
  let loaded;
  try {
    // The files it names are checked here, as check-config does, so a bad path stops the start before anything runs.
    loaded = loadConfig({ file: values.config, env: process.env, cwd: process.cwd(), checkFiles: true });
  } catch (err) {
    if (err instanceof ConfigError) {
      printConfigError(err);
      process.exit(1);
    }
    throw err;
  }
  const log = createLogger(loaded.config.log.level);
  let proxy;
  try {
    proxy = await startProxy(loaded, log, { portsFile: values['ports-file'] ?? null });
  } catch (err) {
    const e = err as Error;
    log.fatal({ code: (err as EdgeError).code, err: e.message }, `cannot start: ${e.message.split('\n')[0]}`);
    // Code frames read best as they are, not escaped inside a JSON log line.
    if (err instanceof RuleLoadError) process.stderr.write(e.message + '\n');
    process.exit(1);
  }
  const shutdown = (signal: string): void => {
    log.info({ signal }, 'received signal');
    const force = setTimeout(() => {
      log.error('shutdown took over 20 s; exiting');
      process.exit(1);
    }, 20_000);
    force.unref();
    proxy.stop().then(
      () => process.exit(0),
      (err: Error) => {
        log.error({ err: err.message }, 'error while stopping');
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
  process.on('uncaughtException', (err) => {
    // Acknowledged messages are already committed; exiting lets systemd restart a clean process.
    log.fatal({ err: err.message, stack: err.stack }, 'uncaught exception; exiting so that the service manager restarts the proxy');
    process.exit(70);
  });
}
