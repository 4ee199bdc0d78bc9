import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';

/** One accepted ruleset: what the history keeps and the API answers. */
export interface RulesVersion {
  version: number;
  sha256: string;
  rules: number;
  files: Record<string, string>;
  at: string;
}

type Entry = Pick<RulesVersion, 'version' | 'sha256'>;

const KEEP = 10;
const fileOf = (v: number): string => `v${String(v).padStart(8, '0')}.json`;

/**
 * The last accepted rulesets, one JSON file each in <dataDir>/rules-history/. The directory is read
 * once; after that the numbers and hashes are kept in memory, so that a swap under load reads no
 * file, and a set's texts are read only when a rollback needs them.
 */
export class RulesHistory {
  private entries: Entry[] | null = null;

  constructor(
    private readonly dir: string,
    private readonly log: Logger,
  ) {}

  private all(): Entry[] {
    if (this.entries) return this.entries;
    const out: Entry[] = [];
    if (existsSync(this.dir)) {
      for (const name of readdirSync(this.dir).filter((n) => /^v\d+\.json$/.test(n))) {
        const v = this.read(name);
        if (v) out.push({ version: v.version, sha256: v.sha256 });
      }
    }
    this.entries = out.sort((a, b) => a.version - b.version);
    return this.entries;
  }

  private read(name: string): RulesVersion | null {
    try {
      return JSON.parse(readFileSync(join(this.dir, name), 'utf8')) as RulesVersion;
    } catch {
      this.log.warn({ file: join(this.dir, name) }, 'an unreadable rules history file is ignored');
      return null;
    }
  }

  latest(): Entry | undefined {
    const all = this.all();
    return all[all.length - 1];
  }

  /** The whole set of one kept version. */
  get(version: number): RulesVersion | null {
    return this.all().some((e) => e.version === version) ? this.read(fileOf(version)) : null;
  }

  /** The newest kept version below `version`. */
  before(version: number): RulesVersion | null {
    const e = this.all()
      .filter((x) => x.version < version)
      .pop();
    return e ? this.read(fileOf(e.version)) : null;
  }

  /** Keep `v`, and let go of what is beyond the last ten. */
  add(v: RulesVersion): void {
    mkdirSync(this.dir, { recursive: true });
    const file = join(this.dir, fileOf(v.version));
    writeFileSync(`${file}.tmp`, JSON.stringify(v));
    renameSync(`${file}.tmp`, file);
    const all = this.all();
    all.push({ version: v.version, sha256: v.sha256 });
    while (all.length > KEEP) rmSync(join(this.dir, fileOf(all.shift()!.version)), { force: true });
  }
}
