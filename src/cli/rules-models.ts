// What `rules check` and `rules test` know of models. check reads the models directory's yaml files
// only (no ONNX Runtime: a check runs on any machine, in a second) and warns about an infer() whose
// model is not there; test --models runs the models for real, through the proxy's own inference
// service, and hands each result back to be evaluated as the derived message the proxy makes.

import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { closestName } from '../core/did-you-mean.js';
import type { Config } from '../config/types.js';
import { formatRuleError, type RuleError } from '../rules/dsl/errors.js';
import { parseRulesStepwise } from '../rules/dsl/parser.js';
import type { RuleFile } from '../rules/loader.js';
import { formatSpecProblem, MAX_SPEC_BYTES, parseModelSpec } from '../inference/model-spec.js';
import type { InferenceService } from '../inference/service.js';
import type { InferenceEvents, InferenceResult, InferRequest } from '../inference/runner.js';
import type { ModelRegistryEvents } from '../inference/registry.js';
import { plural } from './terminal.js';

/** The registry's own rule for which files make a model (inference/registry.ts). */
const MODEL_FILE = /^(.+)\.(onnx|yaml|yml)$/;
const MODEL_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

export interface ModelsDir {
  /** as the user gave it, or as the configuration resolved it */
  dir: string;
  exists: boolean;
  /** pairs whose yaml reads without a problem, sorted */
  known: string[];
  /** model name -> why its pair cannot load (a missing half, the yaml's first problem) */
  unusable: Map<string, string>;
}

/**
 * The models of a directory as far as their yaml tells: the ONNX file itself is only checked to be
 * there. A model that passes here may still fail to load in the proxy (a tensor the yaml names is
 * not in the file), which `rules test --models` and the proxy's log say.
 */
export function readModelsDir(dir: string): ModelsDir {
  let files: string[];
  try {
    files = readdirSync(dir);
  } catch {
    return { dir, exists: false, known: [], unusable: new Map() };
  }
  const stems = new Set<string>();
  for (const f of files) {
    const m = MODEL_FILE.exec(f);
    if (m?.[1] && MODEL_NAME.test(m[1])) stems.add(m[1]);
  }
  const known: string[] = [];
  const unusable = new Map<string, string>();
  for (const name of [...stems].sort()) {
    const yamlName = files.includes(`${name}.yaml`) ? `${name}.yaml` : files.includes(`${name}.yml`) ? `${name}.yml` : null;
    if (!files.includes(`${name}.onnx`)) {
      unusable.set(name, `${yamlName} has no ${name}.onnx beside it`);
      continue;
    }
    if (!yamlName) {
      unusable.set(name, `${name}.onnx has no ${name}.yaml beside it`);
      continue;
    }
    const file = join(dir, yamlName);
    let text: string;
    try {
      if (statSync(file).size > MAX_SPEC_BYTES) {
        unusable.set(name, `${yamlName} is larger than ${MAX_SPEC_BYTES} bytes`);
        continue;
      }
      text = readFileSync(file, 'utf8');
    } catch (e) {
      unusable.set(name, `cannot read ${file}: ${(e as Error).message}`);
      continue;
    }
    const { spec, problems } = parseModelSpec(text, file, name, 'unversioned');
    if (spec) known.push(name);
    else
      unusable.set(
        name,
        `${problems[0] ? formatSpecProblem(problems[0]) : `${file} cannot be read`}${problems.length > 1 ? ` (and ${plural(problems.length - 1, 'more problem')})` : ''}`,
      );
  }
  return { dir, exists: true, known, unusable };
}

/** An infer() with a literal model name, at the name. */
export interface InferSite {
  file: string;
  line: number;
  col: number;
  model: string;
}

/**
 * Every infer("<name>") of the files' rules that are not disabled, found by parsing them apart from
 * the check so that a file with errors still has its infer() calls looked at. A model named by an
 * expression is left out: only running it tells.
 */
export function inferSites(files: readonly RuleFile[], maxFileBytes: number): InferSite[] {
  const sites: InferSite[] = [];
  for (const f of files) {
    if (Buffer.byteLength(f.text) > maxFileBytes) continue;
    const ignored: RuleError[] = [];
    for (const rule of parseRulesStepwise(f.text, f.name, ignored)) {
      // The proxy never runs a disabled rule's actions: a model not there yet is why some are disabled.
      if (rule.disabled) continue;
      for (const action of rule.then) {
        if (action.name !== 'infer') continue;
        const arg = action.args.find((a) => a.name === 'model') ?? (action.args[0]?.name === undefined ? action.args[0] : undefined);
        const v = arg?.value;
        if (v?.kind === 'literal' && typeof v.value === 'string')
          sites.push({ file: f.name, line: v.pos.line, col: v.pos.col, model: v.value });
      }
    }
  }
  return sites;
}

/** Why the proxy would have no model for this infer(), or null when the directory has it. */
export function missingModel(site: InferSite, models: ModelsDir): string | null {
  const name = site.model;
  if (models.known.includes(name)) return null;
  const head = `infer("${name}"):`;
  if (!models.exists) return `${head} no models directory ${models.dir}, so no model "${name}" to run (--models DIR, or models.dir)`;
  const why = models.unusable.get(name);
  if (why !== undefined) return `${head} model "${name}" in ${models.dir} cannot be loaded: ${why}`;
  // A typo of a model whose files are there but do not load is still the likeliest meaning.
  const close = closestName(name, [...models.known, ...models.unusable.keys()]);
  const there = models.known.length > 0 ? `models there: ${models.known.join(', ')}` : 'the directory holds no usable model';
  return `${head} no model "${name}" in ${models.dir}${close ? `; did you mean "${close}"?` : ''} (${there})`;
}

/** `file:line:col: warning: message`, then the line and a caret, as errors are shown. */
export function formatWarning(site: InferSite, message: string, sources: ReadonlyMap<string, string>): string {
  const lines = sources.get(site.file)?.split('\n');
  // The code frame of an error, under a warning's head.
  const frame = formatRuleError({ file: site.file, line: site.line, col: site.col, code: 'E_RULE_ARG', message: '' }, lines)
    .split('\n')
    .slice(1);
  return [`${site.file}:${site.line}:${site.col}: warning: ${message}`, ...frame].join('\n');
}

/** How long a model may take to answer one message's inputs before `rules test` goes on without. */
const RESULT_TIMEOUT_MS = 30_000;

/**
 * The proxy's inference service, run by `rules test`: every infer() of a message is submitted as the
 * router submits it, and `settle()` waits until each input has its outcome (a result, handed to
 * `deliver`, or an error the log lines on stderr explain), so that the output is in message order.
 */
export class TestInference {
  /** inputs queued, and those of them that had their outcome (a result, shed, or an error) */
  private expected = 0;
  private outcomes = 0;
  /** inside service.submit(): an error then is the refusal of that input, which submit() returns */
  private submitting = false;
  private wake: (() => void) | null = null;
  private readonly keepAlive: NodeJS.Timeout;

  private constructor(
    private readonly service: InferenceService,
    private readonly err: (s: string) => void,
  ) {
    // The worker does not hold the process open (a proxy has its sockets for that): this does.
    this.keepAlive = setInterval(() => {}, 1 << 30);
  }

  static async start(
    dir: string,
    cfg: Pick<Config, 'inference'>,
    deliver: (r: InferenceResult) => void,
    err: (s: string) => void,
  ): Promise<TestInference> {
    // Imported here: `rules check` and a `rules test` without models never start the runtime's worker.
    const { InferenceService } = await import('../inference/service.js');
    // What the proxy would log at warn and above (a model that does not load, a batch that fails), as lines.
    const log = pino(
      { level: 'warn', base: null, timestamp: false },
      {
        write: (line: string) => {
          try {
            const { msg, err: why } = JSON.parse(line) as { msg?: string; err?: unknown };
            const detail = typeof why === 'string' && !String(msg).includes(why) ? `: ${why}` : '';
            err(`${msg ?? line.trim()}${detail}\n`);
          } catch {
            err(line);
          }
        },
      },
    );
    let self: TestInference | null = null;
    const outcome = (): void => self?.outcome();
    const events: InferenceEvents & ModelRegistryEvents = {
      queued: () => {
        if (self) self.expected++;
      },
      result: outcome,
      shed: outcome,
      error: () => {
        if (self && !self.submitting) outcome();
      },
      batch: () => {},
      windowEvicted: () => {},
      windowBytes: () => {},
      queueBytes: () => {},
      loaded: () => {},
      loadFailed: () => {},
    };
    const service = new InferenceService({ models: { dir }, inference: cfg.inference }, events, log, (r) => deliver(r));
    self = new TestInference(service, err);
    try {
      await service.start();
    } catch (e) {
      await self.stop();
      throw e;
    }
    return self;
  }

  /** As the router submits: null when the input was taken, else why not. */
  submit(req: InferRequest): string | null {
    // The runner says what it queued (a window-fed model queues only once the window is full).
    this.submitting = true;
    try {
      return this.service.submit(req);
    } finally {
      this.submitting = false;
    }
  }

  /** Waits until every input taken so far has its outcome, results delivered (and what they set off). */
  async settle(): Promise<void> {
    const deadline = Date.now() + RESULT_TIMEOUT_MS;
    while (this.outcomes < this.expected) {
      const left = deadline - Date.now();
      if (left <= 0) {
        this.err(
          `no outcome for ${plural(this.expected - this.outcomes, 'input')} after ${RESULT_TIMEOUT_MS / 1000} s; going on without\n`,
        );
        this.outcomes = this.expected;
        return;
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.keepAlive);
    await this.service.stop();
  }

  private outcome(): void {
    this.outcomes++;
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }
}

/** The models directory exists and is a directory (for --models, which the user names). */
export function isDirectory(dir: string): boolean {
  return existsSync(dir) && statSync(dir).isDirectory();
}
