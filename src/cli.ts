#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { ConfigError, EdgeError, RuleLoadError, formatConfigProblem } from './core/errors.js';
import { loadConfig } from './config/load.js';
import { createLogger } from './log.js';
import { startProxy } from './main.js';
import { adminTarget, type AdminTarget } from './admin/client.js';
import { VERSION } from './version.js';
import type { ProxyStatus } from './admin/status.js';
import type { Config } from './config/types.js';
import { rulesCheck, rulesTest } from './rules/cli.js';
import { rulesPush, rulesRollback } from './rules/remote.js';

const USAGE = `edge-proxy ${VERSION}: an IoT edge proxy (MQTT devices in, durable store-and-forward to a cloud MQTT broker)

Usage:
  edge-proxy [run] [--config FILE] [--ports-file FILE]   run the proxy (the default verb)
  edge-proxy check-config [FILE]                          validate a configuration and list every problem
  edge-proxy status [--config FILE] [--admin URL] [--token T] [--json]
                                                          ask a running proxy for its state
  edge-proxy rules check FILE...                          check rules files; every error with file:line:col
  edge-proxy rules test FILE... --input MESSAGES.jsonl [--format json|text]
                                                          run rules over recorded messages, sending nothing
  edge-proxy rules push FILE... [--admin URL] [--token T] replace a running proxy's rules with FILEs
  edge-proxy rules rollback [--admin URL] [--token T]     run the rules before the running ones again
  edge-proxy version                                      print the version
  edge-proxy VERB --help                                  help for one verb

Without --config, ./edge-proxy.yaml is read if present, else the embedded defaults.
Environment variables EDGE_PROXY_<KEY_PATH> override single keys (EDGE_PROXY_UPLINK_URL, EDGE_PROXY_MQTT_PORT, ...).
`;

const HELP: Record<string, string> = {
  run: `edge-proxy run [--config FILE] [--ports-file FILE]
  Starts the proxy. Logs JSON lines on stdout; one {"msg":"listening"} line per endpoint, then {"msg":"ready"}.
  --ports-file FILE   write {"mqtt": PORT, "admin": PORT} to FILE once every endpoint listens (useful with port 0)
  SIGTERM or SIGINT stops it cleanly: connections close, the cache is committed, the cloud is told "offline".
`,
  'check-config': `edge-proxy check-config [FILE]
  Validates FILE (default: ./edge-proxy.yaml, else the embedded defaults) with the environment overrides,
  prints every problem as file:line:col: key: CODE: message, and exits 1 if there is any (0 when clean).
`,
  status: `edge-proxy status [--config FILE] [--admin URL] [--token T] [--json]
  Asks a running proxy (default: the one the configuration describes, with the token from its data directory)
  for its state: connected devices, uplink, cache backlog, and how long the backlog takes to drain.
  Exits 2 when the proxy cannot be reached.
`,
  version: 'edge-proxy version\n  Prints the version.\n',
  rules: `edge-proxy rules check FILE... [--config FILE]
  Compiles the files as one ruleset and prints every error as file:line:col: CODE: message with the
  line and a caret. Exit 0 when clean, 1 with errors.

edge-proxy rules test FILE... --input MESSAGES.jsonl [--format json|text] [--config FILE]
  Runs the rules over recorded messages (one JSON object a line: topic, payload as JSON, and any
  other EdgeMessage field; ts defaults to the previous line's + 1000, deviceId to the topic's second
  level) without sending anything, and prints per message what fired and what would go up.

edge-proxy rules push FILE... [--admin URL] [--token T] [--config FILE]
  Replaces every rules file of a running proxy with FILEs (stored under their base names) and runs
  them as a new version, or changes nothing and prints every error as rules check does.
  Without --admin and --token: the proxy the configuration describes, with the token it keeps in
  its data directory. Exit 0 when the files run, 1 with errors, 2 when the proxy cannot be reached.

edge-proxy rules rollback [--admin URL] [--token T] [--config FILE]
  Runs the rules of the version before the running one again, as a new version (two rollbacks in a
  row come back to where they started). Exit 0, 1 when there is no earlier version, 2 unreachable.
`,
};

function fail(message: string, code = 2): never {
  process.stderr.write(message.endsWith('\n') ? message : message + '\n');
  process.exit(code);
}

function printConfigError(err: ConfigError): void {
  process.stderr.write(`configuration has ${err.problems.length} problem${err.problems.length === 1 ? '' : 's'}:\n`);
  for (const p of err.problems) process.stderr.write(formatConfigProblem(p) + '\n');
}

async function run(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { config: { type: 'string' }, 'ports-file': { type: 'string' }, help: { type: 'boolean' } }, strict: true });
  if (values.help) return void process.stdout.write(HELP.run!);
  let loaded;
  try {
    loaded = loadConfig({ file: values.config, env: process.env, cwd: process.cwd() });
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
    const force = setTimeout(() => { log.error('shutdown took over 20 s; exiting'); process.exit(1); }, 20_000);
    force.unref();
    proxy.stop().then(() => process.exit(0), (err: Error) => { log.error({ err: err.message }, 'error while stopping'); process.exit(1); });
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
  process.on('uncaughtException', (err) => {
    // Acknowledged messages are already committed; exiting lets systemd restart a clean process.
    log.fatal({ err: err.message, stack: err.stack }, 'uncaught exception; exiting so that the service manager restarts the proxy');
    process.exit(70);
  });
}

function checkConfig(args: string[]): void {
  const { values, positionals } = parseArgs({ args, options: { help: { type: 'boolean' } }, allowPositionals: true, strict: true });
  if (values.help) return void process.stdout.write(HELP['check-config']!);
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

function seconds(s: number): string {
  if (s < 60) return `${s.toFixed(0)} s`;
  if (s < 3600) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

async function status(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { config: { type: 'string' }, admin: { type: 'string' }, token: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean' } }, strict: true });
  if (values.help) return void process.stdout.write(HELP.status!);
  const { url, token } = targetOf(values);
  let body: ProxyStatus;
  try {
    const res = await fetch(new URL('/api/v1/status', url), { headers: token ? { authorization: `Bearer ${token}` } : {} });
    if (!res.ok) fail(`${url} answered ${res.status}: ${await res.text()}`, res.status === 401 ? 1 : 2);
    body = await res.json() as ProxyStatus;
  } catch (err) {
    fail(`cannot reach the proxy at ${url}: ${(err as Error).message}. Is it running? (systemctl status edge-proxy)`);
  }
  if (values.json) return void process.stdout.write(JSON.stringify(body) + '\n');
  const c = body.cache;
  const u = body.uplink;
  process.stdout.write([
    `edge-proxy ${body.version} on ${body.edgeId}, up ${seconds(body.uptimeSeconds)}`,
    `devices:  ${body.devices.mqtt} MQTT connected; ${body.rates.receivedPerSecond.toFixed(1)} msg/s in`,
    u.url === null ? 'uplink:   none (offline mode): what would go up stays in the cache' : `uplink:   ${u.url}: ${u.connected ? 'connected' : 'NOT connected'}, ${u.inflight} in flight, ${c.drainRate.toFixed(1)} msg/s acknowledged`,
    `cache:    ${c.messages} messages, ${c.bytes} bytes, oldest ${seconds(c.oldestAgeSeconds)}, ${c.writable ? 'writable' : 'NOT writable'}`,
    `drain:    ${c.messages === 0 ? 'nothing to drain' : c.timeToDrainSeconds === null ? `not draining now${u.connected ? '' : ' (the uplink is not connected)'}` : `about ${seconds(c.timeToDrainSeconds)} at the current rate`}`,
    ...(body.rules ? [`rules:    version ${body.rules.version}, ${body.rules.rules} rule${body.rules.rules === 1 ? '' : 's'} (sha256 ${body.rules.sha256.slice(0, 12)})`] : []),
    '',
  ].join('\n'));
}

/** The proxy an admin command talks to: --admin and --token, else the local one and its token. */
function targetOf(values: { admin?: string; token?: string; config?: string }): AdminTarget {
  return adminTarget(values, () => configOrDefaults(values.config));
}

function configOrDefaults(file: string | undefined): Config {
  try {
    return loadConfig({ file, env: process.env, cwd: process.cwd() }).config;
  } catch (err) {
    if (err instanceof ConfigError) { printConfigError(err); process.exit(1); }
    throw err;
  }
}

async function rules(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  if (sub !== 'check' && sub !== 'test' && sub !== 'push' && sub !== 'rollback') {
    if (sub === '--help' || sub === undefined) return void process.stdout.write(HELP.rules!);
    fail(`unknown rules command "${sub}": rules check, test, push or rollback (E_USAGE)\n\n${HELP.rules}`);
  }
  const out = (s: string): void => void process.stdout.write(s);
  const err = (s: string): void => void process.stderr.write(s);
  if (sub === 'push' || sub === 'rollback') {
    const { values, positionals } = parseArgs({
      args: rest, allowPositionals: sub === 'push', strict: true,
      options: { config: { type: 'string' }, admin: { type: 'string' }, token: { type: 'string' }, help: { type: 'boolean' } },
    });
    if (values.help) return void process.stdout.write(HELP.rules!);
    if (sub === 'push' && positionals.length === 0) fail('rules push needs at least one FILE (E_USAGE)');
    const target = targetOf(values);
    process.exit(sub === 'push' ? await rulesPush(positionals, target, out, err) : await rulesRollback(target, out, err));
  }
  const { values, positionals } = parseArgs({
    args: rest, allowPositionals: true, strict: true,
    options: { config: { type: 'string' }, input: { type: 'string' }, format: { type: 'string', default: 'json' }, help: { type: 'boolean' } },
  });
  if (values.help) return void process.stdout.write(HELP.rules!);
  if (positionals.length === 0) fail(`rules ${sub} needs at least one FILE (E_USAGE)`);
  const cfg = configOrDefaults(values.config);
  if (sub === 'check') process.exit(rulesCheck(positionals, cfg, out, err));
  if (!values.input) fail('rules test needs --input MESSAGES.jsonl (E_USAGE)');
  if (values.format !== 'json' && values.format !== 'text') fail('--format is json or text (E_USAGE)');
  process.exit(rulesTest(positionals, values.input, values.format, cfg, out, err));
}

async function main(argv: string[]): Promise<void> {
  const verbs = new Set(['run', 'check-config', 'status', 'rules', 'version', 'help']);
  const first = argv[0];
  const verb = first && verbs.has(first) ? first : first === '--help' || first === '-h' ? 'help' : first && !first.startsWith('-') ? null : 'run';
  if (verb === null) fail(`unknown verb "${first}" (E_USAGE)\n\n${USAGE}`);
  const rest = first && verbs.has(first) ? argv.slice(1) : argv;
  try {
    switch (verb) {
      case 'run': return await run(rest);
      case 'check-config': return checkConfig(rest);
      case 'status': return await status(rest);
      case 'rules': return await rules(rest);
      case 'version': return void process.stdout.write(`${VERSION}\n`);
      case 'help': return void process.stdout.write(USAGE);
    }
  } catch (err) {
    if ((err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) fail(`${(err as Error).message} (E_USAGE)\n\n${HELP[verb!] ?? USAGE}`);
    throw err;
  }
}

await main(process.argv.slice(2));
