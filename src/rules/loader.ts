import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { ruleChecker, type CheckedRule } from './dsl/checker.js';
import { byPlace, formatRuleError, type RuleError } from './dsl/errors.js';
import { parseRulesStepwise } from './dsl/parser.js';
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

/** What parsing and checking a ruleset found. `checked` is empty when there is any error. */
interface Analysis {
  checked: CheckedRule[];
  errors: RuleError[];
  rules: number;
}

const byName = (files: RuleFile[]): RuleFile[] => [...files].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));

/**
 * Parsing and checking a whole ruleset, one rule at a time: the generator yields after each rule
 * parsed and after each rule checked, and fills `out`. Every error of every file is reported.
 */
function* analyzeSteps(files: RuleFile[], limits: RuleLimits, out: Analysis): Generator<void, void, undefined> {
  const errors = out.errors;
  const parsed: Rule[] = [];
  for (const f of byName(files)) {
    const bytes = Buffer.byteLength(f.text);
    if (bytes > limits.maxFileBytes) {
      errors.push({
        file: f.name,
        line: 1,
        col: 1,
        code: 'E_RULE_TOO_LARGE',
        message: `the file is ${bytes} bytes; rules.maxFileBytes is ${limits.maxFileBytes}`,
      });
      continue;
    }
    for (const rule of parseRulesStepwise(f.text, f.name, errors)) {
      parsed.push(rule);
      yield;
    }
  }
  const seen = new Map<string, Rule>();
  for (const r of parsed) {
    const first = seen.get(r.name);
    if (first)
      errors.push({
        file: r.file,
        line: r.pos.line,
        col: r.pos.col,
        code: 'E_RULE_DUPLICATE',
        message: `a rule named "${r.name}" already exists at ${first.file}:${first.pos.line}:${first.pos.col}`,
      });
    else seen.set(r.name, r);
  }
  if (parsed.length > limits.maxRules) {
    const r = parsed[limits.maxRules]!;
    errors.push({
      file: r.file,
      line: r.pos.line,
      col: r.pos.col,
      code: 'E_RULE_TOO_LARGE',
      message: `the ruleset has ${parsed.length} rules; rules.maxRules is ${limits.maxRules}`,
    });
  }
  const check = ruleChecker(errors);
  for (const rule of parsed) {
    const c = check(rule);
    if (c) out.checked.push(c);
    yield;
  }
  errors.sort(byPlace);
  out.rules = parsed.length;
  if (errors.length > 0) out.checked = [];
}

/** Parses and checks a whole ruleset at once: every error of every file is reported. */
export function analyzeRuleset(files: RuleFile[], limits: RuleLimits): Analysis {
  const out: Analysis = { checked: [], errors: [], rules: 0 };
  for (const _ of analyzeSteps(files, limits, out)) {
    /* all at once */
  }
  return out;
}

/**
 * The same, a few milliseconds at a time, giving the event loop back in between: a set pushed
 * while messages flow is read without holding them up, however large it is.
 */
export async function analyzeInSlices(files: RuleFile[], limits: RuleLimits, sliceMs = 2, signal?: AbortSignal): Promise<Analysis> {
  const out: Analysis = { checked: [], errors: [], rules: 0 };
  let sliceStart = performance.now();
  for (const _ of analyzeSteps(files, limits, out)) {
    if (performance.now() - sliceStart < sliceMs) continue;
    await new Promise<void>((resolve) => setImmediate(resolve));
    signal?.throwIfAborted();
    sliceStart = performance.now();
  }
  return out;
}

/** The files' texts by name, for code frames. */
export function sourcesOf(files: RuleFile[]): Map<string, string> {
  return new Map(files.map((f) => [f.name, f.text]));
}

/** Compiles a whole ruleset: every error of every file is reported, and nothing runs unless there is none. */
export function compileRuleset(files: RuleFile[], limits: RuleLimits, engine: EngineOptions): CompileResult {
  const a = analyzeRuleset(files, limits);
  return {
    ruleset: a.errors.length === 0 ? new RuleSet(a.checked, engine) : null,
    errors: a.errors,
    sources: sourcesOf(files),
    rules: a.rules,
  };
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
