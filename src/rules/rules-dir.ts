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
 */
export class RulesDirectory {
  constructor(
    readonly dir: string,
    private readonly journalFile: string,
    private readonly log: Logger,
  ) {}

  /**
   * Put `files` in place of every `*.rules` file of the directory. On failure (E_RULES_WRITE) the
   * directory is put back to `previous`, the set it held; if even that fails, the journal makes
   * the next start finish one set or the other whole.
   */
  async replace(files: RuleFile[], previous: RuleFile[]): Promise<void> {
    try {
      await this.writeJournal(files);
    } catch (err) {
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
