// Edits of the registry file for `edge-proxy devices`. An edit keeps the file's comments and order,
// refuses a file that has problems (it would be guessing what the operator meant), and replaces the
// file atomically, so a running proxy reading it sees the old registry or the new one, never half.

import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, realpath, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Stats } from 'node:fs';
import { isMap, isScalar, isSeq, parseDocument, YAMLSeq, type Document, type Node as YamlNode, type YAMLMap } from 'yaml';
import { topicFilterProblem } from '../config/schema.js';
import { closestName } from '../core/did-you-mean.js';
import { EdgeError } from '../core/errors.js';
import { EDGE_DEVICE_ID, isValidDeviceId } from '../core/message.js';
import { ATTR_NAME, formatRegistryProblem, MAX_FILTERS, parseRegistry, type DeviceEntry } from './registry.js';
import { hashToken, makeToken } from './token.js';

export type AttrValue = string | number | boolean;

export interface NewDevice {
  attrs?: Readonly<Record<string, AttrValue>>;
  /** when absent, the entry names none and the defaults apply: devices/<id>/# */
  publish?: readonly string[];
  /** when absent: devices/<id>/# and broadcast/# */
  subscribe?: readonly string[];
}

/** A file the CLI creates: the proxy's group may read it, nobody else. */
export const NEW_FILE_MODE = 0o640;

/** Adds a device; returns its token, which is stored nowhere (only its SHA-256 is). */
export async function addDevice(file: string, id: string, device: NewDevice = {}): Promise<string> {
  checkNewDevice(file, id, device);
  const edit = await openForEdit(file);
  if (edit.devices.has(id)) {
    throw new EdgeError('E_REGISTRY', `device \`${id}\` is already in ${file}; \`edge-proxy devices rotate ${id}\` gives it a new token`);
  }
  const token = makeToken(id);
  const item = edit.doc.createNode(newEntry(id, hashToken(token), device)) as YAMLMap;
  for (const key of ['publish', 'subscribe', 'attrs']) {
    const value = item.get(key, true);
    if (isSeq(value) || isMap(value)) value.flow = true; // one line each, as the documentation writes them
  }
  const seq = edit.list();
  if (seq.items.length === 0) seq.flow = false; // `[]` would otherwise become a one-line flow list
  seq.items.push(item);
  await edit.save();
  return token;
}

/** Removes a device. A running proxy disconnects it. */
export async function removeDevice(file: string, id: string): Promise<void> {
  const edit = await openForEdit(file);
  const index = edit.indexOf(id);
  const seq = edit.list();
  const [removed] = seq.items.splice(index, 1) as YamlNode[];
  keepComment(edit.doc, seq, index, removed?.commentBefore);
  await edit.save();
}

/** Gives a device a new token and returns it; the old token stops working. */
export async function rotateDevice(file: string, id: string): Promise<string> {
  const edit = await openForEdit(file);
  const item = edit.list().items[edit.indexOf(id)];
  const token = makeToken(id);
  const hash = item && isMap(item) ? item.get('tokenSha256', true) : undefined;
  // Replacing the value in place keeps a comment written after it.
  if (!isScalar(hash)) throw new EdgeError('E_REGISTRY', `device \`${id}\` in ${file} has no tokenSha256 to replace`);
  hash.value = hashToken(token);
  await edit.save();
  return token;
}

/** The devices of the file, in file order; none when it does not exist. */
export async function listDevices(file: string): Promise<DeviceEntry[]> {
  const { devices } = checked(file, await readText(file));
  return [...devices.values()];
}

// ---------------------------------------------------------------------------------------------

function refuse(message: string): never {
  throw new EdgeError('E_REGISTRY', message);
}

/** The CLI's arguments, judged before the file is touched, with messages that name what to fix. */
function checkNewDevice(file: string, id: string, device: NewDevice): void {
  if (!isValidDeviceId(id))
    refuse(`\`${id}\` is not a valid device id (1 to 128 characters from A-Z a-z 0-9 _ . : -); ${file} is unchanged`);
  if (id === EDGE_DEVICE_ID) refuse(`\`${EDGE_DEVICE_ID}\` is reserved for the proxy's own messages; choose another id`);
  for (const [name, list] of [
    ['publish', device.publish],
    ['subscribe', device.subscribe],
  ] as const) {
    if (!list) continue;
    if (list.length > MAX_FILTERS) refuse(`${list.length} ${name} filters, more than the ${MAX_FILTERS} allowed`);
    for (const filter of list) {
      const problem = topicFilterProblem(filter);
      if (problem) refuse(`${name} filter \`${filter}\` is not a valid topic filter: ${problem}`);
    }
  }
  for (const [name, value] of Object.entries(device.attrs ?? {})) {
    if (!ATTR_NAME.test(name)) refuse(`attribute name \`${name}\` must be a letter or _ then letters, digits or _`);
    if (name === 'id') refuse('an attribute cannot be named `id`: rules read the device id as device.id');
    if (typeof value === 'number' && !Number.isFinite(value)) refuse(`attribute \`${name}\` must be a finite number`);
  }
}

function newEntry(id: string, tokenSha256: string, device: NewDevice): Record<string, unknown> {
  const entry: Record<string, unknown> = { id, tokenSha256 };
  if (device.publish) entry.publish = [...device.publish];
  if (device.subscribe) entry.subscribe = [...device.subscribe];
  if (device.attrs && Object.keys(device.attrs).length > 0) entry.attrs = { ...device.attrs };
  return entry;
}

interface FileText {
  /** the file written: a symlink's target, so the link stays a link */
  target: string;
  text: string;
  stats: Stats | null;
}

async function readText(file: string): Promise<FileText> {
  const target = await realpath(file).catch(() => file);
  try {
    const stats = await stat(target);
    return { target, text: await readFile(target, 'utf8'), stats };
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT') return { target, text: '', stats: null };
    throw new EdgeError('E_REGISTRY', `cannot read the device registry ${file}: ${e.code ?? e.message}`, { cause: err });
  }
}

function checked(file: string, input: FileText): ReturnType<typeof parseRegistry> {
  const result = parseRegistry(input.text, file);
  if (result.problems.length > 0) {
    const count = `${result.problems.length} problem${result.problems.length === 1 ? '' : 's'}`;
    refuse(
      `the device registry ${file} has ${count}; fix ${result.problems.length === 1 ? 'it' : 'them'} first, nothing was changed:\n${result.problems.map(formatRegistryProblem).join('\n')}`,
    );
  }
  return result;
}

interface Edit {
  doc: Document;
  devices: ReadonlyMap<string, DeviceEntry>;
  /** the document's list of devices, made when the file has none yet */
  list(): YAMLSeq;
  /** the index of a device in the list; refused with a did-you-mean when there is none */
  indexOf(id: string): number;
  save(): Promise<void>;
}

async function openForEdit(file: string): Promise<Edit> {
  const input = await readText(file);
  const { devices } = checked(file, input);
  const doc: Document = parseDocument(input.text, { prettyErrors: false, uniqueKeys: true });
  pinText(doc);
  return {
    doc,
    devices,
    list() {
      if (!isSeq(doc.contents)) doc.contents = new YAMLSeq(doc.schema);
      return doc.contents;
    },
    // With no problems every list item is one device, so file order is list order.
    indexOf(id) {
      const index = [...devices.keys()].indexOf(id);
      if (index >= 0) return index;
      const hint = closestName(id, [...devices.keys()]);
      refuse(`no device \`${id}\` in ${file}${hint ? `: did you mean \`${hint}\`?` : devices.size === 0 ? ' (it has no devices)' : ''}`);
    },
    async save() {
      const text = String(doc);
      // The edit must leave a file the proxy accepts; anything else is a fault here, not the operator's.
      const after = parseRegistry(text, file);
      if (after.problems.length > 0) {
        throw new EdgeError(
          'E_INTERNAL',
          `the edited registry would not be valid, so ${file} was not changed:\n${after.problems.map(formatRegistryProblem).join('\n')}`,
        );
      }
      await writeAtomically(file, input, text);
    },
  };
}

/**
 * A plain scalar YAML reads as a number or boolean would be written back in YAML's own spelling
 * (`id: 007` as `7`, `0x1F` as `0x1f`). Ids, hashes, filters and key names are text, as the parser
 * reads them: they are set to the text as written, which the writer then quotes where it must.
 */
function pinText(doc: Document): void {
  if (!isSeq(doc.contents)) return;
  const pin = (node: unknown) => {
    if (isScalar(node) && typeof node.value !== 'string' && node.value !== null && node.type === 'PLAIN' && node.source)
      node.value = node.source;
  };
  for (const item of doc.contents.items) {
    if (!isMap(item)) continue;
    for (const pair of item.items) {
      pin(pair.key);
      const key = isScalar(pair.key) ? pair.key.value : undefined;
      if (key === 'id' || key === 'tokenSha256') pin(pair.value);
      if ((key === 'publish' || key === 'subscribe') && isSeq(pair.value)) pair.value.items.forEach(pin);
      if (key === 'attrs' && isMap(pair.value)) pair.value.items.forEach((attr) => pin(attr.key));
    }
  }
}

/**
 * The comment above a removed device is kept: it may be the file's header, or a heading for the
 * devices below it. It goes to the next device, or, for the last one, after the list.
 */
function keepComment(doc: Document, seq: YAMLSeq, index: number, comment: string | null | undefined): void {
  if (!comment) return;
  const next = seq.items[index] as YamlNode | undefined;
  if (next) next.commentBefore = next.commentBefore ? `${comment}\n${next.commentBefore}` : comment;
  else if (seq.items.length === 0) doc.commentBefore = doc.commentBefore ? `${doc.commentBefore}\n${comment}` : comment;
  else seq.comment = seq.comment ? `${comment}\n${seq.comment}` : comment;
}

/**
 * Temp file in the same directory, fsync, rename over the file, fsync the directory: after a crash
 * the file is the old one or the new one. The new file keeps the old one's mode and, when root can,
 * its owner and group: under systemd the proxy's own user must still be able to read it.
 */
async function writeAtomically(file: string, input: FileText, text: string): Promise<void> {
  const dir = dirname(input.target);
  await mkdir(dir, { recursive: true });
  const tmp = join(dir, `.${basename(input.target)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  let handle: FileHandle | null = null;
  try {
    const mode = input.stats ? input.stats.mode & 0o7777 : NEW_FILE_MODE;
    handle = await open(tmp, 'wx', mode);
    await handle.chmod(mode); // the umask may have taken bits away
    if (input.stats && process.getuid?.() === 0) await handle.chown(input.stats.uid, input.stats.gid);
    await handle.writeFile(text, 'utf8');
    await handle.sync();
    await handle.close();
    handle = null;
    await refuseIfChanged(file, input);
    await rename(tmp, input.target);
  } catch (err) {
    await handle?.close().catch(() => {});
    await rm(tmp, { force: true }).catch(() => {});
    if (err instanceof EdgeError) throw err;
    const e = err as NodeJS.ErrnoException;
    throw new EdgeError('E_REGISTRY', `cannot write ${file}: ${e.code ?? e.message}; it is unchanged`, { cause: err });
  }
  await syncDirectory(dir);
}

/** Another edit finished while this one was being made: writing now would undo it. */
async function refuseIfChanged(file: string, input: FileText): Promise<void> {
  const now = await readFile(input.target, 'utf8').catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? null : ''));
  const before = input.stats ? input.text : null;
  if (now !== before) refuse(`${file} changed while it was being edited; nothing was written, run the command again`);
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
