import { createHash } from 'node:crypto';
import { existsSync, watch, type FSWatcher } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { isRulesDirLockName } from '../core/data-lock.js';
import { EdgeError, RuleLoadError } from '../core/errors.js';
import { byPlace, type RuleError } from './dsl/errors.js';
import { RuleSet, type EngineOptions } from './engine.js';
import { analyzeInSlices, compileRuleset, formatErrors, readRulesDir, sourcesOf, type RuleFile, type RuleLimits } from './loader.js';
import { badFileNames } from './push-request.js';
import { RulesDirectory, type DiscardedFile } from './rules-dir.js';
import { RulesHistory, type RulesVersion } from './history.js';

export type { RulesVersion } from './history.js';

/** The whole set a change of some files makes, and the names it adds and removes. */
interface ComposedChange {
  files: RuleFile[];
  added: string[];
  removed: string[];
}

/** Where a change of the rules came from, for logs and metrics. */
type RulesSource = 'api' | 'cloud' | 'file change' | 'rollback';

/**
 * The answer to a push, a validation or a rollback (docs/rules.md, Pushing rules). `files` are the
 * names of the set that runs (or would run); `replaced` the names of the previous set's files that
 * it removes or changes. A change of some files also says which names it `added` (new to the set)
 * and `removed`.
 */
export type RulesOutcome =
  | {
      ok: true;
      version: number;
      sha256: string;
      rules: number;
      changed: boolean;
      files: string[];
      replaced: string[];
      added?: string[];
      removed?: string[];
      /** files of the directory that never ran and that the push replaced; a copy of each is in <dataDir>/rules-discarded */
      discarded?: string[];
    }
  | { ok: false; errors: RuleError[] };

/** A change of some files of the running set (docs/rules.md, Adding and removing files). */
export interface RulesChange {
  /** files added, or replacing the running file of their name */
  files: RuleFile[];
  /** names of running files removed */
  remove: string[];
}

/** How a push is taken. */
export interface PushOptions {
  /** a set that defines no rule may replace the running one; without it such a push is refused (E_RULES_EMPTY) */
  allowEmpty?: boolean;
}

interface RulesStoreOptions {
  dir: string;
  dataDir: string;
  limits: RuleLimits;
  engine: EngineOptions;
  log: Logger;
  /** a set with errors was refused (reload or push): nothing changed */
  onReloadFailure(): void;
  onSwap(version: RulesVersion): void;
  /** how each push ended, for the metrics */
  onPush?(source: RulesSource, result: 'applied' | 'unchanged' | 'rejected'): void;
}

const DEBOUNCE_MS = 250;
const WARM_UP_ROUNDS = 3;
const HISTORY_DIR = 'rules-history';
const PUSH_JOURNAL = 'rules-push.json';
const DISCARD_DIR = 'rules-discarded';

/** SHA-256 over the files' names and texts, in name order: equal content, equal hash. */
function contentHash(files: RuleFile[]): string {
  const h = createHash('sha256');
  for (const f of [...files].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)))
    h.update(f.name).update('\0').update(f.text).update('\0');
  return h.digest('hex');
}

/**
 * The rules directory as the one source of truth for the running set (docs/rules.md, Where rules live): loaded at
 * start, reloaded whole when a file changes, replaced whole by a push or a rollback, each accepted
 * content a new version kept in <dataDir>/rules-history/. A set with errors changes nothing.
 *
 * Changes are applied one at a time. A set is parsed, checked and compiled a few milliseconds at
 * a time, so messages keep flowing under the running set meanwhile; the swap itself replaces one
 * reference between two messages and carries window and throttle state over for unchanged rules.
 */
export class RulesStore {
  /** the running set; the router reads it for every message */
  readonly holder: { current: RuleSet | null } = { current: null };
  private running: RulesVersion | null = null;
  private watcher: FSWatcher | null = null;
  private timer: NodeJS.Timeout | null = null;
  private writing = false;
  /** a file event came while a push wrote the directory: look again once it is done */
  private changedWhileWriting = false;
  private stopped = false;
  private warming: Promise<void> | null = null;
  private readonly warmUpAbort = new AbortController();
  private queue: Promise<unknown> = Promise.resolve();
  private readonly historyDir: string;
  private readonly history: RulesHistory;
  private readonly directory: RulesDirectory;

  constructor(private readonly opts: RulesStoreOptions) {
    this.historyDir = join(opts.dataDir, HISTORY_DIR);
    this.history = new RulesHistory(this.historyDir, opts.log);
    this.directory = new RulesDirectory(opts.dir, join(opts.dataDir, PUSH_JOURNAL), opts.log, join(opts.dataDir, DISCARD_DIR));
  }

  get version(): RulesVersion | null {
    return this.running;
  }

  /** Load the directory; a set with errors stops the start (RuleLoadError, every error listed). */
  start(): void {
    this.directory.recover();
    const files = readRulesDir(this.opts.dir);
    const result = compileRuleset(files, this.opts.limits, this.opts.engine);
    if (result.errors.length > 0)
      throw new RuleLoadError(
        formatErrors(result, (f) => join(this.opts.dir, f)),
        result.errors.length,
      );
    this.swap(files, result.ruleset, result.rules, 'start');
    this.watch();
    if (result.rules > 0) this.warming = this.warmUp(files);
  }

  /**
   * Read and compile the running set again in the background, a slice at a time, and throw the
   * result away. The code a push runs is then already optimized by the JavaScript engine when
   * the first push comes, which is otherwise several times slower than later ones (measured:
   * 450 ms instead of 70 for 1,000 rules under load), and holds messages up longer.
   */
  private async warmUp(files: RuleFile[]): Promise<void> {
    // It gives way to the first change or to a stop: a push does not wait for it.
    const signal = this.warmUpAbort.signal;
    const started = performance.now();
    try {
      for (let round = 0; round < WARM_UP_ROUNDS; round++) {
        const a = await analyzeInSlices(files, this.opts.limits, undefined, signal);
        await RuleSet.build(a.checked, this.opts.engine, undefined, signal);
      }
      this.opts.log.debug({ tookMs: Math.round(performance.now() - started) }, 'rules compiler warmed up');
    } catch {
      this.opts.log.debug({ tookMs: Math.round(performance.now() - started) }, 'rules compiler warm-up given up for a change or a stop');
    }
  }

  /** One change at a time: a push waits for a reload in progress, and the other way round. */
  private serial<T>(op: () => Promise<T>): Promise<T> {
    this.warmUpAbort.abort();
    if (this.stopped) return Promise.reject(new EdgeError('E_STOPPING', 'the proxy is stopping; nothing changed. Push again once it runs'));
    const next = this.queue.then(op, op);
    this.queue = next.catch(() => undefined);
    return next;
  }

  /**
   * Parse and check a slice at a time. For a pushed set, file names that cannot be stored in the
   * directory are errors too (the directory's own files already have names it holds).
   */
  private async analyze(
    files: RuleFile[],
    pushed: RuleFile[],
  ): Promise<{ errors: RuleError[]; ruleset: () => Promise<RuleSet>; rules: number }> {
    const a = await analyzeInSlices(files, this.opts.limits);
    const named = badFileNames(pushed);
    const errors = named.length === 0 ? a.errors : [...named, ...a.errors].sort(byPlace);
    return { errors, rules: a.rules, ruleset: () => RuleSet.build(a.checked, this.opts.engine) };
  }

  private answer(v: RulesVersion, changed: boolean, replaced: string[], discarded: DiscardedFile[] = []): RulesOutcome {
    return {
      ok: true,
      version: v.version,
      sha256: v.sha256,
      rules: v.rules,
      changed,
      files: Object.keys(v.files).sort(),
      replaced,
      ...(discarded.length > 0 ? { discarded: discarded.map((d) => d.name) } : {}),
    };
  }

  /** The running set's files that `files` would remove or change, by name. */
  private replacedBy(files: RuleFile[]): string[] {
    const next = new Map(files.map((f) => [f.name, f.text]));
    return Object.entries(this.running?.files ?? {})
      .filter(([name, text]) => next.get(name) !== text)
      .map(([name]) => name)
      .sort();
  }

  /**
   * A push that defines no rule would remove every rule: an empty body, a cleared retained message,
   * a script that globbed nothing. It is refused unless asked for (docs/rules.md, Pushing rules).
   */
  private refuseEmpty(files: RuleFile[], source: RulesSource | 'validation', change = false): EdgeError {
    const running = this.running?.version ?? 0;
    const count = `${files.length} file${files.length === 1 ? '' : 's'}`;
    const what = change
      ? `leaves ${files.length === 0 ? 'no rules file' : `${count} but no rule`}`
      : files.length === 0
        ? 'carries no rules file'
        : `has ${count} but no rule`;
    const how = change
      ? 'send the change with "allowEmpty": true (PATCH /api/v1/rules), or edge-proxy rules add|remove --allow-empty'
      : source === 'cloud'
        ? 'publish {"files": {}, "allowEmpty": true} on rules/set, without the retain flag'
        : 'push {"files": {}, "allowEmpty": true} (a text body: ?allowEmpty=1), or edge-proxy rules push --allow-empty';
    const err = new EdgeError(
      'E_RULES_EMPTY',
      `the ${change ? 'change' : 'push'} ${what}: it would remove every rule, so it is refused; nothing changed, version ${running} keeps running. To run no rules on purpose, ${how}`,
    );
    if (source !== 'validation') {
      this.opts.onPush?.(source, 'rejected');
      this.opts.log.warn({ source, files: files.map((f) => f.name), code: err.code }, err.message);
    }
    return err;
  }

  private refuse(files: RuleFile[], errors: RuleError[], source: RulesSource): RulesOutcome {
    this.opts.onReloadFailure();
    if (source !== 'file change') this.opts.onPush?.(source, 'rejected');
    const where = source === 'file change' ? (f: string) => join(this.opts.dir, f) : (f: string) => f;
    this.opts.log.error(
      { source, errors: errors.length, listing: formatErrors({ errors, sources: sourcesOf(files) }, where) },
      `a ruleset from ${source === 'file change' ? this.opts.dir : source === 'api' ? 'the admin API' : source === 'cloud' ? 'the cloud' : 'the history'} has ${errors.length} error${errors.length === 1 ? '' : 's'}; nothing changed, version ${this.running?.version ?? 0} keeps running`,
    );
    return { ok: false, errors };
  }

  /**
   * What a push of `files` would answer, applying nothing (E_RULES_EMPTY as the push would be
   * refused). `changed` are the files a change of some files brings, as for `apply`.
   */
  validate(files: RuleFile[], opts: PushOptions = {}, changed?: RuleFile[]): Promise<RulesOutcome> {
    return (async () => {
      const a = await this.analyze(files, changed ?? files);
      if (a.errors.length > 0) return { ok: false, errors: a.errors };
      if (a.rules === 0 && !opts.allowEmpty) throw this.refuseEmpty(files, 'validation', changed !== undefined);
      const sha256 = contentHash(files);
      const same = this.running?.sha256 === sha256;
      const version = same ? this.running!.version : (this.history.latest()?.version ?? 0) + 1;
      return {
        ok: true,
        version,
        sha256,
        rules: a.rules,
        changed: !same,
        files: files.map((f) => f.name).sort(),
        replaced: same ? [] : this.replacedBy(files),
      };
    })();
  }

  /** What `change` would answer, applying nothing (docs/rules.md, Adding and removing files). */
  validateChange(change: RulesChange, opts: PushOptions = {}): Promise<RulesOutcome> {
    return (async () => {
      const next = this.composeChange(change, 'validation');
      return this.withChangeLists(await this.validate(next.files, opts, change.files), next);
    })();
  }

  /**
   * Replace the directory's rules with `files` and run them; with errors nothing changes. A set
   * that defines no rule is refused (E_RULES_EMPTY) unless `allowEmpty`.
   */
  push(files: RuleFile[], source: RulesSource, opts: PushOptions = {}): Promise<RulesOutcome> {
    return this.serial(() => this.apply(files, source, opts));
  }

  /**
   * Add (or replace) `change.files` and remove `change.remove`, keeping the running set's other
   * files: the whole set that results is applied as a push of it would be (checked whole, written
   * through the journal, a new version in the history). A name to remove that the running set does
   * not have refuses the whole change (E_RULES_NO_FILE); so does a result without a rule
   * (E_RULES_EMPTY) unless `allowEmpty`.
   */
  change(change: RulesChange, source: RulesSource, opts: PushOptions = {}): Promise<RulesOutcome> {
    return this.serial(async () => {
      const next = this.composeChange(change, source);
      return this.withChangeLists(await this.apply(next.files, source, opts, change.files), next);
    });
  }

  /**
   * The whole set a change makes of the running one: its other files, then the change's. A name to
   * remove that does not run refuses the change (E_RULES_NO_FILE), counted unless a validation.
   */
  private composeChange(change: RulesChange, source: RulesSource | 'validation'): ComposedChange {
    const running = this.running?.files ?? {};
    const remove = new Set(change.remove);
    const missing = [...remove].filter((name) => !Object.hasOwn(running, name)).sort();
    if (missing.length > 0) {
      const names = Object.keys(running).sort();
      const err = new EdgeError(
        'E_RULES_NO_FILE',
        `the running set (version ${this.running?.version ?? 0}) has no file ${missing.join(', ')} to remove; nothing changed. Its files: ${names.length > 0 ? names.join(', ') : 'none'}`,
      );
      if (source !== 'validation') {
        this.opts.onPush?.(source, 'rejected');
        this.opts.log.warn({ source, missing, code: err.code }, err.message);
      }
      throw err;
    }
    const adding = new Set(change.files.map((f) => f.name));
    const files = [
      ...Object.entries(running)
        .filter(([name]) => !adding.has(name) && !remove.has(name))
        .map(([name, text]) => ({ name, text })),
      ...change.files,
    ];
    return { files, added: [...adding].filter((name) => !Object.hasOwn(running, name)).sort(), removed: [...remove].sort() };
  }

  /** A change's answer names what it added and removed (nothing when it changes nothing). */
  private withChangeLists(outcome: RulesOutcome, next: ComposedChange): RulesOutcome {
    if (!outcome.ok) return outcome;
    return { ...outcome, added: outcome.changed ? next.added : [], removed: outcome.changed ? next.removed : [] };
  }

  /** Re-apply the set before the running one as a new version; E_RULES_NO_EARLIER when there is none. */
  rollback(): Promise<RulesOutcome> {
    return this.serial(async () => {
      const running = this.running?.version ?? 0;
      const earlier = this.history.before(running);
      if (!earlier) throw new EdgeError('E_RULES_NO_EARLIER', `there is no rules version before version ${running} in ${this.historyDir}`);
      this.opts.log.info({ from: running, to: earlier.version }, `rolling back to the rules of version ${earlier.version}`);
      // A rollback names a version that ran: an empty one is what was asked for.
      return this.apply(
        Object.entries(earlier.files).map(([name, text]) => ({ name, text })),
        'rollback',
        { allowEmpty: true },
      );
    });
  }

  /**
   * Apply `files` as the whole new set. `changed` are the files a change of some files brings (the
   * others are the running ones): only their names are checked, and a refusal speaks of a change.
   */
  private async apply(files: RuleFile[], source: RulesSource, opts: PushOptions, changed?: RuleFile[]): Promise<RulesOutcome> {
    const started = performance.now();
    const a = await this.analyze(files, source === 'rollback' ? [] : (changed ?? files));
    if (a.errors.length > 0) return this.refuse(files, a.errors, source);
    if (a.rules === 0 && !opts.allowEmpty) throw this.refuseEmpty(files, source, changed !== undefined);
    if (this.running?.sha256 === contentHash(files)) {
      // The directory may hold an edit that was refused: a push of the running set puts it back.
      let discarded: DiscardedFile[] = [];
      if (contentHash(readRulesDir(this.opts.dir)) !== this.running.sha256) {
        discarded = await this.directory.replace(files, readRulesDir(this.opts.dir), this.running.files);
        this.opts.log.info(
          { dir: this.opts.dir },
          'the rules directory differed from the running set; the push put the running files back',
        );
      }
      this.opts.onPush?.(source, 'unchanged');
      this.opts.log.info(
        { source, version: this.running.version },
        `the pushed rules are the running version ${this.running.version}; nothing changed`,
      );
      return this.answer(this.running, false, [], discarded);
    }
    // The files are written while the set is compiled: the disk waits on fsync, the compiler on the CPU.
    const previous = Object.entries(this.running?.files ?? {}).map(([name, text]) => ({ name, text }));
    const replaced = this.replacedBy(files);
    this.writing = true;
    const analyzed = performance.now();
    const timing = { analyzeMs: Math.round(analyzed - started), compileMs: 0, writeMs: 0 };
    // Files of the directory that never ran are copied aside before the push replaces them.
    const written = this.directory.replace(files, previous, this.running?.files ?? {}).finally(() => {
      this.writing = false;
      timing.writeMs = Math.round(performance.now() - analyzed);
      if (this.changedWhileWriting) this.scheduleReload();
    });
    const built = a.ruleset().finally(() => {
      timing.compileMs = Math.round(performance.now() - analyzed);
    });
    const [write, build] = await Promise.allSettled([written, built]);
    if (write.status === 'rejected') throw write.reason;
    if (build.status === 'rejected') {
      // A fault of the proxy itself: the directory goes back to the set that keeps running.
      await this.directory.replace(previous, files).catch((err: Error) => {
        this.opts.log.error(
          { dir: this.opts.dir, err: err.message },
          'the rules directory could not be put back to the running set after a failed compile; check it before the next start',
        );
      });
      throw new EdgeError('E_INTERNAL', `compiling a checked ruleset failed: ${(build.reason as Error).message}`, { cause: build.reason });
    }
    const ruleset = build.value;
    if (!this.stopped) this.watch(); // the push may have made the directory
    const v = this.swap(files, ruleset, a.rules, source, { tookMs: Math.round(performance.now() - started), ...timing });
    this.opts.onPush?.(source, 'applied');
    return this.answer(v, true, replaced, write.value);
  }

  /** Read the directory again; swap to it if it compiles and differs from the running set. */
  reload(reason: RulesSource = 'file change'): Promise<{ changed: boolean; errors: RuleError[] }> {
    return this.serial(async () => {
      const files = readRulesDir(this.opts.dir);
      // The directory a push has just written holds the running set: nothing to compile.
      if (this.running?.sha256 === contentHash(files)) return { changed: false, errors: [] };
      const a = await this.analyze(files, []);
      if (a.errors.length > 0) {
        this.refuse(files, a.errors, reason);
        this.opts.log.error({ dir: this.opts.dir }, `fix the rules in ${this.opts.dir} (edge-proxy rules check) and save again`);
        return { changed: false, errors: a.errors };
      }
      const ruleset = await a.ruleset();
      // A push may have written the directory while this set was compiled.
      if (contentHash(readRulesDir(this.opts.dir)) !== contentHash(files)) return { changed: false, errors: [] };
      this.swap(files, ruleset, a.rules, reason);
      return { changed: true, errors: [] };
    });
  }

  /** Make `files` the running version: kept in the history, then swapped in between two messages. */
  private swap(
    files: RuleFile[],
    ruleset: RuleSet | null,
    rules: number,
    reason: string,
    timing: Record<string, number> = {},
  ): RulesVersion {
    const sha256 = contentHash(files);
    const latest = this.history.latest();
    // At start, the directory usually holds the latest version of the history: it keeps its number.
    const kept = latest && latest.sha256 === sha256 && !this.running ? this.history.get(latest.version) : null;
    const version: RulesVersion = kept ?? {
      version: (latest?.version ?? 0) + 1,
      sha256,
      rules,
      files: Object.fromEntries(files.map((f) => [f.name, f.text])),
      at: new Date().toISOString(),
    };
    if (!kept) {
      try {
        this.history.add(version);
      } catch (err) {
        // The directory is the source of truth and holds the set; only rollback to it is lost.
        this.opts.log.error(
          { dir: this.historyDir, err: (err as Error).message },
          `rules version ${version.version} could not be kept in the history; it runs, but a rollback cannot come back to it`,
        );
      }
    }
    const next = ruleset && ruleset.size > 0 ? ruleset : null;
    const previous = this.holder.current;
    const carried = next && previous ? next.carryOver(previous) : 0;
    this.holder.current = next; // the swap: the next message is evaluated wholly by the new set
    this.running = version;
    this.opts.onSwap(version);
    this.opts.log.info(
      { version: version.version, sha256, rules, files: files.map((f) => f.name), carried, reason, ...timing },
      reason === 'start'
        ? files.length
          ? 'rules loaded'
          : 'no rules files: every message follows routing.default'
        : `rules version ${version.version} running (${reason})`,
    );
    return version;
  }

  /** Any change in the directory reloads the whole set, once the burst of events is over. */
  private watch(): void {
    if (this.watcher) return;
    if (!existsSync(this.opts.dir)) {
      this.opts.log.info(
        { dir: this.opts.dir },
        'the rules directory does not exist; it is watched once a push creates it (or create it and restart)',
      );
      return;
    }
    try {
      this.watcher = watch(this.opts.dir, (_event, name) => {
        // The directory's lock (core/data-lock.ts) is not a rules file: taking or releasing it changes no rule.
        if (name !== null && isRulesDirLockName(name)) return;
        // While a push writes the directory its events are not acted on (it would be read half
        // written); once the push is done, one look tells whether someone else changed it too.
        if (this.writing) {
          this.changedWhileWriting = true;
          return;
        }
        this.scheduleReload();
      });
      this.watcher.on('error', (err) =>
        this.opts.log.warn({ dir: this.opts.dir, err: err.message }, 'watching the rules directory failed; changes need a restart'),
      );
    } catch (err) {
      this.opts.log.warn({ dir: this.opts.dir, err: (err as Error).message }, 'cannot watch the rules directory; changes need a restart');
    }
  }

  private scheduleReload(): void {
    this.changedWhileWriting = false;
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.reload('file change').catch((err: EdgeError) => {
        if (err.code === 'E_STOPPING') return;
        this.opts.onReloadFailure();
        this.opts.log.error({ dir: this.opts.dir, err: err.message }, 'cannot read the rules directory; the running set keeps running');
      });
    }, DEBOUNCE_MS);
  }

  /** No change is taken from now on (E_STOPPING); one under way finishes (or fails) first. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.warmUpAbort.abort();
    this.watcher?.close();
    this.watcher = null;
    if (this.timer) clearTimeout(this.timer);
    await this.queue;
    await this.warming;
  }
}
