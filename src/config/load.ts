// Loading the configuration: YAML file, then EDGE_PROXY_* overrides, then defaults, then the schema.
// Every step collects problems instead of stopping at the first, so an operator fixes a file in one go,
// and every problem says where it is (file:line:col, or the environment variable).

import { existsSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import type { ErrorObject } from 'ajv';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, visit, type Document } from 'yaml';
import { closestName } from '../core/did-you-mean.js';
import { ConfigError, type ConfigProblem } from '../core/errors.js';
import { redactUrl } from '../core/redact.js';
import {
  configValidator,
  configSchemaTree,
  PLANNED_KEYS,
  schemaAt,
  schemaChild,
  schemaLeaves,
  topicFilterProblem,
  type SchemaLeaf,
  type SchemaNode,
} from './schema.js';
import { checkNamedFiles, whyUnreadable } from './files.js';
import type { Config, LoadedConfig } from './types.js';
import { DURATION_UNIT_NAMES, formatSize, parseDuration, parseSize, SIZE_UNIT_NAMES } from './units.js';

const DEFAULT_CONFIG_FILE = 'edge-proxy.yaml';
const ENV_PREFIX = 'EDGE_PROXY_';
/** The `source` of problems that come from neither a file nor the environment. */
const DEFAULTS_SOURCE = '(defaults)';

export interface LoadOptions {
  /** the file to read; undefined: ./edge-proxy.yaml if present, else the defaults; null: the defaults */
  file?: string | null;
  /** where EDGE_PROXY_* overrides come from; process.env when left out */
  env?: NodeJS.ProcessEnv;
  /**
   * the directory the default file is looked for in, and relative paths are resolved against when they
   * come from the defaults or an EDGE_PROXY_* variable (a path written in a file is relative to that file)
   */
  cwd?: string;
  /**
   * also check the files the configuration names as `run` would use them (files.ts): TLS files readable
   * and usable, admin.tokenFile, devicesFile in token mode parsed as the registry. `check-config` and
   * `run` both ask for it, through this one function, so both refuse the same with the same lines.
   */
  checkFiles?: boolean;
}

interface CheckResult {
  /** the absolute path of the file read, or null for the embedded defaults */
  file: string | null;
  /** every problem found, in file order, then environment problems */
  problems: readonly ConfigProblem[];
  /** the configuration, when there is no problem */
  loaded: LoadedConfig | null;
  /** what is worth saying but stops nothing (checkFiles: a registry not written yet), as `file:line:col: key: warning: ...` */
  warnings: readonly string[];
}

/** Loads and validates the configuration; throws a ConfigError listing every problem. */
export function loadConfig(opts: LoadOptions = {}): LoadedConfig {
  const result = checkConfig(opts);
  if (!result.loaded) throw new ConfigError(result.problems);
  return result.loaded;
}

/** Like loadConfig, but returns the problems instead of throwing (for `edge-proxy check-config`). */
export function checkConfig(opts: LoadOptions = {}): CheckResult {
  const cwd = opts.cwd ?? process.cwd();
  const input = readInput(opts.file, cwd);
  const result = checkConfigText(input.text, { source: input.source, file: input.file, env: opts.env, cwd, checkFiles: opts.checkFiles });
  if (!input.problem) return result;
  // An unreadable file stops the load, but the environment's own problems are still worth telling.
  return { ...result, problems: [input.problem, ...result.problems], loaded: null };
}

interface TextOptions {
  /** how problems name the text, usually the file path as the user gave it */
  source: string;
  /** what LoadedConfig.file says */
  file?: string | null;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  checkFiles?: boolean;
}

/** Checks configuration text that did not come from a file (null: the embedded defaults). */
function checkConfigText(text: string | null, opts: TextOptions): CheckResult {
  const file = opts.file ?? null;
  const cwd = opts.cwd ?? process.cwd();
  const parsed = text === null ? emptyInput(opts.source) : parseYaml(text, opts.source);
  const { tree, where } = parsed;
  const problems = [...parsed.problems, ...applyEnvironment(tree, opts.env ?? process.env, where)];
  const trialDefaults = trialDefaultsLeftAlone(tree);
  const bases = pathBases(tree, where, text === null || file === null ? null : dirname(file), cwd);
  const reported = new Set<string>();
  problems.push(...convertUnits(tree, where, reported));
  fillDefaults(tree);
  problems.push(...schemaProblems(tree, where, reported), ...crossKeyProblems(tree, where));
  // The files named by the keys that are known, also when others have problems: every problem at once.
  const files = opts.checkFiles ? fileChecks(tree, where, bases, problems) : { problems: [], inFiles: [], warnings: [] };
  // The configuration's own problems in reading order, then those inside the files it names.
  const all = [...sortProblems([...problems, ...files.problems]), ...files.inFiles];
  // No problem means the schema accepted the tree; asking again lets the compiler see it is a Config.
  const validate = configValidator();
  if (all.length > 0 || !validate(tree)) return { file, problems: all, loaded: null, warnings: files.warnings };
  return { file, problems: [], loaded: { config: finish(tree, bases), file, trialDefaults }, warnings: files.warnings };
}

// ---------------------------------------------------------------------------------------------
// Reading the file

interface Input {
  text: string | null;
  source: string;
  file: string | null;
  problem?: ConfigProblem;
}

function readInput(file: string | null | undefined, cwd: string): Input {
  if (file === null) return { text: null, source: DEFAULTS_SOURCE, file: null };
  if (file === undefined) {
    const implicit = join(cwd, DEFAULT_CONFIG_FILE);
    if (!existsSync(implicit)) return { text: null, source: DEFAULTS_SOURCE, file: null };
    return readFile(DEFAULT_CONFIG_FILE, implicit);
  }
  return readFile(file, resolve(cwd, file));
}

function readFile(source: string, absolute: string): Input {
  try {
    return { text: readFileSync(absolute, 'utf8'), source, file: absolute };
  } catch (err) {
    const reason = whyUnreadable(err);
    const problem = makeProblem('E_CONFIG_FILE', { source, line: 1, col: 1 }, [], `cannot read ${absolute}: ${reason}`);
    return { text: null, source, file: absolute, problem };
  }
}

// ---------------------------------------------------------------------------------------------
// Positions: where each key and value was written

type KeyPath = readonly string[];
type Tree = Record<string, unknown>;

interface Where {
  source: string;
  line: number;
  col: number;
}

/** Finds where a key or value came from: an environment variable, a place in the file, or nowhere. */
class Locations {
  private readonly keys = new Map<string, Where>();
  private readonly values = new Map<string, Where>();
  private readonly env = new Map<string, Where>();

  constructor(private readonly fallback: Where) {}

  addKey(path: KeyPath, where: Where): void {
    this.keys.set(pathId(path), where);
  }

  addValue(path: KeyPath, where: Where): void {
    this.values.set(pathId(path), where);
  }

  /** An environment override replaces the file's value, and so takes the blame for it. */
  addEnv(path: KeyPath, variable: string): void {
    this.env.set(pathId(path), { source: `env:${variable}`, line: 1, col: 1 });
  }

  ofKey(path: KeyPath): Where {
    return this.fromEnv(path) ?? this.keys.get(pathId(path)) ?? this.ofValue(path);
  }

  ofValue(path: KeyPath): Where {
    const fromEnv = this.fromEnv(path);
    if (fromEnv) return fromEnv;
    // A default or a value inside something the file wrote: point at the closest thing the file wrote.
    for (let n = path.length; n >= 0; n--) {
      const where = this.values.get(pathId(path.slice(0, n)));
      if (where) return where;
    }
    return this.fallback;
  }

  /** Whether an EDGE_PROXY_* variable set this key (or one above it) rather than the file. */
  isFromEnv(path: KeyPath): boolean {
    return this.fromEnv(path) !== undefined;
  }

  /** A variable that set this key or one above it (a list item inside EDGE_PROXY_ROUTING_PRIORITIES). */
  private fromEnv(path: KeyPath): Where | undefined {
    for (let n = path.length; n >= 1; n--) {
      const where = this.env.get(pathId(path.slice(0, n)));
      if (where) return where;
    }
    return undefined;
  }
}

function pathId(path: KeyPath): string {
  return JSON.stringify(path);
}

// ---------------------------------------------------------------------------------------------
// YAML

interface Parsed {
  tree: Tree;
  where: Locations;
  problems: ConfigProblem[];
}

function emptyInput(source: string): Parsed {
  return { tree: {}, where: new Locations({ source, line: 1, col: 1 }), problems: [] };
}

function parseYaml(text: string, source: string): Parsed {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const at = (offset: number): Where => ({ source, ...lineCounter.linePos(offset) });
  const where = new Locations(at(0));
  const syntax = [...doc.errors, ...doc.warnings].map((e) => makeProblem('E_CONFIG_YAML', at(e.pos[0]), [], e.message));
  // A document with syntax errors may be cut anywhere; checking its keys would only add noise.
  if (syntax.length > 0) return { tree: {}, where, problems: syntax };
  indexNode(doc.contents, [], where, at);
  const value = toPlainValue(doc, at);
  if ('problem' in value) return { tree: {}, where, problems: [value.problem] };
  if (value.value === null || value.value === undefined) return { tree: {}, where, problems: [] };
  if (!isTree(value.value)) {
    const message = `the file must be a mapping of keys, not ${describeValue(value.value)}`;
    return { tree: {}, where, problems: [makeProblem('E_CONFIG_TYPE', where.ofValue([]), [], message)] };
  }
  return { tree: value.value, where, problems: [] };
}

function toPlainValue(doc: Document, at: (offset: number) => Where): { value: unknown } | { problem: ConfigProblem } {
  try {
    return { value: doc.toJS({ maxAliasCount: 100 }) };
  } catch (err) {
    // An alias to a missing anchor, or an alias bomb: the only failures left once the syntax is sound.
    return { problem: makeProblem('E_CONFIG_YAML', at(firstAliasOffset(doc)), [], (err as Error).message) };
  }
}

function firstAliasOffset(doc: Document): number {
  let offset = 0;
  visit(doc, {
    Alias(_key, node) {
      offset = node.range?.[0] ?? 0;
      return visit.BREAK;
    },
  });
  return offset;
}

/** Records where each key and value of the document starts, by key path. */
function indexNode(node: unknown, path: KeyPath, where: Locations, at: (offset: number) => Where): void {
  const start = rangeStart(node);
  if (start !== undefined) where.addValue(path, at(start));
  if (isMap(node)) {
    for (const pair of node.items) {
      const key = isScalar(pair.key) ? String(pair.key.value) : String(pair.key);
      const keyStart = rangeStart(pair.key);
      if (keyStart !== undefined) where.addKey([...path, key], at(keyStart));
      // `port:` with nothing after it has no value node worth pointing at: the key will do.
      if (rangeStart(pair.value) === undefined && keyStart !== undefined) where.addValue([...path, key], at(keyStart));
      indexNode(pair.value, [...path, key], where, at);
    }
  } else if (isSeq(node)) {
    node.items.forEach((item, i) => indexNode(item, [...path, String(i)], where, at));
  }
}

function rangeStart(node: unknown): number | undefined {
  if (typeof node !== 'object' || node === null || !('range' in node)) return undefined;
  const range = (node as { range?: readonly number[] | null }).range;
  return range?.[0];
}

// ---------------------------------------------------------------------------------------------
// Environment overrides

let envLeavesCache: ReadonlyMap<string, SchemaLeaf> | undefined;

/** Derived from the schema, so a new key gets its variable without anyone writing it down. */
function envLeaves(): ReadonlyMap<string, SchemaLeaf> {
  if (envLeavesCache) return envLeavesCache;
  const map = new Map<string, SchemaLeaf>();
  for (const leaf of schemaLeaves()) {
    const name = envName(leaf.path);
    if (map.has(name)) throw new Error(`two configuration keys share the variable ${name}`);
    map.set(name, leaf);
  }
  envLeavesCache = map;
  return map;
}

function envName(path: KeyPath): string {
  return ENV_PREFIX + path.map((key) => key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()).join('_');
}

function applyEnvironment(tree: Tree, env: NodeJS.ProcessEnv, where: Locations): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const leaves = envLeaves();
  for (const [name, raw] of Object.entries(env)) {
    if (!name.startsWith(ENV_PREFIX) || raw === undefined) continue;
    const leaf = leaves.get(name);
    if (!leaf) {
      problems.push(unknownEnvProblem(name));
      continue;
    }
    const parsed = parseEnvValue(raw, leaf);
    if ('problem' in parsed) {
      problems.push(makeProblem('E_CONFIG_YAML', envWhere(name), leaf.path, parsed.problem));
      continue;
    }
    // A parent the file made into a scalar cannot take the key; the file's type error says so already.
    if (setAt(tree, leaf.path, parsed.value)) where.addEnv(leaf.path, name);
  }
  return problems;
}

function envWhere(name: string): Where {
  return { source: `env:${name}`, line: 1, col: 1 };
}

/**
 * A YAML scalar, so `1884` is a number and `null` is null. A key that holds text gets the text as it is
 * (only `null` still means null where null is allowed): a password `123456` or `pa #ss` must not turn
 * into a number or lose its tail to a YAML comment.
 */
function parseEnvValue(raw: string, { node }: SchemaLeaf): { value: unknown } | { problem: string } {
  if (node.type === 'array') return yamlValue(raw);
  const value = yamlScalar(raw);
  if (node.type !== 'string') return { value };
  return { value: value === null && node.nullable ? null : raw };
}

/** A list is written as YAML, e.g. `[{topic: "devices/+/alarm/#", priority: critical}]`; the schema checks the rest. */
function yamlValue(raw: string): { value: unknown } | { problem: string } {
  const doc = parseDocument(raw, { prettyErrors: false, uniqueKeys: true });
  const error = [...doc.errors, ...doc.warnings][0];
  if (error) return { problem: `not valid YAML: ${error.message}` };
  try {
    return { value: doc.toJS({ maxAliasCount: 100 }) };
  } catch (err) {
    return { problem: `not valid YAML: ${(err as Error).message}` };
  }
}

function yamlScalar(raw: string): unknown {
  const doc = parseDocument(raw, { prettyErrors: false });
  if (doc.errors.length > 0 || doc.warnings.length > 0) return raw;
  if (doc.contents === null) return null;
  return isScalar(doc.contents) ? doc.contents.value : raw;
}

function unknownEnvProblem(name: string): ConfigProblem {
  const where = envWhere(name);
  const planned = [...PLANNED_KEYS].find((key) => envName(key.split('.')) === name);
  const known = [...envLeaves().keys()].map((n) => n.slice(ENV_PREFIX.length));
  const hint = planned ? `: ${planned} is not available in this version` : didYouMean(name.slice(ENV_PREFIX.length), known, ENV_PREFIX);
  return makeProblem('E_CONFIG_UNKNOWN_KEY', where, [], `${name} names no configuration key${hint}`);
}

// ---------------------------------------------------------------------------------------------
// Sizes, durations, defaults

/** Keys whose trial-grade default nobody overrode; read before the defaults fill them in. */
function trialDefaultsLeftAlone(tree: Tree): string[] {
  return schemaLeaves()
    .filter((leaf) => leaf.node.trialDefault && getAt(tree, leaf.path) === undefined)
    .map((leaf) => leaf.path.join('.'));
}

/** Turns `256KiB` and `30s` into numbers, so the schema can check ranges on one representation. */
function convertUnits(tree: Tree, where: Locations, reported: Set<string>): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  for (const { path, node } of schemaLeaves()) {
    const value = getAt(tree, path);
    if (!node.unit || typeof value !== 'string') continue;
    const converted = node.unit === 'size' ? parseSize(value) : parseDuration(value);
    if (converted === null) {
      problems.push(makeProblem('E_CONFIG_VALUE', where.ofValue(path), path, `\`${value}\` is not ${unitHelp(node)}`));
      reported.add(instancePath(path));
    } else {
      setAt(tree, path, converted);
    }
  }
  return problems;
}

function unitHelp(node: SchemaNode): string {
  return node.unit === 'size'
    ? `a size: write a number of bytes, or a number with a unit (${SIZE_UNIT_NAMES.join(', ')}), such as 256KiB`
    : `a duration: write a number of seconds, or a number with a unit (${DURATION_UNIT_NAMES.join(', ')}), such as 30s`;
}

/** Fills in every key left out; a section written as an empty key (`mqtt:`) counts as left out. */
function fillDefaults(tree: Tree): void {
  fillSection(tree, schemaAt([]) ?? {});
  const edge = tree['edge'];
  if (isTree(edge) && edge['id'] === undefined) edge['id'] = hostname() || 'edge';
  const cache = tree['cache'];
  if (isTree(cache) && cache['path'] === undefined) {
    // A bad dataDir is reported on its own; the cache path then uses the default dataDir to keep quiet.
    const dataDir = typeof tree['dataDir'] === 'string' ? tree['dataDir'] : './data';
    cache['path'] = join(dataDir, 'cache.db');
  }
}

function fillSection(section: Tree, node: SchemaNode): void {
  for (const [key, child] of Object.entries(node.properties ?? {})) {
    if (child.properties) {
      if (section[key] === undefined || section[key] === null) section[key] = {};
      const value = section[key];
      if (isTree(value)) fillSection(value, child);
    } else if (section[key] === undefined && 'default' in child) {
      // A copy: the result is frozen, and a list default must not freeze the schema's own.
      section[key] = structuredClone(child.default);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Schema problems

function schemaProblems(tree: Tree, where: Locations, reported: ReadonlySet<string>): ConfigProblem[] {
  const validate = configValidator();
  if (validate(tree)) return [];
  const errors = (validate.errors ?? []).filter((e) => !reported.has(e.instancePath));
  return mostUseful(withoutTyposMissing(errors)).map((error) => schemaProblem(error, where));
}

/** `{ topc: a }` is one problem, not two: the "did you mean `topic`" says what the "`topic` is missing" would. */
function withoutTyposMissing(errors: readonly ErrorObject[]): ErrorObject[] {
  const meant = new Set<string>();
  for (const e of errors) {
    if (e.keyword !== 'additionalProperties') continue;
    const known = Object.keys(schemaAt(pathOf(e.instancePath))?.properties ?? {});
    const name = closestName(String(e.params['additionalProperty']), known);
    if (name !== undefined) meant.add(pathId([e.instancePath, name]));
  }
  return errors.filter((e) => e.keyword !== 'required' || !meant.has(pathId([e.instancePath, String(e.params['missingProperty'])])));
}

/** Of several complaints about one value, a wrong type says it all: `enum` after `type` is noise. */
function mostUseful(errors: readonly ErrorObject[]): ErrorObject[] {
  const typed = new Set(errors.filter((e) => e.keyword === 'type').map((e) => e.instancePath));
  return errors.filter((e) => e.keyword === 'type' || !typed.has(e.instancePath));
}

function schemaProblem(error: ErrorObject, where: Locations): ConfigProblem {
  const path = pathOf(error.instancePath);
  if (error.keyword === 'additionalProperties') {
    const key = String(error.params['additionalProperty']);
    const keyPath = [...path, key];
    return makeProblem('E_CONFIG_UNKNOWN_KEY', where.ofKey(keyPath), keyPath, unknownKeyMessage(keyPath));
  }
  const node = (error.parentSchema ?? {}) as SchemaNode;
  const hint = node.hint ? `; ${node.hint}` : '';
  const at = where.ofValue(path);
  if (error.keyword === 'type' && !isFractionOfInteger(error.data, node)) {
    const message = `must be ${describeType(node)}, not ${describeValue(error.data, node, true)}`;
    return makeProblem('E_CONFIG_TYPE', at, path, message);
  }
  return makeProblem('E_CONFIG_VALUE', at, path, valueMessage(error, node) + hint);
}

// 1.5 for a port is the right type but a wrong value.
function isFractionOfInteger(data: unknown, node: SchemaNode): boolean {
  return typeof data === 'number' && node.type === 'integer';
}

function unknownKeyMessage(path: KeyPath): string {
  const key = path[path.length - 1] ?? '';
  const dotted = path.join('.');
  if (PLANNED_KEYS.has(dotted)) return `unknown key \`${key}\`: ${dotted} is not available in this version`;
  const known = Object.keys(schemaAt(path.slice(0, -1))?.properties ?? {});
  return `unknown key \`${key}\`${didYouMean(key, known, '')}`;
}

function valueMessage(error: ErrorObject, node: SchemaNode): string {
  const got = describeValue(error.data, node);
  switch (error.keyword) {
    case 'type':
      return `must be a whole number${node.unit === 'duration' ? ' of seconds' : ''}, not ${got}`;
    case 'minimum':
    case 'maximum':
      return `${rangeText(node)}, not ${got}`;
    case 'enum':
      return `must be ${oneOf(node.enum ?? [])}, not ${got}`;
    case 'const':
      return `must be ${oneOf([node.const])}, not ${got}`;
    case 'minLength':
      return node.minLength === 1 ? 'must not be empty' : `must be at least ${node.minLength} characters long`;
    case 'maxLength':
      return `must be at most ${node.maxLength} characters long, not ${String(error.data).length}`;
    case 'format': {
      // The uplink URL may carry the broker's password: never echoed in clear.
      if (node.format === 'uplink-url') return `${describeValue(redactUrl(String(error.data)), node)} is not allowed`;
      if (node.format !== 'mqtt-topic-filter') return `${got} is not allowed`;
      if (error.data === '') return 'must not be empty: write an MQTT topic filter such as `devices/+/alarm/#`';
      return `${got} is not a valid MQTT topic filter: ${topicFilterProblem(String(error.data)) ?? 'refused'}`;
    }
    case 'pattern':
      return `${got} is not allowed`;
    case 'required':
      return `\`${String(error.params['missingProperty'])}\` is missing`;
    default:
      return error.message ?? `is not allowed (${error.keyword})`;
  }
}

function rangeText(node: SchemaNode): string {
  const show = (n: number) => (node.unit === 'size' ? formatSize(n) : String(n));
  const { minimum: min, maximum: max } = node;
  if (min !== undefined && max !== undefined) return `must be between ${show(min)} and ${show(max)}`;
  return min !== undefined ? `must be at least ${show(min)}` : `must be at most ${show(max ?? 0)}`;
}

function oneOf(values: readonly unknown[]): string {
  const shown = values.map((v) => `\`${String(v)}\``);
  return shown.length === 1 ? (shown[0] ?? '') : `one of ${shown.join(', ')}`;
}

function describeType(node: SchemaNode): string {
  const units = {
    size: 'a size (a number of bytes, or a string such as 256KiB)',
    duration: 'a duration (a number of seconds, or a string such as 30s)',
  };
  const base = node.unit ? units[node.unit] : (node.shape ?? typeName(node.type));
  return node.nullable ? `${base} or null` : base;
}

function typeName(type: SchemaNode['type']): string {
  switch (type) {
    case 'integer':
      return 'a whole number';
    case 'number':
      return 'a number';
    case 'boolean':
      return 'true or false';
    case 'object':
      return 'a mapping of keys';
    case 'array':
      return 'a list';
    default:
      return 'a string';
  }
}

/** `withType`: in a complaint about the type, `4` must read as the string it is, not as the number. */
function describeValue(value: unknown, node?: SchemaNode, withType = false): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'string') return withType ? `the string \`${value}\`` : `\`${value}\``;
  if (typeof value === 'number' && withType) return `the number ${value}`;
  if (typeof value === 'number') return node?.unit === 'size' ? formatSize(value) : String(value);
  if (typeof value === 'object') return 'a mapping';
  return `\`${typeof value === 'boolean' ? String(value) : typeof value}\``;
}

// ---------------------------------------------------------------------------------------------
// Rules that span keys, beyond what the schema says

function crossKeyProblems(tree: Tree, where: Locations): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const isSet = (path: KeyPath) => typeof getAt(tree, path) === 'string';
  // Two sources for one token would leave the operator guessing which one the proxy took.
  if (isSet(['admin', 'token']) && isSet(['admin', 'tokenFile'])) {
    const path = ['admin', 'tokenFile'];
    const message = 'set admin.token or admin.tokenFile, not both';
    problems.push(makeProblem('E_CONFIG_VALUE', where.ofValue(path), path, message));
  }
  // A certificate is useless without its key, and the reverse; TLS would fail only at connect time.
  for (const [section, what] of [
    ['uplink', 'a client certificate'],
    ['mqtt', "the TLS endpoint's certificate"],
    ['http', "the https endpoint's certificate"],
  ] as const) {
    const cert = [section, 'tls', 'cert'];
    const key = [section, 'tls', 'key'];
    if (isSet(cert) === isSet(key)) continue;
    const [given, missing] = isSet(cert) ? [cert, key] : [key, cert];
    const message = `${missing.join('.')} must be set too: ${what} needs its key`;
    problems.push(makeProblem('E_CONFIG_VALUE', where.ofValue(given), given, message));
  }
  // Client certificates are checked against a CA only on the TLS endpoint, which needs cert and key.
  const ca = ['mqtt', 'tls', 'ca'];
  if (isSet(ca) && !isSet(['mqtt', 'tls', 'cert'])) {
    const message =
      'mqtt.tls.ca asks for client certificates on the TLS endpoint, which runs only when mqtt.tls.cert and mqtt.tls.key are set';
    problems.push(makeProblem('E_CONFIG_VALUE', where.ofValue(ca), ca, message));
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------
// Files the configuration names (checkFiles)

/**
 * checkNamedFiles (files.ts) on what is known of the configuration: a key with a problem at it or above
 * it is not known, and its file is not looked at; every other file is, so a file with schema problems
 * is told its missing TLS CA in the same go. Problems at a key are positioned at its value; problems
 * inside a named file (the registry) at their own file:line:col.
 */
function fileChecks(
  tree: Tree,
  where: Locations,
  bases: ReadonlyMap<string, string>,
  found: readonly ConfigProblem[],
): { problems: ConfigProblem[]; inFiles: ConfigProblem[]; warnings: string[] } {
  const problems: ConfigProblem[] = [];
  const inFiles: ConfigProblem[] = [];
  const warnings: string[] = [];
  const faulty = new Set(found.map((p) => p.key).filter((key) => key !== ''));
  const known = (path: KeyPath) => path.every((_, i) => !faulty.has(keyText(path.slice(0, i + 1))));
  checkNamedFiles(
    {
      raw: (path) => getAt(tree, path),
      path: (path) => {
        if (!known(path)) return undefined;
        const value = getAt(tree, path);
        if (value === null || value === undefined) return null;
        return typeof value === 'string' ? resolvedPath(bases, path, value) : undefined;
      },
    },
    {
      problem: (code, path, message) => problems.push(makeProblem(code, where.ofValue(path), path, message)),
      inFile: (problem) => inFiles.push(problem),
      warning: (path, message) => {
        const at = where.ofValue(path);
        warnings.push(`${at.source}:${at.line}:${at.col}: ${keyText(path)}: warning: ${message}`);
      },
    },
  );
  return { problems, inFiles, warnings };
}

// ---------------------------------------------------------------------------------------------
// The result

/**
 * The directory each `resolvePath` key is resolved against, by pathId, read before the defaults fill the
 * tree in: a path written in the file is relative to the file's directory, so `--config /elsewhere/x.yaml`
 * means the same wherever it is run from; a default or an EDGE_PROXY_* variable has no file, so it is
 * relative to the current directory. The default cache path, <dataDir>/cache.db, follows dataDir.
 */
function pathBases(tree: Tree, where: Locations, fileDir: string | null, cwd: string): Map<string, string> {
  const bases = new Map<string, string>();
  for (const { path, node } of schemaLeaves()) {
    if (!node.resolvePath) continue;
    const inFile = fileDir !== null && getAt(tree, path) !== undefined && !where.isFromEnv(path);
    bases.set(pathId(path), inFile ? fileDir : cwd);
  }
  const cachePath = ['cache', 'path'];
  if (getAt(tree, cachePath) === undefined) bases.set(pathId(cachePath), bases.get(pathId(['dataDir'])) ?? cwd);
  return bases;
}

/** A fresh copy in the schema's key order (the start-up log reads better), with templates and paths done. */
function finish(tree: Config, bases: ReadonlyMap<string, string>): Config {
  const edgeId = tree.edge.id;
  const result: Tree = {};
  for (const { path, node } of schemaLeaves()) {
    let value = getAt(tree, path);
    if (typeof value === 'string' && node.template) value = value.replaceAll('{edgeId}', edgeId);
    if (typeof value === 'string' && node.resolvePath) value = resolvedPath(bases, path, value);
    const items = node.items;
    if (Array.isArray(value) && items) value = value.map((item) => inKeyOrder(item, items));
    setAt(result, path, value);
  }
  // Same keys as the validated tree, so still a Config.
  return deepFreeze(result as unknown as Config);
}

/** A path as Config holds it: resolved against the directory pathBases chose for its key. */
function resolvedPath(bases: ReadonlyMap<string, string>, path: KeyPath, value: string): string {
  return resolve(bases.get(pathId(path)) ?? '.', value);
}

/** A fresh copy of a list item, keys in the schema's order. */
function inKeyOrder(item: unknown, node: SchemaNode): unknown {
  if (!isTree(item)) return item;
  return Object.fromEntries(Object.keys(node.properties ?? {}).map((key) => [key, item[key]]));
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const child of Object.values(value)) deepFreeze(child);
    Object.freeze(value);
  }
  return value;
}

// ---------------------------------------------------------------------------------------------
// Helpers

function makeProblem(code: ConfigProblem['code'], where: Where, path: KeyPath, message: string): ConfigProblem {
  return { code, source: where.source, line: where.line, col: where.col, key: keyText(path), message };
}

/** A key path as problems show it: `mqtt.port`, and list items by index, `routing.priorities[1].topic`. */
function keyText(path: KeyPath): string {
  let node: SchemaNode | undefined = configSchemaTree;
  let text = '';
  for (const key of path) {
    const isIndex = node?.type === 'array';
    text += isIndex ? `[${key}]` : text === '' ? key : `.${key}`;
    node = node && schemaChild(node, key);
  }
  return text;
}

/** File problems first, in reading order; then the environment's, by variable name. */
function sortProblems(problems: readonly ConfigProblem[]): ConfigProblem[] {
  const rank = (p: ConfigProblem) => (p.source.startsWith('env:') ? 1 : 0);
  return [...problems].sort((a, b) => rank(a) - rank(b) || a.source.localeCompare(b.source) || a.line - b.line || a.col - b.col);
}

function isTree(value: unknown): value is Tree {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function getAt(tree: object, path: KeyPath): unknown {
  let value: unknown = tree;
  for (const key of path) {
    if (!isTree(value) || !Object.hasOwn(value, key)) return undefined;
    value = value[key];
  }
  return value;
}

/** Sets a value, making missing sections; false when a section on the way is not a mapping. */
function setAt(tree: object, path: KeyPath, value: unknown): boolean {
  let section: unknown = tree;
  for (const key of path.slice(0, -1)) {
    if (!isTree(section)) return false;
    if (section[key] === undefined || section[key] === null) section[key] = {};
    section = section[key];
  }
  const last = path[path.length - 1];
  if (!isTree(section) || last === undefined) return false;
  section[last] = value;
  return true;
}

/** ajv's instancePath for a key path (JSON Pointer). */
function instancePath(path: KeyPath): string {
  return path.map((key) => `/${key.replaceAll('~', '~0').replaceAll('/', '~1')}`).join('');
}

function pathOf(pointer: string): string[] {
  if (pointer === '') return [];
  return pointer
    .slice(1)
    .split('/')
    .map((key) => key.replaceAll('~1', '/').replaceAll('~0', '~'));
}

/** `: did you mean \`port\`?` when a known name is a likely typo of the unknown one, else ''. */
function didYouMean(unknown: string, known: readonly string[], prefix: string): string {
  const name = closestName(unknown, known);
  return name === undefined ? '' : `: did you mean \`${prefix}${name}\`?`;
}
