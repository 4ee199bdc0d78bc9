// The simulator's WebSocket devices (--protocol mqtt-ws and ws) against the built proxy as a real
// process, with a real Mosquitto as the cloud: a mixed fleet whose every message arrives once,
// downlink commands from the cloud that change what a /ws and a /mqtt device do, token mode with the
// token in CONNECT, in the upgrade's header and in its query, and the options that choose all that.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { parseCliArgs } from '../firmware-sim/cli.js';
import { fleetEndpoints, startFleet, type Fleet, type FleetOptions } from '../firmware-sim/fleet.js';
import type { DeviceCommand } from '../firmware-sim/device.js';
import { cloudFor } from './helpers/mosquitto.js';
import { startProxy, type ProxyProcess } from './helpers/proxy.js';
import { eventually, sleep } from './helpers/ports.js';
import { writeRegistry } from './helpers/registry.js';
import type { Collected } from './helpers/clients.js';

const SIM = new URL('../dist/firmware-sim/cli.js', import.meta.url).pathname;

interface Envelope {
  deviceId: string;
  topic: string;
  contentType: string;
  payload: { deviceId?: string; seq?: number; ts?: number };
}

/** The envelopes the cloud received from devices whose id starts with `prefix`. */
function envelopes(up: Collected, prefix: string): Envelope[] {
  return up.messages
    .map((m) => JSON.parse(m.payload.toString()) as Envelope)
    .filter((e) => e.deviceId.startsWith(prefix) && e.topic.endsWith('/telemetry'));
}

function fleetOf(proxy: ProxyProcess, options: FleetOptions, lines: string[] = []): Fleet {
  return startFleet({
    url: `mqtt://127.0.0.1:${proxy.ports.mqtt}`,
    httpUrl: `ws://127.0.0.1:${proxy.ports.http}`,
    log: (l) => lines.push(l),
    ...options,
  });
}

t.test('options: --protocol, --http-url, --upgrade-token', async (t) => {
  t.match(parseCliArgs(['--protocol', 'mqtt,ws']), { options: { protocols: ['mqtt', 'ws'] } });
  t.match(parseCliArgs(['--protocol', 'ws', '--http-url', 'ws://pi:9000']), { options: { protocols: ['ws'], httpUrl: 'ws://pi:9000' } });
  t.match(parseCliArgs(['--url', 'ws://pi:8080/ws']), { options: { url: 'ws://pi:8080/ws' } });
  const token = `sim-0001.${'A'.repeat(43)}`;
  t.match(parseCliArgs(['--protocol', 'mqtt-ws', '--token', token, '--upgrade-token', 'query']), { options: { upgradeToken: 'query' } });

  t.same(fleetEndpoints({}), { protocols: ['mqtt'], urls: { mqtt: 'mqtt://127.0.0.1:1883' } }, 'default: mqtt');
  t.same(
    fleetEndpoints({ url: 'mqtt://pi.local:1883', protocols: ['mqtt', 'mqtt-ws', 'ws'] }),
    {
      protocols: ['mqtt', 'mqtt-ws', 'ws'],
      urls: { mqtt: 'mqtt://pi.local:1883', 'mqtt-ws': 'ws://pi.local:8080/mqtt', ws: 'ws://pi.local:8080/ws' },
    },
    "the http endpoint defaults to port 8080 on --url's host",
  );
  t.same(fleetEndpoints({ url: 'mqtts://pi:8883', protocols: ['ws'] }).urls, { ws: 'wss://pi:8080/ws' }, 'wss:// beside mqtts://');
  t.same(
    fleetEndpoints({ protocols: ['ws'], httpUrl: 'https://pi:8443/edge/' }).urls,
    { ws: 'wss://pi:8443/edge/ws' },
    'a path prefix is kept',
  );
  t.same(fleetEndpoints({ url: 'ws://pi:8080/ws' }), { protocols: ['ws'], urls: { ws: 'ws://pi:8080/ws' } }, 'a /ws URL: ws devices');
  t.same(
    fleetEndpoints({ url: 'wss://pi:8080/mqtt' }),
    { protocols: ['mqtt-ws'], urls: { 'mqtt-ws': 'wss://pi:8080/mqtt' } },
    'else mqtt-ws',
  );

  const bad: Array<[string[], RegExp]> = [
    [['--protocol', 'amqp'], /--protocol takes mqtt, mqtt-ws, ws, coap or a comma-separated list of them, got "amqp"/],
    [['--protocol', 'mqtt,,ws'], /--protocol takes/],
    [['--url', 'ws://pi:8080/mqtt', '--protocol', 'mqtt,ws'], /--url ws:\/\/pi:8080\/mqtt is a WebSocket URL.*--http-url/],
    [['--url', 'ws://pi:8080/ws', '--http-url', 'ws://pi:8080'], /give --url or --http-url, not both/],
    [['--protocol', 'ws', '--http-url', 'ftp://pi'], /--http-url must be ws:\/\/, wss:\/\/, http:\/\/ or https:\/\//],
    [['--protocol', 'ws', '--http-url', 'ws://pi:8080/ws'], /\/mqtt and \/ws are added/],
    [['--http-url', 'ws://pi:8080'], /--http-url is where mqtt-ws and ws devices connect, and this fleet has none/],
    [['--protocol', 'ws', '--upgrade-token', 'header'], /give --token or --token-file/],
    [['--protocol', 'ws', '--token', token, '--upgrade-token', 'cookie'], /--upgrade-token must be header or query/],
    [['--token', token, '--upgrade-token', 'header'], /--upgrade-token is for WebSocket devices/],
    [['--protocol', 'ws', '--ca', SIM], /are for a TLS URL .* not ws:\/\/127\.0\.0\.1:8080\/ws/],
  ];
  for (const [args, message] of bad) t.throws(() => parseCliArgs(args), { name: 'UsageError', message }, args.join(' '));
});

t.test('with a proxy and a cloud', async (t) => {
  const dir = t.testdir();
  const { url: cloudUrl, up } = await cloudFor(t, dir);
  const proxy = await startProxy(dir, { uplink: { url: cloudUrl }, log: { level: 'info' } });
  t.teardown(() => proxy.stop());

  await t.test('a mixed fleet: every message of every device reaches the cloud once', async (t) => {
    const lines: string[] = [];
    const fleet = fleetOf(proxy, { protocols: ['mqtt', 'mqtt-ws', 'ws'], devices: 6, rate: 20, count: 15, prefix: 'mix-', seed: 5 }, lines);
    const summary = await fleet.done;
    t.match(summary, { devices: 6, sent: 90, acked: 90, failed: 0, reason: 'count', protocols: { mqtt: 2, 'mqtt-ws': 2, ws: 2 } });
    await eventually('90 envelopes at the cloud', () => envelopes(up, 'mix-').length >= 90);
    await sleep(300); // a duplicate would arrive right behind
    const got = envelopes(up, 'mix-');
    t.equal(got.length, 90, 'no duplicates');
    const protocolOf = ['mqtt', 'mqtt-ws', 'ws'];
    for (let n = 1; n <= 6; n++) {
      const id = `mix-000${n}`;
      const mine = got.filter((e) => e.deviceId === id);
      t.same(
        mine.map((e) => e.payload.seq).sort((a, b) => a! - b!),
        Array.from({ length: 15 }, (_, i) => i + 1),
        `${id} (${protocolOf[(n - 1) % 3]}): seq 1..15 exactly once`,
      );
      t.ok(
        mine.every((e) => e.topic === `devices/${id}/telemetry` && e.contentType === 'json' && e.payload.deviceId === id),
        `${id}: its own topic, JSON telemetry`,
      );
    }
    t.ok(lines.includes(`mix-0002 connected to ws://127.0.0.1:${proxy.ports.http}/mqtt`), 'device 2 on /mqtt');
    t.ok(lines.includes(`mix-0003 connected to ws://127.0.0.1:${proxy.ports.http}/ws`), 'device 3 on /ws');
    t.equal(await proxy.metric('edge_messages_received_total', 'protocol="ws"'), 30, 'the /ws devices: 30 messages of protocol ws');
    t.ok((await proxy.metric('edge_messages_received_total', 'protocol="mqtt"')) >= 60, 'the others: protocol mqtt');
  });

  await t.test('downlink commands from the cloud change what a /ws and a /mqtt device do', async (t) => {
    const lines: string[] = [];
    const fleet = fleetOf(proxy, { protocols: ['ws', 'mqtt-ws'], devices: 2, rate: 1, prefix: 'cmd-' }, lines);
    const cloud = await mqtt.connectAsync(cloudUrl, { clientId: 'cmd-sender', reconnectPeriod: 0 });
    t.teardown(async () => {
      await fleet.stop();
      await cloud.endAsync();
    });
    await fleet.ready;
    const [wsDevice, mqttWsDevice] = fleet.devices as [Fleet['devices'][number], Fleet['devices'][number]];
    t.equal(wsDevice.protocol, 'ws');
    t.equal(mqttWsDevice.protocol, 'mqtt-ws');
    // Subscriptions are made once a device connects; the commands must not race them.
    await sleep(500);
    const arrivedSince = (id: string, since: number): number => envelopes(up, id).filter((e) => e.payload.ts! >= since).length;
    const commands: DeviceCommand[] = [];
    fleet.on('command', (c) => commands.push(c));
    const send = async (id: string, command: string, payload: string): Promise<DeviceCommand> => {
      const before = commands.length;
      await cloud.publishAsync(`edge/test-edge/down/devices/${id}/cmd/${command}`, payload, { qos: 1 });
      return (await eventually(`${id} obeyed ${command}`, () => commands.slice(before).find((c) => c.deviceId === id)))!;
    };

    for (const device of [wsDevice, mqttWsDevice]) {
      const id = device.id;
      t.match(await send(id, 'rate', '{"rate": 25}'), { deviceId: id, command: 'rate', action: 'rate' }, `${device.protocol}: rate`);
      t.equal(device.currentRate, 25);
      const t0 = Date.now();
      await sleep(1500);
      const fast = arrivedSince(id, t0);
      t.ok(fast >= 20, `${device.protocol}: about 25 msg/s after cmd/rate (${fast} in 1.5 s)`);

      t.match(await send(id, 'pause', ''), { action: 'pause' }, `${device.protocol}: pause`);
      await sleep(300); // what was on the wire arrives
      const paused = device.stats().lastSeq;
      await sleep(1000);
      t.equal(device.stats().lastSeq, paused, `${device.protocol}: nothing sent while paused`);
      t.ok(device.isPaused);

      t.match(await send(id, 'resume', ''), { action: 'resume' }, `${device.protocol}: resume`);
      await eventually(`${id} publishes again`, () => device.stats().lastSeq > paused);
      t.match(await send(id, 'reboot', '{}'), { action: 'unknown' }, `${device.protocol}: an unknown command is ignored`);
    }
    t.ok(
      lines.some((l) => l.startsWith('cmd-0001 command rate') && l.includes('rate set to 25/s')),
      'the command is logged',
    );
    const summary = await fleet.stop();
    t.equal(summary.failed, 0, 'nothing failed');
    t.equal(summary.acked, summary.sent, 'everything sent was acknowledged');
  });
});

t.test('token mode: the token in CONNECT, in the header or the query of the upgrade', async (t) => {
  const dir = t.testdir();
  const devicesFile = join(dir, 'devices.yaml');
  const ids = ['tok-0001', 'tok-0002', 'tok-0003', 'tok-0004'];
  const tokens = writeRegistry(
    devicesFile,
    ids.map((id) => ({ id })),
  );
  const proxy = await startProxy(dir, { auth: { mode: 'token' }, devicesFile, log: { level: 'info' } });
  t.teardown(() => proxy.stop());

  for (const upgradeToken of [undefined, 'header', 'query'] as const) {
    const fleet = fleetOf(proxy, {
      protocols: ['mqtt', 'mqtt-ws', 'ws'],
      devices: 3,
      prefix: 'tok-',
      tokens,
      upgradeToken,
      rate: 50,
      count: 5,
      duration: 20,
    });
    const summary = await fleet.done;
    t.match(summary, { acked: 15, failed: 0 }, `token ${upgradeToken ?? 'by default'}: every device admitted, every message acknowledged`);
  }
  t.equal(await proxy.metric('edge_auth_failures_total'), 0, 'nobody was refused');
  t.equal(await proxy.metric('edge_messages_received_total', 'protocol="ws"'), 15, 'the /ws devices published as themselves');

  // A wrong token: refused at the upgrade, and told so.
  const lines: string[] = [];
  const wrong = { 'tok-0001': `tok-0001.${'A'.repeat(43)}` };
  const refused = fleetOf(proxy, { protocols: ['ws'], devices: 1, prefix: 'tok-', tokens: wrong, rate: 1 }, lines);
  t.teardown(() => refused.stop());
  await eventually('the refusal was logged', () => lines.find((l) => l.includes('tok-0001 error')));
  t.match(lines.join('\n'), /tok-0001 error: upgrade refused: HTTP 401 \(the proxy does not accept this token/);
  await refused.stop();
  t.ok((await proxy.metric('edge_auth_failures_total', 'protocol="ws"')) >= 1, 'counted under protocol ws');

  // The built simulator, as a user runs it: a mixed fleet from a token file.
  const tokenFile = join(dir, 'tokens.txt');
  writeFileSync(tokenFile, ids.map((id) => tokens[id]).join('\n') + '\n');
  const r = spawnSync(
    process.execPath,
    [
      SIM,
      ...['--url', `mqtt://127.0.0.1:${proxy.ports.mqtt}`, '--http-url', `ws://127.0.0.1:${proxy.ports.http}`],
      ...['--protocol', 'ws,mqtt-ws', '--devices', '4', '--prefix', 'tok-', '--token-file', tokenFile, '--upgrade-token', 'query'],
      ...['--rate', '20', '--count', '5', '--quiet'],
    ],
    { encoding: 'utf8', timeout: 30_000 },
  );
  t.equal(r.status, 0, r.stderr);
  t.match(JSON.parse(r.stdout.trim()) as unknown, { devices: 4, acked: 20, failed: 0, protocols: { ws: 2, 'mqtt-ws': 2 } }, 'the CLI run');
});
