// The marked examples of the documentation (test/docs.test.ts): finding them, reading their
// `<!-- doc-test ... -->` markers, splitting a shell block into the commands a user would type,
// and mapping those commands onto the test's world (the substitution table).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/** The proxies a session can run against (test/docs.test.ts says what each is). */
export const SETUPS = ['open', 'token', 'no-rules', 'tls'] as const;
export type Setup = (typeof SETUPS)[number];

export interface Marker {
  /** the exit status the block must end with: its first failing command's, else 0 */
  status: number;
  /** regular expressions (multiline) its output must match */
  expect: RegExp[];
  setup: Setup;
  /** blocks of one document and one session run in one bash session, in one world */
  session: string;
  /** every command started in the background, as in a terminal of its own; stopped when the session ends */
  background: boolean;
  /** named checks of test/docs.test.ts, run after the block */
  checks: string[];
  /** for any block: its text is written to this path of the scratch directory, nothing is run */
  file: string | null;
}

/** One command as typed: its text (continuation lines and heredoc body included) and where it starts. */
export interface Command {
  text: string;
  line: number;
}

/** A line a transcript shows as output (after a `$ ` command), with its line in the document. */
export interface OutputLine {
  text: string;
  line: number;
}

export interface DocBlock {
  /** the document, relative to the repository: `README.md`, `docs/rules.md` */
  doc: string;
  /** the line of the block's first line of text (the line after the opening fence) */
  line: number;
  /** the fence's info string: sh, console, rules, ... */
  lang: string;
  text: string;
  marker: Marker;
  /** the commands of a shell block, in order */
  commands: Command[];
  /** a transcript's output lines (lines not typed after a `$ ` prompt) */
  shown: OutputLine[];
}

/** Fences whose marked blocks are run as shell. */
export const SHELL_LANGS = new Set(['sh', 'console']);

const MARKER = /^\s*<!--\s*doc-test\b(.*?)-->\s*$/;
const OPTION = /\s*([a-z]+)(?:=(?:"([^"]*)"|'([^']*)'|(\S+)))?/y;

/** Reads the options of a marker (`status=1 expect="^ok" background`); every problem is thrown, with its place. */
export function parseMarker(options: string, where: string): Marker {
  const marker: Marker = { status: 0, expect: [], setup: 'open', session: '', background: false, checks: [], file: null };
  OPTION.lastIndex = 0;
  const rest = options.trimEnd();
  while (OPTION.lastIndex < rest.length) {
    const m = OPTION.exec(rest);
    if (!m) throw new Error(`${where}: cannot read the doc-test options from "${rest.slice(OPTION.lastIndex)}"`);
    const [, key, double, single, bare] = m;
    const value = double ?? single ?? bare;
    const need = (): string => {
      if (value === undefined) throw new Error(`${where}: doc-test option ${key} needs a value (${key}=...)`);
      return value;
    };
    switch (key) {
      case 'status':
        if (!/^\d+$/.test(need())) throw new Error(`${where}: status must be a number, not ${value}`);
        marker.status = Number(value);
        break;
      case 'expect':
        marker.expect.push(new RegExp(need(), 'm'));
        break;
      case 'setup': {
        const setup = SETUPS.find((s) => s === need());
        if (!setup) throw new Error(`${where}: unknown setup ${value}; the setups are ${SETUPS.join(', ')}`);
        marker.setup = setup;
        break;
      }
      case 'session':
        marker.session = need();
        break;
      case 'background':
        if (value !== undefined) throw new Error(`${where}: background takes no value`);
        marker.background = true;
        break;
      case 'check':
        marker.checks.push(...need().split(','));
        break;
      case 'file':
        marker.file = need();
        break;
      default:
        throw new Error(`${where}: unknown doc-test option ${key}`);
    }
  }
  if (marker.session === '') marker.session = marker.setup;
  if (marker.background && marker.status !== 0) throw new Error(`${where}: a background block has no exit status to expect`);
  return marker;
}

/** Every marked block of a document, in order. A marker not directly before a fence is an error. */
export function markedBlocks(root: string, doc: string): DocBlock[] {
  const lines = readFileSync(join(root, doc), 'utf8').split('\n');
  const blocks: DocBlock[] = [];
  let pending: { marker: Marker; line: number } | null = null;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    const marked = MARKER.exec(line);
    if (marked) {
      pending = { marker: parseMarker(marked[1] ?? '', `${doc}:${i + 1}`), line: i + 1 };
      continue;
    }
    const fence = /^(\s*)(`{3,})\s*([\w-]*)/.exec(line);
    if (pending && !fence) throw new Error(`${doc}:${pending.line}: a doc-test marker must be the line just before a fence`);
    if (!fence) continue;
    const [, indent = '', ticks = '```', lang = ''] = fence;
    const start = i + 1;
    let end = start;
    while (end < lines.length && !(lines[end]!.startsWith(indent + ticks) && lines[end]!.trim() === ticks)) end++;
    if (end === lines.length) throw new Error(`${doc}:${i + 1}: a fence that is never closed`);
    const body = lines.slice(start, end).map((l) => (l.startsWith(indent) ? l.slice(indent.length) : l));
    if (pending) {
      const { marker } = pending;
      if (marker.file === null && !SHELL_LANGS.has(lang)) {
        throw new Error(
          `${doc}:${start + 1}: only ${[...SHELL_LANGS].join(' and ')} blocks run; a ${lang || 'plain'} block needs file=PATH`,
        );
      }
      const split = marker.file === null ? splitCommands(body, start + 1) : { commands: [], shown: [] };
      blocks.push({ doc, line: start + 1, lang, text: body.join('\n') + '\n', marker, ...split });
    }
    pending = null;
    i = end;
  }
  return blocks;
}

/**
 * The commands of a shell block. In a transcript (a block with `$ ` prompts) only what follows a
 * prompt is typed, the other lines are what it printed; otherwise every line that is not blank or
 * a comment starts a command. A command goes on over `\` line ends and through its heredoc.
 */
export function splitCommands(body: string[], firstLine: number): { commands: Command[]; shown: OutputLine[] } {
  const transcript = body.some((l) => l.startsWith('$ '));
  const commands: Command[] = [];
  const shown: OutputLine[] = [];
  for (let i = 0; i < body.length; i++) {
    const line = body[i]!;
    const typed = transcript ? (line.startsWith('$ ') ? line.slice(2) : null) : line.trim() === '' || /^\s*#/.test(line) ? null : line;
    if (typed === null) {
      if (transcript) shown.push({ text: line, line: firstLine + i });
      continue;
    }
    const command = { text: typed, line: firstLine + i };
    while (command.text.endsWith('\\') && i + 1 < body.length) command.text += '\n' + body[++i]!;
    const heredoc = /<<-?\s*(['"]?)(\w+)\1/.exec(command.text);
    if (heredoc) {
      const end = heredoc[2]!;
      while (i + 1 < body.length) {
        const next = body[++i]!;
        command.text += '\n' + next;
        if (next.trim() === end) break;
      }
    }
    commands.push(command);
  }
  return { commands, shown };
}

/** What the examples' fixed names stand for in the test's world. */
export interface World {
  /** the scratch directory the commands run in */
  dir: string;
  /** the built CLI, the built firmware simulator */
  cli: string;
  sim: string;
  /** the proxy's real ports */
  mqtt: number;
  admin: number;
  tls: number | null;
  coap: number;
  http: number;
  /** the cloud Mosquitto's port */
  cloud: number;
}

/**
 * The substitution table: each example's fixed hosts, ports, paths and commands, mapped onto the
 * test's world. The order matters (`npx edge-proxy` before a bare `edge-proxy`).
 */
export function substitutions(w: World): Array<[RegExp, string | ((...m: string[]) => string)]> {
  return [
    // `sudo` and `sudo -u USER`: the scratch directory is the user's own
    [/(^|[\s;&|(])sudo (?:-u \S+ )?/gm, '$1'],
    [/\bnpx edge-proxy\b/g, `node ${w.cli}`],
    // `edge-proxy` as a command (at the start, after `$(`, `;`, `&&`, `|`): the built CLI
    [/(^|\$\(|[;&|]\s*)edge-proxy(?= )/gm, `$1node ${w.cli}`],
    // the simulator, at the proxy's port (its default --url is mqtt://127.0.0.1:1883)
    [/\bnpm run sim --(?= )/g, `node ${w.sim} --url mqtt://127.0.0.1:${w.mqtt}`],
    // the cloud broker
    [/\bmqtts?:\/\/broker\.example\.com:\d+/g, `mqtt://127.0.0.1:${w.cloud}`],
    [/-h (?:broker\.example\.com|broker)(?=\s|$)/gm, `-h 127.0.0.1 -p ${w.cloud}`],
    // the proxy's device ports: plain MQTT, and the TLS port of a host named in a certificate
    [/-h edge\.local -p 8883\b/g, `-h localhost -p ${w.tls ?? 8883}`],
    [/-p 1883\b/g, `-p ${w.mqtt}`],
    [
      /\b(mosquitto_(?:pub|sub)\b[^\n]*?-h (?:127\.0\.0\.1|localhost))(?=\s)(?![^\n]*\s-p \d)/g,
      (_all: string, head: string) => `${head} -p ${w.mqtt}`,
    ],
    // the CoAP and WebSocket ports
    [/\b(127\.0\.0\.1|localhost):5683\b/g, `127.0.0.1:${w.coap}`],
    [/\b(ws:\/\/)(127\.0\.0\.1|localhost):8080\b/g, `$1127.0.0.1:${w.http}`],
    // the admin port
    [/\b(127\.0\.0\.1|localhost):9180\b/g, `127.0.0.1:${w.admin}`],
    // a board's state directory: the proxy's data directory
    [/\/var\/lib\/edge-proxy\b/g, join(w.dir, 'data')],
  ];
}

export function substitute(text: string, w: World): string {
  let out = text;
  for (const [from, to] of substitutions(w)) out = typeof to === 'string' ? out.replace(from, to) : out.replace(from, to);
  return out;
}

/** A command that edits the registry: a running proxy follows it within a second (docs/devices.md). */
export function editsRegistry(command: string): boolean {
  return /\bedge-proxy devices (?:add|rotate|remove)\b/.test(command);
}
