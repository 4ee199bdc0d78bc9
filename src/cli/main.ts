// The edge-proxy command line: which verb runs, and the usage around it. Each verb lives in its own
// module here; this is the only part of the program that reads a command line.

import { VERSION } from '../version.js';
import { CHECK_CONFIG_HELP, checkConfig } from './config.js';
import { DEVICES_HELP, devices } from './devices.js';
import { RULES_HELP, rules } from './rules.js';
import { RUN_HELP, run } from './run.js';
import { STATUS_HELP, status } from './status.js';
import { fail } from './terminal.js';

const USAGE = `edge-proxy ${VERSION}: an IoT edge proxy (MQTT devices in, each proving who it is; durable store-and-forward to a cloud MQTT broker)

Usage:
  edge-proxy [run] [--config FILE] [--ports-file FILE]   run the proxy (the default verb)
  edge-proxy check-config [FILE]                          validate a configuration and list every problem
  edge-proxy status [--config FILE] [--admin URL] [--token T] [--json]
                                                          ask a running proxy for its state
  edge-proxy rules check FILE... [--models DIR]           check rules files; every error with file:line:col,
                                                          a warning for an infer() of a model DIR does not have
  edge-proxy rules test FILE... --input MESSAGES.jsonl [--format json|text] [--models DIR]
                                                          run rules over recorded messages, sending nothing;
                                                          with --models, run the models and their results too
  edge-proxy rules push FILE... [--admin URL] [--token T] replace a running proxy's rules with FILEs
  edge-proxy rules add FILE... | rules remove NAME...     add or replace, or remove, single files of the running set
  edge-proxy rules rollback [--admin URL] [--token T]     run the rules before the running ones again
  edge-proxy devices add ID [--attr K=V]... [--config FILE]
                                                          register a device (token mode) and print its token once
  edge-proxy devices list|remove ID|rotate ID             list the registry, remove a device, give it a new token
  edge-proxy version                                      print the version
  edge-proxy VERB --help                                  help for one verb

Without --config, ./edge-proxy.yaml is read if present, else the embedded defaults.
Environment variables EDGE_PROXY_<KEY_PATH> override single keys (EDGE_PROXY_UPLINK_URL, EDGE_PROXY_MQTT_PORT, ...).
`;

interface Verb {
  /** `edge-proxy VERB --help`, and what a usage error of the verb is followed by */
  help: string;
  run(args: string[]): void | Promise<void>;
}

/** Every verb, by the name it is called by. */
const VERBS: Readonly<Record<string, Verb>> = {
  run: { help: RUN_HELP, run },
  'check-config': { help: CHECK_CONFIG_HELP, run: checkConfig },
  status: { help: STATUS_HELP, run: status },
  rules: { help: RULES_HELP, run: rules },
  devices: { help: DEVICES_HELP, run: devices },
  version: { help: 'edge-proxy version\n  Prints the version.\n', run: () => void process.stdout.write(`${VERSION}\n`) },
  help: { help: USAGE, run: () => void process.stdout.write(USAGE) },
};

/** Runs the verb `argv` names; without one, or with only options, `run`. */
export async function main(argv: string[]): Promise<void> {
  const first = argv[0];
  const named = first !== undefined && Object.hasOwn(VERBS, first);
  const name = named
    ? first
    : first === '--help' || first === '-h'
      ? 'help'
      : first === '--version' || first === '-V'
        ? 'version'
        : first && !first.startsWith('-')
          ? null
          : 'run';
  if (name === null) fail(`unknown verb "${first}" (E_USAGE)\n\n${USAGE}`);
  const verb = VERBS[name]!;
  try {
    return await verb.run(named ? argv.slice(1) : argv);
  } catch (err) {
    if ((err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) fail(`${(err as Error).message} (E_USAGE)\n\n${verb.help}`);
    throw err;
  }
}
