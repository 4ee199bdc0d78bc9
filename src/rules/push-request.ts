import { isUtf8 } from 'node:buffer';
import { EdgeError } from '../core/errors.js';
import type { RuleError } from './dsl/errors.js';
import type { RuleFile } from './loader.js';
import type { RulesOutcome } from './store.js';

/** The largest push body read, JSON escaping included: far above any sane ruleset, small for the heap. */
export const MAX_PUSH_BYTES = 16 * 2 ** 20;

/** The most files one push may carry: each is a file written, and a set is a handful of them. */
const MAX_PUSH_FILES = 1000;

/** The name a single pushed text is stored under (docs/rules.md, Pushing rules). */
const PUSHED_FILE = 'pushed.rules';

/** A push body that cannot be read as rules files; `status` is the HTTP answer it gets. */
export class PushRequestError extends EdgeError {
  constructor(message: string, status: 400 | 413 = 400) {
    super('E_RULES_REQUEST', message, { status });
    this.name = 'PushRequestError';
  }
}

type BodyKind = 'json' | 'text' | 'auto';

/** What an HTTP content type makes of a body: JSON for application/json (and +json), else text. */
export function bodyKindOf(contentType: string | undefined): BodyKind {
  const type = (contentType ?? '').split(';')[0]!.trim().toLowerCase();
  return type === 'application/json' || type.endsWith('+json') ? 'json' : 'text';
}

// Plain names only: no directories, no hidden files, nothing a shell or the watcher would trip on.
const FILE_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]*\.rules$/;
const MAX_NAME_BYTES = 200;

/** The file names of a push that cannot be stored in the rules directory, as rule errors. */
export function badFileNames(files: RuleFile[]): RuleError[] {
  const errors: RuleError[] = [];
  for (const f of files) {
    if (FILE_NAME.test(f.name) && Buffer.byteLength(f.name) <= MAX_NAME_BYTES) continue;
    errors.push({
      file: f.name,
      line: 1,
      col: 1,
      code: 'E_RULE_FILE_NAME',
      message: `a rules file name is letters, digits, ".", "_" and "-", at most ${MAX_NAME_BYTES} bytes, does not start with "." or "-", and ends with ".rules"`,
    });
  }
  return errors;
}

/** Where in the text a JSON.parse error points, as line and column. */
function jsonErrorPlace(text: string, err: Error): string {
  const m = /position (\d+)/.exec(err.message);
  if (!m) return '';
  const at = Number(m[1]);
  const before = text.slice(0, at).split('\n');
  return ` at line ${before.length}, column ${before[before.length - 1]!.length + 1}`;
}

/** What a push body asks for: the files, and whether a set that defines no rule may replace the running one. */
export interface PushBody {
  files: RuleFile[];
  /** `"allowEmpty": true` in a JSON body; a text body never says it (the admin API's ?allowEmpty=1 does) */
  allowEmpty: boolean;
}

/**
 * The rules files a push carries: a text is one file stored as pushed.rules; JSON is
 * {"files": {"name.rules": "text", ...}, "allowEmpty": true|false}. `auto` (the cloud topic) reads
 * JSON when the body parses as a JSON object, else text.
 */
export function pushFromBody(body: Buffer, kind: BodyKind): PushBody {
  if (body.length > MAX_PUSH_BYTES)
    throw new PushRequestError(`the body is ${body.length} bytes; a push may carry at most ${MAX_PUSH_BYTES}`, 413);
  if (!isUtf8(body)) throw new PushRequestError('the body is not UTF-8 text');
  const text = body.toString('utf8');
  if (kind === 'auto') {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      return { files: [{ name: PUSHED_FILE, text }], allowEmpty: false };
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed))
      return { files: [{ name: PUSHED_FILE, text }], allowEmpty: false };
    return pushOfJson(parsed as Record<string, unknown>);
  }
  if (kind === 'text') return { files: [{ name: PUSHED_FILE, text }], allowEmpty: false };
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new PushRequestError(`the body is not valid JSON${jsonErrorPlace(text, err as Error)}: ${(err as Error).message}`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed))
    throw new PushRequestError('the body must be a JSON object {"files": {"name.rules": "text", ...}}');
  return pushOfJson(parsed as Record<string, unknown>);
}

function pushOfJson(body: Record<string, unknown>): PushBody {
  const extra = Object.keys(body).filter((k) => k !== 'files' && k !== 'allowEmpty');
  if (extra.length > 0)
    throw new PushRequestError(
      `unknown field${extra.length === 1 ? '' : 's'} ${extra.map((k) => JSON.stringify(k)).join(', ')}: the body is {"files": {"name.rules": "text", ...}, "allowEmpty": false}`,
    );
  if (body.allowEmpty !== undefined && typeof body.allowEmpty !== 'boolean')
    throw new PushRequestError(`"allowEmpty" is ${JSON.stringify(body.allowEmpty)}; it is true or false`);
  return { files: filesOf(body.files), allowEmpty: body.allowEmpty === true };
}

/** The `files` of a JSON body: an object of "name.rules": "text". */
function filesOf(files: unknown): RuleFile[] {
  if (files === null || typeof files !== 'object' || Array.isArray(files))
    throw new PushRequestError('"files" must be an object of "name.rules": "text"');
  const entries = Object.entries(files as Record<string, unknown>);
  if (entries.length > MAX_PUSH_FILES)
    throw new PushRequestError(`the push carries ${entries.length} files; at most ${MAX_PUSH_FILES} are taken`);
  const out: RuleFile[] = [];
  for (const [name, text] of entries) {
    if (typeof text !== 'string')
      throw new PushRequestError(
        `files[${JSON.stringify(name)}] is ${text === null ? 'null' : Array.isArray(text) ? 'an array' : `a ${typeof text}`}, not the file's text`,
      );
    out.push({ name, text });
  }
  return out;
}

/** What a change of some files asks for (PATCH /api/v1/rules): files to add or replace, names to remove. */
export interface ChangeBody {
  files: RuleFile[];
  remove: string[];
  allowEmpty: boolean;
}

/**
 * The body of a change of some files of the running set: JSON whatever its content type,
 * {"files": {"name.rules": "text", ...}, "remove": ["name.rules", ...], "allowEmpty": false}, each
 * field optional but one of `files` and `remove` not empty (docs/rules.md, Adding and removing files).
 */
export function changeFromBody(body: Buffer): ChangeBody {
  if (body.length > MAX_PUSH_BYTES)
    throw new PushRequestError(`the body is ${body.length} bytes; a push may carry at most ${MAX_PUSH_BYTES}`, 413);
  if (!isUtf8(body)) throw new PushRequestError('the body is not UTF-8 text');
  const text = body.toString('utf8');
  const shape = 'the body is {"files": {"name.rules": "text", ...}, "remove": ["name.rules", ...], "allowEmpty": false}';
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new PushRequestError(`the body is not valid JSON${jsonErrorPlace(text, err as Error)}: ${(err as Error).message}; ${shape}`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed))
    throw new PushRequestError(`the body must be a JSON object: ${shape}`);
  const o = parsed as Record<string, unknown>;
  const extra = Object.keys(o).filter((k) => k !== 'files' && k !== 'remove' && k !== 'allowEmpty');
  if (extra.length > 0)
    throw new PushRequestError(`unknown field${extra.length === 1 ? '' : 's'} ${extra.map((k) => JSON.stringify(k)).join(', ')}: ${shape}`);
  if (o.allowEmpty !== undefined && typeof o.allowEmpty !== 'boolean')
    throw new PushRequestError(`"allowEmpty" is ${JSON.stringify(o.allowEmpty)}; it is true or false`);
  const files = o.files === undefined ? [] : filesOf(o.files);
  if (o.remove !== undefined && (!Array.isArray(o.remove) || o.remove.some((n) => typeof n !== 'string')))
    throw new PushRequestError('"remove" must be an array of file names, such as ["old.rules"]');
  const remove = [...new Set((o.remove ?? []) as string[])];
  if (remove.length > MAX_PUSH_FILES)
    throw new PushRequestError(`the change removes ${remove.length} files; at most ${MAX_PUSH_FILES} are taken`);
  if (files.length === 0 && remove.length === 0) throw new PushRequestError(`the change names no file to add, replace or remove: ${shape}`);
  const both = files.filter((f) => remove.includes(f.name)).map((f) => f.name);
  if (both.length > 0)
    throw new PushRequestError(
      `${both.map((n) => JSON.stringify(n)).join(', ')} ${both.length === 1 ? 'is' : 'are'} both in "files" and in "remove": a change either adds (or replaces) a file or removes it`,
    );
  return { files, remove, allowEmpty: o.allowEmpty === true };
}

/**
 * The answer to a push, a validation or a rollback: 200 with the version, the files that run and
 * those of the previous set it replaced; 422 with every error.
 */
export function outcomeBody(o: RulesOutcome): { status: 200 | 422; body: Record<string, unknown> } {
  return o.ok
    ? {
        status: 200,
        body: {
          version: o.version,
          sha256: o.sha256,
          rules: o.rules,
          changed: o.changed,
          files: o.files,
          replaced: o.replaced,
          ...(o.added ? { added: o.added } : {}),
          ...(o.removed ? { removed: o.removed } : {}),
          ...(o.discarded ? { discarded: o.discarded } : {}),
        },
      }
    : {
        status: 422,
        body: { errors: o.errors.map((e) => ({ file: e.file, line: e.line, col: e.col, code: e.code, message: e.message })) },
      };
}
