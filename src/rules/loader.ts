import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { checkRules, type CheckedRule } from './dsl/checker.js';
import { formatRuleError, type RuleError } from './dsl/errors.js';
import { parseRules } from './dsl/parser.js';
import { RuleSet, type EngineOptions } from './engine.js';
import type { Rule } from './dsl/ast.js';

export interface RuleFile {
  name: string;
  text: string;
}

export interface RuleLimits {
  maxFileBytes: number;
  maxRules: number;
}

export interface CompileResult {
  ruleset: RuleSet | null;
  errors: RuleError[];
  /** the files' texts by name, for code frames */
  sources: Map<string, string>;
  rules: number;
}

/**
 * What parsing and checking a ruleset found: plain data (no closures), so that it can be made in
 * a worker thread and handed over. `checked` is empty when there is any error.
 */
export interface Analysis {
  checked: CheckedRule[];
  errors: RuleError[];
  rules: number;
}

/** Parses and checks a whole ruleset: every error of every file is reported. */
export function analyzeRuleset(files: RuleFile[], limits: RuleLimits): Analysis {
  const errors: RuleError[] = [];
  const parsed: Rule[] = [];
  for (const f of [...files].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    const bytes = Buffer.byteLength(f.text);
    if (bytes > limits.maxFileBytes) {
      errors.push({ file: f.name, line: 1, col: 1, code: 'E_RULE_TOO_LARGE', message: `the file is ${bytes} bytes; rules.maxFileBytes is ${limits.maxFileBytes}` });
      continue;
    }
    parsed.push(...parseRules(f.text, f.name, errors));
  }
  const seen = new Map<string, Rule>();
  for (const r of parsed) {
    const first = seen.get(r.name);
    if (first) errors.push({ file: r.file, line: r.pos.line, col: r.pos.col, code: 'E_RULE_DUPLICATE', message: `a rule named "${r.name}" already exists at ${first.file}:${first.pos.line}:${first.pos.col}` });
    else seen.set(r.name, r);
  }
  if (parsed.length > limits.maxRules) {
    const r = parsed[limits.maxRules]!;
    errors.push({ file: r.file, line: r.pos.line, col: r.pos.col, code: 'E_RULE_TOO_LARGE', message: `the ruleset has ${parsed.length} rules; rules.maxRules is ${limits.maxRules}` });
  }
  const checked = checkRules(parsed, errors);
  errors.sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : a.line - b.line || a.col - b.col));
  return { checked: errors.length === 0 ? checked : [], errors, rules: parsed.length };
}

/** The files' texts by name, for code frames. */
export function sourcesOf(files: RuleFile[]): Map<string, string> {
  return new Map(files.map((f) => [f.name, f.text]));
}

/** Compiles a whole ruleset: every error of every file is reported, and nothing runs unless there is none. */
export function compileRuleset(files: RuleFile[], limits: RuleLimits, engine: EngineOptions): CompileResult {
  const a = analyzeRuleset(files, limits);
  return { ruleset: a.errors.length === 0 ? new RuleSet(a.checked, engine) : null, errors: a.errors, sources: sourcesOf(files), rules: a.rules };
}

/** The `*.rules` files of a directory, in byte order of their names; none when it does not exist. */
export function readRulesDir(dir: string): RuleFile[] {
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith('.rules') && statSync(join(dir, n)).isFile());
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  return names.sort().map((name) => ({ name, text: readFileSync(join(dir, name), 'utf8') }));
}

/** Every error as `file:line:col: code: message` with its code frame, one after the other. */
export function formatErrors(result: Pick<CompileResult, 'errors' | 'sources'>, pathOf: (file: string) => string = (f) => f): string {
  const split = new Map<string, string[]>();
  const linesOf = (file: string): string[] | undefined => {
    if (!split.has(file)) split.set(file, result.sources.get(file)?.split('\n') ?? []);
    return split.get(file);
  };
  return result.errors.map((e) => formatRuleError({ ...e, file: pathOf(e.file) }, linesOf(e.file))).join('\n');
}
