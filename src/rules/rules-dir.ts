import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Logger } from 'pino';
import { EdgeError } from '../core/errors.js';
import type { RuleFile } from './loader.js';

interface Journal {
  dir: string;
  files: Record<string, string>;
}

const TEMP_SUFFIX = '.push-tmp';
/** Copies of unapplied files a push replaced, kept in <dataDir>/rules-discarded: the newest this many. */
export const DISCARDED_KEPT = 20;

/** A file of the directory that a replacement removed or overwrote without it ever running, and where its copy is. */
export interface DiscardedFile {
  name: string;
  copy: string;
}

async function fsyncPath(path: string): Promise<void> {
  const h = await open(path, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}

async function writeDurably(file: string, text: string): Promise<void> {
  const h = await open(file, 'w', 0o644);
  try {
    await h.writeFile(text);
    await h.sync();
  } finally {
    await h.close();
  }
}

/**
 * Replaces the rules directory's `*.rules` files with a pushed set so that a crash or power cut
 * leaves either the old set or the whole new one, never a mix: the new set is first written to a
 * journal in the data directory, then put in place, then the journal is removed. A start that finds
 * a journal finishes the replacement before it reads the directory.
 *
 * A file of the directory that never ran (a hand edit the proxy refused, or one it has not loaded yet)
 * would be lost by the replacement: before the journal is written, a copy goes to `discardDir`
 * (<dataDir>/rules-discarded/<timestamp>-<name>), so a crash at any point loses no text either.
 */
export class RulesDirectory {
  constructor(
    readonly dir: string,
    private readonly journalFile: string,
    private readonly log: Logger,
    private readonly discardDir: string,
  ) {}

  /**
   * Put `files` in place of every `*.rules` file of the directory. On failure (E_RULES_WRITE) the
   * directory is put back to `previous`, the set it held; if even that fails, the journal makes
   * the next start finish one set or the other whole. With `running` (the files of the running set),
   * the directory's files that are not in it and that `files` would remove or overwrite are copied
   * to the discard directory first; they are returned. A copy that cannot be made refuses the push
   * (E_RULES_WRITE), nothing changed.
   */
  async replace(files: RuleFile[], previous: RuleFile[], running?: Readonly<Record<string, string>>): Promise<DiscardedFile[]> {
    const discarded = running ? await this.keepUnapplied(files, running) : [];
    try {
      await this.writeJournal(files);
    } catch (err) {
      // Nothing changed: the copies are not needed.
      await Promise.all(discarded.map((d) => rm(d.copy, { force: true }).catch(() => {})));
      const e = err as NodeJS.ErrnoException;
      throw new EdgeError(
        'E_RULES_WRITE',
        `cannot write the push journal in the data directory ${dirname(this.journalFile)} (${e.code ?? e.message}); nothing changed. Check that dataDir has space and is writable`,
        { cause: err },
      );
    }
    const progress = { changed: false };
    try {
      await this.putInPlace(files, progress);
    } catch (err) {
      try {
        if (progress.changed) {
          await this.writeJournal(previous);
          await this.putInPlace(previous, { changed: false });
        }
        await rm(this.journalFile, { force: true });
      } catch (again) {
        this.log.error(
          { dir: this.dir, err: (again as Error).message },
          'the rules directory could not be put back either; the next start completes one whole set from the push journal',
        );
        const e = err as NodeJS.ErrnoException;
        throw new EdgeError(
          'E_RULES_WRITE',
          `cannot write ${this.dir} (${e.code ?? e.message}), nor put its old files back: the running set keeps running, but the directory may hold part of the pushed set, which the next start completes from the journal. Make the directory writable and push again`,
          { cause: err },
        );
      }
      throw this.writeError(err, this.dir);
    }
    await rm(this.journalFile, { force: true });
    return discarded;
  }

  /** The directory's `*.rules` files that are not in `running` and that `files` do not leave as they are. */
  private async unapplied(files: RuleFile[], running: Readonly<Record<string, string>>): Promise<RuleFile[]> {
    const next = new Map(files.map((f) => [f.name, f.text]));
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const found: RuleFile[] = [];
    for (const name of names.sort()) {
      if (!name.endsWith('.rules')) continue;
      let text: string;
      try {
        if (!(await stat(join(this.dir, name))).isFile()) continue;
        text = await readFile(join(this.dir, name), 'utf8');
      } catch {
        continue; // gone meanwhile, or unreadable: the push cannot lose what it cannot read
      }
      if (Object.hasOwn(running, name) && running[name] === text) continue;
      if (next.get(name) === text) continue;
      found.push({ name, text });
    }
    return found;
  }

  /** Copies the unapplied files to the discard directory, durably, and keeps only the newest copies there. */
  private async keepUnapplied(files: RuleFile[], running: Readonly<Record<string, string>>): Promise<DiscardedFile[]> {
    const kept: DiscardedFile[] = [];
    try {
      const unapplied = await this.unapplied(files, running);
      if (unapplied.length === 0) return [];
      await mkdir(this.discardDir, { recursive: true });
      // Sortable, and a valid file name everywhere: 2025-01-31T12-00-00.000Z
      const stamp = new Date().toISOString().replaceAll(':', '-');
      for (const f of unapplied) {
        const copy = join(this.discardDir, `${stamp}-${f.name}`);
        await writeDurably(copy, f.text);
        kept.push({ name: f.name, copy });
      }
      await fsyncPath(this.discardDir);
    } catch (err) {
      await Promise.all(kept.map((d) => rm(d.copy, { force: true }).catch(() => {})));
      const e = err as NodeJS.ErrnoException;
      throw new EdgeError(
        'E_RULES_WRITE',
        `the rules directory ${this.dir} holds files that never ran, and a copy of them cannot be kept in ${this.discardDir} (${e.code ?? e.message}) before the push replaces them; nothing changed. Check that dataDir has space and is writable`,
        { cause: err },
      );
    }
    for (const d of kept)
      this.log.warn(
        { dir: this.dir, file: d.name, copy: d.copy },
        `${d.name} in ${this.dir} is not part of the running rules (an edit that was refused, or not loaded yet) and the push replaces it: its text is kept in ${d.copy}`,
      );
    await this.pruneDiscarded(new Set(kept.map((d) => d.copy)));
    return kept;
  }

  /** Keeps the newest DISCARDED_KEPT copies (and always the ones just made); older ones are removed. */
  private async pruneDiscarded(justMade: ReadonlySet<string>): Promise<void> {
    try {
      const names = (await readdir(this.discardDir)).sort();
      const excess = names.slice(0, Math.max(0, names.length - Math.max(DISCARDED_KEPT, justMade.size)));
      for (const name of excess) {
        const path = join(this.discardDir, name);
        if (!justMade.has(path)) await rm(path, { force: true });
      }
    } catch (err) {
      this.log.warn({ dir: this.discardDir, err: (err as Error).message }, 'cannot remove old copies of discarded rules files');
    }
  }

  private async writeJournal(files: RuleFile[]): Promise<void> {
    const journal: Journal = { dir: this.dir, files: Object.fromEntries(files.map((f) => [f.name, f.text])) };
    try {
      await mkdir(dirname(this.journalFile), { recursive: true });
      await writeDurably(`${this.journalFile}.tmp`, JSON.stringify(journal));
      await rename(`${this.journalFile}.tmp`, this.journalFile);
      await fsyncPath(dirname(this.journalFile));
    } catch (err) {
      await rm(`${this.journalFile}.tmp`, { force: true }).catch(() => {});
      throw err;
    }
  }

  /** Write what differs (a file already holding its text is left alone); `progress.changed` once the directory differs. */
  private async putInPlace(files: RuleFile[], progress: { changed: boolean }): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    for (const f of files) {
      const target = join(this.dir, f.name);
      if (
        await readFile(target, 'utf8').then(
          (t) => t === f.text,
          () => false,
        )
      )
        continue;
      const tmp = join(this.dir, `.${f.name}${TEMP_SUFFIX}`);
      try {
        await writeDurably(tmp, f.text);
        progress.changed = true;
        await rename(tmp, target);
      } catch (err) {
        await rm(tmp, { force: true }).catch(() => {});
        throw err;
      }
    }
    const keep = new Set(files.map((f) => f.name));
    for (const name of await readdir(this.dir)) {
      if (!name.endsWith('.rules') || keep.has(name)) continue;
      if (!(await stat(join(this.dir, name))).isFile()) continue;
      progress.changed = true;
      await rm(join(this.dir, name));
    }
    if (progress.changed) await fsyncPath(this.dir);
  }

  private writeError(err: unknown, where: string): EdgeError {
    const e = err as NodeJS.ErrnoException;
    return new EdgeError(
      'E_RULES_WRITE',
      `cannot write ${where} (${e.code ?? e.message}); nothing changed. Point rules.dir at a directory the proxy may write`,
      { cause: err },
    );
  }

  /** Finish a replacement a crash interrupted, and clear temporary files. True when there was one to finish. */
  recover(): boolean {
    try {
      if (existsSync(this.dir)) {
        for (const name of readdirSync(this.dir))
          if (name.startsWith('.') && name.endsWith(TEMP_SUFFIX)) rmSync(join(this.dir, name), { force: true });
      }
      rmSync(`${this.journalFile}.tmp`, { force: true });
    } catch (err) {
      this.log.warn(
        { dir: this.dir, err: (err as Error).message },
        'cannot remove the temporary files of an interrupted rules push; they are ignored',
      );
    }
    if (!existsSync(this.journalFile)) return false;
    let journal: Journal;
    try {
      journal = JSON.parse(readFileSync(this.journalFile, 'utf8')) as Journal;
    } catch (err) {
      // Only a complete journal is ever renamed into place; an unreadable one means the disk lost it.
      this.log.error(
        { file: this.journalFile, err: (err as Error).message },
        'an unreadable rules push journal is ignored; the rules directory is used as it is',
      );
      rmSync(this.journalFile, { force: true });
      return false;
    }
    if (journal.dir !== this.dir) {
      this.log.warn(
        { file: this.journalFile, journalDir: journal.dir, dir: this.dir },
        'a rules push journal for another rules directory is ignored',
      );
      rmSync(this.journalFile, { force: true });
      return false;
    }
    try {
      this.finish(journal);
    } catch (err) {
      // A start must not fail on this (systemd would restart it into the same failure): the
      // directory is loaded as it is, and the journal stays for a start that can write it.
      this.log.error(
        { dir: this.dir, journal: this.journalFile, err: (err as Error).message },
        'cannot finish a rules push that a stop or crash interrupted: the rules directory cannot be written. Its files are loaded as they are; make it writable and restart to finish the push',
      );
      return false;
    }
    rmSync(this.journalFile, { force: true });
    this.log.warn({ dir: this.dir, files: Object.keys(journal.files) }, 'finished a rules push that a stop or crash interrupted');
    return true;
  }

  /** Put a journal's files in place, writing only what differs. */
  private finish(journal: Journal): void {
    const differs = (name: string, text: string): boolean => {
      try {
        return readFileSync(join(this.dir, name), 'utf8') !== text;
      } catch {
        return true;
      }
    };
    mkdirSync(this.dir, { recursive: true });
    let changed = false;
    for (const [name, text] of Object.entries(journal.files)) {
      if (!differs(name, text)) continue;
      changed = true;
      const tmp = join(this.dir, `.${name}${TEMP_SUFFIX}`);
      writeFileSync(tmp, text);
      const fd = openSync(tmp, 'r');
      fsyncSync(fd);
      closeSync(fd);
      renameSync(tmp, join(this.dir, name));
    }
    for (const name of readdirSync(this.dir)) {
      if (name.endsWith('.rules') && !Object.hasOwn(journal.files, name) && statSync(join(this.dir, name)).isFile()) {
        changed = true;
        rmSync(join(this.dir, name));
      }
    }
    if (!changed) return;
    const fd = openSync(this.dir, 'r');
    fsyncSync(fd);
    closeSync(fd);
  }
}
