// Deliveries between CoAP and the other ways in, every direction, each exactly once: CoAP → MQTT
// (MQTT.js), CoAP → /ws (`ws`), CoAP → the cloud, MQTT → CoAP, /ws → CoAP and cloud → CoAP (the
// downlink, edge/<id>/down/<topic>), CoAP → CoAP. The CoAP side receives by Observe (RFC 7641): one
// observer per exact topic, whose notifications carry the payload as it is with its
// Content-Format, and one on the filter `cross/#`, whose notifications carry the JSON
// {"topic","payload","ts"} (protocols.md). The proxy runs in open mode with a real Mosquitto as
// the cloud; every client is a real one on a real socket.
import t from 'tap';
import WebSocket from 'ws';
import mqtt from 'mqtt';
import { cloudFor } from './helpers/mosquitto.js';
import { startProxy } from './helpers/proxy.js';
import { collect, connectClient } from './helpers/clients.js';
import { eventually, sleep } from './helpers/ports.js';
import { CoapClient, OPT, coapPort, codeString, option, uintOf, type Decoded, type Observation } from './helpers/coap.js';

type Frame = { op: string; id?: string; topic?: string; payload?: unknown; contentType?: string } & Record<string, unknown>;

interface Envelope {
  topic: string;
  deviceId: string;
  payload: unknown;
}

/** Notifications after the registration's own response, once each (a retransmission has the message id of its original). */
function distinct(notes: Decoded[]): Decoded[] {
  const seen = new Set<number>();
  return notes.filter((n) => !seen.has(n.mid) && seen.add(n.mid));
}

t.test('CoAP, MQTT, /ws and the cloud deliver to each other exactly once', async (t) => {
  const dir = t.testdir();
  const { url: cloudUrl, up } = await cloudFor(t, dir);
  const proxy = await startProxy(dir, { uplink: { url: cloudUrl } });
  t.teardown(() => proxy.stop());
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);
  const port = coapPort(proxy);

  // The receivers, all in place before anything is published.
  const observer = await CoapClient.open(port);
  t.teardown(() => observer.close());
  const exact = new Map<string, Observation>();
  for (const topic of ['cross/mqtt-to-coap', 'cross/ws-to-coap', 'cross/cloud-to-coap', 'cross/coap-to-coap']) {
    const o = await observer.observe(`ps/${topic}?d=observer`);
    exact.set(topic, o);
  }
  const wild = await observer.observe('ps/cross/#?d=observer');
  for (const [topic, o] of [...exact.entries(), ['cross/#', wild] as const]) {
    t.equal(codeString(o.first.response.code), '2.05', `observing ${topic}`);
    t.ok(option(o.first.response, OPT.observe) !== undefined, `${topic}: the registration holds (an Observe option in the response)`);
  }
  const mqttSub = await connectClient(proxy.ports.mqtt, { clientId: 'cross-sub' });
  t.teardown(() => mqttSub.endAsync());
  const atMqtt = await collect(mqttSub, 'cross/#');
  const ws = new WebSocket(`ws://127.0.0.1:${(proxy.ports as Record<string, number>).http}/ws`);
  t.teardown(() => ws.terminate());
  const frames: Frame[] = [];
  ws.on('message', (d: Buffer) => frames.push(JSON.parse(d.toString('utf8')) as Frame));
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  ws.send(JSON.stringify({ op: 'sub', topic: 'cross/#', id: 's1' }));
  await eventually('the /ws subscription', () => frames.some((f) => f.op === 'ack' && f.id === 's1'));

  // The senders.
  const device = await CoapClient.open(port);
  t.teardown(() => device.close());
  const coapPub = await device.request({
    code: 'POST',
    path: 'ps/cross/coap?d=c-dev',
    options: [{ number: OPT.contentFormat, value: Buffer.from([50]) }],
    payload: '{"from":"coap"}',
  });
  t.equal(codeString(coapPub.response.code), '2.04', 'CoAP publish answered 2.04');
  const coapToCoap = await device.request({ code: 'PUT', path: 'ps/cross/coap-to-coap?d=c-dev', payload: 'from coap' });
  t.equal(codeString(coapToCoap.response.code), '2.04');
  const mqttPub = await connectClient(proxy.ports.mqtt, { clientId: 'cross-pub' });
  t.teardown(() => mqttPub.endAsync());
  await mqttPub.publishAsync('cross/mqtt-to-coap', '{"from":"mqtt"}', { qos: 1 });
  ws.send(JSON.stringify({ op: 'pub', topic: 'cross/ws-to-coap', payload: { from: 'ws' }, qos: 1, id: 'p1' }));
  await eventually('the /ws publish acknowledged', () => frames.some((f) => f.op === 'ack' && f.id === 'p1'));
  const cloud = await mqtt.connectAsync(cloudUrl, { reconnectPeriod: 0 });
  t.teardown(() => cloud.endAsync());
  await cloud.publishAsync('edge/test-edge/down/cross/cloud-to-coap', 'from the cloud', { qos: 1 });

  // Everything arrives...
  const expected: Array<[string, string, string]> = [
    ['cross/mqtt-to-coap', '{"from":"mqtt"}', 'MQTT → CoAP'],
    ['cross/ws-to-coap', '{"from":"ws"}', '/ws → CoAP'],
    ['cross/cloud-to-coap', 'from the cloud', 'cloud → CoAP'],
    ['cross/coap-to-coap', 'from coap', 'CoAP → CoAP'],
  ];
  await eventually(
    'every notification',
    () => expected.every(([topic]) => exact.get(topic)!.notifications.length >= 1) && distinct(wild.notifications).length >= 5,
    10_000,
  ).catch(() => {});
  await eventually(
    'CoAP → MQTT and /ws',
    () => atMqtt.messages.some((m) => m.topic === 'cross/coap') && frames.some((f) => f.op === 'msg' && f.topic === 'cross/coap'),
  ).catch(() => {});
  await eventually('CoAP → the cloud', () => up.json<Envelope>().some((e) => e.topic === 'cross/coap')).catch(() => {});
  await sleep(1_000); // ...and nothing twice: a duplicate would come now

  for (const [topic, payload, what] of expected) {
    const notes = distinct(exact.get(topic)!.notifications);
    t.equal(notes.length, 1, `${what}: one notification`);
    const n = notes[0];
    if (!n) continue;
    t.equal(n.payload.toString(), payload, `${what}: the payload as it is`);
    t.equal(codeString(n.code), '2.05', `${what}: 2.05`);
    const seq = option(n, OPT.observe);
    const first = option(exact.get(topic)!.first.response, OPT.observe);
    t.ok(
      seq !== undefined && first !== undefined && uintOf(seq) > uintOf(first),
      `${what}: a newer Observe sequence number than the registration's`,
    );
    const cf = option(n, OPT.contentFormat);
    t.equal(cf === undefined ? 0 : uintOf(cf), payload.startsWith('{') ? 50 : 0, `${what}: the Content-Format of the message`);
  }
  // The filter's observer: all five messages once each, as {"topic","payload","ts"}.
  const wrapped = distinct(wild.notifications).map(
    (n) => JSON.parse(n.payload.toString()) as { topic: string; payload: unknown; ts: number },
  );
  t.same(
    wrapped.map((w) => w.topic).sort(),
    ['cross/cloud-to-coap', 'cross/coap', 'cross/coap-to-coap', 'cross/mqtt-to-coap', 'cross/ws-to-coap'],
    'the cross/# observer: each message once',
  );
  t.match(
    wrapped.find((w) => w.topic === 'cross/coap'),
    { payload: { from: 'coap' }, ts: Number },
    'the JSON of a filter notification',
  );

  // CoAP → MQTT, /ws and the cloud.
  const mqttGot = atMqtt.messages.filter((m) => m.topic === 'cross/coap');
  t.equal(mqttGot.length, 1, 'CoAP → MQTT: once');
  t.equal(mqttGot[0]?.payload.toString(), '{"from":"coap"}');
  const wsGot = frames.filter((f) => f.op === 'msg' && f.topic === 'cross/coap');
  t.equal(wsGot.length, 1, 'CoAP → /ws: once');
  t.match(wsGot[0], { payload: { from: 'coap' }, contentType: 'json' });
  const cloudGot = up.json<Envelope>().filter((e) => e.topic === 'cross/coap');
  t.equal(cloudGot.length, 1, 'CoAP → the cloud: once');
  t.match(cloudGot[0], { deviceId: 'c-dev', payload: { from: 'coap' } });
  // The other ways, seen by MQTT and /ws too: once each (local delivery fans out once per message).
  for (const topic of ['cross/mqtt-to-coap', 'cross/ws-to-coap', 'cross/cloud-to-coap', 'cross/coap-to-coap']) {
    t.equal(atMqtt.messages.filter((m) => m.topic === topic).length, 1, `${topic} at the MQTT subscriber once`);
    t.equal(frames.filter((f) => f.op === 'msg' && f.topic === topic).length, 1, `${topic} at the /ws subscriber once`);
  }

  // Deregistration (RFC 7641 §3.6): nothing more after Observe 1.
  const cancelled = await exact.get('cross/mqtt-to-coap')!.cancel();
  // Answered as a plain GET: 4.04 here, as nothing was retained on that topic.
  t.ok(
    ['2.05', '4.04'].includes(codeString(cancelled.response.code)),
    `a GET with Observe 1 is answered (${codeString(cancelled.response.code)})`,
  );
  t.equal(option(cancelled.response, OPT.observe), undefined, '... without an Observe option: no longer registered');
  const before = exact.get('cross/mqtt-to-coap')!.notifications.length;
  await mqttPub.publishAsync('cross/mqtt-to-coap', '{"from":"mqtt","again":true}', { qos: 1 });
  await eventually(
    'the message at the MQTT subscriber',
    () => atMqtt.messages.filter((m) => m.topic === 'cross/mqtt-to-coap').length === 2,
  );
  await sleep(500);
  t.equal(exact.get('cross/mqtt-to-coap')!.notifications.length, before, 'no notification after the deregistration');
});
