// `edge-proxy run`, the default verb: the proxy itself, until SIGTERM or SIGINT.

import { existsSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError, EdgeError, RuleLoadError } from '../core/errors.js';
import { loadConfig } from '../config/load.js';
import { createLogger } from '../log.js';
import { startProxy } from '../main.js';
import { fail, printConfigError } from './terminal.js';

export const RUN_HELP = `edge-proxy run [--config FILE] [--ports-file FILE]
  Starts the proxy. Logs JSON lines on stdout; one {"msg":"listening"} line per endpoint, then {"msg":"ready"}.
  --ports-file FILE   write {"mqtt": PORT, "admin": PORT} to FILE once every endpoint listens (useful with port 0);
                      its directory must exist and be writable, which is checked before anything starts
                      (else exit 2, E_USAGE)
  SIGTERM or SIGINT stops it cleanly: connections close, the cache is committed, the cloud is told "offline".
`;

/**
 * `--ports-file FILE` can be written: its directory exists and takes a new file. Checked by making
 * one there (and removing it), which also tells a read-only file system and, as root, a directory
 * such as /proc; a proxy that found out only once it listens would stop again. Exit 2 (E_USAGE).
 */
function checkPortsFile(file: string): void {
  const dir = dirname(resolve(file));
  const refuse = (why: string): never => fail(`--ports-file ${file}: ${why} (E_USAGE)`);
  let isDirectory: boolean;
  try {
    isDirectory = statSync(dir).isDirectory();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return refuse(
      code === 'ENOENT' || code === 'ENOTDIR'
        ? `the directory ${dir} does not exist; create it first, or name a file in an existing directory`
        : `cannot use the directory ${dir}: ${(e as Error).message}`,
    );
  }
  if (!isDirectory) refuse(`${dir} is not a directory`);
  if (existsSync(file) && statSync(file).isDirectory()) refuse(`it is a directory: name a file, such as ${join(file, 'ports.json')}`);
  const probe = join(dir, `.${basename(file)}.${process.pid}.check`);
  try {
    writeFileSync(probe, '', { flag: 'wx' });
    rmSync(probe, { force: true });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why =
      code === 'EACCES' || code === 'EPERM'
        ? 'permission denied'
        : code === 'EROFS'
          ? 'a read-only file system'
          : code === 'ENOENT'
            ? 'it takes no new files'
            : (e as Error).message;
    refuse(`the directory ${dir} cannot be written (${why}); name a file in a directory this user can write`);
  }
}

export async function run(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { config: { type: 'string' }, 'ports-file': { type: 'string' }, help: { type: 'boolean' } },
    strict: true,
  });
  if (values.help) return void process.stdout.write(RUN_HELP);
  const portsFile = values['ports-file'] ?? null;
  if (portsFile !== null) checkPortsFile(portsFile);
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
    proxy = await startProxy(loaded, log, { portsFile });
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
