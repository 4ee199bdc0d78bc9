import { copyFileSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { checkConfig, loadConfig, type LoadOptions } from '../src/config/load.js';
import { formatSize, parseDuration, parseSize } from '../src/config/units.js';
import { ConfigError, formatConfigProblem } from '../src/core/errors.js';
import { makeCa } from './helpers/certs.js';

/** What the helpers need of a test: a fresh directory for its files. */
type Tap = Pick<typeof t, 'testdir'>;

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** Loads `yaml` as ./edge-proxy.test.yaml in a fresh directory, with no environment unless given. */
function load(t: Tap, yaml: string, opts: LoadOptions = {}) {
  const cwd = t.testdir({ 'edge-proxy.test.yaml': yaml });
  return loadConfig({ file: 'edge-proxy.test.yaml', env: {}, cwd, ...opts });
}

/** The problems loadConfig throws, formatted as operators see them. */
function problems(t: Tap, yaml: string, opts: LoadOptions = {}): string[] {
  try {
    load(t, yaml, opts);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems.map(formatConfigProblem);
    throw err;
  }
  throw new Error('the configuration loaded without problems');
}

t.test('no file: the embedded defaults', async (t) => {
  const cwd = t.testdir({});
  const { config, file, trialDefaults } = loadConfig({ env: {}, cwd });
  t.equal(file, null);
  t.same(config, {
    edge: { id: hostname() },
    dataDir: join(cwd, 'data'),
    mqtt: { host: '127.0.0.1', port: 1883, tls: { port: 8883, cert: null, key: null, ca: null } },
    http: {
      host: '127.0.0.1',
      port: 8080,
      tls: { cert: null, key: null },
      perMessageDeflate: false,
      pingIntervalSeconds: 30,
      allowedOrigins: [],
      maxConnectionsPerAddress: 100,
      handshakeTimeoutSeconds: 10,
      sendBufferBytes: 1048576,
      maxErrors: 20,
      errorWindowSeconds: 60,
    },
    coap: { host: '127.0.0.1', host6: '::1', port: 5683 },
    admin: { host: '127.0.0.1', port: 9180, token: null, tokenFile: null, loopMonitorMs: 10 },
    auth: { mode: 'open' },
    devicesFile: join(cwd, 'devices.yaml'),
    routing: { default: 'uplink', priorities: [] },
    cache: { path: join(cwd, 'data', 'cache.db'), maxBytes: 512 * 1024 * 1024, maxAgeSeconds: 604800 },
    rules: { dir: join(cwd, 'rules'), maxWindowValues: 10000, stateTtlSeconds: 3600, maxFileBytes: 1048576, maxRules: 10000 },
    models: { dir: join(cwd, 'models') },
    inference: { threads: 2, queueSize: 1024, windowBytes: 16 * 1024 * 1024 },
    uplink: {
      url: null,
      clientId: `edge-${hostname()}`,
      username: null,
      password: null,
      protocolVersion: 4,
      topicPrefix: `edge/${hostname()}/up/`,
      controlPrefix: `edge/${hostname()}/`,
      format: 'envelope',
      qos: 1,
      maxInflight: 64,
      maxRate: 0,
      keepalive: 30,
      tls: { ca: null, cert: null, key: null, rejectUnauthorized: true },
    },
    limits: { maxPayloadBytes: 256 * 1024, maxTopicBytes: 256, maxHops: 4, maxConnections: 10000 },
    log: { level: 'info' },
  });
  t.same([...trialDefaults].sort(), ['auth.mode', 'dataDir', 'edge.id', 'uplink.url']);
});

t.test('no file given: ./edge-proxy.yaml is used when present', async (t) => {
  const cwd = t.testdir({ 'edge-proxy.yaml': 'mqtt: { port: 1999 }\n' });
  const loaded = loadConfig({ env: {}, cwd });
  t.equal(loaded.config.mqtt.port, 1999);
  t.equal(loaded.file, join(cwd, 'edge-proxy.yaml'));
});

t.test('file: null means the embedded defaults even when ./edge-proxy.yaml exists', async (t) => {
  const cwd = t.testdir({ 'edge-proxy.yaml': 'mqtt: { port: 1999 }\n' });
  t.equal(loadConfig({ file: null, env: {}, cwd }).config.mqtt.port, 1883);
});

t.test('an empty file, or one with only comments, means all defaults', async (t) => {
  t.equal(load(t, '').config.mqtt.port, 1883);
  t.equal(load(t, '# nothing here\n').config.log.level, 'info');
});

t.test('a file overrides only the keys it states', async (t) => {
  const { config, trialDefaults } = load(
    t,
    [
      'edge: { id: pi-hall-2 }',
      'dataDir: /var/lib/edge-proxy',
      'mqtt:',
      '  host: 0.0.0.0',
      'uplink:',
      '  url: mqtts://broker.example.com:8883',
      '  protocolVersion: 5',
      '  format: raw',
      'routing: { default: local }',
      'log: { level: debug }',
      '',
    ].join('\n'),
  );
  t.equal(config.edge.id, 'pi-hall-2');
  t.equal(config.mqtt.host, '0.0.0.0');
  t.equal(config.mqtt.port, 1883, 'a key left out keeps its default');
  t.equal(config.uplink.url, 'mqtts://broker.example.com:8883');
  t.equal(config.uplink.protocolVersion, 5);
  t.equal(config.uplink.format, 'raw');
  t.equal(config.routing.default, 'local');
  t.equal(config.log.level, 'debug');
  t.equal(config.cache.path, '/var/lib/edge-proxy/cache.db', 'the cache follows dataDir');
  t.same(trialDefaults, ['auth.mode']);
});

t.test('every problem of a file is reported at once, each with its line and column', async (t) => {
  const yaml = [
    'mqtt:', //                     1
    '  port: 70000', //             2
    '  host: 12', //                3
    'uplink:', //                   4
    '  format: xml', //             5
    '  maxInflight: 0', //          6
    'limits:', //                   7
    '  maxPayloadBytes: 12 parsecs', // 8
    'colour: blue', //              9
    '',
  ].join('\n');
  t.same(problems(t, yaml), [
    'edge-proxy.test.yaml:2:9: mqtt.port: E_CONFIG_VALUE: must be between 0 and 65535, not 70000',
    'edge-proxy.test.yaml:3:9: mqtt.host: E_CONFIG_TYPE: must be a string, not the number 12',
    'edge-proxy.test.yaml:5:11: uplink.format: E_CONFIG_VALUE: must be one of `envelope`, `raw`, not `xml`',
    'edge-proxy.test.yaml:6:16: uplink.maxInflight: E_CONFIG_VALUE: must be between 1 and 65535, not 0',
    'edge-proxy.test.yaml:8:20: limits.maxPayloadBytes: E_CONFIG_VALUE: `12 parsecs` is not a size: ' +
      'write a number of bytes, or a number with a unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), such as 256KiB',
    'edge-proxy.test.yaml:9:1: colour: E_CONFIG_UNKNOWN_KEY: unknown key `colour`',
  ]);
});

t.test('the ConfigError message lists every problem, and its code is the first one', async (t) => {
  const cwd = t.testdir({ 'bad.yaml': 'mqtt: { port: -1 }\nlog: { level: loud }\n' });
  const err = t.throws(() => loadConfig({ file: 'bad.yaml', env: {}, cwd })) as ConfigError;
  t.type(err, ConfigError);
  t.equal(err.code, 'E_CONFIG_VALUE');
  t.equal(err.message.split('\n').length, 2);
  t.match(err.message, /^bad\.yaml:1:15: mqtt\.port: E_CONFIG_VALUE: /);
});

t.test('unknown keys, with a "did you mean" when one is close', async (t) => {
  t.same(problems(t, 'mqtt:\n  prot: 1884\nuplnk: {}\nLog: { level: info }\nuplink: { topic_prefix: x/ }\n'), [
    'edge-proxy.test.yaml:2:3: mqtt.prot: E_CONFIG_UNKNOWN_KEY: unknown key `prot`: did you mean `port`?',
    'edge-proxy.test.yaml:3:1: uplnk: E_CONFIG_UNKNOWN_KEY: unknown key `uplnk`: did you mean `uplink`?',
    'edge-proxy.test.yaml:4:1: Log: E_CONFIG_UNKNOWN_KEY: unknown key `Log`: did you mean `log`?',
    'edge-proxy.test.yaml:5:11: uplink.topic_prefix: E_CONFIG_UNKNOWN_KEY: ' + 'unknown key `topic_prefix`: did you mean `topicPrefix`?',
  ]);
});

t.test('keys of features that do not exist yet are refused as unknown keys', async (t) => {
  const yaml = [
    'models: { dir: ./models }',
    'inference: { threads: 2 }',
    'limits: { perDeviceRate: 100 }',
    'log: { pretty: true }',
    '',
  ].join('\n');
  const found = problems(t, yaml);
  t.equal(found.length, 2, 'models and inference exist; the other two do not yet');
  for (const line of found) t.match(line, /: E_CONFIG_UNKNOWN_KEY: unknown key `\w+`: [\w.]+ is not available/);
  t.ok(found.some((p) => p.includes(':3:11: limits.perDeviceRate:')));
  t.ok(found.some((p) => p.includes(':4:8: log.pretty:')));
});

t.test('routing.priorities: an ordered list of topic filters and priorities', async (t) => {
  const yaml = [
    'routing:',
    '  priorities:',
    '    - { topic: "devices/+/alarm/#", priority: critical }',
    '    - priority: high', //                    key order does not matter
    '      topic: "+/status"',
    '    - { topic: "#", priority: normal }',
    '    - { topic: "devices/+/debug/#", priority: low }',
    '',
  ].join('\n');
  const { config } = load(t, yaml);
  t.same(config.routing.priorities, [
    { topic: 'devices/+/alarm/#', priority: 'critical' },
    { topic: '+/status', priority: 'high' },
    { topic: '#', priority: 'normal' },
    { topic: 'devices/+/debug/#', priority: 'low' },
  ]);
  t.same(Object.keys(config.routing.priorities[1] ?? {}), ['topic', 'priority'], 'items in the schema key order');
  t.ok(Object.isFrozen(config.routing.priorities));
  t.ok(Object.isFrozen(config.routing.priorities[0]));
  t.equal(config.routing.default, 'uplink', 'routing.default keeps its default');
  t.same(load(t, 'routing: { priorities: [] }\n').config.routing.priorities, []);
  for (const topic of ['a', '/', 'a//b', '+', '+/+', 'a/+/b/#', '$SYS/#', 'dévices/+/température']) {
    t.same(load(t, `routing: { priorities: [{ topic: "${topic}", priority: low }] }\n`).config.routing.priorities, [
      { topic, priority: 'low' },
    ]);
  }
});

t.test('routing.priorities: every bad item reported at its position', async (t) => {
  const yaml = [
    'routing:', //                                              1
    '  priorities:', //                                         2
    '    - { topic: "devices/+/alarm/#", priority: critical }', // 3
    '    - { topc: "devices/+/debug/#", priority: low }', //    4
    '    - { topic: "devices/#/x", priority: urgent }', //      5
    '    - topic: "devices/temp+/x"', //                        6
    '      priority: high', //                                  7
    '    - "devices/#"', //                                     8
    '    - { topic: "", priority: low }', //                    9
    '    - { topic: "devices/#" }', //                          10
    '    - { topic: "a/b#", priority: low, colour: red }', //   11
    '',
  ].join('\n');
  t.same(problems(t, yaml), [
    'edge-proxy.test.yaml:4:9: routing.priorities[1].topc: E_CONFIG_UNKNOWN_KEY: ' + 'unknown key `topc`: did you mean `topic`?',
    'edge-proxy.test.yaml:5:16: routing.priorities[2].topic: E_CONFIG_VALUE: ' +
      '`devices/#/x` is not a valid MQTT topic filter: `#` may only stand alone as the last level, as in `devices/#`',
    'edge-proxy.test.yaml:5:41: routing.priorities[2].priority: E_CONFIG_VALUE: ' +
      'must be one of `critical`, `high`, `normal`, `low`, not `urgent`',
    'edge-proxy.test.yaml:6:14: routing.priorities[3].topic: E_CONFIG_VALUE: ' +
      '`devices/temp+/x` is not a valid MQTT topic filter: ' +
      '`+` may only stand alone as a whole level, as in `devices/+/alarm`',
    'edge-proxy.test.yaml:8:7: routing.priorities[4]: E_CONFIG_TYPE: ' +
      'must be a mapping with `topic` and `priority`, not the string `devices/#`',
    'edge-proxy.test.yaml:9:16: routing.priorities[5].topic: E_CONFIG_VALUE: ' +
      'must not be empty: write an MQTT topic filter such as `devices/+/alarm/#`',
    'edge-proxy.test.yaml:10:7: routing.priorities[6]: E_CONFIG_VALUE: `priority` is missing',
    'edge-proxy.test.yaml:11:16: routing.priorities[7].topic: E_CONFIG_VALUE: ' +
      '`a/b#` is not a valid MQTT topic filter: `#` may only stand alone as the last level, as in `devices/#`',
    'edge-proxy.test.yaml:11:39: routing.priorities[7].colour: E_CONFIG_UNKNOWN_KEY: unknown key `colour`',
  ]);
});

t.test('routing.priorities must be a list', async (t) => {
  t.same(problems(t, 'routing:\n  priorities: { topic: "devices/#", priority: low }\n'), [
    'edge-proxy.test.yaml:2:15: routing.priorities: E_CONFIG_TYPE: ' +
      'must be a list of mappings with `topic` and `priority`, not a mapping',
  ]);
  t.same(problems(t, 'routing: { priorities: critical }\n'), [
    'edge-proxy.test.yaml:1:24: routing.priorities: E_CONFIG_TYPE: ' +
      'must be a list of mappings with `topic` and `priority`, not the string `critical`',
  ]);
  t.same(problems(t, 'routing:\n  priorities:\n'), [
    'edge-proxy.test.yaml:2:14: routing.priorities: E_CONFIG_TYPE: ' + 'must be a list of mappings with `topic` and `priority`, not null',
  ]);
});

t.test('routing.priorities: topic filters with NUL, or too long', async (t) => {
  t.match(problems(t, 'routing: { priorities: [{ topic: "a/\\0/b", priority: low }] }\n'), [
    /^edge-proxy\.test\.yaml:1:34: routing\.priorities\[0\]\.topic: E_CONFIG_VALUE: .* NUL character$/,
  ]);
  t.match(problems(t, `routing: { priorities: [{ topic: "${'a'.repeat(65536)}", priority: low }] }\n`), [
    /routing\.priorities\[0\]\.topic: E_CONFIG_VALUE: .* longer than 65535 bytes$/,
  ]);
});

t.test('EDGE_PROXY_ROUTING_PRIORITIES takes a YAML flow sequence', async (t) => {
  const env = {
    EDGE_PROXY_ROUTING_PRIORITIES: '[{topic: "devices/+/alarm/#", priority: critical}, {topic: logs/#, priority: low}]',
  };
  const { config } = load(t, 'routing: { priorities: [{ topic: "file/#", priority: high }] }\n', { env });
  t.same(
    config.routing.priorities,
    [
      { topic: 'devices/+/alarm/#', priority: 'critical' },
      { topic: 'logs/#', priority: 'low' },
    ],
    'the variable replaces the whole list of the file',
  );
  t.same(load(t, '', { env: { EDGE_PROXY_ROUTING_PRIORITIES: '[]' } }).config.routing.priorities, []);
});

t.test('problems in EDGE_PROXY_ROUTING_PRIORITIES name the variable', async (t) => {
  const file = 'routing:\n  priorities:\n    - { topic: "file/#", priority: high }\n    - { topc: x, priority: low }\n';
  const env = { EDGE_PROXY_ROUTING_PRIORITIES: '[{topic: "a/#", priority: critical}, {topc: "b/+/c", priority: meh}]' };
  t.same(problems(t, file, { env }), [
    'env:EDGE_PROXY_ROUTING_PRIORITIES:1:1: routing.priorities[1].topc: E_CONFIG_UNKNOWN_KEY: ' +
      'unknown key `topc`: did you mean `topic`?',
    'env:EDGE_PROXY_ROUTING_PRIORITIES:1:1: routing.priorities[1].priority: E_CONFIG_VALUE: ' +
      'must be one of `critical`, `high`, `normal`, `low`, not `meh`',
  ]);
  t.same(problems(t, '', { env: { EDGE_PROXY_ROUTING_PRIORITIES: '[{topic: "a/#+", priority: low}]' } }), [
    'env:EDGE_PROXY_ROUTING_PRIORITIES:1:1: routing.priorities[0].topic: E_CONFIG_VALUE: ' +
      '`a/#+` is not a valid MQTT topic filter: `#` may only stand alone as the last level, as in `devices/#`',
  ]);
  t.same(problems(t, '', { env: { EDGE_PROXY_ROUTING_PRIORITIES: 'devices/#' } }), [
    'env:EDGE_PROXY_ROUTING_PRIORITIES:1:1: routing.priorities: E_CONFIG_TYPE: ' +
      'must be a list of mappings with `topic` and `priority`, not the string `devices/#`',
  ]);
  t.match(problems(t, '', { env: { EDGE_PROXY_ROUTING_PRIORITIES: '[{topic: a, priority: low}' } }), [
    /^env:EDGE_PROXY_ROUTING_PRIORITIES:1:1: routing\.priorities: E_CONFIG_YAML: not valid YAML: /,
  ]);
});

t.test('cache.maxBytes: a size of at least 1KiB', async (t) => {
  t.equal(load(t, 'cache: { maxBytes: 2GiB }\n').config.cache.maxBytes, 2 * 2 ** 30);
  t.equal(load(t, 'cache: { maxBytes: 100MB }\n').config.cache.maxBytes, 100_000_000);
  t.equal(load(t, 'cache: { maxBytes: 1024 }\n').config.cache.maxBytes, 1024, 'the minimum, as a number of bytes');
  t.equal(load(t, 'cache: { maxBytes: 1KiB }\n').config.cache.path, join(t.testdirName, 'data', 'cache.db'));
  t.same(problems(t, 'cache:\n  maxBytes: 1023\n'), [
    'edge-proxy.test.yaml:2:13: cache.maxBytes: E_CONFIG_VALUE: must be at least 1KiB, not 1023B',
  ]);
  t.same(problems(t, 'cache:\n  maxBytes: 1000B\n'), [
    'edge-proxy.test.yaml:2:13: cache.maxBytes: E_CONFIG_VALUE: must be at least 1KiB, not 1000B',
  ]);
  t.match(problems(t, 'cache:\n  maxBytes: half a gig\n'), [
    /^edge-proxy\.test\.yaml:2:13: cache\.maxBytes: E_CONFIG_VALUE: `half a gig` is not a size: /,
  ]);
  t.same(problems(t, 'cache:\n  maxBytes: [512MiB]\n'), [
    'edge-proxy.test.yaml:2:13: cache.maxBytes: E_CONFIG_TYPE: ' +
      'must be a size (a number of bytes, or a string such as 256KiB), not a list',
  ]);
});

t.test('cache.maxAgeSeconds: a duration of at least 1 second', async (t) => {
  t.equal(load(t, 'cache: { maxAgeSeconds: 12h }\n').config.cache.maxAgeSeconds, 43200);
  t.equal(load(t, 'cache: { maxAgeSeconds: 30d }\n').config.cache.maxAgeSeconds, 30 * 86400);
  t.equal(load(t, 'cache: { maxAgeSeconds: 90m }\n').config.cache.maxAgeSeconds, 5400);
  t.equal(load(t, 'cache: { maxAgeSeconds: 1 }\n').config.cache.maxAgeSeconds, 1);
  t.same(problems(t, 'cache:\n  maxAgeSeconds: 0\n'), [
    'edge-proxy.test.yaml:2:18: cache.maxAgeSeconds: E_CONFIG_VALUE: must be at least 1, not 0',
  ]);
  t.same(problems(t, 'cache:\n  maxAgeSeconds: 1500ms\n'), [
    'edge-proxy.test.yaml:2:18: cache.maxAgeSeconds: E_CONFIG_VALUE: must be a whole number of seconds, not 1.5',
  ]);
  t.match(problems(t, 'cache:\n  maxAgeSeconds: 1w\n'), [
    /^edge-proxy\.test\.yaml:2:18: cache\.maxAgeSeconds: E_CONFIG_VALUE: `1w` is not a duration: /,
  ]);
  t.same(problems(t, 'cache:\n  maxAgeSeconds: true\n'), [
    'edge-proxy.test.yaml:2:18: cache.maxAgeSeconds: E_CONFIG_TYPE: ' +
      'must be a duration (a number of seconds, or a string such as 30s), not `true`',
  ]);
});

t.test('uplink.maxRate: a whole number of messages a second, 0 = unlimited', async (t) => {
  t.equal(load(t, 'uplink: { maxRate: 500 }\n').config.uplink.maxRate, 500);
  t.equal(load(t, 'uplink: { maxRate: 0 }\n').config.uplink.maxRate, 0);
  t.same(problems(t, 'uplink:\n  maxRate: -1\n'), [
    'edge-proxy.test.yaml:2:12: uplink.maxRate: E_CONFIG_VALUE: must be at least 0, not -1',
  ]);
  t.same(problems(t, 'uplink:\n  maxRate: 2.5\n'), [
    'edge-proxy.test.yaml:2:12: uplink.maxRate: E_CONFIG_VALUE: must be a whole number, not 2.5',
  ]);
  t.same(problems(t, 'uplink:\n  maxRate: fast\n'), [
    'edge-proxy.test.yaml:2:12: uplink.maxRate: E_CONFIG_TYPE: must be a whole number, not the string `fast`',
  ]);
  t.same(problems(t, 'uplink:\n  max_rate: 10\n'), [
    'edge-proxy.test.yaml:2:3: uplink.max_rate: E_CONFIG_UNKNOWN_KEY: unknown key `max_rate`: did you mean `maxRate`?',
  ]);
});

t.test('environment overrides of the cache bounds and uplink.maxRate', async (t) => {
  const env = {
    EDGE_PROXY_CACHE_MAX_BYTES: '64MiB',
    EDGE_PROXY_CACHE_MAX_AGE_SECONDS: '2d',
    EDGE_PROXY_UPLINK_MAX_RATE: '250',
  };
  const { config } = load(t, 'cache: { maxBytes: 1GiB, maxAgeSeconds: 1h }\nuplink: { maxRate: 5 }\n', { env });
  t.equal(config.cache.maxBytes, 64 * 2 ** 20);
  t.equal(config.cache.maxAgeSeconds, 172800);
  t.equal(config.uplink.maxRate, 250);
  t.same(problems(t, '', { env: { EDGE_PROXY_CACHE_MAX_BYTES: '1B', EDGE_PROXY_UPLINK_MAX_RATE: '-5' } }), [
    'env:EDGE_PROXY_CACHE_MAX_BYTES:1:1: cache.maxBytes: E_CONFIG_VALUE: must be at least 1KiB, not 1B',
    'env:EDGE_PROXY_UPLINK_MAX_RATE:1:1: uplink.maxRate: E_CONFIG_VALUE: must be at least 0, not -5',
  ]);
});

t.test('wrong types', async (t) => {
  t.same(problems(t, 'mqtt: 1883\nuplink: { tls: { rejectUnauthorized: "no" }, protocolVersion: "5" }\n'), [
    'edge-proxy.test.yaml:1:7: mqtt: E_CONFIG_TYPE: must be a mapping of keys, not the number 1883',
    'edge-proxy.test.yaml:2:38: uplink.tls.rejectUnauthorized: E_CONFIG_TYPE: ' + 'must be true or false, not the string `no`',
    'edge-proxy.test.yaml:2:63: uplink.protocolVersion: E_CONFIG_TYPE: must be a whole number, not the string `5`',
  ]);
});

t.test('the top level must be a mapping', async (t) => {
  t.same(problems(t, '- a\n- b\n'), ['edge-proxy.test.yaml:1:1: (root): E_CONFIG_TYPE: the file must be a mapping of keys, not a list']);
});

t.test('ports: integers from 0 (any free port) to 65535', async (t) => {
  t.equal(load(t, 'mqtt: { port: 0 }\n').config.mqtt.port, 0);
  t.equal(load(t, 'admin: { port: 65535 }\n').config.admin.port, 65535);
  t.same(problems(t, 'mqtt:\n  port: 65536\nadmin:\n  port: 80.5\n'), [
    'edge-proxy.test.yaml:2:9: mqtt.port: E_CONFIG_VALUE: must be between 0 and 65535, not 65536',
    'edge-proxy.test.yaml:4:9: admin.port: E_CONFIG_VALUE: must be a whole number, not 80.5',
  ]);
});

t.test('values outside their enum', async (t) => {
  t.same(problems(t, 'log: { level: verbose }\nauth: { mode: tokens }\nuplink: { qos: 2, protocolVersion: 3 }\n'), [
    'edge-proxy.test.yaml:1:15: log.level: E_CONFIG_VALUE: ' +
      'must be one of `trace`, `debug`, `info`, `warn`, `error`, `fatal`, not `verbose`',
    'edge-proxy.test.yaml:2:15: auth.mode: E_CONFIG_VALUE: ' +
      'must be one of `open`, `token`, not `tokens`; open admits any client (trials on loopback); token admits only the devices in devicesFile',
    'edge-proxy.test.yaml:3:16: uplink.qos: E_CONFIG_VALUE: must be `1`, not 2; only QoS 1 is supported',
    'edge-proxy.test.yaml:3:36: uplink.protocolVersion: E_CONFIG_VALUE: must be one of `4`, `5`, not 3',
  ]);
});

t.test('uplink.url must be an mqtt, mqtts, ws or wss URL', async (t) => {
  for (const url of ['mqtt://b:1883', 'mqtts://b:8883', 'ws://b/mqtt', 'wss://b:443/mqtt']) {
    t.equal(load(t, `uplink: { url: "${url}" }\n`).config.uplink.url, url);
  }
  for (const url of ['http://b', 'broker.example.com:8883', 'mqtt://']) {
    const found = problems(t, `uplink: { url: "${url}" }\n`);
    t.match(found, [/^edge-proxy\.test\.yaml:1:16: uplink\.url: E_CONFIG_VALUE: .* is not allowed; use a URL/]);
  }
  const secret = problems(t, 'uplink: { url: "http://edge:hunter2@broker.example.com" }\n');
  t.match(secret, [/`http:\/\/edge:\*\*\*@broker\.example\.com\/` is not allowed/], 'the password of a refused URL is not echoed');
  t.notMatch(secret.join('\n'), /hunter2/);
});

t.test('size strings in the file', async (t) => {
  t.equal(load(t, 'limits: { maxPayloadBytes: 1MiB }\n').config.limits.maxPayloadBytes, 1048576);
  t.equal(load(t, 'limits: { maxPayloadBytes: 10MB }\n').config.limits.maxPayloadBytes, 10_000_000);
  t.equal(load(t, 'limits: { maxPayloadBytes: 4096 }\n').config.limits.maxPayloadBytes, 4096);
  t.same(problems(t, 'limits: { maxPayloadBytes: 512MiB }\n'), [
    'edge-proxy.test.yaml:1:28: limits.maxPayloadBytes: E_CONFIG_VALUE: must be between 1B and 256MiB, not 512MiB',
  ]);
  t.match(problems(t, 'limits: { maxPayloadBytes: 1.5 }\n'), [/E_CONFIG_VALUE: must be a whole number/]);
  t.match(problems(t, 'limits: { maxPayloadBytes: true }\n'), [/E_CONFIG_TYPE: must be a size/]);
});

t.test('durations in the file', async (t) => {
  t.equal(load(t, 'uplink: { keepalive: 1m }\n').config.uplink.keepalive, 60);
  t.match(problems(t, 'uplink: { keepalive: soon }\n'), [/1:22: uplink\.keepalive: E_CONFIG_VALUE: `soon` is not a duration/]);
  t.match(problems(t, 'uplink: { keepalive: 2d }\n'), [/must be between 0 and 65535, not 172800/]);
});

t.test('parseSize', async (t) => {
  const cases: Array<[unknown, number | null]> = [
    [512, 512],
    ['100B', 100],
    ['100', 100],
    ['64KiB', 65536],
    ['512MiB', 512 * 2 ** 20],
    ['1GiB', 2 ** 30],
    ['10MB', 10_000_000],
    ['1KB', 1000],
    ['1.5MiB', 1572864],
    ['2kib', 2048],
    ['1.5', null],
    ['-1KiB', null],
    ['12 parsecs', null],
    ['KiB', null],
    ['', null],
    [-5, null],
    [1.5, null],
    [null, null],
    [true, null],
  ];
  for (const [input, bytes] of cases) t.equal(parseSize(input), bytes, String(input));
  t.equal(formatSize(262144), '256KiB');
  t.equal(formatSize(1000), '1000B');
});

t.test('parseDuration', async (t) => {
  const cases: Array<[unknown, number | null]> = [
    [30, 30],
    ['30', 30],
    ['30s', 30],
    ['500ms', 0.5],
    ['5m', 300],
    ['1.5h', 5400],
    ['7d', 604800],
    ['7D', null],
    ['1w', null],
    ['-1s', null],
    ['', null],
    [-1, null],
    [Infinity, null],
    [{}, null],
  ];
  for (const [input, seconds] of cases) t.equal(parseDuration(input), seconds, String(input));
});

t.test('YAML syntax errors carry their position', async (t) => {
  const at = (lineCol: string, text: string) =>
    new RegExp(`^edge-proxy\\.test\\.yaml:${lineCol}: \\(root\\): E_CONFIG_YAML: .*${text}`, 'i');
  t.match(problems(t, 'mqtt:\n  port: 1883\nlog: { level: info\n'), [at('4:1', 'flow map')]);
  t.match(problems(t, 'mqtt:\n  port: 1883\n  host: "unterminated\n'), [at('4:1', 'quote')]);
  t.match(problems(t, 'mqtt: { port: 1 }\nmqtt: { port: 2 }\n'), [at('2:1', 'unique')]);
  t.match(problems(t, 'mqtt:\n  port: *nowhere\n'), [at('2:9', 'alias')]);
  t.match(problems(t, 'mqtt:\n\tport: 1\n'), [/^edge-proxy\.test\.yaml:2:1: \(root\): E_CONFIG_YAML: .*[Tt]ab/]);
});

t.test('a file that cannot be read: E_CONFIG_FILE at 1:1', async (t) => {
  const cwd = t.testdir({});
  const result = checkConfig({ file: 'missing.yaml', env: {}, cwd });
  t.equal(result.loaded, null);
  t.match(result.problems.map(formatConfigProblem), [/^missing\.yaml:1:1: \(root\): E_CONFIG_FILE: /]);
});

t.test('environment overrides apply over the file', async (t) => {
  const env = {
    EDGE_PROXY_MQTT_PORT: '1884',
    EDGE_PROXY_UPLINK_URL: 'mqtts://env.example.com:8883',
    EDGE_PROXY_UPLINK_TOPIC_PREFIX: 'site/{edgeId}/',
    EDGE_PROXY_UPLINK_TLS_CA: '/etc/ca.pem',
    EDGE_PROXY_LOG_LEVEL: 'warn',
    EDGE_PROXY_DATA_DIR: '/srv/edge',
    EDGE_PROXY_ADMIN_TOKEN: 'null',
    EDGE_PROXY_LIMITS_MAX_PAYLOAD_BYTES: '64KiB',
    OTHER_VARIABLE: 'ignored',
  };
  const yaml = 'edge: { id: e1 }\nmqtt: { port: 1 }\nlog: { level: debug }\nadmin: { token: abc }\n';
  const { config, trialDefaults } = load(t, yaml, { env });
  t.equal(config.mqtt.port, 1884, 'a number, and the env wins over the file');
  t.equal(config.uplink.url, 'mqtts://env.example.com:8883');
  t.equal(config.uplink.topicPrefix, 'site/e1/');
  t.equal(config.uplink.tls.ca, '/etc/ca.pem');
  t.equal(config.log.level, 'warn');
  t.equal(config.dataDir, '/srv/edge');
  t.equal(config.cache.path, '/srv/edge/cache.db');
  t.equal(config.admin.token, null, '`null` is null');
  t.equal(config.limits.maxPayloadBytes, 65536);
  t.notOk(trialDefaults.includes('uplink.url'));
});

t.test('environment values for text keys stay text', async (t) => {
  const env = { EDGE_PROXY_EDGE_ID: '1234', EDGE_PROXY_UPLINK_PASSWORD: 'pa #ss', EDGE_PROXY_UPLINK_USERNAME: 'null' };
  const { config } = loadConfig({ file: null, env, cwd: t.testdir({}) });
  t.equal(config.edge.id, '1234');
  t.equal(config.uplink.password, 'pa #ss');
  t.equal(config.uplink.username, null, '`null` is still null where null is allowed');
  const empty = checkConfig({ file: null, env: { EDGE_PROXY_MQTT_HOST: '' }, cwd: t.testdir({}) });
  t.same(empty.problems.map(formatConfigProblem), ['env:EDGE_PROXY_MQTT_HOST:1:1: mqtt.host: E_CONFIG_VALUE: must not be empty']);
});

t.test('bad environment values name their variable', async (t) => {
  const env = { EDGE_PROXY_MQTT_PORT: 'abc', EDGE_PROXY_LOG_LEVEL: 'loud' };
  t.same(problems(t, 'mqtt: { port: 99999 }\n', { env }), [
    'env:EDGE_PROXY_LOG_LEVEL:1:1: log.level: E_CONFIG_VALUE: ' +
      'must be one of `trace`, `debug`, `info`, `warn`, `error`, `fatal`, not `loud`',
    'env:EDGE_PROXY_MQTT_PORT:1:1: mqtt.port: E_CONFIG_TYPE: must be a whole number, not the string `abc`',
  ]);
});

t.test('an EDGE_PROXY_ variable that names no key is an unknown key', async (t) => {
  const env = { EDGE_PROXY_MQTT_PROT: '1884', EDGE_PROXY_COLOUR: 'blue', EDGE_PROXY_LOG_PRETTY: 'true' };
  t.same(problems(t, '', { env }), [
    'env:EDGE_PROXY_COLOUR:1:1: (root): E_CONFIG_UNKNOWN_KEY: EDGE_PROXY_COLOUR names no configuration key',
    'env:EDGE_PROXY_LOG_PRETTY:1:1: (root): E_CONFIG_UNKNOWN_KEY: ' +
      'EDGE_PROXY_LOG_PRETTY names no configuration key: log.pretty is not available in this version',
    'env:EDGE_PROXY_MQTT_PROT:1:1: (root): E_CONFIG_UNKNOWN_KEY: ' +
      'EDGE_PROXY_MQTT_PROT names no configuration key: did you mean `EDGE_PROXY_MQTT_PORT`?',
  ]);
});

t.test('file and environment problems are reported together', async (t) => {
  const found = problems(t, 'mqtt: { prot: 1 }\n', { env: { EDGE_PROXY_LOG_LEVEL: 'loud' } });
  t.match(found, [/^edge-proxy\.test\.yaml:1:9: mqtt\.prot: /, /^env:EDGE_PROXY_LOG_LEVEL:1:1: log\.level: /]);
});

t.test('{edgeId} is replaced by edge.id', async (t) => {
  const yaml = ['edge: { id: pi-hall-2 }', 'uplink: { clientId: "proxy-{edgeId}-a", controlPrefix: "c/{edgeId}/{edgeId}/" }', ''].join(
    '\n',
  );
  const { config } = load(t, yaml);
  t.equal(config.uplink.clientId, 'proxy-pi-hall-2-a');
  t.equal(config.uplink.topicPrefix, 'edge/pi-hall-2/up/');
  t.equal(config.uplink.controlPrefix, 'c/pi-hall-2/pi-hall-2/');
});

t.test('edge.id and topic prefixes cannot break MQTT topics', async (t) => {
  t.match(problems(t, 'edge: { id: "hall/2" }\n'), [/edge\.id: E_CONFIG_VALUE: `hall\/2` is not allowed; edge\.id is one level/]);
  t.match(problems(t, 'uplink: { topicPrefix: "up/#" }\n'), [/uplink\.topicPrefix: E_CONFIG_VALUE: .*wildcards/]);
});

t.test("relative paths written in a file are resolved against the file's directory (here the current one)", async (t) => {
  const yaml = 'dataDir: state\nadmin: { tokenFile: secrets/token }\nuplink: { tls: { ca: ca.pem } }\n';
  const cwd = t.testdir({ 'edge-proxy.test.yaml': yaml });
  const { config } = loadConfig({ file: 'edge-proxy.test.yaml', env: {}, cwd });
  t.equal(config.dataDir, join(cwd, 'state'));
  t.equal(config.cache.path, join(cwd, 'state', 'cache.db'));
  t.equal(config.admin.tokenFile, join(cwd, 'secrets', 'token'));
  t.equal(config.uplink.tls.ca, join(cwd, 'ca.pem'));
});

t.test("a relative path in a file resolves against the file's directory, wherever the command runs", async (t) => {
  const dir = t.testdir({
    site: {
      'edge-proxy.yaml':
        'dataDir: ./state\nadmin: { tokenFile: secrets/token }\nrules: { dir: ../shared/rules }\nmqtt: { tls: { cert: s.pem, key: s.key } }\n',
    },
    elsewhere: {},
  });
  const site = join(dir, 'site');
  for (const [file, cwd] of [
    [join(site, 'edge-proxy.yaml'), join(dir, 'elsewhere')],
    ['site/edge-proxy.yaml', dir],
    ['../site/edge-proxy.yaml', join(dir, 'elsewhere')],
  ] as const) {
    const { config } = loadConfig({ file, env: {}, cwd });
    t.equal(config.dataDir, join(site, 'state'), `${file} from ${cwd}: dataDir`);
    t.equal(config.cache.path, join(site, 'state', 'cache.db'), 'the default cache path follows dataDir');
    t.equal(config.admin.tokenFile, join(site, 'secrets', 'token'));
    t.equal(config.rules.dir, join(dir, 'shared', 'rules'));
    t.equal(config.mqtt.tls.cert, join(site, 's.pem'));
    t.equal(config.devicesFile, join(cwd, 'devices.yaml'), 'a default has no file: it resolves against the current directory');
  }
});

t.test('a relative path from an EDGE_PROXY_* variable, or a default, resolves against the current directory', async (t) => {
  const dir = t.testdir({ site: { 'edge-proxy.yaml': 'dataDir: ./state\ncache: { path: ./cache/edge.db }\n' }, elsewhere: {} });
  const cwd = join(dir, 'elsewhere');
  const file = join(dir, 'site', 'edge-proxy.yaml');
  const env = loadConfig({ file, env: { EDGE_PROXY_DATA_DIR: './state' }, cwd }).config;
  t.equal(env.dataDir, join(cwd, 'state'), 'a variable has no file: <cwd>/state');
  t.equal(env.cache.path, join(dir, 'site', 'cache', 'edge.db'), 'a key the file wrote still resolves against the file');
  const noCache = t.testdir({ 'edge-proxy.yaml': 'log: { level: info }\n', elsewhere: {} });
  const fromEnv = loadConfig({ file: join(noCache, 'edge-proxy.yaml'), env: { EDGE_PROXY_DATA_DIR: 'state' }, cwd });
  t.equal(fromEnv.config.cache.path, join(cwd, 'state', 'cache.db'), 'the default cache path follows a dataDir from the environment');
  const defaults = loadConfig({ file: join(noCache, 'edge-proxy.yaml'), env: {}, cwd }).config;
  t.equal(defaults.dataDir, join(cwd, 'data'), 'the default dataDir: <cwd>/data, wherever the file is');
  t.equal(defaults.cache.path, join(cwd, 'data', 'cache.db'));
  t.equal(loadConfig({ file: null, env: {}, cwd }).config.dataDir, join(cwd, 'data'), 'no file: <cwd>/data');
});

/** checkConfig with the file check, on `yaml` as edge-proxy.test.yaml in `cwd`. */
function checkFiles(cwd: string, yaml: string, env: NodeJS.ProcessEnv = {}) {
  const result = checkConfig({ file: 'edge-proxy.test.yaml', env, cwd: write(cwd, yaml), checkFiles: true });
  return { ...result, problems: result.problems.map(formatConfigProblem) };
}

function write(dir: string, yaml: string): string {
  writeFileSync(join(dir, 'edge-proxy.test.yaml'), yaml);
  return dir;
}

t.test('checkFiles: every file run would read must be readable and usable, each problem at its value', async (t) => {
  const cwd = t.testdir({ 'ca.pem': 'x', 'server.pem': 'x', certs: {} });
  const yaml = [
    'uplink:', //                                      1
    '  url: mqtts://broker.example.com:8883', //       2
    '  tls: { ca: /nonexistent.pem, cert: c.pem, key: ca.pem }', // 3
    'mqtt:', //                                        4
    '  tls:', //                                       5
    '    cert: server.pem', //                         6
    '    key: certs', //                               7
    '    ca: ./nope/ca.pem', //                        8
    'admin: { tokenFile: token }', //                  9
    '',
  ].join('\n');
  const result = checkFiles(cwd, yaml);
  t.equal(result.loaded, null);
  // OpenSSL's own words, in parentheses at the end, vary with its version.
  t.same(
    result.problems.map((p) => p.replace(/ \(error:[^)]*\)$/, '')),
    [
      'edge-proxy.test.yaml:3:14: uplink.tls.ca: E_CONFIG_FILE: cannot read /nonexistent.pem: no such file',
      `edge-proxy.test.yaml:3:38: uplink.tls.cert: E_CONFIG_FILE: cannot read ${join(cwd, 'c.pem')}: no such file`,
      // Read, but not usable as node:tls would use them: E_TLS (check-config-files.test.ts has more).
      `edge-proxy.test.yaml:3:50: uplink.tls.key: E_TLS: ${join(cwd, 'ca.pem')} cannot be used: it is not a PEM private key without a passphrase`,
      `edge-proxy.test.yaml:6:11: mqtt.tls.cert: E_TLS: ${join(cwd, 'server.pem')} cannot be used: it is not a PEM certificate`,
      `edge-proxy.test.yaml:7:10: mqtt.tls.key: E_CONFIG_FILE: cannot read ${join(cwd, 'certs')}: it is a directory`,
      `edge-proxy.test.yaml:8:9: mqtt.tls.ca: E_CONFIG_FILE: cannot read ${join(cwd, 'nope', 'ca.pem')}: no such file`,
      `edge-proxy.test.yaml:9:21: admin.tokenFile: E_CONFIG_FILE: cannot read ${join(cwd, 'token')}: no such file`,
    ],
  );
  t.same(checkConfig({ file: 'edge-proxy.test.yaml', env: {}, cwd }).problems, [], 'without checkFiles the files are not looked at');
});

t.test('checkFiles: an environment override is blamed on its variable; files nothing reads are not checked', async (t) => {
  const cwd = t.testdir({ token: '\n' });
  copyFileSync(makeCa(join(cwd, 'pki'), 'ca').cert, join(cwd, 'ca.pem'));
  t.same(checkFiles(cwd, 'uplink: { url: "mqtt://b:1883" }\n', { EDGE_PROXY_UPLINK_TLS_CA: 'gone.pem' }).problems, [
    `env:EDGE_PROXY_UPLINK_TLS_CA:1:1: uplink.tls.ca: E_CONFIG_FILE: cannot read ${join(cwd, 'gone.pem')}: no such file`,
  ]);
  t.same(checkFiles(cwd, 'admin: { tokenFile: token }\n').problems, [
    `edge-proxy.test.yaml:1:21: admin.tokenFile: E_CONFIG_FILE: ${join(cwd, 'token')} is empty: write the admin token in it`,
  ]);
  const unused = checkFiles(cwd, 'uplink: { tls: { ca: gone.pem } }\nadmin: { token: abc }\n');
  t.ok(unused.loaded, 'no uplink.url: its TLS files are not read, so not checked');
  writeFileSync(join(cwd, 'token'), 'sekret\n');
  t.ok(checkFiles(cwd, 'uplink: { url: "mqtt://b:1883", tls: { ca: ca.pem } }\nadmin: { tokenFile: token }\n').loaded);
});

t.test('checkFiles: a missing devicesFile in token mode is a warning, not a problem', async (t) => {
  const cwd = t.testdir({ registry: {} });
  const missing = checkFiles(cwd, 'auth:\n  mode: token\ndevicesFile: ./site/devices.yaml\n');
  t.ok(missing.loaded, 'an empty registry: the proxy starts');
  t.same(missing.problems, []);
  t.same(missing.warnings, [
    `edge-proxy.test.yaml:3:14: devicesFile: warning: ${join(cwd, 'site', 'devices.yaml')} does not exist: ` +
      'the registry is empty, so token mode admits no device until `edge-proxy devices add` writes it',
  ]);
  t.same(checkFiles(cwd, 'devicesFile: ./site/devices.yaml\n').warnings, [], 'open mode reads no registry');
  t.same(checkFiles(cwd, 'auth: { mode: token }\ndevicesFile: registry\n').problems, [
    `edge-proxy.test.yaml:2:14: devicesFile: E_CONFIG_FILE: cannot read ${join(cwd, 'registry')}: it is a directory`,
  ]);
});

t.test('settings that contradict each other', async (t) => {
  t.match(problems(t, 'admin: { token: abc, tokenFile: /etc/token }\n'), [
    /admin\.tokenFile: E_CONFIG_VALUE: set admin\.token or admin\.tokenFile, not both/,
  ]);
  t.match(problems(t, 'uplink: { tls: { cert: c.pem } }\n'), [/uplink\.tls\.cert: E_CONFIG_VALUE: uplink\.tls\.key must be set too/]);
  t.same(problems(t, 'mqtt:\n  tls: { key: k.pem }\n'), [
    "edge-proxy.test.yaml:2:15: mqtt.tls.key: E_CONFIG_VALUE: mqtt.tls.cert must be set too: the TLS endpoint's certificate needs its key",
  ]);
  t.same(problems(t, 'mqtt:\n  tls: { ca: devices-ca.pem }\n'), [
    'edge-proxy.test.yaml:2:14: mqtt.tls.ca: E_CONFIG_VALUE: mqtt.tls.ca asks for client certificates on the TLS endpoint, which runs only when mqtt.tls.cert and mqtt.tls.key are set',
  ]);
  const { config } = load(
    t,
    'auth: { mode: token }\ndevicesFile: site/devices.yaml\nmqtt: { tls: { cert: s.pem, key: s.key, ca: ca.pem } }\n',
  );
  t.equal(config.auth.mode, 'token');
  t.match(config.devicesFile, /site\/devices\.yaml$/, 'a relative registry path is resolved');
  t.same(Object.keys(config.mqtt.tls), ['port', 'cert', 'key', 'ca']);
});

t.test('the result is deeply frozen', async (t) => {
  const { config } = load(t, '');
  t.ok(Object.isFrozen(config));
  t.ok(Object.isFrozen(config.uplink));
  t.ok(Object.isFrozen(config.uplink.tls));
  t.throws(() => {
    (config.mqtt as { port: number }).port = 1;
  }, TypeError);
});

t.test('config/edge-proxy.example.yaml states the defaults (its relative paths resolve against its own directory)', async (t) => {
  const example = loadConfig({ file: join(repo, 'config/edge-proxy.example.yaml'), env: {}, cwd: t.testdir({}) });
  const defaults = loadConfig({ file: null, env: {}, cwd: join(repo, 'config') });
  t.same(example.config, defaults.config);
});

t.test('config/edge-proxy.production.yaml loads without problems', async (t) => {
  const { config } = loadConfig({ file: join(repo, 'config/edge-proxy.production.yaml'), env: {}, cwd: repo });
  t.equal(config.mqtt.host, '0.0.0.0');
  t.equal(config.admin.host, '127.0.0.1');
  t.equal(config.dataDir, '/var/lib/edge-proxy');
  t.equal(config.uplink.url, 'mqtts://broker.example.com:8883');
  t.equal(config.uplink.tls.ca, '/etc/edge-proxy/ca.pem');
  t.equal(config.auth.mode, 'token', 'only registered devices get in');
  t.equal(config.devicesFile, '/etc/edge-proxy/devices.yaml');
  t.equal(config.mqtt.tls.port, 8883, 'devices on the site network use TLS');
  t.ok(config.mqtt.tls.cert && config.mqtt.tls.key, 'the TLS endpoint runs');
  t.same(config.routing.priorities, [
    { topic: 'devices/+/alarm/#', priority: 'critical' },
    { topic: 'devices/+/debug/#', priority: 'low' },
  ]);
  t.equal(config.cache.maxBytes, 512 * 2 ** 20);
});
