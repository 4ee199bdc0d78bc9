import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, watch, writeFileSync, type FSWatcher } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { RuleLoadError } from '../core/errors.js';
import type { EngineOptions, RuleSet } from './engine.js';
import { compileRuleset, formatErrors, readRulesDir, type CompileResult, type RuleFile, type RuleLimits } from './loader.js';

/** One accepted ruleset: what the history keeps and the API answers. */
export interface RulesVersion {
  version: number;
  sha256: string;
  rules: number;
  files: Record<string, string>;
  at: string;
}

export interface RulesStoreOptions {
  dir: string;
  historyDir: string;
  limits: RuleLimits;
  engine: EngineOptions;
  log: Logger;
  /** a reload that found errors: nothing changed */
  onReloadFailure(): void;
  onSwap(version: RulesVersion): void;
}

const HISTORY = 10;
const DEBOUNCE_MS = 250;

/** SHA-256 over the files' names and texts, in name order: equal content, equal hash. */
export function contentHash(files: RuleFile[]): string {
  const h = createHash('sha256');
  for (const f of [...files].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) h.update(f.name).update('\0').update(f.text).update('\0');
  return h.digest('hex');
}

/**
 * The rules directory as the one source of truth for the running set (rules-dsl.md): loaded at
 * start, reloaded whole when a file changes, each accepted content a new version kept in
 * <dataDir>/rules-history/. A set with errors changes nothing. The swap replaces one reference,
 * between two messages, and carries window and throttle state over for unchanged rules.
 */
export class RulesStore {
  /** the running set; the router reads it for every message */
  readonly holder: { current: RuleSet | null } = { current: null };
  private running: RulesVersion | null = null;
  private watcher: FSWatcher | null = null;
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly opts: RulesStoreOptions) {}

  get version(): RulesVersion | null {
    return this.running;
  }

  /** Load the directory; a set with errors stops the start (RuleLoadError, every error listed). */
  start(): void {
    const files = readRulesDir(this.opts.dir);
    const result = this.compile(files);
    if (result.errors.length > 0) throw new RuleLoadError(formatErrors(result, (f) => join(this.opts.dir, f)), result.errors.length);
    this.accept(files, result, 'start');
    this.watch();
  }

  private compile(files: RuleFile[]): CompileResult {
    return compileRuleset(files, this.opts.limits, this.opts.engine);
  }

  /** Read the directory again; swap to it if it compiles and differs from the running set. */
  reload(reason: string): { changed: boolean; errors: CompileResult['errors'] } {
    const files = readRulesDir(this.opts.dir);
    const result = this.compile(files);
    if (result.errors.length > 0) {
      this.opts.onReloadFailure();
      this.opts.log.error({ dir: this.opts.dir, reason, errors: result.errors.length, listing: formatErrors(result, (f) => join(this.opts.dir, f)) },
        `the rules in ${this.opts.dir} have ${result.errors.length} error(s); nothing changed, version ${this.running?.version ?? 0} keeps running. Fix them (edge-proxy rules check) and save again`);
      return { changed: false, errors: result.errors };
    }
    return { changed: this.accept(files, result, reason), errors: [] };
  }

  private accept(files: RuleFile[], result: CompileResult, reason: string): boolean {
    const sha256 = contentHash(files);
    if (this.running && this.running.sha256 === sha256) return false; // the same content makes no version
    const history = this.history();
    const latest = history[history.length - 1];
    const version: RulesVersion = latest && latest.sha256 === sha256 && !this.running
      ? latest
      : { version: (latest?.version ?? 0) + 1, sha256, rules: result.rules, files: Object.fromEntries(files.map((f) => [f.name, f.text])), at: new Date().toISOString() };
    if (version !== latest) this.save(version);
    const next = result.ruleset && result.ruleset.size > 0 ? result.ruleset : null;
    const previous = this.holder.current;
    const carried = next && previous ? next.carryOver(previous) : 0;
    this.holder.current = next; // the swap: the next message is evaluated wholly by the new set
    this.running = version;
    this.opts.onSwap(version);
    this.opts.log.info({ version: version.version, sha256, rules: result.rules, files: files.map((f) => f.name), carried, reason },
      reason === 'start' ? (files.length ? 'rules loaded' : 'no rules files: every message follows routing.default') : `rules version ${version.version} running`);
    return true;
  }

  /** The kept versions, oldest first. */
  history(): RulesVersion[] {
    if (!existsSync(this.opts.historyDir)) return [];
    const out: RulesVersion[] = [];
    for (const name of readdirSync(this.opts.historyDir).filter((n) => /^v\d+\.json$/.test(n))) {
      try {
        out.push(JSON.parse(readFileSync(join(this.opts.historyDir, name), 'utf8')) as RulesVersion);
      } catch {
        this.opts.log.warn({ file: join(this.opts.historyDir, name) }, 'an unreadable rules history file is ignored');
      }
    }
    return out.sort((a, b) => a.version - b.version);
  }

  private save(v: RulesVersion): void {
    mkdirSync(this.opts.historyDir, { recursive: true });
    const file = join(this.opts.historyDir, `v${String(v.version).padStart(8, '0')}.json`);
    writeFileSync(`${file}.tmp`, JSON.stringify(v));
    renameSync(`${file}.tmp`, file);
    const all = this.history();
    for (const old of all.slice(0, Math.max(0, all.length - HISTORY))) rmSync(join(this.opts.historyDir, `v${String(old.version).padStart(8, '0')}.json`), { force: true });
  }

  /** Any change in the directory reloads the whole set, once the burst of events is over. */
  private watch(): void {
    if (!existsSync(this.opts.dir)) {
      this.opts.log.info({ dir: this.opts.dir }, 'the rules directory does not exist; create it and restart to use rules');
      return;
    }
    try {
      this.watcher = watch(this.opts.dir, () => {
        if (this.timer) clearTimeout(this.timer);
        this.timer = setTimeout(() => {
          this.timer = null;
          try {
            this.reload('file change');
          } catch (err) {
            this.opts.onReloadFailure();
            this.opts.log.error({ dir: this.opts.dir, err: (err as Error).message }, 'cannot read the rules directory; the running set keeps running');
          }
        }, DEBOUNCE_MS);
      });
      this.watcher.on('error', (err) => this.opts.log.warn({ dir: this.opts.dir, err: err.message }, 'watching the rules directory failed; changes need a restart'));
    } catch (err) {
      this.opts.log.warn({ dir: this.opts.dir, err: (err as Error).message }, 'cannot watch the rules directory; changes need a restart');
    }
  }

  stop(): void {
    this.watcher?.close();
    if (this.timer) clearTimeout(this.timer);
  }
}
