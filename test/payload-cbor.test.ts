// CBOR payloads read by rules as JSON ones are: a CBOR publish from libcoap's coap-client-notls
// (Content-Format 60) and from a /ws device (contentType "cbor"), through the running proxy, to a
// cloud Mosquitto; and the mapping of what CBOR has beyond JSON, on the decoder itself.
import t from 'tap';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { encode, Tag } from 'cbor2';
import WebSocket from 'ws';
import { cloudFor } from './helpers/mosquitto.js';
import { startProxy } from './helpers/proxy.js';
import { runTool } from './helpers/clients.js';
import { eventually } from './helpers/ports.js';
import { decodePayload } from '../src/rules/payload.js';

const COAP_CLIENT = '/usr/bin/coap-client-notls';

const RULES = `
rule hot_cbor
when msg.topic matches "devices/+/telemetry" and payload.temp > 40
then uplink(topic = "hot/" + msg.deviceId, payload = { t: payload.temp, where: payload.site.name, first: payload.readings[0] })
end
`;

interface Envelope {
  topic: string;
  deviceId: string;
  payload: unknown;
}

t.test('rules read CBOR payloads as they read JSON', async (t) => {
  const dir = t.testdir();
  mkdirSync(join(dir, 'rules'), { recursive: true });
  writeFileSync(join(dir, 'rules', 'site.rules'), RULES);
  const { url, up } = await cloudFor(t, dir);
  const proxy = await startProxy(dir, { uplink: { url } });
  t.teardown(() => proxy.stop());
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);
  const atCloud = (topic: string): Promise<Envelope> =>
    eventually(`${topic} at the cloud`, () => up.json<Envelope>().find((e) => e.topic === topic)) as Promise<Envelope>;
  const body = { temp: 41.5, site: { name: 'hall 3' }, readings: [7, 8] };

  await t.test('over CoAP, Content-Format 60', async (t) => {
    const file = join(dir, 'reading.cbor');
    writeFileSync(file, encode(body));
    const port = (proxy.ports as Record<string, number>).coap!;
    const r = await runTool(COAP_CLIENT, ['-m', 'post', '-t', '60', '-f', file, `coap://127.0.0.1:${port}/ps/devices/c9/telemetry?d=c9`]);
    t.equal(r.code, 0, r.stderr);
    t.same((await atCloud('hot/c9')).payload, { t: 41.5, where: 'hall 3', first: 7 }, 'the rule read fields of the CBOR map');
  });

  await t.test('over /ws, contentType "cbor" in base64', async (t) => {
    const ws = new WebSocket(`ws://127.0.0.1:${proxy.ports.http}/ws?d=w9`);
    t.teardown(() => ws.close());
    await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
    const acked = new Promise<unknown>((resolve) => ws.on('message', (d: Buffer) => resolve(JSON.parse(d.toString('utf8')))));
    const payload = Buffer.from(encode({ ...body, temp: 50 })).toString('base64');
    ws.send(
      JSON.stringify({ op: 'pub', id: 'c-1', qos: 1, topic: 'devices/w9/telemetry', payload, contentType: 'cbor', encoding: 'base64' }),
    );
    t.same(await acked, { op: 'ack', id: 'c-1' });
    t.same((await atCloud('hot/w9')).payload, { t: 50, where: 'hall 3', first: 7 });
  });

  await t.test('a payload that is not CBOR reads as null and is counted', async (t) => {
    const port = (proxy.ports as Record<string, number>).coap!;
    const before = (await proxy.metric('edge_payload_decode_errors_total')) ?? 0;
    const r = await runTool(COAP_CLIENT, [
      '-m',
      'post',
      '-t',
      '60',
      '-e',
      '\u00ff\u00ff',
      `coap://127.0.0.1:${port}/ps/devices/c8/telemetry?d=c8`,
    ]);
    t.equal(r.code, 0, r.stderr);
    await eventually('counted', async () => ((await proxy.metric('edge_payload_decode_errors_total')) ?? 0) > before);
  });
});

t.test('what CBOR has beyond JSON reads as the nearest JSON value', async (t) => {
  const value = (x: unknown) => {
    const d = decodePayload('cbor', Buffer.from(encode(x)));
    return d.ok ? d.value : 'undecodable';
  };
  t.same(value({ n: 2n ** 64n }), { n: 18446744073709552000 }, 'a big integer: the nearest number');
  t.same(value({ b: new Uint8Array([1, 2, 3]) }), { b: 'AQID' }, 'a byte string: base64');
  t.same(
    value(
      new Map<unknown, unknown>([
        [7, 'seven'],
        ['k', 1],
        [true, 'left out'],
      ]),
    ),
    { 7: 'seven', k: 1 },
  );
  t.same(value({ d: new Date(Date.UTC(2026, 0, 2)) }), { d: '2026-01-02T00:00:00.000Z' });
  t.same(value({ x: new Tag(4660, 5) }), { x: 5 }, 'an unknown tag: its content');
  t.same(value([undefined, NaN, Infinity, 1]), [null, null, null, 1]);
  const proto = value(new Map([['__proto__', { polluted: true }]])) as Record<string, unknown>;
  t.equal(Object.getPrototypeOf(proto), Object.prototype, 'a key named __proto__ is a plain field');
  t.same(Object.keys(proto), ['__proto__']);
  t.same(decodePayload('cbor', Buffer.from([0x9f, 0x9f])), { ok: false }, 'truncated');
  t.same(decodePayload('cbor', Buffer.from([0x01, 0x02])), { ok: false }, 'data after the item');
  t.same(decodePayload('json', Buffer.from('{"a":')), { ok: false });
  t.same(decodePayload('binary', Buffer.from([1])), { ok: true, value: null });
});
