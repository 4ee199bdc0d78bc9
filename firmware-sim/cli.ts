#!/usr/bin/env node
/**
 * firmware-sim command line: parse options, run a fleet until count/duration/
 * signal, print the JSON summary on stdout. Everything else goes to stderr so
 * scripts can parse stdout.
 */
import { accessSync, constants as fsConstants, readFileSync, realpathSync, statSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { SENSOR_KINDS, isBearingCondition, isSensorKind, parseRate, type SensorKind } from './device.js';
import { certificateDeviceId, parseTokenFile, tokenDeviceId } from './credentials.js';
import { PROTOCOLS, WEBSOCKET_PROTOCOLS, isProtocol, type Protocol } from './links.js';
import {
  DEFAULT_COAP_PORT,
  DEFAULT_DEVICES,
  DEFAULT_HTTP_PORT,
  DEFAULT_PREFIX,
  DEFAULT_URL,
  deviceId,
  fleetEndpoints,
  startFleet,
  usesTls,
  type Endpoints,
  type FleetOptions,
  type StopReason,
  type TlsFiles,
} from './fleet.js';

export const USAGE = `Usage: node dist/firmware-sim/cli.js [options]
       npm run sim -- [options]

Simulated device fleet. Each device publishes JSON telemetry to
devices/<id>/telemetry, or is a vibration sensor on a bearing (--sensor), and
obeys downlink commands on devices/<id>/cmd/rate ({"rate": 5} or 5), cmd/pause,
cmd/resume and, a vibration sensor, cmd/bearing, whatever its protocol:
  mqtt     MQTT over TCP or TLS (MQTT.js; client id = device id)
  mqtt-ws  MQTT over WebSocket on the proxy's http endpoint, path /mqtt (MQTT.js)
  ws       the proxy's JSON protocol on /ws (docs/websocket.md): qos 1 "pub"
           frames, each acknowledged before it counts, and a "sub" to its
           devices/<id>/cmd/# for the commands; ?d=<id> names the device
  coap     CoAP over UDP (docs/coap.md): POST /ps/devices/<id>/telemetry,
           confirmable for --qos 1 (retransmitted as RFC 7252 says, counted
           once answered 2.04), non-confirmable for --qos 0; a GET with
           Observe on /ps/devices/<id>/cmd/# for the commands; ?d=<id> names
           the device; a payload over 1024 bytes goes block-wise (Block1)
A vibration sensor publishes at each report (--rate) one window of 1024
acceleration samples in g taken at 25,600 Hz (40 ms), about 8 KB of JSON:
  devices/<id>/vibration  {"deviceId","seq","ts","sampleRateHz":25600,
                           "shaftHz":<shaft speed>,"samples":[1024 numbers]}
Its bearing is healthy or has a fault on its outer race, whose impacts, at BPFO
(3.58x the shaft speed), ring the housing's resonance. A fault starts early (severity 0.5:
impact peaks half the healthy vibration's RMS, invisible in the overall level)
and grows by 0.002 a window, up to 6. devices/<id>/cmd/bearing switches it:
{"condition":"fault"}, with "severity": S (0 < S <= 6) to set where it stands,
or {"condition":"healthy"} (a replaced bearing); a payload that is neither is
refused, logged, and changes nothing.
Against a proxy in token mode each device connects with username = its id and
password = its token, as printed by \`edge-proxy devices add <id>\` (a ws
device: the token at the upgrade, see --upgrade-token; a coap device: &k=<token>
on every request); or, on the proxy's MQTT TLS port, with a client certificate
whose CN is its id (--cert, --key).

Options:
  --protocol P[,P...]   mqtt, mqtt-ws, ws or coap (default mqtt); a list gives
                        the devices their protocols in turn: --protocol mqtt,ws
                        makes sim-0001 mqtt, sim-0002 ws, sim-0003 mqtt, ...;
                        mqtt,mqtt,coap makes two thirds of them mqtt
  --url URL             where mqtt devices connect (default ${DEFAULT_URL}).
                        For a fleet of one WebSocket protocol, the endpoint
                        itself may be given instead: ws(s)://host:8080/mqtt
                        (the protocol is then mqtt-ws) or ws(s)://host:8080/ws
                        (ws)
  --http-url URL        the proxy's http endpoint, ws://host:port or
                        wss://host:port (http:// and https:// are taken too):
                        mqtt-ws devices connect to URL/mqtt, ws devices to
                        URL/ws (default ws://<--url's host>:${DEFAULT_HTTP_PORT}, wss:// when
                        --url is mqtts://)
  --coap-url URL        the proxy's CoAP endpoint, coap://host:port, where coap
                        devices send their requests (default
                        coap://<--url's host>:${DEFAULT_COAP_PORT})
  --upgrade-token header|query
                        with --token or --token-file, WebSocket devices give
                        their token at the upgrade, as "Authorization: Bearer"
                        (header) or ?token= (query). Default: the header on
                        /ws; on /mqtt the CONNECT password, as over TCP
  --devices N           number of devices (default 5)
  --sensor K[,K...]     telemetry or vibration (default telemetry); a list gives
                        the devices their kinds in turn, as --protocol does:
                        --sensor telemetry,vibration makes sim-0001 telemetry,
                        sim-0002 a vibration sensor, sim-0003 telemetry, ...
  --bearing healthy|fault
                        the bearing of every vibration sensor at the start
                        (default healthy)
  --faulty N            the first N vibration sensors start with a developing
                        bearing fault, the others healthy (not with --bearing)
  --rate R              messages per second per device (default 1); 0 or "max":
                        publish the next message as soon as the previous one is
                        acknowledged
  --inflight K          messages in flight per device in max mode (default 1)
  --qos 0|1             publish QoS (default 1); coap devices: confirmable (1) or
                        non-confirmable (0) requests
  --payload-bytes N     pad each telemetry message to N bytes with a "pad"
                        field (default: no padding, about 110 bytes); over
                        1024, coap devices send it block-wise, as they do every
                        vibration window
  --count M             stop each device after M messages (default unlimited)
  --duration S          stop after S seconds (default unlimited)
  --prefix P            device id prefix (default "sim-" -> sim-0001, sim-0002, ...)
  --username-as-id      MQTT username = device id (default on)
  --no-username-as-id   MQTT devices connect without a username (not with a
                        token)
  --token TOKEN         one device, connecting as the device the token names
                        (<deviceId>.<secret>); --devices, if given, must be 1.
                        Other users can see it in ps: --token-file is safer
  --token-file FILE     one token per line (blank lines and # comments ignored);
                        each device uses the token of its own id (--prefix and
                        --devices name the devices); a device without one is an
                        error
  --ca FILE             CA certificate (PEM) to trust for an mqtts:// or wss://
                        URL, e.g. the proxy's TLS port 8883 or its http
                        endpoint with http.tls, with a self-signed certificate
                        (default: the system's CAs)
  --cert FILE           client certificate (PEM) for a TLS URL. Needs --key. The
                        proxy's TLS port takes its CN as the device id, so the
                        simulator runs that one device, named as the CN: its
                        client id, username and topics (devices/<CN>/...).
                        --devices, if given, must be 1; --prefix, --token and
                        --token-file must name the same device
  --key FILE            the client certificate's private key (PEM)
  --seed S              seed for reproducible sensor readings and vibration
                        windows (default random, printed in the summary)
  --stats-interval S    seconds between stats lines (default 5)
  --quiet               log only warnings, errors and commands
  -h, --help            show this help

Logs are plain text on stderr. On exit (count reached, duration elapsed,
SIGINT/SIGTERM) one JSON line is printed on stdout:
  {"event":"summary","devices":N,"sent":X,"acked":Y,...,"protocols":{"mqtt":N},
   "sensors":{"telemetry":N,"vibration":M},"faulty":["sim-0002",...],
   "lastSeq":{"sim-0001":123,...}}
("faulty": the vibration sensors whose bearing had a fault at the end.)
Exit status: 0 after all clients ended, 2 on a bad option.
`;

export class UsageError extends Error {
  override name = 'UsageError';
}

export type CliCommand = { help: true } | { help: false; options: FleetOptions };

const OPTIONS = {
  protocol: { type: 'string' },
  url: { type: 'string' },
  'http-url': { type: 'string' },
  'coap-url': { type: 'string' },
  'upgrade-token': { type: 'string' },
  devices: { type: 'string' },
  sensor: { type: 'string' },
  bearing: { type: 'string' },
  faulty: { type: 'string' },
  rate: { type: 'string' },
  inflight: { type: 'string' },
  qos: { type: 'string' },
  'payload-bytes': { type: 'string' },
  count: { type: 'string' },
  duration: { type: 'string' },
  prefix: { type: 'string' },
  'username-as-id': { type: 'boolean' },
  // Node 20's parseArgs has no allowNegative, so the negation is its own flag.
  'no-username-as-id': { type: 'boolean' },
  token: { type: 'string' },
  'token-file': { type: 'string' },
  ca: { type: 'string' },
  cert: { type: 'string' },
  key: { type: 'string' },
  seed: { type: 'string' },
  'stats-interval': { type: 'string' },
  quiet: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

function positiveInt(name: string, value: string): number {
  if (!/^\d+$/.test(value.trim()) || Number(value) < 1 || !Number.isSafeInteger(Number(value))) {
    throw new UsageError(`--${name} must be a positive integer, got "${value}"`);
  }
  return Number(value);
}

function positiveNumber(name: string, value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n <= 0) {
    throw new UsageError(`--${name} must be a number > 0, got "${value}"`);
  }
  return n;
}

/** Parse argv (without node and script). Throws UsageError on bad input. */
export function parseCliArgs(argv: readonly string[]): CliCommand {
  let values;
  try {
    ({ values } = parseArgs({ args: [...argv], options: OPTIONS, strict: true, allowPositionals: false }));
  } catch (err) {
    // parseArgs throws TypeErrors for unknown options, missing values, positionals.
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
  if (values.help) return { help: true };

  const options: FleetOptions = {};
  if (values.url !== undefined) {
    let url: URL;
    try {
      url = new URL(values.url);
    } catch {
      throw new UsageError(`--url is not a valid URL: "${values.url}"`);
    }
    if (!['mqtt:', 'mqtts:', 'tcp:', 'ssl:', 'ws:', 'wss:'].includes(url.protocol)) {
      const coap = url.protocol === 'coap:' ? ' (the CoAP endpoint is --coap-url, with --protocol coap)' : '';
      throw new UsageError(`--url must use mqtt://, mqtts://, ws:// or wss://, got "${values.url}"${coap}`);
    }
    options.url = values.url;
  }
  parseEndpoints(values, options);
  if (values.devices !== undefined) options.devices = positiveInt('devices', values.devices);
  if (values.rate !== undefined) {
    const rate = parseRate(values.rate);
    if (rate === undefined) {
      throw new UsageError(`--rate must be a number >= 0 (0 = max) or "max", got "${values.rate}"`);
    }
    options.rate = rate;
  }
  if (values.inflight !== undefined) options.inflight = positiveInt('inflight', values.inflight);
  if (values.qos !== undefined) {
    if (values.qos !== '0' && values.qos !== '1') throw new UsageError(`--qos must be 0 or 1, got "${values.qos}"`);
    options.qos = values.qos === '0' ? 0 : 1;
  }
  if (values['payload-bytes'] !== undefined) options.payloadBytes = positiveInt('payload-bytes', values['payload-bytes']);
  if (values.count !== undefined) options.count = positiveInt('count', values.count);
  if (values.duration !== undefined) options.duration = positiveNumber('duration', values.duration);
  if (values.prefix !== undefined) {
    // The id becomes a topic level and the client id: no wildcards or separators.
    if (/[/#+\s]/.test(values.prefix)) throw new UsageError(`--prefix must not contain / # + or spaces`);
    options.prefix = values.prefix;
  }
  if (values['username-as-id'] && values['no-username-as-id']) {
    throw new UsageError('--username-as-id and --no-username-as-id are mutually exclusive');
  }
  options.usernameAsId = !values['no-username-as-id'];
  parseCredentials(values, options);
  parseSensors(values, options);
  if (values.seed !== undefined) {
    if (values.seed.trim() === '') throw new UsageError('--seed must not be empty');
    options.seed = values.seed;
  }
  if (values['stats-interval'] !== undefined) {
    options.statsInterval = positiveNumber('stats-interval', values['stats-interval']);
  }
  if (values.quiet) options.quiet = true;
  return { help: false, options };
}

/** --protocol, --http-url, --coap-url: where each device connects. */
function parseEndpoints(values: { protocol?: string; 'http-url'?: string; 'coap-url'?: string }, options: FleetOptions): void {
  if (values.protocol !== undefined) {
    const names = values.protocol.split(',').map((p) => p.trim());
    const wrong = names.filter((p) => !isProtocol(p));
    if (names.length === 0 || wrong.length > 0) {
      throw new UsageError(`--protocol takes ${PROTOCOLS.join(', ')} or a comma-separated list of them, got "${values.protocol}"`);
    }
    options.protocols = names as Protocol[];
  }
  if (values['http-url'] !== undefined) options.httpUrl = values['http-url'];
  if (values['coap-url'] !== undefined) options.coapUrl = values['coap-url'];
  const endpoints = cliEndpoints(options);
  if (values['http-url'] !== undefined && !hasWebSocketDevices(endpoints)) {
    throw new UsageError('--http-url is where mqtt-ws and ws devices connect, and this fleet has none: add --protocol');
  }
  if (values['coap-url'] !== undefined && !endpoints.protocols.includes('coap')) {
    throw new UsageError('--coap-url is where coap devices send their requests, and this fleet has none: add --protocol coap');
  }
}

/** --sensor, --bearing, --faulty (after the credentials, which may name the devices). */
function parseSensors(values: { sensor?: string; bearing?: string; faulty?: string }, options: FleetOptions): void {
  if (values.sensor !== undefined) {
    const names = values.sensor.split(',').map((k) => k.trim());
    if (names.some((k) => !isSensorKind(k))) {
      throw new UsageError(`--sensor takes ${SENSOR_KINDS.join(' or ')}, or a comma-separated list of them, got "${values.sensor}"`);
    }
    options.sensors = names as SensorKind[];
  }
  const kinds = options.sensors ?? ['telemetry'];
  const n = options.ids?.length ?? options.devices ?? DEFAULT_DEVICES;
  let vibration = 0;
  for (let i = 0; i < n; i++) if (kinds[i % kinds.length] === 'vibration') vibration++;
  const none = 'and this fleet has no vibration sensor: add --sensor vibration';
  if (values.bearing !== undefined) {
    if (!isBearingCondition(values.bearing)) throw new UsageError(`--bearing must be healthy or fault, got "${values.bearing}"`);
    if (vibration === 0) throw new UsageError(`--bearing is the bearing of the vibration sensors, ${none}`);
    options.bearing = values.bearing;
  }
  if (values.faulty !== undefined) {
    if (values.bearing !== undefined) {
      throw new UsageError('--bearing (every vibration sensor) and --faulty (the first N) are mutually exclusive');
    }
    if (!/^\d+$/.test(values.faulty.trim())) throw new UsageError(`--faulty must be an integer >= 0, got "${values.faulty}"`);
    const faulty = Number(values.faulty);
    if (vibration === 0) throw new UsageError(`--faulty N makes the first N vibration sensors faulty, ${none}`);
    if (faulty > vibration) {
      throw new UsageError(`--faulty ${faulty}: this fleet has ${vibration} vibration ${vibration === 1 ? 'sensor' : 'sensors'}`);
    }
    options.faulty = faulty;
  }
  if (options.payloadBytes !== undefined && vibration === n) {
    throw new UsageError('--payload-bytes pads telemetry, and this fleet has only vibration sensors');
  }
}

function hasWebSocketDevices(endpoints: Endpoints): boolean {
  return endpoints.protocols.some((p) => WEBSOCKET_PROTOCOLS.includes(p));
}

/** fleetEndpoints(), its complaints as usage errors naming the options. */
function cliEndpoints(options: FleetOptions): Endpoints {
  try {
    return fleetEndpoints(options, { url: '--url', httpUrl: '--http-url', coapUrl: '--coap-url' });
  } catch (err) {
    if (err instanceof RangeError) throw new UsageError(err.message);
    throw err;
  }
}

interface CredentialValues {
  token?: string;
  'token-file'?: string;
  'upgrade-token'?: string;
  ca?: string;
  cert?: string;
  key?: string;
  'no-username-as-id'?: boolean;
}

/** --token, --token-file, --ca, --cert, --key: checked against the fleet they are for. */
function parseCredentials(values: CredentialValues, options: FleetOptions): void {
  const { token, 'token-file': tokenFile } = values;
  if (token !== undefined && tokenFile !== undefined) {
    throw new UsageError("--token and --token-file are mutually exclusive: --token is one device's, the file has one per device");
  }
  if ((token !== undefined || tokenFile !== undefined) && values['no-username-as-id']) {
    throw new UsageError(
      `--no-username-as-id cannot be used with ${token !== undefined ? '--token' : '--token-file'}: the proxy takes the username as the device the token is for`,
    );
  }
  const upgrade = values['upgrade-token'];
  if (upgrade !== undefined) {
    if (upgrade !== 'header' && upgrade !== 'query') throw new UsageError(`--upgrade-token must be header or query, got "${upgrade}"`);
    if (token === undefined && tokenFile === undefined)
      throw new UsageError('--upgrade-token is where the token goes: give --token or --token-file');
    if (!hasWebSocketDevices(cliEndpoints(options))) {
      throw new UsageError(
        '--upgrade-token is for WebSocket devices (--protocol mqtt-ws or ws); mqtt devices send the token in CONNECT, coap devices in every request',
      );
    }
    options.upgradeToken = upgrade;
  }
  const certId = parseTls(values, options);
  if (certId !== undefined) {
    // A client certificate is one device's: the proxy's TLS port takes its CN as the device id, and
    // refuses a username that is not the CN. So the fleet is that one device, named as the CN.
    if (options.devices !== undefined && options.devices !== 1) {
      throw new UsageError(`--cert is the certificate of one device (${certId}, its CN), not of --devices ${options.devices}`);
    }
    if (options.prefix !== undefined && deviceId(options.prefix, 1, 1) !== certId) {
      throw new UsageError(
        `--cert is for device ${certId} (its CN), but --prefix ${options.prefix} names the device ${deviceId(options.prefix, 1, 1)}: leave --prefix out, the device takes the id its certificate names`,
      );
    }
    if (cliEndpoints(options).protocols[0] === 'coap') {
      throw new UsageError(`--cert is for a TLS URL, and the device ${certId} is a coap device: CoAP here has no DTLS; give it --token`);
    }
    options.ids = [certId];
  }
  if (token !== undefined) {
    const id = tokenDeviceId(token.trim());
    if (id === undefined) {
      throw new UsageError('--token is not a token: expected <deviceId>.<secret>, as `edge-proxy devices add <id>` prints it');
    }
    if (certId !== undefined && id !== certId) {
      throw new UsageError(`--token is for device ${id}, but --cert is the certificate of ${certId} (its CN): give the token of ${certId}`);
    }
    if (options.devices !== undefined && options.devices !== 1) {
      throw new UsageError(
        `--token is the token of one device (${id}), not of --devices ${options.devices}: give each device its token in a --token-file`,
      );
    }
    if (options.prefix !== undefined && deviceId(options.prefix, 1, 1) !== id) {
      throw new UsageError(
        `--token is for device ${id}, but --prefix ${options.prefix} names the device ${deviceId(options.prefix, 1, 1)}: leave --prefix out, the device takes the id its token names`,
      );
    }
    options.ids = [id];
    options.tokens = { [id]: token.trim() };
  }
  if (tokenFile !== undefined) {
    let text: string;
    try {
      text = readFileSync(tokenFile, 'utf8');
    } catch (err) {
      throw new UsageError(`cannot read --token-file ${tokenFile}: ${reason(err)}`);
    }
    const { tokens, problems } = parseTokenFile(text);
    if (problems.length > 0) {
      const more = problems.length > 5 ? `; and ${problems.length - 5} more` : '';
      throw new UsageError(`--token-file ${tokenFile}: ${problems.slice(0, 5).join('; ')}${more}`);
    }
    const n = options.devices ?? DEFAULT_DEVICES;
    const ids = options.ids ?? Array.from({ length: n }, (_, i) => deviceId(options.prefix ?? DEFAULT_PREFIX, i + 1, n));
    const missing = ids.filter((id) => !tokens.has(id));
    if (missing.length > 0) {
      const shown = missing.slice(0, 5).join(', ') + (missing.length > 5 ? ` and ${missing.length - 5} more` : '');
      const has =
        tokens.size === 0
          ? 'it holds no token'
          : `it has tokens for ${[...tokens.keys()].slice(0, 3).join(', ')}${tokens.size > 3 ? ', ...' : ''}`;
      const named = certId !== undefined ? '--cert names the device' : '--prefix and --devices name the devices';
      throw new UsageError(`--token-file ${tokenFile} has no token for device${missing.length > 1 ? 's' : ''} ${shown} (${has}; ${named})`);
    }
    options.tokens = Object.fromEntries(ids.map((id) => [id, tokens.get(id)!]));
  }
}

/** --ca, --cert, --key: readable, for a TLS URL; the device id the client certificate names (its CN), if one is given. */
function parseTls(values: CredentialValues, options: FleetOptions): string | undefined {
  const tls: TlsFiles = {};
  for (const name of ['ca', 'cert', 'key'] as const) {
    const file = values[name];
    if (file === undefined) continue;
    try {
      if (statSync(file).isDirectory()) throw Object.assign(new Error('is a directory'), { code: 'EISDIR' });
      accessSync(file, fsConstants.R_OK);
    } catch (err) {
      throw new UsageError(`cannot read --${name} ${file}: ${reason(err)}`);
    }
    tls[name] = file;
  }
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    throw new UsageError('--cert and --key go together: a client certificate needs its private key');
  }
  if (Object.keys(tls).length === 0) return undefined;
  const endpoints = cliEndpoints(options);
  if (!usesTls(endpoints)) {
    const urls = Object.values(endpoints.urls);
    const defaulted = options.url === undefined && endpoints.protocols.every((p) => p === 'mqtt') ? ' (the default --url)' : '';
    throw new UsageError(`--ca, --cert and --key are for a TLS URL (mqtts://host:8883 or wss://...), not ${urls.join(' or ')}${defaulted}`);
  }
  options.tls = tls;
  if (tls.cert === undefined) return undefined;
  const named = certificateDeviceId(readFileSync(tls.cert));
  if ('problem' in named) throw new UsageError(`--cert ${tls.cert}: ${named.problem}`);
  return named.id;
}

function reason(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return 'no such file';
  if (code === 'EACCES') return 'permission denied';
  if (code === 'EISDIR') return 'is a directory';
  return err instanceof Error ? err.message : String(err);
}

function writeOut(stream: NodeJS.WriteStream, text: string): Promise<void> {
  return new Promise((resolve) => stream.write(text, () => resolve()));
}

export async function main(argv: readonly string[]): Promise<number> {
  let cmd: CliCommand;
  try {
    cmd = parseCliArgs(argv);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    await writeOut(process.stderr, `firmware-sim: error: ${err.message}\n\n${USAGE}`);
    return 2;
  }
  if (cmd.help) {
    await writeOut(process.stdout, USAGE);
    return 0;
  }

  const log = (line: string): void => {
    process.stderr.write(`${new Date().toISOString()} ${line}\n`);
  };
  const fleet = startFleet({ ...cmd.options, log });

  let signals = 0;
  const onSignal = (signal: StopReason): void => {
    signals++;
    if (signals > 1) {
      // Second Ctrl-C: the user does not want to wait for pending acks.
      log(`${signal} again, exiting without waiting`);
      process.exit(130);
    }
    log(`${signal} received`);
    void fleet.stop(signal);
  };
  const onInt = (): void => onSignal('SIGINT');
  const onTerm = (): void => onSignal('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);

  const summary = await fleet.done;
  process.off('SIGINT', onInt);
  process.off('SIGTERM', onTerm);
  await writeOut(process.stdout, `${JSON.stringify(summary)}\n`);
  return 0;
}

function isEntryPoint(): boolean {
  const entry = process.argv[1];
  if (!entry) return false;
  try {
    return import.meta.url === pathToFileURL(realpathSync(entry)).href;
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  main(process.argv.slice(2)).then(
    // Explicit exit: a lingering MQTT.js timer must not keep a finished run alive.
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`firmware-sim: fatal: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exit(1);
    },
  );
}
