// node-coap's own client (`coap.request`) against the proxy in token mode, as a Node.js device
// would use it: a confirmable publish answered 2.04 and at the cloud Mosquitto, a non-confirmable
// one, a GET of a message retained over MQTT (MQTT.js), 4.01 without a token, 4.03 outside the
// device's filters, /.well-known/core, and an Observe registration that receives a message
// published over MQTT. Each client has an agent (a UDP socket) of its own.
import t from 'tap';
import { join } from 'node:path';
import * as coap from 'coap';
import { cloudFor } from './helpers/mosquitto.js';
import { startProxy } from './helpers/proxy.js';
import { connectClient } from './helpers/clients.js';
import { eventually } from './helpers/ports.js';
import { writeRegistry } from './helpers/registry.js';
import { coapPort } from './helpers/coap.js';

interface Answer {
  code: string;
  payload: Buffer;
  format: unknown;
  res: coap.IncomingMessage;
}

interface Envelope {
  topic: string;
  deviceId: string;
  contentType: string;
  payload: unknown;
}

t.test('node-coap client, token mode', async (t) => {
  const dir = t.testdir();
  const { url: cloudUrl, up } = await cloudFor(t, dir);
  const devicesFile = join(dir, 'devices.yaml');
  const tokens = writeRegistry(devicesFile, [{ id: 'nc-1' }, { id: 'ops', publish: ['devices/#'], subscribe: ['devices/#'] }]);
  const proxy = await startProxy(dir, { auth: { mode: 'token' }, devicesFile, uplink: { url: cloudUrl } });
  t.teardown(() => proxy.stop());
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);
  const port = coapPort(proxy);
  const agents: coap.Agent[] = [];
  t.teardown(() => agents.forEach((a) => a.close()));
  const auth = `d=nc-1&k=${tokens['nc-1']!}`;

  /** One request with node-coap on an agent of its own; resolves with the (first) response. */
  const request = (params: coap.CoapRequestParams, payload?: string): Promise<Answer> => {
    const agent = new coap.Agent({ type: 'udp4' });
    agents.push(agent);
    return new Promise((resolve, reject) => {
      const req = coap.request({ hostname: '127.0.0.1', port, agent, ...params });
      req.on('response', (res: coap.IncomingMessage) =>
        resolve({ code: res.code, payload: res.payload, format: res.headers['Content-Format'], res }),
      );
      req.on('timeout', reject);
      req.on('error', reject);
      req.end(payload);
    });
  };
  const atCloud = (topic: string): Promise<Envelope> =>
    eventually(`${topic} at the cloud`, () => up.json<Envelope>().find((e) => e.topic === topic)) as Promise<Envelope>;

  await t.test('a confirmable publish is answered 2.04 and reaches the cloud', async (t) => {
    const a = await request(
      { method: 'POST', pathname: '/ps/devices/nc-1/telemetry', query: auth, options: { 'Content-Format': 'application/json' } },
      '{"temp":20.5}',
    );
    t.equal(a.code, '2.04');
    t.match(a.res._packet, { ack: true }, 'piggybacked on the ACK');
    t.match(await atCloud('devices/nc-1/telemetry'), { deviceId: 'nc-1', contentType: 'json', payload: { temp: 20.5 } });
  });

  await t.test('a non-confirmable publish gets a NON 2.04 and reaches the cloud', async (t) => {
    const a = await request({ method: 'PUT', pathname: '/ps/devices/nc-1/non', query: auth, confirmable: false }, 'plain text');
    t.equal(a.code, '2.04');
    t.match(a.res._packet, { confirmable: false, ack: false }, 'a non-confirmable response');
    t.match(await atCloud('devices/nc-1/non'), { deviceId: 'nc-1', contentType: 'text', payload: 'plain text' });
  });

  await t.test('a GET reads a message retained over MQTT', async (t) => {
    const mqtt = await connectClient(proxy.ports.mqtt, { username: 'ops', password: tokens.ops! });
    t.teardown(() => mqtt.endAsync());
    await mqtt.publishAsync('devices/nc-1/config', '{"mode":"eco"}', { qos: 1, retain: true });
    const a = await eventually('the retained message over CoAP', async () => {
      const r = await request({ method: 'GET', pathname: '/ps/devices/nc-1/config', query: auth });
      return r.code === '2.05' ? r : null;
    });
    t.equal(a!.payload.toString(), '{"mode":"eco"}');
    t.equal(a!.format, 'application/json', 'with its Content-Format');
    const none = await request({ method: 'GET', pathname: '/ps/devices/nc-1/nothing', query: auth });
    t.equal(none.code, '4.04', 'nothing retained: 4.04');
  });

  await t.test('4.01 without a token, 4.01 with a wrong one', async (t) => {
    const fail0 = await proxy.metric('edge_auth_failures_total', 'protocol="coap"');
    const none = await request({ method: 'POST', pathname: '/ps/devices/nc-1/telemetry', query: 'd=nc-1' }, '1');
    t.equal(none.code, '4.01');
    t.ok(none.payload.length > 0, `a diagnostic: ${none.payload.toString()}`);
    const wrong = await request({ method: 'POST', pathname: '/ps/devices/nc-1/telemetry', query: 'd=nc-1&k=nc-1.wrong' }, '1');
    t.equal(wrong.code, '4.01');
    t.equal(await proxy.metric('edge_auth_failures_total', 'protocol="coap"'), fail0 + 2, 'both counted');
  });

  await t.test('4.03 outside the device filters, for a publish and a GET', async (t) => {
    const pub = await request({ method: 'POST', pathname: '/ps/devices/other/telemetry', query: auth }, '1');
    t.equal(pub.code, '4.03');
    const get = await request({ method: 'GET', pathname: '/ps/devices/other/state', query: auth });
    t.equal(get.code, '4.03');
  });

  await t.test('/.well-known/core', async (t) => {
    const a = await request({ method: 'GET', pathname: '/.well-known/core' });
    t.equal(a.code, '2.05');
    t.equal(a.format, 'application/link-format');
    t.match(a.payload.toString(), /<\/ps>;rt="core\.ps"/);
  });

  await t.test('Observe: a message published over MQTT arrives as a notification', async (t) => {
    const agent = new coap.Agent({ type: 'udp4' });
    agents.push(agent);
    const notes: Buffer[] = [];
    const req = coap.request({
      hostname: '127.0.0.1',
      port,
      agent,
      method: 'GET',
      pathname: '/ps/devices/nc-1/cmd',
      query: auth,
      observe: true,
    });
    const res = await new Promise<coap.IncomingMessage>((resolve, reject) => {
      req.on('response', resolve);
      req.on('error', reject);
      req.end();
    });
    t.teardown(() => (res as coap.ObserveReadStream).close());
    t.equal(res.code, '2.05', 'registered');
    t.ok(res.headers.Observe !== undefined, 'the response carries an Observe option: the registration holds');
    res.on('data', (chunk: Buffer) => notes.push(chunk));
    const mqtt = await connectClient(proxy.ports.mqtt, { username: 'ops', password: tokens.ops! });
    t.teardown(() => mqtt.endAsync());
    await mqtt.publishAsync('devices/nc-1/cmd', '{"led":"on"}', { qos: 1 });
    await eventually('the notification', () => notes.some((n) => n.toString() === '{"led":"on"}'), 10_000);
    await mqtt.publishAsync('devices/nc-1/cmd', '{"led":"off"}', { qos: 0 });
    await eventually('the second notification', () => notes.some((n) => n.toString() === '{"led":"off"}'), 10_000);
    t.equal(notes.filter((n) => n.toString() === '{"led":"on"}').length, 1, 'each message notified once');
  });
});
