// `edge-proxy rules push`, `rules add`, `rules remove` and `rules rollback`: a running proxy's rules, through its admin API.

import { basename } from 'node:path';
import { formatErrors } from '../rules/loader.js';
import type { RuleError } from '../rules/dsl/errors.js';
import { adminRequest, AdminUnreachable, describeRefusal, type AdminAnswer, type AdminTarget } from './admin-client.js';
import { tryReadUserFile } from './terminal.js';

type Print = (s: string) => void;

/** `--allow-empty`: a set without a rule may run; `--dry-run`: the proxy checks and answers, changing nothing. */
interface RemoteOptions {
  allowEmpty?: boolean;
  dryRun?: boolean;
}

function describeVersion(body: Record<string, unknown>): string {
  return `version ${String(body.version)}: ${String(body.rules)} rule${body.rules === 1 ? '' : 's'} (sha256 ${String(body.sha256).slice(0, 12)})`;
}

/** What a push replaced: "3 files replaced by 1 (a.rules, b.rules, c.rules)". */
function describeReplaced(body: Record<string, unknown>): string {
  const names = (v: unknown): string[] => (Array.isArray(v) ? v.filter((n): n is string => typeof n === 'string') : []);
  const replaced = names(body.replaced);
  const now = names(body.files).length;
  const files = (n: number): string => `${n} file${n === 1 ? '' : 's'}`;
  if (replaced.length === 0) return `no file replaced, ${files(now)} now`;
  const listed = replaced.length <= 10 ? replaced.join(', ') : `${replaced.slice(0, 10).join(', ')}, …`;
  return `${files(replaced.length)} replaced by ${now} (${listed})`;
}

function failure(a: AdminAnswer, target: AdminTarget, err: Print): number {
  err(describeRefusal(a, target));
  return 1;
}

/** Run an admin call; 2 when the proxy cannot be reached. */
async function call(target: AdminTarget, err: Print, request: () => Promise<AdminAnswer>): Promise<AdminAnswer | number> {
  try {
    return await request();
  } catch (e) {
    if (e instanceof AdminUnreachable) {
      err(e.message + '\n');
      return 2;
    }
    throw e;
  }
}

/**
 * The files to send, by the base name they are stored under (and the path given); 2 after printing
 * why not. A file that cannot be read is said as `rules check` says it (a directory, a pattern that
 * matched nothing), before its name is judged.
 */
function readFiles(paths: string[], err: Print): { byName: Map<string, string>; texts: Map<string, string> } | number {
  const byName = new Map<string, string>();
  const texts = new Map<string, string>();
  for (const p of paths) {
    // `-` (standard input) has no name to store it under: refused before anything is read.
    const read = p === '-' ? null : tryReadUserFile(p, 'the rules file', 'rules');
    if (read && 'error' in read) {
      err(read.error + '\n');
      return 2;
    }
    const name = basename(p);
    if (!read || !name.endsWith('.rules')) {
      err(`${p}: a pushed file must end in .rules, as the rules directory loads only those (E_USAGE)\n`);
      return 2;
    }
    if (byName.has(name)) {
      err(`${p} and ${byName.get(name)} would both be stored as ${name} (E_USAGE)\n`);
      return 2;
    }
    byName.set(name, p);
    texts.set(name, read.text);
  }
  return { byName, texts };
}

/** A 422 answer: every error as `rules check` prints it, naming the files as they were given here. */
function printErrors(a: AdminAnswer, byName: Map<string, string>, texts: Map<string, string>, err: Print): number {
  const errors = a.body.errors as RuleError[];
  // The proxy names the files as stored; the listing names them as given here, with code frames.
  const sources = new Map([...texts].map(([name, text]) => [byName.get(name)!, text]));
  const local = errors.map((e) => ({ ...e, file: byName.get(e.file) ?? e.file }));
  err(formatErrors({ errors: local, sources }) + '\n');
  err(`${errors.length} error${errors.length === 1 ? '' : 's'}: nothing changed, the running rules keep running\n`);
  return 1;
}

/**
 * `edge-proxy rules push FILE...`: replaces the proxy's rules with these files (stored under their
 * base names). Exit 0 when they run, 1 with the errors printed as `rules check` prints them (or a
 * set without a rule refused, unless `allowEmpty`), 2 when the proxy cannot be reached.
 */
export async function rulesPush(
  paths: string[],
  targetOf: () => AdminTarget,
  out: Print,
  err: Print,
  opts: RemoteOptions = {},
): Promise<number> {
  const read = readFiles(paths, err);
  if (typeof read === 'number') return read;
  const target = targetOf();
  const { byName, texts } = read;
  const data = JSON.stringify({ files: Object.fromEntries(texts), ...(opts.allowEmpty ? { allowEmpty: true } : {}) });
  const [method, path] = opts.dryRun ? (['POST', '/api/v1/rules/validate'] as const) : (['PUT', '/api/v1/rules'] as const);
  const a = await call(target, err, () => adminRequest(target, method, path, { type: 'application/json', data }));
  if (typeof a === 'number') return a;
  if (a.status === 200) {
    out(
      a.body.changed === false
        ? `unchanged: ${describeVersion(a.body)} is already running\n`
        : opts.dryRun
          ? `dry run: ${describeVersion(a.body)} would run; ${describeReplaced(a.body)}; nothing changed\n`
          : `pushed: ${describeVersion(a.body)} running; ${describeReplaced(a.body)}\n`,
    );
    return 0;
  }
  if (a.status === 422 && Array.isArray(a.body.errors)) return printErrors(a, byName, texts, err);
  if (a.body.code === 'E_RULES_EMPTY') {
    err(`the files define no rule: the push would remove every rule, so it was refused; nothing changed (E_RULES_EMPTY)\n`);
    err('to run no rules on purpose: edge-proxy rules push --allow-empty FILE...\n');
    return 1;
  }
  return failure(a, target, err);
}

/** What a change of some files did (or would do): "added c.rules; replaced a.rules; removed b.rules; 3 files now". */
function describeChange(body: Record<string, unknown>): string {
  const names = (v: unknown): string[] => (Array.isArray(v) ? v.filter((n): n is string => typeof n === 'string') : []);
  const removed = names(body.removed);
  // `replaced` names, as for a push, every running file removed or changed: here, the changed ones.
  const replaced = names(body.replaced).filter((n) => !removed.includes(n));
  const now = names(body.files).length;
  const parts = [
    ...(names(body.added).length ? [`added ${names(body.added).join(', ')}`] : []),
    ...(replaced.length ? [`replaced ${replaced.join(', ')}`] : []),
    ...(removed.length ? [`removed ${removed.join(', ')}`] : []),
  ];
  return [...parts, `${now} file${now === 1 ? '' : 's'} now`].join('; ');
}

/**
 * `edge-proxy rules add FILE...` (add these files, or replace the running ones of their base
 * names) and `edge-proxy rules remove NAME...` (remove these running files): the proxy's other
 * files keep running, and the whole set that results runs as a new version. Exit statuses as for
 * `rules push`; a NAME that does not run is refused (1, E_RULES_NO_FILE).
 */
export async function rulesChange(
  verb: 'add' | 'remove',
  args: string[],
  targetOf: () => AdminTarget,
  out: Print,
  err: Print,
  opts: RemoteOptions = {},
): Promise<number> {
  let byName = new Map<string, string>();
  let texts = new Map<string, string>();
  const remove: string[] = [];
  if (verb === 'add') {
    const read = readFiles(args, err);
    if (typeof read === 'number') return read;
    ({ byName, texts } = read);
  } else {
    for (const name of args) {
      if (name !== basename(name) || !name.endsWith('.rules')) {
        err(`${name}: give the name of a running rules file, such as alarms.rules, not a path (E_USAGE)\n`);
        return 2;
      }
      remove.push(name);
    }
  }
  const target = targetOf();
  const data = JSON.stringify({
    ...(verb === 'add' ? { files: Object.fromEntries(texts) } : { remove }),
    ...(opts.allowEmpty ? { allowEmpty: true } : {}),
  });
  const path = opts.dryRun ? '/api/v1/rules/validate' : '/api/v1/rules';
  const a = await call(target, err, () => adminRequest(target, 'PATCH', path, { type: 'application/json', data }));
  if (typeof a === 'number') return a;
  if (a.status === 200) {
    out(
      a.body.changed === false
        ? `unchanged: ${describeVersion(a.body)} is already running\n`
        : opts.dryRun
          ? `dry run: ${describeVersion(a.body)} would run; ${describeChange(a.body)}; nothing changed\n`
          : `${verb === 'add' ? 'added' : 'removed'}: ${describeVersion(a.body)} running; ${describeChange(a.body)}\n`,
    );
    return 0;
  }
  if (a.status === 422 && Array.isArray(a.body.errors)) return printErrors(a, byName, texts, err);
  if (a.body.code === 'E_RULES_EMPTY') {
    err(`the set this leaves defines no rule: it would remove every rule, so it was refused; nothing changed (E_RULES_EMPTY)\n`);
    err(`to run no rules on purpose: edge-proxy rules ${verb} --allow-empty ${verb === 'add' ? 'FILE' : 'NAME'}...\n`);
    return 1;
  }
  return failure(a, target, err);
}

/** `edge-proxy rules rollback`: the set before the running one runs again, as a new version. */
export async function rulesRollback(targetOf: () => AdminTarget, out: Print, err: Print): Promise<number> {
  const target = targetOf();
  const a = await call(target, err, () => adminRequest(target, 'POST', '/api/v1/rules/rollback'));
  if (typeof a === 'number') return a;
  if (a.status === 200) {
    out(`rolled back: ${describeVersion(a.body)} running\n`);
    return 0;
  }
  if (a.status === 422 && Array.isArray(a.body.errors)) {
    // The earlier set no longer passes the current limits (rules.maxRules, rules.maxFileBytes).
    err(formatErrors({ errors: a.body.errors as RuleError[], sources: new Map() }) + '\n');
    return 1;
  }
  return failure(a, target, err);
}
