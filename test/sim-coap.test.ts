// The simulator's CoAP devices (--protocol coap) against the built proxy as a real process, with a
// real Mosquitto as the cloud: a fleet mixing CoAP with MQTT and /ws whose every message arrives
// once, non-confirmable publishes for --qos 0, payloads over 1024 bytes sent block-wise, downlink
// commands from the cloud reaching a CoAP device through its observation, token mode (k= on every
// request, a wrong token told as such, the built CLI from a token file), and the options.
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { parseCliArgs } from '../firmware-sim/cli.js';
import { fleetEndpoints } from '../firmware-sim/fleet.js';
import type { DeviceCommand } from '../firmware-sim/device.js';
import { cloudFor } from './helpers/mosquitto.js';
import { coapPort } from './helpers/coap.js';
import { fleetOf } from './helpers/fleet.js';
import { startProxy } from './helpers/proxy.js';
import { eventually, sleep } from './helpers/ports.js';
import { writeRegistry } from './helpers/registry.js';
import type { Collected } from './helpers/clients.js';

const SIM = new URL('../dist/firmware-sim/cli.js', import.meta.url).pathname;

interface Envelope {
  deviceId: string;
  topic: string;
  contentType: string;
  payload: { deviceId?: string; seq?: number; ts?: number; pad?: string };
}

/** The telemetry envelopes the cloud received from devices whose id starts with `prefix`. */
function envelopes(up: Collected, prefix: string): Envelope[] {
  return up.messages
    .map((m) => JSON.parse(m.payload.toString()) as Envelope)
    .filter((e) => e.deviceId.startsWith(prefix) && e.topic.endsWith('/telemetry'));
}

/** Each device's seq numbers, sorted, against 1..count. */
function checkSeqs(t: Test, got: Envelope[], ids: string[], count: number, label: (id: string) => string): void {
  for (const id of ids) {
    t.same(
      got
        .filter((e) => e.deviceId === id)
        .map((e) => e.payload.seq)
        .sort((a, b) => a! - b!),
      Array.from({ length: count }, (_, i) => i + 1),
      `${label(id)}: seq 1..${count} exactly once`,
    );
  }
}

t.test('options: --protocol coap, --coap-url, --payload-bytes', async (t) => {
  t.match(parseCliArgs(['--protocol', 'coap']), { options: { protocols: ['coap'] } });
  t.match(parseCliArgs(['--protocol', 'mqtt,coap', '--coap-url', 'coap://pi:5684']), {
    options: { protocols: ['mqtt', 'coap'], coapUrl: 'coap://pi:5684' },
  });
  t.match(parseCliArgs(['--protocol', 'coap', '--payload-bytes', '3000', '--qos', '0']), { options: { payloadBytes: 3000, qos: 0 } });

  t.same(
    fleetEndpoints({ url: 'mqtt://pi.local:1883', protocols: ['mqtt', 'coap', 'ws'] }),
    {
      protocols: ['mqtt', 'coap', 'ws'],
      urls: { mqtt: 'mqtt://pi.local:1883', coap: 'coap://pi.local:5683', ws: 'ws://pi.local:8080/ws' },
    },
    "the CoAP endpoint defaults to port 5683 on --url's host",
  );
  t.same(fleetEndpoints({ protocols: ['coap'], coapUrl: 'coap://[::1]:5690' }).urls, { coap: 'coap://[::1]:5690' }, 'IPv6');
  t.same(fleetEndpoints({ protocols: ['coap'], coapUrl: 'coap://pi' }).urls, { coap: 'coap://pi:5683' }, 'the port defaults to 5683');

  const token = `sim-0001.${'A'.repeat(43)}`;
  const bad: Array<[string[], RegExp]> = [
    [['--protocol', 'coaps'], /--protocol takes mqtt, mqtt-ws, ws, coap or a comma-separated list of them, got "coaps"/],
    [['--protocol', 'coap', '--coap-url', 'coaps://pi:5684'], /coaps:\/\/ \(DTLS\) is not supported/],
    [['--protocol', 'coap', '--coap-url', 'http://pi:5683'], /--coap-url must be coap:\/\/host:port/],
    [['--protocol', 'coap', '--coap-url', 'coap://pi:5683/ps/x'], /--coap-url is the endpoint alone/],
    [['--protocol', 'coap', '--coap-url', 'coap://pi:5683?d=x'], /--coap-url is the endpoint alone/],
    [['--coap-url', 'coap://pi:5683'], /--coap-url is where coap devices send their requests, and this fleet has none/],
    [['--url', 'coap://pi:5683'], /--url must use mqtt:\/\/.*\(the CoAP endpoint is --coap-url/],
    [['--url', 'ws://pi:8080/ws', '--protocol', 'coap'], /is a WebSocket URL/],
    [['--protocol', 'coap', '--http-url', 'ws://pi:8080'], /--http-url is where mqtt-ws and ws devices connect, and this fleet has none/],
    [
      ['--protocol', 'coap', '--token', token, '--upgrade-token', 'query'],
      /--upgrade-token is for WebSocket devices.*coap devices in every request/,
    ],
    [['--protocol', 'coap', '--ca', SIM], /are for a TLS URL .* not coap:\/\/127\.0\.0\.1:5683/],
    [['--payload-bytes', '0'], /--payload-bytes must be a positive integer/],
  ];
  for (const [args, message] of bad) t.throws(() => parseCliArgs(args), { name: 'UsageError', message }, args.join(' '));
});

t.test('with a proxy and a cloud', async (t) => {
  const dir = t.testdir();
  const { url: cloudUrl, up } = await cloudFor(t, dir);
  const proxy = await startProxy(dir, { uplink: { url: cloudUrl }, log: { level: 'info' } });
  t.teardown(() => proxy.stop());

  await t.test('a fleet mixing coap, mqtt and ws: every message of every device reaches the cloud once', async (t) => {
    const lines: string[] = [];
    const fleet = fleetOf(proxy, { protocols: ['coap', 'mqtt', 'ws'], devices: 6, rate: 20, count: 15, prefix: 'mix-', seed: 7 }, lines);
    const summary = await fleet.done;
    t.match(summary, { devices: 6, sent: 90, acked: 90, failed: 0, reason: 'count', protocols: { coap: 2, mqtt: 2, ws: 2 } });
    await eventually('90 envelopes at the cloud', () => envelopes(up, 'mix-').length >= 90);
    await sleep(300); // a duplicate would arrive right behind
    const got = envelopes(up, 'mix-');
    t.equal(got.length, 90, 'no duplicates');
    const ids = Array.from({ length: 6 }, (_, i) => `mix-000${i + 1}`);
    checkSeqs(t, got, ids, 15, (id) => `${id} (${['coap', 'mqtt', 'ws'][(Number(id.slice(-1)) - 1) % 3]})`);
    for (const id of ['mix-0001', 'mix-0004']) {
      t.ok(
        got.filter((e) => e.deviceId === id).every((e) => e.topic === `devices/${id}/telemetry` && e.contentType === 'json'),
        `${id}: its own topic, JSON (Content-Format 50)`,
      );
    }
    t.ok(lines.includes(`mix-0001 connected to coap://127.0.0.1:${coapPort(proxy)}`), 'device 1 on CoAP');
    t.equal(await proxy.metric('edge_messages_received_total', 'protocol="coap"'), 30, 'the coap devices: 30 messages of protocol coap');
  });

  await t.test('--qos 0: non-confirmable publishes', async (t) => {
    const fleet = fleetOf(proxy, { protocols: ['coap'], devices: 2, rate: 20, count: 10, qos: 0, prefix: 'non-' });
    const before = await proxy.metric('edge_messages_received_total', 'protocol="coap"');
    t.match(await fleet.done, { sent: 20, acked: 20, failed: 0, qos: 0 }, 'each settled once sent');
    await eventually('20 envelopes at the cloud', () => envelopes(up, 'non-').length >= 20);
    checkSeqs(t, envelopes(up, 'non-'), ['non-0001', 'non-0002'], 10, (id) => id);
    t.equal(await proxy.metric('edge_messages_received_total', 'protocol="coap"'), before + 20, 'received over CoAP');
    t.equal(await proxy.metric('edge_coap_exchanges_total', 'event="duplicate"'), 0, 'nothing was sent twice');
  });

  await t.test('a payload over 1024 bytes goes block-wise and arrives whole', async (t) => {
    const completed = await proxy.metric('edge_coap_block_uploads_total', 'event="completed"');
    const fleet = fleetOf(proxy, { protocols: ['coap'], devices: 2, rate: 10, count: 4, payloadBytes: 3000, prefix: 'big-' });
    t.match(await fleet.done, { sent: 8, acked: 8, failed: 0 });
    await eventually('8 envelopes at the cloud', () => envelopes(up, 'big-').length >= 8);
    const got = envelopes(up, 'big-');
    checkSeqs(t, got, ['big-0001', 'big-0002'], 4, (id) => id);
    for (const e of got) t.equal(Buffer.byteLength(JSON.stringify(e.payload)), 3000, `${e.deviceId} seq ${e.payload.seq}: all 3000 bytes`);
    t.equal(
      await proxy.metric('edge_coap_block_uploads_total', 'event="completed"'),
      completed + 8,
      'each one reassembled from its blocks (Block1)',
    );
  });

  await t.test('downlink commands from the cloud reach a coap device through its observation', async (t) => {
    const lines: string[] = [];
    const registered = await proxy.metric('edge_coap_observations_total', 'event="registered"');
    const fleet = fleetOf(proxy, { protocols: ['coap'], devices: 1, rate: 1, prefix: 'cmd-' }, lines);
    const cloud = await mqtt.connectAsync(cloudUrl, { clientId: 'cmd-sender', reconnectPeriod: 0 });
    t.teardown(async () => {
      await fleet.stop();
      await cloud.endAsync();
    });
    await fleet.ready;
    const device = fleet.devices[0]!;
    t.equal(device.protocol, 'coap');
    await eventually(
      'the observation is registered',
      async () => (await proxy.metric('edge_coap_observations_total', 'event="registered"')) > registered,
    );
    t.notOk(
      lines.some((l) => l.includes('cmd-0001 error')),
      'no complaint about the observation',
    );
    const arrivedSince = (since: number): number => envelopes(up, 'cmd-').filter((e) => e.payload.ts! >= since).length;
    const commands: DeviceCommand[] = [];
    fleet.on('command', (c) => commands.push(c));
    const send = async (command: string, payload: string): Promise<DeviceCommand> => {
      const before = commands.length;
      await cloud.publishAsync(`edge/test-edge/down/devices/cmd-0001/cmd/${command}`, payload, { qos: 1 });
      return (await eventually(`cmd-0001 obeyed ${command}`, () => commands.slice(before).find((c) => c.deviceId === 'cmd-0001')))!;
    };

    t.match(await send('rate', '{"rate": 25}'), { deviceId: 'cmd-0001', command: 'rate', action: 'rate' }, 'rate');
    t.equal(device.currentRate, 25);
    const t0 = Date.now();
    await sleep(1500);
    const fast = arrivedSince(t0);
    t.ok(fast >= 20, `about 25 msg/s after cmd/rate (${fast} in 1.5 s)`);

    t.match(await send('pause', ''), { action: 'pause' }, 'pause');
    await sleep(300); // what was on the wire arrives
    const paused = device.stats().lastSeq;
    await sleep(1000);
    t.equal(device.stats().lastSeq, paused, 'nothing sent while paused');

    t.match(await send('resume', ''), { action: 'resume' }, 'resume');
    await eventually('cmd-0001 publishes again', () => device.stats().lastSeq > paused);
    t.match(await send('reboot', '{}'), { action: 'unknown' }, 'an unknown command is ignored');
    t.ok(
      lines.some((l) => l.startsWith('cmd-0001 command rate') && l.includes('rate set to 25/s')),
      'the command is logged',
    );
    const summary = await fleet.stop();
    t.equal(summary.failed, 0, 'nothing failed');
    t.equal(summary.acked, summary.sent, 'everything sent was acknowledged');
  });
});

t.test('token mode: k= on every request', async (t) => {
  const dir = t.testdir();
  const devicesFile = join(dir, 'devices.yaml');
  const ids = ['tok-0001', 'tok-0002', 'tok-0003', 'tok-0004'];
  const tokens = writeRegistry(
    devicesFile,
    ids.map((id) => ({ id })),
  );
  const { url: cloudUrl, up } = await cloudFor(t, dir);
  const proxy = await startProxy(dir, { auth: { mode: 'token' }, devicesFile, uplink: { url: cloudUrl }, log: { level: 'info' } });
  t.teardown(() => proxy.stop());

  const fleet = fleetOf(proxy, { protocols: ['coap', 'mqtt'], devices: 4, prefix: 'tok-', tokens, rate: 50, count: 5, duration: 20 });
  t.match(await fleet.done, { acked: 20, failed: 0 }, 'every device admitted, every message acknowledged');
  t.equal(await proxy.metric('edge_auth_failures_total'), 0, 'nobody was refused');
  t.equal(await proxy.metric('edge_messages_received_total', 'protocol="coap"'), 10, 'the coap devices published as themselves');
  await eventually('20 envelopes at the cloud', () => envelopes(up, 'tok-').length >= 20);
  t.same([...new Set(envelopes(up, 'tok-').map((e) => e.deviceId))].sort(), ids, 'each under its own id');

  // A wrong token: each publish refused 4.01, and the user told what to do.
  const lines: string[] = [];
  const wrong = { 'tok-0001': `tok-0001.${'A'.repeat(43)}` };
  const refused = fleetOf(proxy, { protocols: ['coap'], devices: 1, prefix: 'tok-', tokens: wrong, rate: 5 }, lines);
  t.teardown(() => refused.stop());
  await eventually('the refusal was logged', () => lines.find((l) => l.includes('tok-0001 error: publish refused')));
  t.match(lines.join('\n'), /tok-0001 error: publish refused: 4\.01 .*\(the proxy does not accept this token/);
  const summary = await refused.stop();
  t.ok(summary.failed >= 1 && summary.acked === 0, `nothing acknowledged, ${summary.failed} refused`);
  t.ok((await proxy.metric('edge_auth_failures_total', 'protocol="coap"')) >= 1, 'counted under protocol coap');

  // The built simulator, as a user runs it: a mixed fleet from a token file.
  const tokenFile = join(dir, 'tokens.txt');
  writeFileSync(tokenFile, ids.map((id) => tokens[id]).join('\n') + '\n');
  const r = spawnSync(
    process.execPath,
    [
      SIM,
      ...['--url', `mqtt://127.0.0.1:${proxy.ports.mqtt}`, '--coap-url', `coap://127.0.0.1:${coapPort(proxy)}`],
      ...['--protocol', 'coap,mqtt', '--devices', '4', '--prefix', 'tok-', '--token-file', tokenFile],
      ...['--rate', '20', '--count', '5', '--quiet'],
    ],
    { encoding: 'utf8', timeout: 30_000 },
  );
  t.equal(r.status, 0, r.stderr);
  t.match(JSON.parse(r.stdout.trim()) as unknown, { devices: 4, acked: 20, failed: 0, protocols: { coap: 2, mqtt: 2 } }, 'the CLI run');
});
