// Rules in the running proxy, with real MQTT clients and a real Mosquitto as the cloud.
import t from 'tap';
import { mkdirSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { startMosquitto } from './helpers/mosquitto.js';
import { startProxy, CLI } from './helpers/proxy.js';
import { connectClient, collect } from './helpers/clients.js';
import { eventually, sleep } from './helpers/ports.js';

interface Envelope {
  id: string;
  topic: string;
  deviceId: string;
  payload: Record<string, unknown>;
}

const RULES = `
# alarms go up at once, first
rule hot priority 10
when msg.topic matches "devices/+/telemetry" and payload.temp > 40
then
  uplink(priority = "critical")
  publish("devices/" + msg.deviceId + "/cmd/fan", { on: true }, qos = 1)
end

rule no_debug
when msg.topic matches "devices/+/debug/#"
then drop()
end

# a transformed copy: only the fields the cloud needs
rule slim
when msg.topic matches "devices/+/raw"
then uplink(topic = "slim/" + msg.deviceId, payload = { t: payload.temp, seq: payload.seq })
end

rule trend
when msg.topic matches "devices/+/telemetry" and count(3) == 3 and avg(payload.temp, 3) > 30
then emit("warm", { device: msg.deviceId, avg: round(avg(payload.temp, 3), 1) })
end

rule fan_ack
when msg.topic matches "devices/+/cmd/fan"
then log("info", "fan command for " + msg.deviceId)
end
`;

t.test('rules filter, transform, drop, publish locally and use windows, through the running proxy', async (t) => {
  const dir = t.testdir();
  mkdirSync(join(dir, 'rules'), { recursive: true });
  writeFileSync(join(dir, 'rules', 'site.rules'), RULES);
  const cloud = await startMosquitto(`${dir}/cloud`);
  t.teardown(() => cloud.stop());
  const checker = await connectClient(cloud.port);
  t.teardown(() => checker.endAsync());
  const up = await collect(checker, 'edge/test-edge/up/#');
  const proxy = await startProxy(dir, { uplink: { url: cloud.url } });
  t.teardown(() => proxy.stop());
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);
  t.ok(
    proxy.logs.some((l) => l.msg === 'rules loaded' && l.rules === 5),
    'the rules directory is loaded at start',
  );

  const fan = await connectClient(proxy.ports.mqtt, { clientId: 'fan-7' });
  t.teardown(() => fan.endAsync());
  const commands = await collect(fan, 'devices/pump-7/cmd/#');
  const device = await connectClient(proxy.ports.mqtt, { clientId: 'pump-7' });
  t.teardown(() => device.endAsync());

  for (const temp of [20, 21, 35]) await device.publishAsync('devices/pump-7/telemetry', JSON.stringify({ temp }), { qos: 1 });
  await device.publishAsync('devices/pump-7/debug/trace', 'noise', { qos: 1 });
  await device.publishAsync('devices/pump-7/raw', JSON.stringify({ temp: 22.5, seq: 9, junk: 'x'.repeat(50) }), { qos: 1 });
  await device.publishAsync('devices/pump-7/telemetry', JSON.stringify({ temp: 41 }), { qos: 1 });

  await eventually('the fan command reached the local subscriber', () => commands.messages.length > 0);
  t.same(JSON.parse(commands.messages[0]!.payload.toString()), { on: true }, 'publish() reaches a local subscriber');
  await eventually(
    'everything up',
    () => up.messages.some((m) => m.topic.endsWith('events/warm')) && up.messages.filter((m) => m.topic.endsWith('/telemetry')).length >= 4,
    15_000,
  );
  await sleep(300);

  const topics = up.messages.map((m) => m.topic.replace('edge/test-edge/up/', ''));
  t.notOk(
    topics.some((x) => x.includes('debug')),
    'drop() kept the debug message from going up',
  );
  t.notOk(topics.includes('devices/pump-7/raw'), 'the raw message itself did not go up: a rule sent a copy instead');
  const slim = up.json<Envelope>().find((e) => e.topic === 'slim/pump-7');
  t.same(slim?.payload, { t: 22.5, seq: 9 }, 'the transformed copy went up with only the fields asked for');
  t.equal(slim?.deviceId, 'pump-7', 'a derived message keeps its device');
  const temps = up
    .json<Envelope>()
    .filter((e) => e.topic === 'devices/pump-7/telemetry')
    .map((e) => e.payload.temp);
  t.same(temps, [20, 21, 35, 41], 'telemetry went up by default routing, and the hot one by its rule');
  const warm = up
    .json<Envelope>()
    .filter((e) => e.topic === 'events/warm')
    .map((e) => e.payload);
  // avg of the last 3: (21+35+41)/3 = 32.3 on the 6th message; (20+21+35)/3 = 25.3 on the 3rd does not fire
  t.same(warm, [{ device: 'pump-7', avg: 32.3 }], 'a window across several messages');
  t.equal(await proxy.metric('edge_rules_fired_total', 'rule="hot"'), 1);
  t.equal(await proxy.metric('edge_rules_fired_total', 'rule="no_debug"'), 1);
  await eventually('the published command was itself evaluated by the rules', () =>
    proxy.logs.some((l) => l.rule === 'fan_ack' && l.msg === 'fan command for pump-7'),
  );
});

t.test('a ruleset with errors stops the start, every error listed with file:line:col', async (t) => {
  const dir = t.testdir();
  mkdirSync(join(dir, 'rules'), { recursive: true });
  writeFileSync(
    join(dir, 'rules', 'bad.rules'),
    'rule a\nwhen payload.t > 1\nthen uplnk()\nend\n\nrule b when avrg(payload.t, 5m) > 1 then drop() end\n',
  );
  writeFileSync(
    join(dir, 'edge-proxy.yaml'),
    `dataDir: ${join(dir, 'data')}\nrules: { dir: ${join(dir, 'rules')} }\nmqtt: { port: 0 }\ncoap: { port: 0 }\nhttp: { port: 0 }\nadmin: { port: 0 }\n`,
  );
  const r = spawnSync(process.execPath, [CLI, 'run', '--config', join(dir, 'edge-proxy.yaml')], { encoding: 'utf8', timeout: 20_000 });
  t.equal(r.status, 1, 'the proxy does not start');
  t.match(r.stderr, /bad\.rules:3:6: E_RULE_UNKNOWN_ACTION: unknown action "uplnk"; did you mean "uplink"\?/);
  t.match(r.stderr, /bad\.rules:6:13: E_RULE_UNKNOWN_FUNCTION: unknown function "avrg"; did you mean "avg"\?/);
  t.match(r.stderr, /\n {2}then uplnk\(\)\n {7}\^/, 'with the source line and a caret');
});

t.test('hostile input through rules: a deeply nested payload and a fan-out of publishes do not bring the proxy down', async (t) => {
  const dir = t.testdir();
  mkdirSync(join(dir, 'rules'), { recursive: true });
  writeFileSync(
    join(dir, 'rules', 'echo.rules'),
    `
rule echo
when msg.topic matches "devices/+/in"
then publish("devices/" + msg.deviceId + "/out", payload) uplink(payload = payload) log("info", payload)
end

rule fan_out
when msg.topic matches "loop/#"
then publish("loop/a", 1) publish("loop/b", 2) publish("loop/c", 3) publish("loop/d", 4) publish("loop/e", 5) publish("loop/f", 6) publish("loop/g", 7) publish("loop/h", 8)
end
`,
  );
  const proxy = await startProxy(dir, { limits: { maxHops: 16 } });
  t.teardown(() => proxy.stop());
  const device = await connectClient(proxy.ports.mqtt, { clientId: 'nasty' });
  t.teardown(() => device.endAsync());
  const deep = '['.repeat(100_000) + ']'.repeat(100_000);
  await device.publishAsync('devices/nasty/in', deep, { qos: 1 });
  await device.publishAsync('loop/start', '0', { qos: 1 });
  await sleep(1000);
  t.equal((await fetch(`http://127.0.0.1:${proxy.ports.admin}/healthz`)).status, 200, 'the proxy is still up');
  t.ok((await proxy.metric('edge_rule_errors_total', 'rule="echo"')) >= 1, "the payload too deep to re-encode is the rule's counted fault");
  t.ok((await proxy.metric('edge_messages_dropped_total', 'reason="derived_limit"')) >= 1, 'one message cannot fan out without bound');
  const made = await proxy.metric('edge_messages_received_total', 'protocol="internal"');
  t.ok(made <= 64, `at most 64 messages made from one (${made})`);
  await device.publishAsync('devices/nasty/in', '{"ok":1}', { qos: 1 });
  t.pass('and it still acknowledges the next message');
});
