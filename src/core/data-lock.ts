// One proxy per directory (docs/operations.md, One proxy per data directory): a lock file, made with
// O_EXCL and holding the owner's PID, is held for the life of the process. A lock left by a process
// that no longer runs (kill -9, a crash, a power cut) is taken over. Two directories are locked this
// way: the data directory (`<dataDir>/lock`: two proxies cannot share one cache) and the rules
// directory (`<rules.dir>/.edge-proxy.lock`: a push to one proxy would rewrite the other's rules, and
// its watcher would load them).

import { accessSync, closeSync, constants, mkdirSync, openSync, readFileSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { EdgeError, type ErrorCode } from './errors.js';

/** The lock file's name in the data directory. */
export const DATA_DIR_LOCK_FILE = 'lock';

/**
 * The lock file's name in the rules directory: hidden, and not a `*.rules` file, so neither the rules
 * loader nor a push (which replaces only `*.rules` files) sees it; .gitignore lists it for the checkout's ./rules.
 */
export const RULES_DIR_LOCK_FILE = '.edge-proxy.lock';

const TAKEOVER_SUFFIX = '.takeover';

/** Whether a name in the rules directory is its lock (or the lock's takeover marker), which the rules watcher ignores. */
export function isRulesDirLockName(name: string): boolean {
  return name === RULES_DIR_LOCK_FILE || name === `${RULES_DIR_LOCK_FILE}${TAKEOVER_SUFFIX}`;
}

/** What the lock file holds: who owns the directory. */
export interface LockOwner {
  pid: number;
  /** /proc/<pid>/stat field 22 (clock ticks after boot), null where there is no /proc */
  startTime: string | null;
  /** /proc/sys/kernel/random/boot_id: a PID of an earlier boot says nothing about this one */
  bootId: string | null;
  startedAt: string;
  /**
   * The directory's device and inode when the lock was made: a lock copied along with the directory
   * (`cp -r rules rules2`) names another directory, and holds nothing here.
   */
  dirId: string | null;
}

/** The few logger methods the lock uses (a pino Logger has them). */
interface LockLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface DirLock {
  /** the lock file; null when none could be made (a rules directory this process may not write) */
  readonly file: string | null;
  /** Removes the lock file if it is still this process's; safe to call twice. */
  release(): void;
}

// A lock file younger than this that does not parse may be one another start is writing right now.
const WRITING_GRACE_MS = 2_000;
// A takeover marker older than this was left by a start that died while taking over.
const TAKEOVER_STALE_MS = 10_000;

/** Locks this process holds, so that a second start in the same process is refused too. */
const held = new Set<string>();

function readProc(file: string): string | null {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

/** A process's start time in clock ticks after boot (/proc/<pid>/stat field 22), null without /proc. */
export function processStartTime(pid: number): string | null {
  const stat = readProc(`/proc/${pid}/stat`);
  if (!stat) return null;
  // Field 2, the command name, is in parentheses and may hold spaces: count from the last `)`.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return fields[19] ?? null; // fields[0] is field 3
}

function bootId(): string | null {
  return readProc('/proc/sys/kernel/random/boot_id')?.trim() || null;
}

function parseOwner(text: string): LockOwner | null {
  try {
    const o = JSON.parse(text) as Partial<LockOwner>;
    if (typeof o.pid !== 'number' || !Number.isInteger(o.pid) || o.pid <= 0) return null;
    return {
      pid: o.pid,
      startTime: typeof o.startTime === 'string' ? o.startTime : null,
      bootId: typeof o.bootId === 'string' ? o.bootId : null,
      startedAt: typeof o.startedAt === 'string' ? o.startedAt : '?',
      dirId: typeof o.dirId === 'string' ? o.dirId : null,
    };
  } catch {
    return null;
  }
}

/**
 * Whether the owner recorded in a lock still runs. The PID alone can be reused by another process
 * (after a reboot, or in a container where the proxy is PID 1 at every start): where /proc exists
 * the boot and the process start time must match too; elsewhere a reused PID keeps the lock held
 * until that process ends or the file is removed by hand.
 */
function ownerRuns(owner: LockOwner, file: string): boolean {
  if (copiedFromElsewhere(owner, file)) return false;
  if (owner.pid === process.pid) return held.has(file);
  const boot = bootId();
  if (owner.bootId && boot && owner.bootId !== boot) return false;
  try {
    process.kill(owner.pid, 0);
  } catch (err) {
    // EPERM: it runs, under another user.
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  // A process killed a moment ago may linger as a zombie, which signal 0 still finds.
  const stat = readProc(`/proc/${owner.pid}/stat`);
  const state = stat?.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  if (state === 'Z' || state === 'X') return false;
  if (owner.startTime) {
    const now = processStartTime(owner.pid);
    if (now !== null && now !== owner.startTime) return false;
  }
  return true;
}

/** The directory's identity (device and inode), null when it cannot be read. */
function dirIdOf(dir: string): string | null {
  try {
    const st = statSync(dir, { bigint: true });
    return `${st.dev}:${st.ino}`;
  } catch {
    return null;
  }
}

/** A lock that was made in another directory and copied here with its files. */
function copiedFromElsewhere(owner: LockOwner, file: string): boolean {
  if (owner.dirId === null) return false;
  const here = dirIdOf(dirname(file));
  return here !== null && here !== owner.dirId;
}

/** Who holds a lock file, as another process sees it (the CLI, before it talks to a proxy). */
export type LockHolder = { state: 'none' } | { state: 'unknown' } | { state: 'runs' | 'gone'; pid: number };

/**
 * Whether the proxy that wrote `file` still runs, judged as a start judges a lock it finds.
 * `unknown`: the file cannot be read, or is being written.
 */
export function lockHolder(file: string): LockHolder {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    return errno(err) === 'ENOENT' ? { state: 'none' } : { state: 'unknown' };
  }
  const owner = parseOwner(text);
  if (!owner) return { state: 'unknown' };
  return { state: ownerRuns(owner, file) ? 'runs' : 'gone', pid: owner.pid };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException).code;
}

/** Creates `file` only if it does not exist, with `text` in it. False when it exists. */
function createExclusive(file: string, text: string): boolean {
  let fd: number;
  try {
    fd = openSync(file, 'wx', 0o644);
  } catch (err) {
    if (errno(err) === 'EEXIST') return false;
    throw err;
  }
  try {
    writeSync(fd, text);
  } finally {
    closeSync(fd);
  }
  return true;
}

function readText(file: string): string | null {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    if (errno(err) === 'ENOENT') return null;
    throw err;
  }
}

function removeIfThere(file: string): void {
  try {
    unlinkSync(file);
  } catch (err) {
    if (errno(err) !== 'ENOENT') throw err;
  }
}

function ageMs(file: string): number {
  try {
    return Date.now() - statSync(file).mtimeMs;
  } catch {
    return 0;
  }
}

/** What differs between the directories locked: the file's name, the words for logs, the refusal. */
interface LockKind {
  fileName: string;
  /** `data directory`, `rules directory` */
  what: string;
  code: ErrorCode;
  /** why two proxies cannot share the directory, and how to give this one its own */
  refusal(dir: string, file: string, owner: LockOwner): string;
}

const DATA_DIR: LockKind = {
  fileName: DATA_DIR_LOCK_FILE,
  what: 'data directory',
  code: 'E_DATA_DIR_LOCKED',
  refusal: (dir, file, owner) =>
    `the data directory ${dir} is in use by another edge-proxy (PID ${owner.pid}, started ${owner.startedAt}): ` +
    `two proxies cannot share one cache. Stop that proxy (kill ${owner.pid}, or systemctl stop edge-proxy), ` +
    `or give this one its own data directory (dataDir in the configuration, or EDGE_PROXY_DATA_DIR=./data2). ` +
    `The lock is ${file}`,
};

const RULES_DIR: LockKind = {
  fileName: RULES_DIR_LOCK_FILE,
  what: 'rules directory',
  code: 'E_RULES_DIR_LOCKED',
  refusal: (dir, file, owner) =>
    `the rules directory ${dir} is in use by another edge-proxy (PID ${owner.pid}, started ${owner.startedAt}): ` +
    `two proxies cannot share it: a push to one rewrites it, and the other reloads it and runs those rules. Stop that proxy (kill ${owner.pid}, ` +
    `or systemctl stop edge-proxy), or give this one its own rules directory (rules.dir in the configuration, ` +
    `or EDGE_PROXY_RULES_DIR=./rules2). The lock is ${file}`,
};

/**
 * Takes the data directory for this process, or refuses with E_DATA_DIR_LOCKED naming the proxy
 * that holds it. A stale lock (its process gone) is removed and taken, logged at info.
 */
export function acquireDataDirLock(dataDir: string, log: LockLog): Promise<DirLock> {
  return acquireDirLock(dataDir, DATA_DIR, log);
}

/**
 * Takes the rules directory for this process (made if missing), or refuses with E_RULES_DIR_LOCKED
 * naming the proxy that holds it. A directory this process may not write is not locked (logged at
 * info): a push cannot write it either, so no proxy of this user can replace its rules.
 */
export async function acquireRulesDirLock(rulesDir: string, log: LockLog): Promise<DirLock> {
  try {
    mkdirSync(rulesDir, { recursive: true });
    accessSync(rulesDir, constants.W_OK);
  } catch (err) {
    if (!['EACCES', 'EPERM', 'EROFS'].includes(errno(err) ?? '')) throw err;
    log.info(
      { dir: rulesDir, err: errno(err) },
      `the rules directory ${rulesDir} cannot be written by this process (${errno(err)}), so it is not locked: ` +
        'a push cannot replace its files either, only an edit by hand changes the rules',
    );
    return { file: null, release: () => {} };
  }
  return acquireDirLock(rulesDir, RULES_DIR, log);
}

/**
 * Takes `dir` for this process, or refuses with the kind's code naming the proxy that holds it. Two
 * starts that find the same stale lock at once go through a takeover marker, so only one of them wins.
 */
async function acquireDirLock(dir: string, kind: LockKind, log: LockLog): Promise<DirLock> {
  const file = join(dir, kind.fileName);
  const takeover = `${file}${TAKEOVER_SUFFIX}`;
  const mine: LockOwner = {
    pid: process.pid,
    startTime: processStartTime(process.pid),
    bootId: bootId(),
    startedAt: new Date().toISOString(),
    dirId: dirIdOf(dir),
  };
  const text = JSON.stringify(mine) + '\n';
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (Date.now() > deadline)
      throw new EdgeError(kind.code, `the lock ${file} could not be taken within 15 s; another start keeps changing it`);
    if (createExclusive(file, text)) break;
    const found = readText(file);
    if (found === null) continue; // removed meanwhile: try again
    const owner = parseOwner(found);
    if (owner === null && ageMs(file) < WRITING_GRACE_MS) {
      await sleep(50); // another start is writing it right now
      continue;
    }
    if (owner && ownerRuns(owner, file)) throw new EdgeError(kind.code, kind.refusal(dir, file, owner));

    // Stale: remove it, but only the very file judged stale, and one start at a time.
    if (!createExclusive(takeover, `${process.pid}\n`)) {
      if (ageMs(takeover) > TAKEOVER_STALE_MS) removeIfThere(takeover);
      else await sleep(50);
      continue;
    }
    try {
      if (readText(file) === found) {
        unlinkSync(file);
        log.info(
          { file, stalePid: owner?.pid ?? null, staleStartedAt: owner?.startedAt ?? null },
          owner === null
            ? `took over a ${kind.what} lock that could not be read (left half-written by a crash or power cut)`
            : copiedFromElsewhere(owner, file)
              ? `took over a ${kind.what} lock copied from another directory with its files (it held nothing here)`
              : `took over the ${kind.what} lock of edge-proxy PID ${owner.pid}, which no longer runs (a crash, kill -9 or power cut)`,
        );
      }
    } finally {
      removeIfThere(takeover);
    }
  }

  held.add(file);
  // process.exit() (an uncaught exception, a failed start) skips the services' stop: the lock goes anyway.
  const onExit = (): void => release();
  process.once('exit', onExit);
  let released = false;
  function release(): void {
    if (released) return;
    released = true;
    held.delete(file);
    process.removeListener('exit', onExit);
    try {
      if (readText(file) === text) unlinkSync(file);
      else log.warn({ file }, `the ${kind.what} lock was no longer this process's at stop; left as it is`);
    } catch (err) {
      log.warn({ file, err: (err as Error).message }, `the ${kind.what} lock could not be removed at stop; the next start takes it over`);
    }
  }
  return { file, release };
}
