// The live device registry of a running proxy. It follows its file: an edit (by hand, by an editor
// that replaces the file, or by `edge-proxy devices`) is seen within a second and swaps the whole
// registry at once, or, when the new file has problems, changes nothing and says what to fix.

import { EventEmitter } from 'node:events';
import { closeSync, fstatSync, openSync, readFileSync, watch, type FSWatcher } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import type { Logger } from 'pino';
import { EdgeError } from '../core/errors.js';
import { formatRegistryProblem, MAX_REGISTRY_BYTES, parseRegistry, type DeviceEntry, type RegistryProblem } from './registry.js';

export interface RegistryChange {
  added: string[];
  removed: string[];
  /** the token hash changed: the old token no longer works */
  rotated: string[];
  /** publish or subscribe filters differ */
  filtersChanged: string[];
  attrsChanged: string[];
}

const DEBOUNCE_MS = 75;
/** The fallback when fs.watch misses an event (network filesystems, some containers, a directory made later). */
const POLL_MS = 500;

type ReadResult = { text: string; signature: string } | { missing: true } | { error: string };

/** `invalid`: an edit of the file was refused (unreadable, or with problems); the registry did not change. */
export class DeviceRegistry extends EventEmitter<{ change: [RegistryChange]; invalid: [] }> {
  private devices: ReadonlyMap<string, DeviceEntry> = new Map();
  private readonly file: string;
  private readonly log: Logger;
  private readonly required: boolean;
  private watcher: FSWatcher | null = null;
  private poller: NodeJS.Timeout | null = null;
  private debounce: NodeJS.Timeout | null = null;
  /** stat of the file last read (or `missing`), so the poll and the watcher only reload on a real change */
  private signature = '';
  private reloading: Promise<void> | null = null;
  private reloadAgain = false;
  private running = false;

  constructor(opts: { file: string; log: Logger; required: boolean }) {
    super();
    this.file = opts.file;
    this.log = opts.log;
    this.required = opts.required;
  }

  /** Reads the file. A missing file is an empty registry. Problems: throws EdgeError('E_REGISTRY', every problem, one a line). */
  start(): void {
    if (this.running) return;
    const read = readSync(this.file);
    if ('error' in read) throw new EdgeError('E_REGISTRY', `cannot read the device registry ${this.file}: ${read.error}`);
    if ('missing' in read) {
      this.signature = 'missing';
      this.logMissing();
    } else {
      const { devices, problems } = parseRegistry(read.text, this.file);
      if (problems.length > 0) throw new EdgeError('E_REGISTRY', problemListing(this.file, problems));
      this.devices = devices;
      this.signature = read.signature;
      this.log.debug({ file: this.file, devices: devices.size }, 'device registry read');
    }
    this.running = true;
    this.armWatcher();
    this.poller = setInterval(() => void this.poll(), POLL_MS).unref();
  }

  stop(): void {
    this.running = false;
    this.watcher?.close();
    this.watcher = null;
    if (this.poller) clearInterval(this.poller);
    if (this.debounce) clearTimeout(this.debounce);
    this.poller = this.debounce = null;
  }

  get(id: string): DeviceEntry | undefined {
    return this.devices.get(id);
  }

  get size(): number {
    return this.devices.size;
  }

  /** Watches the directory, not the file: a file replaced by rename would leave a file watch on the old inode. */
  private armWatcher(): void {
    if (this.watcher || !this.running) return;
    const name = basename(this.file);
    try {
      this.watcher = watch(dirname(this.file), { persistent: false }, (_event, changed) => {
        if (changed === null || changed === name) this.schedule();
      });
      this.watcher.on('error', (err) => {
        this.log.warn(
          { file: this.file, err: err.message },
          'watching the device registry failed; changes are still seen by polling once a second',
        );
        this.watcher?.close();
        this.watcher = null;
      });
    } catch {
      // No directory yet, or no inotify left: the poll covers it and retries the watch.
      this.watcher = null;
    }
  }

  private async poll(): Promise<void> {
    this.armWatcher();
    const now = await statSignature(this.file);
    if (now !== this.signature) this.schedule();
  }

  /** Editors write in bursts (truncate, write, rename); read once the burst is over. */
  private schedule(): void {
    if (!this.running) return;
    if (this.debounce) clearTimeout(this.debounce);
    this.debounce = setTimeout(() => {
      this.debounce = null;
      this.reload().catch((err: Error) => {
        // Only a throwing `change` listener gets here; the new registry is in force already.
        this.log.error({ file: this.file, err: err.message }, 'a listener of device registry changes failed');
      });
    }, DEBOUNCE_MS).unref();
  }

  /** One reload at a time; a change seen during one is read right after it. */
  private async reload(): Promise<void> {
    if (this.reloading) {
      this.reloadAgain = true;
      return this.reloading;
    }
    this.reloading = (async () => {
      do {
        this.reloadAgain = false;
        await this.reloadOnce();
      } while (this.reloadAgain && this.running);
    })();
    try {
      await this.reloading;
    } finally {
      this.reloading = null;
    }
  }

  private async reloadOnce(): Promise<void> {
    const read = await readAsync(this.file);
    if (!this.running) return;
    if ('error' in read) {
      // Remembered, so the poll does not log the same failure every second.
      this.signature = await statSignature(this.file);
      this.log.error(
        { file: this.file, err: read.error },
        `cannot read the device registry ${this.file} (${read.error}); the devices loaded before stay in force`,
      );
      this.emit('invalid');
      return;
    }
    if ('missing' in read) {
      if (this.signature !== 'missing') {
        this.log.warn(
          { file: this.file, devices: this.devices.size },
          'the device registry file is gone; the devices loaded before stay in force until it is back (restart to run with none)',
        );
      }
      this.signature = 'missing';
      return;
    }
    if (read.signature === this.signature) return;
    this.signature = read.signature;
    const { devices, problems } = parseRegistry(read.text, this.file);
    if (problems.length > 0) {
      this.log.error(
        { file: this.file, problems: problems.map(formatRegistryProblem) },
        `${problemListing(this.file, problems)}\nnothing changed: the devices loaded before stay in force. Fix the file (edge-proxy devices list shows the same problems) and save it again`,
      );
      this.emit('invalid');
      return;
    }
    const change = diff(this.devices, devices);
    this.devices = devices; // the swap: every lookup from here on sees the new file whole
    const changed = [change.added, change.removed, change.rotated, change.filtersChanged, change.attrsChanged].some(
      (ids) => ids.length > 0,
    );
    this.log.info(
      { file: this.file, devices: devices.size, ...change },
      changed ? 'device registry changed' : 'device registry re-read; no device changed',
    );
    if (changed) this.emit('change', change);
  }

  private logMissing(): void {
    const how = `add a device with \`edge-proxy devices add <id>\` (it creates ${this.file})`;
    if (this.required)
      this.log.warn({ file: this.file }, `no device registry at ${this.file}: every device is refused until one is added; ${how}`);
    else this.log.info({ file: this.file }, `no device registry at ${this.file}; ${how}`);
  }
}

function problemListing(file: string, problems: readonly RegistryProblem[]): string {
  const count = `${problems.length} problem${problems.length === 1 ? '' : 's'}`;
  return `the device registry ${file} has ${count}:\n${problems.map(formatRegistryProblem).join('\n')}`;
}

function signatureOf(s: { ino: number; size: number; mtimeMs: number; ctimeMs: number }): string {
  return `${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`;
}

async function statSignature(file: string): Promise<string> {
  try {
    return signatureOf(await stat(file));
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : `error:${(err as Error).message}`;
  }
}

function tooLarge(size: number): string {
  return `it is ${size} bytes, more than the ${MAX_REGISTRY_BYTES} a registry may have`;
}

function readSync(file: string): ReadResult {
  try {
    const fd = openSync(file, 'r');
    try {
      const s = fstatSync(fd);
      if (s.size > MAX_REGISTRY_BYTES) return { error: tooLarge(s.size) };
      return { text: readFileSync(fd, 'utf8'), signature: signatureOf(s) };
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    return readFailure(err);
  }
}

/** The stat and the text come from one open file, so the signature describes the text read. */
async function readAsync(file: string): Promise<ReadResult> {
  try {
    const handle = await open(file, 'r');
    try {
      const s = await handle.stat();
      if (s.size > MAX_REGISTRY_BYTES) return { error: tooLarge(s.size) };
      return { text: await handle.readFile('utf8'), signature: signatureOf(s) };
    } finally {
      await handle.close();
    }
  } catch (err) {
    return readFailure(err);
  }
}

function readFailure(err: unknown): ReadResult {
  const e = err as NodeJS.ErrnoException;
  if (e.code === 'ENOENT') return { missing: true };
  return { error: e.code === 'EACCES' ? "permission denied (the proxy's user must be able to read it)" : e.message };
}

function diff(before: ReadonlyMap<string, DeviceEntry>, after: ReadonlyMap<string, DeviceEntry>): RegistryChange {
  const change: RegistryChange = { added: [], removed: [], rotated: [], filtersChanged: [], attrsChanged: [] };
  for (const id of before.keys()) if (!after.has(id)) change.removed.push(id);
  for (const [id, next] of after) {
    const prev = before.get(id);
    if (!prev) {
      change.added.push(id);
      continue;
    }
    if (prev.tokenSha256 !== next.tokenSha256) change.rotated.push(id);
    if (!sameList(prev.publish.filters, next.publish.filters) || !sameList(prev.subscribe.filters, next.subscribe.filters))
      change.filtersChanged.push(id);
    if (!sameAttrs(prev.attrs, next.attrs)) change.attrsChanged.push(id);
  }
  return change;
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function sameAttrs(a: Readonly<Record<string, unknown>>, b: Readonly<Record<string, unknown>>): boolean {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => Object.hasOwn(b, k) && Object.is(a[k], b[k]));
}
