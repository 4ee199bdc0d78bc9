// `edge-proxy devices`: add, list, remove and rotate the devices of the registry file (devicesFile).
// A running proxy follows the file, so these verbs need no connection to it.

import { parseArgs, type ParseArgsConfig } from 'node:util';
import { EdgeError } from '../core/errors.js';
import { closestName } from '../core/did-you-mean.js';
import type { DeviceEntry } from '../auth/registry.js';
import { addDevice, listDevices, removeDevice, rotateDevice, type AttrValue } from '../auth/registry-edit.js';
import { configOrDefaults } from './terminal.js';

export const DEVICES_HELP = `edge-proxy devices add <id> [--attr NAME=VALUE ...] [--publish FILTER ...] [--subscribe FILTER ...]
  Adds a device to the registry (devicesFile) and prints its token once, on its own line. Only the
  token's SHA-256 is stored: keep the token, it cannot be shown again (rotate makes a new one).
  The device connects with MQTT username = <id> and password = the token.
  --attr NAME=VALUE     an attribute rules read as device.NAME (repeatable); true/false become booleans,
                        decimal numbers (without leading zeros) numbers, anything else text
  --publish FILTER      a topic filter the device may publish to (repeatable; default devices/<id>/#)
  --subscribe FILTER    a topic filter the device may subscribe within (repeatable;
                        default devices/<id>/# and broadcast/#)

edge-proxy devices list [--json]
  Lists the devices: id, publish and subscribe filters, attributes (never the token hashes).

edge-proxy devices remove <id>
  Removes a device; a running proxy disconnects it.

edge-proxy devices rotate <id>
  Gives a device a new token and prints it once; the old token stops working and a running
  proxy disconnects the device until it connects with the new one.

Every verb edits the file the configuration's devicesFile names (default ./devices.yaml); the
configuration is --config FILE, else ./edge-proxy.yaml, else the embedded defaults.
A running proxy picks every change up within a second, without a restart. The file keeps its
comments; a file with problems is not edited (each problem is listed as file:line:col).
Exit 0 on success, 1 when refused (unknown or existing id, invalid id, filter or attribute, a
registry with problems), 2 on a usage error.
`;

const VERBS = ['add', 'list', 'remove', 'rotate'] as const;
type Verb = (typeof VERBS)[number];

const OPTIONS = {
  add: {
    attr: { type: 'string', multiple: true },
    publish: { type: 'string', multiple: true },
    subscribe: { type: 'string', multiple: true },
  },
  list: { json: { type: 'boolean' } },
  remove: {},
  rotate: {},
} satisfies Record<Verb, ParseArgsConfig['options']>;

const HELP_OPTION = { help: { type: 'boolean', short: 'h' } } as const;

/** Raised for a command line that cannot be understood: exit 2. */
class UsageError extends EdgeError {
  constructor(message: string) {
    super('E_USAGE', message);
  }
}

export async function devicesCommand(
  args: string[],
  devicesFile: string,
  out: (s: string) => void,
  err: (s: string) => void,
): Promise<number> {
  const [verb, ...rest] = args;
  if (verb === '--help' || verb === '-h' || verb === 'help') {
    out(DEVICES_HELP);
    return 0;
  }
  try {
    if (verb === undefined) throw new UsageError('a verb is missing: add, list, remove or rotate');
    if (!isVerb(verb)) {
      const hint = closestName(verb, VERBS);
      throw new UsageError(
        `unknown verb \`devices ${verb}\`${hint ? `: did you mean \`devices ${hint}\`?` : '; the verbs are add, list, remove, rotate'}`,
      );
    }
    return await runVerb(verb, rest, devicesFile, out, err);
  } catch (e) {
    if (e instanceof UsageError) {
      err(`edge-proxy devices: ${e.message}\n(edge-proxy devices --help lists the verbs and their options)\n`);
      return 2;
    }
    err(`edge-proxy devices: ${e instanceof EdgeError ? `${e.code}: ` : ''}${(e as Error).message}\n`);
    return 1;
  }
}

function isVerb(verb: string): verb is Verb {
  return (VERBS as readonly string[]).includes(verb);
}

async function runVerb(verb: Verb, args: string[], file: string, out: (s: string) => void, err: (s: string) => void): Promise<number> {
  const parsed = parse(verb, args);
  if (parsed.values.help === true) {
    out(DEVICES_HELP);
    return 0;
  }
  switch (verb) {
    case 'add': {
      const id = onlyId(verb, parsed.positionals);
      const { attr, publish, subscribe } = parsed.values as { attr?: string[]; publish?: string[]; subscribe?: string[] };
      const token = await addDevice(file, id, { attrs: parseAttrs(attr ?? []), publish, subscribe });
      out(`${token}\n`);
      err(
        `device ${id} added to ${file}. The token above is shown only once; the device connects with username = ${id} and password = the token. A running proxy picks the change up within a second.\n`,
      );
      return 0;
    }
    case 'list': {
      if (parsed.positionals.length > 0) throw new UsageError(`\`devices list\` takes no argument, got \`${parsed.positionals[0]}\``);
      const devices = await listDevices(file);
      out(parsed.values.json === true ? `${JSON.stringify(devices.map(publicView), null, 2)}\n` : table(file, devices));
      return 0;
    }
    case 'remove': {
      const id = onlyId(verb, parsed.positionals);
      await removeDevice(file, id);
      out(`device ${id} removed from ${file}; a running proxy disconnects it within a second\n`);
      return 0;
    }
    case 'rotate': {
      const id = onlyId(verb, parsed.positionals);
      const token = await rotateDevice(file, id);
      out(`${token}\n`);
      err(
        `new token for device ${id} in ${file}, shown only once. The old token no longer works: a running proxy disconnects the device within a second, until it connects with username = ${id} and password = the new token.\n`,
      );
      return 0;
    }
  }
}

interface Parsed {
  values: Record<string, string | boolean | (string | boolean)[] | undefined>;
  positionals: string[];
}

function parse(verb: Verb, args: string[]): Parsed {
  const options: ParseArgsConfig['options'] = { ...OPTIONS[verb], ...HELP_OPTION };
  try {
    const { values, positionals } = parseArgs({ args, options, allowPositionals: true, strict: true });
    return { values, positionals };
  } catch (e) {
    // parseArgs names the option; its hint about `--` does not apply to device ids.
    throw new UsageError(`${verb}: ${(e as Error).message.split('. To specify')[0]}`);
  }
}

function onlyId(verb: Verb, positionals: string[]): string {
  const [id, extra] = positionals;
  if (id === undefined) throw new UsageError(`\`devices ${verb}\` needs a device id: edge-proxy devices ${verb} <id>`);
  if (extra !== undefined) throw new UsageError(`\`devices ${verb}\` takes one device id, got also \`${extra}\``);
  return id;
}

const DECIMAL = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?$/;

/** `--attr name=value`: a bad one is refused (exit 1) like a bad filter, not a usage error. */
function parseAttrs(specs: readonly string[]): Record<string, AttrValue> {
  const attrs: Record<string, AttrValue> = {};
  for (const spec of specs) {
    const eq = spec.indexOf('=');
    if (eq <= 0) throw new EdgeError('E_REGISTRY', `--attr \`${spec}\` must be NAME=VALUE, as in --attr location=hall-2`);
    const name = spec.slice(0, eq);
    if (Object.hasOwn(attrs, name)) throw new EdgeError('E_REGISTRY', `--attr ${name} is given twice`);
    Object.defineProperty(attrs, name, { value: attrValue(spec.slice(eq + 1)), enumerable: true, writable: true, configurable: true });
  }
  return attrs;
}

function attrValue(text: string): AttrValue {
  if (text === 'true' || text === 'false') return text === 'true';
  // Leading zeros stay text: a serial number `007` is not the number 7.
  if (DECIMAL.test(text) && Number.isFinite(Number(text))) return Number(text);
  return text;
}

/** What list shows: never the hash, which would only help someone guess offline. */
function publicView(d: DeviceEntry): {
  id: string;
  publish: readonly string[];
  subscribe: readonly string[];
  attrs: Record<string, AttrValue>;
} {
  return { id: d.id, publish: d.publish.filters, subscribe: d.subscribe.filters, attrs: { ...d.attrs } };
}

function table(file: string, devices: readonly DeviceEntry[]): string {
  if (devices.length === 0) return `no devices in ${file}; add one with: edge-proxy devices add <id>\n`;
  const rows = [['ID', 'PUBLISH', 'SUBSCRIBE', 'ATTRS']];
  for (const d of devices) {
    const attrs = Object.entries(d.attrs)
      .map(([k, v]) => `${k}=${String(v)}`)
      .join(' ');
    rows.push([d.id, d.publish.filters.join(','), d.subscribe.filters.join(','), attrs]);
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  const lines = rows.map((r) =>
    r
      .map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]!)))
      .join('  ')
      .trimEnd(),
  );
  const count = `${devices.length} device${devices.length === 1 ? '' : 's'}`;
  return `${file}: ${count}\n${lines.join('\n')}\n`;
}

/**
 * `edge-proxy devices ... [--config FILE]`: the registry named by the configuration's devicesFile.
 * The configuration is read only when a verb needs the file, so --help works anywhere.
 */
export async function devices(argv: string[]): Promise<void> {
  const args: string[] = [];
  let config: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--config') config = argv[++i];
    else if (a.startsWith('--config=')) config = a.slice('--config='.length);
    else args.push(a);
  }
  const out = (s: string): void => void process.stdout.write(s);
  const err = (s: string): void => void process.stderr.write(s);
  if (args.length === 0 || ['--help', '-h', 'help'].includes(args[0]!)) process.exit(await devicesCommand(args, '', out, err));
  const cfg = configOrDefaults(config);
  const code = await devicesCommand(args, cfg.devicesFile, out, err);
  if (code === 0 && cfg.auth.mode !== 'token' && args[0] !== 'list') {
    err(
      `note: auth.mode is ${cfg.auth.mode} in this configuration, so the proxy admits any client; the registry (${cfg.devicesFile}) is used with auth.mode: token\n`,
    );
  }
  process.exit(code);
}
