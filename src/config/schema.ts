// The JSON Schema of the configuration: the one place that says which keys exist, their types,
// ranges and defaults. load.ts validates against it, derives the environment variable names from its
// leaves and takes the "did you mean" candidates from it, so a key added here is known everywhere.
//
// The schema describes the configuration *after* load.ts has turned size and duration strings into
// numbers and filled in the defaults, so a value it accepts is a Config.

import { Ajv, type ValidateFunction } from 'ajv';
import { PRIORITIES } from '../core/priority.js';
import type { Config } from './types.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const DAY = 86400;

/** Schemes MQTT.js can reach a cloud broker with: MQTT over TCP or TLS, over WebSocket or secure WebSocket. */
export const UPLINK_URL_SCHEMES = ['mqtt', 'mqtts', 'ws', 'wss'] as const;

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] as const;

/**
 * Annotations this project adds to the schema; ajv ignores them, load.ts reads them.
 * - unit: the value may be written as a size (`256KiB`) or a duration (`30s`) string.
 * - resolvePath: a relative path in the value is resolved against the current directory.
 * - template: `{edgeId}` in the value is replaced by edge.id.
 * - trialDefault: the default suits a trial, not a deployment; leaving it alone earns a start-up warning.
 * - hint: said after any complaint about the value, where the rule alone would puzzle.
 * - shape: said instead of the JSON type in a complaint about the type (`a list of mappings with ...`).
 */
export interface ConfigAnnotations {
  unit?: 'size' | 'duration';
  resolvePath?: boolean;
  template?: boolean;
  trialDefault?: boolean;
  hint?: string;
  shape?: string;
}
const ANNOTATION_KEYWORDS = ['unit', 'resolvePath', 'template', 'trialDefault', 'hint', 'shape'] as const;

/** A view of the schema for walking it; every node of configSchema fits it. */
export interface SchemaNode extends ConfigAnnotations {
  type?: string | string[];
  nullable?: boolean;
  properties?: Record<string, SchemaNode>;
  items?: SchemaNode;
  default?: unknown;
  enum?: readonly unknown[];
  const?: unknown;
  minimum?: number;
  maximum?: number;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  format?: string;
  description?: string;
}

/**
 * The schema of a value of type T. Objects list exactly T's keys (the compiler refuses a missing or an
 * extra one), so the schema cannot drift from types.ts; leaves must name the JSON type T has; a list
 * must be a list of objects whose schema lists exactly the item type's keys.
 */
export type SchemaFor<T> = [T] extends [string | number | boolean | null]
  ? LeafSchema<T>
  : [T] extends [ReadonlyArray<infer E>]
    ? ArraySchema<E>
    : ObjectSchema<T>;

export interface ObjectSchema<T> extends SchemaNode {
  type: 'object';
  additionalProperties: false;
  required: string[];
  properties: { [K in keyof T]-?: SchemaFor<T[K]> };
}

/**
 * A list of objects, such as routing.priorities. The whole list is one key: one environment variable
 * (a YAML flow sequence), and a default that is the list itself. load.ts fills in no defaults and applies
 * no annotations inside the items, so the compiler refuses them there.
 */
export interface ArraySchema<E> extends SchemaNode {
  type: 'array';
  items: [E] extends [string] ? StringItemSchema : ItemSchema<E>;
  default: readonly E[];
}

/** The item of a list of strings, such as http.allowedOrigins. */
export interface StringItemSchema extends SchemaNode {
  type: 'string';
  minLength: number;
}

export interface ItemSchema<E> extends SchemaNode {
  type: 'object';
  additionalProperties: false;
  required: string[];
  properties: { [K in keyof E]-?: ItemLeafSchema<E[K]> };
}

type ItemLeafSchema<T> = [T] extends [string | number | boolean | null]
  ? LeafSchema<T> & { [A in keyof ConfigAnnotations as A extends 'hint' ? never : A]?: never } & { default?: never }
  : never;

type JsonTypeOf<T> = [T] extends [string] ? 'string' : [T] extends [number] ? 'integer' | 'number' : 'boolean';
type LeafSchema<T> = SchemaNode & { type: JsonTypeOf<NonNullable<T>> } & Nullability<T>;
type Nullability<T> = null extends T ? { nullable: true } : { nullable?: false };

// Every key is required *after* defaults are filled in, which is what makes a valid value a Config.
function object<T>(properties: { [K in keyof T]-?: SchemaFor<T[K]> }): ObjectSchema<T> {
  return { type: 'object', additionalProperties: false, required: Object.keys(properties), properties };
}

// Items have no defaults: every key of an item must be written.
function list<E>(properties: { [K in keyof E]-?: ItemLeafSchema<E[K]> }, extra: SchemaNode & { default: readonly E[] }): ArraySchema<E> {
  const keys = Object.keys(properties);
  const quoted = keys.map((k) => `\`${k}\``);
  const named = quoted.length > 1 ? `${quoted.slice(0, -1).join(', ')} and ${quoted.at(-1)}` : (quoted[0] ?? '');
  const items: ItemSchema<E> = {
    type: 'object',
    additionalProperties: false,
    required: keys,
    properties,
    shape: `a mapping with ${named}`,
  };
  // A list of mappings: E is an object type, so this is the ItemSchema branch of the conditional.
  return { shape: `a list of mappings with ${named}`, ...extra, type: 'array', items: items as ArraySchema<E>['items'] };
}

// A port of 0 asks the system for any free port (docs/configuration.md, Ports).
const port = (dflt: number) => ({ type: 'integer', minimum: 0, maximum: 65535, default: dflt }) as const;
const host = (dflt: string) => ({ type: 'string', minLength: 1, default: dflt }) as const;
const optionalPath = { type: 'string', nullable: true, minLength: 1, default: null, resolvePath: true } as const;
// Wildcards would turn a publish topic into a filter, and brokers refuse those on PUBLISH.
const topicPrefix = (dflt: string) =>
  ({
    type: 'string',
    pattern: '^[^+#\\u0000]*$',
    default: dflt,
    template: true,
    hint: 'a topic prefix cannot hold the MQTT wildcards `+` and `#`',
  }) as const;

type Uplink = Config['uplink'];
type PriorityRule = Config['routing']['priorities'][number];

export const configSchema: ObjectSchema<Config> = object<Config>({
  // Default: the host name (load.ts). It goes into cloud topics, hence no topic separators or wildcards.
  edge: object<Config['edge']>({
    id: {
      type: 'string',
      minLength: 1,
      maxLength: 128,
      pattern: '^[^\\s/+#]+$',
      trialDefault: true,
      hint: 'edge.id is one level of the cloud topics, so it cannot hold spaces, `/`, `+` or `#`',
    },
  }),
  dataDir: { type: 'string', minLength: 1, default: './data', resolvePath: true, trialDefault: true },
  mqtt: object<Config['mqtt']>({
    host: host('127.0.0.1'),
    port: port(1883),
    // Runs only when cert and key are both set (load.ts checks the pair).
    tls: object<Config['mqtt']['tls']>({ port: port(8883), cert: optionalPath, key: optionalPath, ca: optionalPath }),
  }),
  // Runs /mqtt and /ws; TLS only when cert and key are both set (load.ts checks the pair).
  http: object<Config['http']>({
    host: host('127.0.0.1'),
    port: port(8080),
    tls: object<Config['http']['tls']>({ cert: optionalPath, key: optionalPath }),
    perMessageDeflate: { type: 'boolean', default: false },
    pingIntervalSeconds: { type: 'integer', minimum: 1, maximum: 3600, default: 30, unit: 'duration' },
    allowedOrigins: {
      type: 'array',
      items: { type: 'string', minLength: 1 },
      default: [],
      shape: 'a list of origins, such as ["https://dash.example.com"]',
    },
    maxConnectionsPerAddress: { type: 'integer', minimum: 1, default: 100 },
    handshakeTimeoutSeconds: { type: 'integer', minimum: 1, maximum: 300, default: 10, unit: 'duration' },
    sendBufferBytes: { type: 'integer', minimum: KiB, maximum: 256 * MiB, default: 1 * MiB, unit: 'size' },
    maxErrors: { type: 'integer', minimum: 1, maximum: 1_000_000, default: 20 },
    errorWindowSeconds: { type: 'integer', minimum: 1, maximum: 3600, default: 60, unit: 'duration' },
  }),
  // Two sockets on one port: IPv4 on host, and IPv6 (its own IPv6-only socket) on host6 unless null.
  coap: object<Config['coap']>({
    host: host('127.0.0.1'),
    host6: { type: 'string', nullable: true, minLength: 1, default: '::1' },
    port: port(5683),
  }),
  admin: object<Config['admin']>({
    host: host('127.0.0.1'),
    port: port(9180),
    token: { type: 'string', nullable: true, minLength: 1, default: null },
    tokenFile: optionalPath,
    loopMonitorMs: { type: 'integer', minimum: 1, maximum: 1000, default: 10 },
  }),
  auth: object<Config['auth']>({
    mode: {
      type: 'string',
      enum: ['open', 'token'],
      default: 'open',
      trialDefault: true,
      hint: 'open admits any client (trials on loopback); token admits only the devices in devicesFile',
    },
  }),
  devicesFile: { type: 'string', minLength: 1, default: './devices.yaml', resolvePath: true },
  routing: object<Config['routing']>({
    default: { type: 'string', enum: ['uplink', 'local'], default: 'uplink' },
    // First match wins; a topic no filter matches goes up as `normal`.
    priorities: list<PriorityRule>(
      {
        topic: { type: 'string', format: 'mqtt-topic-filter' },
        priority: { type: 'string', enum: [...PRIORITIES] },
      },
      { default: [] },
    ),
  }),
  // Default path: <dataDir>/cache.db (load.ts), so moving dataDir moves the cache with it.
  // `critical` messages are exempt from both bounds (docs/cache.md, guarantee 5).
  cache: object<Config['cache']>({
    path: { type: 'string', minLength: 1, resolvePath: true },
    maxBytes: { type: 'integer', minimum: KiB, default: 512 * MiB, unit: 'size' },
    maxAgeSeconds: { type: 'integer', minimum: 1, default: 7 * DAY, unit: 'duration' },
  }),
  // The rules directory is the one source of truth for the running ruleset (docs/rules.md, Where rules live).
  rules: object<Config['rules']>({
    dir: { type: 'string', minLength: 1, default: './rules', resolvePath: true },
    maxWindowValues: { type: 'integer', minimum: 1, maximum: 10_000_000, default: 10_000 },
    stateTtlSeconds: { type: 'integer', minimum: 1, default: 3600, unit: 'duration' },
    maxFileBytes: { type: 'integer', minimum: 1, maximum: 64 * MiB, default: 1 * MiB, unit: 'size' },
    maxRules: { type: 'integer', minimum: 1, maximum: 1_000_000, default: 10_000 },
  }),
  models: object<Config['models']>({
    dir: { type: 'string', minLength: 1, default: './models', resolvePath: true },
  }),
  inference: object<Config['inference']>({
    threads: { type: 'integer', minimum: 1, maximum: 64, default: 2 },
    queueSize: { type: 'integer', minimum: 1, maximum: 1_000_000, default: 1024 },
    windowBytes: { type: 'integer', minimum: 1024, maximum: 1024 * MiB, default: 16 * MiB, unit: 'size' },
  }),
  uplink: object<Uplink>({
    // No real default: without a url the proxy runs offline and keeps everything in the cache.
    url: {
      type: 'string',
      nullable: true,
      format: 'uplink-url',
      default: null,
      trialDefault: true,
      hint: `use a URL with scheme ${UPLINK_URL_SCHEMES.join(', ')}, such as mqtts://broker.example.com:8883`,
    },
    clientId: { type: 'string', minLength: 1, default: 'edge-{edgeId}', template: true },
    username: { type: 'string', nullable: true, default: null },
    password: { type: 'string', nullable: true, default: null },
    protocolVersion: { type: 'integer', enum: [4, 5], default: 4 },
    topicPrefix: topicPrefix('edge/{edgeId}/up/'),
    controlPrefix: topicPrefix('edge/{edgeId}/'),
    format: { type: 'string', enum: ['envelope', 'raw'], default: 'envelope' },
    // The cache deletes a message on PUBACK, so QoS 1 is what the delivery guarantee is built on.
    qos: { type: 'integer', const: 1, default: 1, hint: 'only QoS 1 is supported' },
    maxInflight: { type: 'integer', minimum: 1, maximum: 65535, default: 64 },
    // Messages a second while draining a backlog; 0 = unlimited.
    maxRate: { type: 'integer', minimum: 0, default: 0 },
    keepalive: { type: 'integer', minimum: 0, maximum: 65535, default: 30, unit: 'duration' },
    tls: object<Uplink['tls']>({
      ca: optionalPath,
      cert: optionalPath,
      key: optionalPath,
      rejectUnauthorized: { type: 'boolean', default: true },
    }),
  }),
  limits: object<Config['limits']>({
    maxPayloadBytes: { type: 'integer', minimum: 1, maximum: 256 * MiB, default: 256 * KiB, unit: 'size' },
    maxTopicBytes: { type: 'integer', minimum: 1, maximum: 65535, default: 256 },
    maxHops: { type: 'integer', minimum: 0, maximum: 64, default: 4 },
    maxConnections: { type: 'integer', minimum: 1, default: 10000 },
  }),
  log: object<Config['log']>({
    level: { type: 'string', enum: [...LOG_LEVELS], default: 'info' },
  }),
});

/** The same schema, seen as a tree to walk. */
export const configSchemaTree: SchemaNode = configSchema;

/**
 * Keys of features this version does not have yet (docs/configuration.md, Errors).
 * They are refused like any unknown key; the message just says why, so nobody hunts for a typo.
 */
export const PLANNED_KEYS: ReadonlySet<string> = new Set(['limits.perDeviceRate', 'log.pretty']);

export function isUplinkUrl(value: string): boolean {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return false;
  }
  const scheme = url.protocol.slice(0, -1);
  return (UPLINK_URL_SCHEMES as readonly string[]).includes(scheme) && url.hostname !== '';
}

/**
 * Why a string is not a valid MQTT topic filter (MQTT 3.1.1 section 4.7), or null when it is one:
 * not empty, no NUL, `#` only as the whole last level, `+` only as a whole level, at most 65535 bytes.
 */
export function topicFilterProblem(filter: string): string | null {
  if (filter === '') return 'it is empty';
  if (filter.includes('\u0000')) return 'it holds a NUL character';
  if (Buffer.byteLength(filter, 'utf8') > 65535) return 'it is longer than 65535 bytes';
  const levels = filter.split('/');
  for (const [i, level] of levels.entries()) {
    if (level.includes('#') && (level !== '#' || i !== levels.length - 1)) {
      return '`#` may only stand alone as the last level, as in `devices/#`';
    }
    if (level.includes('+') && level !== '+') {
      return '`+` may only stand alone as a whole level, as in `devices/+/alarm`';
    }
  }
  return null;
}

/** A leaf of the schema: a key that holds a value rather than more keys. */
export interface SchemaLeaf {
  path: readonly string[];
  node: SchemaNode;
}

export function schemaLeaves(node: SchemaNode = configSchemaTree, path: readonly string[] = []): SchemaLeaf[] {
  if (!node.properties) return [{ path, node }];
  return Object.entries(node.properties).flatMap(([key, child]) => schemaLeaves(child, [...path, key]));
}

/** The schema node at a key path (list items by index), or undefined where the schema has no such key. */
export function schemaAt(path: readonly string[]): SchemaNode | undefined {
  let node: SchemaNode | undefined = configSchemaTree;
  for (const key of path) node = node && schemaChild(node, key);
  return node;
}

/** The schema of one key of an object, or of one item of a list. */
export function schemaChild(node: SchemaNode, key: string): SchemaNode | undefined {
  if (node.type === 'array') return /^(0|[1-9]\d*)$/.test(key) ? node.items : undefined;
  return Object.hasOwn(node.properties ?? {}, key) ? node.properties?.[key] : undefined;
}

let compiled: ValidateFunction<Config> | undefined;

/** The compiled validator, built once: compiling costs more than validating. */
export function configValidator(): ValidateFunction<Config> {
  compiled ??= buildValidator();
  return compiled;
}

function buildValidator(): ValidateFunction<Config> {
  // verbose: errors carry the offending value and its schema node, which the messages quote.
  const ajv = new Ajv({ allErrors: true, verbose: true, strict: true });
  for (const keyword of ANNOTATION_KEYWORDS) ajv.addKeyword({ keyword });
  ajv.addFormat('uplink-url', { type: 'string', validate: isUplinkUrl });
  ajv.addFormat('mqtt-topic-filter', { type: 'string', validate: (v: string) => topicFilterProblem(v) === null });
  return ajv.compile<Config>(configSchema);
}
